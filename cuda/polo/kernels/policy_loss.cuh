// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
#pragma once
/// \file
/// Kernels of the policy loss (clipped objective + KL + aggregation): POD params, `__global__`
/// kernels and `launch_*` launchers (never synchronize, allocate or throw). The caller
/// (cuda/polo/policy_loss.cuh) owns validation, scratch and the read-back.
///
/// Rows are cut into chunks of S = NT*K tokens (K consecutive tokens per thread, vector loads);
/// every per-token formula is the backend-neutral one (`detail::ratio_from_log_ratio`,
/// `detail::surrogate`, `detail::kl_term`, `detail::times_sensitivity`,
/// `detail::approx_kl_k3`, `detail::aggregation_weight`), evaluated in double.
///
///     count_kernel   per chunk: valid tokens (the mask only). With a sequence-level ratio or
///                    KL it also reads the inputs: non-finite checks and the per-chunk sums of
///                    logp - logp_old and logp - logp_ref
///     plan_kernel    one block: n_i, the normalizers (N_tok, N_seq), each row's weights and
///                    sequence-level ratio and KL term
///     main_kernel    per chunk, one pass over every input: the loss terms, dL/dlogp (written
///                    straight to the output, or to scratch when a throw must still be possible
///                    or a sequence-level total is still to come), and every statistic, reduced
///                    in a fixed tree to one partial per chunk
///     final_kernel   one block: rows and chunks in a fixed order -> loss, parts, statistics,
///                    the first error, and the per-row gradient totals of GSPO's through_mean
///     finish_kernel  (only when the gradient went to scratch) the gradient to the output
///
/// No floating-point atomics: the one atomic is an integer min on the error key, so results are
/// bitwise identical run to run. Token level, float, uint8 mask: the mask is read twice (count,
/// main), the four inputs once, the gradient written once (21 + 1 bytes per token); under
/// token_nonfinite_policy::error the gradient goes through scratch (+8 bytes per token) so that
/// a non-finite input can still throw with nothing written.

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "polo/aggregation.hpp"
#include "polo/core/backend.hpp"
#include "polo/core/config.hpp"
#include "polo/core/layout.hpp"
#include "polo/core/math.hpp"
#include "polo/core/view.hpp"
#include "polo/detail/launch.cuh"
#include "polo/kernels/gae.cuh"  // chunk_table, locate_chunk, packed offsets and chunk table
#include "polo/kernels/scan.cuh"
#include "polo/kl.hpp"
#include "polo/policy_loss.hpp"

/// Tuning knobs (compile-time): tokens per thread of the policy-loss kernels, and the minimum
/// resident blocks per multiprocessor the main kernel is compiled for (caps its registers).
#ifndef POLO_CUDA_PL_ITEMS
#define POLO_CUDA_PL_ITEMS 8
#endif
#ifndef POLO_CUDA_PL_MIN_BLOCKS
#define POLO_CUDA_PL_MIN_BLOCKS 2
#endif

namespace polo::kernels {

/// Converts a stored log-prob or advantage to double (float, double, and through float for
/// __nv_bfloat16 / __half, whose conversion operators nvcc provides).
template <class T>
__device__ __forceinline__ double to_double(T x) {
  if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>)
    return double(x);
  else
    return double(static_cast<float>(x));
}
template <class T>
__device__ __forceinline__ bool finite_of(T x) {
  if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>)
    return detail::is_finite(x);
  else
    return detail::is_finite(static_cast<float>(x));
}

/// Per-chunk result of the count (and sequence-level prep) pass.
struct pl_chunk_prep {
  long long count = 0;      ///< valid tokens
  long long nonfinite = 0;  ///< valid tokens with a non-finite input (prep only)
  double slr = 0.0;         ///< sum of logp - logp_old over valid tokens (prep only)
  double sd = 0.0;          ///< sum of logp - logp_ref over valid tokens (prep, sequence KL)
};

/// Per-row plan (plan_kernel).
struct pl_row {
  double w = 0.0, wk = 0.0, seq_kl_d = 0.0;
  double ratio = 1.0, d_log_ratio = 1.0;  ///< sequence ratio (GSPO)
  double kl_value = 0.0;                  ///< sequence KL term value
  long long n = 0;
  int bad = 0, ratio_clamped = 0, kl_clamped = 0, pad_ = 0;
};

/// Normalizers of the call (plan_kernel).
struct pl_totals {
  long long tokens = 0, sequences = 0;
  double div = 0.0, div_tok = 0.0, div_seq = 0.0;
};

/// Statistics of one chunk (main_kernel), merged in a fixed tree.
struct pl_stats {
  long long contrib = 0, up = 0, low = 0, dual = 0, delta = 0, clamped = 0, kl_count = 0, kl_clamped = 0;
  long long nonfinite = 0, skipped = 0;
  double rsum = 0.0, rmin = unbounded, rmax = -unbounded, k1 = 0.0, k3 = 0.0, klsum = 0.0;
  double s_pol = 0.0, s_kl = 0.0, sens = 0.0;  ///< row sums of this chunk
};
struct pl_stats_op {
  __device__ __forceinline__ pl_stats operator()(pl_stats a, const pl_stats& b) const {
    a.contrib += b.contrib;
    a.up += b.up;
    a.low += b.low;
    a.dual += b.dual;
    a.delta += b.delta;
    a.clamped += b.clamped;
    a.kl_count += b.kl_count;
    a.kl_clamped += b.kl_clamped;
    a.nonfinite += b.nonfinite;
    a.skipped += b.skipped;
    a.rsum += b.rsum;
    a.rmin = b.rmin < a.rmin ? b.rmin : a.rmin;
    a.rmax = b.rmax > a.rmax ? b.rmax : a.rmax;
    a.k1 += b.k1;
    a.k3 += b.k3;
    a.klsum += b.klsum;
    a.s_pol += b.s_pol;
    a.s_kl += b.s_kl;
    a.sens += b.sens;
    return a;
  }
};

/// What the final pass hands back to the host.
struct pl_result {
  double loss_pol = 0.0, loss_kl = 0.0, parts_pol = 0.0, parts_kl = 0.0;
  long long tokens = 0, sequences = 0, masked = 0, skipped = 0;
  pl_stats st{};
  unsigned long long err_key = no_error_key;
  long long err_flat = 0;
  double err_value = 0.0;
};

/// Error key of the policy loss: row, then position, then argument (logp, logp_old, logp_ref,
/// advantages), as the CPU backend's token-by-token check finds them.
POLO_HD_INLINE unsigned long long pl_error_key(index_t row, index_t t, int kind) {
  return (static_cast<unsigned long long>(row) << 34) | (static_cast<unsigned long long>(t) << 2) |
         static_cast<unsigned long long>(kind);
}

template <class LP, class T, class L>
struct pl_params {
  L layout{};
  detail::layout_tensor<L, const LP> lp{}, lo{}, lr{};  ///< lr null without a KL term
  detail::layout_tensor<L, const T> adv{};
  detail::layout_tensor<L, T> grad{};
  policy_loss_config cfg{};
  normalizers norm{};
  bool read_ref = false, use_kl = false, seq_ratio = false, seq_kl = false, skip = false;
  bool direct = true;          ///< gradient straight to `grad`; otherwise to gbuf
  bool gbuf_double = false;    ///< gbuf holds double (GSPO through_mean), else T
  void* gbuf = nullptr;        ///< [flat tokens] scratch gradient
  chunk_table chunks{};
  pl_chunk_prep* prep = nullptr;  ///< [bound]
  pl_stats* cstats = nullptr;     ///< [bound]
  pl_row* rows = nullptr;         ///< [B]
  double* total = nullptr;        ///< [B] GSPO through_mean gradient totals
  pl_totals* totals = nullptr;    ///< [1]
  unsigned long long* err = nullptr;
  pl_result* result = nullptr;
};

/// Flat position of token (i, t) in the scratch gradient (i*T + t, or offsets[i] + t).
template <class L>
__device__ __forceinline__ index_t pl_flat(const L& layout, index_t i, index_t t) {
  return detail::flat_index(layout, i, t);
}

template <int NT>
struct pl_smem {
  alignas(16) unsigned char raw[(NT / 32) * sizeof(pl_stats)];
  template <class S>
  __device__ __forceinline__ S* as() {
    return reinterpret_cast<S*>(raw);
  }
};

// ---- count / prep ------------------------------------------------------------------------------

template <int NT, int K, bool HasMask, bool Prep, class LP, class T, class L>
__global__ void __launch_bounds__(NT) pl_count_kernel(pl_params<LP, T, L> p) {
  __shared__ pl_smem<NT> sm;
  using Mask = typename L::mask_type;
  const index_t c = blockIdx.x;
  index_t i = 0, j = 0;
  if (!locate_chunk(p.layout, p.chunks, c, i, j)) return;
  const index_t len = p.layout.row_len(i);
  const index_t t0 = j * p.chunks.S;
  const index_t n = len - t0 < p.chunks.S ? len - t0 : p.chunks.S;
  const index_t k0 = index_t(threadIdx.x) * K;
  bool valid[K];
  if constexpr (HasMask) {
    Mask m[K];
    load_blocked<K>(p.layout.mask_row(i) + t0, k0, n, m, Mask(0));
#pragma unroll
    for (int k = 0; k < K; ++k) valid[k] = k0 + k < n && detail::is_valid(m[k]);
  } else {
#pragma unroll
    for (int k = 0; k < K; ++k) valid[k] = k0 + k < n;
  }
  pl_chunk_prep mine{};
#pragma unroll
  for (int k = 0; k < K; ++k) mine.count += valid[k] ? 1 : 0;
  if constexpr (Prep) {
    LP x[K], xo[K], xr[K];
    T a[K];
    load_blocked<K>(p.layout.row_ptr(p.lp, i) + t0, k0, n, x, LP(0.0f));
    load_blocked<K>(p.layout.row_ptr(p.lo, i) + t0, k0, n, xo, LP(0.0f));
    if (p.read_ref) load_blocked<K>(p.layout.row_ptr(p.lr, i) + t0, k0, n, xr, LP(0.0f));
    load_blocked<K>(p.layout.row_ptr(p.adv, i) + t0, k0, n, a, T(0));
    unsigned long long key = no_error_key;
#pragma unroll
    for (int k = K - 1; k >= 0; --k) {
      if (!valid[k]) continue;
      int bad = -1;
      if (!finite_of(x[k])) bad = 0;
      else if (!finite_of(xo[k])) bad = 1;
      else if (p.read_ref && !finite_of(xr[k])) bad = 2;
      else if (!detail::is_finite(a[k])) bad = 3;
      if (bad >= 0) {
        key = pl_error_key(i, t0 + k0 + k, bad);
        ++mine.nonfinite;
        continue;
      }
      mine.slr += to_double(x[k]) - to_double(xo[k]);
      if (p.seq_kl) mine.sd += to_double(x[k]) - to_double(xr[k]);
    }
    if (!p.skip) {
      key = block_reduce_fixed<NT>(key, [](unsigned long long u, unsigned long long v) { return u < v ? u : v; },
                                   sm.template as<unsigned long long>());
      if (threadIdx.x == 0 && key != no_error_key) atomicMin(p.err, key);
    }
  }
  mine = block_reduce_fixed<NT>(
      mine,
      [](pl_chunk_prep u, const pl_chunk_prep& v) {
        u.count += v.count;
        u.nonfinite += v.nonfinite;
        u.slr += v.slr;
        u.sd += v.sd;
        return u;
      },
      sm.template as<pl_chunk_prep>());
  if (threadIdx.x == 0) p.prep[c] = mine;
}

// ---- plan --------------------------------------------------------------------------------------

template <int NT, class LP, class T, class L>
__global__ void __launch_bounds__(NT) pl_plan_kernel(pl_params<LP, T, L> p) {
  __shared__ long long s_a[NT / 32], s_b[NT / 32];
  const index_t B = p.chunks.rows;
  const index_t per = (B + NT - 1) / NT;
  const index_t r0 = threadIdx.x * per, r1 = (threadIdx.x + 1) * per < B ? (threadIdx.x + 1) * per : B;
  long long tok = 0, seq = 0;
  for (index_t i = r0; i < r1; ++i) {
    const index_t c0 = chunk_begin_of_row(p.layout, p.chunks, i), c1 = chunk_end_of_row(p.layout, p.chunks, i);
    long long n = 0, bad = 0;
    for (index_t c = c0; c < c1; ++c) {
      n += p.prep[c].count;
      bad += p.prep[c].nonfinite;
    }
    p.rows[i].n = n;
    p.rows[i].bad = bad > 0 ? 1 : 0;
    tok += n;
    seq += n > 0 ? 1 : 0;
  }
  auto add = [](long long u, long long v) { return u + v; };
  tok = block_reduce_fixed<NT>(tok, add, s_a);
  seq = block_reduce_fixed<NT>(seq, add, s_b);
  __shared__ pl_totals s_t;
  const policy_loss_config& c = p.cfg;
  const aggregation kl_mode = c.kl_agg == kl_aggregation::token_mean ? aggregation::token_mean : c.agg;
  if (threadIdx.x == 0) {
    pl_totals t;
    t.tokens = tok;
    t.sequences = seq;
    t.div = detail::aggregation_divisor(c.agg, p.norm, tok, seq);
    t.div_tok = detail::aggregation_divisor(aggregation::token_mean, p.norm, tok, seq);
    t.div_seq = detail::aggregation_divisor(aggregation::seq_mean_token_sum, p.norm, tok, seq);
    s_t = t;
    *p.totals = t;
  }
  __syncthreads();
  const pl_totals t = s_t;
  for (index_t i = r0; i < r1; ++i) {
    pl_row row = p.rows[i];
    const long long ni = row.n;
    row.w = detail::aggregation_weight(c.agg, p.norm.scale, t.div, ni);
    row.wk = detail::aggregation_weight(kl_mode, p.norm.scale, kl_mode == c.agg ? t.div : t.div_tok, ni);
    if (p.seq_ratio || p.seq_kl) {
      index_t c0 = chunk_begin_of_row(p.layout, p.chunks, i), c1 = chunk_end_of_row(p.layout, p.chunks, i);
      double slr = 0.0, sd = 0.0;
      for (index_t cc = c0; cc < c1; ++cc) {
        slr += p.prep[cc].slr;
        sd += p.prep[cc].sd;
      }
      const double nd = ni > 0 ? double(ni) : 1.0;
      if (p.seq_ratio) {
        const detail::ratio_point rp = detail::ratio_from_log_ratio(c, slr / nd);
        row.ratio = rp.ratio;
        row.d_log_ratio = rp.d_log_ratio;
        row.ratio_clamped = rp.clamped ? 1 : 0;
      }
      if (p.seq_kl && ni > 0) {
        const double D = c.kl.level == kl_level::sequence_mean ? sd / nd : sd;
        const detail::kl_point kp = detail::kl_term(c.kl, D, 1.0);
        const double wseq = detail::aggregation_weight(aggregation::seq_mean_token_sum, p.norm.scale, t.div_seq, ni);
        row.seq_kl_d = c.kl_coef * wseq * kp.grad * (c.kl.level == kl_level::sequence_mean ? 1.0 / nd : 1.0);
        row.kl_value = kp.value;
        row.kl_clamped = kp.clamped ? 1 : 0;
      }
    }
    p.rows[i] = row;
  }
}

// ---- main pass -----------------------------------------------------------------------------------

template <int NT, int K, bool HasMask, bool ReadRef, class G, class LP, class T, class L>
__global__ void __launch_bounds__(NT, POLO_CUDA_PL_MIN_BLOCKS) pl_main_kernel(pl_params<LP, T, L> p) {
  __shared__ pl_smem<NT> sm;
  using Mask = typename L::mask_type;
  const index_t c = blockIdx.x;
  index_t i = 0, j = 0;
  if (!locate_chunk(p.layout, p.chunks, c, i, j)) return;
  const index_t len = p.layout.row_len(i);
  const index_t t0 = j * p.chunks.S;
  const index_t n = len - t0 < p.chunks.S ? len - t0 : p.chunks.S;
  const index_t k0 = index_t(threadIdx.x) * K;
  const policy_loss_config& cfg = p.cfg;
  bool valid[K];
  if constexpr (HasMask) {
    Mask m[K];
    load_blocked<K>(p.layout.mask_row(i) + t0, k0, n, m, Mask(0));
#pragma unroll
    for (int k = 0; k < K; ++k) valid[k] = k0 + k < n && detail::is_valid(m[k]);
  } else {
#pragma unroll
    for (int k = 0; k < K; ++k) valid[k] = k0 + k < n;
  }
  LP x[K], xo[K], xr[K];
  T a[K];
  load_blocked<K>(p.layout.row_ptr(p.lp, i) + t0, k0, n, x, LP(0.0f));
  load_blocked<K>(p.layout.row_ptr(p.lo, i) + t0, k0, n, xo, LP(0.0f));
  if constexpr (ReadRef) load_blocked<K>(p.layout.row_ptr(p.lr, i) + t0, k0, n, xr, LP(0.0f));
  load_blocked<K>(p.layout.row_ptr(p.adv, i) + t0, k0, n, a, T(0));
  const pl_row row = p.rows[i];
  const bool seq_mode = p.seq_ratio || p.seq_kl;
  const bool row_skipped = seq_mode && row.bad && p.skip;
  const double beta = cfg.kl_coef;
  pl_stats st{};
  unsigned long long key = no_error_key;
  G g[K];
#pragma unroll
  for (int k = 0; k < K; ++k) {
    g[k] = G(0);
    if (!valid[k] || row_skipped) continue;
    if (!seq_mode) {
      int bad = -1;
      if (!finite_of(x[k])) bad = 0;
      else if (!finite_of(xo[k])) bad = 1;
      else if (ReadRef && !finite_of(xr[k])) bad = 2;
      else if (!detail::is_finite(a[k])) bad = 3;
      if (bad >= 0) {
        if (key == no_error_key) key = pl_error_key(i, t0 + k0 + k, bad);
        ++st.nonfinite;
        ++st.skipped;
        continue;
      }
    }
    const double xd = to_double(x[k]), xod = to_double(xo[k]), A = double(a[k]);
    const double tok_lr = xd - xod;
    const detail::ratio_point tr = detail::ratio_from_log_ratio(cfg, tok_lr);
    detail::ratio_point rp = tr;
    if (p.seq_ratio) {
      rp.ratio = row.ratio;
      rp.d_log_ratio = row.d_log_ratio;
      rp.clamped = row.ratio_clamped != 0;
    }
    const detail::surrogate_point sp = detail::surrogate(cfg, rp.ratio, A, xd);
    st.s_pol += sp.loss;
    double dlogp = row.w * sp.d_logp;
    double sens = row.w * sp.d_ratio;
    if (p.use_kl && !p.seq_kl) {
      const detail::kl_point kp = detail::kl_term(cfg.kl, xd - to_double(xr[k]), rp.ratio);
      st.s_kl += kp.value;
      dlogp += beta * row.wk * kp.grad;
      sens += beta * row.wk * kp.d_ratio;
      st.klsum += kp.value;
      ++st.kl_count;
      st.kl_clamped += kp.clamped ? 1 : 0;
    }
    if (p.seq_kl) dlogp += row.seq_kl_d;
    if (p.seq_ratio) {
      if (cfg.sequence_gradient == sequence_ratio_gradient::through_mean) {
        g[k] = G(dlogp);
        st.sens += sens;
      } else {
        g[k] = G(dlogp + detail::times_sensitivity(sens, rp.d_log_ratio));
      }
    } else {
      g[k] = G(dlogp + detail::times_sensitivity(sens, rp.d_log_ratio));
    }
    ++st.contrib;
    st.up += (sp.flags & detail::surrogate_clip_upper) ? 1 : 0;
    st.low += (sp.flags & detail::surrogate_clip_lower) ? 1 : 0;
    st.dual += (sp.flags & detail::surrogate_clip_dual) ? 1 : 0;
    st.delta += (sp.flags & detail::surrogate_delta_capped) ? 1 : 0;
    st.rsum += rp.ratio;
    st.rmin = rp.ratio < st.rmin ? rp.ratio : st.rmin;
    st.rmax = rp.ratio > st.rmax ? rp.ratio : st.rmax;
    st.clamped += rp.clamped ? 1 : 0;
    st.k1 += xod - xd;
    st.k3 += detail::approx_kl_k3(cfg, tok_lr);
  }
  if (p.direct) {
    if constexpr (std::is_same_v<G, T>) store_blocked<K>(p.layout.row_ptr(p.grad, i) + t0, k0, n, g);
  } else {
    store_blocked<K>(static_cast<G*>(p.gbuf) + pl_flat(p.layout, i, t0), k0, n, g);
  }
  if (!seq_mode && !p.skip) {
    key = block_reduce_fixed<NT>(key, [](unsigned long long u, unsigned long long v) { return u < v ? u : v; },
                                 sm.template as<unsigned long long>());
    if (threadIdx.x == 0 && key != no_error_key) atomicMin(p.err, key);
  }
  st = block_reduce_fixed<NT>(st, pl_stats_op{}, sm.template as<pl_stats>());
  if (threadIdx.x == 0) p.cstats[c] = st;
}

// ---- final pass ----------------------------------------------------------------------------------

struct pl_loss_partial {
  double loss_pol = 0.0, loss_kl = 0.0, parts_pol = 0.0, parts_kl = 0.0;
  long long masked = 0, skipped = 0, kl_count = 0, kl_clamped = 0;
  double klsum = 0.0, pad_ = 0.0;
};

template <int NT, class LP, class T, class L>
__global__ void __launch_bounds__(NT) pl_final_kernel(pl_params<LP, T, L> p) {
  __shared__ detail::shared_array<pl_stats, NT / 32> s_st;
  __shared__ detail::shared_array<pl_loss_partial, NT / 32> s_lp;
  const policy_loss_config& cfg = p.cfg;
  const index_t B = p.chunks.rows;
  const pl_totals tt = *p.totals;
  const aggregation kl_mode = cfg.kl_agg == kl_aggregation::token_mean ? aggregation::token_mean : cfg.agg;
  const bool seq_mode = p.seq_ratio || p.seq_kl;
  const bool through = p.seq_ratio && cfg.sequence_gradient == sequence_ratio_gradient::through_mean;
  const index_t per = (B + NT - 1) / NT;
  const index_t r0 = threadIdx.x * per, r1 = (threadIdx.x + 1) * per < B ? (threadIdx.x + 1) * per : B;
  pl_stats st{};
  pl_loss_partial lp{};
  for (index_t i = r0; i < r1; ++i) {
    const index_t len = p.layout.row_len(i);
    const index_t c0 = chunk_begin_of_row(p.layout, p.chunks, i), c1 = chunk_end_of_row(p.layout, p.chunks, i);
    pl_stats rs{};
    for (index_t c = c0; c < c1; ++c) rs = pl_stats_op{}(rs, p.cstats[c]);
    const pl_row row = p.rows[i];
    const long long ni = row.n;
    double tot = 0.0;
    if (len > 0) {
      lp.masked += len - ni;
      if (seq_mode && row.bad && p.skip) {
        lp.skipped += ni;
        if (through) p.total[i] = 0.0;
        // the prep pass counted the row's non-finite tokens
        for (index_t c = c0; c < c1; ++c) st.nonfinite += p.prep[c].nonfinite;
        continue;
      }
      if (seq_mode)
        for (index_t c = c0; c < c1; ++c) st.nonfinite += p.prep[c].nonfinite;
      const double S = rs.s_pol;
      lp.loss_pol += row.w * S;
      if (ni > 0) lp.parts_pol += cfg.agg == aggregation::seq_mean_token_mean ? S / double(ni) : S;
      if (p.use_kl && !p.seq_kl) {
        const double Kv = rs.s_kl;
        lp.loss_kl += row.wk * Kv;
        if (ni > 0) lp.parts_kl += kl_mode == aggregation::seq_mean_token_mean ? Kv / double(ni) : Kv;
      }
      if (p.seq_kl && ni > 0) {
        const double wseq = detail::aggregation_weight(aggregation::seq_mean_token_sum, p.norm.scale, tt.div_seq, ni);
        lp.loss_kl += wseq * row.kl_value;
        lp.parts_kl += row.kl_value;
        lp.klsum += row.kl_value;
        ++lp.kl_count;
        lp.kl_clamped += row.kl_clamped;
      }
      if (through) {
        const double nd = ni > 0 ? double(ni) : 1.0;
        tot = detail::times_sensitivity(rs.sens, row.d_log_ratio / nd);
      }
    }
    if (through) p.total[i] = tot;
    st = pl_stats_op{}(st, rs);
  }
  st = block_reduce_fixed<NT>(st, pl_stats_op{}, &s_st[0]);
  lp = block_reduce_fixed<NT>(
      lp,
      [](pl_loss_partial u, const pl_loss_partial& v) {
        u.loss_pol += v.loss_pol;
        u.loss_kl += v.loss_kl;
        u.parts_pol += v.parts_pol;
        u.parts_kl += v.parts_kl;
        u.masked += v.masked;
        u.skipped += v.skipped;
        u.kl_count += v.kl_count;
        u.kl_clamped += v.kl_clamped;
        u.klsum += v.klsum;
        return u;
      },
      &s_lp[0]);
  if (threadIdx.x != 0) return;
  pl_result out;
  out.loss_pol = lp.loss_pol;
  out.loss_kl = lp.loss_kl;
  out.parts_pol = lp.parts_pol;
  out.parts_kl = lp.parts_kl;
  out.tokens = tt.tokens;
  out.sequences = tt.sequences;
  out.masked = lp.masked;
  out.skipped = lp.skipped + st.skipped;
  st.kl_count += lp.kl_count;
  st.kl_clamped += lp.kl_clamped;
  st.klsum += lp.klsum;
  out.st = st;
  const unsigned long long key = *p.err;
  out.err_key = key;
  if (key != no_error_key) {
    const index_t i = static_cast<index_t>(key >> 34);
    const index_t t = static_cast<index_t>((key >> 2) & 0xffffffffull);
    const int kind = static_cast<int>(key & 3u);
    double v = 0.0;
    if (kind == 0) v = to_double(p.layout.row_ptr(p.lp, i)[t]);
    else if (kind == 1) v = to_double(p.layout.row_ptr(p.lo, i)[t]);
    else if (kind == 2) v = to_double(p.layout.row_ptr(p.lr, i)[t]);
    else v = double(p.layout.row_ptr(p.adv, i)[t]);
    out.err_value = v;
    out.err_flat = detail::flat_index(p.layout, i, t);
  }
  *p.result = out;
}

// ---- finish: scratch gradient -> output -------------------------------------------------------

template <int NT, int K, bool HasMask, class G, class LP, class T, class L>
__global__ void __launch_bounds__(NT) pl_finish_kernel(pl_params<LP, T, L> p) {
  using Mask = typename L::mask_type;
  const index_t c = blockIdx.x;
  index_t i = 0, j = 0;
  if (!locate_chunk(p.layout, p.chunks, c, i, j)) return;
  const index_t len = p.layout.row_len(i);
  const index_t t0 = j * p.chunks.S;
  const index_t n = len - t0 < p.chunks.S ? len - t0 : p.chunks.S;
  const index_t k0 = index_t(threadIdx.x) * K;
  G g[K];
  load_blocked<K>(static_cast<const G*>(p.gbuf) + pl_flat(p.layout, i, t0), k0, n, g, G(0));
  const double tot = p.total != nullptr ? p.total[i] : 0.0;
  T out[K];
  if (tot != 0.0) {
    bool valid[K];
    if constexpr (HasMask) {
      Mask m[K];
      load_blocked<K>(p.layout.mask_row(i) + t0, k0, n, m, Mask(0));
#pragma unroll
      for (int k = 0; k < K; ++k) valid[k] = detail::is_valid(m[k]);
    } else {
#pragma unroll
      for (int k = 0; k < K; ++k) valid[k] = true;
    }
#pragma unroll
    for (int k = 0; k < K; ++k) out[k] = valid[k] ? T(double(g[k]) + tot) : T(0);
  } else {
#pragma unroll
    for (int k = 0; k < K; ++k) out[k] = T(g[k]);
  }
  store_blocked<K>(p.layout.row_ptr(p.grad, i) + t0, k0, n, out);
}

/// Enqueues count, plan, main and final (not finish). `*p.err` must be no_error_key.
template <int NT, int K, class LP, class T, class L>
cudaError_t launch_policy_loss(const pl_params<LP, T, L>& p, cudaStream_t stream) {
  const index_t grid = p.chunks.bound;
  const bool has_mask = !p.layout.mask.is_null();
  const bool prep = p.seq_ratio || p.seq_kl;
  auto run = [&](auto hm, auto rr) -> cudaError_t {
    constexpr bool HM = decltype(hm)::value;
    constexpr bool RR = decltype(rr)::value;
    if (grid > 0) {
      if (prep)
        pl_count_kernel<NT, K, HM, true><<<unsigned(grid), NT, 0, stream>>>(p);
      else
        pl_count_kernel<NT, K, HM, false><<<unsigned(grid), NT, 0, stream>>>(p);
      POLO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
    }
    pl_plan_kernel<256><<<1, 256, 0, stream>>>(p);
    POLO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
    if (grid > 0) {
      if (p.gbuf_double)
        pl_main_kernel<NT, K, HM, RR, double><<<unsigned(grid), NT, 0, stream>>>(p);
      else
        pl_main_kernel<NT, K, HM, RR, T><<<unsigned(grid), NT, 0, stream>>>(p);
      POLO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
    }
    pl_final_kernel<256><<<1, 256, 0, stream>>>(p);
    return cudaGetLastError();
  };
  if (has_mask)
    return p.read_ref ? run(std::true_type{}, std::true_type{}) : run(std::true_type{}, std::false_type{});
  return p.read_ref ? run(std::false_type{}, std::true_type{}) : run(std::false_type{}, std::false_type{});
}

template <int NT, int K, class LP, class T, class L>
cudaError_t launch_policy_loss_finish(const pl_params<LP, T, L>& p, cudaStream_t stream) {
  const index_t grid = p.chunks.bound;
  if (grid == 0) return cudaSuccess;
  const bool has_mask = !p.layout.mask.is_null();
  auto run = [&](auto hm) {
    constexpr bool HM = decltype(hm)::value;
    if (p.gbuf_double)
      pl_finish_kernel<NT, K, HM, double><<<unsigned(grid), NT, 0, stream>>>(p);
    else
      pl_finish_kernel<NT, K, HM, T><<<unsigned(grid), NT, 0, stream>>>(p);
  };
  if (has_mask) run(std::true_type{}); else run(std::false_type{});
  return cudaGetLastError();
}

}  // namespace polo::kernels
