// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
#pragma once
/// \file
/// The policy objective of PPO/GRPO and their variants: from per-token log-probs of the current
/// policy (`logp`), the sampling policy (`logp_old`), optionally a reference policy
/// (`logp_ref`), per-token advantages and the mask, one call returns the loss a trainer
/// minimizes, writes its exact gradient dL/dlogp (which the trainer backpropagates into its
/// model), and returns the statistics trainers log. Backend-neutral: this header declares the
/// options, the presets and the entry points and validates shapes and options; the CPU
/// implementation is in <polo/cpu/policy_loss.hpp>. Semantics page: docs/policy_loss.md.
///
/// ## The per-token objective L_t (m_t = 1; A_t the advantage)
///
///     lr_t  = logp_t - logp_old_t,   c_t = clamp(lr_t, log_ratio_min, log_ratio_max)
///     r_t   = e^(c_t)                                  ratio_level::token
///           = s_i = e^(clamp(sum_u m_u lr_u / max(n_i,1), log_ratio_min, log_ratio_max))
///                                                      ratio_level::sequence (GSPO)
///     clip:      coef1 = min(r, delta),  coef2 = clip(r, 1-eps_low, 1+eps_high)
///                L = max(-A*coef1, -A*coef2);  if A < 0: L = min(L, -A*dual_clip)
///     cispo:     w = clip(r, 1-eps_low, 1+eps_high)  (cispo_bound::clip_both)
///                  = min(r, eps_high)                 (cispo_bound::upper_raw)
///                L = -sg(w) * A * logp                gradient -w*A
///     sapo:      tau = A > 0 ? tau_pos : tau_neg;  L = -A * sigmoid(tau*(r-1)) * 4/tau
///     reinforce: L = -A * logp                        gradient -A
///
/// `delta` caps the unclipped ratio *after* coef2 was formed (TRL's INTELLECT-2 option); the dual
/// clip applies only where A < 0 (a dual clip applied for every sign zeroes the gradient of
/// positive-advantage tokens: thu-ml/tianshou#433). A token with A = 0 contributes exactly 0 to
/// the loss and the gradient, even where the ratio would overflow.
///
/// ## Gradients and kink conventions
/// d r_t/d logp_t = r_t where the log-ratio clamp is inactive, 0 where it is active. A clamp or a
/// clip is active only strictly outside its bounds: on a bound the token counts as unclipped and
/// takes the unclipped branch's gradient (torch.clamp passes the gradient on its bounds, so this
/// matches PyTorch there). The clipped branch is taken only where it is strictly larger; the
/// dual clip only where -A*dual_clip is strictly smaller (at an exact tie PyTorch splits the
/// gradient in half; polo keeps the undual-clipped branch's). For `sapo`, A = 0 is moot.
///
/// Sequence-level ratio (GSPO), gradient per valid token u of sequence i, with W_t the
/// aggregation weight of token t and dL_t/dr the objective's sensitivity to the ratio:
///
///     through_mean (TRL, OpenRLHF, NeMo-RL; the exact gradient of the loss value):
///         g_u = s_i * [log s_i unclamped] / n_i * sum_t W_t dL_t/dr
///     straight_through (verl: ratio_t = e^(logp_t - sg logp_t + sg log s_i)):
///         g_u = s_i * [log s_i unclamped] * W_u dL_u/dr
///
/// They agree token by token when the advantage and the weight are constant over the sequence
/// (GRPO's broadcast advantages, any aggregation) and differ otherwise.
///
/// ## Aggregation (loss = sum_i sum_t m_t W_it L_it; the gradient carries the same W)
///
/// <polo/aggregation.hpp> (shared with value_loss), s = `normalizers::scale` (default 1):
///
///     token_mean:           W = s / N_tok                    (verl token-mean, TRL dapo/bnpo,
///                                                             OpenRLHF, NeMo-RL token level)
///     token_sum:            W = s                            (verl token-sum)
///     seq_mean_token_mean:  W = s / (n_i * N_seq)            (TRL grpo/sapo, NeMo-RL sequence level)
///     seq_mean_token_sum:   W = s / N_seq                    (verl seq-mean-token-sum)
///     token_sum_norm:       W = s / C                        (Dr. GRPO: TRL dr_grpo with
///                                                             C = B * max_completion_length)
///
/// n_i is sequence i's valid-token count; N_tok, N_seq and C come from `normalizers`: pass the
/// counts of the *whole* batch (all micro-batches, all ranks; see `count_tokens`) and a batch
/// split into calls gives exactly the loss and gradient of one call over the whole batch. Left at
/// `normalizers::local` they are this call's own counts: N_tok = valid tokens, N_seq = sequences
/// with at least one valid token (empty rows never count). C has no default: token_sum_norm
/// requires `normalizers::constant > 0`. A normalizer of 0 (an all-masked batch) gives loss 0
/// and gradient 0, never NaN. Normalizers count the mask only: a token skipped for a non-finite
/// input still counts.
///
/// ## The KL term
/// With `kl_coef` (beta) > 0 the loss adds beta times the KL estimator of `kl`
/// (<polo/kl.hpp>) between `logp` and `logp_ref`: at token level aggregated with the policy's
/// weights W (or token-mean with `kl_aggregation::token_mean`, as OpenRLHF does); at sequence
/// level, K_i is averaged over sequences: beta * s * sum_i K_i / N_seq (s = normalizers::scale).
///
/// ## Non-finite inputs
/// Values at masked positions are never read into a result (select, never multiply by 0). At a
/// valid position, a NaN or infinity in logp, logp_old, logp_ref (when used) or the advantages
/// throws nonfinite_error naming the argument and its flat row-major index, before anything is
/// written (`token_nonfinite_policy::error`, the default), or under `::skip` is counted and the
/// token contributes nothing (0 loss, 0 gradient, left out of every statistic); when a
/// sequence-level ratio or KL is in use, its whole sequence is skipped instead. Log-ratios up to
/// |1e4| (and beyond) stay finite under the default clamp.
///
/// ## polo's default
/// The clip objective with eps 0.2/0.2 at token level (every peer's default), the log-ratio
/// clamped to +-20 before exp (verl, OpenRLHF: exp never overflows, and the clamp is reported),
/// no dual clip and no delta (opt-in everywhere but verl), token-mean aggregation (the majority
/// default: verl, TRL dapo, OpenRLHF, NeMo-RL), no KL term (TRL beta=0, verl use_kl_loss=False,
/// DAPO), and non-finite inputs rejected.
///
/// "Loss is 0 at step 0" is expected (SEMANTICS.md 4.11): on-policy r = 1, and group-centred
/// advantages sum to 0 within each group, so the token-mean loss is ~0 while its gradient is not.

#include <cmath>
#include <concepts>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <utility>

#include "polo/aggregation.hpp"
#include "polo/core/backend.hpp"
#include "polo/core/config.hpp"
#include "polo/core/error.hpp"
#include "polo/core/layout.hpp"
#include "polo/core/math.hpp"
#include "polo/core/reduce.hpp"
#include "polo/core/view.hpp"
#include "polo/kl.hpp"

namespace polo {

/// The per-token objective (see the file comment).
enum class policy_objective : unsigned char {
  clip,       ///< PPO/GRPO clipped surrogate (with eps_low/eps_high, dual_clip, delta)
  cispo,      ///< -sg(clipped ratio) * A * logp (MiniMax-M1)
  sapo,       ///< soft sigmoid gate, no clipping
  reinforce,  ///< -A * logp (verl gpg, NeMo-RL disable_ppo_ratio)
};

/// The two CISPO parameterisations (SEMANTICS.md 0.3).
enum class cispo_bound : unsigned char {
  clip_both,  ///< w = clip(r, 1-eps_low, 1+eps_high) (verl, slime, NeMo-RL)
  upper_raw,  ///< w = min(r, eps_high), eps_high the raw bound, e.g. 5 (TRL, Liger)
};

/// Token-level ratio, or one geometric-mean ratio per sequence (GSPO).
enum class ratio_level : unsigned char { token, sequence };

/// Gradient of a sequence-level ratio (see the file comment).
enum class sequence_ratio_gradient : unsigned char {
  through_mean,      ///< exact gradient of the loss value (TRL, OpenRLHF, NeMo-RL)
  straight_through,  ///< verl's per-token straight-through form
};

/// How the token-level KL term is aggregated.
enum class kl_aggregation : unsigned char {
  same_as_policy,  ///< the policy's weights W (verl, TRL, NeMo-RL)
  token_mean,      ///< 1/N_tok whatever the policy aggregation (OpenRLHF)
};

/// What a NaN or infinity at a valid position does.
enum class token_nonfinite_policy : unsigned char {
  error,  ///< throw polo::nonfinite_error naming the argument and index; nothing is written
  skip,   ///< count it; the token (or its sequence, with sequence-level terms) contributes nothing
};

/// Options of policy_loss. Defaults are polo's own (see the file comment for why).
struct policy_loss_config {
  policy_objective objective = policy_objective::clip;
  ratio_level level = ratio_level::token;
  sequence_ratio_gradient sequence_gradient = sequence_ratio_gradient::through_mean;
  double eps_low = 0.2;   ///< lower clip 1 - eps_low, in [0, 1] (clip, cispo clip_both)
  double eps_high = 0.2;  ///< upper clip 1 + eps_high, >= 0; the raw bound under cispo upper_raw (> 0)
  double dual_clip = unbounded;  ///< c > 1 (dual clip for A < 0); polo::unbounded disables it
  double delta = unbounded;      ///< cap on the unclipped ratio, > 1; polo::unbounded disables it
  cispo_bound cispo = cispo_bound::clip_both;
  double sapo_tau_pos = 1.0;   ///< SAPO temperature for A > 0 (> 0)
  double sapo_tau_neg = 1.05;  ///< SAPO temperature for A <= 0 (> 0)
  double log_ratio_min = -20.0;  ///< <= 0; -polo::unbounded disables the lower clamp
  double log_ratio_max = 20.0;   ///< >= 0; polo::unbounded disables the upper clamp
  aggregation agg = aggregation::token_mean;  ///< <polo/aggregation.hpp>
  double kl_coef = 0.0;  ///< beta >= 0; 0 means no KL term (logp_ref may then be null)
  kl_config kl{};
  kl_aggregation kl_agg = kl_aggregation::same_as_policy;
  token_nonfinite_policy nonfinite = token_nonfinite_policy::error;
};

namespace detail {
/// How a call's token-level KL terms aggregate: token_mean under kl_aggregation::token_mean,
/// else as the objective (`c.agg`). One definition for the CPU backend, the CUDA kernels and
/// policy_loss_from_parts.
POLO_HD_INLINE aggregation kl_aggregation_of(const policy_loss_config& c) {
  return c.kl_agg == kl_aggregation::token_mean ? aggregation::token_mean : c.agg;
}
}  // namespace detail

/// Mask counts of one call: add (all-reduce) them over micro-batches and ranks with +=, then
/// pass them as `normalizers{.tokens = double(c.tokens), .sequences = double(c.sequences)}`.
struct token_counts {
  index_t tokens = 0;     ///< valid tokens
  index_t sequences = 0;  ///< sequences with at least one valid token
  token_counts& operator+=(const token_counts& o) {
    tokens += o.tokens;
    sequences += o.sequences;
    return *this;
  }
};

/// Minimum, maximum and mean of a set of values, mergeable with +=. `min()`/`max()` are 0 when
/// the set is empty (never +-inf in a log).
struct value_range {
  sum_count<double> total{};
  double lo = unbounded;
  double hi = -unbounded;
  POLO_HD_INLINE void add(double x) {
    total += sum_count<double>{x, 1};
    lo = x < lo ? x : lo;
    hi = x > hi ? x : hi;
  }
  POLO_HD_INLINE value_range& operator+=(const value_range& o) {
    total += o.total;
    lo = o.lo < lo ? o.lo : lo;
    hi = o.hi > hi ? o.hi : hi;
    return *this;
  }
  [[nodiscard]] double min() const { return total.count > 0 ? lo : 0.0; }
  [[nodiscard]] double max() const { return total.count > 0 ? hi : 0.0; }
  [[nodiscard]] double mean() const { return total.mean(); }
};

/// Statistics of one policy_loss call, for logging. Every field is a count, a sum_count or a
/// value_range, so results of micro-batches and ranks combine exactly with +=. Fractions are
/// `field.mean()`: a sum of indicators over a count of tokens.
struct policy_loss_stats {
  index_t tokens = 0;            ///< valid tokens (mask), skipped ones included
  index_t sequences = 0;         ///< sequences with at least one valid token
  index_t masked_tokens = 0;     ///< positions with mask 0 (their gradient is written 0)
  index_t nonfinite_tokens = 0;  ///< valid tokens with a NaN/inf input (token_nonfinite_policy::skip)
  index_t skipped_tokens = 0;    ///< valid tokens that contributed nothing (their own or their sequence's NaN/inf)
  /// Over the contributing tokens: the clipped branch was strictly larger with r > 1 (clip) or
  /// the weight was clipped above (cispo).
  sum_count<double> clip_upper{};
  sum_count<double> clip_lower{};  ///< the same with r < 1
  sum_count<double> clip_dual{};   ///< the dual clip was active (A < 0)
  sum_count<double> delta_capped{};  ///< r > delta (the cap on the unclipped ratio was active)
  /// The ratio the objective used per token (under ratio_level::sequence, its sequence's s_i).
  value_range ratio{};
  /// Tokens whose log-ratio (token level) or whose sequence's mean log-ratio was clamped.
  sum_count<double> clamped_log_ratio{};
  /// Approximate KL(pi_old || pi) from the sampling policy: mean of logp_old - logp, the raw
  /// difference (verl's and OpenRLHF's `ppo_kl`, Schulman's k1 of the samples of pi_old).
  sum_count<double> approx_kl_k1{};
  /// Approximate KL(pi_old || pi): mean of (r-1) - log r with the clamped token log-ratio
  /// (Schulman's k3, CleanRL's and TRL-PPO's `approx_kl`), always >= 0.
  sum_count<double> approx_kl_k3{};
  /// KL to the reference, the values that enter the loss (clamps and weight included): per
  /// token at token level, per sequence at sequence level. Empty when kl_coef = 0.
  sum_count<double> kl_ref{};
  sum_count<double> kl_clamped{};  ///< tokens (sequences) where the KL input or output clamp was active

  policy_loss_stats& operator+=(const policy_loss_stats& o) {
    tokens += o.tokens;
    sequences += o.sequences;
    masked_tokens += o.masked_tokens;
    nonfinite_tokens += o.nonfinite_tokens;
    skipped_tokens += o.skipped_tokens;
    clip_upper += o.clip_upper;
    clip_lower += o.clip_lower;
    clip_dual += o.clip_dual;
    delta_capped += o.delta_capped;
    ratio += o.ratio;
    clamped_log_ratio += o.clamped_log_ratio;
    approx_kl_k1 += o.approx_kl_k1;
    approx_kl_k3 += o.approx_kl_k3;
    kl_ref += o.kl_ref;
    kl_clamped += o.kl_clamped;
    return *this;
  }
};

/// What one policy_loss call returns.
struct policy_loss_result {
  double loss = 0.0;         ///< policy_loss + kl_coef * kl_loss: what the gradient is of
  double policy_loss = 0.0;  ///< the objective's aggregate
  double kl_loss = 0.0;      ///< the KL term's aggregate, before kl_coef
  /// The sum-and-count form, to all-reduce over calls: `sum` is the un-normalized numerator
  /// (sum of m*L for the token modes and token_sum_norm, sum over sequences of the per-sequence
  /// mean or sum for the seq modes; without `normalizers::scale`) and `count` this call's own
  /// count for the normalizer (valid tokens for token_mean, token_sum and token_sum_norm;
  /// non-empty sequences for the seq modes).
  /// `policy_loss_from_parts` turns the reduced parts into the whole batch's loss.
  sum_count<double> policy_parts{};
  sum_count<double> kl_parts{};  ///< the same for the KL term (sequences at sequence level)
  policy_loss_stats stats{};
  policy_loss_result& operator+=(const policy_loss_result& o) {
    loss += o.loss;
    policy_loss += o.policy_loss;
    kl_loss += o.kl_loss;
    policy_parts += o.policy_parts;
    kl_parts += o.kl_parts;
    stats += o.stats;
    return *this;
  }
};

/// The loss of a whole batch from the parts of its calls (added, or all-reduced), times
/// `norm.scale`: sum/count for the mean modes, sum for token_sum, sum/norm.constant for
/// token_sum_norm (0 unless the constant is > 0); the KL term likewise (sequence-level KL:
/// sum/count). Equals the loss of one call over the whole batch, and the sum of the calls'
/// losses when they were given the global normalizers. The counts and the tokens/sequences
/// fields of `norm` are not used (the parts carry the counts).
[[nodiscard]] inline double policy_loss_from_parts(const policy_loss_config& c, sum_count<double> policy,
                                                   sum_count<double> kl, const normalizers& norm = {}) {
  auto part = [&](aggregation a, sum_count<double> p) {
    switch (a) {
      case aggregation::token_sum: return p.sum;
      case aggregation::token_sum_norm: return norm.constant > 0 ? p.sum / norm.constant : 0.0;
      default: return p.mean();
    }
  };
  double pl = part(c.agg, policy);
  double kl_term = 0.0;
  if (c.kl_coef != 0.0) {
    if (c.kl.level != kl_level::token)
      kl_term = kl.mean();
    else
      kl_term = part(detail::kl_aggregation_of(c), kl);
  }
  return norm.scale * (pl + c.kl_coef * kl_term);
}

namespace presets {
/// verl (verl/trainer/ppo/core_algos.py: compute_policy_loss_*, agg_loss, kl_penalty).
namespace verl {
/// `vanilla` (PPO): log-ratio clamp +-20, eps 0.2/0.2, dual clip c = 3 always on for A < 0,
/// token-mean, no KL loss (use_kl_loss=False).
inline constexpr policy_loss_config ppo_loss{.dual_clip = 3.0};
/// GRPO recipe: vanilla + use_kl_loss with kl_loss_coef 0.001, `low_var_kl` (k3, clamps 20/10).
inline constexpr policy_loss_config grpo_loss{.dual_clip = 3.0, .kl_coef = 0.001, .kl = presets::verl::low_var_kl};
/// DAPO recipe: clip-higher 0.2/0.28, dual clip 3, token-mean, no KL.
inline constexpr policy_loss_config dapo_loss{.eps_high = 0.28, .dual_clip = 3.0};
/// `gspo`: straight-through sequence ratio, log s clamped above at 10 only, eps 3e-4/4e-4, no
/// dual clip, seq-mean-token-mean.
inline constexpr policy_loss_config gspo_loss{.level = ratio_level::sequence,
                                         .sequence_gradient = sequence_ratio_gradient::straight_through,
                                         .eps_low = 3e-4,
                                         .eps_high = 4e-4,
                                         .log_ratio_min = -unbounded,
                                         .log_ratio_max = 10.0,
                                         .agg = aggregation::seq_mean_token_mean};
/// `cispo`: w = clip(r, 1-eps_low, 1+eps_high) with clip_ratio_low/high 0.2/0.2, clamp +-20.
inline constexpr policy_loss_config cispo_loss{.objective = policy_objective::cispo};
/// `sapo`: tau_pos 1.0, tau_neg 1.05, clamp +-20, token-mean.
inline constexpr policy_loss_config sapo_loss{.objective = policy_objective::sapo};
}  // namespace verl

/// TRL GRPOTrainer (trl/trainer/grpo_trainer.py, grpo_config.py): no log-ratio clamp, no dual
/// clip, eps 0.2 with epsilon_high = epsilon, beta = 0 (set kl_coef to enable k3, unclamped).
namespace trl {
/// loss_type="dapo" (default): token-mean over the generation batch's tokens; pass
/// `normalizers::tokens = num_items_in_batch / num_processes` (TRL's divisor) as the global
/// count. loss_type="bnpo" is the same with this call's own count (`normalizers::local`).
inline constexpr policy_loss_config dapo_loss{.log_ratio_min = -unbounded,
                                         .log_ratio_max = unbounded,
                                         .kl = presets::trl::kl_k3};
/// loss_type="grpo": per-sequence token mean, then mean over sequences. TRL's mean runs over
/// all B rows, all-masked ones included (mask_truncated_completions): pass
/// `normalizers::sequences = B` to match it there; polo's local count skips empty rows.
inline constexpr policy_loss_config grpo_loss{.log_ratio_min = -unbounded,
                                         .log_ratio_max = unbounded,
                                         .agg = aggregation::seq_mean_token_mean,
                                         .kl = presets::trl::kl_k3};
/// loss_type="dr_grpo": sum / (B * max_completion_length); pass normalizers::constant.
inline constexpr policy_loss_config dr_grpo_loss{.log_ratio_min = -unbounded,
                                            .log_ratio_max = unbounded,
                                            .agg = aggregation::token_sum_norm,
                                            .kl = presets::trl::kl_k3};
/// loss_type="cispo" with the recommended epsilon_high = 5.0: w = min(r, 5), token-mean.
inline constexpr policy_loss_config cispo_loss{.objective = policy_objective::cispo,
                                          .eps_high = 5.0,
                                          .cispo = cispo_bound::upper_raw,
                                          .log_ratio_min = -unbounded,
                                          .log_ratio_max = unbounded,
                                          .kl = presets::trl::kl_k3};
/// loss_type="sapo": tau 1.0/1.05, per-sequence token mean then mean over sequences.
inline constexpr policy_loss_config sapo_loss{.objective = policy_objective::sapo,
                                         .log_ratio_min = -unbounded,
                                         .log_ratio_max = unbounded,
                                         .agg = aggregation::seq_mean_token_mean,
                                         .kl = presets::trl::kl_k3};
/// GSPO as TRL documents it: importance_sampling_level="sequence", loss_type="grpo",
/// epsilon 3e-4, epsilon_high 4e-4, gradient through the sequence mean.
inline constexpr policy_loss_config gspo_loss{.level = ratio_level::sequence,
                                         .eps_low = 3e-4,
                                         .eps_high = 4e-4,
                                         .log_ratio_min = -unbounded,
                                         .log_ratio_max = unbounded,
                                         .agg = aggregation::seq_mean_token_mean,
                                         .kl = presets::trl::kl_k3};
}  // namespace trl

/// OpenRLHF (openrlhf/models/loss.py PolicyLoss, openrlhf/models/utils.py compute_approx_kl).
namespace openrlhf {
/// `ppo`: log-ratio clamp +-20, eps 0.2/0.2, dual clip off, token-level loss; the KL goes into
/// the reward (k1 with output clamp 10: use `kl` with kl_penalized_rewards).
inline constexpr policy_loss_config ppo_loss{.kl = presets::openrlhf::kl_k1};
/// GRPO recipe (--use_kl_loss --kl_estimator k3, init_kl_coef 0.01): the KL term always
/// token-mean, output clamp 10.
inline constexpr policy_loss_config grpo_loss{.kl_coef = 0.01,
                                         .kl = presets::openrlhf::kl_k3,
                                         .kl_agg = kl_aggregation::token_mean};
/// `gspo`: sequence ratio through the mean, no log-ratio clamp, sample-level (seq-mean-token-mean).
inline constexpr policy_loss_config gspo_loss{.level = ratio_level::sequence,
                                         .log_ratio_min = -unbounded,
                                         .log_ratio_max = unbounded,
                                         .agg = aggregation::seq_mean_token_mean,
                                         .kl = presets::openrlhf::kl_k3,
                                         .kl_agg = kl_aggregation::token_mean};
}  // namespace openrlhf

/// NeMo-RL ClippedPGLoss (nemo_rl/algorithms/loss/loss_functions.py): eps 0.2/0.2, no log-ratio
/// clamp, dual clip off, token level, KL k3 (clamps 20/10) with coefficient 0.01 and the
/// e^(logp - sg logp) weight. NeMo divides by (normalizer + 1e-8); polo divides exactly.
namespace nemo {
inline constexpr policy_loss_config grpo_loss{.log_ratio_min = -unbounded,
                                         .log_ratio_max = unbounded,
                                         .kl_coef = 0.01,
                                         .kl = presets::nemo::kl_k3};
/// sequence_level_importance_ratios with token_level_loss=False (GSPO).
inline constexpr policy_loss_config gspo_loss{.level = ratio_level::sequence,
                                         .log_ratio_min = -unbounded,
                                         .log_ratio_max = unbounded,
                                         .agg = aggregation::seq_mean_token_mean,
                                         .kl_coef = 0.01,
                                         .kl = presets::nemo::kl_k3};
/// use_cispo: w = clip(r, 1-eps_low, 1+eps_high), token level.
inline constexpr policy_loss_config cispo_loss{.objective = policy_objective::cispo,
                                          .log_ratio_min = -unbounded,
                                          .log_ratio_max = unbounded,
                                          .kl_coef = 0.01,
                                          .kl = presets::nemo::kl_k3};
/// disable_ppo_ratio: REINFORCE, -A * logp.
inline constexpr policy_loss_config reinforce_loss{.objective = policy_objective::reinforce,
                                              .log_ratio_min = -unbounded,
                                              .log_ratio_max = unbounded,
                                              .kl_coef = 0.01,
                                              .kl = presets::nemo::kl_k3};
}  // namespace nemo
}  // namespace presets

namespace detail {

/// Tag of this primitive family in detail::backend_impl.
struct policy_loss_tag {};

/// Flags of one token's objective, for the clip statistics.
enum : unsigned char {
  surrogate_clip_upper = 1,
  surrogate_clip_lower = 2,
  surrogate_clip_dual = 4,
  surrogate_delta_capped = 8,
};

/// The per-token formulas below are templates over the scalar F they compute in: double
/// everywhere on the CPU (F deduced from the arguments), float in the CUDA kernels when the
/// inputs are float or narrower (bounds from the config are then rounded to float).

/// One token's objective at ratio r: its value, dL/dr, dL/dlogp at a fixed ratio, and flags.
template <class F>
struct basic_surrogate_point {
  F loss = F(0);
  F d_ratio = F(0);
  F d_logp = F(0);
  unsigned char flags = 0;
};
using surrogate_point = basic_surrogate_point<double>;

/// x clamped to [lo, hi], and whether the clamp was active (strictly outside).
template <class F>
POLO_HD_INLINE F clamp_flag(F x, std::type_identity_t<F> lo, std::type_identity_t<F> hi, bool& active) {
  active = x < lo || x > hi;
  return x < lo ? lo : (x > hi ? hi : x);
}

/// The bounds of the per-token formulas rounded to F once (1 - eps_low and 1 + eps_high
/// formed in double first, as the formulas always did): a kernel builds it on the host instead
/// of converting the config's doubles at every token. The formulas below take it; their
/// overloads on policy_loss_config build it on the spot (the CPU backend, F = double).
template <class F>
struct basic_token_consts {
  policy_objective objective;
  cispo_bound cispo;
  F log_ratio_min, log_ratio_max;
  F clip_low, clip_high;  ///< 1 - eps_low, 1 + eps_high
  F eps_high, dual_clip, delta;
  F sapo_tau_pos, sapo_tau_neg;
  basic_kl_consts<F> kl;
  POLO_HD_INLINE basic_token_consts() : basic_token_consts(policy_loss_config{}) {}
  POLO_HD_INLINE explicit basic_token_consts(const policy_loss_config& c)
      : objective(c.objective),
        cispo(c.cispo),
        log_ratio_min(F(c.log_ratio_min)),
        log_ratio_max(F(c.log_ratio_max)),
        clip_low(F(1.0 - c.eps_low)),
        clip_high(F(1.0 + c.eps_high)),
        eps_high(F(c.eps_high)),
        dual_clip(F(c.dual_clip)),
        delta(F(c.delta)),
        sapo_tau_pos(F(c.sapo_tau_pos)),
        sapo_tau_neg(F(c.sapo_tau_neg)),
        kl(c.kl) {}
};

/// A ratio from a log-ratio under the config's clamp: r = e^(clamp(lr)), its derivative
/// d r / d lr (r where the clamp is inactive, 0 where it is active), and whether it was active.
template <class F>
struct basic_ratio_point {
  F ratio = F(1);
  F d_log_ratio = F(1);
  bool clamped = false;
};
using ratio_point = basic_ratio_point<double>;
template <class F>
POLO_HD_INLINE basic_ratio_point<F> ratio_from_log_ratio(const basic_token_consts<F>& c, F lr) {
  basic_ratio_point<F> p;
  const F x = clamp_flag<F>(lr, c.log_ratio_min, c.log_ratio_max, p.clamped);
  p.ratio = exp_hd(x);
  p.d_log_ratio = p.clamped ? F(0) : p.ratio;
  return p;
}

/// s * dr without inf*0: a zero sensitivity stays exactly 0 even where the ratio overflowed.
template <class F>
POLO_HD_INLINE F times_sensitivity(F s, std::type_identity_t<F> dr) {
  return s == F(0) ? F(0) : s * dr;
}

/// Schulman's k3 of the sampling policy, (r-1) - log r with the clamped token log-ratio lr
/// (policy_loss_stats::approx_kl_k3), computed as expm1(x) - x.
template <class F>
POLO_HD_INLINE F approx_kl_k3(const basic_token_consts<F>& c, F lr) {
  bool active = false;
  const F x = clamp_flag<F>(lr, c.log_ratio_min, c.log_ratio_max, active);
  return expm1_hd(x) - x;
}

/// ratio_from_log_ratio and approx_kl_k3 of the same token log-ratio lr, together. Bounded =
/// true is the caller's promise that the config's clamp lies within +-80 (log_ratio_min >= -80,
/// log_ratio_max <= 80): in float both then come from one range reduction and polynomial
/// (exp_expm1_f32, <polo/core/math.hpp>); otherwise, and in double, from the two formulas above.
template <class F, bool Bounded = false>
POLO_HD_INLINE void ratio_and_k3(const basic_token_consts<F>& c, F lr, basic_ratio_point<F>& rp, F& k3) {
  if constexpr (Bounded && std::is_same_v<F, float>) {
    const float x = clamp_flag<float>(lr, c.log_ratio_min, c.log_ratio_max, rp.clamped);
    float e = 0.0f, em = 0.0f;
    exp_expm1_f32(x, e, em);
    rp.ratio = e;
    rp.d_log_ratio = rp.clamped ? 0.0f : e;
    k3 = em - x;
  } else {
    rp = ratio_from_log_ratio<F>(c, lr);
    k3 = approx_kl_k3<F>(c, lr);
  }
}

/// The per-token objective of the file comment at ratio r, advantage a and log-prob lp.
template <class F>
POLO_HD_INLINE basic_surrogate_point<F> surrogate(const basic_token_consts<F>& c, F r, std::type_identity_t<F> a,
                                                  std::type_identity_t<F> lp) {
  basic_surrogate_point<F> p;
  if (a == F(0)) return p;  // exactly 0: no inf*0 even where r overflowed
  switch (c.objective) {
    case policy_objective::clip: {
      bool out2 = false;
      const F coef2 = clamp_flag<F>(r, c.clip_low, c.clip_high, out2);
      const F delta = c.delta;
      const bool capped = r > delta;
      const F coef1 = capped ? delta : r;
      const F s1 = -a * coef1, s2 = -a * coef2;
      const bool clipped = s2 > s1;
      p.loss = clipped ? s2 : s1;
      p.d_ratio = clipped ? (out2 ? F(0) : -a) : (capped ? F(0) : -a);
      if (clipped) p.flags |= r > F(1) ? surrogate_clip_upper : surrogate_clip_lower;
      if (capped) p.flags |= surrogate_delta_capped;
      if (a < F(0)) {
        const F s3 = -a * c.dual_clip;
        if (s3 < p.loss) {
          p.loss = s3;
          p.d_ratio = F(0);
          p.flags |= surrogate_clip_dual;
        }
      }
      break;
    }
    case policy_objective::cispo: {
      F w = r;
      if (c.cispo == cispo_bound::clip_both) {
        bool out = false;
        w = clamp_flag<F>(r, c.clip_low, c.clip_high, out);
        if (out) p.flags |= r > F(1) ? surrogate_clip_upper : surrogate_clip_lower;
      } else if (r > c.eps_high) {
        w = c.eps_high;
        p.flags |= surrogate_clip_upper;
      }
      p.loss = -w * a * lp;
      p.d_logp = -w * a;
      break;
    }
    case policy_objective::sapo: {
      const F tau = a > F(0) ? c.sapo_tau_pos : c.sapo_tau_neg;
      const F z = tau * (r - F(1));
      const F s = F(1) / (F(1) + exp_hd(-z));   // sigmoid(z)
      const F sm = F(1) / (F(1) + exp_hd(z));   // 1 - sigmoid(z), without cancellation
      p.loss = -a * s * F(4) / tau;
      p.d_ratio = -a * F(4) * s * sm;
      break;
    }
    case policy_objective::reinforce: {
      p.loss = -a * lp;
      p.d_logp = -a;
      break;
    }
  }
  return p;
}

/// The formulas above from the config itself (its bounds rounded to F here).
template <class F>
POLO_HD_INLINE basic_ratio_point<F> ratio_from_log_ratio(const policy_loss_config& c, F lr) {
  return ratio_from_log_ratio<F>(basic_token_consts<F>(c), lr);
}
template <class F>
POLO_HD_INLINE F approx_kl_k3(const policy_loss_config& c, F lr) {
  return approx_kl_k3<F>(basic_token_consts<F>(c), lr);
}
template <class F>
POLO_HD_INLINE basic_surrogate_point<F> surrogate(const policy_loss_config& c, F r, std::type_identity_t<F> a,
                                                  std::type_identity_t<F> lp) {
  return surrogate<F>(basic_token_consts<F>(c), r, a, lp);
}

inline bool uses_ratio_level_sequence(const policy_loss_config& c) { return c.level == ratio_level::sequence; }
inline bool uses_kl(const policy_loss_config& c) { return c.kl_coef != 0.0; }
inline bool uses_sequence_kl(const policy_loss_config& c) { return uses_kl(c) && c.kl.level != kl_level::token; }

inline void check_policy_loss_config(const char* fn, const policy_loss_config& c) {
  using std::to_string;
  if (!(c.eps_low >= 0.0 && c.eps_low <= 1.0))
    throw_config(fn, "eps_low", value_str(c.eps_low), "a value in [0, 1] (the lower clip is 1 - eps_low)");
  if (!(c.eps_high >= 0.0) || !is_finite(c.eps_high))
    throw_config(fn, "eps_high", value_str(c.eps_high), "a finite value >= 0");
  if (c.objective == policy_objective::cispo && c.cispo == cispo_bound::upper_raw && !(c.eps_high > 0.0))
    throw_config(fn, "eps_high", value_str(c.eps_high), "> 0 (the raw upper bound of cispo_bound::upper_raw, e.g. 5)");
  if (!(c.dual_clip > 1.0))
    throw_config(fn, "dual_clip", value_str(c.dual_clip),
                 "a value > 1 (it bounds -A*r for A < 0 from above by -A*c), or polo::unbounded to disable it");
  if (!(c.delta > 1.0))
    throw_config(fn, "delta", value_str(c.delta), "a value > 1, or polo::unbounded to disable it");
  if (!(c.sapo_tau_pos > 0.0) || !is_finite(c.sapo_tau_pos))
    throw_config(fn, "sapo_tau_pos", value_str(c.sapo_tau_pos), "a finite value > 0");
  if (!(c.sapo_tau_neg > 0.0) || !is_finite(c.sapo_tau_neg))
    throw_config(fn, "sapo_tau_neg", value_str(c.sapo_tau_neg), "a finite value > 0");
  if (!(c.log_ratio_min <= 0.0))
    throw_config(fn, "log_ratio_min", value_str(c.log_ratio_min), "a value <= 0 (-polo::unbounded disables it)");
  if (!(c.log_ratio_max >= 0.0))
    throw_config(fn, "log_ratio_max", value_str(c.log_ratio_max), "a value >= 0 (polo::unbounded disables it)");
  if (!(c.log_ratio_min < c.log_ratio_max))
    throw_config(fn, "log_ratio_max", value_str(c.log_ratio_max),
                 "a value > log_ratio_min = " + value_str(c.log_ratio_min));
  if (!(c.kl_coef >= 0.0) || !is_finite(c.kl_coef))
    throw_config(fn, "kl_coef", value_str(c.kl_coef), "a finite value >= 0 (0 disables the KL term)");
  check_kl_config(fn, "kl.", c.kl);
}


}  // namespace detail

/// Counts of the mask, for the global normalizers: valid tokens and sequences with at least one
/// valid token. Add the counts of every call (micro-batch, rank) before passing them to
/// policy_loss as `normalizers`.
/// \throws shape_error, value_error (packed offsets)
/// Bytes moved: the mask once.
template <Backend B, TokenLayout L>
token_counts count_tokens(const B& be, const L& layout) {
  static_assert(accepts_space_v<B, typename L::memory_space>,
                "polo::count_tokens: the layout lives in a memory space the chosen backend cannot read");
  layout.check("count_tokens");
  return detail::backend_impl<B, detail::policy_loss_tag>::count_tokens(be, layout);
}

/// The policy loss, its gradient with respect to `logp`, and statistics (see the file comment
/// for every formula, gradient and convention).
///
///     loss = sum_i sum_t m_it W_it L_it  +  kl_coef * KL term
///     grad_logp[i,t] = d loss / d logp[i,t]   (0 at masked positions)
///
/// \param be          backend tag (`polo::cpu{}`, `polo::cuda{stream}`)
/// \param layout      `padded{mask [B,T]}` or `packed{offsets [B+1], N, mask [N]}`
/// \param logp        per-token log-probs of the current policy (`[B,T]` or `[N]`)
/// \param logp_old    per-token log-probs of the sampling policy (same shape)
/// \param logp_ref    per-token log-probs of the reference policy (same shape), or a null view
///                    `{}` when `cfg.kl_coef == 0`
/// \param advantages  per-token advantages (same shape; broadcast_to_tokens makes them from [B])
/// \param grad_logp   output, same shape; every element is written; must not overlap an input
/// \param cfg         options; see `policy_loss_config` and `polo::presets`
/// \param norm        the aggregation's normalizers (global counts for micro-batches and ranks)
/// \returns the loss, its parts, and statistics (combinable across calls with +=); on CUDA with
///          `be.result` set, a default value, the result being published to device memory
///          without a host synchronization (docs/cuda.md)
/// \throws shape_error (shapes, strides, a null logp_ref with kl_coef > 0, overlapping output),
///         config_error (options, normalizer fields out of domain), value_error (packed offsets),
///         nonfinite_error (a NaN or
///         infinity at a valid position under token_nonfinite_policy::error, naming the argument
///         and its flat row-major index). On throw nothing is written.
/// Bytes moved: 4 reads of T per token (3 without a KL term: logp_ref is then not read), the
/// mask, and 1 write of T per token: 21 bytes per token in float with a uint8 mask.
template <Backend B, TokenLayout L, class T, int R, class S>
  requires std::same_as<view<T, R, S>, token_tensor<L, T>>
policy_loss_result policy_loss(const B& be, const L& layout, std::type_identity_t<view<const T, R, S>> logp,
                               std::type_identity_t<view<const T, R, S>> logp_old,
                               std::type_identity_t<view<const T, R, S>> logp_ref,
                               std::type_identity_t<view<const T, R, S>> advantages, view<T, R, S> grad_logp,
                               const policy_loss_config& cfg = {}, const normalizers& norm = {}) {
  static_assert(accepts_space_v<B, S> && accepts_space_v<B, typename L::memory_space>,
                "polo::policy_loss: these views live in a memory space the chosen backend cannot read "
                "(host data given to polo::cuda, or device data given to polo::cpu)");
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "polo::policy_loss: log-probs, advantages and the gradient must be float or double");
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
  return detail::backend_impl<B, detail::policy_loss_tag>::policy_loss(be, layout, logp, logp_old, logp_ref,
                                                                       advantages, grad_logp, cfg, norm);
}

}  // namespace polo
