// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
#pragma once
/// \file
/// Kernels of masked_moments and whiten (layer D of docs/CONTRIBUTING.md): POD params,
/// `__global__` kernels and `launch_*` launchers that enqueue on a stream and return
/// `cudaError_t` (never synchronize, allocate or throw). cuda/polo/whiten.cuh owns validation,
/// scratch and the one read-back.
///
///     whiten_rows_kernel      one block per row: packed offsets of the row, its first valid
///                             position f (the first step's loads issued before, for f = 0),
///                             then ONE pass over the row: thread k takes quads of 4
///                             consecutive positions f + (u·256 + k)·4 + e + 4096·j in order
///                             (4 vector loads in flight),
///                             keeps shifted sums (x0 = its first value, Σd, Σd², d = x − x0)
///                             and its first non-finite valid value; per-thread moments are
///                             merged with Chan's update in a fixed tree (layout-independent:
///                             the assignment depends only on the position relative to f).
///                             The LAST block to finish (integer counter, last_block_done)
///                             then runs whiten_finalize_block: rows merged with Chan's update
///                             in a fixed tree over the row index (the same tree whichever
///                             block is last), the first error resolved (offsets, non-finite,
///                             degenerate), the coefficients, published through
///                             detail/async_result.cuh. One launch for the statistics.
///     whiten_apply_kernel     (row, slice) blocks, rows in reverse order (the last rows the
///                             statistics read are still in L2): out = whiten_token(valid, x,
///                             μ, 1/D) with μ, 1/D read from the device slot; writes nothing
///                             if its error is set. A programmatic dependent of the
///                             statistics kernel: padded rows load their first chunk before
///                             waiting for it.
///
/// No floating-point atomics: bitwise identical run to run, and padded == packed.

#include <cuda_runtime.h>

#include <climits>
#include <cstdint>

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
inline constexpr int whiten_unroll = 4;      ///< quads in flight per thread (stats pass)
inline constexpr int whiten_apply_unroll = 4;

/// Moments of one row and its first non-finite valid value (flat index; LLONG_MAX: none).
struct whiten_row {
  moments m{};
  long long bad = LLONG_MAX;
};

/// Params of launch_whiten_stats. Exactly one of `ws` (whiten) and `ms` (masked_moments) has
/// a slot.
template <class T, class L>
struct whiten_stats_params {
  L layout{};
  detail::layout_tensor<L, const T> x{};
  int entry = detail::entry_whiten;  ///< entry point named by errors
  whiten_row* rows = nullptr;        ///< [max(B, 1)] scratch
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
                                 detail::shared_array<whiten_row, whiten_threads>& sh, int* sh_first);
template <class T, class L>
__device__ void whiten_finalize_block(const whiten_stats_params<T, L>& p,
                                      detail::shared_array<whiten_row, whiten_threads>& sh);

/// One block per row; the last block to finish folds the rows (whiten_finalize_block).
template <class T, class L>
__global__ void __launch_bounds__(whiten_threads, 4) whiten_rows_kernel(whiten_stats_params<T, L> p) {
  __shared__ detail::shared_array<whiten_row, whiten_threads> sh;
  __shared__ int sh_first[whiten_threads / 32];
  __shared__ bool sh_ok;
  const index_t i = blockIdx.x;
  const int tid = threadIdx.x;
  if (tid == 0) sh_ok = check_row_offsets(p.layout, i, p.check);
  __syncthreads();
  if (sh_ok) whiten_row_stats(p, i, sh, sh_first);  // block-uniform
  else if (tid == 0 && i < p.layout.num_seqs()) p.rows[i] = whiten_row{};
  if (last_block_done(&p.check->blocks_done, &sh_ok)) whiten_finalize_block(p, sh);
}

/// Row i's moments and first non-finite value (the whole block) -> p.rows[i].
template <class T, class L>
__device__ void whiten_row_stats(const whiten_stats_params<T, L>& p, index_t i,
                                 detail::shared_array<whiten_row, whiten_threads>& sh, int* sh_first) {
  const int tid = threadIdx.x;
  const index_t len = p.layout.row_len(i);
  const T* xr = p.layout.row_ptr(p.x, i);
  const auto* m = p.layout.mask_row(i);
  using M = typename L::mask_type;
  constexpr int Q = whiten_quad, U = whiten_unroll;
  constexpr index_t step = index_t(whiten_threads) * Q * U;
  T v[U][Q];
  M mk[U][Q];
  auto load = [&](index_t c) {
    const bool vx = detail::is_aligned(xr + c, sizeof(T) * Q);
    const bool vm = m != nullptr && detail::is_aligned(m + c, sizeof(M) * Q);
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const index_t pos = c + (index_t(u) * whiten_threads + tid) * Q;
      load_quad<Q>(xr, pos, len, vx, v[u]);  // masked positions too: the load overlaps the mask's
      if (m != nullptr) load_quad<Q>(m, pos, len, vm, mk[u]);
    }
  };
  if (len > 0) load(0);  // speculative: most rows start with a valid token (f == 0)
  const index_t f = m == nullptr ? 0 : row_first_valid<whiten_threads>(
                                           len, [&](index_t t) { return detail::is_valid(m[t]); }, sh_first);
  const index_t flat0 = static_cast<index_t>(detail::flat_index(p.layout, i, 0));
  index_t n = 0;
  double x0 = 0.0, s1 = 0.0, s2 = 0.0;
  long long bad = LLONG_MAX;
  for (index_t c = f; c < len; c += step) {
    if (c != 0) load(c);
#pragma unroll
    for (int u = 0; u < U; ++u) {
#pragma unroll
      for (int e = 0; e < Q; ++e) {
        const index_t pos = c + (index_t(u) * whiten_threads + tid) * Q + e;
        if (pos >= len || (m != nullptr && !detail::is_valid(mk[u][e]))) continue;
        const double xv = double(v[u][e]);
        if (!detail::is_finite(xv) && bad == LLONG_MAX) bad = static_cast<long long>(flat0 + pos);
        if (n == 0) x0 = xv;
        const double d = xv - x0;
        s1 += d;
        s2 += d * d;
        ++n;
      }
    }
  }
  allow_dependent_launch();  // this block's loads are done: the apply kernel may be scheduled
  whiten_row r;
  if (n > 0) {
    r.m.count = n;
    r.m.mean = x0 + s1 / double(n);
    const double m2 = s2 - s1 * (s1 / double(n));
    r.m.m2 = m2 > 0.0 ? m2 : 0.0;
  }
  r.bad = bad;
  const whiten_row total = block_tree_fold<whiten_threads>(
      r,
      [](whiten_row a, const whiten_row& b) {
        a.m += b.m;
        if (b.bad < a.bad) a.bad = b.bad;
        return a;
      },
      sh);
  if (tid == 0) p.rows[i] = total;
}

/// The rows merged with Chan's update in a fixed tree, the first error resolved (offsets,
/// non-finite, degenerate), the coefficients published (one block, after every row).
template <class T, class L>
__device__ void whiten_finalize_block(const whiten_stats_params<T, L>& p,
                                      detail::shared_array<whiten_row, whiten_threads>& sh) {
  const index_t B = p.layout.num_seqs();
  const whiten_row total = fixed_tree_fold<whiten_threads>(
      B, [&](index_t q) { return p.rows[q]; },
      [](whiten_row a, const whiten_row& b) {
        a.m += b.m;
        if (b.bad < a.bad) a.bad = b.bad;
        return a;
      },
      whiten_row{}, sh);
  if (threadIdx.x == 0) {
    cuda::status err = resolve_offsets(p.layout, read_offsets_check(p.check), p.entry);
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
}

/// Enqueues the statistics: zeroes the offsets check (and block counter), one block per row
/// (the last one to finish folds the rows).
template <class T, class L>
cudaError_t launch_whiten_stats(const whiten_stats_params<T, L>& p, cudaStream_t stream) {
  POLO_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(p.check, 0, sizeof(offsets_check), stream));
  const index_t B = p.layout.num_seqs();
  if (B > 0x7fffffff) return cudaErrorInvalidConfiguration;
  whiten_rows_kernel<T, L><<<static_cast<unsigned>(B > 0 ? B : 1), whiten_threads, 0, stream>>>(p);
  return cudaGetLastError();
}

template <class T, class L>
__global__ void __launch_bounds__(whiten_threads) whiten_apply_kernel(whiten_apply_params<T, L> p) {
  // Launched as a programmatic dependent of the statistics kernel: for padded layouts the first
  // chunk of x and the mask is loaded before grid_dependency_wait (they are inputs, never
  // written by the statistics); packed rows are only touched after it (their offsets are
  // checked by the statistics).
  constexpr int U = whiten_apply_unroll;
  if constexpr (L::is_packed) grid_dependency_wait();
  // Rows in reverse: the statistics pass read the last rows last, so they are still in L2.
  const index_t i = index_t(gridDim.x) - 1 - index_t(blockIdx.x);
  if constexpr (L::is_packed) {
    if (p.slot->error.code != 0) return;  // a check failed: write nothing (offsets included)
  }
  const index_t len = p.layout.row_len(i);
  const T* xr = p.layout.row_ptr(p.x, i);
  T* o = p.layout.row_ptr(p.out, i);
  const auto* m = p.layout.mask_row(i);
  const index_t per = detail::ceil_div<index_t>(len > 0 ? len : 0, gridDim.y);
  const index_t lo = index_t(blockIdx.y) * per, hi = detail::min_of<index_t>(len, lo + per);
  T v[U];
  bool ok[U];
  auto load = [&](index_t c) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const index_t t = c + index_t(u) * whiten_threads;
      v[u] = t < hi ? xr[t] : T(0);
      ok[u] = t < hi && (m == nullptr || detail::is_valid(m[t]));
    }
  };
  index_t c = lo + threadIdx.x;
  if (c < hi) load(c);
  if constexpr (!L::is_packed) {
    grid_dependency_wait();
    if (p.slot->error.code != 0) return;  // a check failed: write nothing
  }
  detail::whiten_coeffs w;
  w.mean = p.slot->value.mean;
  w.inv_scale = p.slot->value.inv_scale;
  w.degenerate = p.slot->value.degenerate;
  for (bool first = true; c < hi; c += index_t(whiten_threads) * U, first = false) {
    if (!first) load(c);
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const index_t t = c + index_t(u) * whiten_threads;
      if (t < hi) o[t] = static_cast<T>(detail::whiten_token(ok[u], double(v[u]), w, p.cfg));
    }
  }
}

/// Enqueues whiten_apply_kernel over every row (slices of about 4096 tokens), as a
/// programmatic dependent of the statistics kernel (row_reduce.cuh: launch_dependent).
template <class T, class L>
cudaError_t launch_whiten_apply(const whiten_apply_params<T, L>& p, cudaStream_t stream) {
  const index_t B = p.layout.num_seqs();
  if (B <= 0) return cudaSuccess;
  if (B > 0x7fffffff) return cudaErrorInvalidConfiguration;
  index_t avg = 0;
  if constexpr (L::is_packed) avg = detail::ceil_div<index_t>(p.layout.tokens, B);
  else avg = p.layout.seq_len;
  index_t slices = detail::ceil_div<index_t>(avg > 0 ? avg : 1, 4096);
  if (slices > 65535) slices = 65535;
  return launch_dependent(whiten_apply_kernel<T, L>, dim3(static_cast<unsigned>(B), static_cast<unsigned>(slices)),
                          dim3(whiten_threads), stream, p);
}

#endif  // __CUDACC__

}  // namespace polo::kernels
