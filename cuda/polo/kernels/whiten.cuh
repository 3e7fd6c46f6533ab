// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
#pragma once
/// \file
/// Kernels of masked_moments and whiten (layer D of docs/CONTRIBUTING.md): POD params,
/// `__global__` kernels and `launch_*` launchers that enqueue on a stream and return
/// `cudaError_t` (never synchronize, allocate or throw). cuda/polo/whiten.cuh owns validation,
/// scratch and the one read-back.
///
///     whiten_short_rows_kernel  (batches whose typical row, padded T or packed N/B, is at most
///                             whiten_warp_span = 1024 tokens) one warp per row, 8 rows per
///                             block: packed offsets, the first valid position f, and a short
///                             row (no valid token at or past f + 1024) reduced by the warp:
///                             lane l takes the quads f + (u·32 + l)·4 + e in order, sums
///                             shifted by x[f], a fixed warp tree; long rows listed for
///                             whiten_rows_kernel. (Rows of 256 tokens at 2^23 tokens, H100:
///                             506 -> 215 us for whiten.)
///     whiten_rows_kernel      one block per row (listed rows, or every row of a batch of long
///                             rows, whose short rows it hands to one warp as above, so that a
///                             row's bits never depend on the kernel): packed offsets of the row, its first valid
///                             position f (the first step's loads issued before, for f = 0),
///                             then ONE pass over the row: thread k takes quads of 4
///                             consecutive positions f + (u·256 + k)·4 + e + 2048·j in order
///                             (u < 2; the next step's two quads are loaded while a step is
///                             summed, masks kept as one word per quad: mask_quad. H100,
///                             1024 x 8192: 59.0 -> 55.4 us for whiten against 4 quads per
///                             step loaded after the sums; 2 quads also make a one-warp round
///                             256 positions: rows of 256 76.4 -> 62.7),
///                             keeps sums shifted by the row's first valid value x[f] (n, Σd,
///                             Σd², d = x − x[f]: whiten_part), every position folded without
///                             a branch (one not valid adds 0: step_each); the threads' sums
///                             meet in a fixed tree of additions (layout-independent: the
///                             assignment depends only on the position relative to f), and
///                             only a row whose sums came out non-finite is read again for the
///                             first non-finite value (whiten_find_bad).
///     whiten_fold_kernel      the rows merged with Chan's update in a fixed tree over the row
///                             index (grid_tree_fold: 256 rows per block, then the blocks'
///                             results in the last block), the first error resolved (offsets,
///                             non-finite, degenerate), the coefficients, published through
///                             detail/async_result.cuh. (One block folding every row took
///                             120 us at 32,768 rows.)
///     whiten_apply_*_kernel   out = whiten_token(valid, x, μ, 1/D) with μ, 1/D read from the
///                             device slot; writes nothing if its error is set. Packed batches
///                             flat over the N tokens (no row needed), padded rows of at most
///                             512 one warp each, longer padded rows in (row, slice) blocks;
///                             the last tokens first (the statistics read them last: still in
///                             L2). A programmatic dependent of the fold kernel (or of the kernel
///                             that stored the slot): the first inputs are loaded before
///                             waiting for it. (Rows of 256 at 2^23 tokens: a block per row
///                             took 74.6 us.)
///
/// No floating-point atomics: bitwise identical run to run, and padded == packed.

#include <cuda_runtime.h>

#include <climits>
#include <cstdint>
#include <type_traits>

#include "polo/aggregation.hpp"
#include "polo/core/backend.hpp"
#include "polo/core/layout.hpp"
#include "polo/core/math.hpp"
#include "polo/core/reduce.hpp"
#include "polo/detail/async_result.cuh"
#include "polo/detail/launch.cuh"
#include "polo/detail/row_reduce.cuh"
#include "polo/detail/status.cuh"
#include "polo/whiten.hpp"

namespace polo::kernels {

inline constexpr int whiten_threads = 256;  ///< block of every whiten kernel
inline constexpr int whiten_quad = 4;        ///< consecutive positions per load (stats pass)
inline constexpr int whiten_unroll = 2;      ///< quads per thread per step (stats pass; twice that in flight)
inline constexpr int whiten_apply_unroll = 4;
/// Padded rows of at most this many positions are written by one warp each (whiten_apply_rows_kernel),
/// longer ones by (row, slice) blocks. H100, 2^23 tokens: one warp per row 74.4 us at T = 1024
/// against 69.7 for a block (quads of 4 per lane: 71.0), 77.9 against 85.7 at 512.
inline constexpr int whiten_apply_warp_span = 512;
/// A row whose valid tokens all lie within this many positions of its first is a short row,
/// reduced by one warp (whiten_short_rows_kernel, 8 rows per block); the others by a block
/// each (whiten_rows_kernel).
inline constexpr int whiten_warp_span = 1024;
/// Most blocks of whiten_rows_kernel (they stride over the listed long rows).
inline constexpr int whiten_long_blocks = 1024;

/// Moments of one row and its first non-finite valid value (flat index; LLONG_MAX: none).
struct whiten_row {
  moments m{};
  long long bad = LLONG_MAX;
};

/// Merges two rows' (or threads') results: Chan's update of the moments, the earlier bad index.
struct whiten_row_merge {
  POLO_HD_INLINE whiten_row operator()(whiten_row a, const whiten_row& b) const {
    a.m += b.m;
    if (b.bad < a.bad) a.bad = b.bad;
    return a;
  }
};

/// A group's sums over the valid values of one row in the statistics pass, all shifted by the
/// same value x0 (the row's first valid value): the count, Σd and Σd² with d = x − x0, in
/// position order per thread. Plain sums, so the threads meet in a fixed tree of additions
/// (no division per merge); the row's moments follow once (whiten_part::row). The shift is
/// a value of the row, so Σd² − (Σd)²/n cancels only as much as the row's mean lies from it
/// in units of its spread.
struct whiten_part {
  long long n = 0;
  double s1 = 0.0, s2 = 0.0;
  POLO_HD_INLINE whiten_part& operator+=(const whiten_part& b) {
    n += b.n;
    s1 += b.s1;
    s2 += b.s2;
    return *this;
  }
  /// The moments of the values summed (shift x0), and `bad`, the first non-finite one.
  [[nodiscard]] POLO_HD_INLINE whiten_row row(double x0, long long bad) const {
    whiten_row r;
    if (n > 0) {
      r.m.count = static_cast<index_t>(n);
      r.m.mean = x0 + s1 / double(n);
      const double m2 = s2 - s1 * (s1 / double(n));
      r.m.m2 = m2 > 0.0 ? m2 : 0.0;
    }
    r.bad = bad;
    return r;
  }
};

/// A thread's accumulator of the statistics pass: its part (the caller counts the valid
/// positions of a step in an int). Every position of its quads is folded without a branch
/// (add_if: a position that is not valid adds exactly 0, even where
/// its value is NaN), and whether a valid value was non-finite is read from the sums once, at
/// the end (nonfinite: d = x − x0 in double is finite for every finite float, so a non-finite
/// sum means a non-finite valid value; for double inputs it may also mean an overflow, and the
/// row is then read again for nothing: whiten_find_bad finds no index).
struct whiten_acc {
  whiten_part s{};
#if defined(__CUDACC__)
  template <class T>
  __device__ __forceinline__ void add_if(bool ok, T xv, double x0) {
    const double d = ok ? double(xv) - x0 : 0.0;
    s.s1 += d;
    s.s2 += d * d;
  }
  [[nodiscard]] __device__ __forceinline__ bool nonfinite() const { return !isfinite(s.s1) || !isfinite(s.s2); }
#endif
};

/// Params of launch_whiten_stats. Exactly one of `ws` (whiten) and `ms` (masked_moments) has
/// a slot.
template <class T, class L>
struct whiten_stats_params {
  L layout{};
  detail::layout_tensor<L, const T> x{};
  int entry = detail::entry_whiten;  ///< entry point named by errors
  whiten_row* rows = nullptr;        ///< [max(B, 1)] scratch
  index_t* long_rows = nullptr;      ///< [max(B, 1)] scratch: the rows for whiten_rows_kernel
  whiten_row* chunks = nullptr;      ///< [fold_blocks(B, 256)] scratch: whiten_fold_kernel's blocks
  offsets_check* check = nullptr;    ///< scratch, zeroed by the launcher
  whiten_config cfg{};               ///< whiten only
  bool has_batch = false;            ///< whiten only: `batch` replaces the local moments
  moments batch{};
  detail::result_target<whiten_stats> ws{};
  detail::result_target<moments> ms{};
};

/// Params of launch_whiten_apply.
template <class T, class L>
struct whiten_apply_params {
  L layout{};
  detail::layout_tensor<L, const T> x{};
  detail::layout_tensor<L, T> out{};
  const detail::result_slot<whiten_stats>* slot = nullptr;  ///< μ, 1/D, degenerate and the gate
  whiten_config cfg{};
};

#if defined(__CUDACC__)

template <class T, class L>
__device__ void whiten_row_stats(const whiten_stats_params<T, L>& p, index_t i,
                                 detail::shared_array<whiten_part, whiten_threads>& sh, int* sh_first,
                                 unsigned long long* sh1);

template <class T, class L, class M>
__device__ void whiten_row_warp(const whiten_stats_params<T, L>& p, index_t i, const T* xr, const M* m, index_t f,
                                index_t end, index_t flat0);

/// One warp per row, 8 rows per block: the row's packed offsets, its first valid position f,
/// and whether a valid token lies at or past f + whiten_warp_span. A short row (none) is
/// reduced here (whiten_row_warp); a long one is appended to `long_rows` for
/// whiten_rows_kernel. The test looks only at the valid tokens, so a padded row and the same
/// row packed take the same path. (Rows of 256 tokens at 2^23 tokens on an H100: one block of
/// 256 threads per row spent about 900 instructions per warp on fixed work, 536 us.)
template <class T, class L>
__global__ void __launch_bounds__(whiten_threads) whiten_short_rows_kernel(whiten_stats_params<T, L> p) {
  const int lane = int(threadIdx.x & 31);
  const index_t i = index_t(blockIdx.x) * (whiten_threads / 32) + index_t(threadIdx.x >> 5);
  if (!warp_row_readable(p, i)) return;
  const index_t len = p.layout.row_len(i);
  const T* xr = p.layout.row_ptr(p.x, i);
  const auto* m = p.layout.mask_row(i);
  auto valid = [&](index_t t) { return detail::is_valid(m[t]); };
  const index_t f = m == nullptr ? 0 : warp_first_valid(0, len, valid);
  constexpr index_t W = whiten_warp_span;
  const bool short_row = len - f <= W || (m != nullptr && warp_first_valid(f + W, len, valid) == len);
  if (!short_row) {
    if (lane == 0) p.long_rows[atomicAdd(&p.check->rows_listed, 1u)] = i;
    return;
  }
  whiten_row_warp(p, i, xr, m, f, len < f + W ? len : f + W, static_cast<index_t>(detail::flat_index(p.layout, i, 0)));
}

/// One block per row. Listed = true: the long rows listed by whiten_short_rows_kernel, strided
/// over the grid (their order does not matter: each row is reduced on its own). Listed = false
/// (batches of long rows, no first kernel): row blockIdx.x, its packed offsets checked here, a
/// short row handed to one warp inside whiten_row_stats.
template <bool Listed, class T, class L>
__global__ void __launch_bounds__(whiten_threads, 4) whiten_rows_kernel(whiten_stats_params<T, L> p) {
  __shared__ detail::shared_array<whiten_part, whiten_threads> sh;
  __shared__ int sh_first[whiten_threads / 32];
  __shared__ unsigned long long sh_bad;
  block_rows<Listed>(p, [&](index_t i) { whiten_row_stats(p, i, sh, sh_first, &sh_bad); });
}

/// Row i's first non-finite valid value (flat index; LLONG_MAX: none) over the positions
/// [f, end), by a group of S threads (this one of rank `rank`; S = 32: a warp, S = 256: the
/// block, with `sh1` a shared slot). Called only for a row whose pass found one: a minimum, so
/// any assignment of positions to threads gives the same index.
template <int S, class T, class M>
__device__ long long whiten_find_bad(const T* xr, const M* m, index_t f, index_t end, long long flat0, int rank,
                                     unsigned long long* sh1) {
  long long bad[1] = {LLONG_MAX};
  for (index_t t = f + rank; t < end; t += S) {
    if (m != nullptr && !detail::is_valid(m[t])) continue;
    if (!finite_of(xr[t])) {
      bad[0] = flat0 + static_cast<long long>(t);
      break;
    }
  }
  group_min_index<S>(bad, sh1);
  return bad[0];
}

/// Row i's moments and first non-finite valid value when its valid tokens all lie in [f, end)
/// (end - f <= whiten_warp_span), by one warp -> p.rows[i]. Lane l takes the quads of
/// positions f + (u·32 + l)·4 + e in order (u < span / 128; one vector load per quad where
/// aligned), sums d = x − x[f] and d² (whiten_part), and the lanes' sums meet in a fixed warp
/// tree. Depends only on positions relative to f: packed == padded.
template <class T, class L, class M>
__device__ void whiten_row_warp(const whiten_stats_params<T, L>& p, index_t i, const T* xr, const M* m, index_t f,
                                index_t end, index_t flat0) {
  constexpr int Q = whiten_quad, U = whiten_unroll;
  constexpr int rounds = whiten_warp_span / (32 * Q * U);
  static_assert(whiten_warp_span % (32 * Q * U) == 0, "whiten_warp_span: whole rounds of the warp");
  const int lane = int(threadIdx.x & 31);
  const bool vx = detail::is_aligned(xr + f, sizeof(T) * Q);
  const bool vm = m != nullptr && detail::is_aligned(m + f, sizeof(M) * Q);
  const double x0 = f < end ? double(xr[f]) : 0.0;  // the shift: the row's first valid value
  whiten_acc acc;
#pragma unroll 1
  for (int r = 0; r < rounds; ++r) {
    if (f + index_t(r * U) * 32 * Q >= end) break;  // warp-uniform
    T v[U][Q];
    M mk[U][Q];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const index_t pos = f + (index_t(r * U + u) * 32 + lane) * Q;
      load_quad<Q>(xr, pos, end, vx, v[u]);
      if (m != nullptr) load_quad<Q>(m, pos, end, vm, mk[u]);
    }
    int n = 0;
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const index_t pos = f + (index_t(r * U + u) * 32 + lane) * Q;
#pragma unroll
      for (int e = 0; e < Q; ++e) {
        const bool ok = pos + e < end && (m == nullptr || detail::is_valid(mk[u][e]));
        acc.add_if(ok, v[u][e], x0);
        n += ok ? 1 : 0;
      }
    }
    acc.s.n += n;
  }
  long long bad = LLONG_MAX;
  if (__any_sync(0xffffffffu, acc.nonfinite()))
    bad = whiten_find_bad<32>(xr, m, f, end, static_cast<long long>(flat0), lane, nullptr);
  const whiten_part total = warp_tree_fold(acc.s, [](whiten_part a, const whiten_part& b) { return a += b; });
  if (lane == 0) p.rows[i] = total.row(x0, bad);
}

/// Row i's moments and first non-finite value (the whole block) -> p.rows[i]: sums shifted by
/// the row's first valid value (whiten_part) in a fixed block tree. Steps that lie wholly
/// inside the row take no per-token bounds test, and whether a valid token lies at or past
/// f + whiten_warp_span is known from its quad (the span is one quad per thread).
template <class T, class L>
__device__ void whiten_row_stats(const whiten_stats_params<T, L>& p, index_t i,
                                 detail::shared_array<whiten_part, whiten_threads>& sh, int* sh_first,
                                 unsigned long long* sh1) {
  const int tid = threadIdx.x;
  const index_t len = p.layout.row_len(i);
  const T* xr = p.layout.row_ptr(p.x, i);
  const auto* m = p.layout.mask_row(i);
  using M = typename L::mask_type;
  constexpr int Q = whiten_quad, U = whiten_unroll, NT = whiten_threads;
  constexpr index_t step = index_t(NT) * Q * U;
  constexpr index_t W = whiten_warp_span;
  static_assert(W == index_t(NT) * Q, "whiten_row_stats: the warp span is the first quad of each thread");
  // Two steps' registers: the next step's loads are in flight while this one is summed.
  T v[U][Q], vn[U][Q];
  mask_quad<M, Q> mk[U], mkn[U];
  auto load = [&](index_t c, T(&xv)[U][Q], mask_quad<M, Q>(&mq)[U]) {
    const bool vx = detail::is_aligned(xr + c, sizeof(T) * Q);
    const bool vm = m != nullptr && detail::is_aligned(m + c, sizeof(M) * Q);
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const index_t pos = c + (index_t(u) * NT + tid) * Q;
      load_quad<Q>(xr, pos, len, vx, xv[u]);  // masked positions too: the load overlaps the mask's
      if (m != nullptr) load_mask_quad<Q>(m, pos, len, vm, mq[u]);
    }
  };
  if (len > 0) load(0, v, mk);  // speculative: most rows start with a valid token (f == 0)
  const index_t f = m == nullptr ? 0 : row_first_valid<NT>(
                                           len, [&](index_t t) { return detail::is_valid(m[t]); }, sh_first);
  const index_t flat0 = static_cast<index_t>(detail::flat_index(p.layout, i, 0));
  const double x0 = f < len ? double(xr[f]) : 0.0;  // the shift: the row's first valid value
  whiten_acc acc;
  bool far = false;  // a valid token at or past f + W: a long row (whiten_short_rows_kernel's test)
  // The valid values of one step (bounds tested per token only in the row's last step).
  auto sums = [&](index_t c, auto whole) {
    int n = 0;
    step_each<NT, Q, U, decltype(whole)::value>(c, f, len, tid, m, mk, far, [&](int u, int e, bool ok) {
      acc.add_if(ok, v[u][e], x0);
      n += ok ? 1 : 0;
    });
    acc.s.n += n;
  };
  for (index_t c = f; c < len; c += step) {
    if (c == f && c != 0) load(c, v, mk);  // the first step, when the speculative loads missed it
    const bool more = c + step < len;
    if (more) load(c + step, vn, mkn);
    if (c + step <= len) sums(c, std::true_type{});
    else sums(c, std::false_type{});
    if (more) {
#pragma unroll
      for (int u = 0; u < U; ++u) {
        mk[u] = mkn[u];
#pragma unroll
        for (int e = 0; e < Q; ++e) v[u][e] = vn[u][e];
      }
    }
  }
  allow_dependent_launch();  // this block's loads are done: the apply kernel may be scheduled
  // A short row (no valid token at or past f + W, the same test in both layouts) is reduced by
  // one warp, as whiten_short_rows_kernel reduces it, so that its bits do not depend on which
  // kernel met it (rows of a batch of long rows that are short themselves: read twice).
  if (__syncthreads_or(far ? 1 : 0) == 0) {
    if (tid < 32) whiten_row_warp(p, i, xr, m, f, len < f + W ? len : f + W, flat0);
    return;
  }
  long long bad = LLONG_MAX;
  if (__syncthreads_or(acc.nonfinite() ? 1 : 0) != 0)
    bad = whiten_find_bad<NT>(xr, m, f, len, static_cast<long long>(flat0), tid, sh1);
  const whiten_part total =
      block_tree_fold<NT>(acc.s, [](whiten_part a, const whiten_part& b) { return a += b; }, sh);
  if (tid == 0) p.rows[i] = total.row(x0, bad);
}

/// From the merge of every row: the first error resolved (offsets, non-finite, degenerate),
/// the coefficients, published. One thread.
template <class T, class L>
__device__ void whiten_publish(const whiten_stats_params<T, L>& p, const whiten_row& total) {
  cuda::status err = resolve_offsets(p.layout, p.check, p.entry);
  whiten_stats st;
  if (err.code == detail::status_ok) {
    st.local = total.m;
    if (total.bad != LLONG_MAX) {
      err.code = detail::status_nonfinite_arg;
      err.a = detail::arg_x;
      err.index = total.bad;
      err.value = double(at_flat(p.layout, p.x, total.bad));
    }
  }
  if (p.ws.slot != nullptr) {
    st.used = p.has_batch ? p.batch : st.local;
    const detail::whiten_coeffs w = detail::whiten_coefficients(st.used, p.cfg);
    st.mean = w.mean;
    st.inv_scale = w.inv_scale;
    st.degenerate = w.degenerate;
    if (err.code == detail::status_ok && w.degenerate && p.cfg.degenerate == whiten_degenerate::error) {
      err.code = detail::status_degenerate;
      err.a = st.used.count;
      err.b = p.cfg.std == std_kind::sample ? 1 : 0;
    }
    detail::publish(p.ws, err, st);
  } else {
    detail::publish(p.ms, err, st.local);
  }
}

/// The rows merged with Chan's update in a fixed tree over the row index (grid_tree_fold: 256
/// rows per block, then the blocks' results), published by the last block (whiten_publish). A
/// programmatic dependent of the rows kernels; the apply kernel may be scheduled at once (it
/// waits for this one).
template <class T, class L>
__global__ void __launch_bounds__(whiten_threads) whiten_fold_kernel(whiten_stats_params<T, L> p) {
  __shared__ detail::shared_array<whiten_row, whiten_threads> sh;
  __shared__ bool sh_last;
  grid_dependency_wait();
  allow_dependent_launch();
  whiten_row total;
  if (grid_tree_fold<whiten_threads>(
          p.layout.num_seqs(), [&](index_t q) { return p.rows[q]; }, whiten_row_merge{}, whiten_row{}, p.chunks,
          &p.check->blocks_done, sh, &sh_last, &total) &&
      threadIdx.x == 0)
    whiten_publish(p, total);
}

/// Enqueues the statistics: zeroes the offsets check (its block counter and list count), then
/// for a batch of typically short rows (padded T, or packed N/B, at most whiten_warp_span) one
/// warp per row (short rows reduced, long rows listed) and, for a packed batch, blocks for the
/// listed rows; otherwise a block per row, in row order (the apply kernel takes the rows in
/// reverse and finds the last ones in L2), each short row handed to one warp. Either way a row
/// takes the path its valid tokens choose: the same bits in both layouts. Then
/// whiten_fold_kernel.
template <class T, class L>
cudaError_t launch_whiten_stats(const whiten_stats_params<T, L>& p, cudaStream_t stream) {
  // (a listed row has a valid token 1,024 positions or more past its first: it is longer than that)
  return launch_row_stats<whiten_threads>(p, whiten_warp_span, whiten_long_blocks,
                                          whiten_rows_kernel<false, T, L>, whiten_short_rows_kernel<T, L>,
                                          whiten_rows_kernel<true, T, L>, whiten_fold_kernel<T, L>, stream);
}

/// Writes positions [lo, hi) of one row (or of a packed batch's flat token range) with a group
/// of S threads, this one of rank `rank`: out = whiten_token(valid, x, μ, 1/D), U positions in
/// flight per thread. Loads the first positions, then waits for the preceding kernel
/// (grid_dependency_wait: the inputs are never written by it) and writes nothing if the slot's
/// error is set. Inputs are loaded and outputs stored evict-first (load_last_use,
/// store_streaming: neither pushes out of L2 the inputs still to be read; H100, 1024 x 8192:
/// 61.2 -> 59.0 us, 256 x 32768 67.7 -> 62.9).
template <int S, class T, class L, class M>
__device__ __forceinline__ void whiten_apply_range(const whiten_apply_params<T, L>& p, const T* xr, T* o, const M* m,
                                                   index_t lo, index_t hi, int rank) {
  constexpr int U = whiten_apply_unroll;
  T v[U];
  bool ok[U];
  auto load = [&](index_t c) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const index_t t = c + index_t(u) * S;
      v[u] = t < hi ? load_last_use(xr + t) : T(0);
      ok[u] = t < hi && (m == nullptr || detail::is_valid(load_last_use(m + t)));
    }
  };
  index_t c = lo + rank;
  if (c < hi) load(c);
  grid_dependency_wait();
  if (p.slot->error.code != 0) return;  // a check failed: write nothing
  detail::whiten_coeffs w;
  w.mean = p.slot->value.mean;
  w.inv_scale = p.slot->value.inv_scale;
  w.degenerate = p.slot->value.degenerate;
  for (bool first = true; c < hi; c += index_t(S) * U, first = false) {
    if (!first) load(c);
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const index_t t = c + index_t(u) * S;
      if (t < hi) store_streaming(o + t, static_cast<T>(detail::whiten_token(ok[u], double(v[u]), w, p.cfg)));
    }
  }
}

/// Padded rows longer than whiten_apply_warp_span: (row, slice) blocks, rows in reverse order (the
/// last rows the statistics read are still in L2).
template <class T, class L>
__global__ void __launch_bounds__(whiten_threads) whiten_apply_kernel(whiten_apply_params<T, L> p) {
  const index_t i = index_t(gridDim.x) - 1 - index_t(blockIdx.x);
  const index_t len = p.layout.row_len(i);
  const index_t per = detail::ceil_div<index_t>(len > 0 ? len : 0, gridDim.y);
  const index_t lo = index_t(blockIdx.y) * per, hi = detail::min_of<index_t>(len, lo + per);
  whiten_apply_range<whiten_threads>(p, p.layout.row_ptr(p.x, i), p.layout.row_ptr(p.out, i), p.layout.mask_row(i),
                                     lo, hi, int(threadIdx.x));
}

/// Padded rows of at most whiten_apply_warp_span: one warp per row, 8 rows per block, in
/// reverse.
template <class T, class L>
__global__ void __launch_bounds__(whiten_threads) whiten_apply_rows_kernel(whiten_apply_params<T, L> p) {
  const index_t i = (index_t(gridDim.x) - 1 - index_t(blockIdx.x)) * (whiten_threads / 32) + index_t(threadIdx.x >> 5);
  if (i >= p.layout.num_seqs()) return;
  whiten_apply_range<32>(p, p.layout.row_ptr(p.x, i), p.layout.row_ptr(p.out, i), p.layout.mask_row(i), 0,
                         p.layout.row_len(i), int(threadIdx.x & 31));
}

/// Packed batches: the N tokens are the rows back to back (valid offsets; with invalid ones the
/// statistics set the error and nothing is written), and the write needs no row: blocks of
/// whiten_apply_span tokens, in reverse.
inline constexpr int whiten_apply_span = whiten_threads * whiten_apply_unroll * 4;
template <class T, class L>
__global__ void __launch_bounds__(whiten_threads) whiten_apply_flat_kernel(whiten_apply_params<T, L> p) {
  const index_t lo = (index_t(gridDim.x) - 1 - index_t(blockIdx.x)) * whiten_apply_span;
  const index_t hi = detail::min_of<index_t>(p.layout.tokens, lo + whiten_apply_span);
  whiten_apply_range<whiten_threads>(p, p.x.data, p.out.data, p.layout.mask.data, lo, hi, int(threadIdx.x));
}

/// Enqueues the write as a programmatic dependent of the kernel before it (the fold kernel, or
/// the kernel that stored the slot; row_reduce.cuh: launch_dependent): packed batches flat over
/// the tokens; padded rows of at most whiten_apply_warp_span one warp each; longer padded rows
/// in slices of about 4096 tokens.
template <class T, class L>
cudaError_t launch_whiten_apply(const whiten_apply_params<T, L>& p, cudaStream_t stream) {
  const index_t B = p.layout.num_seqs();
  if (B <= 0) return cudaSuccess;
  if (B > 0x7fffffff) return cudaErrorInvalidConfiguration;
  if constexpr (L::is_packed) {
    const index_t N = p.layout.tokens;
    if (N <= 0) return cudaSuccess;
    const index_t blocks = detail::ceil_div<index_t>(N, whiten_apply_span);
    if (blocks > 0x7fffffff) return cudaErrorInvalidConfiguration;
    return launch_dependent(whiten_apply_flat_kernel<T, L>, dim3(static_cast<unsigned>(blocks)), dim3(whiten_threads),
                            stream, p);
  } else {
    const index_t T_ = p.layout.seq_len;
    if (T_ <= whiten_apply_warp_span) {
      constexpr index_t R = whiten_threads / 32;
      return launch_dependent(whiten_apply_rows_kernel<T, L>, dim3(static_cast<unsigned>((B + R - 1) / R)),
                              dim3(whiten_threads), stream, p);
    }
    index_t slices = detail::ceil_div<index_t>(T_, 4096);
    if (slices > 65535) slices = 65535;
    return launch_dependent(whiten_apply_kernel<T, L>, dim3(static_cast<unsigned>(B), static_cast<unsigned>(slices)),
                            dim3(whiten_threads), stream, p);
  }
}

#endif  // __CUDACC__

}  // namespace polo::kernels
