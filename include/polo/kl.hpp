// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
#pragma once
/// \file
/// KL estimators between the policy and a reference policy, from per-token log-probs: the
/// options, the scalar math (value and derivative with respect to the policy's log-prob, on the
/// host and in CUDA kernels), and the reward-shaping entry point `kl_penalized_rewards` (PPO's
/// r_t - beta*KL_t). The same estimators enter the policy loss as a loss term through
/// `policy_loss_config::kl` (<polo/policy_loss.hpp>). The CPU implementation of the entry point
/// is in <polo/cpu/kl.hpp>. Semantics page: docs/policy_loss.md.
///
/// ## The estimators (SEMANTICS.md 2.6)
/// With d = logp - logp_ref (a sample of log(pi/pi_ref) under pi), each estimator k(d) targets
/// KL(pi || pi_ref):
///
///     k1(d)  = d                      dk/dd = 1
///     abs(d) = |d|                    dk/dd = sign(d)   (0 at d = 0, as torch.abs)
///     k2(d)  = d^2 / 2                dk/dd = d
///     k3(d)  = e^(-d) + d - 1         dk/dd = 1 - e^(-d)   (computed as expm1(-d) + d)
///
/// Gradient facts: on-policy the gradient of k1 has zero expectation; the gradient of k2 is
/// unbiased for the reverse KL; the gradient of k3, (1 - e^(-d)), has the expectation of the
/// *forward* KL's gradient, not the reverse one. Two fixes exist and both are options:
/// `straight_through` (verl's `k3+`: value of k3, gradient of k2) and `kl_weight::ratio`
/// (TRL `use_bias_correction_kl`, slime `use_unbiased_kl`: rho*k3, whose gradient rho*(k3+k3')
/// is rho*d, the importance-weighted k2 gradient).
///
/// ## Clamps, weights and their gradients
/// Per token, in this order:
///
///     x  = clamp(d, -input_clamp, +input_clamp)              a = [|d| <= input_clamp]
///     k  = k(x),  k' = dk/dd(x) * a
///     weight none:            v = k         g = k'
///     weight ratio_detached:  v = rho*k     g = rho*k'                  (rho held constant)
///     weight ratio:           v = rho*k     g = rho*k' + k*a * drho     (drho = d rho/d logp)
///     weight score_function:  v = k         g = k' + k*a                (NeMo-RL: k times
///                                                                       e^(logp - sg logp))
///     output clamp:           if |v| > output_clamp: v = +-output_clamp, g = 0
///     straight_through (X+):  v as above, g = d (the k2 gradient, unclamped, whatever the clamps)
///
/// A clamp is active only strictly outside its bounds; on a bound the value passes and so does
/// the gradient (torch.clamp's convention). **The output clamp zeroes the gradient wherever it is
/// active**: with verl's and NeMo-RL's `k3` output clamp of 10, a token with
/// log(pi_ref/pi) > 2.6 gets no KL gradient at all, exactly where the penalty should pull
/// hardest (SEMANTICS.md 0.5). polo's default has no output clamp. The weight's own gradient
/// term (k*a*drho, k*a) is dropped where the input clamp is active, as NeMo-RL does.
///
/// rho is the importance ratio pi/pi_old the policy objective uses (the token ratio, or the
/// sequence ratio under `ratio_level::sequence`), before any delta cap. `kl_weight::ratio`
/// differentiates through it, as TRL and slime do (they multiply by the live ratio);
/// `ratio_detached` holds it constant.
///
/// ## Sequence level
/// `kl_level::sequence_sum` / `sequence_mean` apply the estimator once per sequence i to
/// D_i = sum_t m_t d_t (or D_i / n_i), with the same clamps; every valid token u of the sequence
/// gets the gradient g(D_i) * (1 or 1/n_i). Only `kl_weight::none` is defined at sequence level.
///
/// ## Defaults (polo's own)
/// k3 (the estimator GRPO users expect, non-negative), input clamp 20 (e^20 ~ 4.9e8 keeps k3
/// finite for any finite log-prob difference), **no output clamp** (see above), no weight, no
/// straight-through, token level.

#include <cmath>
#include <concepts>
#include <cstdint>
#include <limits>
#include <utility>
#include <string>
#include <type_traits>

#include "polo/core/backend.hpp"
#include "polo/core/config.hpp"
#include "polo/core/error.hpp"
#include "polo/core/math.hpp"
#include "polo/core/layout.hpp"
#include "polo/core/math.hpp"
#include "polo/core/reduce.hpp"
#include "polo/core/view.hpp"

namespace polo {

/// A bound that never binds (+infinity): the value that disables a clamp, a dual clip or a
/// delta cap in polo's loss and KL options.
inline constexpr double unbounded = std::numeric_limits<double>::infinity();

/// Which per-sample KL estimator (see the file comment for the formulas).
enum class kl_estimator : unsigned char {
  k1,   ///< d (verl `kl`/`k1`, OpenRLHF `k1`, NeMo-RL `k1`)
  abs,  ///< |d| (verl `abs`)
  k2,   ///< d^2/2 (verl `mse`/`k2`, OpenRLHF `k2`, NeMo-RL `k2`)
  k3,   ///< e^(-d) + d - 1 (verl `low_var_kl`/`k3`, TRL, OpenRLHF `k3`, NeMo-RL `k3`)
};

/// Where the estimator is applied.
enum class kl_level : unsigned char {
  token,          ///< per token, to d_t
  sequence_sum,   ///< once per sequence, to sum_t m_t d_t
  sequence_mean,  ///< once per sequence, to sum_t m_t d_t / n_i
};

/// What multiplies the estimator (token level only; see the file comment).
enum class kl_weight : unsigned char {
  none,            ///< v = k
  ratio,           ///< v = rho*k, differentiated through rho (TRL use_bias_correction_kl, slime use_unbiased_kl)
  ratio_detached,  ///< v = sg(rho)*k
  score_function,  ///< v = e^(logp - sg logp) * k: value k, gradient k' + k (NeMo-RL default)
};

/// Options of a KL estimator. Defaults are polo's own (see the file comment).
struct kl_config {
  kl_estimator estimator = kl_estimator::k3;
  /// verl's `X+`: forward value of the estimator, gradient of k2 (= d, unclamped).
  bool straight_through = false;
  kl_level level = kl_level::token;
  kl_weight weight = kl_weight::none;
  /// |d| clamp before the estimator (> 0; `polo::unbounded` disables it).
  double input_clamp = 20.0;
  /// |value| clamp after the estimator and weight (> 0; `polo::unbounded` disables it). Zeroes
  /// the gradient wherever it is active.
  double output_clamp = unbounded;
};

namespace presets {
/// verl `low_var_kl` (= `k3`): input clamp 20, output clamp 10 (verl/trainer/ppo/core_algos.py).
namespace verl {
inline constexpr kl_config low_var_kl{.estimator = kl_estimator::k3, .input_clamp = 20.0, .output_clamp = 10.0};
/// `low_var_kl+`: the same value, k2 gradient.
inline constexpr kl_config low_var_kl_plus{
    .estimator = kl_estimator::k3, .straight_through = true, .input_clamp = 20.0, .output_clamp = 10.0};
/// `kl` (= `k1`), the reward-shaping default of `apply_kl_penalty`: no clamps.
inline constexpr kl_config kl_k1{.estimator = kl_estimator::k1, .input_clamp = unbounded, .output_clamp = unbounded};
}  // namespace verl
/// TRL GRPOTrainer: k3, no clamps (trl/trainer/grpo_trainer.py).
namespace trl {
inline constexpr kl_config kl_k3{.estimator = kl_estimator::k3, .input_clamp = unbounded, .output_clamp = unbounded};
/// `use_bias_correction_kl=True`: k3 times the live importance ratio.
inline constexpr kl_config kl_k3_bias_corrected{
    .estimator = kl_estimator::k3, .weight = kl_weight::ratio, .input_clamp = unbounded, .output_clamp = unbounded};
}  // namespace trl
/// OpenRLHF: every estimator's output clamped to +-10, no input clamp (openrlhf/models/utils.py).
namespace openrlhf {
inline constexpr kl_config kl_k1{.estimator = kl_estimator::k1, .input_clamp = unbounded, .output_clamp = 10.0};
inline constexpr kl_config kl_k2{.estimator = kl_estimator::k2, .input_clamp = unbounded, .output_clamp = 10.0};
inline constexpr kl_config kl_k3{.estimator = kl_estimator::k3, .input_clamp = unbounded, .output_clamp = 10.0};
}  // namespace openrlhf
/// NeMo-RL ClippedPGLoss: k3, input clamp 20, output clamp 10, weight e^(logp - sg logp)
/// (nemo_rl/algorithms/loss/loss_functions.py, nemo_rl/algorithms/utils.py).
namespace nemo {
inline constexpr kl_config kl_k3{.estimator = kl_estimator::k3,
                                 .weight = kl_weight::score_function,
                                 .input_clamp = 20.0,
                                 .output_clamp = 10.0};
}  // namespace nemo
}  // namespace presets

/// Statistics of one kl_penalized_rewards call; combine calls with +=.
struct kl_reward_stats {
  index_t tokens = 0;           ///< valid tokens
  index_t masked_tokens = 0;    ///< positions with mask 0 (written 0)
  sum_count<double> kl{};       ///< sum of KL_t over valid tokens, and their count
  sum_count<double> clamped{};  ///< valid tokens where the input or output clamp was active
  kl_reward_stats& operator+=(const kl_reward_stats& o) {
    tokens += o.tokens;
    masked_tokens += o.masked_tokens;
    kl += o.kl;
    clamped += o.clamped;
    return *this;
  }
};

namespace detail {

/// Tag of the KL reward-shaping entry in detail::backend_impl.
struct kl_tag {};

/// e^x on the host and in device code (double, and float for the float kernels).
POLO_HD_INLINE double exp_hd(double x) {
#if defined(__CUDA_ARCH__)
  return ::exp(x);
#else
  return std::exp(x);
#endif
}
POLO_HD_INLINE float exp_hd(float x) {
#if defined(__CUDA_ARCH__)
  return ::expf(x);
#else
  return std::exp(x);
#endif
}
/// e^x - 1 without cancellation near 0, on the host and in device code.
POLO_HD_INLINE double expm1_hd(double x) {
#if defined(__CUDA_ARCH__)
  return ::expm1(x);
#else
  return std::expm1(x);
#endif
}
POLO_HD_INLINE float expm1_hd(float x) {
#if defined(__CUDA_ARCH__)
  return ::expm1f(x);
#else
  return std::expm1(x);
#endif
}

/// e^x - 1 in F. Bounded = true is the caller's promise that |x| <= 80: in float it then
/// takes exp_expm1_f32 (<polo/core/math.hpp>: one range reduction, about half the instructions
/// of expm1f, within 1.65 ulp); otherwise, and in double, the library's expm1.
template <class F, bool Bounded = false>
POLO_HD_INLINE F expm1_of(F x) {
  if constexpr (Bounded && std::is_same_v<F, float>) {
    float e = 0.0f, em = 0.0f;
    exp_expm1_f32(x, e, em);
    return em;
  } else {
    return expm1_hd(x);
  }
}

/// k(x) and dk/dx for one estimator, no clamps, in scalar F (double on the CPU). Bounded: as
/// expm1_of (|x| <= 80 guaranteed by the caller, e.g. by an input clamp within 80).
template <class F, bool Bounded = false>
POLO_HD_INLINE void kl_estimate(kl_estimator e, F x, F& k, F& dk) {
  switch (e) {
    case kl_estimator::k1: k = x; dk = F(1); break;
    case kl_estimator::abs: k = x < 0 ? -x : x; dk = x > 0 ? F(1) : (x < 0 ? F(-1) : F(0)); break;
    case kl_estimator::k2: k = F(0.5) * x * x; dk = x; break;
    case kl_estimator::k3: {
      F em = expm1_of<F, Bounded>(-x);  // e^(-x) - 1
      k = em + x;
      dk = -em;
      break;
    }
  }
}

/// One KL term: its value, its derivative with respect to logp at a fixed importance ratio
/// (`grad`), and its derivative with respect to the ratio (`d_ratio`, nonzero only for
/// kl_weight::ratio; the caller multiplies it by d rho / d logp).
template <class F>
struct basic_kl_point {
  F value = F(0);
  F grad = F(0);
  F d_ratio = F(0);
  bool clamped = false;  ///< the input or the output clamp was active
};
using kl_point = basic_kl_point<double>;

/// The options of kl_term with its clamps rounded to F once: a kernel builds it on the host
/// (or once per thread) instead of converting the config's doubles at every token.
template <class F>
struct basic_kl_consts {
  kl_estimator estimator;
  kl_weight weight;
  bool straight_through;
  F input_clamp;
  F output_clamp;
  POLO_HD_INLINE basic_kl_consts() : basic_kl_consts(kl_config{}) {}
  POLO_HD_INLINE explicit basic_kl_consts(const kl_config& c)
      : estimator(c.estimator),
        weight(c.weight),
        straight_through(c.straight_through),
        input_clamp(F(c.input_clamp)),
        output_clamp(F(c.output_clamp)) {}
};

/// The KL term of one token (or of one sequence, with d = D_i and rho = 1) under config `c`,
/// at log-ratio d = logp - logp_ref and importance ratio rho (see the file comment). F is the
/// scalar it computes in (double on the CPU; the clamps of `c` are rounded to F). Bounded =
/// true promises an input clamp within 80 (`c.input_clamp <= 80`), which lets a float k3 take
/// expm1_of's shorter exponential; the formulas are the same.
template <class F, bool Bounded = false>
POLO_HD_INLINE basic_kl_point<F> kl_term(const basic_kl_consts<F>& c, F d, std::type_identity_t<F> rho) {
  basic_kl_point<F> p;
  const F ic = c.input_clamp, oc = c.output_clamp;
  const bool in_active = d < -ic || d > ic;
  const F x = in_active ? (d < 0 ? -ic : ic) : d;
  F k = F(0), dk = F(0);
  kl_estimate<F, Bounded>(c.estimator, x, k, dk);
  const F a = in_active ? F(0) : F(1);
  dk *= a;
  switch (c.weight) {
    case kl_weight::none: p.value = k; p.grad = dk; break;
    case kl_weight::ratio_detached: p.value = rho * k; p.grad = rho * dk; break;
    case kl_weight::ratio: p.value = rho * k; p.grad = rho * dk; p.d_ratio = k * a; break;
    case kl_weight::score_function: p.value = k; p.grad = dk + k * a; break;
  }
  p.clamped = in_active;
  if (p.value < -oc || p.value > oc) {
    p.value = p.value < 0 ? -oc : oc;
    p.grad = F(0);
    p.d_ratio = F(0);
    p.clamped = true;
  }
  if (c.straight_through) {
    p.grad = d;
    p.d_ratio = F(0);
  }
  return p;
}
/// The same from the config itself (its clamps rounded to F here).
template <class F>
POLO_HD_INLINE basic_kl_point<F> kl_term(const kl_config& c, F d, std::type_identity_t<F> rho) {
  return kl_term<F>(basic_kl_consts<F>(c), d, rho);
}

/// [first, last) address range of a view, for the overlap check.
template <class T, class S>
std::pair<std::uintptr_t, std::uintptr_t> byte_range(const view<T, 2, S>& v) {
  auto b = reinterpret_cast<std::uintptr_t>(v.data);
  if (v.empty()) return {b, b};
  return {b, b + sizeof(T) * static_cast<std::size_t>((v.rows - 1) * v.row_stride + v.cols)};
}
template <class T, class S>
std::pair<std::uintptr_t, std::uintptr_t> byte_range(const view<T, 1, S>& v) {
  auto b = reinterpret_cast<std::uintptr_t>(v.data);
  if (v.empty()) return {b, b};
  return {b, b + sizeof(T) * static_cast<std::size_t>((v.n - 1) * v.stride + 1)};
}
template <class V, class W>
void require_disjoint(const char* fn, const char* out_name, const V& out, const char* in_name, const W& in) {
  auto [a0, a1] = byte_range(out);
  auto [b0, b1] = byte_range(in);
  if (a0 < a1 && b0 < b1 && a0 < b1 && b0 < a1)
    throw_shape(fn, out_name, "memory that overlaps argument '" + std::string(in_name) + "'",
                "a separate output buffer (the gradient is written while inputs are still read)");
}

/// Option checks shared by every entry that takes a kl_config.
inline void check_kl_config(const char* fn, const char* prefix, const kl_config& c) {
  std::string p(prefix);
  if (!(c.input_clamp > 0.0))
    throw_config(fn, (p + "input_clamp").c_str(), value_str(c.input_clamp), "a value > 0 (polo::unbounded disables it)");
  if (!(c.output_clamp > 0.0))
    throw_config(fn, (p + "output_clamp").c_str(), value_str(c.output_clamp), "a value > 0 (polo::unbounded disables it)");
  if (c.level != kl_level::token && c.weight != kl_weight::none)
    throw_config(fn, (p + "weight").c_str(), std::to_string(int(c.weight)),
                 "kl_weight::none with a sequence-level KL (importance weights are defined per token)");
  if (c.straight_through && c.weight != kl_weight::none)
    throw_config(fn, (p + "weight").c_str(), std::to_string(int(c.weight)),
                 "kl_weight::none with straight_through (the X+ gradient is the plain k2 gradient)");
}

}  // namespace detail

/// PPO's KL reward shaping: subtracts beta times the KL estimator of the sampling policy against
/// the reference from the per-token rewards (verl `use_kl_in_reward`, OpenRLHF's default, TRL's
/// PPOTrainer):
///
///     out[t] = mask[t] ? rewards[t] - beta * KL(logp_old[t] - logp_ref[t]) : 0
///
/// with KL the token-level value of `kl` (its clamps included; `straight_through` does not
/// change a value). No gradient is involved: these are rewards for GAE or returns.
///
/// \param be        backend tag
/// \param layout    `padded{mask [B,T]}` or `packed{offsets [B+1], N, mask [N]}`
/// \param rewards   per-token rewards of the layout (`[B,T]` or `[N]`)
/// \param logp_old  per-token log-probs of the sampling policy
/// \param logp_ref  per-token log-probs of the reference policy
/// \param out       per-token output; every element is written; may alias `rewards` exactly
///                  (same memory, same strides) and must not otherwise overlap an input
/// \param beta      the KL coefficient (finite)
/// \param kl        estimator options; must be token level with `kl_weight::none`
/// \returns statistics (mean KL, clamp counts), combinable with +=
/// \throws shape_error (shapes, strides, an overlapping output), config_error, value_error
///         (packed offsets), nonfinite_error (a NaN or
///         infinity at a valid position of an input, naming the argument and the flat index).
///         On throw nothing is written.
/// Bytes moved: 3 reads and 1 write of T per token, plus the mask.
template <Backend B, TokenLayout L, class T, int R, class S>
  requires std::same_as<view<T, R, S>, token_tensor<L, T>>
kl_reward_stats kl_penalized_rewards(const B& be, const L& layout, std::type_identity_t<view<const T, R, S>> rewards,
                                     std::type_identity_t<view<const T, R, S>> logp_old,
                                     std::type_identity_t<view<const T, R, S>> logp_ref, view<T, R, S> out,
                                     double beta, const kl_config& kl = {}) {
  static_assert(accepts_space_v<B, S> && accepts_space_v<B, typename L::memory_space>,
                "polo::kl_penalized_rewards: these views live in a memory space the chosen backend cannot read");
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "polo::kl_penalized_rewards: rewards and log-probs must be float or double");
  constexpr const char* fn = "kl_penalized_rewards";
  layout.check(fn);
  layout.check_tensor(fn, "rewards", rewards);
  layout.check_tensor(fn, "logp_old", logp_old);
  layout.check_tensor(fn, "logp_ref", logp_ref);
  layout.check_tensor(fn, "out", out);
  const bool same_as_rewards = static_cast<const void*>(out.data) == static_cast<const void*>(rewards.data) &&
                               detail::byte_range(out) == detail::byte_range(rewards);
  if (!same_as_rewards) detail::require_disjoint(fn, "out", out, "rewards", rewards);
  detail::require_disjoint(fn, "out", out, "logp_old", logp_old);
  detail::require_disjoint(fn, "out", out, "logp_ref", logp_ref);
  if (!detail::is_finite(beta)) detail::throw_config(fn, "beta", detail::value_str(beta), "a finite value");
  detail::check_kl_config(fn, "kl.", kl);
  if (kl.level != kl_level::token)
    detail::throw_config(fn, "kl.level", std::to_string(int(kl.level)),
                         "kl_level::token (a reward penalty is placed per token)");
  if (kl.weight != kl_weight::none)
    detail::throw_config(fn, "kl.weight", std::to_string(int(kl.weight)),
                         "kl_weight::none (rewards carry no gradient to weight)");
  return detail::backend_impl<B, detail::kl_tag>::kl_penalized_rewards(be, layout, rewards, logp_old, logp_ref, out,
                                                                       beta, kl);
}

}  // namespace polo
