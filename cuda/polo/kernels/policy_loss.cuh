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
/// `detail::approx_kl_k3`, `detail::aggregation_weight`), templated on its scalar F: float when
/// the log-probs and advantages are float, bf16 or half and every exponential is bounded well
/// inside float's range (`pl_float_math_ok`: log-ratio clamp within +-80, KL input clamp
/// within 80 or a finite output clamp), double otherwise. The config's bounds reach the
/// kernel already rounded to F (`detail::basic_token_consts`, built on the host), so no token
/// converts them. Sums of the statistics and of the loss are double in every case; the
/// per-row and per-call plan (weights, GSPO ratio, sequence KL) is double.
///
///     count_kernel   per chunk: valid tokens into `ccount` (the mask only; one warp per
///                    chunk: pl_count_warp_kernel). With a sequence-level ratio or KL
///                    (pl_prep_kernel, one block per chunk) it also reads the inputs:
///                    non-finite checks and the per-chunk sums of logp - logp_old and
///                    logp - logp_ref
///     plan_kernel    one block: n_i, the normalizers (N_tok, N_seq), each row's weights and
///                    sequence-level ratio and KL term
///     main_kernel    per chunk, one pass over every input: the loss terms, dL/dlogp (written
///                    straight to the output, or to scratch when a throw must still be possible
///                    or a sequence-level total is still to come), and every statistic, reduced
///                    in a fixed tree to one partial per chunk
///     final_kernel   one thread per row (its chunks in order), a fixed tree per block, then
///                    the last block to finish combines the block partials in block order:
///                    loss, parts, statistics, the first error, and the per-row gradient
///                    totals of GSPO's through_mean; its last thread builds the
///                    `policy_loss_result` the call returns and publishes it with the first
///                    error (detail/async_result.cuh: into scratch, and in the asynchronous
///                    mode into `be.result` / `be.deferred_errors`)
///     finish         (only when the gradient went to scratch) the gradient to the output;
///                    enqueued before the host read-back and a no-op when an error was found:
///                    a flat 16-byte copy (pl_flat_copy) in extra blocks of the final kernel
///                    when the scratch is the output's exact image (contiguous rows, no GSPO
///                    through_mean totals), else a kernel of its own (pl_finish_kernel)
///
/// Fused mode (pl_fused_ok: no sequence-level ratio or KL term): no plan kernel and no per-row
/// plan. The count kernel adds the valid tokens to integer tallies (each row's, the batch's,
/// and the non-empty rows), and its last block to finish writes the call's normalizers and
/// weights (`totals`) from them; the main and final kernels form a row's weights from its
/// tally and those (pl_row_of, one division for seq_mean_token_mean, none otherwise): four
/// kernels instead of five, and no single-block loop over the rows on the critical path.
///
/// Asynchronous mode with a packed layout: `off_key` holds the device check of the offsets;
/// when it found an error every kernel returns before it reads a row (the plan and final
/// kernels see an empty batch; the fused count kernel writes no totals) and the final kernel
/// publishes the offsets' error.
///
/// No floating-point atomics: the atomics are an integer min on the error key, integer counts
/// of finished blocks and the fused mode's integer tallies, so results are bitwise identical
/// run to run. Token level, float, uint8 mask: the mask is read twice (count, main), the four
/// inputs once, the gradient written once (21 + 1 bytes per token); under
/// token_nonfinite_policy::error the gradient goes through scratch (+2*sizeof(T) bytes per
/// token) so that a non-finite input can still throw with nothing written.

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "polo/aggregation.hpp"
#include "polo/core/backend.hpp"
#include "polo/core/config.hpp"
#include "polo/core/layout.hpp"
#include "polo/core/math.hpp"
#include "polo/core/view.hpp"
#include "polo/detail/async_result.cuh"
#include "polo/detail/launch.cuh"
#include "polo/detail/status.cuh"
#include "polo/kernels/gae.cuh"  // chunk_table, locate_chunk, packed offsets and chunk table
#include "polo/kernels/scan.cuh"
#include "polo/kl.hpp"
#include "polo/policy_loss.hpp"

/// Tuning knobs (compile-time): tokens per thread of the policy-loss kernels, and the minimum
/// resident blocks per multiprocessor the main kernel is compiled for (caps its registers),
/// for its double instantiation and for its float one (fewer live registers: 3 blocks of 256
/// threads fit in 80 registers without spills).
#ifndef POLO_CUDA_PL_ITEMS
#define POLO_CUDA_PL_ITEMS 8
#endif
#ifndef POLO_CUDA_PL_MIN_BLOCKS
#define POLO_CUDA_PL_MIN_BLOCKS 2
#endif
#ifndef POLO_CUDA_PL_MIN_BLOCKS_F32
#define POLO_CUDA_PL_MIN_BLOCKS_F32 3
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

/// Normalizers of the call (plan_kernel, or the fused count kernel's last block).
struct pl_totals {
  long long tokens = 0, sequences = 0;
  double div = 0.0, div_tok = 0.0, div_seq = 0.0;
  /// The call's part of the objective's and of the token-level KL's row weights
  /// (detail::aggregation_call_weight; a row's: detail::aggregation_row_weight)
  double w = 0.0, wk = 0.0;
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

/// What the final pass reduces to (its last thread turns it into the published
/// policy_loss_result, or the error's status).
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

struct pl_final_partial;

template <class LP, class T, class L>
struct pl_params {
  L layout{};
  detail::layout_tensor<L, const LP> lp{}, lo{}, lr{};  ///< lr null without a KL term
  detail::layout_tensor<L, const T> adv{};
  detail::layout_tensor<L, T> grad{};
  policy_loss_config cfg{};
  detail::basic_token_consts<float> fc{};   ///< cfg's bounds rounded once (the float main pass)
  detail::basic_token_consts<double> dc{};  ///< the same in double
  normalizers norm{};
  bool read_ref = false, use_kl = false, seq_ratio = false, seq_kl = false, skip = false;
  bool direct = true;          ///< gradient straight to `grad`; otherwise to gbuf
  bool gbuf_double = false;    ///< gbuf holds double (GSPO through_mean), else T
  void* gbuf = nullptr;        ///< [flat tokens] scratch gradient
  chunk_table chunks{};
  pl_chunk_prep* prep = nullptr;  ///< [bound] (the sequence-level prep pass only)
  long long* ccount = nullptr;    ///< [bound] valid tokens of each chunk (count pass)
  pl_stats* cstats = nullptr;     ///< [bound]
  pl_row* rows = nullptr;         ///< [B]
  double* total = nullptr;        ///< [B] GSPO through_mean gradient totals
  pl_totals* totals = nullptr;    ///< [1]
  unsigned long long* err = nullptr;
  unsigned long long* done = nullptr;        ///< [1] blocks of final_kernel done (starts at ~0)
  pl_final_partial* fpart = nullptr;  ///< [final blocks]
  /// Fused mode (pl_fused_ok): no plan kernel and `rows` unused; the count kernel tallies the
  /// valid tokens and its last block writes `totals`. Each tally starts at ~0 (all bits set),
  /// so a count n reads n - 1.
  bool fused = false;
  /// [3 + B]: valid tokens, non-empty rows, count blocks done (the ticket), each row's valid tokens
  unsigned long long* tally = nullptr;
  detail::result_target<policy_loss_result> target{};  ///< the scratch slot (+ be.result, deferred)
  /// Asynchronous mode, packed layout: the device check's key of the offsets (no_error_key:
  /// none); null otherwise (the synchronous mode checked them on the host before any launch).
  const unsigned long long* off_key = nullptr;
};

/// True when the asynchronous mode's device check found malformed packed offsets: no kernel
/// reads a row then.
template <class LP, class T, class L>
__device__ __forceinline__ bool pl_bad_offsets(const pl_params<LP, T, L>& p) {
  return p.off_key != nullptr && *p.off_key != no_error_key;
}

/// Flat position of token (i, t) in the scratch gradient (i*T + t, or offsets[i] + t).
template <class L>
__device__ __forceinline__ index_t pl_flat(const L& layout, index_t i, index_t t) {
  return detail::flat_index(layout, i, t);
}

/// Most blocks of the flat finish copy (of the final kernel's 64 threads: up to 524,288
/// threads; at 1024 x 8192 floats, four 16-byte elements each, loaded together).
inline constexpr index_t pl_flat_blocks = 8192;

/// 16-byte loads a thread of the flat finish copy issues before it stores them.
inline constexpr int pl_flat_loads = 4;

template <int NT>
struct pl_smem {
  alignas(16) unsigned char raw[(NT / 32) * sizeof(pl_stats)];
  template <class S>
  __device__ __forceinline__ S* as() {
    return reinterpret_cast<S*>(raw);
  }
};

// ---- count / prep ------------------------------------------------------------------------------

/// The count pass with a sequence-level ratio or KL (one block per chunk): valid tokens, the
/// non-finite checks, and the chunk's sums of logp - logp_old and logp - logp_ref.
template <int NT, int K, bool HasMask, class LP, class T, class L>
__global__ void __launch_bounds__(NT) pl_prep_kernel(pl_params<LP, T, L> p) {
  __shared__ pl_smem<NT> sm;
  using Mask = typename L::mask_type;
  if (pl_bad_offsets(p)) return;
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
  {
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
  if (threadIdx.x == 0) {
    p.prep[c] = mine;
    p.ccount[c] = mine.count;
  }
}

/// Counts one arrival at a counter that starts at ~0 (thread 0 of a block, after that block's
/// writes): true for the last of `expected` arrivals (the one that finds expected - 2 there,
/// mod 2^64). Its block then reads what every earlier arrival wrote, after a __threadfence
/// and through L2 (load_cg_struct, __ldcg). No result's order depends on which block arrives last.
__device__ __forceinline__ bool pl_arrive(unsigned long long* counter, index_t expected) {
  __threadfence();
  const unsigned long long before = atomicAdd(counter, 1ull);
  return before + 2ull == static_cast<unsigned long long>(expected);
}

/// The call's normalizers and weights from its valid tokens and non-empty rows (plan_kernel,
/// and the fused mode's count kernel).
__device__ __forceinline__ pl_totals pl_make_totals(const policy_loss_config& c, const normalizers& norm,
                                                    long long tok, long long seq) {
  pl_totals t;
  t.tokens = tok;
  t.sequences = seq;
  t.div = detail::aggregation_divisor(c.agg, norm, tok, seq);
  t.div_tok = detail::aggregation_divisor(aggregation::token_mean, norm, tok, seq);
  t.div_seq = detail::aggregation_divisor(aggregation::seq_mean_token_sum, norm, tok, seq);
  const aggregation kl_mode = detail::kl_aggregation_of(c);
  t.w = detail::aggregation_call_weight(norm.scale, t.div);
  t.wk = kl_mode == c.agg ? t.w : detail::aggregation_call_weight(norm.scale, t.div_tok);
  return t;
}

/// The plan of a row with ni valid tokens as far as token-level terms need it: n, w (the
/// weight of its objective terms) and wk (of its token-level KL terms, before kl_coef), each
/// detail::aggregation_weight's value (the call's part from `t`); the sequence-level fields
/// keep their defaults.
__device__ __forceinline__ pl_row pl_token_row(const policy_loss_config& c, const pl_totals& t, long long ni) {
  const aggregation kl_mode = detail::kl_aggregation_of(c);
  pl_row row{};
  row.n = ni;
  row.w = detail::aggregation_row_weight(c.agg, t.w, ni);
  row.wk = kl_mode == c.agg ? row.w : detail::aggregation_row_weight(kl_mode, t.wk, ni);
  return row;
}

/// Valid tokens counted by tally k of the fused mode (each starts at ~0; read through L2).
template <class LP, class T, class L>
__device__ __forceinline__ long long pl_tally(const pl_params<LP, T, L>& p, index_t k) {
  return static_cast<long long>(__ldcg(p.tally + k) + 1ull);
}

/// Row i's plan: the plan kernel's (p.rows), or in the fused mode formed from the row's tally
/// and the call's totals `t` (pl_token_row: what the plan kernel writes for such a row).
template <class LP, class T, class L>
__device__ __forceinline__ pl_row pl_row_of(const pl_params<LP, T, L>& p, const pl_totals& t, index_t i) {
  return p.fused ? pl_token_row(p.cfg, t, pl_tally(p, 3 + i)) : p.rows[i];
}

/// Row i's plan as the main kernel uses it: on valid tokens only, so for rows with at least one.
/// The plan kernel's (p.rows), or in the fused mode the call's weights from `t`, each divided by
/// the row's valid tokens (its tally, read only then) where it aggregates by
/// seq_mean_token_mean; `n` is not the row's count. Fused: the caller knows the call is in
/// the fused mode (the main kernel's specialization).
template <bool Fused, class LP, class T, class L>
__device__ __forceinline__ pl_row pl_main_row(const pl_params<LP, T, L>& p, const pl_totals& t, index_t i) {
  if (!Fused && !p.fused) return p.rows[i];
  constexpr aggregation smtm = aggregation::seq_mean_token_mean;
  const bool per_row = p.cfg.agg == smtm || detail::kl_aggregation_of(p.cfg) == smtm;
  return pl_token_row(p.cfg, t, per_row ? pl_tally(p, 3 + i) : 1);  // any n >= 1 gives the call's weights
}

/// Warps per block of the count-only pass.
inline constexpr int pl_count_warps = 8;

/// Whether a call takes the fused mode: no per-row sequence-level sums to plan.
inline bool pl_fused_ok(bool seq_ratio, bool seq_kl) { return !seq_ratio && !seq_kl; }

/// The count pass without the sequence-level prep: one warp per chunk reads its mask (16 bytes
/// per lane and step for a byte mask; without a mask the chunk's length, nothing read). It
/// writes the chunk's valid tokens to `ccount`, or in the fused mode adds them to the tallies
/// (the row's count; the add that takes a row from 0 to a positive count also counts a
/// non-empty row; once per block, the batch's tokens and non-empty rows) and the last block
/// to finish (an integer ticket) writes the call's normalizers and weights (pl_totals; a row's
/// weights are formed where they are used, pl_row_of). Integer sums: the order does not matter,
/// so the tallies and the totals are exact and deterministic.
template <bool HasMask, class LP, class T, class L>
__global__ void __launch_bounds__(pl_count_warps * 32) pl_count_warp_kernel(pl_params<LP, T, L> p) {
  using Mask = typename L::mask_type;
  __shared__ unsigned long long s_tok[pl_count_warps], s_seq[pl_count_warps];
  if (pl_bad_offsets(p)) return;  // block-uniform: no totals, and no later kernel reads a row
  const index_t c = index_t(blockIdx.x) * pl_count_warps + index_t(threadIdx.x >> 5);
  const int lane = int(threadIdx.x & 31), warp = int(threadIdx.x >> 5);
  index_t i = 0, j = 0;
  const bool has = c < p.chunks.bound && locate_chunk(p.layout, p.chunks, c, i, j);  // warp-uniform
  long long count = 0;
  if (has) {
    const index_t len = p.layout.row_len(i);
    const index_t t0 = j * p.chunks.S;
    const index_t n = len - t0 < p.chunks.S ? len - t0 : p.chunks.S;
    count = n;
    if constexpr (HasMask) {
      constexpr int KM = sizeof(Mask) >= 16 ? 1 : int(16 / sizeof(Mask));
      const Mask* m = p.layout.mask_row(i) + t0;
      int mine = 0;
      // (Measured and dropped, session of 2026-11-24: all of a lane's loads issued before any
      // is counted, with a release / acquire fence in place of __threadfence at the ticket:
      // 2.1M instead of 3.2M warp instructions, yet 23.2 us instead of 20.0 under ncu. Again
      // once the last block no longer planned each row, four loads issued together and the same
      // ticket: 102 registers instead of 38, 14.4 us instead of 10.9, the call 2-6 us slower.)
      for (index_t k0 = index_t(lane) * KM; k0 < n; k0 += index_t(32 * KM)) {
        Mask v[KM];
        load_blocked<KM>(m, k0, n, v, Mask(0));
#pragma unroll
        for (int k = 0; k < KM; ++k) mine += (k0 + k < n && detail::is_valid(v[k])) ? 1 : 0;
      }
#pragma unroll
      for (int d = 16; d > 0; d >>= 1) mine += __shfl_down_sync(0xffffffffu, mine, d);
      count = mine;
    }
  }
  if (!p.fused) {
    if (has && lane == 0) p.ccount[c] = count;
    return;
  }
  if (lane == 0) {
    unsigned long long seq = 0;
    if (has && count > 0) {
      const unsigned long long before = atomicAdd(p.tally + 3 + i, static_cast<unsigned long long>(count));
      seq = before == ~0ull ? 1 : 0;  // the row had no valid token before this chunk's
    }
    s_tok[warp] = static_cast<unsigned long long>(count);
    s_seq[warp] = seq;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    unsigned long long tok = 0, seq = 0;
#pragma unroll
    for (int w = 0; w < pl_count_warps; ++w) {
      tok += s_tok[w];
      seq += s_seq[w];
    }
    if (tok > 0) atomicAdd(p.tally, tok);
    if (seq > 0) atomicAdd(p.tally + 1, seq);
    if (pl_arrive(p.tally + 2, index_t(gridDim.x))) {  // the last block: the call's totals
      __threadfence();
      *p.totals = pl_make_totals(p.cfg, p.norm, pl_tally(p, 0), pl_tally(p, 1));
    }
  }
}

/// Enqueues the count-only pass over the p.chunks.bound chunk slots (none: nothing).
template <class LP, class T, class L>
cudaError_t launch_pl_count(const pl_params<LP, T, L>& p, cudaStream_t stream) {
  if (p.chunks.bound <= 0) return cudaSuccess;
  const auto grid = unsigned((p.chunks.bound + pl_count_warps - 1) / pl_count_warps);
  if (!p.layout.mask.is_null())
    pl_count_warp_kernel<true><<<grid, pl_count_warps * 32, 0, stream>>>(p);
  else
    pl_count_warp_kernel<false><<<grid, pl_count_warps * 32, 0, stream>>>(p);
  return cudaGetLastError();
}

// ---- plan --------------------------------------------------------------------------------------

/// Valid tokens of row i (its chunks' counts).
template <class LP, class T, class L>
__device__ __forceinline__ long long pl_row_count(const pl_params<LP, T, L>& p, index_t i) {
  const index_t c0 = chunk_begin_of_row(p.layout, p.chunks, i), c1 = chunk_end_of_row(p.layout, p.chunks, i);
  long long n = 0;
  for (index_t c = c0; c < c1; ++c) n += p.ccount[c];
  return n;
}

/// Neighbouring threads take neighbouring rows (the integer totals do not depend on the
/// order), and each row's plan is written once, whole: this single block is bound by its
/// memory instructions, not by arithmetic.
template <int NT, class LP, class T, class L>
__global__ void __launch_bounds__(NT) pl_plan_kernel(pl_params<LP, T, L> p) {
  __shared__ long long s_a[NT / 32], s_b[NT / 32];
  const index_t B = pl_bad_offsets(p) ? 0 : p.chunks.rows;  // bad offsets: an empty plan, no row read
  long long tok = 0, seq = 0;
  for (index_t i = threadIdx.x; i < B; i += NT) {
    const long long n = pl_row_count(p, i);
    tok += n;
    seq += n > 0 ? 1 : 0;
  }
  auto add = [](long long u, long long v) { return u + v; };
  tok = block_reduce_fixed<NT>(tok, add, s_a);
  seq = block_reduce_fixed<NT>(seq, add, s_b);
  __shared__ pl_totals s_t;
  const policy_loss_config& c = p.cfg;
  if (threadIdx.x == 0) {
    const pl_totals t = pl_make_totals(c, p.norm, tok, seq);
    s_t = t;
    *p.totals = t;
  }
  __syncthreads();
  const pl_totals t = s_t;
  for (index_t i = threadIdx.x; i < B; i += NT) {
    const long long ni = pl_row_count(p, i);
    pl_row row = pl_token_row(c, t, ni);
    if (p.seq_ratio || p.seq_kl) {
      index_t c0 = chunk_begin_of_row(p.layout, p.chunks, i), c1 = chunk_end_of_row(p.layout, p.chunks, i);
      double slr = 0.0, sd = 0.0;
      long long bad = 0;
      for (index_t cc = c0; cc < c1; ++cc) {
        bad += p.prep[cc].nonfinite;
        slr += p.prep[cc].slr;
        sd += p.prep[cc].sd;
      }
      row.bad = bad > 0 ? 1 : 0;
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

/// Per-thread statistics of the main pass, then the chunk's (merged in a fixed tree of
/// shuffles: the struct's size is the tree's cost, 5 shuffles per 4 bytes). The eight counts
/// are packed two to a 32-bit word, 16 bits each: a thread sees at most K tokens and a chunk at
/// most S = NT x K < 2^16 (asserted by the kernel), so no half carries into the other. The
/// ratio range is in the compute scalar F; the sums are in double from the first term: float
/// terms carry 24 significant bits, so their double sums are exact unless the magnitudes span
/// ~2^29, which keeps packed == padded bitwise where the chunks cut a row differently
/// (per-thread sums in float broke that on the GPU). Fewer fields than pl_stats: `skipped`
/// equals `nonfinite` here, `kl_count` equals `contrib` with a token-level KL term, and the KL
/// sum equals `s_kl` (all three restored on the write); `sens` (the through-mean gradient's
/// sum) exists only where a sequence-level ratio can need it (Sens).
template <class F>
struct pl_tstats_core {
  unsigned contrib_up = 0;        ///< contrib | up << 16
  unsigned low_dual = 0;          ///< low | dual << 16
  unsigned delta_clamped = 0;     ///< delta | clamped << 16
  unsigned klc_nonfinite = 0;     ///< kl_clamped | nonfinite << 16
  F rmin = F(unbounded), rmax = F(-unbounded);
  double rsum = 0.0, k1 = 0.0, k3 = 0.0, s_pol = 0.0, s_kl = 0.0;
};
template <class F, bool Sens>
struct pl_tstats : pl_tstats_core<F> {
  double sens = 0.0;
};
template <class F>
struct pl_tstats<F, false> : pl_tstats_core<F> {};
inline constexpr unsigned pl_high = 0x10000u;  ///< one count in the high half of a packed word
__device__ __forceinline__ long long pl_lo16(unsigned w) { return static_cast<long long>(w & 0xffffu); }
__device__ __forceinline__ long long pl_hi16(unsigned w) { return static_cast<long long>(w >> 16); }
struct pl_tstats_op {
  template <class F, bool Sens>
  __device__ __forceinline__ pl_tstats<F, Sens> operator()(pl_tstats<F, Sens> a, const pl_tstats<F, Sens>& b) const {
    a.contrib_up += b.contrib_up;
    a.low_dual += b.low_dual;
    a.delta_clamped += b.delta_clamped;
    a.klc_nonfinite += b.klc_nonfinite;
    a.rmin = b.rmin < a.rmin ? b.rmin : a.rmin;
    a.rmax = b.rmax > a.rmax ? b.rmax : a.rmax;
    a.rsum += b.rsum;
    a.k1 += b.k1;
    a.k3 += b.k3;
    a.s_pol += b.s_pol;
    a.s_kl += b.s_kl;
    if constexpr (Sens) a.sens += b.sens;
    return a;
  }
};

/// A stored log-prob or advantage in the compute scalar F (bf16/half widen exactly to float).
template <class F, class X>
__device__ __forceinline__ F to_compute(X x) {
  if constexpr (std::is_same_v<X, float> || std::is_same_v<X, double>)
    return F(x);
  else
    return F(static_cast<float>(x));
}

/// Whether the per-token math of the main pass may run in float for these options: float or
/// narrower inputs (decided by the caller), and every exponential bounded well inside float's
/// range (log-ratio clamp within +-80; the KL input clamp within 80 or a finite output clamp),
/// so that float and double agree to float rounding and never differ by an overflow.
inline bool pl_float_math_ok(const policy_loss_config& c) {
  if (!(c.log_ratio_min >= -80.0 && c.log_ratio_max <= 80.0)) return false;
  if (c.kl_coef != 0.0 && c.kl.level == kl_level::token && !(c.kl.input_clamp <= 80.0 || c.kl.output_clamp <= 1e30))
    return false;
  return true;
}

/// The config's bounds rounded to the compute scalar F (built on the host).
template <class F, class LP, class T, class L>
__device__ __forceinline__ const detail::basic_token_consts<F>& pl_consts(const pl_params<LP, T, L>& p) {
  if constexpr (std::is_same_v<F, float>)
    return p.fc;
  else
    return p.dc;
}

/// Whether a call takes the main kernel's specialization for the common configuration
/// (`Common`): token-level ratio and KL, the clipped objective, and no KL term or the k3
/// estimator with an input clamp within 80, without a ratio weight or straight-through
/// gradient (GRPO and PPO as DeepSeek-R1, verl and TRL run them by default; polo's and verl's
/// input clamp is 20). Its switches then fold at compile time, the KL's exponential takes the
/// bounded form (kl_term<float, true>), and the per-token body is straight-line code the
/// compiler can interleave across a thread's K tokens; the formulas and their order are those
/// of the general kernel.
inline bool pl_common_config(const policy_loss_config& c, bool seq_ratio, bool seq_kl, bool use_kl) {
  if (seq_ratio || seq_kl || c.objective != policy_objective::clip) return false;
  return !use_kl || (c.kl.estimator == kl_estimator::k3 && c.kl.weight == kl_weight::none && !c.kl.straight_through &&
                     c.kl.input_clamp <= 80.0);
}

/// F: the scalar of the per-token formulas (float for float/bf16/half inputs under
/// pl_float_math_ok, else double); G: the element type of the gradient written; Common: the
/// call's options satisfy pl_common_config and it runs in the fused mode (only instantiated
/// with F = float).
template <int NT, int K, bool HasMask, bool ReadRef, class G, class F, bool Common, class LP, class T, class L>
__global__ void __launch_bounds__(NT, std::is_same_v<F, float> ? POLO_CUDA_PL_MIN_BLOCKS_F32 : POLO_CUDA_PL_MIN_BLOCKS)
    pl_main_kernel(pl_params<LP, T, L> p) {
  __shared__ pl_smem<NT> sm;
  using Mask = typename L::mask_type;
  if (pl_bad_offsets(p)) return;
  const index_t c = blockIdx.x;
  index_t i = 0, j = 0;
  if (!locate_chunk(p.layout, p.chunks, c, i, j)) return;
  const index_t len = p.layout.row_len(i);
  const index_t t0 = j * p.chunks.S;
  const index_t n = len - t0 < p.chunks.S ? len - t0 : p.chunks.S;
  const index_t k0 = index_t(threadIdx.x) * K;
  static_assert(NT * K < 65536, "pl_main_kernel: the packed counts need chunks below 2^16 tokens");
  constexpr bool Sens = !Common;  // the through-mean sum: sequence-level ratios only
  const policy_loss_config& cfg = p.cfg;
  detail::basic_token_consts<F> tcl = pl_consts<F>(p);
  if constexpr (Common) {  // known here: the switches below fold
    tcl.objective = policy_objective::clip;
    tcl.kl.estimator = kl_estimator::k3;
    tcl.kl.weight = kl_weight::none;
    tcl.kl.straight_through = false;
  }
  const detail::basic_token_consts<F>& tc = tcl;
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
  const pl_row row = pl_main_row<Common>(p, *p.totals, i);  // the specialization runs fused only
  const bool seq_ratio = !Common && p.seq_ratio, seq_kl = !Common && p.seq_kl;
  const bool seq_mode = seq_ratio || seq_kl;
  const bool row_skipped = seq_mode && row.bad && p.skip;
  const bool token_kl = p.use_kl && !seq_kl;
  const bool through = seq_ratio && cfg.sequence_gradient == sequence_ratio_gradient::through_mean;
  const F w = F(row.w), bwk = F(cfg.kl_coef * row.wk);
  const F seq_kl_d = F(row.seq_kl_d);
  detail::basic_ratio_point<F> srp;
  if (seq_ratio) {
    srp.ratio = F(row.ratio);
    srp.d_log_ratio = F(row.d_log_ratio);
    srp.clamped = row.ratio_clamped != 0;
  }
  pl_tstats<F, Sens> st{};
  unsigned long long key = no_error_key;
  G g[K];
#pragma unroll
  for (int k = 0; k < K; ++k) {
    g[k] = G(0);
    if (!valid[k] || row_skipped) continue;
    if (!seq_mode) {
      // all four at once on the common path; which argument failed only where one did
      if (!(finite_of(x[k]) && finite_of(xo[k]) && (!ReadRef || finite_of(xr[k])) && finite_of(a[k]))) {
        const int bad = !finite_of(x[k]) ? 0 : !finite_of(xo[k]) ? 1 : (ReadRef && !finite_of(xr[k])) ? 2 : 3;
        if (key == no_error_key) key = pl_error_key(i, t0 + k0 + k, bad);
        st.klc_nonfinite += pl_high;
        continue;
      }
    }
    const F xf = to_compute<F>(x[k]), xof = to_compute<F>(xo[k]), A = to_compute<F>(a[k]);
    const F tok_lr = xf - xof;
    // The token's ratio and its k3 statistic from one exponential in float: wherever F is
    // float, pl_float_math_ok has bounded the log-ratio clamp within +-80 (Bounded).
    detail::basic_ratio_point<F> rp;
    F k3_tok;
    detail::ratio_and_k3<F, true>(tc, tok_lr, rp, k3_tok);
    if (seq_ratio) rp = srp;
    const detail::basic_surrogate_point<F> sp = detail::surrogate<F>(tc, rp.ratio, A, xf);
    st.s_pol += double(sp.loss);
    F dlogp = w * sp.d_logp;
    F sens = w * sp.d_ratio;
    if (token_kl) {
      F xrf = F(0);
      if constexpr (ReadRef) xrf = to_compute<F>(xr[k]);
      const detail::basic_kl_point<F> kp = detail::kl_term<F, Common>(tc.kl, xf - xrf, rp.ratio);
      st.s_kl += double(kp.value);
      dlogp += bwk * kp.grad;
      sens += bwk * kp.d_ratio;
      st.klc_nonfinite += kp.clamped ? 1u : 0u;
    }
    if (seq_kl) dlogp += seq_kl_d;
    if (through) {
      g[k] = G(dlogp);
      if constexpr (Sens) st.sens += double(sens);
    } else {
      g[k] = G(dlogp + detail::times_sensitivity<F>(sens, rp.d_log_ratio));
    }
    st.contrib_up += 1u + ((sp.flags & detail::surrogate_clip_upper) ? pl_high : 0u);
    st.low_dual += ((sp.flags & detail::surrogate_clip_lower) ? 1u : 0u) + ((sp.flags & detail::surrogate_clip_dual) ? pl_high : 0u);
    st.delta_clamped += ((sp.flags & detail::surrogate_delta_capped) ? 1u : 0u) + (rp.clamped ? pl_high : 0u);
    st.rsum += double(rp.ratio);
    st.rmin = rp.ratio < st.rmin ? rp.ratio : st.rmin;
    st.rmax = rp.ratio > st.rmax ? rp.ratio : st.rmax;
    st.k1 -= double(tok_lr);
    st.k3 += double(k3_tok);
  }
  if (p.direct) {
    if constexpr (std::is_same_v<G, T>) store_blocked<K>(p.layout.row_ptr(p.grad, i) + t0, k0, n, g);
  } else {
    store_blocked<K>(static_cast<G*>(p.gbuf) + pl_flat(p.layout, i, t0), k0, n, g);
  }
  // The chunk's first error: the key tree runs only in a block that has one (the barrier's
  // vote is the same in every thread, so the tree's barriers stay uniform).
  if (!seq_mode && !p.skip && __syncthreads_or(key != no_error_key)) {
    key = block_reduce_fixed<NT>(key, [](unsigned long long u, unsigned long long v) { return u < v ? u : v; },
                                 sm.template as<unsigned long long>());
    if (threadIdx.x == 0 && key != no_error_key) atomicMin(p.err, key);
  }
  st = block_reduce_fixed<NT>(st, pl_tstats_op{}, sm.template as<pl_tstats<F, Sens>>());
  if (threadIdx.x == 0) {
    pl_stats o;
    o.contrib = pl_lo16(st.contrib_up);
    o.up = pl_hi16(st.contrib_up);
    o.low = pl_lo16(st.low_dual);
    o.dual = pl_hi16(st.low_dual);
    o.delta = pl_lo16(st.delta_clamped);
    o.clamped = pl_hi16(st.delta_clamped);
    o.kl_count = token_kl ? o.contrib : 0;
    o.kl_clamped = pl_lo16(st.klc_nonfinite);
    o.nonfinite = pl_hi16(st.klc_nonfinite);
    o.skipped = o.nonfinite;
    o.rsum = st.rsum;
    o.rmin = double(st.rmin);
    o.rmax = double(st.rmax);
    o.k1 = st.k1;
    o.k3 = st.k3;
    o.klsum = st.s_kl;
    o.s_pol = st.s_pol;
    o.s_kl = st.s_kl;
    if constexpr (Sens) o.sens = st.sens;
    p.cstats[c] = o;
  }
}

// ---- final pass ----------------------------------------------------------------------------------

struct pl_loss_partial {
  double loss_pol = 0.0, loss_kl = 0.0, parts_pol = 0.0, parts_kl = 0.0;
  long long masked = 0, skipped = 0, kl_count = 0, kl_clamped = 0;
  double klsum = 0.0, pad_ = 0.0;
};
struct pl_loss_partial_op {
  __device__ __forceinline__ pl_loss_partial operator()(pl_loss_partial u, const pl_loss_partial& v) const {
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
  }
};

/// One block's share of the final reduction (rows blockIdx.x*NT ...).
struct pl_final_partial {
  pl_stats st{};
  pl_loss_partial lp{};
};

/// Loads a struct written by another block of the same grid (bypassing L1; after the
/// writer's __threadfence and the atomic that published it).
template <class S>
__device__ __forceinline__ S load_cg_struct(const S* p) {
  static_assert(sizeof(S) % 8 == 0, "load_cg_struct: a multiple of 8 bytes");
  unsigned long long w[sizeof(S) / 8];
#pragma unroll
  for (int k = 0; k < int(sizeof(S) / 8); ++k) w[k] = __ldcg(reinterpret_cast<const unsigned long long*>(p) + k);
  S out;
  std::memcpy(&out, w, sizeof(S));
  return out;
}

/// The value policy_loss returns, from the final reduction `o` (no error). Both modes build it
/// here, so the asynchronous result is the synchronous one bit for bit; `loss` is rounded
/// after the product and after the sum, never fused, as the host computed it before.
template <class LP, class T, class L>
__device__ policy_loss_result pl_make_result(const pl_params<LP, T, L>& p, const pl_result& o) {
  const policy_loss_config& c = p.cfg;
  policy_loss_result res;
  policy_loss_stats& st = res.stats;
  const pl_stats& s = o.st;
  st.tokens = o.tokens;
  st.sequences = o.sequences;
  st.masked_tokens = o.masked;
  st.nonfinite_tokens = s.nonfinite;
  st.skipped_tokens = o.skipped;
  st.clip_upper = {double(s.up), s.contrib};
  st.clip_lower = {double(s.low), s.contrib};
  st.clip_dual = {double(s.dual), s.contrib};
  st.delta_capped = {double(s.delta), s.contrib};
  st.ratio.total = {s.rsum, s.contrib};
  st.ratio.lo = s.rmin;
  st.ratio.hi = s.rmax;
  st.clamped_log_ratio = {double(s.clamped), s.contrib};
  st.approx_kl_k1 = {s.k1, s.contrib};
  st.approx_kl_k3 = {s.k3, s.contrib};
  if (p.use_kl) {
    st.kl_ref = {s.klsum, s.kl_count};
    st.kl_clamped = {double(s.kl_clamped), s.kl_count};
  }
  const bool per_seq_parts = c.agg == aggregation::seq_mean_token_mean || c.agg == aggregation::seq_mean_token_sum;
  const aggregation kl_mode = detail::kl_aggregation_of(c);
  const bool kl_per_seq_parts =
      kl_mode == aggregation::seq_mean_token_mean || kl_mode == aggregation::seq_mean_token_sum;
  res.policy_loss = o.loss_pol;
  res.kl_loss = p.use_kl ? o.loss_kl : 0.0;
  res.loss = __dadd_rn(res.policy_loss, __dmul_rn(c.kl_coef, res.kl_loss));
  res.policy_parts = {o.parts_pol, per_seq_parts ? st.sequences : st.tokens};
  if (p.use_kl) res.kl_parts = {o.parts_kl, (p.seq_kl || kl_per_seq_parts) ? st.sequences : st.tokens};
  return res;
}

/// One thread: the packed offsets' error (`bad_offsets`), else the first non-finite input,
/// else the result, published into the scratch slot and, in the asynchronous mode, into
/// `be.result` (no error only) and `be.deferred_errors`.
template <class LP, class T, class L>
__device__ void pl_publish(const pl_params<LP, T, L>& p, const pl_result& o, bool bad_offsets) {
  cuda::status s{};
  s.entry = detail::entry_policy_loss;
  policy_loss_result v{};
  if (bad_offsets) {
    if constexpr (L::is_packed) packed_offsets_status(p.layout, *p.off_key, s);
  } else if (o.err_key != no_error_key) {
    s.code = detail::status_nonfinite_token;
    s.index = o.err_flat;
    s.value = o.err_value;
    s.a = detail::arg_logp + static_cast<int>(o.err_key & 3u);  // logp, logp_old, logp_ref, advantages
  } else if (p.chunks.rows > 0) {
    v = pl_make_result(p, o);
  }
  detail::publish(p.target, s, v);
}

/// finish, flat form: when the scratch gradient is the output's exact image (T elements, no
/// through_mean totals, and an output whose rows are contiguous: a padded one of row stride
/// T, a packed one of stride 1), one grid-strided 16-byte copy of the flat extent instead of
/// the per-chunk finish kernel, run by the final kernel's extra blocks (`block` of `blocks`,
/// NT threads each; see pl_final_kernel). A no-op when an error was found: the main kernel,
/// which finished before the final kernel started, wrote every block's first error.
template <int NT, class LP, class T, class L>
__device__ __forceinline__ void pl_flat_copy(const pl_params<LP, T, L>& p, index_t count, index_t block,
                                             index_t blocks) {
  if (*p.err != no_error_key || pl_bad_offsets(p)) return;
  const T* __restrict__ src = static_cast<const T*>(p.gbuf);
  T* __restrict__ dst = p.grad.data;
  const index_t first = block * NT + threadIdx.x;
  const index_t step = blocks * NT;
  constexpr index_t per = index_t(16 / sizeof(T));
  index_t tail = 0;
  if ((reinterpret_cast<std::uintptr_t>(src) % 16) == 0 && (reinterpret_cast<std::uintptr_t>(dst) % 16) == 0) {
    const index_t nv = count / per;
    const uint4* __restrict__ s4 = reinterpret_cast<const uint4*>(src);
    uint4* __restrict__ d4 = reinterpret_cast<uint4*>(dst);
    // pl_flat_loads loads in flight per thread before their stores: the final kernel's register
    // count leaves few threads per multiprocessor, too few to cover DRAM latency one load each
    constexpr int U = pl_flat_loads;
    index_t q = first;
    for (; q + (U - 1) * step < nv; q += U * step) {
      uint4 v[U];
#pragma unroll
      for (int u = 0; u < U; ++u) v[u] = __ldg(s4 + q + u * step);
#pragma unroll
      for (int u = 0; u < U; ++u) d4[q + u * step] = v[u];
    }
    for (; q < nv; q += step) d4[q] = __ldg(s4 + q);
    tail = nv * per;
  }
  for (index_t e = tail + first; e < count; e += step) dst[e] = src[e];
}

/// Blocks of final_kernel: one row per thread.
template <int NT>
inline index_t pl_final_blocks(index_t rows) {
  return (rows + NT - 1) / NT;
}

/// Level 1: each thread one row (its chunks in order), each block a fixed tree over its rows
/// -> one partial per block. Level 2: the last block to finish (an integer atomic count)
/// combines the partials in block order with a fixed tree and writes the result. The order
/// depends only on row and chunk indices, never on which block finishes last.
/// The first `final_blocks` blocks do that; any blocks after them run the flat finish copy of
/// `copy_count` gradient elements (pl_flat_copy): it needs only the main kernel's error key,
/// so its bandwidth-bound copy overlaps the latency-bound reduction instead of following it
/// as a fifth kernel.
template <int NT, class LP, class T, class L>
__global__ void __launch_bounds__(NT) pl_final_kernel(pl_params<LP, T, L> p, index_t final_blocks, index_t copy_count) {
  if (index_t(blockIdx.x) >= final_blocks) {
    pl_flat_copy<NT>(p, copy_count, index_t(blockIdx.x) - final_blocks, index_t(gridDim.x) - final_blocks);
    return;
  }
  __shared__ detail::shared_array<pl_stats, NT / 32> s_st;
  __shared__ detail::shared_array<pl_loss_partial, NT / 32> s_lp;
  __shared__ bool s_last;
  const policy_loss_config& cfg = p.cfg;
  const bool bad_offsets = pl_bad_offsets(p);
  const index_t B = bad_offsets ? 0 : p.chunks.rows;  // bad offsets: no row is read
  const pl_totals tt = *p.totals;
  const aggregation kl_mode = detail::kl_aggregation_of(cfg);
  const bool seq_mode = p.seq_ratio || p.seq_kl;
  const bool through = p.seq_ratio && cfg.sequence_gradient == sequence_ratio_gradient::through_mean;
  pl_stats st{};
  pl_loss_partial lp{};
  const index_t i = index_t(blockIdx.x) * NT + index_t(threadIdx.x);
  if (i < B) {
    const index_t len = p.layout.row_len(i);
    const index_t c0 = chunk_begin_of_row(p.layout, p.chunks, i), c1 = chunk_end_of_row(p.layout, p.chunks, i);
    const pl_row row = pl_row_of(p, tt, i);
    const long long ni = row.n;
    if (len > 0) {
      lp.masked += len - ni;
      if (seq_mode) {
        // the prep pass counted the row's non-finite tokens
        for (index_t c = c0; c < c1; ++c) st.nonfinite += p.prep[c].nonfinite;
      }
      if (seq_mode && row.bad && p.skip) {
        lp.skipped += ni;
        if (through) p.total[i] = 0.0;
      } else {
        pl_stats rs{};
        // unrolled: a long row's chunk statistics are loaded together, not one latency each
#pragma unroll 4
        for (index_t c = c0; c < c1; ++c) rs = pl_stats_op{}(rs, p.cstats[c]);
        const double S = rs.s_pol;
        lp.loss_pol += row.w * S;
        if (ni > 0) lp.parts_pol += cfg.agg == aggregation::seq_mean_token_mean ? S / double(ni) : S;
        if (p.use_kl && !p.seq_kl) {
          const double Kv = rs.s_kl;
          lp.loss_kl += row.wk * Kv;
          if (ni > 0) lp.parts_kl += kl_mode == aggregation::seq_mean_token_mean ? Kv / double(ni) : Kv;
        }
        if (p.seq_kl && ni > 0) {
          const double wseq =
              detail::aggregation_weight(aggregation::seq_mean_token_sum, p.norm.scale, tt.div_seq, ni);
          lp.loss_kl += wseq * row.kl_value;
          lp.parts_kl += row.kl_value;
          lp.klsum += row.kl_value;
          ++lp.kl_count;
          lp.kl_clamped += row.kl_clamped;
        }
        if (through) {
          const double nd = ni > 0 ? double(ni) : 1.0;
          p.total[i] = detail::times_sensitivity(rs.sens, row.d_log_ratio / nd);
        }
        st = pl_stats_op{}(st, rs);
      }
    } else if (through) {
      p.total[i] = 0.0;
    }
  }
  st = block_reduce_fixed<NT>(st, pl_stats_op{}, &s_st[0]);
  lp = block_reduce_fixed<NT>(lp, pl_loss_partial_op{}, &s_lp[0]);
  if (threadIdx.x == 0) {
    p.fpart[blockIdx.x] = pl_final_partial{st, lp};
    s_last = pl_arrive(p.done, final_blocks);
  }
  __syncthreads();
  if (!s_last) return;
  __threadfence();
  st = pl_stats{};
  lp = pl_loss_partial{};
  for (index_t b = threadIdx.x; b < final_blocks; b += NT) {
    const pl_final_partial fp = load_cg_struct(p.fpart + b);
    st = pl_stats_op{}(st, fp.st);
    lp = pl_loss_partial_op{}(lp, fp.lp);
  }
  st = block_reduce_fixed<NT>(st, pl_stats_op{}, &s_st[0]);
  lp = block_reduce_fixed<NT>(lp, pl_loss_partial_op{}, &s_lp[0]);
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
    const index_t ei = static_cast<index_t>(key >> 34);
    const index_t t = static_cast<index_t>((key >> 2) & 0xffffffffull);
    const int kind = static_cast<int>(key & 3u);
    double v = 0.0;
    if (kind == 0) v = to_double(p.layout.row_ptr(p.lp, ei)[t]);
    else if (kind == 1) v = to_double(p.layout.row_ptr(p.lo, ei)[t]);
    else if (kind == 2) v = to_double(p.layout.row_ptr(p.lr, ei)[t]);
    else v = double(p.layout.row_ptr(p.adv, ei)[t]);
    out.err_value = v;
    out.err_flat = detail::flat_index(p.layout, ei, t);
  }
  pl_publish(p, out, bad_offsets);
}

/// Asynchronous mode, empty batch (no other kernel runs): publishes the default result, or
/// the packed offsets' error. One thread.
template <class LP, class T, class L>
__global__ void pl_publish_empty_kernel(pl_params<LP, T, L> p) {
  pl_publish(p, pl_result{}, pl_bad_offsets(p));
}

// ---- finish: scratch gradient -> output -------------------------------------------------------

/// Enqueued right after final_kernel, before the host reads the result: every block first reads
/// the error key (and the packed offsets' key of the asynchronous mode) and writes nothing when
/// an error was found, so a throw or a deferred error leaves the output untouched without a
/// host round trip between the passes.
template <int NT, int K, bool HasMask, class G, class LP, class T, class L>
__global__ void __launch_bounds__(NT) pl_finish_kernel(pl_params<LP, T, L> p) {
  using Mask = typename L::mask_type;
  if (*p.err != no_error_key || pl_bad_offsets(p)) return;
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

/// Threads of the single-block plan kernel.
inline constexpr int pl_plan_threads = 1024;
/// Threads per block of the final kernel.
inline constexpr int pl_final_threads = 64;

/// Enqueues count, plan (not in the fused mode), main, final and (when the gradient goes
/// through scratch) finish. `*p.err`, `*p.done` and, in the fused mode, every tally must be
/// ~0 (one memset of 0xff).
/// Whether a gradient waiting in scratch can take the flat finish (see pl_flat_copy).
template <class LP, class T, class L>
bool pl_flat_finish_ok(const pl_params<LP, T, L>& p) {
  if (p.gbuf_double) return false;  // GSPO through_mean: double scratch and per-row totals
  if constexpr (L::is_packed)
    return p.grad.stride == 1;
  else
    return p.grad.rows <= 1 || p.grad.row_stride == p.grad.cols;
}

template <int NT, int K, class LP, class T, class L>
cudaError_t launch_policy_loss(const pl_params<LP, T, L>& p, cudaStream_t stream) {
  const index_t grid = p.chunks.bound;
  const bool has_mask = !p.layout.mask.is_null();
  const bool prep = p.seq_ratio || p.seq_kl;
  constexpr bool narrow = !std::is_same_v<LP, double> && !std::is_same_v<T, double>;
  const bool use_float = narrow && pl_float_math_ok(p.cfg);
  auto run = [&](auto hm, auto rr) -> cudaError_t {
    constexpr bool HM = decltype(hm)::value;
    constexpr bool RR = decltype(rr)::value;
    if (grid > 0) {
      if (prep) {
        pl_prep_kernel<NT, K, HM><<<unsigned(grid), NT, 0, stream>>>(p);
        POLO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
      } else {
        POLO_CUDA_RETURN_IF_ERROR(launch_pl_count(p, stream));
      }
    }
    if (!p.fused || grid == 0) {  // fused: the count kernel's last block planned
      pl_plan_kernel<pl_plan_threads><<<1, pl_plan_threads, 0, stream>>>(p);
      POLO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
    }
    if (grid > 0) {
      auto main = [&](auto f) {
        using F = decltype(f);
        constexpr bool float_math = std::is_same_v<F, float>;  // the specialization's only scalar
        if (p.gbuf_double)
          pl_main_kernel<NT, K, HM, RR, double, F, false><<<unsigned(grid), NT, 0, stream>>>(p);
        else if (float_math && p.fused && pl_common_config(p.cfg, p.seq_ratio, p.seq_kl, p.use_kl))
          pl_main_kernel<NT, K, HM, RR, T, F, float_math><<<unsigned(grid), NT, 0, stream>>>(p);
        else
          pl_main_kernel<NT, K, HM, RR, T, F, false><<<unsigned(grid), NT, 0, stream>>>(p);
      };
      if constexpr (narrow) {
        if (use_float)
          main(float{});
        else
          main(double{});
      } else {
        main(double{});
      }
      POLO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
    }
    // the final kernel, with the flat finish copy in extra blocks where it applies
    const index_t fblocks = pl_final_blocks<pl_final_threads>(p.chunks.rows);
    const bool flat = !p.direct && grid > 0 && pl_flat_finish_ok(p);
    index_t count = 0, cblocks = 0;
    if (flat) {
      if constexpr (L::is_packed)
        count = p.layout.tokens;
      else
        count = p.grad.rows * p.grad.cols;
      const index_t want = (count / index_t(16 / sizeof(T)) + pl_final_threads - 1) / pl_final_threads;
      cblocks = want < 1 ? 1 : (want > pl_flat_blocks ? pl_flat_blocks : want);
    }
    pl_final_kernel<pl_final_threads>
        <<<unsigned(fblocks + cblocks), pl_final_threads, 0, stream>>>(p, fblocks, count);
    POLO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
    if (!flat && !p.direct && grid > 0) {
      if (p.gbuf_double)
        pl_finish_kernel<NT, K, HM, double><<<unsigned(grid), NT, 0, stream>>>(p);
      else
        pl_finish_kernel<NT, K, HM, T><<<unsigned(grid), NT, 0, stream>>>(p);
      POLO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
    }
    return cudaSuccess;
  };
  if (has_mask)
    return p.read_ref ? run(std::true_type{}, std::true_type{}) : run(std::true_type{}, std::false_type{});
  return p.read_ref ? run(std::false_type{}, std::true_type{}) : run(std::false_type{}, std::false_type{});
}

}  // namespace polo::kernels
