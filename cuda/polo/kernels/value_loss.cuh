// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
#pragma once
/// \file
/// Kernels of value_loss (layer D of docs/CONTRIBUTING.md): POD params, `__global__` kernels
/// and `launch_*` launchers that enqueue on a stream and return `cudaError_t` (never
/// synchronize, allocate or throw). cuda/polo/value_loss.cuh owns validation, scratch and the
/// one read-back.
///
///     value_loss_rows_kernel      one block per row: packed offsets of the row, the first
///                                 non-finite valid value of each input, the valid count n_i,
///                                 and Σ L, Σ (v − R)², #clipped over the row in rank order
///                                 (detail/row_reduce.cuh: padded == packed bitwise)
///     value_loss_finalize_kernel  one block: counts, Neumaier sums over rows in a fixed
///                                 tree, the first error in the CPU's order -> status
///     value_loss_grad_kernel      (row, slice) blocks: grad = coef · w_i · dL/dv, 0 at masked
///                                 positions (launched once the host has the divisor)
///
/// No floating-point atomics: bitwise identical run to run.

#include <cuda_runtime.h>

#include <climits>
#include <cstdint>

#include "polo/aggregation.hpp"
#include "polo/core/backend.hpp"
#include "polo/core/layout.hpp"
#include "polo/core/math.hpp"
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

/// What the host reads back.
struct value_loss_status {
  index_t tokens = 0, sequences = 0;
  detail::neumaier_sum num{}, clipped{}, sq{};
  int bad_arg = -1;  ///< -1: none; else 0 values, 1 old_values, 2 returns
  long long bad = 0;
  double bad_value = 0.0;
  cuda::status offsets{};
};

template <class T, class L>
struct value_loss_params {
  L layout{};
  detail::layout_tensor<L, const T> v{}, vo{}, ret{};
  detail::layout_tensor<L, T> grad{};
  value_loss_config cfg{};
  double divisor = 0.0;  ///< grad kernel only: the aggregation divisor
  double scale = 1.0;    ///< grad kernel only: normalizers::scale
  value_loss_row* rows = nullptr;      ///< [max(B, 1)] scratch
  offsets_check* check = nullptr;      ///< scratch, zeroed by the launcher
  value_loss_status* status = nullptr; ///< out
};

#if defined(__CUDACC__)

template <class T, class L>
__global__ void __launch_bounds__(value_loss_threads) value_loss_rows_kernel(value_loss_params<T, L> p) {
  __shared__ rank_sum_storage<value_loss_threads, value_loss_sums> sm;
  __shared__ long long sh_bad[3];
  __shared__ bool sh_ok;
  const index_t i = blockIdx.x;
  if (threadIdx.x == 0) {
    sh_bad[0] = sh_bad[1] = sh_bad[2] = LLONG_MAX;
    sh_ok = check_row_offsets(p.layout, i, p.check);
  }
  __syncthreads();
  if (!sh_ok) {  // block-uniform
    if (threadIdx.x == 0 && i < p.layout.num_seqs()) p.rows[i] = value_loss_row{};
    return;
  }
  const index_t len = p.layout.row_len(i);
  const T* vr = p.layout.row_ptr(p.v, i);
  const T* vor = p.layout.row_ptr(p.vo, i);
  const T* rr = p.layout.row_ptr(p.ret, i);
  const auto* m = p.layout.mask_row(i);
  const bool clipping = p.cfg.clip != value_clip::none;
  const T cr = T(p.cfg.clip_range);
  index_t n = 0;
  const value_loss_sums s = rank_ordered_sum<value_loss_threads>(
      len, [&](index_t t) { return m == nullptr || detail::is_valid(m[t]); },
      [&](index_t t) {
        const T v = vr[t], r = rr[t];
        const T vo = clipping ? vor[t] : v;
        const long long flat = static_cast<long long>(detail::flat_index(p.layout, i, t));
        if (!detail::is_finite(v)) atomicMin(&sh_bad[0], flat);
        if (clipping && !detail::is_finite(vo)) atomicMin(&sh_bad[1], flat);
        if (!detail::is_finite(r)) atomicMin(&sh_bad[2], flat);
        const detail::value_term term = detail::value_loss_term<T>(v, vo, r, p.cfg.clip, cr);
        return value_loss_sums{term.loss, term.sq, term.clipped ? 1.0 : 0.0};
      },
      [](const value_loss_sums& a, const value_loss_sums& b) {
        return value_loss_sums{a.loss + b.loss, a.sq + b.sq, a.clipped + b.clipped};
      },
      value_loss_sums{}, sm, n);
  __syncthreads();
  if (threadIdx.x == 0) {
    value_loss_row r;
    r.n = n;
    r.s = s;
    for (int k = 0; k < 3; ++k) r.bad[k] = sh_bad[k];
    p.rows[i] = r;
  }
}

/// Running fold of rows: counts, Neumaier sums, and the first row with an error.
struct value_loss_fold {
  index_t tokens = 0, sequences = 0;
  detail::neumaier_sum num{}, clipped{}, sq{};
  value_loss_row first_bad{};
};

POLO_HD_INLINE detail::neumaier_sum merge_neumaier(detail::neumaier_sum a, const detail::neumaier_sum& b) {
  a.add(b.sum);
  a.comp += b.comp;
  return a;
}

template <class T, class L>
__global__ void __launch_bounds__(value_loss_threads) value_loss_finalize_kernel(value_loss_params<T, L> p) {
  __shared__ detail::shared_array<value_loss_fold, value_loss_threads> sh;
  const index_t B = p.layout.num_seqs();
  const bool seq_mean = p.cfg.agg == aggregation::seq_mean_token_mean;
  const value_loss_fold f = fixed_tree_fold<value_loss_threads>(
      B,
      [&](index_t q) {
        const value_loss_row& r = p.rows[q];
        value_loss_fold o;
        o.tokens = r.n;
        o.sequences = r.n > 0 ? 1 : 0;
        if (r.n > 0) {
          o.num.add(seq_mean ? r.s.loss / double(r.n) : r.s.loss);
          o.clipped.add(r.s.clipped);
          o.sq.add(r.s.sq);
        }
        o.first_bad = r;
        return o;
      },
      [](value_loss_fold a, const value_loss_fold& b) {
        a.tokens += b.tokens;
        a.sequences += b.sequences;
        a.num = merge_neumaier(a.num, b.num);
        a.clipped = merge_neumaier(a.clipped, b.clipped);
        a.sq = merge_neumaier(a.sq, b.sq);
        if (!a.first_bad.any_bad()) a.first_bad = b.first_bad;
        return a;
      },
      value_loss_fold{}, sh);
  if (threadIdx.x == 0) {
    value_loss_status s;
    s.offsets = resolve_offsets(p.layout, *p.check, detail::entry_value_loss);
    s.tokens = f.tokens;
    s.sequences = f.sequences;
    s.num = f.num;
    s.clipped = f.clipped;
    s.sq = f.sq;
    if (s.offsets.code == detail::status_ok && f.first_bad.any_bad()) {
      for (int k = 0; k < 3; ++k) {
        if (f.first_bad.bad[k] != LLONG_MAX) {
          s.bad_arg = k;
          s.bad = f.first_bad.bad[k];
          const auto& x = k == 0 ? p.v : (k == 1 ? p.vo : p.ret);
          s.bad_value = double(at_flat(p.layout, x, s.bad));
          break;
        }
      }
    }
    *p.status = s;
  }
}

/// Enqueues the statistics and checks: zeroes the offsets check, one block per row, one
/// finalizing block.
template <class T, class L>
cudaError_t launch_value_loss_stats(const value_loss_params<T, L>& p, cudaStream_t stream) {
  POLO_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(p.check, 0, sizeof(offsets_check), stream));
  const index_t B = p.layout.num_seqs();
  if (B > 0x7fffffff) return cudaErrorInvalidConfiguration;
  value_loss_rows_kernel<T, L><<<static_cast<unsigned>(B > 0 ? B : 1), value_loss_threads, 0, stream>>>(p);
  POLO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  value_loss_finalize_kernel<T, L><<<1, value_loss_threads, 0, stream>>>(p);
  return cudaGetLastError();
}

template <class T, class L>
__global__ void __launch_bounds__(value_loss_threads) value_loss_grad_kernel(value_loss_params<T, L> p) {
  const index_t i = blockIdx.x;
  const index_t len = p.layout.row_len(i);
  if (len <= 0) return;
  const T* vr = p.layout.row_ptr(p.v, i);
  const T* vor = p.layout.row_ptr(p.vo, i);
  const T* rr = p.layout.row_ptr(p.ret, i);
  T* g = p.layout.row_ptr(p.grad, i);
  const auto* m = p.layout.mask_row(i);
  const bool clipping = p.cfg.clip != value_clip::none;
  const T cr = T(p.cfg.clip_range);
  const double w = p.cfg.coef * detail::aggregation_weight(p.cfg.agg, p.scale, p.divisor, p.rows[i].n);
  const index_t per = detail::ceil_div<index_t>(len, gridDim.y);
  const index_t lo = index_t(blockIdx.y) * per, hi = detail::min_of<index_t>(len, lo + per);
  for (index_t t = lo + threadIdx.x; t < hi; t += value_loss_threads) {
    if (m != nullptr && !detail::is_valid(m[t])) {
      g[t] = T(0);
      continue;
    }
    const T v = vr[t];
    const detail::value_term term = detail::value_loss_term<T>(v, clipping ? vor[t] : v, rr[t], p.cfg.clip, cr);
    g[t] = T(w * term.grad);
  }
}

/// Enqueues value_loss_grad_kernel over every row (slices of about 4096 tokens).
template <class T, class L>
cudaError_t launch_value_loss_grad(const value_loss_params<T, L>& p, cudaStream_t stream) {
  const index_t B = p.layout.num_seqs();
  if (B <= 0) return cudaSuccess;
  if (B > 0x7fffffff) return cudaErrorInvalidConfiguration;
  index_t avg = 0;
  if constexpr (L::is_packed) avg = detail::ceil_div<index_t>(p.layout.tokens, B);
  else avg = p.layout.seq_len;
  index_t slices = detail::ceil_div<index_t>(avg > 0 ? avg : 1, 4096);
  if (slices > 65535) slices = 65535;
  value_loss_grad_kernel<T, L><<<dim3(static_cast<unsigned>(B), static_cast<unsigned>(slices)), value_loss_threads, 0, stream>>>(p);
  return cudaGetLastError();
}

#endif  // __CUDACC__

}  // namespace polo::kernels
