// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
#pragma once
/// \file
/// CUDA implementation of <polo/policy_loss.hpp>: `detail::backend_impl<polo::cuda,
/// detail::policy_loss_tag>` (policy_loss and count_tokens), the scratch-size query, and a
/// CUDA-only overload taking log-probs in reduced precision.
///
/// Every per-token formula is the backend-neutral one (the same POLO_HD_INLINE functions the
/// CPU backend calls), evaluated in float for float/bf16/half inputs (when the options bound
/// every exponential inside float's range) and in double otherwise, with double sums; the
/// order of long sums differs from the CPU's (fixed warp and block trees instead of one loop
/// per row). Results agree with the CPU backend to the rounding of the input type and are
/// bitwise identical run to run. Algorithm and bytes: cuda/polo/kernels/policy_loss.cuh.
///
/// Synchronization: by default policy_loss returns the loss by value, so it synchronizes the
/// tag's stream once (after the final reduction; a packed layout adds one after the device
/// check of its offsets). Under token_nonfinite_policy::error, and for GSPO's through_mean
/// gradient, the gradient is computed into scratch and copied out by a kernel enqueued before
/// that read-back, which writes nothing when the checks found a non-finite input, so a throw
/// leaves `grad_logp` untouched; under ::skip (and no through_mean) it is written straight to
/// `grad_logp` by the one pass over the inputs. With `be.result` and `be.deferred_errors` set
/// (docs/cuda.md, "Statistics without a host synchronization") it never synchronizes: the
/// packed offsets are checked on the device (an error stops every kernel before it reads a
/// row, so nothing is written), the final kernel publishes the whole `policy_loss_result`
/// (loss, parts and statistics, bitwise the synchronous call's) into `*be.result` or the first
/// error into `be.deferred_errors` (the synchronous call's exception, thrown by
/// polo::cuda_check), and the call returns `policy_loss_result{}`. Both overloads, every
/// option. count_tokens stays synchronous and ignores `be.result`.
///
/// ## Log-probs in bf16 or half (CUDA only)
///
///     polo::policy_loss(be, layout, logp, logp_old, logp_ref, advantages, grad_logp, cfg, norm)
///
/// with `logp`, `logp_old`, `logp_ref` as `view<const __nv_bfloat16, R, device_space>` (or
/// `__half`, or float) and `advantages`, `grad_logp` as float views: the log-probs are read in
/// their own precision (2 bytes per token each) and widened exactly to float; everything after
/// that is the same arithmetic as for float inputs, and the gradient is written in float. This
/// is the layout of a bf16 trainer's log-prob tensors; include <cuda_bf16.h> / <cuda_fp16.h>
/// first.

#include <cuda_runtime.h>

#include <cstddef>
#include <string>
#include <type_traits>

#include "polo/core/backend.hpp"
#include "polo/core/error.hpp"
#include "polo/core/layout.hpp"
#include "polo/core/view.hpp"
#include "polo/detail/async_result.cuh"
#include "polo/detail/launch.cuh"
#include "polo/detail/status.cuh"
#include "polo/detail/workspace.cuh"
#include "polo/gae.cuh"  // packed offsets check, chunk table
#include "polo/kernels/policy_loss.cuh"
#include "polo/policy_loss.hpp"

namespace polo::detail {

/// Tokens per thread of the policy-loss kernels.
inline constexpr int pl_items = POLO_CUDA_PL_ITEMS;

template <TokenLayout L>
int pl_threads(const L& layout) {
  const index_t B = layout.num_seqs();
  index_t typical = 0;
  if constexpr (L::is_packed)
    typical = B > 0 ? (layout.tokens + B - 1) / B : 0;
  else
    typical = layout.seq_len;
  if (typical <= 32 * pl_items) return 32;
  if (typical <= 64 * pl_items) return 64;
  return 256;
}

/// Flat extent of the scratch gradient: B*T (padded) or N (packed).
template <TokenLayout L>
index_t pl_flat_extent(const L& layout) {
  if constexpr (L::is_packed)
    return layout.tokens;
  else
    return layout.batch * layout.seq_len;
}

/// Words of the counters that start at ~0: the error key, the done count, the fused mode's
/// tallies (3 + B).
inline index_t pl_reset_words(index_t B) { return 2 + (3 + B); }

struct pl_regions {
  /// [pl_reset_words(B) + 1]: the counters set to ~0 by one memset (pl_reset_words), then the
  /// packed offsets' key (asynchronous mode; written by its check before that memset)
  unsigned long long* err = nullptr;
  index_t reset_words = 0;
  kernels::pl_final_partial* fpart = nullptr;
  result_slot<policy_loss_result>* slot = nullptr;
  kernels::pl_totals* totals = nullptr;
  kernels::pl_chunk_prep* prep = nullptr;
  long long* ccount = nullptr;
  kernels::pl_stats* cstats = nullptr;
  kernels::pl_row* rows = nullptr;
  double* total = nullptr;
  void* gbuf = nullptr;
  index_t* cnt = nullptr;
  index_t* start = nullptr;
  void* temp = nullptr;
  std::size_t temp_bytes = 0;
};

/// gbuf element size: 0 (direct), sizeof(T), or 8 (GSPO through_mean).
template <class T>
std::size_t pl_gbuf_elem(const policy_loss_config& c) {
  const bool through = c.level == ratio_level::sequence && c.sequence_gradient == sequence_ratio_gradient::through_mean;
  if (through) return sizeof(double);
  if (c.nonfinite == token_nonfinite_policy::error) return sizeof(T);
  return 0;
}

template <class T, TokenLayout L>
pl_regions take_pl_regions(scratch_plan& sp, const L& layout, const policy_loss_config& c, bool with_grad) {
  const int S = pl_threads(layout) * pl_items;
  const index_t B = layout.num_seqs();
  const index_t bound = scan_chunk_bound(layout, S);
  pl_regions r;
  r.reset_words = pl_reset_words(B);
  r.err = sp.take<unsigned long long>(r.reset_words + 1);
  r.slot = sp.take<result_slot<policy_loss_result>>(1);
  r.totals = sp.take<kernels::pl_totals>(1);
  r.prep = sp.take<kernels::pl_chunk_prep>(uses_ratio_level_sequence(c) || uses_sequence_kl(c) ? bound : 0);
  r.ccount = sp.take<long long>(bound);
  r.rows = sp.take<kernels::pl_row>(B);
  if (with_grad) {
    r.cstats = sp.take<kernels::pl_stats>(bound);
    r.fpart = sp.take<kernels::pl_final_partial>(kernels::pl_final_blocks<kernels::pl_final_threads>(B));
    r.total = sp.take<double>(B);
    const std::size_t ge = pl_gbuf_elem<T>(c);
    if (ge > 0) r.gbuf = sp.take<unsigned char>(pl_flat_extent(layout) * static_cast<index_t>(ge));
  }
  if constexpr (L::is_packed) {
    r.cnt = sp.take<index_t>(B + 1);
    r.start = sp.take<index_t>(B + 1);
    r.temp_bytes = kernels::chunk_scan_temp_bytes(B);
    r.temp = sp.take<unsigned char>(static_cast<index_t>(r.temp_bytes));
  }
  return r;
}

template <class T, TokenLayout L>
std::size_t pl_scratch_bytes(const L& layout, const policy_loss_config& c, bool with_grad) {
  scratch_plan sp;
  (void)take_pl_regions<T>(sp, layout, c, with_grad);
  return sp.bytes();
}

/// Sets up geometry and scratch pointers, checks packed offsets: synchronous mode, on the
/// host (one synchronization, throws); asynchronous mode, on the device (p.off_key, read by
/// every kernel).
template <class LP, class T, TokenLayout L>
void pl_prepare(const cuda& be, const char* fn, kernels::pl_params<LP, T, L>& p, const pl_regions& r, bool async) {
  check_scan_limits(fn, p.layout);
  if (!async) {
    check_packed_offsets_device(be, fn, p.layout, r.err);
  } else if constexpr (L::is_packed) {
    POLO_CUDA_TRY(kernels::launch_packed_offsets_check(p.layout.offsets.data, p.layout.offsets.stride,
                                                       p.layout.num_seqs(), p.layout.tokens, r.err + r.reset_words,
                                                       stream_of(be)));
    p.off_key = r.err + r.reset_words;
  }
  const int S = pl_threads(p.layout) * pl_items;
  p.chunks.rows = p.layout.num_seqs();
  p.chunks.S = S;
  p.chunks.bound = scan_chunk_bound(p.layout, S);
  if constexpr (L::is_packed) {
    if (p.chunks.rows > 0)
      POLO_CUDA_TRY(kernels::launch_packed_chunk_table(p.layout.offsets.data, p.layout.offsets.stride, p.chunks.rows,
                                                       S, r.cnt, r.start, r.temp, r.temp_bytes, stream_of(be)));
    p.chunks.start = r.start;
  } else {
    p.chunks.per_row = p.layout.seq_len > 0 ? (p.layout.seq_len + S - 1) / S : 0;
  }
  p.err = r.err;
  p.done = r.err + 1;
  p.tally = r.err + 2;
  p.fpart = r.fpart;
  p.target = make_result_target(be, r.slot, async);
  p.totals = r.totals;
  p.prep = r.prep;
  p.ccount = r.ccount;
  p.rows = r.rows;
  p.cstats = r.cstats;
  p.total = r.total;
  p.gbuf = r.gbuf;
  const index_t words = p.fused ? r.reset_words : 2;  // the tallies only where the count kernel adds to them
  POLO_CUDA_TRY(cudaMemsetAsync(r.err, 0xff, static_cast<std::size_t>(words) * sizeof(unsigned long long),
                                stream_of(be)));
}

template <int NT, class F>
decltype(auto) pl_dispatch_threads(int nt, F&& f) {
  switch (nt) {
    case 32: return f(std::integral_constant<int, 32>{});
    case 64: return f(std::integral_constant<int, 64>{});
    default: return f(std::integral_constant<int, NT>{});
  }
}

static_assert(std::is_trivially_copyable_v<policy_loss_result> && alignof(policy_loss_result) <= 8,
              "policy_loss_result is published to device memory by the asynchronous mode");

/// The policy loss for log-prob element type LP and advantage/gradient type T. Synchronous
/// mode: one read-back of the published result (throws its error). Asynchronous mode
/// (`be.result` set): no synchronization, returns policy_loss_result{}.
template <class LP, class T, TokenLayout L, int R>
policy_loss_result cuda_policy_loss(const cuda& be, const L& layout, view<const LP, R, device_space> logp,
                                    view<const LP, R, device_space> logp_old, view<const LP, R, device_space> logp_ref,
                                    view<const T, R, device_space> adv, view<T, R, device_space> grad,
                                    const policy_loss_config& c, const normalizers& norm) {
  constexpr const char* fn = "policy_loss";
  const bool async = async_result_mode(be, fn);
  const cudaStream_t stream = stream_of(be);
  kernels::pl_params<LP, T, L> p;
  p.layout = layout;
  p.lp = logp;
  p.lo = logp_old;
  p.lr = logp_ref;
  p.adv = adv;
  p.grad = grad;
  p.cfg = c;
  p.fc = detail::basic_token_consts<float>(c);
  p.dc = detail::basic_token_consts<double>(c);
  p.norm = norm;
  p.use_kl = uses_kl(c);
  p.seq_ratio = uses_ratio_level_sequence(c);
  p.seq_kl = uses_sequence_kl(c);
  p.read_ref = p.use_kl && !logp_ref.is_null();
  p.skip = c.nonfinite == token_nonfinite_policy::skip;
  const std::size_t ge = pl_gbuf_elem<T>(c);
  p.direct = ge == 0;
  p.gbuf_double = ge == sizeof(double) && p.seq_ratio;
  p.fused = kernels::pl_fused_ok(p.seq_ratio, p.seq_kl);

  scratch ws(be, pl_scratch_bytes<T>(layout, c, true), fn);
  scratch_plan sp(ws.data());
  const pl_regions r = take_pl_regions<T>(sp, layout, c, true);
  pl_prepare(be, fn, p, r, async);
  if (!(p.seq_ratio && c.sequence_gradient == sequence_ratio_gradient::through_mean)) p.total = nullptr;
  if (p.chunks.rows == 0) {
    if (async) {
      kernels::pl_publish_empty_kernel<<<1, 1, 0, stream>>>(p);
      POLO_CUDA_TRY(cudaGetLastError());
    }
    return policy_loss_result{};
  }
  const int nt = pl_threads(layout);
  POLO_CUDA_TRY(pl_dispatch_threads<256>(
      nt, [&](auto v) { return kernels::launch_policy_loss<decltype(v)::value, pl_items>(p, stream); }));
  return finish(be, p.target);
}

template <>
struct backend_impl<cuda, policy_loss_tag> {
  /// See <polo/policy_loss.hpp>. Reads the mask once; one synchronization (`be.result` ignored).
  template <TokenLayout L>
  static token_counts count_tokens(const cuda& be, const L& layout) {
    constexpr const char* fn = "count_tokens";
    kernels::pl_params<float, float, L> p;
    p.layout = layout;
    policy_loss_config c;
    scratch ws(be, pl_scratch_bytes<float>(layout, c, false), fn);
    scratch_plan sp(ws.data());
    const pl_regions r = take_pl_regions<float>(sp, layout, c, false);
    pl_prepare(be, fn, p, r, false);
    token_counts out;
    if (p.chunks.rows == 0) return out;
    const cudaStream_t stream = stream_of(be);
    POLO_CUDA_TRY(kernels::launch_pl_count(p, stream));
    kernels::pl_plan_kernel<kernels::pl_plan_threads><<<1, kernels::pl_plan_threads, 0, stream>>>(p);
    POLO_CUDA_TRY(cudaGetLastError());
    kernels::pl_totals t;
    read_back(be, &t, r.totals, sizeof t);
    out.tokens = t.tokens;
    out.sequences = t.sequences;
    return out;
  }

  /// See <polo/policy_loss.hpp>. Scratch: policy_loss_workspace_bytes. One synchronization (two
  /// for a packed layout); none with `be.result` (asynchronous mode: the result, a
  /// `policy_loss_result` in 8-byte aligned device memory, is published there by the stream).
  template <TokenLayout L, class T, int R>
  static policy_loss_result policy_loss(const cuda& be, const L& layout, view<const T, R, device_space> logp,
                                        view<const T, R, device_space> logp_old,
                                        view<const T, R, device_space> logp_ref, view<const T, R, device_space> adv,
                                        view<T, R, device_space> grad, const policy_loss_config& c,
                                        const normalizers& norm) {
    return cuda_policy_loss<T, T>(be, layout, logp, logp_old, logp_ref, adv, grad, c, norm);
  }
};

}  // namespace polo::detail

namespace polo {

/// Bytes of scratch that `policy_loss(be, layout, ...)` with gradient type T and options `cfg`
/// takes on the CUDA backend (the size a caller-provided `polo::cuda::workspace` needs): about
/// 200 bytes per chunk of 2048 tokens and 100 per sequence, plus sizeof(T) per token under
/// token_nonfinite_policy::error (8 per token for GSPO's through_mean), where the gradient
/// waits in scratch until the checks have passed. Host-only.
template <class T, TokenLayout L>
std::size_t policy_loss_workspace_bytes(const cuda&, const L& layout, const policy_loss_config& cfg = {}) {
  return detail::pl_scratch_bytes<T>(layout, cfg, true);
}

/// The policy loss with log-probs in reduced precision (CUDA only; see the file comment):
/// `LP` is __nv_bfloat16, __half or float; advantages and the gradient are float. Same
/// validation, semantics and statistics as polo::policy_loss.
template <TokenLayout L, class LP, int R>
  requires(!std::is_same_v<LP, float> && !std::is_same_v<LP, double>)
policy_loss_result policy_loss(const cuda& be, const L& layout, view<const LP, R, device_space> logp,
                               view<const LP, R, device_space> logp_old, view<const LP, R, device_space> logp_ref,
                               view<const float, R, device_space> advantages, view<float, R, device_space> grad_logp,
                               const policy_loss_config& cfg = {}, const normalizers& norm = {}) {
  static_assert(std::is_same_v<view<float, R, device_space>, token_tensor<L, float>>,
                "polo::policy_loss: views must match the layout (rank 2 for padded, rank 1 for packed)");
  static_assert(sizeof(LP) == 2, "polo::policy_loss: reduced-precision log-probs must be __nv_bfloat16 or __half");
  constexpr const char* fn = "policy_loss";
  layout.check(fn);
  layout.check_tensor(fn, "logp", logp);
  layout.check_tensor(fn, "logp_old", logp_old);
  if (!logp_ref.is_null())
    layout.check_tensor(fn, "logp_ref", logp_ref);
  else if (cfg.kl_coef != 0.0 && logp.size() > 0)
    detail::throw_shape(fn, "logp_ref", "null",
                        "the layout's token tensor (kl_coef = " + detail::value_str(cfg.kl_coef) +
                            " needs reference log-probs)");
  layout.check_tensor(fn, "advantages", advantages);
  layout.check_tensor(fn, "grad_logp", grad_logp);
  detail::check_policy_loss_config(fn, cfg);
  detail::check_normalizers(fn, cfg.agg, norm);
  detail::require_disjoint(fn, "grad_logp", grad_logp, "logp", logp);
  detail::require_disjoint(fn, "grad_logp", grad_logp, "logp_old", logp_old);
  detail::require_disjoint(fn, "grad_logp", grad_logp, "logp_ref", logp_ref);
  detail::require_disjoint(fn, "grad_logp", grad_logp, "advantages", advantages);
  return detail::cuda_policy_loss<LP, float>(be, layout, logp, logp_old, logp_ref, advantages, grad_logp, cfg, norm);
}

}  // namespace polo
