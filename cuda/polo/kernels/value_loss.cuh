// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
#pragma once
/// \file
/// Kernels of value_loss (layer D of docs/CONTRIBUTING.md): POD params, `__global__` kernels
/// and `launch_*` launchers that enqueue on a stream and return `cudaError_t` (never
/// synchronize, allocate or throw). cuda/polo/value_loss.cuh owns validation, scratch and the
/// one read-back.
///
///     value_loss_short_rows_kernel  (batches whose typical row, padded T or packed N/B, is at
///                                 most value_loss_warp_span = 1024 tokens) one warp per row,
///                                 8 rows per block: packed offsets, and a row of at most 1024
///                                 positions reduced by the warp (value_loss_row_warp: its
///                                 first valid position f, lane l takes the quads
///                                 f + (u·32 + l)·4 + e in order, sums in double, a fixed warp
///                                 tree); longer rows listed for value_loss_rows_kernel.
///     value_loss_rows_kernel      one block per row (the listed rows, or every row of a batch
///                                 of long rows): packed offsets of the row, its first valid
///                                 position f (the first step's loads issued before, for
///                                 f = 0), then one pass: thread k takes quads of 4
///                                 consecutive positions f + (u·256 + k)·4 + e + 2048·j in
///                                 order (vector loads, 2 quads of each input in flight), sums
///                                 L, (v − R)² in double and the valid and clipped counts,
///                                 every position folded without a branch (one not valid adds
///                                 an exact 0: step_each); the threads' sums meet in a fixed
///                                 tree. A non-finite valid input shows in the sums (v_old
///                                 tested per token when clipping): the first of each input is
///                                 found by reading that row again (value_loss_find_bad), off
///                                 the per-token path. A row whose valid tokens all lie within
///                                 1024 positions of f is handed to one warp
///                                 (value_loss_row_warp) instead, whichever kernel meets it, so
///                                 a row's bits depend only on its valid tokens (padded ==
///                                 packed bitwise).
///     value_loss_fold_kernel      the rows' results in a fixed tree over the row index
///                                 (grid_tree_fold: 256 rows per block, Neumaier sums; the
///                                 last block folds the blocks' results): counts, sums, the
///                                 first error in the CPU's order, the divisor and
///                                 value_loss_stats, published through detail/async_result.cuh
///                                 (one block folding every row took 200 us at 32,768 rows)
///     value_loss_grad_kernel      (row, slice) blocks, rows in reverse order (the last rows
///                                 the statistics read are still in L2): grad = coef · w_i ·
///                                 dL/dv, 0 at masked positions, w_i from the divisor on the
///                                 device; writes nothing if the statistics' error is set. A
///                                 programmatic dependent of the fold kernel: padded rows load
///                                 their first chunk before waiting for it.
///     value_loss_grad_short_kernel  (batches of short rows) the same values, one warp per row
///                                 of at most 1024 positions, 8 rows per block, and the rows
///                                 the statistics listed as longer by the blocks after those,
///                                 in slices. (Rows of 256 tokens at 2^23 tokens, H100: a block
///                                 per row spent its time on fixed work, not bytes.)
///
/// No floating-point atomics: bitwise identical run to run.

#include <cuda_runtime.h>

#include <climits>
#include <cstdint>
#include <type_traits>

#include "polo/aggregation.hpp"
#include "polo/core/backend.hpp"
#include "polo/core/layout.hpp"
#include "polo/core/math.hpp"
#include "polo/detail/async_result.cuh"
#include "polo/detail/launch.cuh"
#include "polo/detail/row_reduce.cuh"
#include "polo/detail/status.cuh"
#include "polo/value_loss.hpp"

namespace polo::kernels {

inline constexpr int value_loss_threads = 256;  ///< block of every value_loss kernel

/// Per-token sums of one row (doubles; the count of clipped tokens is exact as a double).
struct value_loss_sums {
  double loss = 0.0, sq = 0.0, clipped = 0.0;
};

/// One row's result; bad[k] is the first flat index of a non-finite valid value of input k
/// (0 values, 1 old_values, 2 returns), LLONG_MAX for none.
struct value_loss_row {
  index_t n = 0;
  value_loss_sums s{};
  long long bad[3] = {LLONG_MAX, LLONG_MAX, LLONG_MAX};
  [[nodiscard]] POLO_HD_INLINE bool any_bad() const {
    return bad[0] != LLONG_MAX || bad[1] != LLONG_MAX || bad[2] != LLONG_MAX;
  }
};

inline constexpr int value_loss_unroll = 4;  ///< positions in flight per thread (gradient pass)
inline constexpr int value_loss_quad = 4;    ///< consecutive positions per load (statistics pass)
inline constexpr int value_loss_stats_unroll = 2;  ///< quads in flight per thread (statistics pass)
/// Quads in flight per lane in one-warp rows: a round covers 256 positions, so a row of 256
/// does no work past its end (every position is folded without a branch; with 4 quads per
/// round rows of 256 took 152 instead of 112 us at 2^23 tokens on an H100).
inline constexpr int value_loss_warp_unroll = 2;
/// Rows of at most this many positions are reduced by one warp (value_loss_short_rows_kernel,
/// 8 rows per block), and so is any row whose valid tokens all lie within this many positions
/// of its first (value_loss_rows_kernel hands it over): the path depends on the valid tokens only.
inline constexpr int value_loss_warp_span = 1024;
/// Most blocks that stride over the listed long rows (statistics and gradient).
inline constexpr int value_loss_long_blocks = 1024;

/// Running fold of rows: counts, Neumaier sums, and the index of the first row with an error
/// (LLONG_MAX: none; its first non-finite values are read back from the row's result when
/// the fold publishes, so the fold's trees carry 8 bytes for them instead of the row).
struct value_loss_fold {
  index_t tokens = 0, sequences = 0;
  detail::neumaier_sum num{}, clipped{}, sq{};
  long long bad_row = LLONG_MAX;
};

template <class T, class L>
struct value_loss_params {
  L layout{};
  detail::layout_tensor<L, const T> v{}, vo{}, ret{};
  detail::layout_tensor<L, T> grad{};
  value_loss_config cfg{};
  normalizers norm{};
  value_loss_row* rows = nullptr;      ///< [max(B, 1)] scratch
  index_t* long_rows = nullptr;        ///< [max(B, 1)] scratch: rows longer than value_loss_warp_span
  value_loss_fold* chunks = nullptr;   ///< [fold_blocks(B, 256)] scratch: value_loss_fold_kernel's blocks
  offsets_check* check = nullptr;      ///< scratch, zeroed by the launcher
  double* divisor = nullptr;           ///< scratch: the aggregation divisor (fold -> grad)
  detail::result_target<value_loss_stats> out{};
};

#if defined(__CUDACC__)

/// A group's running sums over the valid tokens it takes in the statistics pass: the loss and
/// squared-error terms in double, added in the order of the positions, and the valid and
/// clipped counts. A thread keeps them with per-step integer counts and one flag for a
/// non-finite valid input (value_loss_acc); the first such value of each input is found only
/// in a row that has one (value_loss_find_bad), off the per-token path.
struct value_loss_part {
  double loss = 0.0, sq = 0.0;
  long long n = 0, clipped = 0;
};

POLO_HD_INLINE value_loss_part merge_parts(value_loss_part a, const value_loss_part& b) {
  a.loss += b.loss;
  a.sq += b.sq;
  a.n += b.n;
  a.clipped += b.clipped;
  return a;
}

/// A thread's accumulator of the statistics pass (see value_loss_part). Every position of its
/// quads is folded without a branch (add_if: a position that is not valid enters as v = v_old
/// = R = 0, whose term is exactly 0 and not clipped, even where its values are NaN), and
/// whether a valid input was non-finite is read once, at the end (nonfinite): (v − R)² in
/// double is non-finite when v or R is (for double inputs also on an overflow, and the row is
/// then read again for nothing: value_loss_find_bad finds no index), and v_old, which a NaN
/// could leave out of the loss, is tested per token when clipping.
struct value_loss_acc {
  value_loss_part s{};
  bool old_nonfinite = false;
#if defined(__CUDACC__)
  template <class T>
  __device__ __forceinline__ void add_if(bool ok, const value_loss_config& cfg, bool clipping, T cr, T v, T old, T rt,
                                         int& n, int& clipped) {
    const T vz = ok ? v : T(0), oz = ok ? old : T(0), rz = ok ? rt : T(0);
    if (clipping) old_nonfinite = old_nonfinite || !finite_of(oz);
    const detail::value_term term = detail::value_loss_term<T>(vz, oz, rz, cfg.clip, cr);
    s.loss += term.loss;
    s.sq += term.sq;
    clipped += term.clipped ? 1 : 0;
    n += ok ? 1 : 0;
  }
  [[nodiscard]] __device__ __forceinline__ bool nonfinite() const {
    return old_nonfinite || !isfinite(s.sq) || !isfinite(s.loss);
  }
#endif
};

/// The row's result from its folded part (the counts exact as doubles, as the fold wants them)
/// and the first non-finite values `bad`.
POLO_HD_INLINE value_loss_row row_of_part(const value_loss_part& s, const long long (&bad)[3]) {
  value_loss_row r;
  r.n = static_cast<index_t>(s.n);
  r.s.loss = s.loss;
  r.s.sq = s.sq;
  r.s.clipped = double(s.clipped);
  for (int k = 0; k < 3; ++k) r.bad[k] = bad[k];
  return r;
}

/// Row i's first non-finite valid value of each input over the positions [f, end) (flat
/// indices, LLONG_MAX for none), by a group of S threads (this one of rank `rank`; S = 32: a
/// warp, S = 256: the block, with `sh3` three shared slots). Called only for a row whose pass
/// found one: a minimum, so any assignment of positions to threads gives the same indices.
template <int S, class T, class L>
__device__ void value_loss_find_bad(const value_loss_params<T, L>& p, index_t i, index_t f, index_t end,
                                    long long flat0, int rank, long long (&bad)[3], unsigned long long* sh3) {
  const T* vr = p.layout.row_ptr(p.v, i);
  const T* vor = p.layout.row_ptr(p.vo, i);
  const T* rr = p.layout.row_ptr(p.ret, i);
  const auto* m = p.layout.mask_row(i);
  const bool clipping = p.cfg.clip != value_clip::none;
  for (int k = 0; k < 3; ++k) bad[k] = LLONG_MAX;
  for (index_t t = f + rank; t < end; t += S) {
    if (m != nullptr && !detail::is_valid(m[t])) continue;
    const long long at = flat0 + static_cast<long long>(t);
    if (bad[0] == LLONG_MAX && !finite_of(vr[t])) bad[0] = at;
    if (clipping && bad[1] == LLONG_MAX && !finite_of(vor[t])) bad[1] = at;
    if (bad[2] == LLONG_MAX && !finite_of(rr[t])) bad[2] = at;
  }
  group_min_index<S>(bad, sh3);
}

/// Row i's sums, count and first non-finite values when its valid tokens all lie in [f, end)
/// (end - f <= value_loss_warp_span), by one warp -> p.rows[i]. Lane l takes the quads of
/// positions f + (u·32 + l)·4 + e in order (one vector load per quad where aligned), and the
/// lanes' sums meet in a fixed warp tree. Depends only on positions relative to f: packed ==
/// padded.
template <class T, class L>
__device__ void value_loss_row_warp(const value_loss_params<T, L>& p, index_t i, index_t f, index_t end,
                                    long long flat0) {
  using M = typename L::mask_type;
  constexpr int Q = value_loss_quad, U = value_loss_warp_unroll;
  constexpr int rounds = value_loss_warp_span / (32 * Q * U);
  static_assert(value_loss_warp_span % (32 * Q * U) == 0, "value_loss_warp_span: whole rounds of the warp");
  const int lane = int(threadIdx.x & 31);
  const T* vr = p.layout.row_ptr(p.v, i);
  const T* vor = p.layout.row_ptr(p.vo, i);
  const T* rr = p.layout.row_ptr(p.ret, i);
  const M* m = p.layout.mask_row(i);
  const bool clipping = p.cfg.clip != value_clip::none;
  const T cr = T(p.cfg.clip_range);
  const bool vv = detail::is_aligned(vr + f, sizeof(T) * Q), vvo = detail::is_aligned(vor + f, sizeof(T) * Q),
             vrt = detail::is_aligned(rr + f, sizeof(T) * Q);
  const bool vm = m != nullptr && detail::is_aligned(m + f, sizeof(M) * Q);
  value_loss_acc acc;
#pragma unroll 1
  for (int k = 0; k < rounds; ++k) {
    if (f + index_t(k * U) * 32 * Q >= end) break;  // warp-uniform
    T v[U][Q], vo[U][Q], rt[U][Q];
    M mk[U][Q];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const index_t pos = f + (index_t(k * U + u) * 32 + lane) * Q;
      load_quad<Q>(vr, pos, end, vv, v[u]);
      load_quad<Q>(rr, pos, end, vrt, rt[u]);
      if (clipping) load_quad<Q>(vor, pos, end, vvo, vo[u]);
      if (m != nullptr) load_quad<Q>(m, pos, end, vm, mk[u]);
    }
    int n = 0, clipped = 0;
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const index_t pos = f + (index_t(k * U + u) * 32 + lane) * Q;
#pragma unroll
      for (int e = 0; e < Q; ++e)
        acc.add_if<T>(pos + e < end && (m == nullptr || detail::is_valid(mk[u][e])), p.cfg, clipping, cr, v[u][e],
                      clipping ? vo[u][e] : v[u][e], rt[u][e], n, clipped);
    }
    acc.s.n += n;
    acc.s.clipped += clipped;
  }
  long long bad[3] = {LLONG_MAX, LLONG_MAX, LLONG_MAX};
  if (__any_sync(0xffffffffu, acc.nonfinite())) value_loss_find_bad<32>(p, i, f, end, flat0, lane, bad, nullptr);
  const value_loss_part total = warp_tree_fold(acc.s, [](const value_loss_part& a, const value_loss_part& b) {
    return merge_parts(a, b);
  });
  if (lane == 0) p.rows[i] = row_of_part(total, bad);
}

/// Row i's sums, count and first non-finite values (the whole block) -> p.rows[i]; a row
/// whose valid tokens all lie within value_loss_warp_span positions of its first is handed to
/// one warp (value_loss_row_warp), as value_loss_short_rows_kernel reduces it. Steps that lie
/// wholly inside the row take no per-token bounds test, and whether a valid token lies at or
/// past f + value_loss_warp_span is known from its quad (the span is one quad per thread).
template <class T, class L>
__device__ void value_loss_row_stats(const value_loss_params<T, L>& p, index_t i,
                                     detail::shared_array<value_loss_part, value_loss_threads>& sh, int* sh_first,
                                     unsigned long long* sh3) {
  const int tid = threadIdx.x;
  const index_t len = p.layout.row_len(i);
  const T* vr = p.layout.row_ptr(p.v, i);
  const T* vor = p.layout.row_ptr(p.vo, i);
  const T* rr = p.layout.row_ptr(p.ret, i);
  const auto* m = p.layout.mask_row(i);
  const bool clipping = p.cfg.clip != value_clip::none;
  const T cr = T(p.cfg.clip_range);
  using M = typename L::mask_type;
  constexpr int Q = value_loss_quad, U = value_loss_stats_unroll, NT = value_loss_threads;
  constexpr index_t step = index_t(NT) * Q * U;
  constexpr index_t W = value_loss_warp_span;
  static_assert(W == index_t(NT) * Q, "value_loss_row_stats: the warp span is the first quad of each thread");
  // (Loading the next step while summing this one, as whiten does, measured no faster here:
  // 104 -> 107 us at 1024 x 8192 with one quad per step, 3 blocks per SM with two.)
  T v[U][Q], vo[U][Q], rt[U][Q];
  mask_quad<M, Q> mk[U];
  auto load = [&](index_t c) {
    const bool vv = detail::is_aligned(vr + c, sizeof(T) * Q), vvo = detail::is_aligned(vor + c, sizeof(T) * Q),
               vrt = detail::is_aligned(rr + c, sizeof(T) * Q);
    const bool vm = m != nullptr && detail::is_aligned(m + c, sizeof(M) * Q);
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const index_t pos = c + (index_t(u) * NT + tid) * Q;
      // masked positions are loaded too: the loads overlap the mask's
      load_quad<Q>(vr, pos, len, vv, v[u]);
      load_quad<Q>(rr, pos, len, vrt, rt[u]);
      if (clipping) load_quad<Q>(vor, pos, len, vvo, vo[u]);
      if (m != nullptr) load_mask_quad<Q>(m, pos, len, vm, mk[u]);
    }
  };
  if (len > 0) load(0);  // speculative: most rows start with a valid token (f == 0)
  const index_t f = m == nullptr ? 0 : row_first_valid<NT>(
                                           len, [&](index_t t) { return detail::is_valid(m[t]); }, sh_first);
  const long long flat0 = static_cast<long long>(detail::flat_index(p.layout, i, 0));
  bool far = false;  // a valid token at or past f + W: reduced by the block
  value_loss_acc acc;
  // The valid tokens of one step (bounds tested per token only in the row's last step).
  auto sums = [&](index_t c, auto whole) {
    int n = 0, clipped = 0;
    step_each<NT, Q, U, decltype(whole)::value>(c, f, len, tid, m, mk, far, [&](int u, int e, bool ok) {
      acc.add_if<T>(ok, p.cfg, clipping, cr, v[u][e], clipping ? vo[u][e] : v[u][e], rt[u][e], n, clipped);
    });
    acc.s.n += n;
    acc.s.clipped += clipped;
  };
  for (index_t c = f; c < len; c += step) {
    if (c != 0) load(c);
    if (c + step <= len) sums(c, std::true_type{});
    else sums(c, std::false_type{});
  }
  allow_dependent_launch();  // this block's loads are done: the gradient kernel may be scheduled
  // A short row (the test looks at valid tokens only, so both layouts decide alike) gets the
  // bits one warp gives it, whichever kernel met it (such rows of a batch of long rows are read twice).
  if (__syncthreads_or(far ? 1 : 0) == 0) {
    if (tid < 32) value_loss_row_warp(p, i, f, len < f + W ? len : f + W, flat0);
    return;
  }
  long long bad[3] = {LLONG_MAX, LLONG_MAX, LLONG_MAX};
  if (__syncthreads_or(acc.nonfinite() ? 1 : 0) != 0) value_loss_find_bad<NT>(p, i, f, len, flat0, tid, bad, sh3);
  const value_loss_part total = block_tree_fold<NT>(
      acc.s, [](const value_loss_part& a, const value_loss_part& b) { return merge_parts(a, b); }, sh);
  if (tid == 0) p.rows[i] = row_of_part(total, bad);
}

POLO_HD_INLINE detail::neumaier_sum merge_neumaier(detail::neumaier_sum a, const detail::neumaier_sum& b) {
  a.add(b.sum);
  a.comp += b.comp;
  return a;
}

/// Row q's part of the fold (r = its result): its counts, its loss (divided by its count for
/// seq_mean_token_mean), clip count and squared error, and whether it has an error.
POLO_HD_INLINE value_loss_fold value_loss_fold_of(const value_loss_row& r, index_t q, bool seq_mean) {
  value_loss_fold o;
  o.tokens = r.n;
  o.sequences = r.n > 0 ? 1 : 0;
  if (r.n > 0) {
    o.num.add(seq_mean ? r.s.loss / double(r.n) : r.s.loss);
    o.clipped.add(r.s.clipped);
    o.sq.add(r.s.sq);
  }
  if (r.any_bad()) o.bad_row = static_cast<long long>(q);
  return o;
}

/// Merges two folds, a's rows before b's: counts, Neumaier sums, the first row with an error.
struct value_loss_fold_merge {
  POLO_HD_INLINE value_loss_fold operator()(value_loss_fold a, const value_loss_fold& b) const {
    a.tokens += b.tokens;
    a.sequences += b.sequences;
    a.num = merge_neumaier(a.num, b.num);
    a.clipped = merge_neumaier(a.clipped, b.clipped);
    a.sq = merge_neumaier(a.sq, b.sq);
    if (b.bad_row < a.bad_row) a.bad_row = b.bad_row;
    return a;
  }
};

/// From the fold of every row: the first error in the CPU's order (offsets, then the first
/// non-finite value), the divisor (-> p.divisor) and value_loss_stats, published. One thread.
template <class T, class L>
__device__ void value_loss_publish(const value_loss_params<T, L>& p, const value_loss_fold& f) {
  cuda::status err = resolve_offsets(p.layout, p.check, detail::entry_value_loss);
  if (err.code == detail::status_ok && f.bad_row != LLONG_MAX) {
    const value_loss_row bad = p.rows[f.bad_row];
    for (int k = 0; k < 3; ++k) {
      if (bad.bad[k] != LLONG_MAX) {
        err.code = detail::status_nonfinite_arg;
        err.a = detail::arg_values + k;
        err.index = bad.bad[k];
        const auto& x = k == 0 ? p.v : (k == 1 ? p.vo : p.ret);
        err.value = double(at_flat(p.layout, x, err.index));
        break;
      }
    }
  }
  value_loss_stats st;
  st.tokens = f.tokens;
  st.sequences = f.sequences;
  const value_loss_config& c = p.cfg;
  const double divisor = detail::aggregation_divisor(c.agg, p.norm, st.tokens, st.sequences);
  const bool per_seq = c.agg == aggregation::seq_mean_token_mean || c.agg == aggregation::seq_mean_token_sum;
  st.parts.sum = f.num.value();
  st.parts.count = per_seq ? st.sequences : st.tokens;
  st.clipped.sum = f.clipped.value();
  st.clipped.count = st.tokens;
  st.squared_error.sum = f.sq.value();
  st.squared_error.count = st.tokens;
  st.loss = divisor > 0.0 ? c.coef * p.norm.scale * st.parts.sum / divisor : 0.0;
  *p.divisor = divisor;
  detail::publish(p.out, err, st);
}

/// One warp per row, 8 rows per block: the row's packed offsets; a row of at most
/// value_loss_warp_span positions is reduced here (its first valid position, then
/// value_loss_row_warp), a longer one appended to `long_rows` for value_loss_rows_kernel
/// (which hands it back to one warp if its valid tokens turn out to be short). (Rows of 256
/// tokens at 2^23 tokens on an H100: a block of 256 threads per row spent about 900
/// instructions per warp on fixed work, 577 us.)
template <class T, class L>
__global__ void __launch_bounds__(value_loss_threads) value_loss_short_rows_kernel(value_loss_params<T, L> p) {
  const int lane = int(threadIdx.x & 31);
  const index_t i = index_t(blockIdx.x) * (value_loss_threads / 32) + index_t(threadIdx.x >> 5);
  if (!warp_row_readable(p, i)) return;
  const index_t len = p.layout.row_len(i);
  if (len > value_loss_warp_span) {
    if (lane == 0) p.long_rows[atomicAdd(&p.check->rows_listed, 1u)] = i;
    return;
  }
  const auto* m = p.layout.mask_row(i);
  const index_t f = m == nullptr ? 0 : warp_first_valid(0, len, [&](index_t t) { return detail::is_valid(m[t]); });
  value_loss_row_warp(p, i, f, len, static_cast<long long>(detail::flat_index(p.layout, i, 0)));
}

/// One block per row. Listed = true: the rows listed by value_loss_short_rows_kernel, strided
/// over the grid (each row is reduced on its own: their order does not matter). Listed = false
/// (batches of long rows, no first kernel): row blockIdx.x, its packed offsets checked here.
/// Either way a short row goes to one warp (value_loss_row_stats).
template <bool Listed, class T, class L>
__global__ void __launch_bounds__(value_loss_threads, 4) value_loss_rows_kernel(value_loss_params<T, L> p) {
  __shared__ detail::shared_array<value_loss_part, value_loss_threads> sh;
  __shared__ int sh_first[value_loss_threads / 32];
  __shared__ unsigned long long sh_bad[3];
  block_rows<Listed>(p, [&](index_t i) { value_loss_row_stats(p, i, sh, sh_first, sh_bad); });
}

/// The rows' results folded in a fixed tree over the row index (grid_tree_fold: 256 rows per
/// block, then the chunks), and published by the last block (value_loss_publish). A
/// programmatic dependent of the rows kernels; the gradient kernel may be scheduled at once (it
/// waits for this one).
template <class T, class L>
__global__ void __launch_bounds__(value_loss_threads) value_loss_fold_kernel(value_loss_params<T, L> p) {
  __shared__ detail::shared_array<value_loss_fold, value_loss_threads> sh;
  __shared__ bool sh_last;
  grid_dependency_wait();
  allow_dependent_launch();
  const bool seq_mean = p.cfg.agg == aggregation::seq_mean_token_mean;
  value_loss_fold total;
  if (grid_tree_fold<value_loss_threads>(
          p.layout.num_seqs(), [&](index_t q) { return value_loss_fold_of(p.rows[q], q, seq_mean); },
          value_loss_fold_merge{}, value_loss_fold{}, p.chunks, &p.check->blocks_done, sh, &sh_last, &total) &&
      threadIdx.x == 0)
    value_loss_publish(p, total);
}

/// Enqueues the statistics and checks: zeroes the offsets check (block counter and list count);
/// for a batch of typically short rows (padded T, or packed N/B, at most
/// value_loss_warp_span) one warp per row and, for a packed batch, a block per listed longer
/// row; otherwise a block per row, in row order. Either way a row takes the path its valid
/// tokens choose: the same bits in both layouts. Then value_loss_fold_kernel.
template <class T, class L>
cudaError_t launch_value_loss_stats(const value_loss_params<T, L>& p, cudaStream_t stream) {
  return launch_row_stats<value_loss_threads>(p, value_loss_warp_span, value_loss_long_blocks,
                                              value_loss_rows_kernel<false, T, L>, value_loss_short_rows_kernel<T, L>,
                                              value_loss_rows_kernel<true, T, L>, value_loss_fold_kernel<T, L>, stream);
}

/// The gradient at positions [lo, hi) of row i by a group of S threads (this one of rank
/// `rank`): grad = coef · w_i · dL/dv at valid positions, 0 at masked ones, U positions in
/// flight per thread. Wait: the caller has not waited for the statistics yet (padded rows):
/// the first positions are loaded, then grid_dependency_wait, and nothing is written if the
/// statistics' error is set. Inputs are loaded and the gradient stored evict-first
/// (load_last_use, store_streaming: the call's last use of each).
template <int S, bool Wait, class T, class L>
__device__ __forceinline__ void value_loss_grad_range(const value_loss_params<T, L>& p, index_t i, index_t lo,
                                                      index_t hi, int rank) {
  constexpr int U = value_loss_unroll;
  const T* vr = p.layout.row_ptr(p.v, i);
  const T* vor = p.layout.row_ptr(p.vo, i);
  const T* rr = p.layout.row_ptr(p.ret, i);
  T* g = p.layout.row_ptr(p.grad, i);
  const auto* m = p.layout.mask_row(i);
  const bool clipping = p.cfg.clip != value_clip::none;
  const T cr = T(p.cfg.clip_range);
  T v[U], vo[U], rt[U];
  bool ok[U];
  auto load = [&](index_t c) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const index_t t = c + index_t(u) * S;
      const bool in = t < hi;
      v[u] = in ? load_last_use(vr + t) : T(0);
      rt[u] = in ? load_last_use(rr + t) : T(0);
      vo[u] = in && clipping ? load_last_use(vor + t) : v[u];
      ok[u] = in && (m == nullptr || detail::is_valid(load_last_use(m + t)));
    }
  };
  index_t c = lo + rank;
  if (c < hi) load(c);
  if constexpr (Wait) {
    grid_dependency_wait();
    if (p.out.slot->error.code != 0) return;  // a check failed: write nothing
  }
  const double w = p.cfg.coef * detail::aggregation_weight(p.cfg.agg, p.norm.scale, *p.divisor, p.rows[i].n);
  for (bool first = true; c < hi; c += index_t(S) * U, first = false) {
    if (!first) load(c);
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const index_t t = c + index_t(u) * S;
      if (t >= hi) continue;
      if (!ok[u]) {
        store_streaming(g + t, T(0));
        continue;
      }
      const detail::value_term term = detail::value_loss_term<T>(v[u], vo[u], rt[u], p.cfg.clip, cr);
      store_streaming(g + t, T(w * term.grad));
    }
  }
}

/// (row, slice) blocks over every row. Launched as a programmatic dependent of the fold kernel:
/// for padded layouts the first chunk of the inputs is loaded before grid_dependency_wait
/// (inputs, never written by the statistics); packed rows are only touched after it (their
/// offsets are checked by the statistics).
template <class T, class L>
__global__ void __launch_bounds__(value_loss_threads) value_loss_grad_kernel(value_loss_params<T, L> p) {
  if constexpr (L::is_packed) {
    grid_dependency_wait();
    if (p.out.slot->error.code != 0) return;  // a check failed: write nothing (offsets included)
  }
  // Rows in reverse: the statistics pass read the last rows last, so they are still in L2.
  const index_t i = index_t(gridDim.x) - 1 - index_t(blockIdx.x);
  const index_t len = p.layout.row_len(i);
  const index_t per = detail::ceil_div<index_t>(len > 0 ? len : 0, gridDim.y);
  const index_t lo = index_t(blockIdx.y) * per, hi = detail::min_of<index_t>(len, lo + per);
  value_loss_grad_range<value_loss_threads, !L::is_packed>(p, i, lo, hi, int(threadIdx.x));
}

/// Batches of typically short rows: blocks [0, warp_blocks) take 8 rows each, one warp per row
/// (rows in reverse order, as above), and skip rows longer than value_loss_warp_span; the
/// blocks after them share the rows the statistics listed as longer (exactly those), in
/// slices. A programmatic dependent of the fold kernel, as value_loss_grad_kernel.
template <class T, class L>
__global__ void __launch_bounds__(value_loss_threads) value_loss_grad_short_kernel(value_loss_params<T, L> p,
                                                                                   unsigned warp_blocks) {
  if constexpr (L::is_packed) {
    grid_dependency_wait();
    if (p.out.slot->error.code != 0) return;  // a check failed: write nothing (offsets included)
  }
  const index_t B = p.layout.num_seqs();
  if (blockIdx.x < warp_blocks) {
    const index_t i = index_t(warp_blocks - 1 - blockIdx.x) * (value_loss_threads / 32) + index_t(threadIdx.x >> 5);
    if (i >= B) return;
    const index_t len = p.layout.row_len(i);
    if (len > value_loss_warp_span) return;  // listed: the blocks after warp_blocks write it
    value_loss_grad_range<32, !L::is_packed>(p, i, 0, len, int(threadIdx.x & 31));
    return;
  }
  if constexpr (!L::is_packed) return;  // padded batches list no rows (and get no blocks here)
  const index_t listed = index_t(p.check->rows_listed);
  if (listed == 0) return;
  const index_t nb = index_t(gridDim.x - warp_blocks), b = index_t(blockIdx.x - warp_blocks);
  const index_t slices = nb / listed > 1 ? nb / listed : 1;  // blocks per listed row
  for (index_t q = b; q < listed * slices; q += nb) {
    const index_t i = p.long_rows[q / slices], s = q % slices;
    const index_t len = p.layout.row_len(i);
    const index_t per = detail::ceil_div<index_t>(len, slices);
    const index_t lo = s * per, hi = detail::min_of<index_t>(len, lo + per);
    value_loss_grad_range<value_loss_threads, false>(p, i, lo, hi, int(threadIdx.x));
  }
}

/// Enqueues the gradient as a programmatic dependent of the fold kernel (row_reduce.cuh:
/// launch_dependent): for batches of typically short rows value_loss_grad_short_kernel (a
/// warp per row, then blocks for the listed longer rows), otherwise value_loss_grad_kernel over
/// every row in slices of about 4096 tokens.
template <class T, class L>
cudaError_t launch_value_loss_grad(const value_loss_params<T, L>& p, cudaStream_t stream) {
  const index_t B = p.layout.num_seqs();
  if (B <= 0) return cudaSuccess;
  if (B > 0x7fffffff) return cudaErrorInvalidConfiguration;
  const index_t avg = typical_row_length(p.layout);
  if (avg <= value_loss_warp_span) {
    constexpr index_t R = value_loss_threads / 32;
    const index_t warp_blocks = (B + R - 1) / R;
    const index_t grid = warp_blocks + long_row_blocks(p.layout, value_loss_warp_span, value_loss_long_blocks);
    return launch_dependent(value_loss_grad_short_kernel<T, L>, dim3(static_cast<unsigned>(grid)),
                            dim3(value_loss_threads), stream, p, static_cast<unsigned>(warp_blocks));
  }
  index_t slices = detail::ceil_div<index_t>(avg, 4096);
  if (slices > 65535) slices = 65535;
  return launch_dependent(value_loss_grad_kernel<T, L>, dim3(static_cast<unsigned>(B), static_cast<unsigned>(slices)),
                          dim3(value_loss_threads), stream, p);
}

#endif  // __CUDACC__

}  // namespace polo::kernels
