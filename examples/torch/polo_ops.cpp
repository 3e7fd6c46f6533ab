// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
//
// A thin PyTorch adapter: polo's primitives as PyTorch operators (TORCH_LIBRARY), so a Python
// trainer (verl, TRL, OpenRLHF, NeMo-RL) calls them on its own tensors, zero-copy:
//
//     torch.ops.polo.group_advantages(scores, group_size, preset)            -> advantages
//     torch.ops.polo.gae(rewards, values, mask, gamma, lam, preset)           -> (advantages, returns)
//     torch.ops.polo.policy_loss(logp, logp_old, logp_ref, advantages, mask,
//                                preset, tokens, sequences)                   -> (loss, grad_logp, stats)
//
// polo_torch.py (next to this file) builds it, registers the shape functions torch.compile
// needs, and wraps policy_loss in an autograd.Function (dloss/dlogp is polo's analytic
// gradient). This file registers the CPU kernels (polo::cpu, with PyTorch's intra-op thread
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

#include <cstdint>
#include <map>
#include <string>
#include <tuple>

namespace {

template <class C>
const C& lookup(const std::map<std::string, C>& table, const std::string& name, const char* what) {
  const auto it = table.find(name);
  if (it != table.end()) return it->second;
  std::string known;
  for (const auto& [k, v] : table) known += (known.empty() ? "" : ", ") + k;
  TORCH_CHECK(false, "polo: unknown ", what, " preset \"", name, "\"; known: ", known);
}

const polo::advantage_config& advantage_preset(const std::string& name) {
  namespace p = polo::presets;
  static const std::map<std::string, polo::advantage_config> t{
      {"polo", polo::advantage_config{}},
      {"verl.grpo", p::verl::grpo},
      {"verl.grpo_no_std", p::verl::grpo_no_std},
      {"verl.rloo", p::verl::rloo},
      {"verl.rloo_vectorized", p::verl::rloo_vectorized},
      {"trl.grpo", p::trl::grpo},
      {"trl.grpo_batch_std", p::trl::grpo_batch_std},
      {"trl.grpo_no_scale", p::trl::grpo_no_scale},
      {"openrlhf.group_norm", p::openrlhf::group_norm},
      {"openrlhf.rloo", p::openrlhf::rloo},
      {"openrlhf.dr_grpo", p::openrlhf::dr_grpo},
      {"nemo.grpo", p::nemo::grpo},
      {"nemo.grpo_no_std", p::nemo::grpo_no_std}};
  return lookup(t, name, "group_advantages");
}

const polo::gae_config& gae_preset(const std::string& name) {
  namespace p = polo::presets;
  static const std::map<std::string, polo::gae_config> t{{"polo", polo::gae_config{}},
                                                         {"verl.gae", p::verl::gae},
                                                         {"openrlhf.gae", p::openrlhf::gae},
                                                         {"trl.gae", p::trl::gae},
                                                         {"nemo.gae", p::nemo::gae},
                                                         {"nemo.gae_vapo", p::nemo::gae_vapo}};
  return lookup(t, name, "gae");
}

const polo::policy_loss_config& loss_preset(const std::string& name) {
  namespace p = polo::presets;
  static const std::map<std::string, polo::policy_loss_config> t{
      {"polo", polo::policy_loss_config{}},
      {"verl.ppo", p::verl::ppo_loss},       {"verl.grpo", p::verl::grpo_loss},
      {"verl.dapo", p::verl::dapo_loss},     {"verl.gspo", p::verl::gspo_loss},
      {"verl.cispo", p::verl::cispo_loss},   {"verl.sapo", p::verl::sapo_loss},
      {"trl.dapo", p::trl::dapo_loss},       {"trl.grpo", p::trl::grpo_loss},
      {"trl.dr_grpo", p::trl::dr_grpo_loss}, {"trl.cispo", p::trl::cispo_loss},
      {"trl.sapo", p::trl::sapo_loss},       {"trl.gspo", p::trl::gspo_loss},
      {"openrlhf.ppo", p::openrlhf::ppo_loss}, {"openrlhf.grpo", p::openrlhf::grpo_loss},
      {"openrlhf.gspo", p::openrlhf::gspo_loss}, {"nemo.grpo", p::nemo::grpo_loss},
      {"nemo.gspo", p::nemo::gspo_loss},     {"nemo.cispo", p::nemo::cispo_loss},
      {"nemo.reinforce", p::nemo::reinforce_loss}};
  return lookup(t, name, "policy_loss");
}

polo::cpu backend() { return polo::cpu{.threads = at::get_num_threads()}; }

void check_cpu(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), "polo: ", name, " is on ", t.device(), "; these kernels take CPU tensors");
}

/// A [B,T] view of a tensor with a contiguous last dimension (any row stride).
template <class T, class Tensor>
auto view2(Tensor& t, const char* name) {
  check_cpu(t, name);
  TORCH_CHECK(t.dim() == 2, "polo: ", name, " must be [B,T], got ", t.sizes());
  TORCH_CHECK(t.size(1) <= 1 || t.stride(1) == 1, "polo: ", name, " needs a contiguous last dimension, got strides ",
              t.strides());
  using E = std::conditional_t<std::is_const_v<Tensor>, const T, T>;
  return polo::view_of(static_cast<E*>(t.data_ptr()), t.size(0), t.size(1), t.size(0) > 0 ? t.stride(0) : t.size(1));
}

/// The mask as a padded layout: bool and uint8 share one byte per position (zero-copy).
polo::padded<std::uint8_t> layout_of(const at::Tensor& mask) {
  TORCH_CHECK(mask.scalar_type() == at::kBool || mask.scalar_type() == at::kByte, "polo: mask must be bool or uint8, got ",
              mask.scalar_type());
  return polo::padded<std::uint8_t>(view2<std::uint8_t>(mask, "mask"));
}

void check_same_dtype(const at::Tensor& a, const at::Tensor& b, const char* an, const char* bn) {
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), "polo: ", an, " is ", a.scalar_type(), " but ", bn, " is ",
              b.scalar_type(), "; pass one dtype");
}

template <class F>
auto dispatch_real(const at::Tensor& t, const char* name, F&& f) {
  if (t.scalar_type() == at::kFloat) return f(float{});
  TORCH_CHECK(t.scalar_type() == at::kDouble, "polo: ", name, " must be float32 or float64, got ", t.scalar_type());
  return f(double{});
}

at::Tensor group_advantages_cpu(const at::Tensor& scores, int64_t group_size, const std::string& preset) {
  check_cpu(scores, "scores");
  TORCH_CHECK(scores.dim() == 1, "polo: scores must be [B], got ", scores.sizes());
  TORCH_CHECK(group_size > 0, "polo: group_size must be > 0, got ", group_size);
  const auto& cfg = advantage_preset(preset);
  at::Tensor adv = at::empty({scores.size(0)}, scores.options());
  dispatch_real(scores, "scores", [&](auto tag) {
    using T = decltype(tag);
    polo::group_advantages(polo::cpu{}, polo::view_of(static_cast<const T*>(scores.data_ptr()), scores.size(0), scores.stride(0)),
                           polo::contiguous_groups{group_size}, polo::view_of(static_cast<T*>(adv.data_ptr()), adv.size(0)),
                           cfg);
    return 0;
  });
  return adv;
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
  const auto& s = r.stats;
  at::Tensor stats = at::empty({13}, at::TensorOptions().dtype(at::kDouble));
  double* o = stats.data_ptr<double>();
  const double v[13] = {double(s.tokens),       double(s.sequences),    s.clip_upper.mean(),  s.clip_lower.mean(),
                        s.clip_dual.mean(),     s.approx_kl_k1.mean(),  s.approx_kl_k3.mean(), s.kl_ref.mean(),
                        s.ratio.mean(),         s.ratio.min(),          s.ratio.max(),        r.policy_loss,
                        r.kl_loss};
  for (int k = 0; k < 13; ++k) o[k] = v[k];
  return {at::scalar_tensor(r.loss, logp.options()), grad, stats};
}

}  // namespace

TORCH_LIBRARY(polo, m) {
  m.def("group_advantages(Tensor scores, int group_size, str preset=\"polo\") -> Tensor");
  m.def("gae(Tensor rewards, Tensor values, Tensor mask, float gamma, float lam, str preset=\"verl.gae\") -> (Tensor, Tensor)");
  m.def(
      "policy_loss(Tensor logp, Tensor logp_old, Tensor? logp_ref, Tensor advantages, Tensor mask, "
      "str preset=\"polo\", float tokens=-1.0, float sequences=-1.0) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(polo, CPU, m) {
  m.impl("group_advantages", &group_advantages_cpu);
  m.impl("gae", &gae_cpu);
  m.impl("policy_loss", &policy_loss_cpu);
}
