// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
#pragma once
/// \file
/// The PPO side of advantage estimation: GAE from per-token rewards and critic values,
/// discounted and reverse-cumulative returns, and the critic-free outcome estimators built on
/// them (REINFORCE++, REINFORCE++-baseline, ReMax, OPO). Backend-neutral: options, presets,
/// validation and entry points; the CPU implementation is in <polo/cpu/gae.hpp>. docs/ppo.md
/// has worked examples.
///
/// ## GAE
/// Per sequence, scanning from its last token to its first, with δ the TD error and g the
/// running advantage (both start at 0, and `next` at 0 or at the bootstrap value):
///
///     gae_mask_mode::skip     (verl, NeMo-RL, AReaL: masked positions are skipped)
///         valid t:   δ = r_t + γ·next − v_t;   g ← δ + γλ·g;   next ← v_t;   A_t = g
///         masked t:  nothing changes; the recursion value there is g, the A of the next valid
///                    token to the right (0 if there is none)
///     gae_mask_mode::through  (OpenRLHF, TRL-PPO, slime: the recursion runs through zeros)
///         every t:   r'_t = m_t ? r_t : 0,  v'_t = m_t ? v_t : 0
///                    δ = r'_t + γ·v'_{t+1} − v'_t;  g ← δ + γλ·g;  A_t = g
///                    (v'_{t+1} of the last position is 0, or the bootstrap value)
///     returns   R_t = A_t + v_t (skip) or A_t + v'_t (through)
///
/// The two modes agree on every valid token when each sequence's valid tokens are contiguous
/// (right or left padding: masked positions after the last valid token recurse on zeros in
/// both, those before the first are reached last by the backward scan). They differ on the
/// valid tokens before an interior masked span (multi-turn tool output): skip carries the next
/// valid value and the running advantage across the span without decay, through decays them by
/// (γλ) per masked position and bootstraps the token before the span from 0. Under
/// `masked_fill::recursion` the values written at masked positions also differ (left padding
/// included).
///
/// What is written at masked positions is `masked_fill`: 0 for both outputs (`zero`: NeMo-RL
/// and TRL-PPO zero-fill advantages), or the recursion's own value there (`recursion`: verl's
/// and AReaL's echo of the next valid A with R = A + v_t; OpenRLHF's through-zeros values).
/// Masked rewards and values are never read into a valid position's result; under
/// `recursion` in skip mode the return at a masked position is A + v_t with that position's
/// own v_t, as verl computes it.
///
/// Options beyond the two modes:
/// - **truncation bootstrap** (AReaL): per-sequence flags `truncated [B]` and values
///   `bootstrap [B]`: a truncated sequence starts its scan with next = bootstrap_i instead of
///   0 (its final state was not terminal). AReaL keeps V(s_end) in the last column of its
///   values tensor, at a masked position; pass that column as a strided view
///   `view_of(values + T − 1, B, T)` and the truncation flags, and polo reproduces AReaL.
///   Bootstrap values of sequences that are not truncated are never read.
/// - **length-adaptive λ** (VAPO, NeMo-RL): λ_i = 1 − 1 / max(α·n_i, 1) for the advantages,
///   n_i the valid tokens of sequence i.
/// - **decoupled λ** (VAPO, NeMo-RL): returns from a second scan with λ_value (the critic's
///   target), advantages from λ (the policy's), in one pass over the data.
///
/// ## Returns and outcome estimators
///     discounted_returns   R_t = r_t + γ·run at valid t, run ← R_t (REINFORCE++); at masked
///                          t run is carried (`returns_mask_mode::carry`, polo's default),
///                          decayed by γ (`through`, OpenRLHF) or reset to 0 (`reset`,
///                          verl's "reset after EOS"); all three agree on right padding, and
///                          with γ = 1 carry = through = the reverse cumulative sum of r·m
///                          (ReMax)
///     reinforce_plus_plus  A = whiten(R) over the batch (REINFORCE++)
///     reinforce_pp_baseline A = whiten((s_i − mean_g s)·m) (REINFORCE++-baseline)
///     remax_advantages     A_t = R_t − b_i (b the greedy rollout's reward; γ = 1 by default)
///     opo_advantages       A_i = s_i − Σ_g n_j s_j / Σ_g n_j (OPO; a group of one gets b = 0)
///
/// All scans and statistics run in double for float and double inputs.

#include <cstdint>
#include <string>
#include <type_traits>

#include "polo/advantages.hpp"
#include "polo/aggregation.hpp"
#include "polo/core/backend.hpp"
#include "polo/core/error.hpp"
#include "polo/core/layout.hpp"
#include "polo/core/math.hpp"
#include "polo/core/reduce.hpp"
#include "polo/core/view.hpp"
#include "polo/whiten.hpp"

namespace polo {

/// How GAE treats masked positions inside a sequence (see the file comment).
enum class gae_mask_mode : unsigned char {
  skip,     ///< carry next value and running advantage across masked positions (verl, NeMo-RL, AReaL)
  through,  ///< zero r and v at masked positions and keep recursing (OpenRLHF, TRL-PPO, slime)
};

/// What the scans write at masked positions.
enum class masked_fill : unsigned char {
  zero,       ///< 0 in every output
  recursion,  ///< the recursion's own value there (skip: echo of the next valid value)
};

/// Whether λ is one number or one per sequence.
enum class gae_lambda_mode : unsigned char {
  fixed,            ///< λ for every sequence
  length_adaptive,  ///< λ_i = 1 − 1/max(α·n_i, 1) for the advantages (VAPO)
};

/// Which λ the returns come from.
enum class gae_returns : unsigned char {
  same_lambda,   ///< R = A + v with the advantages' λ
  value_lambda,  ///< R from a second scan with λ_value (VAPO decoupled GAE)
};

/// Options of gae. Defaults are polo's: skip masked positions (the only mode that is exact for
/// interior spans), zero-fill them, γ = 1 (LLM rewards are undiscounted in every peer), λ = 0.95.
struct gae_config {
  double gamma = 1.0;                                ///< γ in [0, 1]
  double lambda = 0.95;                              ///< λ in [0, 1] (the policy's λ)
  gae_mask_mode mask = gae_mask_mode::skip;
  masked_fill fill = masked_fill::zero;
  gae_lambda_mode lambda_mode = gae_lambda_mode::fixed;
  double alpha = 0.05;                               ///< α > 0 of the length-adaptive λ
  gae_returns returns = gae_returns::same_lambda;
  double lambda_value = 1.0;                         ///< λ_value in [0, 1] (gae_returns::value_lambda)
};

/// Statistics of one GAE call; combine calls with +=.
struct gae_stats {
  index_t sequences = 0;           ///< B
  index_t tokens = 0;              ///< valid tokens
  index_t truncated = 0;           ///< sequences that bootstrapped
  moments advantages{};            ///< of the advantages written at valid tokens (for whiten)
  sum_count<double> returns{};     ///< sum of the returns at valid tokens
  sum_count<double> lambda{};      ///< λ_i summed over sequences with valid tokens
  gae_stats& operator+=(const gae_stats& o) {
    sequences += o.sequences;
    tokens += o.tokens;
    truncated += o.truncated;
    advantages += o.advantages;
    returns += o.returns;
    lambda += o.lambda;
    return *this;
  }
};

/// What the running return does at a masked position (see discounted_returns).
enum class returns_mask_mode : unsigned char {
  carry,    ///< kept unchanged: an interior span is skipped (ReMax; polo's default)
  through,  ///< r = 0 and decayed by γ (OpenRLHF get_cumulative_returns)
  reset,    ///< set to 0: the return of a valid token stops at the next masked position (verl REINFORCE++)
};

/// Options of the return scans (discounted_returns, remax_advantages).
struct returns_config {
  double gamma = 1.0;                     ///< γ in [0, 1]
  masked_fill fill = masked_fill::zero;   ///< recursion: the running return at masked positions
  returns_mask_mode mask = returns_mask_mode::carry;
};

/// Statistics of a return scan; combine calls with +=.
struct returns_stats {
  index_t sequences = 0;     ///< B
  index_t tokens = 0;        ///< valid tokens
  moments returns{};         ///< of R at valid tokens (for whitening across ranks)
  returns_stats& operator+=(const returns_stats& o) {
    sequences += o.sequences;
    tokens += o.tokens;
    returns += o.returns;
    return *this;
  }
};

/// Options of reinforce_plus_plus.
struct reinforce_pp_config {
  double gamma = 1.0;        ///< γ of the discounted returns
  whiten_config whiten{};    ///< how the returns are whitened into advantages
  returns_mask_mode mask = returns_mask_mode::carry;  ///< the returns' masked positions
};

/// Statistics of reinforce_plus_plus.
struct reinforce_pp_stats {
  returns_stats returns{};
  whiten_stats whiten{};
};

/// Options of reinforce_pp_baseline: the group step (a group_advantages config, default the
/// group mean with no scaling, groups of one keeping their score as verl does) and the
/// whitening over the batch's tokens.
struct reinforce_pp_baseline_config {
  advantage_config group{.baseline = baseline_kind::group_mean,
                         .scale = scale_kind::none,
                         .singleton = singleton_rule::raw,
                         .zero_variance = zero_variance_rule::divide};
  whiten_config whiten{};
};

/// Statistics of reinforce_pp_baseline.
struct reinforce_pp_baseline_stats {
  group_stats group{};
  whiten_stats whiten{};
};

namespace presets {
namespace verl {
/// verl `gae` (compute_gae_advantage_return): skip masked positions, echo there, γ = λ = 1
/// (algorithm.gamma / algorithm.lam defaults); then whiten with presets::verl::whitening.
inline constexpr gae_config gae{.gamma = 1.0,
                                .lambda = 1.0,
                                .mask = gae_mask_mode::skip,
                                .fill = masked_fill::recursion};
/// verl `reinforce_plus_plus`: discounted returns (γ = algorithm.gamma) reset to 0 at every
/// masked position ("reset after EOS"), masked_whiten · m.
inline constexpr reinforce_pp_config reinforce_pp{.gamma = 1.0, .whiten = whitening_masked,
                                                  .mask = returns_mask_mode::reset};
/// verl `reinforce_plus_plus_baseline`: (s − μ_g, μ = 0 for a group of one)·m, masked_whiten · m.
inline constexpr reinforce_pp_baseline_config reinforce_pp_baseline{
    .group = {.baseline = baseline_kind::group_mean,
              .scale = scale_kind::none,
              .singleton = singleton_rule::raw,
              .zero_variance = zero_variance_rule::divide},
    .whiten = whitening_masked};
/// verl `remax`: reverse cumulative sum of r·m; A = R − b·m, written at every position.
inline constexpr returns_config remax{.gamma = 1.0, .fill = masked_fill::recursion, .mask = returns_mask_mode::carry};
}  // namespace verl
namespace openrlhf {
/// OpenRLHF `gae` (get_advantages_and_returns): v and r multiplied by the mask, the recursion
/// runs through; nothing is refilled. γ = λ = 1 (CLI defaults); whiten with
/// presets::openrlhf::whitening.
inline constexpr gae_config gae{.gamma = 1.0,
                                .lambda = 1.0,
                                .mask = gae_mask_mode::through,
                                .fill = masked_fill::recursion};
/// OpenRLHF `reinforce`: cumulative returns of r·m (the run decays by γ through masked
/// positions), then its batch whitening (population, rsqrt(max(var, 1e-8)), every position).
inline constexpr reinforce_pp_config reinforce_pp{.gamma = 1.0, .whiten = whitening,
                                                  .mask = returns_mask_mode::through};
/// OpenRLHF `reinforce_baseline`: r − μ_g (a group of one gives 0), then its batch whitening.
inline constexpr reinforce_pp_baseline_config reinforce_pp_baseline{
    .group = {.baseline = baseline_kind::group_mean,
              .scale = scale_kind::none,
              .singleton = singleton_rule::zero,
              .zero_variance = zero_variance_rule::divide},
    .whiten = whitening};
}  // namespace openrlhf
namespace trl {
/// TRL PPOTrainer (trl/experimental/ppo): the recursion runs through values and rewards that
/// were zeroed outside the mask, γ = 1, λ = 0.95; advantages are whitened with
/// presets::trl::whitening and padding is zero-filled. TRL keeps one extra value past the last
/// response token (its padding_mask_p1): pass that longer mask to reproduce its returns.
inline constexpr gae_config gae{.gamma = 1.0,
                                .lambda = 0.95,
                                .mask = gae_mask_mode::through,
                                .fill = masked_fill::zero};
}  // namespace trl
namespace nemo {
/// NeMo-RL GeneralizedAdvantageEstimator: carry-forward (skip) masking, γ = 1, λ = 0.95,
/// advantages zero-filled at masked positions (then optionally presets::nemo::whitening). Its
/// returns keep A + v at masked positions; polo's zero fill writes 0 there (never read by the
/// value loss).
inline constexpr gae_config gae{.gamma = 1.0,
                                .lambda = 0.95,
                                .mask = gae_mask_mode::skip,
                                .fill = masked_fill::zero};
/// NeMo-RL with VAPO's decoupled, length-adaptive λ: λ_policy = 1 − 1/max(α·n, 1) with
/// α = 0.05, returns with λ_value = 1.
inline constexpr gae_config gae_vapo{.gamma = 1.0,
                                     .lambda = 0.95,
                                     .mask = gae_mask_mode::skip,
                                     .fill = masked_fill::zero,
                                     .lambda_mode = gae_lambda_mode::length_adaptive,
                                     .alpha = 0.05,
                                     .returns = gae_returns::value_lambda,
                                     .lambda_value = 1.0};
/// NeMo-RL `reinforce_plus_plus` (minus_baseline): group mean (a prompt with one valid sample
/// gets A = 0), then a global normalisation with the population variance and
/// rsqrt(max(var, 1e-8)), applied at every position.
inline constexpr reinforce_pp_baseline_config reinforce_pp_baseline{
    .group = {.baseline = baseline_kind::group_mean,
              .scale = scale_kind::none,
              .singleton = singleton_rule::zero,
              .zero_variance = zero_variance_rule::divide},
    .whiten = {.std = std_kind::population,
               .eps_mode = eps_placement::floor_variance,
               .eps = 1e-8,
               .shift_mean = true,
               .write = whiten_write::all_positions,
               .degenerate = whiten_degenerate::zero}};
}  // namespace nemo
}  // namespace presets

namespace detail {

/// Tag of this primitive family in detail::backend_impl.
struct gae_tag {};

inline void check_unit_interval(const char* fn, const char* option, double x) {
  if (!(x >= 0.0 && x <= 1.0)) throw_config(fn, option, value_str(x), "a value in [0, 1]");
}

inline void check_gae_config(const char* fn, const gae_config& c) {
  check_unit_interval(fn, "gamma", c.gamma);
  check_unit_interval(fn, "lambda", c.lambda);
  check_unit_interval(fn, "lambda_value", c.lambda_value);
  if (c.mask != gae_mask_mode::skip && c.mask != gae_mask_mode::through)
    throw_config(fn, "mask", std::to_string(unsigned(c.mask)), "gae_mask_mode::skip or ::through");
  if (c.fill != masked_fill::zero && c.fill != masked_fill::recursion)
    throw_config(fn, "fill", std::to_string(unsigned(c.fill)), "masked_fill::zero or ::recursion");
  if (c.lambda_mode == gae_lambda_mode::length_adaptive && !(c.alpha > 0.0 && is_finite(c.alpha)))
    throw_config(fn, "alpha", value_str(c.alpha), "a finite value > 0 with gae_lambda_mode::length_adaptive");
  if (c.lambda_mode != gae_lambda_mode::fixed && c.lambda_mode != gae_lambda_mode::length_adaptive)
    throw_config(fn, "lambda_mode", std::to_string(unsigned(c.lambda_mode)), "a value of polo::gae_lambda_mode");
  if (c.returns != gae_returns::same_lambda && c.returns != gae_returns::value_lambda)
    throw_config(fn, "returns", std::to_string(unsigned(c.returns)), "a value of polo::gae_returns");
}

inline void check_returns_mask(const char* fn, returns_mask_mode m) {
  if (unsigned(m) > unsigned(returns_mask_mode::reset))
    throw_config(fn, "mask", std::to_string(unsigned(m)), "a value of polo::returns_mask_mode");
}

inline void check_returns_config(const char* fn, const returns_config& c) {
  check_unit_interval(fn, "gamma", c.gamma);
  check_returns_mask(fn, c.mask);
  if (c.fill != masked_fill::zero && c.fill != masked_fill::recursion)
    throw_config(fn, "fill", std::to_string(unsigned(c.fill)), "masked_fill::zero or ::recursion");
}

/// λ_i of a sequence with n valid tokens.
POLO_HD_INLINE double gae_lambda_of(const gae_config& c, index_t n) {
  if (c.lambda_mode == gae_lambda_mode::fixed) return c.lambda;
  double an = c.alpha * double(n);
  return 1.0 - 1.0 / (an > 1.0 ? an : 1.0);
}

// ---- per-position math shared by every backend (the CUDA scans use these same formulas) ----

/// One position of a backward linear recurrence, g_t = b + a·g_{t+1} (GAE's running advantage,
/// the discounted return). Affine maps compose associatively, so a backend may evaluate a row
/// as a parallel scan: `affine_compose(f_t, f_{t+1})` maps g_{t+2} to g_t. The identity
/// {1, 0} is what a skipped (masked) position contributes.
struct affine_step {
  double a = 1.0;
  double b = 0.0;
};
/// outer ∘ inner: first `inner` (the later positions), then `outer`.
POLO_HD_INLINE affine_step affine_compose(affine_step outer, affine_step inner) {
  return {outer.a * inner.a, outer.b + outer.a * inner.b};
}
/// f(g) = b + a·g.
POLO_HD_INLINE double affine_apply(affine_step f, double g) { return f.b + f.a * g; }

/// TD error δ_t = r_t + γ·next − v_t.
POLO_HD_INLINE double gae_delta(double r, double v, double next, double gamma) { return r + gamma * next - v; }

/// Coefficients of one sequence's GAE scan.
struct gae_row_coeffs {
  double gamma = 1.0;     ///< γ
  double lambda = 1.0;    ///< λ_i (fixed λ, or the length-adaptive λ of this sequence)
  double gl = 1.0;        ///< γ·λ_i: decay of the advantages' scan
  double gl_value = 1.0;  ///< γ·λ_value: decay of the returns' scan (gae_returns::value_lambda)
  double next = 0.0;      ///< value after the last token: 0, or the bootstrap value if truncated
};
/// The scan coefficients of a sequence with `n_valid` valid tokens; `bootstrap` is used only
/// when `truncated`.
POLO_HD_INLINE gae_row_coeffs gae_row_setup(const gae_config& c, index_t n_valid, bool truncated, double bootstrap) {
  gae_row_coeffs k;
  k.gamma = c.gamma;
  k.lambda = gae_lambda_of(c, n_valid);
  k.gl = c.gamma * k.lambda;
  k.gl_value = c.gamma * c.lambda_value;
  k.next = truncated ? bootstrap : 0.0;
  return k;
}

/// The affine step of GAE at one position, for decay `gl` (γλ_i or γλ_value):
///
///     skip, valid:     {gl, δ(r, v, next)}, next = v of the next valid position of the row
///                      (the row's `gae_row_coeffs::next` when there is none)
///     skip, masked:    identity {1, 0}
///     through (any):   {gl, δ(r', v', next)}, r' = m ? r : 0, v' = m ? v : 0, next = v'_{t+1}
///                      (the row's `gae_row_coeffs::next` at the row's last position)
///
/// `r` and `v` are the raw inputs and are not read into the result at masked positions (they
/// are selected away, never multiplied by 0, so a masked NaN cannot leak).
POLO_HD_INLINE affine_step gae_step(gae_mask_mode mode, bool valid, double r, double v, double next, double gamma,
                                    double gl) {
  if (valid) return {gl, gae_delta(r, v, next, gamma)};
  if (mode == gae_mask_mode::skip) return {1.0, 0.0};
  return {gl, gamma * next};
}

/// The value the TD error at position t bootstraps from, as seen by the position before it:
/// skip: a valid position hands on its own v, a masked one hands on what it received;
/// through: every position hands on v' = m ? v : 0.
POLO_HD_INLINE double gae_next_value(gae_mask_mode mode, bool valid, double v, double received) {
  if (valid) return v;
  return mode == gae_mask_mode::skip ? received : 0.0;
}

/// What GAE writes at one position, from the scan states there (g: advantages' scan, g_value:
/// returns' scan, equal to g unless gae_returns::value_lambda) and the raw value v:
///
///     valid:                      A = g, R = g_value + v
///     masked, masked_fill::zero:  A = 0, R = 0
///     masked, recursion:          A = g, R = g_value + v (skip: the position's own v, as verl)
///                                               or g_value (through: v' = 0 there)
struct gae_output {
  double advantage = 0.0;
  double ret = 0.0;
};
POLO_HD_INLINE gae_output gae_write(gae_mask_mode mode, masked_fill fill, bool valid, double g, double g_value,
                                    double v) {
  if (valid) return {g, g_value + v};
  if (fill == masked_fill::zero) return {0.0, 0.0};
  return {g, mode == gae_mask_mode::skip ? g_value + v : g_value};
}

/// The affine step of the discounted returns at one position: {γ, r} where valid, the identity
/// where masked (the running return is carried across masked spans without decay).
POLO_HD_INLINE affine_step returns_step(bool valid, double r, double gamma) {
  return valid ? affine_step{gamma, r} : affine_step{1.0, 0.0};
}
/// The same under each returns_mask_mode: at a masked position the identity (carry), {γ, 0}
/// (through: a zero reward) or {0, 0} (reset).
POLO_HD_INLINE affine_step returns_step(returns_mask_mode mode, bool valid, double r, double gamma) {
  if (valid) return {gamma, r};
  switch (mode) {
    case returns_mask_mode::carry: return {1.0, 0.0};
    case returns_mask_mode::through: return {gamma, 0.0};
    case returns_mask_mode::reset: return {0.0, 0.0};
  }
  return {1.0, 0.0};
}

/// What a return scan writes at one position from the running return `run` there: R and, for
/// ReMax, A = R − b (valid); 0 and 0 (masked, zero fill); run and run (masked, recursion:
/// verl's A = R − b·m).
struct returns_output {
  double ret = 0.0;
  double advantage = 0.0;
};
POLO_HD_INLINE returns_output returns_write(masked_fill fill, bool valid, double run, double baseline) {
  if (valid) return {run, run - baseline};
  if (fill == masked_fill::zero) return {0.0, 0.0};
  return {run, run};
}

template <class U, class T>
constexpr void static_check_same_real() {
  static_assert(std::is_same_v<std::remove_const_t<U>, T>,
                "polo: every per-token input and output of this primitive must have the same element type");
  static_check_real<T>();
}

template <class F>
constexpr void static_check_flag() {
  static_assert(std::is_integral_v<std::remove_const_t<F>> || std::is_floating_point_v<std::remove_const_t<F>>,
                "polo::gae: truncation flags must be integers, bool or floating point (nonzero = truncated)");
}

template <class L>
void check_packed_offsets(const char* fn, const L& layout) {
  if constexpr (std::remove_cvref_t<L>::is_packed) {
    if constexpr (std::is_same_v<typename std::remove_cvref_t<L>::memory_space, host_space>) layout.check_offsets_host(fn);
  }
}

}  // namespace detail

/// Generalized advantage estimation over a padded or packed batch (see the file comment for
/// the recursion of each mask mode and what is written at masked positions).
///
/// \param layout      `padded{mask [B,T]}` or `packed{offsets [B+1], N, mask [N]}`
/// \param rewards     per-token rewards r (`[B,T]` or `[N]`), float or double
/// \param values      per-token critic values v, same type (v_t = V(state before token t))
/// \param advantages  per-token output A, same type; every element is written
/// \param returns     per-token output R (the critic's target), same type; every element written
/// \param cfg         options; presets in polo::presets::{verl,openrlhf,trl,nemo}::gae
/// \returns counts, the moments of A at valid tokens (pass them, all-reduced, to whiten) and
///          sums of R and λ_i
/// \throws shape_error, config_error; nonfinite_error naming 'rewards' or 'values' and the
///         flat index of the first non-finite value at a valid token. On throw nothing is
///         written. Outputs must not alias the inputs.
/// Bytes moved: 2·sizeof(T) + mask bytes per token read twice (check, scan), 2·sizeof(T) written.
template <Backend B, TokenLayout L, class UR, class UV, class T>
gae_stats gae(const B& be, const L& layout, detail::layout_tensor<L, UR> rewards, detail::layout_tensor<L, UV> values,
              detail::layout_tensor<L, T> advantages, detail::layout_tensor<L, T> returns,
              const gae_config& cfg = {}) {
  detail::static_check_space<B, typename L::memory_space>();
  detail::static_check_same_real<UR, T>();
  detail::static_check_same_real<UV, T>();
  constexpr const char* fn = "gae";
  layout.check(fn);
  layout.check_tensor(fn, "rewards", rewards);
  layout.check_tensor(fn, "values", values);
  layout.check_tensor(fn, "advantages", advantages);
  layout.check_tensor(fn, "returns", returns);
  detail::check_gae_config(fn, cfg);
  detail::check_packed_offsets(fn, layout);
  using S = typename L::memory_space;
  return detail::backend_impl<B, detail::gae_tag>::gae(
      be, layout, detail::layout_tensor<L, const T>(rewards), detail::layout_tensor<L, const T>(values),
      view<const unsigned char, 1, S>{}, view<const T, 1, S>{}, advantages, returns, cfg);
}

/// GAE with truncation bootstrap (AReaL): as above, and a sequence i with `truncated[i] != 0`
/// starts its scan with next = `bootstrap[i]` (the value of the state after its last token)
/// instead of 0.
///
/// \param truncated  `[B]` flags, any arithmetic type, nonzero = truncated (no EOS)
/// \param bootstrap  `[B]` bootstrap values, same type as the values; read only where truncated
///                   (any stride: the last column of a `[B,T]` values tensor is a view with
///                   stride T)
/// \throws as above, and nonfinite_error naming 'bootstrap' and the sequence index for a
///         non-finite bootstrap value of a truncated sequence.
/// Bytes moved: as above, plus the flags and the bootstrap values of truncated sequences.
template <Backend B, TokenLayout L, class UR, class UV, class F, class UB, class T>
gae_stats gae(const B& be, const L& layout, detail::layout_tensor<L, UR> rewards, detail::layout_tensor<L, UV> values,
              view<F, 1, typename L::memory_space> truncated, view<UB, 1, typename L::memory_space> bootstrap,
              detail::layout_tensor<L, T> advantages, detail::layout_tensor<L, T> returns,
              const gae_config& cfg = {}) {
  detail::static_check_space<B, typename L::memory_space>();
  detail::static_check_same_real<UR, T>();
  detail::static_check_same_real<UV, T>();
  detail::static_check_same_real<UB, T>();
  detail::static_check_flag<F>();
  constexpr const char* fn = "gae";
  layout.check(fn);
  layout.check_tensor(fn, "rewards", rewards);
  layout.check_tensor(fn, "values", values);
  detail::require_extent(fn, "truncated", truncated, layout.num_seqs(), "one flag per sequence of the layout");
  detail::require_extent(fn, "bootstrap", bootstrap, layout.num_seqs(), "one value per sequence of the layout");
  layout.check_tensor(fn, "advantages", advantages);
  layout.check_tensor(fn, "returns", returns);
  detail::check_gae_config(fn, cfg);
  detail::check_packed_offsets(fn, layout);
  return detail::backend_impl<B, detail::gae_tag>::gae(
      be, layout, detail::layout_tensor<L, const T>(rewards), detail::layout_tensor<L, const T>(values),
      view<const std::remove_const_t<F>, 1, typename L::memory_space>(truncated),
      view<const T, 1, typename L::memory_space>(bootstrap), advantages, returns, cfg);
}

/// Discounted returns per sequence (REINFORCE++), scanning backwards:
///
///     valid t:   R_t = r_t + γ·run,  run ← R_t         (run starts at 0)
///     masked t:  run ← run (carry), γ·run (through) or 0 (reset), per `cfg.mask`; written 0
///                (`masked_fill::zero`, verl's R·m) or run (`masked_fill::recursion`)
///
/// With γ = 1 and carry (or through) this is the reverse cumulative sum of r·m (ReMax's
/// returns). The modes agree on every valid token of a right-padded batch. Masked rewards are
/// never read (verl's reset scan adds the masked reward into the value it writes at a masked
/// position and then discards it; polo writes that position's run, 0, instead).
///
/// \param layout  `padded{mask [B,T]}` or `packed{offsets [B+1], N, mask [N]}`
/// \param rewards per-token rewards (`[B,T]` or `[N]`), float or double
/// \param returns per-token output, same type; every element is written
/// \returns counts and the moments of R at valid tokens (for whitening across ranks)
/// \throws shape_error, config_error; nonfinite_error ('rewards', flat index) for a non-finite
///         valid reward; nothing written on throw.
/// Bytes moved: sizeof(T) + mask bytes per token read twice, sizeof(T) written.
template <Backend B, TokenLayout L, class U, class T>
returns_stats discounted_returns(const B& be, const L& layout, detail::layout_tensor<L, U> rewards,
                                 detail::layout_tensor<L, T> returns, const returns_config& cfg = {}) {
  detail::static_check_space<B, typename L::memory_space>();
  detail::static_check_same_real<U, T>();
  constexpr const char* fn = "discounted_returns";
  layout.check(fn);
  layout.check_tensor(fn, "rewards", rewards);
  layout.check_tensor(fn, "returns", returns);
  detail::check_returns_config(fn, cfg);
  detail::check_packed_offsets(fn, layout);
  using S = typename L::memory_space;
  return detail::backend_impl<B, detail::gae_tag>::returns(be, fn, layout, detail::layout_tensor<L, const T>(rewards),
                                                           view<const T, 1, S>{}, returns,
                                                           detail::layout_tensor<L, T>{}, cfg);
}

/// ReMax advantages: R = discounted_returns(r) (γ = 1 by default: the reverse cumulative sum
/// of r·m), and
///
///     A_t = R_t − b_i   at valid t;   at masked t: 0 (zero) or R_t (recursion; verl's
///                                     A = R − b·m)
///
/// \param baselines  `[B]` reward of each prompt's greedy rollout, same type (any stride)
/// \param advantages per-token output A; every element written
/// \param returns    per-token output R; every element written
/// \throws as discounted_returns, and nonfinite_error ('baselines', i) for a non-finite baseline
///         of a sequence with valid tokens.
/// Bytes moved: as discounted_returns, plus one more per-token output.
template <Backend B, TokenLayout L, class U, class UB, class T>
returns_stats remax_advantages(const B& be, const L& layout, detail::layout_tensor<L, U> rewards,
                               view<UB, 1, typename L::memory_space> baselines, detail::layout_tensor<L, T> advantages,
                               detail::layout_tensor<L, T> returns, const returns_config& cfg = {}) {
  detail::static_check_space<B, typename L::memory_space>();
  detail::static_check_same_real<U, T>();
  detail::static_check_same_real<UB, T>();
  constexpr const char* fn = "remax_advantages";
  layout.check(fn);
  layout.check_tensor(fn, "rewards", rewards);
  detail::require_extent(fn, "baselines", baselines, layout.num_seqs(), "one greedy baseline per sequence");
  layout.check_tensor(fn, "advantages", advantages);
  layout.check_tensor(fn, "returns", returns);
  detail::check_returns_config(fn, cfg);
  detail::check_packed_offsets(fn, layout);
  return detail::backend_impl<B, detail::gae_tag>::returns(
      be, fn, layout, detail::layout_tensor<L, const T>(rewards),
      view<const T, 1, typename L::memory_space>(baselines), returns, advantages, cfg);
}

/// REINFORCE++: discounted returns R (zero at masked positions), then whitened over the
/// batch's valid tokens into the advantages (verl multiplies the whitened values by the mask:
/// `whiten_write::zero_masked`). For several ranks, call discounted_returns, all-reduce
/// `returns_stats::returns` and call the moments overload of whiten.
///
/// \param rewards    per-token rewards
/// \param returns    per-token output R (unwhitened), every element written
/// \param advantages per-token output A; may alias `returns` exactly (then R is overwritten)
/// \throws as discounted_returns and whiten; nothing written on throw.
/// Bytes moved: discounted_returns, then whiten over R.
template <Backend B, TokenLayout L, class U, class T>
reinforce_pp_stats reinforce_plus_plus(const B& be, const L& layout, detail::layout_tensor<L, U> rewards,
                                       detail::layout_tensor<L, T> returns, detail::layout_tensor<L, T> advantages,
                                       const reinforce_pp_config& cfg = {}) {
  detail::static_check_space<B, typename L::memory_space>();
  detail::static_check_same_real<U, T>();
  constexpr const char* fn = "reinforce_plus_plus";
  layout.check(fn);
  layout.check_tensor(fn, "rewards", rewards);
  layout.check_tensor(fn, "returns", returns);
  layout.check_tensor(fn, "advantages", advantages);
  detail::check_unit_interval(fn, "gamma", cfg.gamma);
  detail::check_returns_mask(fn, cfg.mask);
  detail::check_whiten_config(fn, cfg.whiten);
  detail::check_packed_offsets(fn, layout);
  return detail::backend_impl<B, detail::gae_tag>::reinforce_plus_plus(
      be, layout, detail::layout_tensor<L, const T>(rewards), returns, advantages, cfg);
}

/// REINFORCE++-baseline: per-sequence A_i from group_advantages with `cfg.group` (by default
/// s_i − mean of its group, a group of one keeping s_i), broadcast to the valid tokens, then
/// whitened over the batch's valid tokens (each sequence weighted by its length).
///
/// \param scores          `[B]` one outcome score per sequence
/// \param groups          `contiguous_groups{G}` or `labelled_groups{labels [B]}`
/// \param layout          the token layout of the batch
/// \param seq_advantages  `[B]` output: the group step's A_i (before whitening)
/// \param token_advantages per-token output (`[B,T]` or `[N]`); every element written
/// \throws as group_advantages and whiten; nothing written on throw.
/// Bytes moved: 8 per sequence, then whiten over the broadcast tokens (read twice, written once).
template <Backend B, class U, class T, class Space, class Groups, TokenLayout L>
  requires std::same_as<std::remove_const_t<U>, T>
reinforce_pp_baseline_stats reinforce_pp_baseline(const B& be, view<U, 1, Space> scores, const Groups& groups,
                                                  const L& layout, view<T, 1, Space> seq_advantages,
                                                  detail::layout_tensor<L, T> token_advantages,
                                                  const reinforce_pp_baseline_config& cfg = {}) {
  detail::static_check_space<B, Space>();
  detail::static_check_space<B, typename L::memory_space>();
  detail::static_check_real<T>();
  constexpr const char* fn = "reinforce_pp_baseline";
  layout.check(fn);
  detail::check_view(fn, "scores", scores);
  if (scores.n != layout.num_seqs())
    detail::throw_shape(fn, "scores", scores.shape(),
                        detail::shape_str({layout.num_seqs()}) + " (one score per sequence of the layout)");
  detail::require_extent(fn, "seq_advantages", seq_advantages, scores.n, "one advantage per score");
  layout.check_tensor(fn, "token_advantages", token_advantages);
  detail::check_groups(fn, scores.n, groups);
  detail::check_advantage_config(fn, cfg.group);
  detail::check_whiten_config(fn, cfg.whiten);
  detail::check_packed_offsets(fn, layout);
  return detail::backend_impl<B, detail::gae_tag>::reinforce_pp_baseline(be, view<const T, 1, Space>(scores), groups,
                                                                          layout, seq_advantages, token_advantages, cfg);
}

/// OPO (verl `opo`): a length-weighted group baseline,
///
///     b_g = Σ_{j∈g} n_j s_j / Σ_{j∈g} n_j     (n_j the valid tokens of sequence j)
///     A_i = s_i − b_g,  broadcast to the valid tokens of i (0 elsewhere)
///
/// A group of one has b = 0 (A = s); a group whose sequences have no valid tokens has b = 0.
///
/// \param scores           `[B]` outcome scores
/// \param groups           `contiguous_groups{G}` or `labelled_groups{labels [B]}`
/// \param layout           token layout (its mask gives n_j)
/// \param advantages       `[B]` output A_i
/// \param token_advantages per-token output; every element written
/// \returns group statistics (sequences, groups, singleton groups, score moments, Σ A)
/// \throws shape_error; nonfinite_error ('scores', i) for any non-finite score. Nothing written
///         on throw.
/// Bytes moved: mask bytes per token read once, 8 per sequence, T-size per token written.
template <Backend B, class U, class T, class Space, class Groups, TokenLayout L>
  requires std::same_as<std::remove_const_t<U>, T>
group_stats opo_advantages(const B& be, view<U, 1, Space> scores, const Groups& groups, const L& layout,
                           view<T, 1, Space> advantages, detail::layout_tensor<L, T> token_advantages) {
  detail::static_check_space<B, Space>();
  detail::static_check_space<B, typename L::memory_space>();
  detail::static_check_real<T>();
  constexpr const char* fn = "opo_advantages";
  layout.check(fn);
  detail::check_view(fn, "scores", scores);
  if (scores.n != layout.num_seqs())
    detail::throw_shape(fn, "scores", scores.shape(),
                        detail::shape_str({layout.num_seqs()}) + " (one score per sequence of the layout)");
  detail::require_extent(fn, "advantages", advantages, scores.n, "one advantage per score");
  layout.check_tensor(fn, "token_advantages", token_advantages);
  detail::check_groups(fn, scores.n, groups);
  detail::check_packed_offsets(fn, layout);
  return detail::backend_impl<B, detail::gae_tag>::opo(be, view<const T, 1, Space>(scores), groups, layout,
                                                       advantages, token_advantages);
}

}  // namespace polo
