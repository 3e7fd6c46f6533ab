// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
#pragma once
/// \file
/// Kernels of value_loss (layer D of docs/CONTRIBUTING.md): POD params, `__global__` kernels
/// and `launch_*` launchers that enqueue on a stream and return `cudaError_t` (never
/// synchronize, allocate or throw). cuda/polo/value_loss.cuh owns validation, scratch and the
/// one read-back.
///
///     value_loss_rows_kernel      one block per row: packed offsets of the row, its first valid
///                                 position f (the first step's loads issued before, for
///                                 f = 0), then one pass: thread k takes quads of 4
///                                 consecutive positions f + (u·256 + k)·4 + e + 2048·j in
///                                 order (vector loads, 2 quads of each input in flight), sums
///                                 L, (v − R)², #clipped in double; the threads' sums meet in a
///                                 fixed tree (padded == packed bitwise: the assignment depends
///                                 only on the position relative to f); first non-finite valid
///                                 value of each input, valid count n_i
///     (last block)                the block that finishes last (integer counter,
///                                 last_block_done) runs value_loss_finalize_block: counts,
///                                 Neumaier sums over rows in a fixed tree over the row index,
///                                 the first error in the CPU's order, the divisor and
///                                 value_loss_stats, published through detail/async_result.cuh
///     value_loss_grad_kernel      (row, slice) blocks, rows in reverse order (the last rows
///                                 the statistics read are still in L2): grad = coef · w_i ·
///                                 dL/dv, 0 at masked positions, w_i from the divisor on the
///                                 device; writes nothing if the statistics' error is set. A
///                                 programmatic dependent of the statistics kernel: padded rows
///                                 load their first chunk before waiting for it.
///
/// No floating-point atomics: bitwise identical run to run.

#include <cuda_runtime.h>

#include <climits>
#include <cstdint>

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

template <class T, class L>
struct value_loss_params {
  L layout{};
  detail::layout_tensor<L, const T> v{}, vo{}, ret{};
  detail::layout_tensor<L, T> grad{};
  value_loss_config cfg{};
  normalizers norm{};
  value_loss_row* rows = nullptr;      ///< [max(B, 1)] scratch
  offsets_check* check = nullptr;      ///< scratch, zeroed by the launcher
  double* divisor = nullptr;           ///< scratch: the aggregation divisor (finalize -> grad)
  detail::result_target<value_loss_stats> out{};
};

#if defined(__CUDACC__)

POLO_HD_INLINE value_loss_row merge_rows(value_loss_row a, const value_loss_row& b) {
  a.n += b.n;
  a.s.loss += b.s.loss;
  a.s.sq += b.s.sq;
  a.s.clipped += b.s.clipped;
  for (int k = 0; k < 3; ++k)
    if (b.bad[k] < a.bad[k]) a.bad[k] = b.bad[k];
  return a;
}

/// Row i's sums, count and first non-finite values (the whole block) -> p.rows[i].
template <class T, class L>
__device__ void value_loss_row_stats(const value_loss_params<T, L>& p, index_t i,
                                     detail::shared_array<value_loss_row, value_loss_threads>& sh, int* sh_first) {
  const int tid = threadIdx.x;
  const index_t len = p.layout.row_len(i);
  const T* vr = p.layout.row_ptr(p.v, i);
  const T* vor = p.layout.row_ptr(p.vo, i);
  const T* rr = p.layout.row_ptr(p.ret, i);
  const auto* m = p.layout.mask_row(i);
  const bool clipping = p.cfg.clip != value_clip::none;
  const T cr = T(p.cfg.clip_range);
  using M = typename L::mask_type;
  constexpr int Q = value_loss_quad, U = value_loss_stats_unroll;
  constexpr index_t step = index_t(value_loss_threads) * Q * U;
  T v[U][Q], vo[U][Q], rt[U][Q];
  M mk[U][Q];
  auto load = [&](index_t c) {
    const bool vv = detail::is_aligned(vr + c, sizeof(T) * Q), vvo = detail::is_aligned(vor + c, sizeof(T) * Q),
               vrt = detail::is_aligned(rr + c, sizeof(T) * Q);
    const bool vm = m != nullptr && detail::is_aligned(m + c, sizeof(M) * Q);
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const index_t pos = c + (index_t(u) * value_loss_threads + tid) * Q;
      // masked positions are loaded too: the loads overlap the mask's
      load_quad<Q>(vr, pos, len, vv, v[u]);
      load_quad<Q>(rr, pos, len, vrt, rt[u]);
      if (clipping) load_quad<Q>(vor, pos, len, vvo, vo[u]);
      if (m != nullptr) load_quad<Q>(m, pos, len, vm, mk[u]);
    }
  };
  if (len > 0) load(0);  // speculative: most rows start with a valid token (f == 0)
  const index_t f = m == nullptr ? 0 : row_first_valid<value_loss_threads>(
                                           len, [&](index_t t) { return detail::is_valid(m[t]); }, sh_first);
  const long long flat0 = static_cast<long long>(detail::flat_index(p.layout, i, 0));
  value_loss_row r;
  for (index_t c = f; c < len; c += step) {
    if (c != 0) load(c);
#pragma unroll
    for (int u = 0; u < U; ++u) {
#pragma unroll
      for (int e = 0; e < Q; ++e) {
        const index_t pos = c + (index_t(u) * value_loss_threads + tid) * Q + e;
        if (pos >= len || (m != nullptr && !detail::is_valid(mk[u][e]))) continue;
        const T old = clipping ? vo[u][e] : v[u][e];
        const long long flat = flat0 + static_cast<long long>(pos);
        if (!detail::is_finite(v[u][e]) && r.bad[0] == LLONG_MAX) r.bad[0] = flat;
        if (clipping && !detail::is_finite(old) && r.bad[1] == LLONG_MAX) r.bad[1] = flat;
        if (!detail::is_finite(rt[u][e]) && r.bad[2] == LLONG_MAX) r.bad[2] = flat;
        const detail::value_term term = detail::value_loss_term<T>(v[u][e], old, rt[u][e], p.cfg.clip, cr);
        r.s.loss += term.loss;
        r.s.sq += term.sq;
        r.s.clipped += term.clipped ? 1.0 : 0.0;
        ++r.n;
      }
    }
  }
  allow_dependent_launch();  // this block's loads are done: the gradient kernel may be scheduled
  const value_loss_row total = block_tree_fold<value_loss_threads>(
      r, [](const value_loss_row& a, const value_loss_row& b) { return merge_rows(a, b); }, sh);
  if (tid == 0) p.rows[i] = total;
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

/// Counts, Neumaier sums over rows in a fixed tree, the first error in the CPU's order, the
/// divisor and value_loss_stats, published (one block, after every row).
template <class T, class L>
__device__ void value_loss_finalize_block(const value_loss_params<T, L>& p,
                                          detail::shared_array<value_loss_fold, value_loss_threads>& sh) {
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
    cuda::status err = resolve_offsets(p.layout, read_offsets_check(p.check), detail::entry_value_loss);
    if (err.code == detail::status_ok && f.first_bad.any_bad()) {
      for (int k = 0; k < 3; ++k) {
        if (f.first_bad.bad[k] != LLONG_MAX) {
          err.code = detail::status_nonfinite_arg;
          err.a = detail::arg_values + k;
          err.index = f.first_bad.bad[k];
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
}

/// One block per row; the last block to finish folds the rows (value_loss_finalize_block).
template <class T, class L>
__global__ void __launch_bounds__(value_loss_threads, 4) value_loss_rows_kernel(value_loss_params<T, L> p) {
  __shared__ union {
    detail::shared_array<value_loss_row, value_loss_threads> row;
    detail::shared_array<value_loss_fold, value_loss_threads> fold;
  } sh;
  __shared__ int sh_first[value_loss_threads / 32];
  __shared__ bool sh_ok;
  const index_t i = blockIdx.x;
  const int tid = threadIdx.x;
  if (tid == 0) sh_ok = check_row_offsets(p.layout, i, p.check);
  __syncthreads();
  if (sh_ok) value_loss_row_stats(p, i, sh.row, sh_first);  // block-uniform
  else if (tid == 0 && i < p.layout.num_seqs()) p.rows[i] = value_loss_row{};
  if (last_block_done(&p.check->blocks_done, &sh_ok)) value_loss_finalize_block(p, sh.fold);
}

/// Enqueues the statistics and checks: zeroes the offsets check (and block counter), one
/// block per row (the last one to finish folds the rows).
template <class T, class L>
cudaError_t launch_value_loss_stats(const value_loss_params<T, L>& p, cudaStream_t stream) {
  POLO_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(p.check, 0, sizeof(offsets_check), stream));
  const index_t B = p.layout.num_seqs();
  if (B > 0x7fffffff) return cudaErrorInvalidConfiguration;
  value_loss_rows_kernel<T, L><<<static_cast<unsigned>(B > 0 ? B : 1), value_loss_threads, 0, stream>>>(p);
  return cudaGetLastError();
}

template <class T, class L>
__global__ void __launch_bounds__(value_loss_threads) value_loss_grad_kernel(value_loss_params<T, L> p) {
  // Launched as a programmatic dependent of the statistics kernel: for padded layouts the first
  // chunk of the inputs is loaded before grid_dependency_wait (inputs, never written by the
  // statistics); packed rows are only touched after it (their offsets are checked there).
  constexpr int U = value_loss_unroll;
  if constexpr (L::is_packed) grid_dependency_wait();
  // Rows in reverse: the statistics pass read the last rows last, so they are still in L2.
  const index_t i = index_t(gridDim.x) - 1 - index_t(blockIdx.x);
  if constexpr (L::is_packed) {
    if (p.out.slot->error.code != 0) return;  // a check failed: write nothing (offsets included)
  }
  const index_t len = p.layout.row_len(i);
  const T* vr = p.layout.row_ptr(p.v, i);
  const T* vor = p.layout.row_ptr(p.vo, i);
  const T* rr = p.layout.row_ptr(p.ret, i);
  T* g = p.layout.row_ptr(p.grad, i);
  const auto* m = p.layout.mask_row(i);
  const bool clipping = p.cfg.clip != value_clip::none;
  const T cr = T(p.cfg.clip_range);
  const index_t per = detail::ceil_div<index_t>(len > 0 ? len : 0, gridDim.y);
  const index_t lo = index_t(blockIdx.y) * per, hi = detail::min_of<index_t>(len, lo + per);
  T v[U], vo[U], rt[U];
  bool ok[U];
  auto load = [&](index_t c) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const index_t t = c + index_t(u) * value_loss_threads;
      const bool in = t < hi;
      v[u] = in ? vr[t] : T(0);
      rt[u] = in ? rr[t] : T(0);
      vo[u] = in && clipping ? vor[t] : v[u];
      ok[u] = in && (m == nullptr || detail::is_valid(m[t]));
    }
  };
  index_t c = lo + threadIdx.x;
  if (c < hi) load(c);
  if constexpr (!L::is_packed) {
    grid_dependency_wait();
    if (p.out.slot->error.code != 0) return;  // a check failed: write nothing
  }
  const double w = p.cfg.coef * detail::aggregation_weight(p.cfg.agg, p.norm.scale, *p.divisor, p.rows[i].n);
  for (bool first = true; c < hi; c += index_t(value_loss_threads) * U, first = false) {
    if (!first) load(c);
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const index_t t = c + index_t(u) * value_loss_threads;
      if (t >= hi) continue;
      if (!ok[u]) {
        g[t] = T(0);
        continue;
      }
      const detail::value_term term = detail::value_loss_term<T>(v[u], vo[u], rt[u], p.cfg.clip, cr);
      g[t] = T(w * term.grad);
    }
  }
}

/// Enqueues value_loss_grad_kernel over every row (slices of about 4096 tokens), as a
/// programmatic dependent of the statistics kernel (row_reduce.cuh: launch_dependent).
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
  return launch_dependent(value_loss_grad_kernel<T, L>, dim3(static_cast<unsigned>(B), static_cast<unsigned>(slices)),
                          dim3(value_loss_threads), stream, p);
}

#endif  // __CUDACC__

}  // namespace polo::kernels
