// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
#pragma once
/// \file
/// CUDA implementation of the scans of <polo/gae.hpp>: `gae` (every mask mode, fill, bootstrap,
/// length-adaptive and decoupled λ), `discounted_returns` and `remax_advantages`, as
/// `detail::backend_impl<polo::cuda, detail::gae_tag>`, plus their scratch-size queries. The
/// public entries have checked every shape and option on the host.
///
/// Semantics are the CPU backend's position for position: the per-position steps and writes
/// are the POLO_HD_INLINE functions of <polo/gae.hpp> (`gae_step`, `gae_next_value`,
/// `gae_write`, `returns_step`, `returns_write`, `gae_row_setup`), with the scan state in
/// double. Only the association of the recurrence differs (a parallel scan of affine maps in
/// reverse time instead of one loop), so results agree with the CPU backend to rounding and
/// are bitwise identical run to run (fixed trees; the only atomic is an integer min on the
/// error key). Algorithm and byte counts: cuda/polo/kernels/gae.cuh.
///
/// Synchronization: each call returns statistics by value, so by default it synchronizes the
/// tag's stream once, after the final reduction; a packed layout adds one synchronization after
/// the device check of its offsets (before anything is launched that reads through them). On a
/// data error (a non-finite value at a valid position, a non-finite bootstrap or baseline, bad
/// offsets) nothing is written and the CPU backend's exception is thrown, with its message.
/// `gae`, `discounted_returns` and `remax_advantages` with `be.result` and `be.deferred_errors`
/// set (docs/cuda.md, "Statistics without a host synchronization") never synchronize: the
/// offsets check stays on the device (bad offsets empty the chunk table: no row is read, nothing
/// written), the final pass writes the statistics to `be.result` (gae_stats / returns_stats)
/// or the first error to `be.deferred_errors` (polo::cuda_check throws the synchronous call's
/// exception), and the call returns a default-constructed value. reinforce_plus_plus,
/// reinforce_pp_baseline and opo_advantages stay synchronous and ignore `be.result`.
///
/// Limits of the CUDA backend: fewer than 2^29 sequences and fewer than 2^32 tokens per
/// sequence (shape_error otherwise).

#include <cuda_runtime.h>

#include <cstddef>
#include <cstring>
#include <string>
#include <type_traits>

#include "polo/core/backend.hpp"
#include "polo/core/error.hpp"
#include "polo/core/layout.hpp"
#include "polo/core/view.hpp"
#include "polo/detail/launch.cuh"
#include "polo/detail/workspace.cuh"
#include "polo/advantages.cuh"
#include "polo/gae.hpp"
#include "polo/kernels/gae.cuh"
#include "polo/whiten.cuh"

namespace polo::detail {

/// Tokens per thread of the scan kernels for element type T (long rows), and of the chunks
/// of short rows (scan_shape_for).
template <class T>
inline constexpr int scan_items_v = POLO_CUDA_SCAN_ITEMS;
inline constexpr int scan_short_items = 4;

/// A chunk's shape: NT threads of K consecutive tokens, S = NT * K tokens.
struct scan_shape {
  int NT = 32;
  int K = POLO_CUDA_SCAN_ITEMS;
  int S() const { return NT * K; }
};

/// Chunk geometry for a layout, from the typical row length (padded: T; packed: ⌈N/B⌉):
/// 32 threads of 4 tokens up to 128 tokens, 32 threads of K = POLO_CUDA_SCAN_ITEMS (8) up to
/// 32·K, 64 threads up to 64·K, 32 again up to 256·K, 256 threads (with stored per-thread
/// suffixes) above; 32 threads of K for every batch under scan_chunking::layout_invariant.
/// Rows are cut at their first valid token, so two layouts with the same shape cut a row into
/// the same chunks and scan it with the same trees; different shapes give other trees.
template <class T, TokenLayout L>
scan_shape scan_shape_for(const cuda& be, const L& layout) {
  constexpr int K = scan_items_v<T>;
  if (be.scans == scan_chunking::layout_invariant) return {32, K};
  const index_t typical = kernels::scan_typical_len(layout);
  // Rows of up to 128 tokens: chunks of 32 threads x 8 tokens left half of each warp idle in
  // both passes (H100, GAE 65,536 x 128: kernel_breakdown.md, after-334e026/).
  if (typical <= 32 * scan_short_items) return {32, scan_short_items};
  if (typical <= 32 * K) return {32, K};
  if (typical <= 64 * K) return {64, K};
  // Rows of up to one 256-thread chunk: chunks of one warp, 8 to a block, rather than one
  // chunk per block of 256 threads, of which rows of 1024 tokens left half idle (H100, GAE,
  // 2^23 tokens asynchronous: T = 1024 273 -> 180 us, T = 2048 163-166 us either way).
  if (typical <= 256 * K) return {32, K};
  return {256, K};
}

static_assert((POLO_CUDA_SCAN_ITEMS & (POLO_CUDA_SCAN_ITEMS - 1)) == 0 && POLO_CUDA_SCAN_ITEMS > scan_short_items,
              "POLO_CUDA_SCAN_ITEMS must be a power of two above 4 (chunks of S = NT * K tokens are found by shifts)");
/// log2(S) of a power of two S.
inline int scan_shift(int S) {
  int sh = 0;
  while ((1 << sh) < S) ++sh;
  return sh;
}

struct scan_regions {
  unsigned long long* err = nullptr;
  kernels::scan_result* result = nullptr;
  kernels::scan_chunk_summary* summ = nullptr;
  affine_step* tmap = nullptr;   // [bound * NT] per thread (summary -> apply; NT = 256 only)
  affine_step* tmap2 = nullptr;  // [bound * NT] (gae_returns::value_lambda)
  void* tnext = nullptr;         // [bound * NT] of T
  kernels::scan_state* state = nullptr;
  kernels::scan_state* exit_state = nullptr;
  kernels::scan_chunk_stats* cstats = nullptr;
  kernels::scan_row* rows = nullptr;
  kernels::scan_row_stats* rstats = nullptr;
  index_t* first = nullptr;  // [B] row anchors
  index_t* cnt = nullptr;    // [B+1]
  index_t* start = nullptr;  // [B+1] chunk table
  index_t* owner = nullptr;  // [bound] row of each chunk
  kernels::scan_partial* partials = nullptr;  // [ceil(B / scan_reduce_rows)]
  long long* valid = nullptr;                 // [1] the count gate's total
  unsigned* done = nullptr;                   // [1] the row reduction's ticket counter
  kernels::scan_partial* fold = nullptr;      // [fold_blocks(row blocks, 256)] the fold kernel's blocks
  index_t* lead = nullptr;                    // [bound] the apply pass's leading chunks
  unsigned* lead_n = nullptr;                 // [1] their count
  unsigned long long* off_key = nullptr;      // [1] packed offsets check (asynchronous mode)
  void* temp = nullptr;      // cub scan
  std::size_t temp_bytes = 0;
};

/// Chunks launched by the scans (rows cut at their first valid token): an upper bound. A row of
/// length len whose first valid token is at f has ⌈f/S⌉ + ⌈(len - f)/S⌉ <= ⌊len/S⌋ + 2 chunks,
/// so a packed batch has at most ⌊N/S⌋ + 2B. (Until 2026-11-24 this was ⌈N/S⌉ + B, which packed
/// rows with masked prefixes, a prompt before each response, could exceed: the chunks past the
/// bound were never launched and the scratch regions overlapped. tests/gae_test.cpp, "gae:
/// ragged packed rows with masked prefixes".)
template <TokenLayout L>
index_t scan_anchored_bound(const L& layout, int S) {
  const index_t B = layout.num_seqs();
  if constexpr (L::is_packed)
    return layout.tokens / S + 2 * B;
  else
    return layout.seq_len > 0 ? B * ((layout.seq_len + S - 1) / S + 1) : 0;
}

/// Chunks launched: B * ceil(T/S) (padded), ceil(N/S) + B (packed: an upper bound).
template <TokenLayout L>
index_t scan_chunk_bound(const L& layout, int S) {
  const index_t B = layout.num_seqs();
  if constexpr (L::is_packed)
    return (layout.tokens + S - 1) / S + B;
  else
    return layout.seq_len > 0 ? B * ((layout.seq_len + S - 1) / S) : 0;
}

template <class T, TokenLayout L>
scan_regions take_scan_regions(const cuda& be, scratch_plan& sp, const L& layout) {
  const scan_shape sh = scan_shape_for<T>(be, layout);
  const int NT = sh.NT;
  const index_t B = layout.num_seqs();
  const index_t bound = scan_anchored_bound(layout, sh.S());
  scan_regions r;
  r.err = sp.take<unsigned long long>(1);
  r.result = sp.take<kernels::scan_result>(1);
  r.summ = sp.take<kernels::scan_chunk_summary>(bound);
  const index_t slots = kernels::scan_stores_suffix(NT) ? bound * NT : 0;
  r.tmap = sp.take<affine_step>(slots);
  r.tmap2 = sp.take<affine_step>(slots);
  r.tnext = sp.take<T>(slots);
  r.state = sp.take<kernels::scan_state>(bound);
  r.cstats = sp.take<kernels::scan_chunk_stats>(bound);
  r.rows = sp.take<kernels::scan_row>(B);
  r.exit_state = sp.take<kernels::scan_state>(B);
  r.rstats = sp.take<kernels::scan_row_stats>(B);
  r.first = sp.take<index_t>(B);
  r.cnt = sp.take<index_t>(B + 1);
  if constexpr (L::is_packed) {  // padded rows need no table (chunk_table)
    r.start = sp.take<index_t>(B + 1);
    r.owner = sp.take<index_t>(bound);
  }
  r.partials = sp.take<kernels::scan_partial>((B + kernels::scan_reduce_rows - 1) / kernels::scan_reduce_rows);
  r.fold = sp.take<kernels::scan_partial>(
      kernels::fold_blocks((B + kernels::scan_reduce_rows - 1) / kernels::scan_reduce_rows, 256));
  r.valid = sp.take<long long>(1);
  r.done = sp.take<unsigned>(1);
  r.lead = sp.take<index_t>(bound);
  r.lead_n = sp.take<unsigned>(1);
  r.off_key = sp.take<unsigned long long>(1);
  if constexpr (L::is_packed) {
    r.temp_bytes = kernels::chunk_scan_temp_bytes(B);
    r.temp = sp.take<unsigned char>(static_cast<index_t>(r.temp_bytes));
  }
  return r;
}

template <class T, TokenLayout L>
std::size_t scan_scratch_bytes(const cuda& be, const L& layout) {
  scratch_plan sp;
  (void)take_scan_regions<T>(be, sp, layout);
  return sp.bytes();
}

/// The scans' chunk geometry (chunks of S = NT * K tokens, chunk_table) and the scratch regions
/// of `r` in `p`; the caller sets the count gate (`valid`, `gate_min_count`).
template <class T, class F, TokenLayout L>
void bind_scan_regions(kernels::scan_params<T, L, F>& p, const scan_regions& r, scan_shape sh) {
  const int S = sh.S();
  p.chunks.rows = p.layout.num_seqs();
  p.chunks.S = S;
  p.chunks.S_shift = scan_shift(S);
  p.chunks.bound = scan_anchored_bound(p.layout, S);
  p.chunks.start = r.start;
  p.chunks.first = r.first;
  p.chunks.owner = r.owner;
  if constexpr (!L::is_packed) p.chunks.per_row = p.layout.seq_len > 0 ? (p.layout.seq_len + S - 1) / S + 1 : 0;
  p.partials = r.partials;
  p.fold = r.fold;
  p.done = r.done;
  p.lead = r.lead;
  p.lead_n = r.lead_n;
  p.summ = r.summ;
  p.tmap = r.tmap;
  p.tmap2 = p.two ? r.tmap2 : nullptr;
  p.tnext = static_cast<T*>(r.tnext);
  p.state = r.state;
  p.exit_state = r.exit_state;
  p.cstats = r.cstats;
  p.rows = r.rows;
  p.rstats = r.rstats;
  p.err = r.err;
  p.result = r.result;
}

/// Enqueues the scan with chunks of `sh` (32 threads of 4 or K tokens, or 64 or 256 threads of
/// K; those of 256 store per-thread suffixes: scan_stores_suffix).
template <class T, class F, TokenLayout L>
cudaError_t launch_scan_shape(const kernels::scan_params<T, L, F>& p, scan_shape sh, cudaStream_t stream) {
  constexpr int K = scan_items_v<T>;
  if (sh.K == scan_short_items) return kernels::launch_scan<32, scan_short_items, false>(p, stream);
  switch (sh.NT) {
    case 32: return kernels::launch_scan<32, K, false>(p, stream);
    case 64: return kernels::launch_scan<64, K, false>(p, stream);
    default: return kernels::launch_scan<256, K, kernels::scan_stores_suffix(256)>(p, stream);
  }
}

/// Shape limits of the CUDA scans (see the file comment).
/// The backend's scan options: `be.scans` one of scan_chunking's values.
inline void check_scan_backend(const char* fn, const cuda& be) {
  if (be.scans != scan_chunking::adaptive && be.scans != scan_chunking::layout_invariant)
    throw_config(fn, "scans", std::to_string(static_cast<int>(be.scans)),
                 "scan_chunking::adaptive or scan_chunking::layout_invariant");
}

template <TokenLayout L>
void check_scan_limits(const char* fn, const L& layout) {
  const index_t B = layout.num_seqs();
  if (B >= (index_t(1) << 29))
    throw_shape(fn, "layout", layout.shape(), "fewer than 2^29 sequences on the CUDA backend");
  index_t maxlen = 0;
  if constexpr (L::is_packed)
    maxlen = layout.tokens;
  else
    maxlen = layout.seq_len;
  if (maxlen >= (index_t(1) << 32))
    throw_shape(fn, "layout", layout.shape(), "fewer than 2^32 tokens per sequence on the CUDA backend");
}

/// Device check of a packed layout's offsets (one synchronization), throwing the CPU
/// backend's value_error. Does nothing for a padded layout.
template <TokenLayout L>
void check_packed_offsets_device(const cuda& be, const char* fn, const L& layout, unsigned long long* key_dev) {
  if constexpr (L::is_packed) {
    const index_t B = layout.num_seqs();
    POLO_CUDA_TRY(kernels::launch_packed_offsets_check(layout.offsets.data, layout.offsets.stride, B, layout.tokens,
                                                       key_dev, stream_of(be)));
    unsigned long long key = 0;
    read_back(be, &key, key_dev, sizeof key);
    if (key == kernels::no_error_key) return;
    using O = typename L::offset_type;
    auto at = [&](index_t j) {
      O x{};
      read_back(be, &x, layout.offsets.data + j * layout.offsets.stride, sizeof x);
      return static_cast<long long>(x);
    };
    if (key == 0) throw_value(fn, "offsets", "starts at " + std::to_string(at(0)) + "; expected offsets[0] = 0");
    if (static_cast<index_t>(key) <= B)
      throw_value(fn, "offsets",
                  "decreases at index " + std::to_string(key) + " (" + std::to_string(at(index_t(key) - 1)) + " -> " +
                      std::to_string(at(index_t(key))) + "); expected non-decreasing offsets");
    throw_value(fn, "offsets",
                "ends at " + std::to_string(at(B)) + "; expected offsets[B] = N = " + std::to_string(layout.tokens));
  }
}

template <class T, class F, TokenLayout L>
kernels::scan_result run_scan_async(const cuda& be, const char* fn, kernels::scan_params<T, L, F>& p);

/// Runs one scan end to end and reads its result back (the one synchronization). With
/// `gate_min_count` > 0, a batch with fewer valid tokens writes nothing and reports gate_key
/// (its count in `valid`). Asynchronous mode (`p.deferred` set): no synchronization at all;
/// the packed offsets are checked on the device (an error empties the chunk table and closes
/// every gate), the final pass publishes into `p.gae_out` / `p.ret_out` and `p.deferred`, and
/// the returned scan_result is empty.
template <class T, class F, TokenLayout L>
kernels::scan_result run_scan(const cuda& be, const char* fn, kernels::scan_params<T, L, F>& p,
                              long long gate_min_count = 0) {
  if (p.deferred != nullptr) return run_scan_async<T, F>(be, fn, p);
  check_scan_backend(fn, be);
  check_scan_limits(fn, p.layout);
  const cudaStream_t stream = stream_of(be);
  scratch ws(be, scan_scratch_bytes<T>(be, p.layout), fn);
  scratch_plan sp(ws.data());
  const scan_regions r = take_scan_regions<T>(be, sp, p.layout);
  const scan_shape sh = scan_shape_for<T>(be, p.layout);
  const int S = sh.S();
  check_packed_offsets_device(be, fn, p.layout, r.err);
  if (p.layout.num_seqs() > 0)
    POLO_CUDA_TRY(kernels::launch_scan_chunk_table(p.layout, S, r.first, r.cnt, r.start, r.temp, r.temp_bytes, stream,
                                                   r.owner, r.err));
  bind_scan_regions(p, r, sh);
  p.valid = gate_min_count > 0 ? r.valid : nullptr;
  p.gate_min_count = gate_min_count;
  kernels::scan_result out;
  if (p.chunks.rows == 0) return out;
  // *p.err was set to no_error_key by the chunk table's anchor kernel
  POLO_CUDA_TRY(launch_scan_shape(p, sh, stream));
  read_back(be, &out, r.result, sizeof out);
  return out;
}

/// The asynchronous form of run_scan (see there). gate_min_count is 0.
template <class T, class F, TokenLayout L>
kernels::scan_result run_scan_async(const cuda& be, const char* fn, kernels::scan_params<T, L, F>& p) {
  check_scan_backend(fn, be);
  check_scan_limits(fn, p.layout);
  const cudaStream_t stream = stream_of(be);
  scratch ws(be, scan_scratch_bytes<T>(be, p.layout), fn);
  scratch_plan sp(ws.data());
  const scan_regions r = take_scan_regions<T>(be, sp, p.layout);
  const scan_shape sh = scan_shape_for<T>(be, p.layout);
  const int S = sh.S();
  p.off_key = nullptr;
  if constexpr (L::is_packed) {
    POLO_CUDA_TRY(kernels::launch_packed_offsets_check(p.layout.offsets.data, p.layout.offsets.stride,
                                                       p.layout.num_seqs(), p.layout.tokens, r.off_key, stream));
    p.off_key = r.off_key;
  }
  bind_scan_regions(p, r, sh);
  p.valid = nullptr;
  p.gate_min_count = 0;
  if (p.chunks.rows == 0) {
    kernels::scan_publish_empty_kernel<<<1, 1, 0, stream>>>(p);
    POLO_CUDA_TRY(cudaGetLastError());
    return kernels::scan_result{};
  }
  POLO_CUDA_TRY(kernels::launch_scan_chunk_table(p.layout, S, r.first, r.cnt, r.start, r.temp, r.temp_bytes, stream,
                                                 r.owner, r.err, p.off_key));
  // *p.err: no_error_key, or offsets_gate_key after bad offsets (then no chunk exists, the rows
  // pass returns at once and the final pass publishes the offsets error)
  POLO_CUDA_TRY(launch_scan_shape(p, sh, stream));
  return kernels::scan_result{};
}

/// The group table of OPO: the segmentation of labelled groups (cuda/polo/advantages.cuh),
/// nothing for contiguous groups.
template <class Groups, bool = is_labelled_groups<Groups>::value>
struct opo_segments {
  using type = int;
};
template <class Groups>
struct opo_segments<Groups, true> {
  using type = kernels::segment_labels_params<
      std::remove_const_t<typename std::remove_cvref_t<decltype(std::declval<Groups>().labels)>::value_type>>;
};

template <>
struct backend_impl<cuda, gae_tag> {
  /// The tag the composite entries (REINFORCE++-baseline, OPO) hand to the primitives they
  /// call: the caller's, with `result` cleared. These entries return their statistics by value
  /// (they take no `result`), so an inner group_advantages or whiten must neither publish its
  /// own statistics into the caller's `result` nor go asynchronous and return zeros.
  static cuda inner(const cuda& be) {
    cuda in = be;
    in.result = nullptr;
    return in;
  }

  /// See <polo/gae.hpp>. One synchronization (two for a packed layout), none with `be.result`
  /// (asynchronous: see the file comment); nothing written on a data error. Scratch:
  /// gae_workspace_bytes.
  template <class T, class F, TokenLayout L>
  static gae_stats gae(const cuda& be, const L& layout, layout_tensor<L, const T> r, layout_tensor<L, const T> v,
                       view<const F, 1, device_space> truncated, view<const T, 1, device_space> bootstrap,
                       layout_tensor<L, T> A, layout_tensor<L, T> R, const gae_config& c) {
    constexpr const char* fn = "gae";
    const bool async = async_result_mode(be, fn);
    kernels::scan_params<T, L, F> p;
    p.layout = layout;
    p.r = r;
    p.v = v;
    p.A = A;
    p.R = R;
    const bool has_bootstrap = !truncated.is_null() || truncated.n > 0;
    p.trunc = has_bootstrap ? truncated.data : nullptr;
    p.trunc_stride = truncated.stride;
    p.boot = has_bootstrap ? bootstrap.data : nullptr;
    p.boot_stride = bootstrap.stride;
    p.cfg = c;
    p.kind = kernels::scan_kind::gae;
    p.two = c.returns == gae_returns::value_lambda;
    if (async) {
      p.deferred = be.deferred_errors;
      p.gae_out = static_cast<gae_stats*>(be.result);
      p.entry = entry_gae;
      (void)run_scan<T, F>(be, fn, p);
      return gae_stats{};
    }
    const kernels::scan_result o = run_scan<T, F>(be, fn, p);
    if (o.err_key != kernels::no_error_key) {
      const int kind = kernels::error_key_kind(o.err_key);
      const index_t i = kernels::error_key_row(o.err_key);
      if (kind == 0) throw_nonfinite(fn, "rewards", o.err_flat, o.err_value, "");
      if (kind == 1) throw_nonfinite(fn, "values", o.err_flat, o.err_value, "");
      throw_nonfinite(fn, "bootstrap", i, o.err_value, "sequence " + std::to_string(i) + " is flagged truncated");
    }
    gae_stats st;
    st.sequences = layout.num_seqs();
    st.tokens = o.tokens;
    st.truncated = o.truncated;
    st.advantages = o.m;
    st.returns = sum_count<double>{o.rsum, o.tokens};
    st.lambda = sum_count<double>{o.lambda_sum, o.lambda_count};
    return st;
  }

  /// See <polo/gae.hpp> (discounted_returns, remax_advantages): R, and A = R − b when
  /// `baselines` is non-null. One synchronization (two for a packed layout), none with
  /// `be.result` (asynchronous).
  template <class T, TokenLayout L>
  static returns_stats returns(const cuda& be, const char* fn, const L& layout, layout_tensor<L, const T> r,
                               view<const T, 1, device_space> baselines, layout_tensor<L, T> R,
                               layout_tensor<L, T> A, const returns_config& c) {
    const bool async = async_result_mode(be, fn);
    kernels::scan_params<T, L, unsigned char> p;
    p.layout = layout;
    p.r = r;
    p.R = R;
    p.A = A;
    p.base = baselines.data;
    p.base_stride = baselines.stride;
    p.cfg.gamma = c.gamma;
    p.cfg.fill = c.fill;
    p.rmask = c.mask;
    p.kind = kernels::scan_kind::returns;
    if (async) {
      p.deferred = be.deferred_errors;
      p.ret_out = static_cast<returns_stats*>(be.result);
      p.entry = std::strcmp(fn, "remax_advantages") == 0 ? entry_remax_advantages : entry_discounted_returns;
      (void)run_scan<T, unsigned char>(be, fn, p);
      return returns_stats{};
    }
    const kernels::scan_result o = run_scan<T, unsigned char>(be, fn, p);
    if (o.err_key != kernels::no_error_key) {
      const int kind = kernels::error_key_kind(o.err_key);
      const index_t i = kernels::error_key_row(o.err_key);
      if (kind == 0) throw_nonfinite(fn, "rewards", o.err_flat, o.err_value, "");
      throw_nonfinite(fn, "baselines", i, o.err_value, "sequence " + std::to_string(i) + " has valid tokens");
    }
    returns_stats st;
    st.sequences = layout.num_seqs();
    st.tokens = o.m.count;
    st.returns = o.m;
    return st;
  }

  /// Valid tokens of the whole layout (one synchronization; packed offsets checked first).
  template <TokenLayout L>
  static index_t count_valid(const cuda& be, const char* fn, const L& layout) {
    check_scan_limits(fn, layout);
    const index_t B = layout.num_seqs();
    scratch ws(be, static_cast<std::size_t>(B + 2) * sizeof(long long) + 512, fn);
    scratch_plan sp(ws.data());
    long long* total = sp.take<long long>(1);
    long long* n = sp.take<long long>(B);
    check_packed_offsets_device(be, fn, layout, reinterpret_cast<unsigned long long*>(total));
    POLO_CUDA_TRY(kernels::launch_row_counts(layout, n, total, stream_of(be)));
    long long h = 0;
    read_back(be, &h, total, sizeof h);
    return static_cast<index_t>(h);
  }

  /// See <polo/gae.hpp>: the returns scan, gated on the device (nothing written if the rewards
  /// hold a non-finite valid value, or if the batch's valid count makes the whitening
  /// degenerate under whiten_degenerate::error), then the whitening of R into A with the
  /// scan's own moments of R (the CPU backend's coefficients, computed on the host from the
  /// one read-back). One synchronization (two for a packed layout: its offsets check).
  template <class T, TokenLayout L>
  static reinforce_pp_stats reinforce_plus_plus(const cuda& be, const L& layout, layout_tensor<L, const T> r,
                                                layout_tensor<L, T> R, layout_tensor<L, T> A,
                                                const reinforce_pp_config& c) {
    constexpr const char* fn = "reinforce_plus_plus";
    // degenerate iff count == 0 or (sample variance) count == 1: whiten_coefficients
    const long long min_count =
        c.whiten.degenerate == whiten_degenerate::error ? (c.whiten.std == std_kind::sample ? 2 : 1) : 0;
    kernels::scan_params<T, L, unsigned char> p;
    p.layout = layout;
    p.r = r;
    p.R = R;
    p.cfg.gamma = c.gamma;
    p.cfg.fill = masked_fill::zero;
    p.rmask = c.mask;
    p.kind = kernels::scan_kind::returns;
    const kernels::scan_result o = run_scan<T, unsigned char>(be, fn, p, min_count);
    if (o.err_key < kernels::gate_key) throw_nonfinite(fn, "rewards", o.err_flat, o.err_value, "");
    if (o.err_key == kernels::gate_key) {
      moments pre;
      pre.count = o.valid;
      throw_degenerate(fn, pre, c.whiten);
    }
    reinforce_pp_stats st;
    st.returns.sequences = layout.num_seqs();
    st.returns.tokens = o.m.count;
    st.returns.returns = o.m;
    const whiten_coeffs w = whiten_coefficients(o.m, c.whiten);
    st.whiten.local = st.whiten.used = o.m;
    st.whiten.mean = w.mean;
    st.whiten.inv_scale = w.inv_scale;
    st.whiten.degenerate = w.degenerate;
    if (layout.num_seqs() == 0) return st;
    // The whitening's write kernel, fed the coefficients through a result slot (no statistics
    // pass, no second synchronization).
    scratch ws(be, sizeof(result_slot<whiten_stats>), fn);
    auto* slot = static_cast<result_slot<whiten_stats>*>(ws.data());
    kernels::store_whiten_slot_kernel<<<1, 1, 0, stream_of(be)>>>(slot, st.whiten);
    POLO_CUDA_TRY(cudaGetLastError());
    kernels::whiten_apply_params<T, L> ap;
    ap.layout = layout;
    ap.x = layout_tensor<L, const T>(R);
    ap.out = A;
    ap.slot = slot;
    ap.cfg = c.whiten;
    POLO_CUDA_TRY(kernels::launch_whiten_apply(ap, stream_of(be)));
    return st;
  }

  /// See <polo/gae.hpp>: group_advantages, broadcast_to_tokens and whiten on the CUDA backend,
  /// in the CPU backend's order (the degenerate-whitening check first).
  template <class T, class Groups, TokenLayout L>
  static reinforce_pp_baseline_stats reinforce_pp_baseline(const cuda& be, view<const T, 1, device_space> scores,
                                                           const Groups& groups, const L& layout,
                                                           view<T, 1, device_space> seq_adv, layout_tensor<L, T> tok,
                                                           const reinforce_pp_baseline_config& c) {
    constexpr const char* fn = "reinforce_pp_baseline";
    const cuda in = inner(be);
    if (c.whiten.degenerate == whiten_degenerate::error) {
      moments pre;
      pre.count = count_valid(in, fn, layout);
      if (whiten_coefficients(pre, c.whiten).degenerate) throw_degenerate(fn, pre, c.whiten);
    }
    reinforce_pp_baseline_stats st;
    st.group = backend_impl<cuda, advantages_tag>::group_advantages(in, scores, groups, seq_adv, c.group);
    backend_impl<cuda, advantages_tag>::broadcast_to_tokens(in, view<const T, 1, device_space>(seq_adv), layout, tok);
    st.whiten = backend_impl<cuda, whiten_tag>::whiten<T>(in, layout, layout_tensor<L, const T>(tok), tok, nullptr,
                                                          c.whiten);
    return st;
  }

  /// See <polo/gae.hpp> (opo_advantages): the length-weighted group baseline. Groups are
  /// tabled first (contiguous: by index; labelled: a stable sort of (label, index), as
  /// group_advantages does), then one thread per group sums its members in ascending index
  /// (Neumaier, as the CPU backend) and writes their advantages: O(B) work for any grouping.
  /// Then broadcast_to_tokens. Two synchronizations (the score check, the statistics).
  template <class T, class Groups, TokenLayout L>
  static group_stats opo(const cuda& be_in, view<const T, 1, device_space> s, const Groups& groups, const L& layout,
                         view<T, 1, device_space> adv, layout_tensor<L, T> tok) {
    constexpr const char* fn = "opo_advantages";
    const cuda be = inner(be_in);
    check_scan_limits(fn, layout);
    const index_t B = s.n;
    const cudaStream_t stream = stream_of(be);
    constexpr bool labelled = is_labelled_groups<Groups>::value;
    if constexpr (labelled) check_label_count<Groups>(B);
    scratch_plan plan;
    auto take = [&](scratch_plan& sp, auto* seg) {
      struct regions {
        unsigned long long* key;
        long long *total, *n;
        int *first, *single;
        kernels::opo_result* res;
      } r;
      r.key = sp.take<unsigned long long>(1);
      r.total = sp.take<long long>(1);
      r.n = sp.take<long long>(B);
      r.first = sp.take<int>(B);
      r.single = sp.take<int>(B);
      r.res = sp.take<kernels::opo_result>(1);
      if constexpr (labelled) take_segment_regions(sp, *seg, static_cast<int>(B));
      return r;
    };
    using Seg = typename opo_segments<Groups>::type;
    Seg seg0{}, seg{};
    (void)take(plan, &seg0);
    scratch ws(be, plan.bytes(), fn);
    scratch_plan sp(ws.data());
    const auto r = take(sp, &seg);
    check_packed_offsets_device(be, fn, layout, r.key);
    group_stats st;
    st.sequences = B;
    if (B == 0) {
      backend_impl<cuda, advantages_tag>::broadcast_to_tokens(be, view<const T, 1, device_space>(adv), layout, tok);
      return st;
    }
    POLO_CUDA_TRY(cudaMemsetAsync(r.key, 0xff, sizeof *r.key, stream));
    kernels::opo_check_kernel<<<grid_for(B, 256), 256, 0, stream>>>(s.data, s.stride, B, r.key);
    POLO_CUDA_TRY(cudaGetLastError());
    unsigned long long hk = 0;
    read_back(be, &hk, r.key, sizeof hk);
    if (hk != kernels::no_error_key) {
      T v{};
      read_back(be, &v, s.data + index_t(hk) * s.stride, sizeof v);
      throw_nonfinite(fn, "scores", index_t(hk), double(v), "");
    }
    POLO_CUDA_TRY(kernels::launch_row_counts(layout, r.n, r.total, stream));
    if constexpr (labelled) {
      seg.labels = groups.labels.data;
      seg.labels_stride = groups.labels.stride;
      seg.n = static_cast<int>(B);
      POLO_CUDA_TRY(kernels::launch_segment_labels(seg, stream));
      kernels::opo_group_kernel<<<grid_for(B, 256), 256, 0, stream>>>(s.data, s.stride, B, index_t(0), seg.starts,
                                                                      seg.order, seg.n_groups, r.n, adv.data,
                                                                      adv.stride, r.first, r.single);
    } else {
      const index_t G = groups.size;
      const index_t ng = (B + G - 1) / G;
      kernels::opo_group_kernel<<<grid_for(ng, 256), 256, 0, stream>>>(s.data, s.stride, B, G, nullptr, nullptr,
                                                                       nullptr, r.n, adv.data, adv.stride, r.first,
                                                                       r.single);
    }
    POLO_CUDA_TRY(cudaGetLastError());
    kernels::opo_stats_kernel<<<1, 32, 0, stream>>>(s.data, s.stride, adv.data, adv.stride, B, r.first, r.single,
                                                    r.res);
    POLO_CUDA_TRY(cudaGetLastError());
    kernels::opo_result o;
    read_back(be, &o, r.res, sizeof o);
    st.groups = o.groups;
    st.singleton_groups = o.singleton;
    st.scores = o.scores;
    st.advantage = {o.asum, B};
    backend_impl<cuda, advantages_tag>::broadcast_to_tokens(be, view<const T, 1, device_space>(adv), layout, tok);
    return st;
  }

 private:
  template <class Groups>
  static void check_label_count(index_t B) {
    if (B > index_t(0x7fffffff))
      throw_shape("opo_advantages", "scores", shape_str({B}),
                  "at most 2147483647 sequences (the CUDA backend indexes labelled groups with 32 bits)");
  }
};

}  // namespace polo::detail

namespace polo {

/// Bytes of scratch that `gae(be, layout, ...)` with element type T takes on the CUDA backend
/// (the size a caller-provided `polo::cuda::workspace` needs). Rows are cut into chunks of
/// S = K·NT tokens (NT = 32, 64 or 256 threads of K = 8 tokens, or 32 of 4 for rows of up to
/// 128, from the typical row length; 32 x 8 under
/// `be.scans == scan_chunking::layout_invariant`), with room for
/// B·(⌈T/S⌉ + 1) chunks (padded) or ⌊N/S⌋ + 2B (packed); each takes about 160 bytes, plus 36
/// per thread for float (40 for double) at NT = 256 when rows span several chunks (T, or N/B
/// packed, above 2048): about 4.6 bytes per float token. Plus
/// about 130 bytes per sequence and cub's scan scratch. Host-only.
template <class T, TokenLayout L>
std::size_t gae_workspace_bytes(const cuda& be, const L& layout) {
  return detail::scan_scratch_bytes<T>(be, layout);
}

/// Bytes of scratch of `discounted_returns` / `remax_advantages` (the same as gae's).
template <class T, TokenLayout L>
std::size_t discounted_returns_workspace_bytes(const cuda& be, const L& layout) {
  return detail::scan_scratch_bytes<T>(be, layout);
}

}  // namespace polo
