// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
//
// What the CPU (polo_ops.cpp) and CUDA (polo_ops_cuda.cu) kernels of the PyTorch adapter share:
// the presets by name and the checks of the tensors handed in. Backend-neutral polo headers
// only (no Eigen, no CUDA), so nvcc compiles it too.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <polo/advantages.hpp>
#include <polo/gae.hpp>
#include <polo/kl.hpp>
#include <polo/policy_loss.hpp>
#include <polo/value_loss.hpp>
#include <polo/whiten.hpp>

#include <map>
#include <string>

namespace polo_torch {

template <class C>
const C& lookup(const std::map<std::string, C>& table, const std::string& name, const char* what) {
  const auto it = table.find(name);
  if (it != table.end()) return it->second;
  std::string known;
  for (const auto& [k, v] : table) known += (known.empty() ? "" : ", ") + k;
  TORCH_CHECK(false, "polo: unknown ", what, " preset \"", name, "\"; known: ", known);
}

inline const polo::advantage_config& advantage_preset(const std::string& name) {
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

inline const polo::gae_config& gae_preset(const std::string& name) {
  namespace p = polo::presets;
  static const std::map<std::string, polo::gae_config> t{{"polo", polo::gae_config{}},
                                                         {"verl.gae", p::verl::gae},
                                                         {"openrlhf.gae", p::openrlhf::gae},
                                                         {"trl.gae", p::trl::gae},
                                                         {"nemo.gae", p::nemo::gae},
                                                         {"nemo.gae_vapo", p::nemo::gae_vapo}};
  return lookup(t, name, "gae");
}

inline const polo::policy_loss_config& loss_preset(const std::string& name) {
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

inline const polo::value_loss_config& critic_preset(const std::string& name) {
  namespace p = polo::presets;
  static const std::map<std::string, polo::value_loss_config> t{{"polo", polo::value_loss_config{}},
                                                                {"verl.critic", p::verl::critic},
                                                                {"openrlhf.critic", p::openrlhf::critic},
                                                                {"trl.critic", p::trl::critic},
                                                                {"nemo.critic", p::nemo::critic}};
  return lookup(t, name, "value_loss");
}

inline const polo::whiten_config& whiten_preset(const std::string& name) {
  namespace p = polo::presets;
  static const std::map<std::string, polo::whiten_config> t{{"polo", polo::whiten_config{}},
                                                            {"verl.whitening", p::verl::whitening},
                                                            {"verl.whitening_masked", p::verl::whitening_masked},
                                                            {"trl.whitening", p::trl::whitening},
                                                            {"openrlhf.whitening", p::openrlhf::whitening},
                                                            {"nemo.whitening", p::nemo::whitening}};
  return lookup(t, name, "whiten");
}

inline const polo::kl_config& kl_preset(const std::string& name) {
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

inline const polo::reinforce_pp_config& reinforce_pp_preset(const std::string& name) {
  namespace p = polo::presets;
  static const std::map<std::string, polo::reinforce_pp_config> t{{"polo", polo::reinforce_pp_config{}},
                                                                  {"verl.reinforce_pp", p::verl::reinforce_pp},
                                                                  {"openrlhf.reinforce_pp", p::openrlhf::reinforce_pp}};
  return lookup(t, name, "reinforce_plus_plus");
}

/// Checks that `t` is [B,T] with a contiguous last dimension on the expected device kind.
inline void check2(const at::Tensor& t, const char* name, bool cuda) {
  TORCH_CHECK(t.is_cuda() == cuda && (cuda || t.device().is_cpu()), "polo: ", name, " is on ", t.device(),
              cuda ? "; these kernels take CUDA tensors" : "; these kernels take CPU tensors");
  TORCH_CHECK(t.dim() == 2, "polo: ", name, " must be [B,T], got ", t.sizes());
  TORCH_CHECK(t.size(1) <= 1 || t.stride(1) == 1, "polo: ", name, " needs a contiguous last dimension, got strides ",
              t.strides());
}

inline polo::index_t row_stride(const at::Tensor& t) { return t.size(0) > 0 ? t.stride(0) : t.size(1); }

inline void check_mask(const at::Tensor& mask) {
  TORCH_CHECK(mask.scalar_type() == at::kBool || mask.scalar_type() == at::kByte, "polo: mask must be bool or uint8, got ",
              mask.scalar_type());
}

inline void check_same_dtype(const at::Tensor& a, const at::Tensor& b, const char* an, const char* bn) {
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), "polo: ", an, " is ", a.scalar_type(), " but ", bn, " is ",
              b.scalar_type(), "; pass one dtype");
}

/// Calls f(float{}) or f(double{}) by the dtype of `t`.
template <class F>
auto dispatch_real(const at::Tensor& t, const char* name, F&& f) {
  if (t.scalar_type() == at::kFloat) return f(float{});
  TORCH_CHECK(t.scalar_type() == at::kDouble, "polo: ", name, " must be float32 or float64, got ", t.scalar_type());
  return f(double{});
}

/// policy_loss's statistics as a float64 vector (polo_torch.STATS order).
inline void policy_loss_stats_to(const polo::policy_loss_result& r, double* o) {
  const auto& s = r.stats;
  const double v[13] = {double(s.tokens),   double(s.sequences),   s.clip_upper.mean(),   s.clip_lower.mean(),
                        s.clip_dual.mean(), s.approx_kl_k1.mean(), s.approx_kl_k3.mean(), s.kl_ref.mean(),
                        s.ratio.mean(),     s.ratio.min(),         s.ratio.max(),         r.policy_loss,
                        r.kl_loss};
  for (int k = 0; k < 13; ++k) o[k] = v[k];
}

/// value_loss's statistics as a float64 vector (polo_torch.VALUE_STATS order).
inline void value_loss_stats_to(const polo::value_loss_stats& st, double* o) {
  o[0] = double(st.tokens);
  o[1] = double(st.sequences);
  o[2] = st.clipped.mean();
  o[3] = st.squared_error.mean();
}

}  // namespace polo_torch
