// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
#pragma once
// rl_math<polo::cuda, Scalar>: the trainers' polo calls on the GPU, declared here and defined in
// rl_math_cuda.cu, the one translation unit nvcc compiles (rl_math.hpp says why). This header
// is plain C++: polo's public headers only, no CUDA and no Eigen, so both the C++ side and the
// .cu file include it. Scalar = float is instantiated there.

#include <cstddef>
#include <cstdint>

#include <polo/advantages.hpp>
#include <polo/core/backend.hpp>
#include <polo/core/layout.hpp>
#include <polo/gae.hpp>
#include <polo/kl.hpp>
#include <polo/policy_loss.hpp>
#include <polo/value_loss.hpp>
#include <polo/whiten.hpp>

namespace r1zero {

template <class B, class Scalar>
struct rl_math;

/// Same functions as rl_math<polo::cpu, Scalar> (rl_math.hpp), on device memory. Each runs on
/// `be.stream` and synchronizes it once to return its statistics.
template <class Scalar>
struct rl_math<polo::cuda, Scalar> {
  using be_t = polo::cuda;
  using layout = polo::padded<std::uint8_t, polo::device_space>;
  using tokens = polo::view<Scalar, 2, polo::device_space>;
  using ctokens = polo::view<const Scalar, 2, polo::device_space>;
  using rows = polo::view<Scalar, 1, polo::device_space>;
  using crows = polo::view<const Scalar, 1, polo::device_space>;

  /// The most scratch any call below takes for `n_rows` x `T` tokens, groups of `group` rows and
  /// policy-loss options `cfg` (the largest of polo's *_workspace_bytes queries). The calls run
  /// one after another on one stream, so one block of this size serves them all.
  static std::size_t workspace_bytes(const be_t& be, polo::index_t n_rows, polo::index_t T, polo::index_t group,
                                     const polo::policy_loss_config& cfg);
  static polo::group_stats group_advantages(const be_t& be, crows scores, polo::index_t group, const layout& l,
                                            rows adv, tokens token_adv);
  static polo::policy_loss_result policy_loss(const be_t& be, const layout& l, ctokens logp, ctokens logp_old,
                                              ctokens logp_ref, ctokens adv, tokens grad,
                                              const polo::policy_loss_config& cfg);
  static polo::kl_reward_stats kl_penalized_rewards(const be_t& be, const layout& l, ctokens rewards,
                                                    ctokens logp_old, ctokens logp_ref, tokens out, double beta,
                                                    const polo::kl_config& kl);
  static polo::gae_stats gae(const be_t& be, const layout& l, ctokens rewards, ctokens values, tokens adv,
                             tokens returns, const polo::gae_config& cfg);
  static polo::whiten_stats whiten(const be_t& be, const layout& l, ctokens x, tokens out);
  static polo::value_loss_stats value_loss(const be_t& be, const layout& l, ctokens values, ctokens values_old,
                                           ctokens returns, tokens grad, const polo::value_loss_config& cfg);
};

}  // namespace r1zero
