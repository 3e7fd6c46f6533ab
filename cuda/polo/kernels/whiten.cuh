// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
#pragma once
/// \file
/// Kernels of masked_moments and whiten (layer D of docs/CONTRIBUTING.md): POD params,
/// `__global__` kernels and `launch_*` launchers that enqueue on a stream and return
/// `cudaError_t` (never synchronize, allocate or throw). cuda/polo/whiten.cuh owns validation,
/// scratch and the one read-back.
///
///     whiten_rows_kernel      one block per row: packed offsets of the row, the first
///                             non-finite valid value, and the row's moments in two
///                             rank-ordered passes (x0 + Σ(x − x0)/n, then Σ(x − μ)²), exactly
///                             the CPU's per-row algorithm, layout-independent
///                             (detail/row_reduce.cuh)
///     whiten_finalize_kernel  one block: rows merged with Chan's update in a fixed tree, the
///                             first error resolved -> whiten_status
///     whiten_apply_kernel     (row, slice) blocks: out = whiten_token(valid, x, μ, 1/D)
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
#include "polo/detail/launch.cuh"
#include "polo/detail/row_reduce.cuh"
#include "polo/detail/status.cuh"
#include "polo/whiten.hpp"

namespace polo::kernels {

inline constexpr int whiten_threads = 256;  ///< block of every whiten kernel

/// Moments of one row and its first non-finite valid value (flat index; LLONG_MAX: none).
struct whiten_row {
  moments m{};
  long long bad = LLONG_MAX;
};

/// What the host reads back after the statistics.
struct whiten_status {
  moments local{};            ///< merged moments of every row
  long long bad = LLONG_MAX;  ///< first non-finite valid value (flat index), LLONG_MAX: none
  double bad_value = 0.0;     ///< x at `bad`
  cuda::status offsets{};     ///< first packed-offsets error (code 0: none)
};

/// Params of launch_whiten_stats.
template <class T, class L>
struct whiten_stats_params {
  L layout{};
  detail::layout_tensor<L, const T> x{};
  int entry = detail::entry_whiten;  ///< entry point named by offset errors
  whiten_row* rows = nullptr;        ///< [max(B, 1)] scratch
  offsets_check* check = nullptr;    ///< scratch, zeroed by the launcher
  whiten_status* status = nullptr;   ///< out
};

/// Params of launch_whiten_apply.
template <class T, class L>
struct whiten_apply_params {
  L layout{};
  detail::layout_tensor<L, const T> x{};
  detail::layout_tensor<L, T> out{};
  detail::whiten_coeffs w{};
  whiten_config cfg{};
};

#if defined(__CUDACC__)

template <class T, class L>
__global__ void __launch_bounds__(whiten_threads) whiten_rows_kernel(whiten_stats_params<T, L> p) {
  __shared__ rank_sum_storage<whiten_threads, double> sm;
  __shared__ int sh_first;
  __shared__ long long sh_bad;
  __shared__ bool sh_ok;
  const index_t i = blockIdx.x;
  if (threadIdx.x == 0) {
    sh_bad = LLONG_MAX;
    sh_ok = check_row_offsets(p.layout, i, p.check);
  }
  __syncthreads();
  if (!sh_ok) {  // block-uniform
    if (threadIdx.x == 0 && i < p.layout.num_seqs()) p.rows[i] = whiten_row{};
    return;
  }
  const index_t len = p.layout.row_len(i);
  const T* xr = p.layout.row_ptr(p.x, i);
  const auto* m = p.layout.mask_row(i);
  auto valid = [&](index_t t) { return m == nullptr || detail::is_valid(m[t]); };
  auto plus = [](double a, double b) { return a + b; };
  whiten_row r;
  const index_t f = first_valid<whiten_threads>(len, valid, &sh_first);
  if (f < len) {
    const double x0 = double(xr[f]);
    index_t n = 0;
    const double s = rank_ordered_sum<whiten_threads>(
        len, valid,
        [&](index_t t) {
          const double v = double(xr[t]);
          if (!detail::is_finite(v)) atomicMin(&sh_bad, static_cast<long long>(detail::flat_index(p.layout, i, t)));
          return v - x0;
        },
        plus, 0.0, sm, n);
    const double mean = x0 + s / double(n);
    const double m2 = rank_ordered_sum<whiten_threads>(
        len, valid,
        [&](index_t t) {
          const double d = double(xr[t]) - mean;
          return d * d;
        },
        plus, 0.0, sm, n);
    r.m.count = n;
    r.m.mean = mean;
    r.m.m2 = m2;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    r.bad = sh_bad;
    p.rows[i] = r;
  }
}

template <class T, class L>
__global__ void __launch_bounds__(whiten_threads) whiten_finalize_kernel(whiten_stats_params<T, L> p) {
  __shared__ detail::shared_array<whiten_row, whiten_threads> sh;
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
    whiten_status s;
    s.offsets = resolve_offsets(p.layout, *p.check, p.entry);
    if (s.offsets.code == detail::status_ok) {
      s.local = total.m;
      s.bad = total.bad;
      if (total.bad != LLONG_MAX) s.bad_value = double(at_flat(p.layout, p.x, total.bad));
    }
    *p.status = s;
  }
}

/// Enqueues the statistics: zeroes the offsets check, one block per row, one finalizing block.
template <class T, class L>
cudaError_t launch_whiten_stats(const whiten_stats_params<T, L>& p, cudaStream_t stream) {
  POLO_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(p.check, 0, sizeof(offsets_check), stream));
  const index_t B = p.layout.num_seqs();
  if (B > 0x7fffffff) return cudaErrorInvalidConfiguration;
  whiten_rows_kernel<T, L><<<static_cast<unsigned>(B > 0 ? B : 1), whiten_threads, 0, stream>>>(p);
  POLO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  whiten_finalize_kernel<T, L><<<1, whiten_threads, 0, stream>>>(p);
  return cudaGetLastError();
}

template <class T, class L>
__global__ void __launch_bounds__(whiten_threads) whiten_apply_kernel(whiten_apply_params<T, L> p) {
  const index_t i = blockIdx.x;
  const index_t len = p.layout.row_len(i);
  if (len <= 0) return;
  const T* xr = p.layout.row_ptr(p.x, i);
  T* o = p.layout.row_ptr(p.out, i);
  const auto* m = p.layout.mask_row(i);
  const index_t per = detail::ceil_div<index_t>(len, gridDim.y);
  const index_t lo = index_t(blockIdx.y) * per, hi = detail::min_of<index_t>(len, lo + per);
  for (index_t t = lo + threadIdx.x; t < hi; t += whiten_threads) {
    const bool ok = m == nullptr || detail::is_valid(m[t]);
    o[t] = static_cast<T>(detail::whiten_token(ok, double(xr[t]), p.w, p.cfg));
  }
}

/// Enqueues whiten_apply_kernel over every row (slices of about 4096 tokens).
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
  whiten_apply_kernel<T, L><<<dim3(static_cast<unsigned>(B), static_cast<unsigned>(slices)), whiten_threads, 0, stream>>>(p);
  return cudaGetLastError();
}

#endif  // __CUDACC__

}  // namespace polo::kernels
