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

const polo::value_loss_config& critic_preset(const std::string& name) {
  namespace p = polo::presets;
  static const std::map<std::string, polo::value_loss_config> t{{"polo", polo::value_loss_config{}},
                                                                {"verl.critic", p::verl::critic},
                                                                {"openrlhf.critic", p::openrlhf::critic},
                                                                {"trl.critic", p::trl::critic},
                                                                {"nemo.critic", p::nemo::critic}};
  return lookup(t, name, "value_loss");
}

const polo::whiten_config& whiten_preset(const std::string& name) {
  namespace p = polo::presets;
  static const std::map<std::string, polo::whiten_config> t{{"polo", polo::whiten_config{}},
                                                            {"verl.whitening", p::verl::whitening},
                                                            {"verl.whitening_masked", p::verl::whitening_masked},
                                                            {"trl.whitening", p::trl::whitening},
                                                            {"openrlhf.whitening", p::openrlhf::whitening},
                                                            {"nemo.whitening", p::nemo::whitening}};
  return lookup(t, name, "whiten");
}

const polo::kl_config& kl_preset(const std::string& name) {
  namespace p = polo::presets;
  static const std::map<std::string, polo::kl_config> t{{"polo", polo::kl_config{}},
                                                        {"verl.low_var_kl", p::verl::low_var_kl},
                                                        {"verl.low_var_kl_plus", p::verl::low_var_kl_plus},
                                                        {"verl.kl_k1", p::verl::kl_k1},
                                                        {"trl.kl_k3", p::trl::kl_k3},
                                                        {"trl.kl_k3_bias_corrected", p::trl::kl_k3_bias_corrected},
                                                        {"openrlhf.kl_k1", p::openrlhf::kl_k1},
                                                        {"openrlhf.kl_k2", p::openrlhf::kl_k2},
                                                        {"openrlhf.kl_k3", p::openrlhf::kl_k3},
                                                        {"nemo.kl_k3", p::nemo::kl_k3}};
  return lookup(t, name, "KL");
}

const polo::reinforce_pp_config& reinforce_pp_preset(const std::string& name) {
  namespace p = polo::presets;
  static const std::map<std::string, polo::reinforce_pp_config> t{{"polo", polo::reinforce_pp_config{}},
                                                                  {"verl.reinforce_pp", p::verl::reinforce_pp},
                                                                  {"openrlhf.reinforce_pp", p::openrlhf::reinforce_pp}};
  return lookup(t, name, "reinforce_plus_plus");
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
  double* o = stats.data_ptr<double>();
  o[0] = double(st.tokens);
  o[1] = double(st.sequences);
  o[2] = st.clipped.mean();
  o[3] = st.squared_error.mean();
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
