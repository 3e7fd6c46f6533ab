// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
#pragma once
/// \file
/// Group-normalized advantages (GRPO, Dr. GRPO, RLOO and their peer variants): from one score
/// per sequence to one advantage per sequence, and its broadcast onto the sequence's valid
/// tokens. Backend-neutral: this header declares the options, the presets and the entry
/// points, and validates shapes and options; the CPU implementation is in
/// <polo/cpu/advantages.hpp> (included by <polo/polo.hpp>).
///
/// ## The computation
/// Scores `s[B]` are partitioned into groups (contiguous blocks of G, or arbitrary labels).
/// Within group g, let V_g be its *scoreable* members (all of them, or the finite ones under
/// `nonfinite_policy::zero_advantage`) and k = |V_g|. For i in V_g:
///
///     b_i = mean(V_g)                    baseline_kind::group_mean       (GRPO)
///         = mean(V_g \ {i})              baseline_kind::leave_one_out    (RLOO)
///         = 0                            baseline_kind::none
///     σ_i = std(V_g)                     scale_kind::group_std           (GRPO)
///         = std(V_g \ {i})               scale_kind::leave_one_out_std   (NeMo-RL)
///         = std(all scoreable scores)    scale_kind::batch_std           (TRL "batch")
///         (no scaling)                   scale_kind::none                (Dr. GRPO)
///     A_i = (s_i - b_i) / D(σ_i)
///
/// with std over n values dividing the squared deviations by n-1 (`std_kind::sample`) or n
/// (`std_kind::population`), and D placing eps: σ+eps (`add_to_std`), sqrt(σ²+eps)
/// (`inside_sqrt`) or sqrt(max(σ², eps)) (`floor_variance`).
///
/// Edge rules, each an explicit option:
/// - a group with k = 1 follows `singleton_rule` (error, A = 0, or raw: b = 0 and, for the
///   group scales, σ = 1, which gives verl's A = s/(1+eps));
/// - a σ_i that is exactly zero (all values it is taken over are equal, or a sample std over
///   fewer than two values) follows `zero_variance_rule` (A = 0, divide by D(0) anyway, or skip
///   the division: A = s - b);
/// - a group with k = 0 (every member non-finite) gets A = 0;
/// - non-finite scores follow `nonfinite_policy` (throw, or A = 0 and excluded from every
///   statistic, as TRL does for unscorable rows).
///
/// Zero variance is detected exactly (equal values), not by a tolerance: rule-based rewards tie
/// exactly, and a tolerance would silently discard real signal. Statistics accumulate in double
/// for float and double inputs with two passes, so the fp32 cancellation that produced
/// advantages of -2075 in a peer (NVIDIA-NeMo/RL PR #4158) cannot happen; a constant group's
/// centred scores are exactly 0.
///
/// ## Presets
/// `polo::presets::<peer>::<estimator>` reproduce each peer's published semantics
/// (SEMANTICS.md 2.1-2.2); where a peer yields NaN (OpenRLHF on groups of one) the preset
/// throws instead and says so. polo's default (`advantage_config{}`) is GRPO with sample std
/// and eps 1e-6 added to σ (the majority of verl, TRL, OpenRLHF, NeMo-RL, slime, ROLL), groups
/// of one rejected (each peer silently does something different with them), zero-variance
/// groups set to exactly 0 and counted, and non-finite scores rejected.

#include <cstdint>
#include <string>
#include <type_traits>

#include "polo/core/backend.hpp"
#include "polo/core/error.hpp"
#include "polo/core/layout.hpp"
#include "polo/core/math.hpp"
#include "polo/core/reduce.hpp"
#include "polo/core/view.hpp"

namespace polo {

/// What is subtracted from a score.
enum class baseline_kind : unsigned char {
  group_mean,     ///< mean of the group's scoreable scores (GRPO)
  leave_one_out,  ///< mean of the *other* scoreable scores of the group (RLOO)
  none,           ///< nothing: A = s / D(σ)
};

/// What the centred score is divided by.
enum class scale_kind : unsigned char {
  group_std,          ///< std of the group's scoreable scores (GRPO)
  leave_one_out_std,  ///< std of the other scoreable scores of the group (NeMo-RL)
  batch_std,          ///< std of every scoreable score of the batch (TRL scale_rewards="batch")
  none,               ///< no division (Dr. GRPO, RLOO)
};

/// Divisor of the sum of squared deviations over n values.
enum class std_kind : unsigned char {
  sample,      ///< n - 1 (Bessel; torch.std's default; verl, TRL, OpenRLHF, NeMo-RL)
  population,  ///< n
};

/// Where eps enters the divisor D(σ).
enum class eps_placement : unsigned char {
  add_to_std,      ///< σ + eps
  inside_sqrt,     ///< sqrt(σ² + eps)
  floor_variance,  ///< sqrt(max(σ², eps))
};

/// What a group with exactly one scoreable member gets.
enum class singleton_rule : unsigned char {
  error,  ///< throw polo::value_error naming the group
  zero,   ///< A = 0 (TRL, NeMo-RL, verl rloo_vectorized)
  raw,    ///< b = 0, and σ = 1 for group scales: A = s / D(1) (verl grpo and rloo)
};

/// What happens when the σ a score is divided by is exactly zero.
enum class zero_variance_rule : unsigned char {
  zero,        ///< A = 0 exactly
  divide,      ///< A = (s - b) / D(0), as peers that always divide (needs eps > 0)
  skip_scale,  ///< A = s - b, undivided (NeMo-RL divides only where σ > 0)
};

/// What a NaN or infinite score does.
enum class nonfinite_policy : unsigned char {
  error,           ///< throw polo::nonfinite_error naming the index; nothing is written
  zero_advantage,  ///< A = 0, and the score is left out of every statistic (TRL)
};

/// Options of group_advantages. Defaults are polo's own (see the file comment for why).
struct advantage_config {
  baseline_kind baseline = baseline_kind::group_mean;
  scale_kind scale = scale_kind::group_std;
  std_kind std = std_kind::sample;
  eps_placement eps_mode = eps_placement::add_to_std;
  double eps = 1e-6;  ///< >= 0; must be > 0 where D(0) could be divided by
  singleton_rule singleton = singleton_rule::error;
  zero_variance_rule zero_variance = zero_variance_rule::zero;
  nonfinite_policy nonfinite = nonfinite_policy::error;
  /// For scale_kind::batch_std across ranks or micro-batches: when `batch.count > 0` the batch
  /// std is taken from these moments (all-reduce each rank's `group_stats::scores` with
  /// `moments::operator+=`) instead of from this call's scores.
  moments batch{};
};

/// Groups as contiguous blocks: sequences [g*size, (g+1)*size) form group g (PyTorch's
/// `view(-1, G)`). B must be a multiple of size.
struct contiguous_groups {
  index_t size = 1;  ///< G >= 1
};

/// Groups given by one label per sequence: any integer values, any order, any group sizes
/// (verl's `uid`). Members of a group are visited in ascending sequence index, so results do
/// not depend on how labels are numbered or where groups sit in the batch.
template <class Label = std::int64_t, class Space = host_space>
struct labelled_groups {
  static_assert(std::is_integral_v<Label>, "polo::labelled_groups: labels must be integers");
  view<const Label, 1, Space> labels{};  ///< [B]
};

/// Deduction helper: `polo::groups_by_label(polo::view_of(labels))`.
template <class Label, class Space>
labelled_groups<std::remove_const_t<Label>, Space> groups_by_label(view<Label, 1, Space> labels) {
  return {labels};
}

/// Statistics of one group_advantages call, for logging. Every field is a count, a sum or
/// `moments`, so results of several calls (micro-batches, ranks) combine exactly with `+=`.
struct group_stats {
  index_t sequences = 0;         ///< B
  index_t groups = 0;            ///< groups (each has at least one member)
  index_t empty_groups = 0;      ///< groups whose every member is non-finite (all get A = 0)
  index_t singleton_groups = 0;  ///< groups with exactly one scoreable member
  index_t zero_std_groups = 0;   ///< groups with >= 2 scoreable members, all equal
  index_t nonfinite_scores = 0;  ///< NaN/inf scores (only under nonfinite_policy::zero_advantage)
  moments scores{};              ///< moments of the scoreable scores
  sum_count<double> group_std{}; ///< σ_g (config's std_kind) over groups with >= 2 scoreable members
  sum_count<double> advantage{}; ///< sum of A over all B sequences

  group_stats& operator+=(const group_stats& o) {
    sequences += o.sequences;
    groups += o.groups;
    empty_groups += o.empty_groups;
    singleton_groups += o.singleton_groups;
    zero_std_groups += o.zero_std_groups;
    nonfinite_scores += o.nonfinite_scores;
    scores += o.scores;
    group_std += o.group_std;
    advantage += o.advantage;
    return *this;
  }
  /// Fraction of groups with >= 2 scoreable members whose scores are all equal: they carry no
  /// policy-gradient signal (TRL's frac_reward_zero_std). 0 when there is no such group.
  [[nodiscard]] double frac_zero_std() const {
    index_t multi = groups - singleton_groups - empty_groups;
    return multi > 0 ? double(zero_std_groups) / double(multi) : 0.0;
  }
  [[nodiscard]] double mean_score() const { return scores.mean; }
  [[nodiscard]] double mean_group_std() const { return group_std.mean(); }
};

namespace presets {
/// verl (verl/trainer/ppo/core_algos.py).
namespace verl {
/// `grpo`: (s-μ)/(σ+1e-6), sample σ, groups of one give s/(1+1e-6).
inline constexpr advantage_config grpo{.baseline = baseline_kind::group_mean,
                                       .scale = scale_kind::group_std,
                                       .std = std_kind::sample,
                                       .eps_mode = eps_placement::add_to_std,
                                       .eps = 1e-6,
                                       .singleton = singleton_rule::raw,
                                       .zero_variance = zero_variance_rule::divide,
                                       .nonfinite = nonfinite_policy::error};
/// `grpo` with norm_adv_by_std_in_grpo=False: s-μ (groups of one keep s).
inline constexpr advantage_config grpo_no_std{.baseline = baseline_kind::group_mean,
                                              .scale = scale_kind::none,
                                              .singleton = singleton_rule::raw,
                                              .zero_variance = zero_variance_rule::divide};
/// `rloo`: s - mean of the others; groups of one keep s.
inline constexpr advantage_config rloo{.baseline = baseline_kind::leave_one_out,
                                       .scale = scale_kind::none,
                                       .singleton = singleton_rule::raw,
                                       .zero_variance = zero_variance_rule::divide};
/// `rloo_vectorized`: as rloo, but groups of one get 0.
inline constexpr advantage_config rloo_vectorized{.baseline = baseline_kind::leave_one_out,
                                                  .scale = scale_kind::none,
                                                  .singleton = singleton_rule::zero,
                                                  .zero_variance = zero_variance_rule::divide};
}  // namespace verl

/// TRL GRPOTrainer (trl/trainer/grpo_trainer.py); use contiguous_groups{num_generations}.
namespace trl {
/// scale_rewards="group" (default): (r-μ)/(σ+1e-4), nan-aware sample σ, unscorable rows get 0.
inline constexpr advantage_config grpo{.baseline = baseline_kind::group_mean,
                                       .scale = scale_kind::group_std,
                                       .std = std_kind::sample,
                                       .eps_mode = eps_placement::add_to_std,
                                       .eps = 1e-4,
                                       .singleton = singleton_rule::zero,
                                       .zero_variance = zero_variance_rule::divide,
                                       .nonfinite = nonfinite_policy::zero_advantage};
/// scale_rewards="batch": group mean, σ over the whole (gathered) batch.
inline constexpr advantage_config grpo_batch_std{.baseline = baseline_kind::group_mean,
                                                 .scale = scale_kind::batch_std,
                                                 .std = std_kind::sample,
                                                 .eps_mode = eps_placement::add_to_std,
                                                 .eps = 1e-4,
                                                 .singleton = singleton_rule::zero,
                                                 .zero_variance = zero_variance_rule::divide,
                                                 .nonfinite = nonfinite_policy::zero_advantage};
/// scale_rewards="none" (Dr. GRPO): r-μ.
inline constexpr advantage_config grpo_no_scale{.baseline = baseline_kind::group_mean,
                                                .scale = scale_kind::none,
                                                .singleton = singleton_rule::zero,
                                                .zero_variance = zero_variance_rule::divide,
                                                .nonfinite = nonfinite_policy::zero_advantage};
}  // namespace trl

/// OpenRLHF (openrlhf/trainer/ppo_utils/experience_maker.py); contiguous groups of
/// n_samples_per_prompt. OpenRLHF returns NaN (group_norm) or divides by zero (rloo) on
/// groups of one; these presets throw instead.
namespace openrlhf {
/// `group_norm`: (r-μ)/(σ+1e-9), sample σ.
inline constexpr advantage_config group_norm{.baseline = baseline_kind::group_mean,
                                             .scale = scale_kind::group_std,
                                             .std = std_kind::sample,
                                             .eps_mode = eps_placement::add_to_std,
                                             .eps = 1e-9,
                                             .singleton = singleton_rule::error,
                                             .zero_variance = zero_variance_rule::divide};
/// `rloo`: r - (Σr - r)/(n-1).
inline constexpr advantage_config rloo{.baseline = baseline_kind::leave_one_out,
                                       .scale = scale_kind::none,
                                       .singleton = singleton_rule::error,
                                       .zero_variance = zero_variance_rule::divide};
/// `dr_grpo` and the group step of `reinforce_baseline`: r - μ (a group of one gives 0).
inline constexpr advantage_config dr_grpo{.baseline = baseline_kind::group_mean,
                                          .scale = scale_kind::none,
                                          .singleton = singleton_rule::zero,
                                          .zero_variance = zero_variance_rule::divide};
}  // namespace openrlhf

/// NeMo-RL (nemo_rl/algorithms/advantage_estimator.py).
namespace nemo {
/// `grpo` (default): leave-one-out baseline and leave-one-out sample σ; division by σ+1e-6
/// only where σ > 0; a prompt with one valid sample gets 0.
inline constexpr advantage_config grpo{.baseline = baseline_kind::leave_one_out,
                                       .scale = scale_kind::leave_one_out_std,
                                       .std = std_kind::sample,
                                       .eps_mode = eps_placement::add_to_std,
                                       .eps = 1e-6,
                                       .singleton = singleton_rule::zero,
                                       .zero_variance = zero_variance_rule::skip_scale};
/// `grpo` with normalize_rewards=False: leave-one-out baseline only.
inline constexpr advantage_config grpo_no_std{.baseline = baseline_kind::leave_one_out,
                                              .scale = scale_kind::none,
                                              .singleton = singleton_rule::zero,
                                              .zero_variance = zero_variance_rule::skip_scale};
}  // namespace nemo
}  // namespace presets

namespace detail {

/// Tag of this primitive family in detail::backend_impl.
struct advantages_tag {};

inline void check_advantage_config(const char* fn, const advantage_config& c) {
  if (!(c.eps >= 0.0) || !is_finite(c.eps))
    throw_config(fn, "eps", value_str(c.eps), "a finite value >= 0");
  bool scales = c.scale != scale_kind::none;
  if (scales && c.eps == 0.0 &&
      (c.zero_variance == zero_variance_rule::divide || c.eps_mode == eps_placement::floor_variance))
    throw_config(fn, "eps", "0",
                 "eps > 0 with zero_variance_rule::divide or eps_placement::floor_variance "
                 "(a zero σ would be divided by 0)");
  if (c.batch.count < 0 || !(c.batch.m2 >= 0.0) || !is_finite(c.batch.mean))
    throw_config(fn, "batch", "moments{count=" + std::to_string(c.batch.count) + ", mean=" +
                                  value_str(c.batch.mean) + ", m2=" + value_str(c.batch.m2) + "}",
                 "count >= 0, finite mean and m2 >= 0");
  if (c.batch.count > 0 && c.scale != scale_kind::batch_std)
    throw_config(fn, "batch", "set (count " + std::to_string(c.batch.count) + ")",
                 "unset unless scale == scale_kind::batch_std");
}

inline void check_groups(const char* fn, index_t B, const contiguous_groups& g) {
  if (g.size < 1) throw_config(fn, "groups.size", std::to_string(g.size), "G >= 1");
  if (B % g.size != 0)
    throw_shape(fn, "scores", shape_str({B}),
                "a multiple of the group size G = " + std::to_string(g.size) +
                    " (use labelled_groups for groups of unequal size)");
}
template <class L, class S>
void check_groups(const char* fn, index_t B, const labelled_groups<L, S>& g) {
  require_extent(fn, "groups.labels", g.labels, B, "one label per score");
}

template <class B, class Space>
constexpr void static_check_space() {
  static_assert(accepts_space_v<B, Space>,
                "polo: these views live in a memory space the chosen backend cannot read "
                "(host data given to polo::cuda, or device data given to polo::cpu). Use "
                "polo::view_of for host memory with polo::cpu, polo::device_view_of for device "
                "memory with polo::cuda.");
}
template <class T>
constexpr void static_check_real() {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "polo: this primitive takes float or double values");
}

}  // namespace detail

/// Group-normalized advantages, one per sequence.
///
///     A_i = (s_i - b_i) / D(σ_i)        (see the file comment for b, σ, D and the edge rules)
///
/// \param be          backend tag (`polo::cpu{}`, `polo::cuda{stream}`)
/// \param scores      `[B]` one score per sequence (float or double, any stride)
/// \param groups      `contiguous_groups{G}` (B % G == 0) or `labelled_groups{labels [B]}`
/// \param advantages  `[B]` output, same type as scores; may alias scores exactly
/// \param cfg         options; see `advantage_config` and `polo::presets`
/// \returns statistics for logging (combinable across calls with +=)
/// \throws shape_error, config_error, value_error (a group of one under singleton_rule::error),
///         nonfinite_error (a non-finite score under nonfinite_policy::error). On throw nothing
///         is written.
/// Bytes moved: 8 per sequence in float (score in, advantage out), plus 8 per label.
template <Backend B, class U, class T, class Space, class Groups>
  requires std::same_as<std::remove_const_t<U>, T>
group_stats group_advantages(const B& be, view<U, 1, Space> scores, const Groups& groups,
                             view<T, 1, Space> advantages, const advantage_config& cfg = {}) {
  detail::static_check_space<B, Space>();
  detail::static_check_real<T>();
  constexpr const char* fn = "group_advantages";
  detail::check_view(fn, "scores", scores);
  detail::require_extent(fn, "advantages", advantages, scores.n, "one advantage per score");
  detail::check_groups(fn, scores.n, groups);
  detail::check_advantage_config(fn, cfg);
  return detail::backend_impl<B, detail::advantages_tag>::group_advantages(be, view<const T, 1, Space>(scores), groups,
                                                   advantages, cfg);
}

/// Broadcasts one value per sequence onto the sequence's valid tokens:
///
///     out[i, t] = mask[i, t] ? values[i] : 0
///
/// \param values  `[B]` per-sequence values (e.g. advantages)
/// \param layout  `padded{mask [B,T]}` or `packed{offsets [B+1], N, mask [N]}`
/// \param out     per-token output of the layout (`[B,T]` or `[N]`); every element is written
/// \throws shape_error; nonfinite_error if a value of a sequence with valid tokens is not
///         finite. On throw nothing is written.
/// Bytes moved: T-size per token out, mask bytes per token in.
template <Backend B, class U, class Space, TokenLayout L, class T = std::remove_const_t<U>>
void broadcast_to_tokens(const B& be, view<U, 1, Space> values, const L& layout,
                         token_tensor<L, std::remove_const_t<U>> out) {
  detail::static_check_space<B, Space>();
  detail::static_check_space<B, typename L::memory_space>();
  detail::static_check_real<T>();
  constexpr const char* fn = "broadcast_to_tokens";
  layout.check(fn);
  detail::require_extent(fn, "values", values, layout.num_seqs(), "one value per sequence of the layout");
  layout.check_tensor(fn, "out", out);
  detail::backend_impl<B, detail::advantages_tag>::broadcast_to_tokens(be, view<const T, 1, Space>(values), layout, out);
}

/// group_advantages followed by broadcast_to_tokens: per-sequence advantages `[B]` and the
/// per-token advantages of the layout, validated together so that nothing is written unless
/// both can be.
template <Backend B, class U, class T, class Space, class Groups, TokenLayout L>
  requires std::same_as<std::remove_const_t<U>, T>
group_stats group_advantages(const B& be, view<U, 1, Space> scores, const Groups& groups,
                             const L& layout, view<T, 1, Space> advantages,
                             token_tensor<L, T> token_advantages, const advantage_config& cfg = {}) {
  detail::static_check_space<B, typename L::memory_space>();
  constexpr const char* fn = "group_advantages";
  layout.check(fn);
  if (layout.num_seqs() != scores.n)
    detail::throw_shape(fn, "scores", scores.shape(),
                        detail::shape_str({layout.num_seqs()}) + " (one score per sequence of the layout)");
  layout.check_tensor(fn, "token_advantages", token_advantages);
  if constexpr (L::is_packed) {
    if constexpr (std::is_same_v<typename L::memory_space, host_space>) layout.check_offsets_host(fn);
  }
  if constexpr (requires { detail::backend_impl<B, detail::advantages_tag>::checks_layout_first; }) {
    // A backend that checks device-resident offsets itself, before writing anything.
    detail::static_check_space<B, Space>();
    detail::static_check_real<T>();
    detail::check_view(fn, "scores", scores);
    detail::require_extent(fn, "advantages", advantages, scores.n, "one advantage per score");
    detail::check_groups(fn, scores.n, groups);
    detail::check_advantage_config(fn, cfg);
    return detail::backend_impl<B, detail::advantages_tag>::group_advantages(
        be, view<const T, 1, Space>(scores), groups, layout, advantages, token_advantages, cfg);
  } else {
    group_stats st = group_advantages(be, scores, groups, advantages, cfg);
    detail::backend_impl<B, detail::advantages_tag>::broadcast_to_tokens(be, view<const T, 1, Space>(advantages),
                                                                         layout, token_advantages);
    return st;
  }
}

}  // namespace polo
