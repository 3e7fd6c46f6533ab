// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
#pragma once
/// \file
/// Concepts for the user's model code, and checked entry points that call it.
///
/// polo never owns parameters, activations or an optimizer: the user's model computes per-token
/// log-probs (and values), polo's primitives turn them into a loss and `dL/dlogp`, and the
/// user's model turns `dL/dlogp` into parameter gradients for the user's optimizer. The
/// concepts below are the whole contract between the two sides:
///
///     LogprobModel      token_logprobs(batch, logp [B,T])            old / reference policy
///     TokenEntropyModel LogprobModel + token_logprobs(batch, logp, entropy [B,T])
///     Policy            LogprobModel + backward(batch, dlogp [B,T])  the policy being trained
///     SamplingPolicy    Policy + generate(prompts [N,P], params, completions [N*G,T], mask)
///     Critic            token_values(batch, values [B,T]) + value_backward(batch, dvalues [B,T])
///
/// A GRPO step through them (the trainer in examples/ does exactly this):
///
///     polo::generate(policy, prompts, {.group_size = G, .seed = s}, completions, mask);
///     polo::token_logprobs(policy, batch, old_logp);         // before any update
///     polo::token_logprobs(reference, batch, ref_logp);
///     polo::group_advantages(polo::cpu{}, scores, polo::contiguous_groups{G}, layout, adv, token_adv);
///     polo::token_logprobs(policy, batch, logp);
///     ... polo's policy loss: loss and dlogp from logp, old_logp, ref_logp, token_adv ...
///     polo::policy_backward(policy, batch, dlogp);            // accumulates gradients
///     optimizer.step(policy);                                   // the user's optimizer
///
/// Backend tags (`polo::cpu`, `polo::cuda`) are called *backends*, never policies: a `Policy`
/// here is always a model. Each model names its backend with `using backend_type = ...;`, which
/// fixes the memory space every view it takes lives in, exactly as the primitives do; a model
/// whose buffers live on the host can still feed primitives that run on another backend
/// through a copy made by the caller.
///
/// This header is plain C++20 (no Eigen, no CUDA): it belongs to `polo::core`.

#include <concepts>
#include <cstdint>
#include <string>
#include <type_traits>

#include "polo/core/backend.hpp"
#include "polo/core/config.hpp"
#include "polo/core/error.hpp"
#include "polo/core/layout.hpp"
#include "polo/core/math.hpp"
#include "polo/core/view.hpp"

namespace polo {

/// Token ids, as every model-facing view holds them.
using token_t = std::int32_t;

/// N prompts, padded to a common length P. Rows may be left-padded (the usual convention for
/// generation): a null mask means every token is real.
template <class Space = host_space>
struct prompt_batch {
  using memory_space = Space;
  view<const token_t, 2, Space> tokens{};     ///< [N, P] prompt tokens
  view<const std::uint8_t, 2, Space> mask{};  ///< [N, P] nonzero = real token; null = all real

  [[nodiscard]] POLO_HD_INLINE index_t size() const { return tokens.rows; }
};

/// B sequences, each a prompt followed by a completion, in polo's padded layout. Per-token
/// tensors of the completions (log-probs, values, advantages, the loss gradient) are `[B, T]`
/// and row-aligned with `completions`; token t of row i is predicted from the real prompt
/// tokens of row i followed by `completions(i, 0..t-1)`.
template <class Space = host_space>
struct token_batch {
  using memory_space = Space;
  view<const token_t, 2, Space> prompts{};           ///< [B, P] prompt tokens of each row
  view<const std::uint8_t, 2, Space> prompt_mask{};  ///< [B, P] nonzero = real; null = all real
  view<const token_t, 2, Space> completions{};       ///< [B, T] completion tokens
  view<const std::uint8_t, 2, Space> mask{};         ///< [B, T] nonzero = a valid completion token; null = all valid

  [[nodiscard]] POLO_HD_INLINE index_t size() const { return completions.rows; }
  [[nodiscard]] POLO_HD_INLINE index_t prompt_len() const { return prompts.cols; }
  [[nodiscard]] POLO_HD_INLINE index_t completion_len() const { return completions.cols; }
  /// polo's padded layout of the completion tokens, for the primitives.
  [[nodiscard]] padded<std::uint8_t, Space> layout() const {
    return mask.is_null() ? padded<std::uint8_t, Space>(completions.rows, completions.cols)
                          : padded<std::uint8_t, Space>(mask);
  }
};

/// How `generate` samples.
struct sampling_params {
  index_t group_size = 1;    ///< G completions per prompt, G >= 1
  std::uint64_t seed = 0;    ///< the same seed, prompts and parameters give the same completions
  double temperature = 1.0;  ///< > 0; logits are divided by it before the softmax
};

/// The memory space of a model's backend.
template <class M>
using model_space_t = typename M::backend_type::memory_space;

//! \concept LogprobModel
//! A model that scores completions: per-token log-probs of a batch under its current
//! parameters. The old policy and the reference policy of GRPO/PPO need nothing more.
//!
//! Requirements, for an lvalue `m` of type `M`, `S = model_space_t<M>`, `V = M::value_type`:
//!  1. `M::backend_type` names a polo backend (`polo::cpu`, `polo::cuda`): every view below
//!     lives in its memory space `S`.
//!  2. `M::value_type` is `float` or `double`: the element type of log-probs and gradients.
//!  3. `m.token_logprobs(b, out)` with `b` a `const token_batch<S>&` and `out` a
//!     `view<V, 2, S>` of shape `[B, T]` (B = `b.size()`, T = `b.completion_len()`) returns
//!     void and writes `out(i, t) = log π(completions(i, t) | prompt i, completions(i, <t))`
//!     at every valid token (mask nonzero); the value at masked tokens is unspecified but
//!     finite (0 is customary).
//!  4. The result depends only on the parameters and on row i of the batch (batch-invariant),
//!     so log-probs computed for the old policy equal those of the policy before its update.
template <class M>
concept LogprobModel =
    Backend<typename M::backend_type> &&
    (std::same_as<typename M::value_type, float> || std::same_as<typename M::value_type, double>) &&
    requires(M& m, const token_batch<model_space_t<M>>& b,
             view<typename M::value_type, 2, model_space_t<M>> out) {
      { m.token_logprobs(b, out) } -> std::same_as<void>;
    };

//! \concept TokenEntropyModel
//! A LogprobModel that can also report the entropy of its next-token distribution (for the
//! entropy metric, or an entropy bonus), computed in the same pass as the log-probs.
//!
//! Requirements (in addition to LogprobModel's):
//!  1. `m.token_logprobs(b, out, entropy)` with `entropy` a `view<V, 2, S>` `[B, T]` writes the
//!     same `out` as the two-argument form, and `entropy(i, t) = -Σ_v π(v | ...) log π(v | ...)`
//!     at every valid token.
template <class M>
concept TokenEntropyModel =
    LogprobModel<M> && requires(M& m, const token_batch<model_space_t<M>>& b,
                                view<typename M::value_type, 2, model_space_t<M>> out) {
      { m.token_logprobs(b, out, out) } -> std::same_as<void>;
    };

//! \concept Policy
//! A LogprobModel whose parameters are trained: it accepts the loss gradient with respect to
//! its log-probs and accumulates the gradient with respect to its parameters.
//!
//! Requirements (in addition to LogprobModel's), `g` a `view<const V, 2, S>` `[B, T]`:
//!  1. `p.backward(b, g)` returns void and *adds* `Σ_{i,t valid} g(i, t) ∂logp(i, t)/∂θ` to the
//!     model's gradient accumulators (zeroing them is the caller's business, between optimizer
//!     steps, so micro-batches accumulate). Entries of `g` at masked tokens are ignored.
//!  2. It is called after `p.token_logprobs(b, ...)` on the same batch with no parameter change
//!     in between, so a model may reuse activations cached by that call (as autograd does).
//!  3. polo never reads or writes parameters, gradients or optimizer state.
template <class P>
concept Policy =
    LogprobModel<P> && requires(P& p, const token_batch<model_space_t<P>>& b,
                                view<const typename P::value_type, 2, model_space_t<P>> g) {
      { p.backward(b, g) } -> std::same_as<void>;
    };

//! \concept SamplingPolicy
//! A Policy that also generates: G completions per prompt, the rollout of GRPO and PPO.
//!
//! Requirements (in addition to Policy's):
//!  1. `p.generate(prompts, params, completions, mask)` with `prompts` a
//!     `const prompt_batch<S>&` of N rows, `params` a `const sampling_params&`, `completions` a
//!     `view<token_t, 2, S>` and `mask` a `view<std::uint8_t, 2, S>`, both `[N*G, T]`
//!     (G = `params.group_size`; T is the maximal completion length the caller allows),
//!     returns void and writes every element of both.
//!  2. Row `n*G + g` holds the g-th completion of prompt n (the grouping of
//!     `polo::contiguous_groups{G}`); its valid tokens come first and are marked 1 in `mask`,
//!     the rest are 0 (right padding), whatever token they hold.
//!  3. Tokens are sampled from the model's distribution at `params.temperature`; the same
//!     parameters, prompts and `params` give the same completions (deterministic seeding).
template <class P>
concept SamplingPolicy =
    Policy<P> && requires(P& p, const prompt_batch<model_space_t<P>>& prompts, const sampling_params& params,
                          view<token_t, 2, model_space_t<P>> completions,
                          view<std::uint8_t, 2, model_space_t<P>> mask) {
      { p.generate(prompts, params, completions, mask) } -> std::same_as<void>;
    };

//! \concept Critic
//! A value model for PPO: one value per completion token, and its backward.
//!
//! Requirements, for an lvalue `c` of type `C`, `S = model_space_t<C>`, `V = C::value_type`:
//!  1. `C::backend_type` names a polo backend and `C::value_type` is `float` or `double`.
//!  2. `c.token_values(b, out)` with `out` a `view<V, 2, S>` `[B, T]` returns void and writes
//!     `out(i, t) = V(prompt i, completions(i, <t))`, the value of the state in which token t
//!     is chosen, at every valid token.
//!  3. `c.value_backward(b, g)` with `g` a `view<const V, 2, S>` `[B, T]` returns void and adds
//!     `Σ_{i,t valid} g(i, t) ∂value(i, t)/∂φ` to the critic's gradient accumulators; it is
//!     called after `c.token_values(b, ...)` on the same batch with no parameter change between.
//!  A type may be both a Policy and a Critic (a shared trunk with a value head).
template <class C>
concept Critic =
    Backend<typename C::backend_type> &&
    (std::same_as<typename C::value_type, float> || std::same_as<typename C::value_type, double>) &&
    requires(C& c, const token_batch<model_space_t<C>>& b, view<typename C::value_type, 2, model_space_t<C>> out,
             view<const typename C::value_type, 2, model_space_t<C>> g) {
      { c.token_values(b, out) } -> std::same_as<void>;
      { c.value_backward(b, g) } -> std::same_as<void>;
    };

namespace detail {

// Each requirement asserted on its own, so a model that misses one gets a message naming it
// rather than a wall of substitution failures.
template <class M>
constexpr bool check_model_types() {
  constexpr bool has_backend = requires { typename M::backend_type; };
  static_assert(has_backend,
                "polo: the model type must declare `using backend_type = polo::cpu;` (or polo::cuda), the "
                "backend its buffers live in (requirement 1 of polo::LogprobModel / polo::Critic)");
  if constexpr (has_backend) {
    static_assert(Backend<typename M::backend_type>,
                  "polo: the model's backend_type is not a polo backend tag (polo::cpu or polo::cuda)");
    constexpr bool has_value = requires { typename M::value_type; };
    static_assert(has_value,
                  "polo: the model type must declare `using value_type = float;` (or double), the element "
                  "type of its log-probs, values and gradients (requirement 2)");
    if constexpr (has_value)
      static_assert(std::is_same_v<typename M::value_type, float> || std::is_same_v<typename M::value_type, double>,
                    "polo: the model's value_type must be float or double");
    return Backend<typename M::backend_type> && has_value;
  } else {
    return false;
  }
}

template <class M>
constexpr bool check_logprob_model() {
  if constexpr (check_model_types<M>()) {
    static_assert(LogprobModel<M>,
                  "polo: the model does not satisfy polo::LogprobModel: it needs a member "
                  "`void token_logprobs(const polo::token_batch<S>& batch, polo::view<V, 2, S> logp)` "
                  "writing log π(token) into logp [B,T] (requirement 3; S = its backend's memory space, "
                  "V = its value_type)");
    return LogprobModel<M>;
  }
  return false;
}

template <class P>
constexpr bool check_policy() {
  if constexpr (check_logprob_model<P>()) {
    static_assert(Policy<P>,
                  "polo: the model does not satisfy polo::Policy: it needs a member "
                  "`void backward(const polo::token_batch<S>& batch, polo::view<const V, 2, S> dlogp)` "
                  "that accumulates parameter gradients from dL/dlogp [B,T]");
    return Policy<P>;
  }
  return false;
}

template <class P>
constexpr bool check_sampling_policy() {
  if constexpr (check_policy<P>()) {
    static_assert(SamplingPolicy<P>,
                  "polo: the model does not satisfy polo::SamplingPolicy: it needs a member "
                  "`void generate(const polo::prompt_batch<S>& prompts, const polo::sampling_params& params, "
                  "polo::view<polo::token_t, 2, S> completions, polo::view<std::uint8_t, 2, S> mask)` writing "
                  "G = params.group_size completions per prompt into [N*G, T]");
    return SamplingPolicy<P>;
  }
  return false;
}

template <class C>
constexpr bool check_critic() {
  if constexpr (check_model_types<C>()) {
    static_assert(Critic<C>,
                  "polo: the model does not satisfy polo::Critic: it needs members "
                  "`void token_values(const polo::token_batch<S>& batch, polo::view<V, 2, S> values)` and "
                  "`void value_backward(const polo::token_batch<S>& batch, polo::view<const V, 2, S> dvalues)`");
    return Critic<C>;
  }
  return false;
}

template <class Space>
void check_token_batch(const char* fn, const token_batch<Space>& b) {
  check_view(fn, "batch.prompts", b.prompts);
  check_view(fn, "batch.completions", b.completions);
  if (b.prompts.rows != b.completions.rows)
    throw_shape(fn, "batch.prompts", b.prompts.shape(),
                shape_str({b.completions.rows, b.prompts.cols}) + " (one prompt row per completion row)");
  if (!b.prompt_mask.is_null())
    require_extent(fn, "batch.prompt_mask", b.prompt_mask, b.prompts.rows, b.prompts.cols, "the prompts' [B,P]");
  if (!b.mask.is_null())
    require_extent(fn, "batch.mask", b.mask, b.completions.rows, b.completions.cols, "the completions' [B,T]");
}

/// The data handed to a model must live in its backend's memory space and hold its value_type.
template <class M, class Space, class T>
constexpr bool check_model_data() {
  constexpr bool same_space = std::is_same_v<model_space_t<M>, Space>;
  static_assert(same_space,
                "polo: these views live in a memory space the model's backend_type cannot read (host data "
                "given to a polo::cuda model, or device data given to a polo::cpu model)");
  constexpr bool same_type = std::is_same_v<std::remove_const_t<T>, typename M::value_type>;
  static_assert(same_type,
                "polo: the log-prob / value / gradient view's element type differs from the model's value_type");
  return same_space && same_type;
}

}  // namespace detail

/// Per-token log-probs of `model` on `batch`, after checking every shape:
///
///     logp(i, t) = log π_θ(completions(i, t) | prompt i, completions(i, <t))   at valid tokens
///
/// \param model  a LogprobModel (policy, old policy or reference policy)
/// \param batch  B prompt rows `[B, P]` and completions `[B, T]` with their masks
/// \param logp   `[B, T]` output in the model's memory space, of its value_type
/// \throws shape_error if a view's extents disagree; whatever the model throws.
/// Compile-time: a static_assert names the requirement of LogprobModel the model misses.
template <class M, class Space, class T>
void token_logprobs(M& model, const token_batch<Space>& batch, view<T, 2, Space> logp) {
  if constexpr (detail::check_logprob_model<M>()) {
    if constexpr (detail::check_model_data<M, Space, T>()) {
      constexpr const char* fn = "token_logprobs";
      detail::check_token_batch(fn, batch);
      detail::require_extent(fn, "logp", logp, batch.size(), batch.completion_len(), "the batch's [B,T]");
      model.token_logprobs(batch, logp);
    }
  }
}

/// As above, and the entropy of each next-token distribution: `entropy(i, t) = H(π_θ(· | ...))`
/// `[B, T]`. Needs a TokenEntropyModel.
template <class M, class Space, class T>
void token_logprobs(M& model, const token_batch<Space>& batch, view<T, 2, Space> logp,
                    view<T, 2, Space> entropy) {
  if constexpr (detail::check_logprob_model<M>()) {
    static_assert(TokenEntropyModel<M>,
                  "polo: the model does not satisfy polo::TokenEntropyModel: it needs a member "
                  "`void token_logprobs(const polo::token_batch<S>&, polo::view<V, 2, S> logp, "
                  "polo::view<V, 2, S> entropy)`");
    if constexpr (TokenEntropyModel<M> && detail::check_model_data<M, Space, T>()) {
      constexpr const char* fn = "token_logprobs";
      detail::check_token_batch(fn, batch);
      detail::require_extent(fn, "logp", logp, batch.size(), batch.completion_len(), "the batch's [B,T]");
      detail::require_extent(fn, "entropy", entropy, batch.size(), batch.completion_len(), "the batch's [B,T]");
      model.token_logprobs(batch, logp, entropy);
    }
  }
}

/// Accumulates the policy's parameter gradients from the loss gradient `dlogp [B, T]` (what
/// polo's policy loss writes):
///
///     grad_θ += Σ_{i,t valid} dlogp(i, t) ∂logp(i, t)/∂θ
///
/// Call it after `token_logprobs(policy, batch, ...)` on the same batch (Policy requirement 2).
/// \throws shape_error if a view's extents disagree; whatever the model throws.
template <class P, class Space, class T>
void policy_backward(P& policy, const token_batch<Space>& batch, view<T, 2, Space> dlogp) {
  if constexpr (detail::check_policy<P>()) {
    if constexpr (detail::check_model_data<P, Space, T>()) {
      constexpr const char* fn = "policy_backward";
      detail::check_token_batch(fn, batch);
      detail::require_extent(fn, "dlogp", dlogp, batch.size(), batch.completion_len(), "the batch's [B,T]");
      policy.backward(batch, view<const typename P::value_type, 2, Space>{dlogp.data, dlogp.rows, dlogp.cols,
                                                                           dlogp.row_stride});
    }
  }
}

/// Samples `params.group_size` completions per prompt:
///
///     completions(n*G + g, ·) ~ π_θ(· | prompt n) at params.temperature,   mask = 1 on its tokens
///
/// \param prompts      N prompts `[N, P]` (optional mask `[N, P]`)
/// \param completions  `[N*G, T]` output; T is the longest completion the caller allows
/// \param mask         `[N*G, T]` output: 1 on each completion's tokens, 0 after them
/// \throws config_error (group_size < 1, temperature not > 0), shape_error; whatever the
///         model throws.
template <class P, class Space>
void generate(P& policy, const prompt_batch<Space>& prompts, const sampling_params& params,
              view<token_t, 2, Space> completions, view<std::uint8_t, 2, Space> mask) {
  if constexpr (detail::check_sampling_policy<P>()) {
    if constexpr (detail::check_model_data<P, Space, typename P::value_type>()) {
      constexpr const char* fn = "generate";
      if (params.group_size < 1) detail::throw_config(fn, "group_size", std::to_string(params.group_size), "G >= 1");
      if (!(params.temperature > 0.0) || !detail::is_finite(params.temperature))
        detail::throw_config(fn, "temperature", detail::value_str(params.temperature), "a finite value > 0");
      detail::check_view(fn, "prompts.tokens", prompts.tokens);
      if (!prompts.mask.is_null())
        detail::require_extent(fn, "prompts.mask", prompts.mask, prompts.tokens.rows, prompts.tokens.cols,
                               "the prompts' [N,P]");
      detail::require_extent(fn, "completions", completions, prompts.size() * params.group_size, completions.cols,
                             "N*G rows: G completions per prompt");
      detail::require_extent(fn, "mask", mask, completions.rows, completions.cols, "the completions' [N*G,T]");
      policy.generate(prompts, params, completions, mask);
    }
  }
}

/// Per-token values of `critic` on `batch`:
///
///     values(i, t) = V_φ(prompt i, completions(i, <t))   at valid tokens
///
/// \throws shape_error if a view's extents disagree; whatever the model throws.
template <class C, class Space, class T>
void token_values(C& critic, const token_batch<Space>& batch, view<T, 2, Space> values) {
  if constexpr (detail::check_critic<C>()) {
    if constexpr (detail::check_model_data<C, Space, T>()) {
      constexpr const char* fn = "token_values";
      detail::check_token_batch(fn, batch);
      detail::require_extent(fn, "values", values, batch.size(), batch.completion_len(), "the batch's [B,T]");
      critic.token_values(batch, values);
    }
  }
}

/// Accumulates the critic's parameter gradients from `dvalues [B, T]` (what polo's value loss
/// writes): `grad_φ += Σ_{i,t valid} dvalues(i, t) ∂values(i, t)/∂φ`. Call it after
/// `token_values(critic, batch, ...)` on the same batch.
/// \throws shape_error if a view's extents disagree; whatever the model throws.
template <class C, class Space, class T>
void value_backward(C& critic, const token_batch<Space>& batch, view<T, 2, Space> dvalues) {
  if constexpr (detail::check_critic<C>()) {
    if constexpr (detail::check_model_data<C, Space, T>()) {
      constexpr const char* fn = "value_backward";
      detail::check_token_batch(fn, batch);
      detail::require_extent(fn, "dvalues", dvalues, batch.size(), batch.completion_len(), "the batch's [B,T]");
      critic.value_backward(batch, view<const typename C::value_type, 2, Space>{dvalues.data, dvalues.rows,
                                                                                 dvalues.cols, dvalues.row_stride});
    }
  }
}

}  // namespace polo
