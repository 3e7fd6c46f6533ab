// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
//
// A thin PyTorch adapter: polo's primitives as PyTorch operators (TORCH_LIBRARY), so a Python
// trainer (verl, TRL, OpenRLHF, NeMo-RL) calls them on its own tensors, zero-copy:
//
//     torch.ops.polo.group_advantages(scores, group_size, preset)            -> advantages
//     torch.ops.polo.group_advantages_by_label(scores, labels, preset)       -> advantages
//     torch.ops.polo.gae(rewards, values, mask, gamma, lam, preset)           -> (advantages, returns)
//     torch.ops.polo.policy_loss(logp, logp_old, logp_ref, advantages, mask,
//                                preset, tokens, sequences)                   -> (loss, grad_logp, stats)
//     torch.ops.polo.value_loss(values, old_values, returns, mask, preset,
//                               tokens, sequences)                           -> (loss, grad_values, stats)
//     torch.ops.polo.whiten(x, mask, preset)                                 -> whitened x
//     torch.ops.polo.kl_penalized_rewards(rewards, logp_old, logp_ref, mask,
//                                         beta, kl)                          -> shaped rewards
//     torch.ops.polo.reinforce_plus_plus(rewards, mask, gamma, preset)       -> (returns, advantages)
//
// polo_torch.py (next to this file) builds it, registers the shape functions torch.compile
// needs, and the autograd of policy_loss and value_loss (their gradients are polo's analytic
// ones). This file registers the CPU kernels (polo::cpu, with PyTorch's intra-op thread
// count as polo::cpu::threads: bitwise the same results for any count). polo throws
// polo::error with the argument, its shape and what was expected; PyTorch re-raises it in
// Python as a RuntimeError with that message.
//
// Tensors: contiguous last dimension (a [B,T] slice with a row stride is fine); scores [B];
// per-token tensors [B,T] float32 or float64, all of one dtype; mask [B,T] bool or uint8.
// Presets are polo's named configurations (include/polo/*.hpp, namespace presets), spelled
// "verl.grpo", "trl.grpo", ...; "polo" is polo's default configuration.
#include <torch/library.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/scalar_tensor.h>

#include <polo/polo.hpp>

#include "polo_ops_common.hpp"

#include <cstdint>
#include <map>
#include <string>
#include <tuple>

namespace {

using namespace polo_torch;

polo::cpu backend() { return polo::cpu{.threads = at::get_num_threads()}; }

void check_cpu(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), "polo: ", name, " is on ", t.device(), "; these kernels take CPU tensors");
}

/// A [B,T] host view of a tensor with a contiguous last dimension (any row stride).
template <class T, class Tensor>
auto view2(Tensor& t, const char* name) {
  check2(t, name, false);
  using E = std::conditional_t<std::is_const_v<Tensor>, const T, T>;
  return polo::view_of(static_cast<E*>(t.data_ptr()), t.size(0), t.size(1), row_stride(t));
}

/// The mask as a padded layout: bool and uint8 share one byte per position (zero-copy).
polo::padded<std::uint8_t> layout_of(const at::Tensor& mask) {
  check_mask(mask);
  return polo::padded<std::uint8_t>(view2<std::uint8_t>(mask, "mask"));
}

/// Group advantages of `scores` ([B]) under `groups` (contiguous or labelled).
template <class Groups>
at::Tensor group_advantages_of(const at::Tensor& scores, const Groups& groups, const std::string& preset) {
  const auto& cfg = advantage_preset(preset);
  at::Tensor adv = at::empty({scores.size(0)}, scores.options());
  dispatch_real(scores, "scores", [&](auto tag) {
    using T = decltype(tag);
    polo::group_advantages(polo::cpu{}, polo::view_of(static_cast<const T*>(scores.data_ptr()), scores.size(0), scores.stride(0)),
                           groups, polo::view_of(static_cast<T*>(adv.data_ptr()), adv.size(0)), cfg);
    return 0;
  });
  return adv;
}

void check_scores(const at::Tensor& scores) {
  check_cpu(scores, "scores");
  TORCH_CHECK(scores.dim() == 1, "polo: scores must be [B], got ", scores.sizes());
}

at::Tensor group_advantages_cpu(const at::Tensor& scores, int64_t group_size, const std::string& preset) {
  check_scores(scores);
  TORCH_CHECK(group_size > 0, "polo: group_size must be > 0, got ", group_size);
  return group_advantages_of(scores, polo::contiguous_groups{group_size}, preset);
}

at::Tensor group_advantages_by_label_cpu(const at::Tensor& scores, const at::Tensor& labels, const std::string& preset) {
  check_scores(scores);
  check_cpu(labels, "labels");
  TORCH_CHECK(labels.dim() == 1 && labels.scalar_type() == at::kLong, "polo: labels must be int64 [B], got ",
              labels.scalar_type(), " ", labels.sizes());
  return group_advantages_of(
      scores,
      polo::groups_by_label(
          polo::view_of(static_cast<const std::int64_t*>(labels.data_ptr()), labels.size(0), labels.stride(0))),
      preset);
}

std::tuple<at::Tensor, at::Tensor> gae_cpu(const at::Tensor& rewards, const at::Tensor& values, const at::Tensor& mask,
                                           double gamma, double lam, const std::string& preset) {
  check_same_dtype(rewards, values, "rewards", "values");
  polo::gae_config cfg = gae_preset(preset);
  cfg.gamma = gamma;
  cfg.lambda = lam;
  const auto lay = layout_of(mask);
  at::Tensor A = at::empty(rewards.sizes(), rewards.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor R = at::empty_like(A);
  dispatch_real(rewards, "rewards", [&](auto tag) {
    using T = decltype(tag);
    polo::gae(backend(), lay, view2<T>(rewards, "rewards"), view2<T>(values, "values"), view2<T>(A, "advantages"),
              view2<T>(R, "returns"), cfg);
    return 0;
  });
  return {A, R};
}

/// stats: [tokens, sequences, clip_upper, clip_lower, clip_dual, approx_kl_k1, approx_kl_k3,
/// kl_ref, ratio_mean, ratio_min, ratio_max, policy_loss, kl_loss] (fractions and means over
/// the contributing tokens; kl_ref over the KL's terms), float64.
std::tuple<at::Tensor, at::Tensor, at::Tensor> policy_loss_cpu(const at::Tensor& logp, const at::Tensor& logp_old,
                                                               const std::optional<at::Tensor>& logp_ref,
                                                               const at::Tensor& advantages, const at::Tensor& mask,
                                                               const std::string& preset, double tokens,
                                                               double sequences) {
  check_same_dtype(logp, logp_old, "logp", "logp_old");
  check_same_dtype(logp, advantages, "logp", "advantages");
  if (logp_ref) check_same_dtype(logp, *logp_ref, "logp", "logp_ref");
  const auto& cfg = loss_preset(preset);
  const auto lay = layout_of(mask);
  const polo::normalizers norm{.tokens = tokens, .sequences = sequences};
  at::Tensor grad = at::empty(logp.sizes(), logp.options().memory_format(at::MemoryFormat::Contiguous));
  const polo::policy_loss_result r = dispatch_real(logp, "logp", [&](auto tag) {
    using T = decltype(tag);
    polo::view<const T, 2> ref{};
    if (logp_ref) ref = view2<T>(*logp_ref, "logp_ref");
    return polo::policy_loss(backend(), lay, view2<T>(logp, "logp"), view2<T>(logp_old, "logp_old"), ref,
                             view2<T>(advantages, "advantages"), view2<T>(grad, "grad_logp"), cfg, norm);
  });
  at::Tensor stats = at::empty({13}, at::TensorOptions().dtype(at::kDouble));
  policy_loss_stats_to(r, stats.data_ptr<double>());
  return {at::scalar_tensor(r.loss, logp.options()), grad, stats};
}

/// stats: [tokens, sequences, clip_fraction, squared_error_mean], float64.
std::tuple<at::Tensor, at::Tensor, at::Tensor> value_loss_cpu(const at::Tensor& values, const at::Tensor& old_values,
                                                              const at::Tensor& returns, const at::Tensor& mask,
                                                              const std::string& preset, double tokens, double sequences) {
  check_same_dtype(values, old_values, "values", "old_values");
  check_same_dtype(values, returns, "values", "returns");
  const auto& cfg = critic_preset(preset);
  const auto lay = layout_of(mask);
  const polo::normalizers norm{.tokens = tokens, .sequences = sequences};
  at::Tensor grad = at::empty(values.sizes(), values.options().memory_format(at::MemoryFormat::Contiguous));
  const polo::value_loss_stats st = dispatch_real(values, "values", [&](auto tag) {
    using T = decltype(tag);
    return polo::value_loss(backend(), lay, view2<T>(values, "values"), view2<T>(old_values, "old_values"),
                            view2<T>(returns, "returns"), view2<T>(grad, "grad_values"), cfg, norm);
  });
  at::Tensor stats = at::empty({4}, at::TensorOptions().dtype(at::kDouble));
  value_loss_stats_to(st, stats.data_ptr<double>());
  return {at::scalar_tensor(st.loss, values.options()), grad, stats};
}

at::Tensor whiten_cpu(const at::Tensor& x, const at::Tensor& mask, const std::string& preset) {
  const auto& cfg = whiten_preset(preset);
  const auto lay = layout_of(mask);
  at::Tensor out = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  dispatch_real(x, "x", [&](auto tag) {
    using T = decltype(tag);
    polo::whiten(backend(), lay, view2<T>(x, "x"), view2<T>(out, "out"), cfg);
    return 0;
  });
  return out;
}

at::Tensor kl_penalized_rewards_cpu(const at::Tensor& rewards, const at::Tensor& logp_old, const at::Tensor& logp_ref,
                                    const at::Tensor& mask, double beta, const std::string& kl) {
  check_same_dtype(rewards, logp_old, "rewards", "logp_old");
  check_same_dtype(rewards, logp_ref, "rewards", "logp_ref");
  const auto& cfg = kl_preset(kl);
  const auto lay = layout_of(mask);
  at::Tensor out = at::empty(rewards.sizes(), rewards.options().memory_format(at::MemoryFormat::Contiguous));
  dispatch_real(rewards, "rewards", [&](auto tag) {
    using T = decltype(tag);
    polo::kl_penalized_rewards(backend(), lay, view2<T>(rewards, "rewards"), view2<T>(logp_old, "logp_old"),
                               view2<T>(logp_ref, "logp_ref"), view2<T>(out, "out"), beta, cfg);
    return 0;
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> reinforce_plus_plus_cpu(const at::Tensor& rewards, const at::Tensor& mask, double gamma,
                                                           const std::string& preset) {
  polo::reinforce_pp_config cfg = reinforce_pp_preset(preset);
  cfg.gamma = gamma;
  const auto lay = layout_of(mask);
  at::Tensor R = at::empty(rewards.sizes(), rewards.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor A = at::empty_like(R);
  dispatch_real(rewards, "rewards", [&](auto tag) {
    using T = decltype(tag);
    polo::reinforce_plus_plus(backend(), lay, view2<T>(rewards, "rewards"), view2<T>(R, "returns"),
                              view2<T>(A, "advantages"), cfg);
    return 0;
  });
  return {R, A};
}

}  // namespace

TORCH_LIBRARY(polo, m) {
  m.def("group_advantages(Tensor scores, int group_size, str preset=\"polo\") -> Tensor");
  m.def("group_advantages_by_label(Tensor scores, Tensor labels, str preset=\"polo\") -> Tensor");
  m.def("gae(Tensor rewards, Tensor values, Tensor mask, float gamma, float lam, str preset=\"verl.gae\") -> (Tensor, Tensor)");
  m.def(
      "policy_loss(Tensor logp, Tensor logp_old, Tensor? logp_ref, Tensor advantages, Tensor mask, "
      "str preset=\"polo\", float tokens=-1.0, float sequences=-1.0) -> (Tensor, Tensor, Tensor)");
  m.def(
      "value_loss(Tensor values, Tensor old_values, Tensor returns, Tensor mask, str preset=\"verl.critic\", "
      "float tokens=-1.0, float sequences=-1.0) -> (Tensor, Tensor, Tensor)");
  m.def("whiten(Tensor x, Tensor mask, str preset=\"verl.whitening\") -> Tensor");
  m.def(
      "kl_penalized_rewards(Tensor rewards, Tensor logp_old, Tensor logp_ref, Tensor mask, float beta, "
      "str kl=\"verl.kl_k1\") -> Tensor");
  m.def("reinforce_plus_plus(Tensor rewards, Tensor mask, float gamma, str preset=\"verl.reinforce_pp\") -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(polo, CPU, m) {
  m.impl("group_advantages", &group_advantages_cpu);
  m.impl("group_advantages_by_label", &group_advantages_by_label_cpu);
  m.impl("gae", &gae_cpu);
  m.impl("policy_loss", &policy_loss_cpu);
  m.impl("value_loss", &value_loss_cpu);
  m.impl("whiten", &whiten_cpu);
  m.impl("kl_penalized_rewards", &kl_penalized_rewards_cpu);
  m.impl("reinforce_plus_plus", &reinforce_plus_plus_cpu);
}
