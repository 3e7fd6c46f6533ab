// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
#pragma once
/// \file
/// The PPO critic's clipped value loss and its gradient with respect to the values, with every
/// aggregation mode and explicit normalizers (<polo/aggregation.hpp>). Backend-neutral: options,
/// presets, validation and entry points; the CPU implementation is in <polo/cpu/value_loss.hpp>.
///
/// ## The computation
/// At every valid token, with v the critic's new value, v_old the value at rollout time and R
/// the return (the target):
///
///     v_c = max(min(v, v_old + c), v_old − c)      value_clip::clamp_value (verl, TRL)
///         = v_old + clamp(v − v_old, −c, c)        value_clip::clamp_delta (OpenRLHF, AReaL, CleanRL)
///         = v                                      value_clip::none        (NeMo-RL's default)
///     L   = max((v − R)², (v_c − R)²)
///     loss = coef · agg(L)                          (coef = ½ in every peer)
///
/// The two clip forms are the same real function but round differently in float, so v_c (and
/// the clip bounds v_old ± c) are computed in the input type, as the peers compute them; the
/// squares, sums and the gradient run in double.
///
/// **Gradient** (written for every element; 0 at masked positions), w the token's aggregation
/// weight (`detail::aggregation_weight`, which includes `normalizers::scale`):
///
///     a = (v − R)², b = (v_c − R)², k = [v inside the clip interval]   (bounds inclusive)
///     dloss/dv = coef · w · { 2(v − R)                 a > b
///                             2(v_c − R)·k             b > a
///                             (v − R) + (v_c − R)·k    a = b }
///
/// **Kinks** follow PyTorch's autograd of the clamp form, so a polo gradient equals
/// `torch.autograd` on `torch.max(a, b)` with `torch.clamp`: the clamp passes the gradient at
/// both bounds inclusive, and a tie of the max splits the gradient evenly. Inside the interval
/// v_c = v exactly (clamp_value), so a = b and the split sums to the plain 2(v − R). verl's
/// clip written as torch.max(torch.min(...)) would instead give half the gradient when v lands
/// exactly on a bound; polo does not reproduce that measure-zero difference.
///
/// **Split invariance.** With global normalizers (the whole optimizer batch's token or sequence
/// count), the losses and gradients of micro-batches add up to those of the whole batch; the
/// parts (`value_loss_stats::parts`) let a caller all-reduce numerators and counts instead. An
/// all-masked batch (or a divisor of 0) gives loss 0 and gradient 0.
///
/// Non-finite values, old values or returns at valid tokens are reported (nonfinite_error naming
/// the argument and flat index, nothing written); masked positions are never read into a result.

#include <string>
#include <type_traits>

#include "polo/advantages.hpp"  // detail::static_check_space, static_check_real
#include "polo/aggregation.hpp"
#include "polo/core/backend.hpp"
#include "polo/core/error.hpp"
#include "polo/core/layout.hpp"
#include "polo/core/math.hpp"
#include "polo/core/reduce.hpp"
#include "polo/core/view.hpp"

namespace polo {

/// How the new value is clipped around the rollout value.
enum class value_clip : unsigned char {
  none,         ///< no clipping: L = (v − R)²
  clamp_value,  ///< v_c = max(min(v, v_old + c), v_old − c)   (verl, TRL)
  clamp_delta,  ///< v_c = v_old + clamp(v − v_old, −c, c)     (OpenRLHF, AReaL, CleanRL)
};

/// Options of value_loss. Defaults: verl's clip form with c = 0.2 (TRL, CleanRL), token-mean,
/// coef ½.
struct value_loss_config {
  value_clip clip = value_clip::clamp_value;
  double clip_range = 0.2;                    ///< c >= 0
  aggregation agg = aggregation::token_mean;
  double coef = 0.5;                          ///< multiplies agg(L): ½ everywhere; fold vf_coef in here
};

/// Result and statistics of one value_loss call. With global normalizers, `loss` and every
/// sum add across micro-batches and ranks with +=.
struct value_loss_stats {
  double loss = 0.0;                 ///< coef · scale · parts.sum / divisor (0 if the divisor is 0)
  /// Sum-and-count: numerator of the aggregation (Σ L over valid tokens for the token modes and
  /// token_sum_norm; Σ_i mean_t L for seq_mean_token_mean; Σ_i Σ_t L for seq_mean_token_sum)
  /// and this call's count (valid tokens, or non-empty sequences for the seq_mean modes).
  /// All-reduce both, and loss = coef · scale · sum / count (or / C).
  sum_count<double> parts{};
  sum_count<double> clipped{};       ///< tokens where the clipped term is strictly larger / valid tokens
  sum_count<double> squared_error{}; ///< Σ (v − R)² / valid tokens
  index_t tokens = 0;                ///< valid tokens
  index_t sequences = 0;             ///< sequences with at least one valid token

  value_loss_stats& operator+=(const value_loss_stats& o) {
    loss += o.loss;
    parts += o.parts;
    clipped += o.clipped;
    squared_error += o.squared_error;
    tokens += o.tokens;
    sequences += o.sequences;
    return *this;
  }
  /// verl / TRL's vf_clipfrac: fraction of valid tokens whose clipped loss term is larger.
  [[nodiscard]] double clip_fraction() const { return clipped.mean(); }
};

namespace presets {
namespace verl {
/// verl `compute_value_loss`: clip 0.5 (critic.cliprange_value), max/min form, ½·token-mean.
inline constexpr value_loss_config critic{.clip = value_clip::clamp_value,
                                          .clip_range = 0.5,
                                          .agg = aggregation::token_mean,
                                          .coef = 0.5};
}  // namespace verl
namespace openrlhf {
/// OpenRLHF ValueLoss: v_old + clamp(v − v_old, ±0.5), ½·masked mean.
inline constexpr value_loss_config critic{.clip = value_clip::clamp_delta,
                                          .clip_range = 0.5,
                                          .agg = aggregation::token_mean,
                                          .coef = 0.5};
}  // namespace openrlhf
namespace trl {
/// TRL PPOTrainer: torch.clamp(v, v_old ± 0.2) (cliprange_value), ½·masked mean (TRL's mask
/// for the value loss is ~padding_mask_p1, one token longer than the policy's).
inline constexpr value_loss_config critic{.clip = value_clip::clamp_value,
                                          .clip_range = 0.2,
                                          .agg = aggregation::token_mean,
                                          .coef = 0.5};
}  // namespace trl
namespace nemo {
/// NeMo-RL value loss with its default clip None: ½·(v − R)², token-level masked mean.
inline constexpr value_loss_config critic{.clip = value_clip::none,
                                          .clip_range = 0.0,
                                          .agg = aggregation::token_mean,
                                          .coef = 0.5};
}  // namespace nemo
}  // namespace presets

namespace detail {

/// Tag of this primitive family in detail::backend_impl.
struct value_loss_tag {};

inline void check_value_loss_config(const char* fn, const value_loss_config& c) {
  if (unsigned(c.clip) > unsigned(value_clip::clamp_delta))
    throw_config(fn, "clip", std::to_string(unsigned(c.clip)), "a value of polo::value_clip");
  if (!(c.clip_range >= 0.0) || !is_finite(c.clip_range))
    throw_config(fn, "clip_range", value_str(c.clip_range), "a finite value >= 0");
  if (!is_finite(c.coef)) throw_config(fn, "coef", value_str(c.coef), "a finite value");
}

/// Per-token clipped value loss L and its derivative dL/dv (before coef and the aggregation
/// weight). Shared by every backend.
struct value_term {
  double loss = 0.0;
  double grad = 0.0;
  bool clipped = false;  ///< the clipped term is strictly larger
  double sq = 0.0;       ///< (v − R)²
};

/// L = max((v − R)², (v_c − R)²) and dL/dv at one valid token (see the file comment for v_c,
/// the kinks and the tie rule). v_c and the clip bounds are computed in T, as the peers do;
/// the squares and the derivative in double. `vo` is not read when `clip == value_clip::none`.
template <class T>
POLO_HD_INLINE value_term value_loss_term(T v, T vo, T ret, value_clip clip, T c) {
  value_term r;
  const double d = double(v) - double(ret);
  const double a = d * d;
  r.sq = a;
  if (clip == value_clip::none) {
    r.loss = a;
    r.grad = 2.0 * d;
    return r;
  }
  T vc;
  bool inside;
  if (clip == value_clip::clamp_value) {
    const T lo = T(vo - c), hi = T(vo + c);
    vc = max_of(min_of(v, hi), lo);
    inside = lo <= v && v <= hi;
  } else {
    const T delta = T(v - vo);
    inside = -c <= delta && delta <= c;
    vc = T(vo + clamp_keep_nan(delta, T(-c), c));
  }
  const double dc = double(vc) - double(ret);
  const double b = dc * dc;
  const double ga = 2.0 * d;
  const double gc = inside ? 2.0 * dc : 0.0;
  // Written as selects (no data-dependent branches: the larger term is a coin flip per token).
  r.clipped = b > a;
  r.loss = r.clipped ? b : a;
  r.grad = a > b ? ga : (r.clipped ? gc : 0.5 * (ga + gc));
  return r;
}

template <class UV, class UO, class UR, class T>
constexpr void static_check_value_loss_types() {
  static_assert(std::is_same_v<std::remove_const_t<UV>, T> && std::is_same_v<std::remove_const_t<UO>, T> &&
                    std::is_same_v<std::remove_const_t<UR>, T>,
                "polo::value_loss: values, old_values, returns and grad_values must have the same element type");
  static_assert(!std::is_const_v<T>, "polo::value_loss: grad_values must be writable");
  static_check_real<T>();
}

}  // namespace detail

/// Clipped PPO value loss, its statistics and its gradient with respect to the values.
///
///     loss = coef · agg( max((v − R)², (v_c − R)²) )       (see the file comment)
///
/// \param layout      `padded{mask [B,T]}` or `packed{offsets [B+1], N, mask [N]}`
/// \param values      per-token new values v (`[B,T]` or `[N]`), float or double
/// \param old_values  per-token rollout values v_old, same type (read only when clipping)
/// \param returns     per-token targets R, same type
/// \param grad_values per-token output dloss/dv, same type; every element written (0 at masked
///                    positions and everywhere when the divisor is 0); may alias `values`
/// \param cfg         clip form, clip range c, aggregation mode, coef; presets in
///                    polo::presets::{verl,openrlhf,trl,nemo}::critic
/// \param norm        divisors (N_tok, N_seq, C) and scale; see <polo/aggregation.hpp>
/// \returns the loss, its sum-and-count parts, the clip fraction and counts
/// \throws shape_error, config_error; nonfinite_error naming 'values', 'old_values' or
///         'returns' and the flat index of the first non-finite valid input. Nothing written on
///         throw.
/// Bytes moved: 3·sizeof(T) + mask bytes per token read twice (check, compute), sizeof(T)
///              written.
template <Backend B, TokenLayout L, class UV, class UO, class UR, class T>
value_loss_stats value_loss(const B& be, const L& layout, detail::layout_tensor<L, UV> values,
                            detail::layout_tensor<L, UO> old_values, detail::layout_tensor<L, UR> returns,
                            detail::layout_tensor<L, T> grad_values, const value_loss_config& cfg = {},
                            const normalizers& norm = {}) {
  detail::static_check_space<B, typename L::memory_space>();
  detail::static_check_value_loss_types<UV, UO, UR, T>();
  constexpr const char* fn = "value_loss";
  layout.check(fn);
  layout.check_tensor(fn, "values", values);
  layout.check_tensor(fn, "old_values", old_values);
  layout.check_tensor(fn, "returns", returns);
  layout.check_tensor(fn, "grad_values", grad_values);
  detail::check_value_loss_config(fn, cfg);
  detail::check_normalizers(fn, cfg.agg, norm);
  if constexpr (L::is_packed) {
    if constexpr (std::is_same_v<typename L::memory_space, host_space>) layout.check_offsets_host(fn);
  }
  return detail::backend_impl<B, detail::value_loss_tag>::value_loss(
      be, layout, detail::layout_tensor<L, const T>(values), detail::layout_tensor<L, const T>(old_values),
      detail::layout_tensor<L, const T>(returns), grad_values, true, cfg, norm);
}

/// The same loss and statistics without the gradient (evaluation, logging).
/// Bytes moved: 3·sizeof(T) + mask bytes per token read twice; nothing written.
template <Backend B, TokenLayout L, class UV, class UO, class UR>
value_loss_stats value_loss(const B& be, const L& layout, detail::layout_tensor<L, UV> values,
                            detail::layout_tensor<L, UO> old_values, detail::layout_tensor<L, UR> returns,
                            const value_loss_config& cfg = {}, const normalizers& norm = {}) {
  using T = std::remove_const_t<UV>;
  detail::static_check_space<B, typename L::memory_space>();
  detail::static_check_value_loss_types<UV, UO, UR, T>();
  constexpr const char* fn = "value_loss";
  layout.check(fn);
  layout.check_tensor(fn, "values", values);
  layout.check_tensor(fn, "old_values", old_values);
  layout.check_tensor(fn, "returns", returns);
  detail::check_value_loss_config(fn, cfg);
  detail::check_normalizers(fn, cfg.agg, norm);
  if constexpr (L::is_packed) {
    if constexpr (std::is_same_v<typename L::memory_space, host_space>) layout.check_offsets_host(fn);
  }
  return detail::backend_impl<B, detail::value_loss_tag>::value_loss(
      be, layout, detail::layout_tensor<L, const T>(values), detail::layout_tensor<L, const T>(old_values),
      detail::layout_tensor<L, const T>(returns), detail::layout_tensor<L, T>{}, false, cfg, norm);
}

}  // namespace polo
