// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
#pragma once
/// \file
/// Kernels of GAE, the discounted returns and ReMax (layer D of docs/CONTRIBUTING.md): POD
/// params structs, `__global__` kernels and `launch_*` launchers that enqueue on a stream and
/// return `cudaError_t` (never synchronize, never allocate, never throw). The caller
/// (cuda/polo/gae.cuh) owns validation, scratch and the one read-back.
///
/// ## The scan
/// Each position t of a row contributes an affine map g_{t+1} -> a_t*g_{t+1} + b_t
/// (`detail::gae_step` / `detail::returns_step` of <polo/gae.hpp>: the same formulas as the
/// CPU backend). Affine maps compose associatively, so a row is cut into chunks of S = NT*K
/// tokens (K consecutive tokens per thread) and scanned in reverse time:
///
///     summary_kernel  one block per chunk: checks the inputs (non-finite values at valid
///                     positions -> a 64-bit error key, atomicMin on an integer: deterministic),
///                     counts valid tokens (the count and first error reduced per warp in
///                     hardware, `redux.sync`), and composes the chunk's map (thread-serial over
///                     its K tokens, then a block suffix scan); in chunks of 256 threads of
///                     rows of several chunks, each thread stores the exclusive suffix of that
///                     scan (the maps of the threads to its right in the chunk) and the `next`
///                     it receives, for the apply pass (otherwise the apply pass scans again)
///     rows_kernel     one thread per row: λ_i (length-adaptive λ needs the row's count), the
///                     bootstrap / baseline checks, and the state entering each chunk from the
///                     right (the row's chunk maps applied right to left)
///     apply_kernel    one block per chunk, after a gate (no error recorded): each thread's
///                     entering state from its stored suffix and the chunk's boundary step
///                     (formed with the chunk's entering state), a thread-serial pass that
///                     writes A and R (`detail::gae_write` / `returns_write`); the statistics
///                     of the chunk in a fixed tree
///     final_kernel    one block: every chunk's and row's partial in a fixed order, and the
///                     first error (row, argument, position) with its value
///
/// GAE's TD error at t needs `next`, the value handed on from the right (skip: the v of the
/// next valid position; through: v'_{t+1}); it is resolved by a selection (the nearest
/// hand-off to the right: ballots and shuffles, chunk_nearest_right) before the maps are formed. The one position of a chunk whose
/// `next` lies in another chunk (the boundary position) is kept raw in the summary, and its
/// step is formed by rows_kernel once that value is known, so every step is formed from
/// exactly the inputs the sequential recursion uses.
///
/// Every input is read twice (summary, apply): the check must finish before the first write
/// (a throw leaves the outputs untouched), and the apply pass needs the state entering each
/// chunk. Per float token with a uint8 mask: 2 x 9 bytes read, 8 written, and in chunks of 256
/// threads, per thread (K tokens) 20 bytes (36 with gae_returns::value_lambda) written by the
/// summary pass and read by the apply pass, in place of the apply pass's own composition and
/// two block scans (measured on the H100 at 1024 x 8192: apply 114 -> 81 us, summary 55 -> 64).
///
/// The stored suffix leaves the boundary step out (it needs the `next` entering the chunk), so
/// a thread left of the boundary thread enters with suffix(B(g_in)) rather than the
/// composition (suffix ∘ B)(g_in) the block scan would form: the same value up to rounding,
/// and the same bits for a padded row and the same row packed (their chunks are identical).

#include <cuda_runtime.h>

#include <cub/block/block_scan.cuh>
#include <cub/device/device_scan.cuh>

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "polo/core/backend.hpp"
#include "polo/core/config.hpp"
#include "polo/core/layout.hpp"
#include "polo/core/math.hpp"
#include "polo/core/reduce.hpp"
#include "polo/core/view.hpp"
#include "polo/detail/async_result.cuh"
#include "polo/detail/launch.cuh"
#include "polo/detail/row_reduce.cuh"
#include "polo/gae.hpp"
#include "polo/whiten.hpp"
#include "polo/kernels/scan.cuh"

/// Tuning knobs (compile-time): tokens per thread of the scans, the minimum resident blocks
/// per multiprocessor the scan kernels are compiled for (caps their registers:
/// POLO_CUDA_SCAN_SUMMARY_MIN_BLOCKS for the summary pass, see scan_summary_min_blocks;
/// POLO_CUDA_SCAN_APPLY_MIN_BLOCKS for the apply pass; POLO_CUDA_SCAN_MIN_BLOCKS for the
/// two-scan summary pass and as the apply pass's default), and the most blocks of the apply
/// pass's second launch (the leading chunks of left-padded rows under masked_fill::recursion,
/// strided over its grid: without left padding its blocks find an empty list).
#ifndef POLO_CUDA_SCAN_ITEMS
#define POLO_CUDA_SCAN_ITEMS 8
#endif
#ifndef POLO_CUDA_SCAN_MIN_BLOCKS
#define POLO_CUDA_SCAN_MIN_BLOCKS 4
#endif
#ifndef POLO_CUDA_SCAN_SUMMARY_MIN_BLOCKS
#define POLO_CUDA_SCAN_SUMMARY_MIN_BLOCKS 6
#endif
#ifndef POLO_CUDA_SCAN_APPLY_MIN_BLOCKS
#define POLO_CUDA_SCAN_APPLY_MIN_BLOCKS 5
#endif
#ifndef POLO_CUDA_SCAN_LEAD_BLOCKS
#define POLO_CUDA_SCAN_LEAD_BLOCKS 1024
#endif

namespace polo::kernels {

/// L2 reuse between the two passes over the inputs: the apply pass takes its chunks in the
/// reverse of the summary pass's order (the inputs the summary pass read last, some still in
/// L2, are read again first), loads them evict-first (its read is the call's last) and stores
/// its outputs evict-first, so neither pushes out the inputs still to be read. H100, GAE 1024
/// x 8192 asynchronous: 170 -> 163 us (synchronous 184 -> 176 us); the order or the stores
/// alone gained nothing (bench/results/nvidia-h100-80gb-hbm3/kernel_breakdown.md). The order
/// changes no result: every chunk is independent.
inline constexpr bool scan_apply_evict_first = true;

/// A key that closes the apply pass's gate without being a data error (set before the scan
/// when the caller must throw something else, e.g. a degenerate whitening, if the data is clean).
inline constexpr unsigned long long gate_key = no_error_key - 1;

/// The key of a packed layout's bad offsets in the asynchronous mode (set by the anchor kernel
/// from the device offsets check): every chunk count is zero, the rows pass does nothing, and
/// the final pass publishes the offsets error (scan_publish). Above every data key.
inline constexpr unsigned long long offsets_gate_key = gate_key - 1;

/// Which recurrence a launch runs.
enum class scan_kind : int { gae, returns };

/// Which compiled form of the summary and apply passes runs a launch: `general` reads the
/// recurrence and its options (mask mode, fill) at run time; `two` is GAE with two scans
/// (gae_returns::value_lambda), options at run time; `gae_default` is GAE with one scan under
/// gae_mask_mode::skip and masked_fill::zero (the defaults), fixed at compile time, so the
/// per-token code of the other modes is not compiled into it. The values are the general
/// form's: the same formulas, selected the same way.
enum class scan_form : int { general, two, gae_default };

/// Minimum resident blocks per multiprocessor the summary kernel of each form is compiled for
/// (caps its registers): POLO_CUDA_SCAN_SUMMARY_MIN_BLOCKS (6, at most 40 registers) for the
/// general and default forms, whose summary pass is bound by issuing instructions and gains
/// from the warps (H100, GAE 1024 x 8192 141 -> 137-138 us, discounted returns 115 -> 111;
/// 5 blocks: 138), POLO_CUDA_SCAN_MIN_BLOCKS (4) for the two-scan form and for layouts
/// without a mask, which would spill 270 and 80 bytes under 40 registers.
template <scan_form Form, bool HasMask>
inline constexpr int scan_summary_min_blocks =
    Form != scan_form::two && HasMask ? POLO_CUDA_SCAN_SUMMARY_MIN_BLOCKS : POLO_CUDA_SCAN_MIN_BLOCKS;

/// The same for the apply kernel: POLO_CUDA_SCAN_APPLY_MIN_BLOCKS (5, at most 48 registers) for
/// the first launch over chunks of 256 threads (H100, GAE 1024 x 8192 137 -> 132-133 us, 8 x
/// 1,048,576 158-159 -> 154, left padded 152-153 -> 146-147, VAPO 177-180 -> 171; 4 bytes of
/// spill in the default form), POLO_CUDA_SCAN_MIN_BLOCKS (4) for blocks of one-warp chunks and
/// for the leading chunks' launch (which spill 50 to 200 bytes under 48 registers) and for
/// chunks of 64 threads.
template <int NT, bool Lead>
inline constexpr int scan_apply_min_blocks =
    NT >= 256 && !Lead ? POLO_CUDA_SCAN_APPLY_MIN_BLOCKS : POLO_CUDA_SCAN_MIN_BLOCKS;

/// The form a launch takes (host side).
template <class P>
scan_form scan_form_of(const P& p) {
  if (p.two) return scan_form::two;
  if (p.kind == scan_kind::gae && p.cfg.mask == gae_mask_mode::skip && p.cfg.fill == masked_fill::zero)
    return scan_form::gae_default;
  return scan_form::general;
}

/// What the summary pass records per chunk.
struct scan_chunk_summary {
  detail::affine_step f{};   ///< composition of the chunk's positions left of the boundary (advantages' decay)
  detail::affine_step f2{};  ///< the same with the returns' decay (gae_returns::value_lambda)
  double r_p = 0.0, v_p = 0.0;  ///< raw inputs of the boundary position
  double hand = 0.0;            ///< `next` handed to the chunk on the left (has_hand)
  long long count = 0;          ///< valid tokens
  int valid_p = 0, has_hand = 0;
  int bt = -1;  ///< the thread holding the boundary position (gae; r_p, v_p, valid_p set), or -1
};

/// State entering a chunk (or a thread) from the right.
struct scan_state {
  double next = 0.0, g = 0.0, g2 = 0.0, pad_ = 0.0;
};

/// Per-row coefficients, from rows_kernel.
struct scan_row {
  double gl = 1.0, gl2 = 1.0, lambda = 1.0;
  long long n = 0;
};

/// Statistics of one chunk (apply pass).
struct scan_chunk_stats {
  moments m{};        ///< advantages (gae) or returns (returns) at valid tokens, as written
  double rsum = 0.0;  ///< sum of the returns at valid tokens (gae)
};

/// Statistics of one row (rows pass).
struct scan_row_stats {
  double lambda_sum = 0.0;
  long long lambda_count = 0, truncated = 0, pad_ = 0;
};

/// Rows per block of the row reduction (one warp each).
inline constexpr int scan_reduce_rows = 8;

/// Statistics of a block of rows (the row reduction's output).
struct scan_partial {
  moments m{};
  double rsum = 0.0, lambda_sum = 0.0;
  long long lambda_count = 0, truncated = 0;
};

/// What the final pass hands back to the host.
struct scan_result {
  long long tokens = 0, truncated = 0, lambda_count = 0;
  long long valid = 0;  ///< valid tokens of the batch when the count gate ran (scan_params::valid)
  moments m{};
  double rsum = 0.0, lambda_sum = 0.0;
  unsigned long long err_key = no_error_key;
  long long err_flat = 0;
  double err_value = 0.0;
};

/// A batch's typical row length, which picks the scans' chunk shape and their short-row
/// kernels: padded, T; packed, ⌈N/B⌉. Host-only.
template <class L>
index_t scan_typical_len(const L& layout) {
  const index_t B = layout.num_seqs();
  if constexpr (L::is_packed)
    return B > 0 ? (layout.tokens + B - 1) / B : 0;
  else
    return layout.seq_len;
}

/// Chunk geometry: S tokens per chunk; padded rows have `per_row` chunks each, packed rows
/// `start[i+1] - start[i]` (an exclusive scan of ceil(len_i / S), in scratch). With `first`
/// (the scans), every row is cut at its first valid position f_i: ceil(f_i / S) chunks cover
/// the leading masked positions [0, f_i) and the chunks of the rest start at f_i, so a padded
/// row and the same row packed from its first valid token are cut, and scanned, identically.
/// Packed, `start` holds the table; padded, row i owns the `per_row` = ceil(T/S) + 1 slots
/// from i * per_row, of which its first ceil(f_i/S) + ceil((T - f_i)/S) are chunks (no table:
/// a slot finds its row by a division and its chunk count from f_i).
struct chunk_table {
  index_t rows = 0;
  index_t per_row = 0;             ///< padded (with `first`: ceil(T/S) + 1)
  const index_t* start = nullptr;  ///< packed: [B+1], null padded
  const index_t* first = nullptr;  ///< [B] first valid position of each row, or null
  index_t bound = 0;               ///< chunks launched (an upper bound with a table)
  int S = 0;
  int S_shift = 0;  ///< log2(S) with `first` (the scans' S is a power of two), else unused
  /// [start[rows]] row of each chunk (the scans: O(1) `place_chunk`; needs `start`), or null
  /// (binary search in `start`).
  const index_t* owner = nullptr;
};
/// Everything the GAE / returns kernels read and write.
template <class T, class L, class F>
struct scan_params {
  L layout{};
  detail::layout_tensor<L, const T> r{}, v{};  ///< v unused for returns
  detail::layout_tensor<L, T> A{}, R{};        ///< A null for plain returns
  const F* trunc = nullptr;  ///< [B] flags, null without bootstrap
  index_t trunc_stride = 1;
  const T* boot = nullptr;  ///< [B] bootstrap values
  index_t boot_stride = 1;
  const T* base = nullptr;  ///< [B] ReMax baselines, null otherwise
  index_t base_stride = 1;
  gae_config cfg{};      ///< gae (for returns: gamma and fill only)
  returns_mask_mode rmask = returns_mask_mode::carry;  ///< returns: what a masked position does
  scan_kind kind = scan_kind::gae;
  bool two = false;      ///< gae_returns::value_lambda
  chunk_table chunks{};
  scan_chunk_summary* summ = nullptr;  ///< [bound]
  /// [bound * NT] per thread of each chunk (slot c * NT + tid), written by the summary pass:
  /// the composition of the maps of the threads to its right in its chunk, without the
  /// chunk's boundary step (gae: threads left of the boundary thread; returns: every thread).
  /// Filled only by kernels launched with Stored (chunks of 256 threads: scan_stores_suffix).
  detail::affine_step* tmap = nullptr;
  detail::affine_step* tmap2 = nullptr;  ///< the same with the returns' decay (two), or null
  T* tnext = nullptr;                    ///< [bound * NT] gae: `next` entering the thread (left of the boundary thread)
  scan_state* state = nullptr;         ///< [bound]
  scan_state* exit_state = nullptr;    ///< [B] state after a row's first valid position (for its leading chunks)
  scan_chunk_stats* cstats = nullptr;  ///< [bound]
  scan_row* rows = nullptr;            ///< [B]
  scan_row_stats* rstats = nullptr;    ///< [B]
  unsigned long long* err = nullptr;   ///< [1], no_error_key when clean
  scan_result* result = nullptr;       ///< [1]
  scan_partial* partials = nullptr;       ///< [ceil(B / scan_reduce_rows)] row-block statistics
  long long* valid = nullptr;          ///< [1] the count gate's total, or null (no gate)
  long long gate_min_count = 0;        ///< with `valid`: fewer valid tokens close the gate (gate_key)
  unsigned* done = nullptr;            ///< [1] row blocks finished (the last one runs the final pass)
  scan_partial* fold = nullptr;        ///< [fold_blocks(row blocks, 256)] scan_fold_kernel's blocks
  index_t* lead = nullptr;             ///< [bound] leading chunks, listed by the first apply launch
  unsigned* lead_n = nullptr;          ///< [1] their count (zeroed by the rows pass)
  // Asynchronous mode (be.result and be.deferred_errors set; all null otherwise): the final
  // pass publishes the statistics and the first error itself (scan_publish).
  const unsigned long long* off_key = nullptr;  ///< [1] packed offsets check's key, or null
  cuda::status* deferred = nullptr;   ///< be.deferred_errors, or null (synchronous)
  gae_stats* gae_out = nullptr;       ///< be.result of gae, or null
  returns_stats* ret_out = nullptr;   ///< be.result of discounted_returns / remax_advantages, or null
  int entry = 0;                      ///< detail::status_entry of the calling entry
};

// ---- chunk geometry -------------------------------------------------------------------------

/// ceil(x / S) for the scans' S = 2^sh (x >= 0): a shift, not a 64-bit division.
__device__ __forceinline__ index_t ceil_chunks(index_t x, const chunk_table& ct) {
  return (x + ct.S - 1) >> ct.S_shift;
}
/// Chunks of a row of length len cut at its first valid position f: ceil(f/S) leading ones and
/// ceil((len - f)/S) from f on.
__device__ __forceinline__ index_t anchored_chunks(index_t f, index_t len, const chunk_table& ct) {
  return ceil_chunks(f, ct) + ceil_chunks(len - f, ct);
}
/// Leading chunks of row i (the scans: ct.first set), or 0.
__device__ __forceinline__ index_t lead_chunks(const chunk_table& ct, index_t i) {
  return ct.first != nullptr ? ceil_chunks(ct.first[i], ct) : index_t(0);
}

template <class L>
__device__ __forceinline__ index_t chunk_begin_of_row(const L&, const chunk_table& ct, index_t i) {
  if (L::is_packed || ct.start != nullptr)
    return ct.start[i];
  else
    return i * ct.per_row;
}
template <class L>
__device__ __forceinline__ index_t chunk_end_of_row(const L& layout, const chunk_table& ct, index_t i) {
  if (L::is_packed || ct.start != nullptr)
    return ct.start[i + 1];
  else if (ct.first != nullptr)
    return i * ct.per_row + anchored_chunks(ct.first[i], layout.row_len(i), ct);
  else
    return (i + 1) * ct.per_row;
}
/// Row and chunk-within-row of chunk c; false when c is past the last chunk (or, padded with
/// `first`, past its row's last chunk). The objective's and KL shaping's kernels; the scans use
/// place_chunk, which repeats this lookup inline: written as one helper that both call, the
/// compiler materialized its result and the scans' kernels grew by 16 to 40 instructions and
/// 32 bytes of stack (sm_90, CUDA 13.0), so each keeps its own copy.
template <class L>
__device__ __forceinline__ bool locate_chunk(const L& layout, const chunk_table& ct, index_t c, index_t& row,
                                             index_t& j) {
  if (ct.owner != nullptr) {
    if (c >= ct.start[ct.rows]) return false;
    const index_t i = ct.owner[c];
    row = i;
    j = c - ct.start[i];
    return true;
  }
  if (L::is_packed || ct.start != nullptr) {
    if (c >= ct.start[ct.rows]) return false;
    index_t lo = 0, hi = ct.rows;  // largest i with start[i] <= c
    while (hi - lo > 1) {
      index_t mid = (lo + hi) / 2;
      if (ct.start[mid] <= c) lo = mid; else hi = mid;
    }
    row = lo;
    j = c - ct.start[lo];
    return true;
  } else {
    if (ct.per_row == 0) return false;
    // 32-bit division when the slots fit (always in practice): a fraction of a 64-bit one's cost
    row = ct.bound <= index_t(0xffffffffu) ? index_t(unsigned(c) / unsigned(ct.per_row)) : c / ct.per_row;
    j = c - row * ct.per_row;
    if (row >= ct.rows) return false;
    return ct.first == nullptr || j < anchored_chunks(ct.first[row], layout.row_len(row), ct);
  }
}

/// Where chunk c lies: its row i, its index j in the row, the row's leading chunks `nlead`
/// (see chunk_table; 0 without `first`), and the chunk's first position t0
/// and length n. False when c is past the last chunk (or, padded with `first`, past its
/// row's last chunk). The row's first valid position is loaded once (locate_chunk, the
/// leading-chunk count and the span each loaded it and turned it into chunk counts: H100
/// source counters put about a third of the apply pass's instructions per thread there,
/// after-d13dbb8/). Its row lookup repeats locate_chunk's on purpose: a helper shared by both
/// (0ab986a) made the compiler materialize its result, 16-40 more instructions and 32 bytes
/// more stack per scan kernel (after-b1ec916/ call 8); keep the two in step.
struct chunk_place {
  index_t i = 0, j = 0, nlead = 0, t0 = 0, n = 0;
};
template <class L>
__device__ __forceinline__ bool place_chunk(const L& layout, const chunk_table& ct, index_t c, chunk_place& q) {
  index_t i = 0, j = 0;
  if (ct.owner != nullptr) {
    if (c >= ct.start[ct.rows]) return false;
    i = ct.owner[c];
    j = c - ct.start[i];
  } else if (L::is_packed || ct.start != nullptr) {
    if (c >= ct.start[ct.rows]) return false;
    index_t lo = 0, hi = ct.rows;  // largest i with start[i] <= c
    while (hi - lo > 1) {
      index_t mid = (lo + hi) / 2;
      if (ct.start[mid] <= c) lo = mid; else hi = mid;
    }
    i = lo;
    j = c - ct.start[lo];
  } else {
    if (ct.per_row == 0) return false;
    // 32-bit division when the slots fit (always in practice): a fraction of a 64-bit one's cost
    i = ct.bound <= index_t(0xffffffffu) ? index_t(unsigned(c) / unsigned(ct.per_row)) : c / ct.per_row;
    j = c - i * ct.per_row;
    if (i >= ct.rows) return false;
  }
  const index_t len = layout.row_len(i);
  const index_t S = ct.S;
  q.i = i;
  q.j = j;
  if (ct.first == nullptr) {
    q.nlead = 0;
    q.t0 = j * S;
    q.n = len - q.t0 < S ? len - q.t0 : S;
    return true;
  }
  const index_t f = ct.first[i];
  const index_t nlead = ceil_chunks(f, ct);
  if (!(L::is_packed || ct.start != nullptr) && j >= nlead + ceil_chunks(len - f, ct)) return false;
  q.nlead = nlead;
  if (j < nlead) {
    q.t0 = j * S;
    q.n = f - q.t0 < S ? f - q.t0 : S;
  } else {
    q.t0 = f + (j - nlead) * S;
    q.n = len - q.t0 < S ? len - q.t0 : S;
  }
  return true;
}

/// Nearest hand-off to the right: `has` and the value.
struct handoff {
  double v = 0.0;
  int has = 0, pad_ = 0;
};
/// Two affine maps composed in parallel (advantages' and returns' decays).
struct step_pair {
  detail::affine_step s1{}, s2{};
};
struct step_pair_op {
  __device__ __forceinline__ step_pair operator()(const step_pair& near, const step_pair& far) const {
    return {detail::affine_compose(near.s1, far.s1), detail::affine_compose(near.s2, far.s2)};
  }
};

struct affine_op {
  __device__ __forceinline__ detail::affine_step operator()(const detail::affine_step& near,
                                                            const detail::affine_step& far) const {
    return detail::affine_compose(near, far);
  }
};

/// Chunks per block of the summary and apply kernels: one warp per chunk, 8 per block, when a
/// chunk has 32 threads (short rows: a block of 256 threads instead of 32-thread blocks);
/// otherwise one chunk per block.
inline constexpr int scan_warp_chunks = 8;
template <int NT>
inline constexpr int scan_cpb = NT == 32 ? scan_warp_chunks : 1;

/// Whether the summary pass stores each thread's suffix for the apply pass (chunks of 256
/// threads), or the apply pass scans the chunk again (chunks of 32 or 64 threads: one or two
/// warps, whose scans are shuffles that cost less than 20 bytes per thread through memory).
/// The host picks 256 threads only for rows longer than one such chunk (scan_threads in
/// cuda/polo/gae.cuh), so chunks of 256 threads always store. The kernels take the choice as a
/// template parameter (`Stored`, true exactly with NT = 256): a runtime flag compiled both
/// paths into one kernel, whose apply pass then spilled 40 bytes to the stack and ran 6%
/// slower on long rows (H100, 1024 x 8192).
constexpr bool scan_stores_suffix(int nt) { return nt >= 256; }

/// Shared memory of the per-chunk kernels: one scratch row of NT/32 elements reused by every
/// block-level scan and reduction (each ends with a barrier), and the boundary thread.
template <int NT>
struct chunk_smem {
  static constexpr std::size_t row_bytes =
      (NT / 32) * (sizeof(step_pair) > sizeof(scan_chunk_stats) ? sizeof(step_pair) : sizeof(scan_chunk_stats));
  alignas(16) unsigned char raw[row_bytes];
  int boundary_thread;
  template <class S>
  __device__ __forceinline__ S* as() {
    static_assert(sizeof(S) * (NT / 32) <= row_bytes, "chunk_smem: row too small");
    return reinterpret_cast<S*>(raw);
  }
};

/// The nearest hand-off on each thread's right within its chunk: thread i gets (v_j, 1) for the
/// smallest j > i with has_j, or (0, 0) when there is none; `total` gets the chunk's own
/// hand-off to the chunk on its left, (v_j, 1) for the smallest j with has_j, or (0, 0)
/// (valid in thread 0). A selection, not arithmetic, so it needs no fixed tree: a ballot and
/// two shuffles per warp, and one word per warp through shared memory (the warps' pass: each
/// lane reads one warp's word, a ballot, one shuffle). This was a suffix scan of 16-byte
/// (value, flag) pairs in Kogge-Stone steps and a fold over the warps on the right. The value
/// is an input of T or 0 (gae_next_value), exact in T. Every thread of the chunk calls it; it
/// ends with a barrier (orders the caller's shared memory), as the chunk scans do.
template <int NT, int CPB, class T>
__device__ __forceinline__ handoff chunk_nearest_right(T v, bool has, chunk_smem<NT>& sm, handoff& total) {
  const int lane = int(threadIdx.x & 31);
  const unsigned hb = __ballot_sync(0xffffffffu, has);
  const unsigned above = lane == 31 ? 0u : hb & (0xffffffffu << (lane + 1));  // lanes on the right
  const T v_right = __shfl_sync(0xffffffffu, v, above != 0u ? __ffs(int(above)) - 1 : lane);
  const T v_low = __shfl_sync(0xffffffffu, v, hb != 0u ? __ffs(int(hb)) - 1 : 0);  // the warp's hand-off
  handoff out{};
  if (above != 0u) out = handoff{double(v_right), 1, 0};
  if constexpr (CPB > 1 || NT == 32) {
    total = hb != 0u ? handoff{double(v_low), 1, 0} : handoff{};
    __syncwarp();
    return out;
  } else {
    constexpr int warps = NT / 32;
    static_assert(warps <= 32, "chunk_nearest_right: at most 32 warps");
    struct word {
      T v;
      int has;
    };
    word* sw = sm.template as<word>();
    const int warp = int(threadIdx.x >> 5);
    if (lane == 0) sw[warp] = word{v_low, hb != 0u ? 1 : 0};
    __syncthreads();
    const word mine = lane < warps ? sw[lane] : word{T(0), 0};
    const unsigned wb = __ballot_sync(0xffffffffu, mine.has != 0);
    const unsigned w_above = warp == 31 ? 0u : wb & (0xffffffffu << (warp + 1));
    const T v_far = __shfl_sync(0xffffffffu, mine.v, w_above != 0u ? __ffs(int(w_above)) - 1 : 0);
    const T v_first = __shfl_sync(0xffffffffu, mine.v, wb != 0u ? __ffs(int(wb)) - 1 : 0);
    total = wb != 0u ? handoff{double(v_first), 1, 0} : handoff{};
    __syncthreads();
    if (above == 0u && w_above != 0u) out = handoff{double(v_far), 1, 0};
    return out;
  }
}

/// GAE's `next` entering each thread from its right within the chunk (the nearest hand-off of
/// the threads to its right), from the `next` that this thread's items hand on to its left;
/// `total` gets the chunk's own hand-off to the chunk on its left.
template <int NT, int CPB, int K, class T>
__device__ __forceinline__ handoff chunk_handoff_right(gae_mask_mode mode, const bool (&valid)[K], const T (&v)[K],
                                                       int nk, chunk_smem<NT>& sm, handoff& total) {
  T hv = T(0);
  bool has = false;
  const bool through = mode == gae_mask_mode::through;
#pragma unroll
  for (int k = K - 1; k >= 0; --k) {
    // gae_next_value in T (its values are v or 0): a skipped (masked) position hands on what it
    // received, `through` hands on 0
    hv = k < nk ? (valid[k] ? v[k] : (through ? T(0) : hv)) : hv;
    has = has || valid[k] || (through && k < nk);
  }
  return chunk_nearest_right<NT, CPB>(hv, has, sm, total);
}

// ---- per-token code of the summary and apply passes ------------------------------------------
//
// The per-token loops below are straight-line code: a thread's K positions are checked
// against `nk` (its in-range count, an int compared with the unrolled, compile-time k, not a
// 64-bit position against the chunk length), and the masked-position cases of the public
// formulas are selected rather than branched on. Under skip (the default) and zero fill, the
// step and the write are formed at every position and selected; the other modes keep the
// formulas of <polo/gae.hpp> as they are (a branch on a kernel parameter, uniform), and the
// two-scan form (gae_returns::value_lambda) keeps its branches (selecting both scans held too
// many registers). The values are the formulas' own, operation for operation. One thing the
// compiler still chooses per kernel: which product of γ·next + γλ·g it fuses into an FMA at a
// masked position under `through`, so that mode's outputs may move in the last bit from one
// build of these kernels to another (within a build they are fixed: deterministic, and packed
// == padded). H100 (bench/results/nvidia-h100-80gb-hbm3/kernel_breakdown.md): the outputs of
// 49 of 50 hashed GAE / returns cases bitwise those of the branchy form (the 50th: through
// with recursion fill and interior masked spans); GAE 1024 x 8192 165 -> 161 us, 65,536 x 128
// 493 -> 460 us, discounted returns 1024 x 8192 139 -> 131 us (then 154, 438, 122 us with the
// apply pass's statistics tree below).

/// Items of a thread in range: min(max(n - k0, 0), K).
template <int K>
__device__ __forceinline__ int items_in_range(index_t k0, index_t n) {
  const index_t left = n - k0;
  return left >= index_t(K) ? K : left > 0 ? int(left) : 0;
}

/// detail::gae_step's value: under skip both cases formed and selected (a masked position's
/// inputs are selected away, never multiplied by 0).
__device__ __forceinline__ detail::affine_step gae_step_sel(gae_mask_mode mode, bool valid, double r, double v,
                                                            double next, double gamma, double gl) {
  if (mode == gae_mask_mode::skip) {
    const double d = detail::gae_delta(r, v, next, gamma);
    return {valid ? gl : 1.0, valid ? d : 0.0};
  }
  return detail::gae_step(mode, valid, r, v, next, gamma, gl);
}

/// detail::gae_write's value: under zero fill both cases formed and selected.
__device__ __forceinline__ detail::gae_output gae_write_sel(gae_mask_mode mode, masked_fill fill, bool valid, double g,
                                                            double g_value, double v) {
  if (fill == masked_fill::zero) {
    const double ret = g_value + v;
    return {valid ? g : 0.0, valid ? ret : 0.0};
  }
  return detail::gae_write(mode, fill, valid, g, g_value, v);
}

template <class F>
__device__ __forceinline__ bool flag_set(const F* p, index_t stride, index_t i) {
  return p != nullptr && p[i * stride] != F(0);
}

/// The sum of a non-negative int over a chunk's threads (valid in thread 0; every lane of a
/// one-warp chunk): the warps' sums in hardware (`redux.sync`), then block_fold_warps. Ends
/// with a barrier, as the chunk scans do.
template <int NT, int CPB>
__device__ __forceinline__ int chunk_sum_int(int x, int* smem) {
  const int w = int(__reduce_add_sync(0xffffffffu, unsigned(x)));
  if constexpr (CPB == 1) {
    return block_fold_warps<NT>(w, [](int a, int b) { return a + b; }, smem);
  } else {
    __syncwarp();
    return w;
  }
}

// ---- summary pass -------------------------------------------------------------------------------

/// The first statement of every kernel of a scan after the anchors (launch_scan launches each
/// as a programmatic dependent of the kernel before it): wait until that kernel has completed
/// and its writes are visible (nothing of the call is read or written before), then let the
/// next kernel of the chain be scheduled, so that its blocks fill the multiprocessors this
/// kernel's last wave leaves instead of waiting for a launch after it ends (H100, GAE 1024 x
/// 8192: gaps of 1.3-2.0 us between the scan's kernels in the stream's timeline,
/// bench/results/nvidia-h100-80gb-hbm3/after-8cb07be/). Launched normally, both are no-ops.
__device__ __forceinline__ void scan_pdl_entry() {
  grid_dependency_wait();
  allow_dependent_launch();
}

template <int NT, int K, bool HasMask, bool CountOnly, scan_form Form, bool Stored, class T, class L, class F>
__global__ void __launch_bounds__(NT * scan_cpb<NT>, scan_summary_min_blocks<Form, HasMask>) scan_summary_kernel(scan_params<T, L, F> p) {
  scan_pdl_entry();
  constexpr int CPB = scan_cpb<NT>;
  constexpr bool Two = Form == scan_form::two, Fixed = Form == scan_form::gae_default;
  __shared__ chunk_smem<NT> sm_all[CPB];
  const int tid = CPB > 1 ? int(threadIdx.x & 31) : int(threadIdx.x);
  const int wic = CPB > 1 ? int(threadIdx.x >> 5) : 0;  // chunk of the block
  chunk_smem<NT>& sm = sm_all[wic];
  using Mask = typename L::mask_type;
  const index_t c = index_t(blockIdx.x) * CPB + wic;
  chunk_place q;
  if (!place_chunk(p.layout, p.chunks, c, q)) return;
  const index_t i = q.i, j = q.j, t0 = q.t0, n = q.n;
  const index_t k0 = index_t(tid) * K;
  // A leading chunk (all masked: it ends at the row's first valid position) counts nothing,
  // checks nothing and, skipping masked positions, composes identities: its summary is known
  // without reading it.
  if constexpr (HasMask) {
    if ((CountOnly || (p.kind == scan_kind::gae && p.cfg.mask == gae_mask_mode::skip)) && j < q.nlead) {
      if (tid == 0) p.summ[c] = scan_chunk_summary{};
      return;
    }
  }

  const int nk = items_in_range<K>(k0, n);
  bool valid[K];
  if constexpr (HasMask) {
    Mask m[K];
    load_blocked<K>(p.layout.mask_row(i) + t0, k0, n, m, Mask(0));
#pragma unroll
    for (int k = 0; k < K; ++k) valid[k] = k < nk && detail::is_valid(m[k]);
  } else {
#pragma unroll
    for (int k = 0; k < K; ++k) valid[k] = k < nk;
  }
  int cnt = 0;  // at most S per chunk
#pragma unroll
  for (int k = 0; k < K; ++k) cnt += valid[k] ? 1 : 0;
  if constexpr (CountOnly) {
    cnt = chunk_sum_int<NT, CPB>(cnt, sm.template as<int>());
    if (tid == 0) p.summ[c].count = cnt;
    return;
  } else {
    // the inputs are loaded before the first block-wide step, so their latency overlaps it
    const bool gae = Fixed || p.kind == scan_kind::gae;
    T r[K], v[K];
    load_blocked<K>(p.layout.row_ptr(p.r, i) + t0, k0, n, r, T(0));
    if (gae) load_blocked<K>(p.layout.row_ptr(p.v, i) + t0, k0, n, v, T(0));
    // The chunk's first error as a 32-bit code, argument (r: 0, v: 1) above the position in
    // the chunk (below S <= 2^30), so its minimum orders errors as error_key does; thread 0
    // forms the key (row, argument, position in the row).
    int kr = K, kv = K;  // this thread's first non-finite r, v at a valid position, or K
#pragma unroll
    for (int k = K - 1; k >= 0; --k) {
      if (valid[k] && !detail::is_finite(r[k])) kr = k;
      if (gae && valid[k] && !detail::is_finite(v[k])) kv = k;
    }
    const unsigned code = kr < K   ? unsigned(k0) + unsigned(kr)
                          : kv < K ? (1u << 30) | (unsigned(k0) + unsigned(kv))
                                   : ~0u;
    // the count and the first error in one tree (valid in thread 0)
    struct count_code {
      int count;
      unsigned code;
    };
    // (integers: the warps' reductions in hardware, any order gives the same values)
    count_code cc{int(__reduce_add_sync(0xffffffffu, unsigned(cnt))), __reduce_min_sync(0xffffffffu, code)};
    if constexpr (CPB == 1)
      cc = block_fold_warps<NT>(
          cc, [](count_code a, const count_code& b) { return count_code{a.count + b.count, a.code < b.code ? a.code : b.code}; },
          sm.template as<count_code>());
    else
      __syncwarp();
    cnt = cc.count;
    if (tid == 0 && cc.code != ~0u)
      atomicMin(p.err, error_key(i, int(cc.code >> 30), t0 + index_t(cc.code & ((1u << 30) - 1u))));

    static_assert(!Stored || NT >= 256, "per-thread suffixes are stored only in chunks of 256 threads");
    if (!Stored && j == 0) {  // the leftmost chunk's total is never used
      if (tid == 0) p.summ[c].count = cnt;
      return;
    }
    scan_chunk_summary s;
    s.count = cnt;
    // The chunk's maps: the rows pass uses their total (not the leftmost chunk's), the apply
    // pass each thread's exclusive suffix when Stored (the leftmost chunk's included).
    const double gamma = p.cfg.gamma;
    const index_t slot = c * NT + tid;
    step_pair mine{};
    handoff right_h{};
    if (gae) {
      const gae_mask_mode mode = Fixed ? gae_mask_mode::skip : p.cfg.mask;
      const double lam = p.cfg.lambda_mode == gae_lambda_mode::fixed ? p.cfg.lambda : p.rows[i].lambda;
      const double gl = gamma * lam, gl2 = gamma * p.cfg.lambda_value;
      handoff tot_h;
      right_h = chunk_handoff_right<NT, CPB, K>(mode, valid, v, nk, sm, tot_h);
      if (tid == 0) sm.boundary_thread = -1;
      chunk_sync<CPB>();
      const bool through = mode == gae_mask_mode::through;
      bool known = right_h.has != 0;
      double nxt = right_h.v;
#pragma unroll
      for (int k = K - 1; k >= 0; --k) {
        // skip mode, masked: the identity, composed by no one (needs is false)
        const bool needs = valid[k] || (through && k < nk);
        const double rk = double(r[k]), vk = double(v[k]);
        if (needs && !known) {  // the boundary position: exactly one thread of the chunk finds it
          sm.boundary_thread = int(tid);
          s.r_p = rk;
          s.v_p = vk;
          s.valid_p = valid[k] ? 1 : 0;
        }
        const bool step = needs && known;
        if constexpr (Two) {  // two scans: branched (as in the apply pass)
          if (step) {
            mine.s1 = detail::affine_compose(detail::gae_step(mode, valid[k], rk, vk, nxt, gamma, gl), mine.s1);
            mine.s2 = detail::affine_compose(detail::gae_step(mode, valid[k], rk, vk, nxt, gamma, gl2), mine.s2);
          }
        } else {
          const detail::affine_step c1 =
              detail::affine_compose(gae_step_sel(mode, valid[k], rk, vk, nxt, gamma, gl), mine.s1);
          mine.s1 = step ? c1 : mine.s1;
        }
        nxt = k < nk ? detail::gae_next_value(mode, valid[k], vk, nxt) : nxt;
        known = known || needs;
      }
      s.hand = tot_h.v;
      s.has_hand = tot_h.has;
    } else {
#pragma unroll
      for (int k = K - 1; k >= 0; --k) {
        if (k >= nk) continue;
        mine.s1 = detail::affine_compose(detail::returns_step(p.rmask, valid[k], double(r[k]), gamma), mine.s1);
      }
    }
    step_pair right{}, tot{};
    if constexpr (Two) {
      right = chunk_suffix_exclusive<NT, CPB>(mine, step_pair{}, step_pair_op{}, sm.template as<step_pair>(), tot);
    } else {
      right.s1 = chunk_suffix_exclusive<NT, CPB>(mine.s1, detail::affine_step{}, affine_op{},
                                                 sm.template as<detail::affine_step>(), tot.s1);
    }
    // (the map scan's barriers publish boundary_thread)
    const int bt = gae ? sm.boundary_thread : -1;
    // A thread left of the boundary thread has a hand-off on its right (the boundary position)
    // and enters with right ∘ B (B: the boundary step, formed by the apply pass); at or right of
    // it, every step is the identity (skip) or there is none (through), and nothing is stored.
    if (Stored && (!gae || int(tid) < bt)) {
      p.tmap[slot] = right.s1;
      if constexpr (Two) p.tmap2[slot] = right.s2;
      if (gae) p.tnext[slot] = T(right_h.v);  // a v of this chunk or 0 (through, masked): exact in T
    }
    if (bt >= 0 && int(tid) == bt) {  // the boundary thread hands its raw inputs over through the summary
      p.summ[c].r_p = s.r_p;
      p.summ[c].v_p = s.v_p;
      p.summ[c].valid_p = s.valid_p;
    }
    if (tid == 0) {
      scan_chunk_summary& o = p.summ[c];
      o.f = tot.s1;
      o.f2 = tot.s2;
      o.hand = s.hand;
      o.has_hand = s.has_hand;
      o.bt = bt;
      o.count = cnt;
    }
  }
}

// ---- rows pass ----------------------------------------------------------------------------------

/// Shuffles of the warp-level scans over a row's chunks.
__device__ __forceinline__ detail::affine_step shfl_up_step(const detail::affine_step& f, int d) {
  return {__shfl_up_sync(0xffffffffu, f.a, d), __shfl_up_sync(0xffffffffu, f.b, d)};
}
__device__ __forceinline__ detail::affine_step shfl_idx_step(const detail::affine_step& f, int src) {
  return {__shfl_sync(0xffffffffu, f.a, src), __shfl_sync(0xffffffffu, f.b, src)};
}

/// What the rows pass knows of a row before its chunks: the state carried into its last chunk
/// and the coefficients of its boundary steps.
struct scan_row_head {
  double cnext = 0.0, gamma = 0.0, gl = 0.0, glv = 0.0;
};

/// Phase 1's per-row part, before the chunks: the bootstrap / baseline checks, the row's
/// coefficients (p.rows[i]) and statistics (p.rstats[i]) from its count n; `writer` (one
/// thread per row) writes, every caller gets the result. Row 0's writer also resets the row
/// reduction's ticket counter and the apply pass's list of leading chunks.
template <class T, class L, class F>
__device__ __forceinline__ scan_row_head scan_row_begin(const scan_params<T, L, F>& p, index_t i, long long n,
                                                        bool writer) {
  const index_t len = p.layout.row_len(i);
  scan_row_stats rs{};
  scan_row_head h{0.0, p.cfg.gamma, 0.0, 0.0};
  if (p.kind == scan_kind::gae) {
    const bool trunc = p.trunc != nullptr && flag_set(p.trunc, p.trunc_stride, i);
    const double b = trunc ? double(p.boot[i * p.boot_stride]) : 0.0;
    if (writer && trunc && !detail::is_finite(b)) atomicMin(p.err, error_key(i, 2, 0));
    const detail::gae_row_coeffs k = detail::gae_row_setup(p.cfg, n, trunc, b);
    if (writer) p.rows[i] = scan_row{k.gl, k.gl_value, k.lambda, n};
    if (len > 0 && trunc) rs.truncated = 1;
    if (len > 0 && n > 0) {
      rs.lambda_sum = k.lambda;
      rs.lambda_count = 1;
    }
    h = scan_row_head{k.next, k.gamma, k.gl, k.gl_value};
  } else {
    if (writer) p.rows[i] = scan_row{p.cfg.gamma, p.cfg.gamma, 1.0, n};
    if (writer && p.base != nullptr && n > 0 && !detail::is_finite(p.base[i * p.base_stride]))
      atomicMin(p.err, error_key(i, 1, 0));
  }
  if (writer) p.rstats[i] = rs;
  if (i == 0 && writer) {
    *p.done = 0u;    // the row reduction's ticket counter
    *p.lead_n = 0u;  // the apply pass's list of leading chunks
  }
  return h;
}

/// Phase 0's per-row part: the row's count and λ_i.
template <class T, class L, class F>
__device__ __forceinline__ void scan_row_lambda(const scan_params<T, L, F>& p, index_t i, long long n) {
  p.rows[i].n = n;
  p.rows[i].lambda = detail::gae_lambda_of(p.cfg, n);
}

/// Whether row i (chunks [c0, c1)) is one chunk, or none, and no leading chunk: a short row,
/// which enters with the row's own state (the tile walk of scan_row_warp would form it as
/// identity maps applied to that state: the same bits).
__device__ __forceinline__ bool scan_row_single(const chunk_table& ct, index_t i, index_t c0, index_t c1) {
  return c1 - c0 == 0 || (c1 - c0 == 1 && lead_chunks(ct, i) == 0);
}

/// Row i of the rows pass, by one warp (every lane calls it; `lane` its lane). Phase 0
/// (length-adaptive λ): the row's count and λ_i from the chunk counts. Phase 1: checks of
/// per-row inputs, row coefficients, row statistics (scan_row_begin), the state entering each
/// chunk.
///
/// The state entering a chunk is the composition of the maps of the chunks to its right. The
/// warp walks the row in tiles of 32 chunks, right to left; a tile is anchored at the row's
/// first main chunk (tile t holds main chunks 32t .. 32t+31, the leading chunks have negative
/// indices), lane l holding the tile's chunk 31 - l (lane 0 the rightmost). In a tile: the
/// nearest `next` handed on from the right (a warp scan of hand-offs), each chunk's full map
/// (its boundary step, formed with that value, then its composition), and an exclusive
/// Kogge-Stone scan of the maps, applied to the state carried in from the tile on the right.
/// The tree of a lane is fixed relative to the tile's anchor, so trailing all-masked chunks
/// (exact identities) leave every other chunk's state bitwise unchanged: a padded row and the
/// same row packed get the same states.
template <int Phase, class T, class L, class F>
__device__ __forceinline__ void scan_row_warp(const scan_params<T, L, F>& p, index_t i, int lane) {
  const index_t c0 = chunk_begin_of_row(p.layout, p.chunks, i), c1 = chunk_end_of_row(p.layout, p.chunks, i);
  long long n = 0;
  if (c1 - c0 <= 1) {  // warp-uniform: a row of one chunk (or none) needs no warp sum
    if (c1 > c0) n = p.summ[c0].count;
  } else {
    for (index_t c = c0 + lane; c < c1; c += 32) n += p.summ[c].count;
#pragma unroll
    for (int d = 16; d > 0; d >>= 1) n += __shfl_xor_sync(0xffffffffu, n, d);  // integers: order-free
  }
  const bool gae = p.kind == scan_kind::gae;
  if constexpr (Phase == 0) {
    if (lane == 0) scan_row_lambda(p, i, n);
    return;
  } else {
    const scan_row_head h = scan_row_begin(p, i, n, lane == 0);
    if (c1 <= c0) return;
    if (scan_row_single(p.chunks, i, c0, c1)) {
      if (lane == 0) p.state[c0] = scan_state{h.cnext, 0.0, 0.0, 0.0};
      return;
    }
    const index_t nlead = lead_chunks(p.chunks, i);
    const index_t cm = c0 + nlead;  // first main chunk
    double cnext = h.cnext, cg = 0.0, cg2 = 0.0;  // carried in from the right
    const double gamma = h.gamma, gl = h.gl, glv = h.glv;
    const gae_mask_mode mode = p.cfg.mask;
    // tiles by main index q = c - cm (floor division for the leading chunks)
    auto tile_of = [](index_t q) { return q >= 0 ? q / 32 : -((-q + 31) / 32); };
    const index_t t_hi = tile_of(c1 - 1 - cm), t_lo = tile_of(c0 - cm);
    // The summaries of the next tile (to the left) are loaded before this tile's scans, so
    // that their latency overlaps them: a long row's tiles are walked one after the other
    // (H100, 8 rows of 1,048,576 tokens in one-warp chunks: 128 tiles per row).
    auto tile_summary = [&](index_t t) {
      const index_t c = cm + t * 32 + (31 - lane);
      scan_chunk_summary s{};
      if (c > c0 && c < c1) s = p.summ[c];  // the leftmost chunk's map is never used
      return s;
    };
    scan_chunk_summary s_next = tile_summary(t_hi);
    for (index_t t = t_hi; t >= t_lo; --t) {
      const index_t c = cm + t * 32 + (31 - lane);
      const bool act = c >= c0 && c < c1;
      const bool body = act && c > c0;
      const scan_chunk_summary s = s_next;
      if (t > t_lo) s_next = tile_summary(t - 1);
      // nearest hand-off from the right: lanes below this one, nearest first
      double hv = s.hand;
      int hh = body ? s.has_hand : 0;
#pragma unroll
      for (int d = 1; d < 32; d <<= 1) {
        const double yv = __shfl_up_sync(0xffffffffu, hv, d);
        const int yh = __shfl_up_sync(0xffffffffu, hh, d);
        if (lane >= d && !hh) {
          hv = yv;
          hh = yh;
        }
      }
      double ev = __shfl_up_sync(0xffffffffu, hv, 1);
      int eh = __shfl_up_sync(0xffffffffu, hh, 1);
      if (lane == 0) eh = 0;
      const double next_in = eh ? ev : cnext;
      const double tile_hv = __shfl_sync(0xffffffffu, hv, 31);
      const int tile_hh = __shfl_sync(0xffffffffu, hh, 31);
      // this chunk's full map
      detail::affine_step m1{}, m2{};
      if (body) {
        m1 = s.f;
        m2 = s.f2;
        if (gae && s.bt >= 0) {
          m1 = detail::affine_compose(s.f, detail::gae_step(mode, s.valid_p != 0, s.r_p, s.v_p, next_in, gamma, gl));
          m2 = detail::affine_compose(s.f2, detail::gae_step(mode, s.valid_p != 0, s.r_p, s.v_p, next_in, gamma, glv));
        }
      }
      // inclusive scan: P_l = M_l ∘ ... ∘ M_0
#pragma unroll
      for (int d = 1; d < 32; d <<= 1) {
        const detail::affine_step y1 = shfl_up_step(m1, d), y2 = shfl_up_step(m2, d);
        if (lane >= d) {
          m1 = detail::affine_compose(m1, y1);
          m2 = detail::affine_compose(m2, y2);
        }
      }
      detail::affine_step e1 = shfl_up_step(m1, 1), e2 = shfl_up_step(m2, 1);
      if (lane == 0) e1 = e2 = detail::affine_step{};
      if (act) p.state[c] = scan_state{next_in, detail::affine_apply(e1, cg), detail::affine_apply(e2, cg2), 0.0};
      const detail::affine_step a1 = shfl_idx_step(m1, 31), a2 = shfl_idx_step(m2, 31);
      cg = detail::affine_apply(a1, cg);
      cg2 = detail::affine_apply(a2, cg2);
      if (tile_hh) cnext = tile_hv;
    }
  }
}

/// The rows pass, one warp per row.
template <int Phase, class T, class L, class F>
__global__ void __launch_bounds__(256) scan_rows_kernel(scan_params<T, L, F> p) {
  scan_pdl_entry();
  const index_t i = (index_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = int(threadIdx.x & 31);
  if (i >= p.chunks.rows) return;  // warp-uniform
  if (p.off_key != nullptr && *p.off_key != no_error_key) {  // bad offsets (asynchronous mode): no row is read
    if (Phase == 1 && i == 0 && lane == 0) {                 // the row reduction still runs (final pass)
      *p.done = 0u;
      *p.lead_n = 0u;
    }
    return;
  }
  scan_row_warp<Phase>(p, i, lane);
}

/// The rows pass of batches of short rows (scan_short_rows): one thread per row of one chunk
/// (its count read, its coefficients and entering state written), and each other row of the
/// warp's 32 by the whole warp in turn (scan_row_warp). The same values as scan_rows_kernel.
/// (65,536 rows of 128 tokens on an H100: 33.5 us under ncu with a warp per row.)
template <int Phase, class T, class L, class F>
__global__ void __launch_bounds__(256) scan_rows_short_kernel(scan_params<T, L, F> p) {
  scan_pdl_entry();
  const index_t i = index_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int lane = int(threadIdx.x & 31);
  if (p.off_key != nullptr && *p.off_key != no_error_key) {  // uniform: see scan_rows_kernel
    if (Phase == 1 && i == 0) {
      *p.done = 0u;
      *p.lead_n = 0u;
    }
    return;
  }
  const bool row = i < p.chunks.rows;  // every lane stays for the warp's rows below
  bool single = false;
  if (row) {
    const index_t c0 = chunk_begin_of_row(p.layout, p.chunks, i), c1 = chunk_end_of_row(p.layout, p.chunks, i);
    single = scan_row_single(p.chunks, i, c0, c1);
    if (single) {
      const long long n = c1 > c0 ? p.summ[c0].count : 0;
      if constexpr (Phase == 0) {
        scan_row_lambda(p, i, n);
      } else {
        const scan_row_head h = scan_row_begin(p, i, n, true);
        if (c1 > c0) p.state[c0] = scan_state{h.cnext, 0.0, 0.0, 0.0};
      }
    }
  }
  unsigned rest = __ballot_sync(0xffffffffu, row && !single);
  while (rest != 0) {
    const int l = __ffs(rest) - 1;
    rest &= rest - 1;
    scan_row_warp<Phase>(p, i - lane + l, lane);
  }
}

// ---- apply pass ---------------------------------------------------------------------------------

/// Merges the moments of two sets (Chan, Golub and LeVeque) with one division: the chunk
/// trees of the apply pass and the row reduction (the host-side `moments::operator+=`
/// divides twice).
__device__ __forceinline__ void merge_moments(moments& a, const moments& b) {
  if (b.count == 0) return;
  if (a.count == 0) {
    a = b;
    return;
  }
  const long long n = a.count + b.count;
  const double inv = 1.0 / double(n);
  const double d = b.mean - a.mean;
  const double wb = double(b.count) * inv;
  a.mean += d * wb;
  a.m2 += b.m2 + d * d * double(a.count) * wb;
  a.count = n;
}

/// Whether chunks of NT threads stage the outputs of chunks that start off the vector boundary
/// (scan_out_stash): chunks of 256 threads (rows above 2,048 tokens). H100, GAE with a masked
/// prefix in every row (after-d13dbb8/ call 3): left padded 1024 x 8192 186 -> 177 us, 512 x
/// 4096 77-78 -> 72-73; packed with a prompt 200 -> 193-194 and 87-88 -> 83-84 us. In one-warp
/// chunks the staging code cost registers (spills of 40-190 bytes where there were 4-70) and
/// 2-6% on rows of 128 to 2,048 tokens, in chunks of 64 threads 9% on rows of 512 (call 6), so
/// they store element by element as before.
template <int NT>
inline constexpr bool scan_stages_stores = NT >= 256;

/// A chunk's two outputs staged in shared memory (scan_out_stash), per chunk of NT threads x K
/// (a token array of 2 * NT elements where the chunk shape does not stage).
template <int NT, int K, class T>
struct scan_store_buf {
  T v[2 * NT * (scan_stages_stores<NT> ? K : 1)];
};

/// A chunk's stores of a staged output: the elements before dst's first 16-byte boundary,
/// then 16-byte words, then the rest, evict-first (scan_apply_evict_first), from src[0, n).
template <int NT, class T>
__device__ __forceinline__ void scan_store_staged(T* dst, const T* src, int n, int tid) {
  constexpr int per = 16 / int(sizeof(T));
  const int mis = int((reinterpret_cast<std::uintptr_t>(dst) / sizeof(T)) % per);
  const int h = mis == 0 ? 0 : (per - mis < n ? per - mis : n);
  if (tid < h) __stcs(dst + tid, src[tid]);
  const int nv = (n - h) / per;
  uint4* dv = reinterpret_cast<uint4*>(dst + h);
  for (int q = tid; q < nv; q += NT) {
    T w[per];
#pragma unroll
    for (int e = 0; e < per; ++e) w[e] = src[h + q * per + e];
    uint4 u;
    std::memcpy(&u, w, 16);
    __stcs(dv + q, u);
  }
  for (int q = h + nv * per + tid; q < n; q += NT) __stcs(dst + q, src[q]);
}

/// Stores a chunk's outputs, first part: thread tid's K consecutive values of `a` at da + k0
/// (da null: no such output) and of `r` at dr + k0, of the chunk's n positions. A chunk whose
/// outputs start on a 16-byte boundary stores them here as they are (store_blocked_as) and
/// gets false. Otherwise (rows cut at a first valid position off the boundary: left padding, a
/// prompt before each response) each thread would store its values one element at a time: in
/// chunks that stage (scan_stages_stores) they go to `buf` (2 * NT * K elements) and the chunk
/// gets true, and stores them with scan_out_flush once it holds little else in registers
/// (after its statistics): a thread's K values of each output in 16-byte words. Staging in
/// the same call, right after the values, spilled registers in every apply kernel.
template <int NT, int K, class T>
__device__ __forceinline__ bool scan_out_stash(T* da, T* dr, index_t k0, index_t n, const T (&a)[K], const T (&r)[K],
                                               T* buf) {
  constexpr int VB = vector_bytes_v<K, T>;
  const auto addr = [](const T* q) { return reinterpret_cast<std::uintptr_t>(q); };
  const bool aligned = addr(dr) % 16 == 0 && (da == nullptr || addr(da) % 16 == 0);
  const bool whole = addr(dr) % sizeof(T) == 0 && (da == nullptr || addr(da) % sizeof(T) == 0);
  if (!scan_stages_stores<NT> || VB < 16 || aligned || !whole) {
    if (da != nullptr) store_blocked_as<K, scan_apply_evict_first>(da, k0, n, a);
    store_blocked_as<K, scan_apply_evict_first>(dr, k0, n, r);
    return false;
  }
  const int nk = items_in_range<K>(k0, n);
#pragma unroll
  for (int k = 0; k < K; ++k)
    if (k < nk) {
      buf[k0 + k] = a[k];
      buf[NT * K + k0 + k] = r[k];
    }
  return true;
}

/// Second part, after scan_out_stash returned true (chunk-uniform): the staged outputs stored.
template <int NT, int CPB, int K, class T>
__device__ __forceinline__ void scan_out_flush(T* da, T* dr, index_t n, const T* buf, int tid) {
  chunk_sync<CPB>();
  if (da != nullptr) scan_store_staged<NT>(da, buf, int(n), tid);
  scan_store_staged<NT>(dr, buf + NT * K, int(n), tid);
}

/// One chunk of the apply pass (c: its index in the chunk table); `tid` its thread, `sm` its
/// shared row, `buf` its staging buffer (scan_out_stash). Lead = false: every chunk; a leading
/// masked one (see chunk_table) is written as zeros under masked_fill::zero, and otherwise
/// appended to `p.lead` instead; the leftmost main chunk of each row records the state after
/// the row's first valid position. Lead = true: a leading chunk, the rightmost of a row
/// entering with that exact state (so the echo of masked_fill::recursion equals the first
/// valid value bit for bit).
template <int NT, int CPB, int K, bool HasMask, scan_form Form, bool Lead, bool Stored, class T, class L, class F>
__device__ __forceinline__ void scan_apply_chunk(const scan_params<T, L, F>& p, index_t c, int tid,
                                                 chunk_smem<NT>& sm, T* buf) {
  using Mask = typename L::mask_type;
  constexpr bool Two = Form == scan_form::two, Fixed = Form == scan_form::gae_default;
  const bool gae = Fixed || p.kind == scan_kind::gae;
  const gae_mask_mode mode = Fixed ? gae_mask_mode::skip : p.cfg.mask;
  const masked_fill fill = Fixed ? masked_fill::zero : p.cfg.fill;
  chunk_place q;
  if (!place_chunk(p.layout, p.chunks, c, q)) return;
  const index_t i = q.i, j = q.j, nlead = q.nlead, t0 = q.t0, n = q.n;
  const index_t k0 = index_t(tid) * K;
  if (!Lead && j < nlead) {  // a leading chunk (every position masked)
    // Under zero fill its outputs are zeros whatever the state: written here, nothing read and
    // no second launch (H100, after-d13dbb8/ call 3: GAE left padded 1024 x 8192 198 -> 186 us,
    // packed with a prompt before each response 215 -> 200 us).
    if (fill == masked_fill::zero) {
      T zero[K];
#pragma unroll
      for (int k = 0; k < K; ++k) zero[k] = T(0);
      T* da = gae || p.base != nullptr ? p.layout.row_ptr(p.A, i) + t0 : nullptr;
      T* dr = p.layout.row_ptr(p.R, i) + t0;
      if (scan_out_stash<NT, K>(da, dr, k0, n, zero, zero, buf)) scan_out_flush<NT, CPB, K>(da, dr, n, buf, tid);
      return;
    }
    if (tid == 0) p.lead[atomicAdd(p.lead_n, 1u)] = c;  // for the second launch
    return;
  }
  const int nk = items_in_range<K>(k0, n);

  bool valid[K];
  if constexpr (HasMask) {
    Mask m[K];
    load_blocked_as<K, scan_apply_evict_first>(p.layout.mask_row(i) + t0, k0, n, m, Mask(0));
#pragma unroll
    for (int k = 0; k < K; ++k) valid[k] = k < nk && detail::is_valid(m[k]);
  } else {
#pragma unroll
    for (int k = 0; k < K; ++k) valid[k] = k < nk;
  }
  T r[K], v[K];
  load_blocked_as<K, scan_apply_evict_first>(p.layout.row_ptr(p.r, i) + t0, k0, n, r, T(0));
  if (gae) load_blocked_as<K, scan_apply_evict_first>(p.layout.row_ptr(p.v, i) + t0, k0, n, v, T(0));
  const scan_state in = (Lead && j == nlead - 1) ? p.exit_state[i] : p.state[c];
  const scan_row row = p.rows[i];
  const double gamma = p.cfg.gamma;

  double nxt0 = in.next, g = in.g, g2 = in.g2;
  if constexpr (Stored) {
    // The state entering this thread: the summary pass stored the composition of the maps to
    // its right within the chunk (without the boundary step) and the `next` it receives; the
    // boundary step B is formed here from the boundary position's raw inputs and the `next`
    // entering the chunk (in.next), exactly as the rows pass forms it.
    const index_t slot = c * NT + tid;
    if (gae) {
      const int bt = p.summ[c].bt;
      if (int(tid) < bt) {
        const bool valid_p = p.summ[c].valid_p != 0;
        const double r_p = p.summ[c].r_p, v_p = p.summ[c].v_p;
        g = detail::affine_apply(
            p.tmap[slot], detail::affine_apply(detail::gae_step(mode, valid_p, r_p, v_p, in.next, gamma, row.gl), in.g));
        if constexpr (Two)
          g2 = detail::affine_apply(
              p.tmap2[slot],
              detail::affine_apply(detail::gae_step(mode, valid_p, r_p, v_p, in.next, gamma, row.gl2), in.g2));
        nxt0 = double(p.tnext[slot]);
      }
    } else {
      g = detail::affine_apply(p.tmap[slot], in.g);
    }
  } else {
    // Not stored: this thread's maps (pass 1) and the chunk's suffix scans of hand-offs
    // and maps; pass 2 re-forms the same steps (bitwise the same values: the same formulas on
    // the same inputs) while it applies them, so no per-token map is kept in registers.
    step_pair mine{};
    if (gae) {
      handoff tot_h;
      const handoff right = chunk_handoff_right<NT, CPB, K>(mode, valid, v, nk, sm, tot_h);
      nxt0 = right.has ? right.v : in.next;
      double nxt = nxt0;
#pragma unroll
      for (int k = K - 1; k >= 0; --k) {
        const bool on = k < nk;
        const double rk = double(r[k]), vk = double(v[k]);
        if constexpr (Two) {  // two scans: branched (as in the write loop)
          if (on) {
            mine.s1 = detail::affine_compose(detail::gae_step(mode, valid[k], rk, vk, nxt, gamma, row.gl), mine.s1);
            mine.s2 = detail::affine_compose(detail::gae_step(mode, valid[k], rk, vk, nxt, gamma, row.gl2), mine.s2);
          }
        } else {
          const detail::affine_step c1 =
              detail::affine_compose(gae_step_sel(mode, valid[k], rk, vk, nxt, gamma, row.gl), mine.s1);
          mine.s1 = on ? c1 : mine.s1;
        }
        nxt = on ? detail::gae_next_value(mode, valid[k], vk, nxt) : nxt;
      }
    } else {
#pragma unroll
      for (int k = K - 1; k >= 0; --k)
        if (k < nk)
          mine.s1 = detail::affine_compose(detail::returns_step(p.rmask, valid[k], double(r[k]), gamma), mine.s1);
    }
    if constexpr (Two) {
      step_pair tot;
      const step_pair right =
          chunk_suffix_exclusive<NT, CPB>(mine, step_pair{}, step_pair_op{}, sm.template as<step_pair>(), tot);
      g = detail::affine_apply(right.s1, in.g);
      g2 = detail::affine_apply(right.s2, in.g2);
    } else {
      detail::affine_step tot;
      const detail::affine_step right = chunk_suffix_exclusive<NT, CPB>(
          mine.s1, detail::affine_step{}, affine_op{}, sm.template as<detail::affine_step>(), tot);
      g = detail::affine_apply(right, in.g);
    }
  }

  T out_a[K], out_r[K];
  scan_chunk_stats cs{};
  bool staged = false;  // the outputs wait in buf (scan_out_stash)
  if (gae) {
    double nxt = nxt0;
#pragma unroll
    for (int k = K - 1; k >= 0; --k) {
      const bool on = k < nk;
      const double rk = double(r[k]), vk = double(v[k]);
      if constexpr (Two) {  // two scans: branched (selecting both held too many registers)
        if (on) {
          g = detail::affine_apply(detail::gae_step(mode, valid[k], rk, vk, nxt, gamma, row.gl), g);
          g2 = detail::affine_apply(detail::gae_step(mode, valid[k], rk, vk, nxt, gamma, row.gl2), g2);
          nxt = detail::gae_next_value(mode, valid[k], vk, nxt);
        }
      } else {
        const double gn = detail::affine_apply(gae_step_sel(mode, valid[k], rk, vk, nxt, gamma, row.gl), g);
        g = on ? gn : g;
        nxt = on ? detail::gae_next_value(mode, valid[k], vk, nxt) : nxt;
      }
      const detail::gae_output o = gae_write_sel(mode, fill, valid[k], g, Two ? g2 : g, vk);
      out_a[k] = T(o.advantage);
      out_r[k] = T(o.ret);
    }
    staged = scan_out_stash<NT, K>(p.layout.row_ptr(p.A, i) + t0, p.layout.row_ptr(p.R, i) + t0, k0, n, out_a, out_r,
                                   buf);
    if (!Lead && j == nlead && nlead > 0 && tid == 0) p.exit_state[i] = scan_state{nxt, g, g2, 0.0};
  } else {
    const double b = p.base != nullptr ? double(p.base[i * p.base_stride]) : 0.0;
#pragma unroll
    for (int k = K - 1; k >= 0; --k) {
      if (k < nk) g = detail::affine_apply(detail::returns_step(p.rmask, valid[k], double(r[k]), gamma), g);
      const detail::returns_output o = detail::returns_write(fill, valid[k], g, b);
      out_r[k] = T(o.ret);
      out_a[k] = T(o.advantage);
    }
    staged = scan_out_stash<NT, K>(p.base != nullptr ? p.layout.row_ptr(p.A, i) + t0 : nullptr,
                                   p.layout.row_ptr(p.R, i) + t0, k0, n, out_a, out_r, buf);
    if (!Lead && j == nlead && nlead > 0 && tid == 0) p.exit_state[i] = scan_state{0.0, g, 0.0, 0.0};
  }
  // Statistics of the chunk: exact two-pass moments per warp (the valid outputs' count and
  // sums in a fixed warp tree, the warp's mean, then the squared deviations from it in a second
  // tree), and the chunk's warps merged in order by its first thread (one division each).
  // Chunks are cut at the row's first valid position, so a padded row and the same row packed
  // put every token on the same thread and reduce identically. (Sums selected, not branched
  // on: adding +0.0 leaves a sum that starts at +0.0 bitwise as it is, since it is never -0.0
  // in round-to-nearest.) The chunk's tree used to merge per-thread moments at every step, a
  // division and a 32-byte shuffle each: about 300 of the apply pass's 1,100 instructions per
  // thread (H100, 1024 x 8192).
  {
    struct count_sums {
      double sum, rsum;
      int count, pad_;
    };
    count_sums t{0.0, 0.0, 0, 0};
#pragma unroll
    for (int k = 0; k < K; ++k) {
      t.count += valid[k] ? 1 : 0;
      const double x = double(gae ? out_a[k] : out_r[k]);
      t.sum += valid[k] ? x : 0.0;
      if (gae) t.rsum += valid[k] ? double(out_r[k]) : 0.0;
    }
    t = warp_reduce_fixed(t, [](count_sums a, const count_sums& b) {
      a.count += b.count;
      a.sum += b.sum;
      a.rsum += b.rsum;
      return a;
    });
    const int wcnt = __shfl_sync(0xffffffffu, t.count, 0);
    const double wsum = __shfl_sync(0xffffffffu, t.sum, 0);
    const double mean = wcnt > 0 ? wsum / double(wcnt) : 0.0;
    double m2 = 0.0;
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const double d = valid[k] ? double(gae ? out_a[k] : out_r[k]) - mean : 0.0;
      m2 += d * d;
    }
    m2 = warp_reduce_fixed(m2, [](double a, double b) { return a + b; });
    cs.m.count = wcnt;  // (lane 0's values are the warp's)
    cs.m.mean = mean;
    cs.m.m2 = m2;
    cs.rsum = t.rsum;
  }
  if constexpr (CPB == 1)
    cs = block_fold_warps<NT>(
        cs,
        [](scan_chunk_stats a, const scan_chunk_stats& b) {
          merge_moments(a.m, b.m);
          a.rsum += b.rsum;
          return a;
        },
        sm.template as<scan_chunk_stats>());
  if (tid == 0) p.cstats[c] = cs;
  if (staged)
    scan_out_flush<NT, CPB, K>(gae || p.base != nullptr ? p.layout.row_ptr(p.A, i) + t0 : nullptr,
                               p.layout.row_ptr(p.R, i) + t0, n, buf, tid);
}

/// The apply pass. Lead = false: one chunk per warp (CPB > 1) or block, every chunk of the
/// table. Lead = true (launched after, with at most POLO_CUDA_SCAN_LEAD_BLOCKS blocks): the
/// leading chunks the first launch listed (none without left padding or under zero fill),
/// strided over the grid.
template <int NT, int K, bool HasMask, scan_form Form, bool Lead, bool Stored, class T, class L, class F>
__global__ void __launch_bounds__(NT * scan_cpb<NT>, scan_apply_min_blocks<NT, Lead>) scan_apply_kernel(scan_params<T, L, F> p) {
  scan_pdl_entry();
  constexpr int CPB = scan_cpb<NT>;
  __shared__ chunk_smem<NT> sm_all[CPB];
  __shared__ scan_store_buf<NT, K, T> bufs[CPB];
  const int tid = CPB > 1 ? int(threadIdx.x & 31) : int(threadIdx.x);
  const int wic = CPB > 1 ? int(threadIdx.x >> 5) : 0;  // chunk of the block
  if (*p.err != no_error_key) return;  // the gate: an error was found, nothing is written
  if constexpr (Lead) {
    const index_t count = index_t(*p.lead_n);
    for (index_t q = index_t(blockIdx.x) * CPB + wic; q < count; q += index_t(gridDim.x) * CPB)
      scan_apply_chunk<NT, CPB, K, HasMask, Form, true, Stored>(p, p.lead[q], tid, sm_all[wic], bufs[wic].v);
  } else {
    const index_t b = index_t(gridDim.x) - 1 - index_t(blockIdx.x);  // the summary pass's order reversed (see scan_apply_evict_first)
    scan_apply_chunk<NT, CPB, K, HasMask, Form, false, Stored>(p, b * CPB + wic, tid, sm_all[wic], bufs[wic].v);
  }
}

// ---- statistics: rows, then the batch -----------------------------------------------------------

struct scan_partial_op {
  __device__ __forceinline__ scan_partial operator()(scan_partial a, const scan_partial& b) const {
    merge_moments(a.m, b.m);
    a.rsum += b.rsum;
    a.lambda_sum += b.lambda_sum;
    a.lambda_count += b.lambda_count;
    a.truncated += b.truncated;
    return a;
  }
};

/// Loads a struct of 8-byte words through L2 (`ld.global.cg`): the final pass reads the other
/// blocks' partials, published with a fence before their ticket.
template <class S>
__device__ __forceinline__ S load_cg(const S* p) {
  static_assert(sizeof(S) % 8 == 0, "load_cg: 8-byte words");
  unsigned long long w[sizeof(S) / 8];
#pragma unroll
  for (int k = 0; k < int(sizeof(S) / 8); ++k) w[k] = __ldcg(reinterpret_cast<const unsigned long long*>(p) + k);
  S out;
  std::memcpy(&out, w, sizeof(S));
  return out;
}

/// The status of a packed layout's bad offsets from the key of packed_offsets_check_kernel (0:
/// offsets[0] != 0; j in 1..B: offsets[j] < offsets[j-1]; B+1: offsets[B] != N): its code, and
/// the offending values in `a`, `b` (and j in `index`) as the host check names them. Sets only
/// `code`, `index`, `a`, `b`; the caller owns `entry` and records the status.
template <class L>
__device__ void packed_offsets_status(const L& layout, unsigned long long key, cuda::status& s) {
  const index_t B = layout.num_seqs();
  auto at = [&](index_t j) { return static_cast<long long>(layout.offsets.data[j * layout.offsets.stride]); };
  if (key == 0) {
    s.code = detail::status_offsets_start;
    s.a = at(0);
  } else if (static_cast<index_t>(key) <= B) {
    s.code = detail::status_offsets_decrease;
    s.index = static_cast<long long>(key);
    s.a = at(index_t(key) - 1);
    s.b = at(index_t(key));
  } else {
    s.code = detail::status_offsets_end;
    s.a = at(B);
    s.b = static_cast<long long>(layout.tokens);
  }
}

template <class T, class L, class F>
__device__ void scan_final_block(const scan_params<T, L, F>& p, unsigned long long key, index_t nb);
template <class T, class L, class F>
__device__ void scan_finish(const scan_params<T, L, F>& p, unsigned long long key, const scan_partial& x);
template <class T, class L, class F>
__device__ void scan_publish(const scan_params<T, L, F>& p, const scan_result& o);

/// A row's statistics from its main chunks [cm, c1), by one warp: lane l merges chunks l,
/// l+32, ... in order, then a fixed warp tree; lane 0 holds the result (moments and returns'
/// sum; the per-row fields are the caller's).
template <class T, class L, class F>
__device__ __forceinline__ scan_partial scan_reduce_row_warp(const scan_params<T, L, F>& p, index_t cm, index_t c1,
                                                             int lane) {
  scan_partial x{};
  for (index_t c = cm + lane; c < c1; c += 32) {
    const scan_chunk_stats& o = p.cstats[c];
    x.m += o.m;
    x.rsum += o.rsum;
  }
#pragma unroll
  for (int d = 16; d > 0; d >>= 1) {
    const scan_partial y = shfl_down_struct(x, d);
    if (lane + d < 32) x = scan_partial_op{}(x, y);
  }
  return x;
}

/// A row of one main chunk cm: its statistics are the chunk's as they are, added to the empty
/// x as lane 0 of scan_reduce_row_warp adds them; the warp tree would merge them with empty
/// partials only, which leave them bitwise as they are (merge_moments returns at once, and
/// rsum, a sum started at +0.0, is never -0.0, so adding +0.0 keeps it), so it is skipped.
template <class T, class L, class F>
__device__ __forceinline__ void scan_reduce_row_one(const scan_params<T, L, F>& p, index_t cm, scan_partial& x) {
  const scan_chunk_stats& o = p.cstats[cm];
  x.m += o.m;
  x.rsum += o.rsum;
}

/// A block of scan_reduce_rows rows' results merged in row order: one row block's partial.
__device__ __forceinline__ scan_partial scan_merge_rows(const scan_partial* rows) {
  scan_partial acc = rows[0];
#pragma unroll
  for (int k = 1; k < scan_reduce_rows; ++k) acc = scan_partial_op{}(acc, rows[k]);
  return acc;
}

/// The row reduction's end: with `ticket`, the last block to finish (an integer ticket, after
/// a fence publishing its partials) runs the final pass over the `nb` partials (`last`: a
/// __shared__ flag of the block).
template <class T, class L, class F>
__device__ __forceinline__ void scan_reduce_last(const scan_params<T, L, F>& p, unsigned long long key, bool ticket,
                                                 index_t nb, bool& last) {
  if (!ticket) return;
  if (threadIdx.x == 0) {
    __threadfence();
    last = atomicAdd(p.done, 1u) == gridDim.x - 1;
  }
  __syncthreads();
  if (!last) return;
  __threadfence();
  scan_final_block(p, key, nb);
}

/// One warp per row: lane l merges the row's main chunks l, l+32, ... in order (the leading
/// chunks hold no valid token), then a fixed warp tree; the block's rows in order. Indexing by
/// main chunk keeps a padded row and the same row packed on the same tree (trailing
/// all-masked chunks merge as exact identities). With `ticket`, the last block to finish (an
/// integer ticket) runs the final pass, which merges the blocks' partials in block order
/// whichever block it is; without, scan_fold_kernel does (many row blocks). After an error only
/// the final pass runs (it reports the error).
template <class T, class L, class F>
__global__ void __launch_bounds__(32 * scan_reduce_rows) scan_reduce_kernel(scan_params<T, L, F> p, bool ticket) {
  scan_pdl_entry();
  __shared__ detail::shared_array<scan_partial, scan_reduce_rows> sh;
  __shared__ bool last;
  const unsigned long long key = *p.err;
  const int lane = int(threadIdx.x & 31), w = int(threadIdx.x >> 5);
  const index_t i = index_t(blockIdx.x) * scan_reduce_rows + w;
  if (key == no_error_key) {  // block-uniform
    scan_partial x{};
    if (i < p.chunks.rows) {  // warp-uniform
      const index_t c0 = chunk_begin_of_row(p.layout, p.chunks, i), c1 = chunk_end_of_row(p.layout, p.chunks, i);
      const index_t cm = c0 + lead_chunks(p.chunks, i);  // the first main chunk
      if (c1 - cm <= 1) {
        if (lane == 0 && cm < c1) scan_reduce_row_one(p, cm, x);
      } else {
        x = scan_reduce_row_warp(p, cm, c1, lane);
      }
    }
    if (lane == 0) {
      if (i < p.chunks.rows) {
        const scan_row_stats rs = p.rstats[i];
        x.lambda_sum = rs.lambda_sum;
        x.lambda_count = rs.lambda_count;
        x.truncated = rs.truncated;
      }
      sh[w] = x;
    }
    __syncthreads();
    if (threadIdx.x == 0) p.partials[blockIdx.x] = scan_merge_rows(&sh[0]);
  }
  scan_reduce_last(p, key, ticket, index_t(gridDim.x), last);
}

/// The row reduction of batches of short rows (scan_short_rows): 256 rows per block, one thread
/// per row of one main chunk (or none; scan_reduce_row_one), each other row of a warp's 32 by
/// the whole warp in turn (scan_reduce_row_warp), then 32 threads merge the block's rows 8 at a
/// time in order: the same partials as scan_reduce_kernel's blocks of 8 rows, bit for bit, in
/// a 32nd of the blocks. `nb`: the partials, ceil(B / scan_reduce_rows); with `ticket` the last
/// block runs the final pass over them. (65,536 rows of 128 tokens on an H100: 53.7 us under
/// ncu with a warp per row.)
template <class T, class L, class F>
__global__ void __launch_bounds__(32 * scan_reduce_rows) scan_reduce_short_kernel(scan_params<T, L, F> p, bool ticket,
                                                                                  index_t nb) {
  scan_pdl_entry();
  constexpr int NT = 32 * scan_reduce_rows;
  __shared__ detail::shared_array<scan_partial, NT> sh;
  __shared__ bool last;
  const unsigned long long key = *p.err;
  const int lane = int(threadIdx.x & 31);
  const index_t i = index_t(blockIdx.x) * NT + threadIdx.x;
  if (key == no_error_key) {  // block-uniform
    scan_partial x{};
    bool multi = false;
    index_t cm = 0, c1 = 0;
    if (i < p.chunks.rows) {
      const index_t c0 = chunk_begin_of_row(p.layout, p.chunks, i);
      c1 = chunk_end_of_row(p.layout, p.chunks, i);
      cm = c0 + lead_chunks(p.chunks, i);
      if (c1 - cm <= 1) {
        if (cm < c1) scan_reduce_row_one(p, cm, x);
      } else {
        multi = true;
      }
      const scan_row_stats rs = p.rstats[i];
      x.lambda_sum = rs.lambda_sum;
      x.lambda_count = rs.lambda_count;
      x.truncated = rs.truncated;
    }
    sh[threadIdx.x] = x;
    __syncwarp();  // the warp's rows below overwrite their lanes' entries
    unsigned rest = __ballot_sync(0xffffffffu, multi);
    while (rest != 0) {
      const int l = __ffs(rest) - 1;
      rest &= rest - 1;
      const index_t rcm = __shfl_sync(0xffffffffu, cm, l), rc1 = __shfl_sync(0xffffffffu, c1, l);
      const scan_partial y = scan_reduce_row_warp(p, rcm, rc1, lane);
      if (lane == 0) {
        sh[threadIdx.x + l].m = y.m;
        sh[threadIdx.x + l].rsum = y.rsum;
      }
    }
    __syncthreads();
    if (threadIdx.x < NT / scan_reduce_rows) {
      const index_t q = index_t(blockIdx.x) * (NT / scan_reduce_rows) + threadIdx.x;
      if (q < nb) p.partials[q] = scan_merge_rows(&sh[threadIdx.x * scan_reduce_rows]);
    }
  }
  scan_reduce_last(p, key, ticket, nb, last);
}

/// REINFORCE++'s degenerate-whitening gate: the batch's valid count (from the rows pass), and
/// the gate key when it is below `gate_min_count`. One block; integer sums.
template <class T, class L, class F>
__global__ void __launch_bounds__(256) scan_count_gate_kernel(scan_params<T, L, F> p) {
  scan_pdl_entry();
  __shared__ long long sm[8];
  long long k = 0;
  for (index_t i = threadIdx.x; i < p.chunks.rows; i += 256) k += p.rows[i].n;
  k = block_reduce_fixed<256>(k, [](long long a, long long b) { return a + b; }, sm);
  if (threadIdx.x == 0) {
    *p.valid = k;
    if (k < p.gate_min_count) atomicMin(p.err, gate_key);
  }
}

/// The final pass, by one block of 32 * scan_reduce_rows threads: thread t merges a contiguous
/// range of the `nb` row blocks' partials in order, then a fixed tree; the result or the first
/// error (row, argument, position, value) into *p.result.
template <class T, class L, class F>
__device__ void scan_final_block(const scan_params<T, L, F>& p, unsigned long long key, index_t nb) {
  constexpr int NT = 32 * scan_reduce_rows;
  __shared__ detail::shared_array<scan_partial, NT / 32> s_st;
  scan_partial x{};
  if (key == no_error_key) {
    const index_t per = (nb + NT - 1) / NT;
    const index_t lo = index_t(threadIdx.x) * per;
    const index_t hi = lo + per < nb ? lo + per : nb;
    for (index_t b = lo; b < hi; ++b) x = scan_partial_op{}(x, load_cg(p.partials + b));
  }
  x = block_reduce_fixed<NT>(x, scan_partial_op{}, &s_st[0]);
  if (threadIdx.x == 0) scan_finish(p, key, x);
}

/// The final pass for more row blocks than one block merges at one per thread: the row
/// blocks' partials merged 256 per block in a fixed tree and the blocks' results by the last
/// block to finish (grid_tree_fold), which finishes as scan_final_block does. A programmatic
/// dependent of scan_reduce_kernel. (65,536 rows on an H100: the reduction took 129 us under
/// ncu with one block merging the 8,192 partials.)
template <class T, class L, class F>
__global__ void __launch_bounds__(256) scan_fold_kernel(scan_params<T, L, F> p, index_t nb) {
  __shared__ detail::shared_array<scan_partial, 256> sh;
  __shared__ bool sh_last;
  grid_dependency_wait();
  const unsigned long long key = *p.err;
  scan_partial x;
  if (grid_tree_fold<256>(
          key == no_error_key ? nb : index_t(0), [&](index_t q) { return load_cg(p.partials + q); }, scan_partial_op{},
          scan_partial{}, p.fold, p.done, sh, &sh_last, &x) &&
      threadIdx.x == 0)
    scan_finish(p, key, x);
}

/// The call's result from the merged partial x, or its first error: *p.result, and in the
/// asynchronous mode the published statistics or status. One thread.
template <class T, class L, class F>
__device__ void scan_finish(const scan_params<T, L, F>& p, unsigned long long key, const scan_partial& x) {
  scan_result out;
  out.err_key = key;
  if (p.valid != nullptr) out.valid = __ldcg(p.valid);
  if (key < offsets_gate_key) {
    const index_t i = error_key_row(key), t = error_key_pos(key);
    const int kind = error_key_kind(key);
    double value = 0.0;
    if (kind == 0) value = double(p.layout.row_ptr(p.r, i)[t]);
    else if (kind == 1 && p.kind == scan_kind::gae) value = double(p.layout.row_ptr(p.v, i)[t]);
    else if (kind == 1) value = double(p.base[i * p.base_stride]);
    else value = double(p.boot[i * p.boot_stride]);
    out.err_value = value;
    out.err_flat = kind <= 1 && !(kind == 1 && p.kind == scan_kind::returns) ? detail::flat_index(p.layout, i, t) : i;
  } else if (key == no_error_key) {
    out.tokens = x.m.count;
    out.m = x.m;
    out.rsum = x.rsum;
    out.truncated = x.truncated;
    out.lambda_sum = x.lambda_sum;
    out.lambda_count = x.lambda_count;
  }
  *p.result = out;
  if (p.deferred != nullptr) scan_publish(p, out);
}

/// Asynchronous mode (one thread): the first error as a status into be.deferred_errors (the
/// synchronous call's exception: cuda_check), or the statistics into be.result.
template <class T, class L, class F>
__device__ void scan_publish(const scan_params<T, L, F>& p, const scan_result& o) {
  cuda::status s{};
  s.entry = p.entry;
  const unsigned long long key = o.err_key;
  if (key == offsets_gate_key) {
    if constexpr (L::is_packed) packed_offsets_status(p.layout, *p.off_key, s);
  } else if (key < offsets_gate_key) {
    const int kind = error_key_kind(key);
    s.code = detail::status_nonfinite_arg;
    s.index = static_cast<long long>(o.err_flat);
    s.value = o.err_value;
    if (kind == 0) s.a = detail::arg_rewards;
    else if (kind == 1 && p.kind == scan_kind::gae) s.a = detail::arg_values;
    else if (kind == 1) s.a = detail::arg_baselines;
    else s.a = detail::arg_bootstrap;
  }
  detail::record_status(p.deferred, s);
  if (s.code != detail::status_ok) return;
  if (p.gae_out != nullptr) {
    gae_stats st;
    st.sequences = p.chunks.rows;
    st.tokens = o.tokens;
    st.truncated = o.truncated;
    st.advantages = o.m;
    st.returns = sum_count<double>{o.rsum, o.tokens};
    st.lambda = sum_count<double>{o.lambda_sum, o.lambda_count};
    *p.gae_out = st;
  }
  if (p.ret_out != nullptr) {
    returns_stats st;
    st.sequences = p.chunks.rows;
    st.tokens = o.m.count;
    st.returns = o.m;
    *p.ret_out = st;
  }
}

/// Asynchronous mode, empty batch (no scan runs): publishes the default statistics, or the
/// packed offsets' error. One thread.
template <class T, class L, class F>
__global__ void scan_publish_empty_kernel(scan_params<T, L, F> p) {
  scan_result o;
  if (p.off_key != nullptr && *p.off_key != no_error_key) o.err_key = offsets_gate_key;
  scan_publish(p, o);
}

// ---- packed layouts: offsets check and the chunk table --------------------------------------

/// First error of a packed layout's offsets in the CPU's order: key 0 (offsets[0] != 0), key j
/// (offsets[j] < offsets[j-1]), key B+1 (offsets[B] != N).
template <class O>
__global__ void __launch_bounds__(256) packed_offsets_check_kernel(const O* off, index_t stride, index_t B,
                                                                   index_t N, unsigned long long* key) {
  const index_t j = index_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j > B) return;
  const index_t oj = static_cast<index_t>(off[j * stride]);
  if (j == 0 && oj != 0) atomicMin(key, 0ull);
  if (j > 0 && oj < static_cast<index_t>(off[(j - 1) * stride])) atomicMin(key, static_cast<unsigned long long>(j));
  if (j == B && oj != N) atomicMin(key, static_cast<unsigned long long>(B + 1));
}

/// cnt[i] = ceil(len_i / S) for i < B, cnt[B] = 0 (scanned into the chunk table).
template <class O>
__global__ void __launch_bounds__(256) packed_chunk_count_kernel(const O* off, index_t stride, index_t B, int S,
                                                                 index_t* cnt) {
  const index_t i = index_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i > B) return;
  if (i == B) {
    cnt[i] = 0;
    return;
  }
  const index_t len = static_cast<index_t>(off[(i + 1) * stride]) - static_cast<index_t>(off[i * stride]);
  cnt[i] = (len + S - 1) / S;
}

template <class O>
cudaError_t launch_packed_offsets_check(const O* off, index_t stride, index_t B, index_t N, unsigned long long* key,
                                        cudaStream_t stream) {
  POLO_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(key, 0xff, sizeof(unsigned long long), stream));
  packed_offsets_check_kernel<<<detail::grid_for(B + 1, 256), 256, 0, stream>>>(off, stride, B, N, key);
  return cudaGetLastError();
}

/// Scratch bytes of cub's exclusive scan over B+1 chunk counts.
inline std::size_t chunk_scan_temp_bytes(index_t B) {
  std::size_t bytes = 0;
  (void)cub::DeviceScan::ExclusiveSum(nullptr, bytes, static_cast<const index_t*>(nullptr),
                                      static_cast<index_t*>(nullptr), static_cast<int>(B + 1));
  return bytes;
}

template <class O>
cudaError_t launch_packed_chunk_table(const O* off, index_t stride, index_t B, int S, index_t* cnt, index_t* start,
                                      void* temp, std::size_t temp_bytes, cudaStream_t stream) {
  packed_chunk_count_kernel<<<detail::grid_for(B + 1, 256), 256, 0, stream>>>(off, stride, B, S, cnt);
  POLO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return cub::DeviceScan::ExclusiveSum(temp, temp_bytes, cnt, start, static_cast<int>(B + 1), stream);
}

/// Whether a batch's typical row (padded: T; packed: ⌈N/B⌉) fits one chunk, so that its rows
/// pass and row reduction take a thread per row (scan_rows_short_kernel,
/// scan_reduce_short_kernel; the same values as a warp per row).
template <class T, class L, class F>
bool scan_short_rows(const scan_params<T, L, F>& p) {
  return scan_typical_len(p.layout) <= index_t(p.chunks.S);
}

/// Enqueues the whole scan: [count pass, phase-0 rows] (length-adaptive λ), summary, rows,
/// [count gate], apply (main chunks, then the leading chunks of masked layouts), and the row
/// reduction, whose last block runs the final pass. `*p.err` must hold no_error_key (or an earlier error) before
/// the call.
template <int NT, int K, bool Stored, class T, class L, class F>
cudaError_t launch_scan(const scan_params<T, L, F>& p, cudaStream_t stream) {
  constexpr int CPB = scan_cpb<NT>;
  const index_t grid = (p.chunks.bound + CPB - 1) / CPB;
  // short rows (one chunk each, typically): the rows pass and the row reduction a thread per row
  const bool short_rows = scan_short_rows(p);
  const unsigned row_grid = detail::grid_for(p.chunks.rows * (short_rows ? 1 : 32), 256);
  const unsigned red_grid = detail::grid_for(p.chunks.rows, scan_reduce_rows);  // the partials
  const bool has_mask = !p.layout.mask.is_null();
  // every kernel after the anchors a programmatic dependent of the one before (scan_pdl_entry)
  auto dep = [&](auto kernel, unsigned g, unsigned b, auto... extra) {
    return launch_dependent(kernel, dim3(g), dim3(b), stream, p, extra...);
  };
  auto run = [&](auto hm, auto form) -> cudaError_t {
    constexpr bool HM = decltype(hm)::value;
    constexpr scan_form Form = decltype(form)::value;
    if (grid > 0) {
      if (p.kind == scan_kind::gae && p.cfg.lambda_mode == gae_lambda_mode::length_adaptive) {
        POLO_CUDA_RETURN_IF_ERROR(
            dep(scan_summary_kernel<NT, K, HM, true, scan_form::general, false, T, L, F>, unsigned(grid), NT * CPB));
        if (short_rows)
          POLO_CUDA_RETURN_IF_ERROR(dep(scan_rows_short_kernel<0, T, L, F>, row_grid, 256));
        else
          POLO_CUDA_RETURN_IF_ERROR(dep(scan_rows_kernel<0, T, L, F>, row_grid, 256));
      }
      POLO_CUDA_RETURN_IF_ERROR(dep(scan_summary_kernel<NT, K, HM, false, Form, Stored, T, L, F>, unsigned(grid), NT * CPB));
    }
    if (p.chunks.rows > 0) {
      if (short_rows)
        POLO_CUDA_RETURN_IF_ERROR(dep(scan_rows_short_kernel<1, T, L, F>, row_grid, 256));
      else
        POLO_CUDA_RETURN_IF_ERROR(dep(scan_rows_kernel<1, T, L, F>, row_grid, 256));
    }
    if (p.valid != nullptr) POLO_CUDA_RETURN_IF_ERROR(dep(scan_count_gate_kernel<T, L, F>, 1, 256));
    if (grid > 0) {
      POLO_CUDA_RETURN_IF_ERROR(dep(scan_apply_kernel<NT, K, HM, Form, false, Stored, T, L, F>, unsigned(grid), NT * CPB));
      // the leading chunks' launch; under zero fill the first launch wrote them (it lists none),
      // so the form fixed to zero fill has no such kernel
      if constexpr (HM && Form != scan_form::gae_default) {
        if (p.cfg.fill != masked_fill::zero) {
          const index_t lead_grid = grid < POLO_CUDA_SCAN_LEAD_BLOCKS ? grid : index_t(POLO_CUDA_SCAN_LEAD_BLOCKS);
          POLO_CUDA_RETURN_IF_ERROR(
              dep(scan_apply_kernel<NT, K, HM, Form, true, Stored, T, L, F>, unsigned(lead_grid), NT * CPB));
        }
      }
    }
    // the row reduction; its last block runs the final pass, or for more row blocks than
    // threads of a block the fold kernel does (rows > 0: run_scan returns early for an empty
    // batch)
    const bool ticket = red_grid <= 32u * scan_reduce_rows;
    if (short_rows)
      POLO_CUDA_RETURN_IF_ERROR(dep(scan_reduce_short_kernel<T, L, F>,
                                    detail::grid_for(p.chunks.rows, 32 * scan_reduce_rows), 32 * scan_reduce_rows,
                                    ticket, index_t(red_grid)));
    else
      POLO_CUDA_RETURN_IF_ERROR(dep(scan_reduce_kernel<T, L, F>, red_grid, 32 * scan_reduce_rows, ticket));
    if (ticket) return cudaSuccess;
    return launch_dependent(scan_fold_kernel<T, L, F>, dim3(static_cast<unsigned>(fold_blocks(red_grid, 256))),
                            dim3(256), stream, p, index_t(red_grid));
  };
  using general = std::integral_constant<scan_form, scan_form::general>;
  using two = std::integral_constant<scan_form, scan_form::two>;
  using gae_default = std::integral_constant<scan_form, scan_form::gae_default>;
  const scan_form form = scan_form_of(p);
  // (without a mask every position is valid: the general form, whose mask-mode code is dead)
  if (has_mask)
    return form == scan_form::two           ? run(std::true_type{}, two{})
           : form == scan_form::gae_default ? run(std::true_type{}, gae_default{})
                                            : run(std::true_type{}, general{});
  return form == scan_form::two ? run(std::false_type{}, two{}) : run(std::false_type{}, general{});
}

// ---- row anchors and the chunk table of the scans ----------------------------------------------

/// The index of the first valid flag of `mv`, or E.
template <int E, class Mask>
__device__ __forceinline__ int first_valid_of(const Mask (&mv)[E]) {
  int hit = E;
#pragma unroll
  for (int k = E - 1; k >= 0; --k)
    if (detail::is_valid(mv[k])) hit = k;
  return hit;
}

/// The first valid position of mask row `m` at or after `from`, or `len` when there is none:
/// the warp together, 16 consecutive positions per lane (vector loads where aligned), 512 per
/// step, so a long masked prefix (left padding) takes a few steps, not one per 32 positions.
/// Every lane gets the result.
template <class Mask>
__device__ __forceinline__ index_t warp_first_valid(const Mask* m, index_t from, index_t len, int lane) {
  constexpr int E = 16;
  for (index_t t0 = from; t0 < len; t0 += 32 * E) {
    Mask mv[E];
    load_blocked<E>(m + t0, index_t(lane) * E, len - t0, mv, Mask(0));
    const int hit = first_valid_of(mv);  // this lane's first valid position, or E
    const unsigned ball = __ballot_sync(0xffffffffu, hit < E);
    if (ball != 0) {
      const int l = __ffs(ball) - 1;
      return t0 + index_t(l) * E + __shfl_sync(0xffffffffu, hit, l);
    }
  }
  return len;
}

/// Rows whose typical length (padded: T; packed: ⌈N/B⌉) is at most this many positions get
/// their anchors from one thread per row (scan_anchor_rows_kernel) instead of a warp per row,
/// of which such rows left most lanes idle (H100, GAE 65,536 x 128: 36 us under ncu).
inline constexpr index_t scan_anchor_thread_len = 256;

/// first[i] = the first valid position of row i (0 when it has none or no mask);
/// cnt[i] = ceil(first/S) + ceil((len - first)/S); cnt[B] = 0. One warp per row. With
/// `off_key` (asynchronous mode, packed) holding an offsets error: no row is read, every count
/// is 0 and `err` gets offsets_gate_key.
template <class L>
__global__ void __launch_bounds__(256) scan_anchor_kernel(L layout, int S, index_t* first, index_t* cnt,
                                                          unsigned long long* err,
                                                          const unsigned long long* off_key = nullptr) {
  const index_t i = (index_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x & 31;
  const index_t B = layout.num_seqs();
  if (i > B) return;
  const bool bad = off_key != nullptr && *off_key != no_error_key;
  if (i == B) {
    if (lane == 0) {
      cnt[B] = 0;
      if (err != nullptr) *err = bad ? offsets_gate_key : no_error_key;
    }
    return;
  }
  if (bad) {
    if (lane == 0) {
      first[i] = 0;
      cnt[i] = 0;
    }
    return;
  }
  const index_t len = layout.row_len(i);
  const auto* m = layout.mask_row(i);
  index_t f = 0;
  if (m != nullptr) {
    f = warp_first_valid(m, 0, len, lane);
    if (f == len) f = 0;  // no valid token: one run of chunks from 0
  }
  if (lane == 0) {
    first[i] = f;
    cnt[i] = (f + S - 1) / S + (len - f + S - 1) / S;
  }
}

/// scan_anchor_kernel's first[i], cnt[i] (and cnt[B], `err`) with one thread per row: each
/// lane searches its row's first scan_anchor_thread_len positions, 16 per load; a row not
/// resolved there (a longer row of a packed batch with a longer masked prefix) is then searched
/// by the whole warp (warp_first_valid), one such row after another. The same values.
template <class L>
__global__ void __launch_bounds__(256) scan_anchor_rows_kernel(L layout, int S, index_t* first, index_t* cnt,
                                                               unsigned long long* err,
                                                               const unsigned long long* off_key = nullptr) {
  using Mask = typename L::mask_type;
  constexpr int E = 16;
  const index_t i = index_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int lane = int(threadIdx.x & 31);
  const index_t B = layout.num_seqs();
  const bool bad = off_key != nullptr && *off_key != no_error_key;  // uniform
  if (i == B) {
    cnt[B] = 0;
    if (err != nullptr) *err = bad ? offsets_gate_key : no_error_key;
  }
  if (bad) {
    if (i < B) {
      first[i] = 0;
      cnt[i] = 0;
    }
    return;
  }
  // every lane stays to the warp's searches below; rows past B have none
  const bool row = i < B;
  const index_t len = row ? layout.row_len(i) : 0;
  const Mask* m = row ? layout.mask_row(i) : nullptr;
  index_t f = len;
  if (m != nullptr) {
    const index_t head = len < scan_anchor_thread_len ? len : scan_anchor_thread_len;
    for (index_t t0 = 0; t0 < head; t0 += E) {
      Mask mv[E];
      load_blocked<E>(m + t0, 0, head - t0, mv, Mask(0));
      const int hit = first_valid_of(mv);
      if (hit < E) {
        f = t0 + hit;
        break;
      }
    }
  }
  unsigned open = __ballot_sync(0xffffffffu, m != nullptr && f == len && len > scan_anchor_thread_len);
  while (open != 0) {
    const int l = __ffs(open) - 1;
    open &= open - 1;
    const index_t ri = __shfl_sync(0xffffffffu, i, l);
    const index_t rlen = __shfl_sync(0xffffffffu, len, l);
    const index_t rf = warp_first_valid(layout.mask_row(ri), scan_anchor_thread_len, rlen, lane);
    if (lane == l) f = rf;
  }
  if (!row) return;
  if (m == nullptr || f == len) f = 0;  // no mask, or no valid token: one run of chunks from 0
  first[i] = f;
  cnt[i] = (f + S - 1) / S + (len - f + S - 1) / S;
}

/// owner[c] = the row of chunk c, for c < start[B]. One warp per row.
template <class I>
__global__ void __launch_bounds__(256) scan_owner_kernel(const I* start, I B, I* owner) {
  const index_t i = (index_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x & 31;
  if (i >= B) return;
  const I c1 = start[i + 1];
  for (I c = start[i] + lane; c < c1; c += 32) owner[c] = I(i);
}

#ifndef POLO_CUDA_SCAN_SMALL_TABLE
/// Batches of at most this many rows + 1 get the scans' chunk table from one block (one launch
/// for the scan of the chunk counts and the owners) instead of cub's scan and a second kernel.
#define POLO_CUDA_SCAN_SMALL_TABLE 4096
#endif
inline constexpr int scan_table_threads = 1024;
inline constexpr int scan_table_items = 4;
static_assert(POLO_CUDA_SCAN_SMALL_TABLE <= scan_table_threads * scan_table_items, "POLO_CUDA_SCAN_SMALL_TABLE too large");

/// start = exclusive scan of cnt[0..B] (B + 1 <= 4096; integers: exact), then owner[c] for every
/// chunk (one warp per row, reading the row's bounds from the block's shared copy of start).
/// One block.
template <class I>
__global__ void __launch_bounds__(scan_table_threads) scan_table_small_kernel(const I* cnt, I B, I* start, I* owner) {
  using scan_t = cub::BlockScan<I, scan_table_threads>;
  __shared__ typename scan_t::TempStorage tmp;
  __shared__ I s_start[scan_table_threads * scan_table_items];
  I v[scan_table_items], e[scan_table_items];
  const I q0 = I(threadIdx.x) * scan_table_items;
#pragma unroll
  for (int k = 0; k < scan_table_items; ++k) v[k] = q0 + k <= B ? cnt[q0 + k] : I(0);
  scan_t(tmp).ExclusiveSum(v, e);
#pragma unroll
  for (int k = 0; k < scan_table_items; ++k)
    if (q0 + k <= B) {
      start[q0 + k] = e[k];
      s_start[q0 + k] = e[k];
    }
  __syncthreads();
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  for (I i = w; i < B; i += scan_table_threads / 32) {
    const I c1 = s_start[i + 1];
    for (I c = s_start[i] + lane; c < c1; c += 32) owner[c] = i;
  }
}

/// The scans' chunk table: row anchors, and with `start` non-null (packed layouts) the
/// exclusive scan of the chunk counts into `start` and, with `owner` non-null, the row of each
/// chunk; `err` (or null) is set to no_error_key
/// (offsets_gate_key, with an empty table, when `off_key` holds a packed offsets error).
template <class L>
cudaError_t launch_scan_chunk_table(const L& layout, int S, index_t* first, index_t* cnt, index_t* start, void* temp,
                                    std::size_t temp_bytes, cudaStream_t stream, index_t* owner = nullptr,
                                    unsigned long long* err = nullptr, const unsigned long long* off_key = nullptr) {
  const index_t B = layout.num_seqs();
  if (scan_typical_len(layout) <= scan_anchor_thread_len)
    scan_anchor_rows_kernel<<<detail::grid_for(B + 1, 256), 256, 0, stream>>>(layout, S, first, cnt, err, off_key);
  else
    scan_anchor_kernel<<<detail::grid_for((B + 1) * 32, 256), 256, 0, stream>>>(layout, S, first, cnt, err, off_key);
  POLO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  if (start == nullptr) return cudaSuccess;  // padded: the anchors only
  if (owner != nullptr && B + 1 <= POLO_CUDA_SCAN_SMALL_TABLE) {
    scan_table_small_kernel<index_t><<<1, scan_table_threads, 0, stream>>>(cnt, B, start, owner);
    return cudaGetLastError();
  }
  POLO_CUDA_RETURN_IF_ERROR(
      cub::DeviceScan::ExclusiveSum(temp, temp_bytes, cnt, start, static_cast<int>(B + 1), stream));
  if (owner == nullptr || B <= 0) return cudaSuccess;
  scan_owner_kernel<index_t><<<detail::grid_for(B * 32, 256), 256, 0, stream>>>(start, B, owner);
  return cudaGetLastError();
}

// ---- helpers of the composite entries (REINFORCE++, OPO) ---------------------------------------

/// n[i] = valid tokens of row i; one warp per row (integer sums: order-free).
template <class L>
__global__ void __launch_bounds__(256) row_count_kernel(L layout, long long* n) {
  const index_t i = (index_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x & 31;
  if (i >= layout.num_seqs()) return;
  const index_t len = layout.row_len(i);
  const auto* m = layout.mask_row(i);
  long long k = 0;
  for (index_t t = lane; t < len; t += 32) k += (m == nullptr || detail::is_valid(m[t])) ? 1 : 0;
#pragma unroll
  for (int d = 16; d > 0; d >>= 1) k += __shfl_down_sync(0xffffffffu, k, d);
  if (lane == 0) n[i] = k;
}

/// total[0] = sum of n[0..B).
template <class N>
__global__ void __launch_bounds__(256) sum_counts_kernel(const N* n, index_t B, N* total) {
  __shared__ long long sm[8];
  long long k = 0;
  for (index_t i = threadIdx.x; i < B; i += 256) k += n[i];
  k = block_reduce_fixed<256>(k, [](long long a, long long b) { return a + b; }, sm);
  if (threadIdx.x == 0) *total = k;
}

template <class L>
cudaError_t launch_row_counts(const L& layout, long long* n, long long* total, cudaStream_t stream) {
  const index_t B = layout.num_seqs();
  if (B > 0) {
    row_count_kernel<<<detail::grid_for(B * 32, 256), 256, 0, stream>>>(layout, n);
    POLO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  }
  sum_counts_kernel<<<1, 256, 0, stream>>>(n, B, total);
  return cudaGetLastError();
}

/// REINFORCE++: the whitening coefficients (computed on the host from the scan's moments) into
/// the result slot the whitening's write kernel reads; no error.
template <class S>
__global__ void store_whiten_slot_kernel(detail::result_slot<S>* slot, S value) {
  slot->error = cuda::status{};
  slot->value = value;
}

/// First non-finite score (smallest index) -> atomicMin(key, i).
template <class T>
__global__ void __launch_bounds__(256) opo_check_kernel(const T* s, index_t stride, index_t B, unsigned long long* key) {
  const index_t i = index_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < B && !detail::is_finite(s[i * stride])) atomicMin(key, static_cast<unsigned long long>(i));
}

/// OPO, one thread per group: b_g = sum_j n_j s_j / sum_j n_j over the group's members in
/// ascending index (Neumaier, as the CPU backend), 0 for a group of one; A_j = s_j - b_g for
/// every member; flags the group's first member and whether the group is a singleton.
/// Contiguous groups (`starts` null): group q = [qG, min(B, (q+1)G)), thread q. Labelled
/// groups (the segmentation of cuda/polo/advantages.cuh: `order` lists the members of group
/// q at [starts[q], starts[q+1]) in ascending index): thread q for q < *n_groups. O(B) in all.
template <class T>
__global__ void __launch_bounds__(256) opo_group_kernel(const T* s, index_t s_stride, index_t B, index_t G,
                                                        const int* starts, const int* order, const int* n_groups,
                                                        const long long* n, T* adv, index_t a_stride, int* first,
                                                        int* single) {
  const index_t q = index_t(blockIdx.x) * blockDim.x + threadIdx.x;
  index_t lo = 0, hi = 0;
  if (starts == nullptr) {
    lo = q * G;
    if (lo >= B) return;
    hi = lo + G < B ? lo + G : B;
  } else {
    if (q >= index_t(*n_groups)) return;
    lo = starts[q];
    hi = starts[q + 1];
  }
  auto member = [&](index_t k) { return starts == nullptr ? k : index_t(order[k]); };
  detail::neumaier_sum num;
  long long den = 0;
  for (index_t k = lo; k < hi; ++k) {
    const index_t j = member(k);
    num.add(double(n[j]) * double(s[j * s_stride]));
    den += n[j];
  }
  const index_t size = hi - lo;
  const double b = size == 1 ? 0.0 : (den > 0 ? num.value() / double(den) : 0.0);
  for (index_t k = lo; k < hi; ++k) {
    const index_t j = member(k);
    adv[j * a_stride] = T(double(s[j * s_stride]) - b);
    first[j] = k == lo ? 1 : 0;
    single[j] = (k == lo && size == 1) ? 1 : 0;
  }
}

struct opo_result {
  long long groups = 0, singleton = 0;
  moments scores{};
  double asum = 0.0, pad_ = 0.0;
};

/// Group statistics of OPO in index order (one thread: the CPU's order for contiguous groups).
template <class T>
__global__ void opo_stats_kernel(const T* s, index_t s_stride, const T* adv, index_t a_stride, index_t B,
                                 const int* first, const int* single, opo_result* out) {
  if (threadIdx.x != 0 || blockIdx.x != 0) return;
  opo_result r;
  detail::neumaier_sum as;
  for (index_t i = 0; i < B; ++i) {
    r.groups += first[i];
    r.singleton += single[i];
    r.scores.add(double(s[i * s_stride]));
    as.add(double(adv[i * a_stride]));
  }
  r.asum = as.value();
  *out = r;
}

}  // namespace polo::kernels
