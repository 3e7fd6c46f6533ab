// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
// The only translation unit of r1zero_cuda that nvcc compiles: polo's CUDA entry points behind
// rl_math<polo::cuda, float> (declared in rl_math_cuda.hpp). Everything else, the model
// included, is compiled by the C++ compiler with Eigen's vectorization (rl_math.hpp says why).
#include <algorithm>

#include <polo/polo.cuh>

#include "rl_math_cuda.hpp"

namespace r1zero {

template <class Scalar>
std::size_t rl_math<polo::cuda, Scalar>::workspace_bytes(const be_t& be, polo::index_t n_rows, polo::index_t T,
                                                          polo::index_t group, const polo::policy_loss_config& cfg) {
  const layout l(n_rows, T);  // the queries need the shape only
  return std::max({polo::group_advantages_workspace_bytes(be, n_rows, polo::contiguous_groups{group}, l),
                   polo::policy_loss_workspace_bytes<Scalar>(be, l, cfg),
                   polo::kl_penalized_rewards_workspace_bytes(be, l), polo::gae_workspace_bytes<Scalar>(be, l),
                   polo::whiten_workspace_bytes(be, l), polo::value_loss_workspace_bytes(be, l)});
}

template <class Scalar>
polo::group_stats rl_math<polo::cuda, Scalar>::group_advantages(const be_t& be, crows scores, polo::index_t group,
                                                                const layout& l, rows adv, tokens token_adv) {
  return polo::group_advantages(be, scores, polo::contiguous_groups{group}, l, adv, token_adv);
}

template <class Scalar>
polo::policy_loss_result rl_math<polo::cuda, Scalar>::policy_loss(const be_t& be, const layout& l, ctokens logp,
                                                                   ctokens logp_old, ctokens logp_ref, ctokens adv,
                                                                   tokens grad, const polo::policy_loss_config& cfg) {
  return polo::policy_loss(be, l, logp, logp_old, logp_ref, adv, grad, cfg);
}

template <class Scalar>
polo::kl_reward_stats rl_math<polo::cuda, Scalar>::kl_penalized_rewards(const be_t& be, const layout& l,
                                                                         ctokens rewards, ctokens logp_old,
                                                                         ctokens logp_ref, tokens out, double beta,
                                                                         const polo::kl_config& kl) {
  return polo::kl_penalized_rewards(be, l, rewards, logp_old, logp_ref, out, beta, kl);
}

template <class Scalar>
polo::gae_stats rl_math<polo::cuda, Scalar>::gae(const be_t& be, const layout& l, ctokens rewards, ctokens values,
                                                 tokens adv, tokens returns, const polo::gae_config& cfg) {
  return polo::gae(be, l, rewards, values, adv, returns, cfg);
}

template <class Scalar>
polo::whiten_stats rl_math<polo::cuda, Scalar>::whiten(const be_t& be, const layout& l, ctokens x, tokens out) {
  return polo::whiten(be, l, x, out);
}

template <class Scalar>
polo::value_loss_stats rl_math<polo::cuda, Scalar>::value_loss(const be_t& be, const layout& l, ctokens values,
                                                               ctokens values_old, ctokens returns, tokens grad,
                                                               const polo::value_loss_config& cfg) {
  return polo::value_loss(be, l, values, values_old, returns, grad, cfg);
}

// The Scalar the trainers use (trainer.hpp: `using real = float`).
template struct rl_math<polo::cuda, float>;

}  // namespace r1zero
