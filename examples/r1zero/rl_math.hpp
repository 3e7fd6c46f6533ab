// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
#pragma once
// The RL math of the trainers: every polo call that trainer.hpp makes, one static function
// each, behind `rl_math<B, Scalar>`. The trainers call `rl_math<B, Scalar>::policy_loss(be, ...)`
// and never polo's entry points directly, so that they compile without seeing a backend's
// implementation.
//
// Why: polo::cuda's implementations are CUDA headers (.cuh) that only nvcc compiles, and a
// translation unit compiled by nvcc gets none of Eigen's host vectorization (Eigen turns it off
// under EIGEN_GPUCC). Compiling the whole program with nvcc would make the model, sampling and
// warm-up several times slower and round differently from the g++ build. So the polo::cuda
// functions below are only declared (rl_math_cuda.hpp) and defined in one small .cu file
// (rl_math_cuda.cu); the model, the trainers and main() stay in C++ translation units, and
// `r1zero_cuda --backend cpu` computes bit for bit what `r1zero` computes. A trainer of your own
// can do the same: declare the polo calls it makes in a header, define them for polo::cuda in a
// .cu file, and compile everything else with your C++ compiler.
//
// Every tensor is [rows, T] (one row per completion), padded by a 0/1 mask, in B's memory space.

#include <cstddef>
#include <cstdint>

#include <polo/advantages.hpp>
#include <polo/gae.hpp>
#include <polo/kl.hpp>
#include <polo/policy_loss.hpp>
#include <polo/value_loss.hpp>
#include <polo/whiten.hpp>

#include <polo/cpu/advantages.hpp>
#include <polo/cpu/gae.hpp>
#include <polo/cpu/kl.hpp>
#include <polo/cpu/policy_loss.hpp>
#include <polo/cpu/value_loss.hpp>
#include <polo/cpu/whiten.hpp>

namespace r1zero {

/// The polo calls of the trainers on backend B (one specialization per backend).
template <class B, class Scalar>
struct rl_math;

/// polo::cpu: header-only C++, defined here.
template <class Scalar>
struct rl_math<polo::cpu, Scalar> {
  using be_t = polo::cpu;
  using layout = polo::padded<std::uint8_t, polo::host_space>;
  using tokens = polo::view<Scalar, 2, polo::host_space>;
  using ctokens = polo::view<const Scalar, 2, polo::host_space>;
  using rows = polo::view<Scalar, 1, polo::host_space>;
  using crows = polo::view<const Scalar, 1, polo::host_space>;

  /// Bytes of scratch the calls below need for these sizes: none on the CPU.
  static std::size_t workspace_bytes(const be_t&, polo::index_t, polo::index_t, polo::index_t,
                                     const polo::policy_loss_config&) {
    return 0;
  }
  /// Group-normalized advantages of `scores` (groups of `group` consecutive rows), broadcast over
  /// each row's valid tokens.
  static polo::group_stats group_advantages(const be_t& be, crows scores, polo::index_t group, const layout& l,
                                            rows adv, tokens token_adv) {
    return polo::group_advantages(be, scores, polo::contiguous_groups{group}, l, adv, token_adv);
  }
  /// Clipped policy loss and dL/dlogp; `logp_ref` may be empty (no KL term).
  static polo::policy_loss_result policy_loss(const be_t& be, const layout& l, ctokens logp, ctokens logp_old,
                                              ctokens logp_ref, ctokens adv, tokens grad,
                                              const polo::policy_loss_config& cfg) {
    return polo::policy_loss(be, l, logp, logp_old, logp_ref, adv, grad, cfg);
  }
  /// Rewards minus beta times the per-token KL to the reference.
  static polo::kl_reward_stats kl_penalized_rewards(const be_t& be, const layout& l, ctokens rewards,
                                                    ctokens logp_old, ctokens logp_ref, tokens out, double beta,
                                                    const polo::kl_config& kl) {
    return polo::kl_penalized_rewards(be, l, rewards, logp_old, logp_ref, out, beta, kl);
  }
  /// GAE advantages and returns.
  static polo::gae_stats gae(const be_t& be, const layout& l, ctokens rewards, ctokens values, tokens adv,
                             tokens returns, const polo::gae_config& cfg) {
    return polo::gae(be, l, rewards, values, adv, returns, cfg);
  }
  /// Masked whitening over the batch.
  static polo::whiten_stats whiten(const be_t& be, const layout& l, ctokens x, tokens out) {
    return polo::whiten(be, l, x, out);
  }
  /// Clipped value loss and dL/dvalues.
  static polo::value_loss_stats value_loss(const be_t& be, const layout& l, ctokens values, ctokens values_old,
                                           ctokens returns, tokens grad, const polo::value_loss_config& cfg) {
    return polo::value_loss(be, l, values, values_old, returns, grad, cfg);
  }
};

}  // namespace r1zero
