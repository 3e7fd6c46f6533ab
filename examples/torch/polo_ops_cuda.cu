// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
//
// The CUDA kernels of the PyTorch adapter (operators declared in polo_ops.cpp): the same eight
// operators on CUDA tensors, through polo::cuda on PyTorch's current stream, with polo's
// scratch memory from PyTorch's caching allocator (stream-ordered, like polo's own pool).
// Each call returns its statistics by value, so it synchronizes the stream once (polo's
// synchronous mode; data errors are thrown before anything is written).
#include <torch/library.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/scalar_tensor.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>

#include <polo/polo.cuh>

#include "polo_ops_common.hpp"

#include <cstdint>
#include <optional>
#include <string>
#include <tuple>

namespace {

using namespace polo_torch;

void* torch_allocate(void*, std::size_t bytes, polo::stream_t stream) {
  try {
    return c10::cuda::CUDACachingAllocator::raw_alloc_with_stream(bytes, reinterpret_cast<cudaStream_t>(stream));
  } catch (...) {
    return nullptr;  // polo throws cuda_error naming the request
  }
}
void torch_deallocate(void*, void* p, std::size_t, polo::stream_t) { c10::cuda::CUDACachingAllocator::raw_delete(p); }

/// polo's CUDA backend on PyTorch's current stream of `t`'s device, scratch from PyTorch.
polo::cuda backend(const at::Tensor& t) {
  polo::cuda be{};
  be.stream = reinterpret_cast<polo::stream_t>(at::cuda::getCurrentCUDAStream(t.device().index()).stream());
  be.alloc = {&torch_allocate, &torch_deallocate, nullptr};
  return be;
}

template <class T, class Tensor>
auto dview2(Tensor& t, const char* name) {
  check2(t, name, true);
  using E = std::conditional_t<std::is_const_v<Tensor>, const T, T>;
  return polo::device_view_of<E>(static_cast<E*>(t.data_ptr()), t.size(0), t.size(1), row_stride(t));
}

polo::padded<std::uint8_t, polo::device_space> dlayout_of(const at::Tensor& mask) {
  check_mask(mask);
  return polo::padded<std::uint8_t, polo::device_space>(dview2<std::uint8_t>(mask, "mask"));
}

at::Tensor out_like(const at::Tensor& t) {
  return at::empty(t.sizes(), t.options().memory_format(at::MemoryFormat::Contiguous));
}

/// Group advantages of `scores` ([B]) under `groups` (contiguous or labelled, device labels).
template <class Groups>
at::Tensor group_advantages_of(const at::Tensor& scores, const Groups& groups, const std::string& preset) {
  const auto& cfg = advantage_preset(preset);
  at::Tensor adv = at::empty({scores.size(0)}, scores.options());
  dispatch_real(scores, "scores", [&](auto tag) {
    using T = decltype(tag);
    polo::group_advantages(backend(scores),
                           polo::device_view_of<const T>(static_cast<const T*>(scores.data_ptr()), scores.size(0),
                                                         scores.stride(0)),
                           groups, polo::device_view_of<T>(static_cast<T*>(adv.data_ptr()), adv.size(0)), cfg);
    return 0;
  });
  return adv;
}

void check_scores(const at::Tensor& scores) {
  TORCH_CHECK(scores.is_cuda(), "polo: scores is on ", scores.device(), "; these kernels take CUDA tensors");
  TORCH_CHECK(scores.dim() == 1, "polo: scores must be [B], got ", scores.sizes());
}

at::Tensor group_advantages_cuda(const at::Tensor& scores, int64_t group_size, const std::string& preset) {
  check_scores(scores);
  TORCH_CHECK(group_size > 0, "polo: group_size must be > 0, got ", group_size);
  const c10::cuda::CUDAGuard guard(scores.device());
  return group_advantages_of(scores, polo::contiguous_groups{group_size}, preset);
}

at::Tensor group_advantages_by_label_cuda(const at::Tensor& scores, const at::Tensor& labels, const std::string& preset) {
  check_scores(scores);
  TORCH_CHECK(labels.is_cuda(), "polo: labels is on ", labels.device(), "; these kernels take CUDA tensors");
  TORCH_CHECK(labels.dim() == 1 && labels.scalar_type() == at::kLong, "polo: labels must be int64 [B], got ",
              labels.scalar_type(), " ", labels.sizes());
  const c10::cuda::CUDAGuard guard(scores.device());
  return group_advantages_of(scores,
                             polo::groups_by_label(polo::device_view_of<const std::int64_t>(
                                 static_cast<const std::int64_t*>(labels.data_ptr()), labels.size(0), labels.stride(0))),
                             preset);
}

std::tuple<at::Tensor, at::Tensor> gae_cuda(const at::Tensor& rewards, const at::Tensor& values, const at::Tensor& mask,
                                            double gamma, double lam, const std::string& preset) {
  check_same_dtype(rewards, values, "rewards", "values");
  const c10::cuda::CUDAGuard guard(rewards.device());
  polo::gae_config cfg = gae_preset(preset);
  cfg.gamma = gamma;
  cfg.lambda = lam;
  const auto lay = dlayout_of(mask);
  at::Tensor A = out_like(rewards), R = out_like(rewards);
  dispatch_real(rewards, "rewards", [&](auto tag) {
    using T = decltype(tag);
    polo::gae(backend(rewards), lay, dview2<T>(rewards, "rewards"), dview2<T>(values, "values"),
              dview2<T>(A, "advantages"), dview2<T>(R, "returns"), cfg);
    return 0;
  });
  return {A, R};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> policy_loss_cuda(const at::Tensor& logp, const at::Tensor& logp_old,
                                                                const std::optional<at::Tensor>& logp_ref,
                                                                const at::Tensor& advantages, const at::Tensor& mask,
                                                                const std::string& preset, double tokens,
                                                                double sequences) {
  check_same_dtype(logp, logp_old, "logp", "logp_old");
  check_same_dtype(logp, advantages, "logp", "advantages");
  if (logp_ref) check_same_dtype(logp, *logp_ref, "logp", "logp_ref");
  const c10::cuda::CUDAGuard guard(logp.device());
  const auto& cfg = loss_preset(preset);
  const auto lay = dlayout_of(mask);
  const polo::normalizers norm{.tokens = tokens, .sequences = sequences};
  at::Tensor grad = out_like(logp);
  const polo::policy_loss_result r = dispatch_real(logp, "logp", [&](auto tag) {
    using T = decltype(tag);
    polo::view<const T, 2, polo::device_space> ref{};
    if (logp_ref) ref = dview2<T>(*logp_ref, "logp_ref");
    return polo::policy_loss(backend(logp), lay, dview2<T>(logp, "logp"), dview2<T>(logp_old, "logp_old"), ref,
                             dview2<T>(advantages, "advantages"), dview2<T>(grad, "grad_logp"), cfg, norm);
  });
  at::Tensor stats = at::empty({13}, at::TensorOptions().dtype(at::kDouble));
  policy_loss_stats_to(r, stats.data_ptr<double>());
  return {at::scalar_tensor(r.loss, logp.options()), grad, stats.to(logp.device())};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> value_loss_cuda(const at::Tensor& values, const at::Tensor& old_values,
                                                               const at::Tensor& returns, const at::Tensor& mask,
                                                               const std::string& preset, double tokens,
                                                               double sequences) {
  check_same_dtype(values, old_values, "values", "old_values");
  check_same_dtype(values, returns, "values", "returns");
  const c10::cuda::CUDAGuard guard(values.device());
  const auto& cfg = critic_preset(preset);
  const auto lay = dlayout_of(mask);
  const polo::normalizers norm{.tokens = tokens, .sequences = sequences};
  at::Tensor grad = out_like(values);
  const polo::value_loss_stats st = dispatch_real(values, "values", [&](auto tag) {
    using T = decltype(tag);
    return polo::value_loss(backend(values), lay, dview2<T>(values, "values"), dview2<T>(old_values, "old_values"),
                            dview2<T>(returns, "returns"), dview2<T>(grad, "grad_values"), cfg, norm);
  });
  at::Tensor stats = at::empty({4}, at::TensorOptions().dtype(at::kDouble));
  value_loss_stats_to(st, stats.data_ptr<double>());
  return {at::scalar_tensor(st.loss, values.options()), grad, stats.to(values.device())};
}

at::Tensor whiten_cuda(const at::Tensor& x, const at::Tensor& mask, const std::string& preset) {
  const c10::cuda::CUDAGuard guard(x.device());
  const auto& cfg = whiten_preset(preset);
  const auto lay = dlayout_of(mask);
  at::Tensor out = out_like(x);
  dispatch_real(x, "x", [&](auto tag) {
    using T = decltype(tag);
    polo::whiten(backend(x), lay, dview2<T>(x, "x"), dview2<T>(out, "out"), cfg);
    return 0;
  });
  return out;
}

at::Tensor kl_penalized_rewards_cuda(const at::Tensor& rewards, const at::Tensor& logp_old, const at::Tensor& logp_ref,
                                     const at::Tensor& mask, double beta, const std::string& kl) {
  check_same_dtype(rewards, logp_old, "rewards", "logp_old");
  check_same_dtype(rewards, logp_ref, "rewards", "logp_ref");
  const c10::cuda::CUDAGuard guard(rewards.device());
  const auto& cfg = kl_preset(kl);
  const auto lay = dlayout_of(mask);
  at::Tensor out = out_like(rewards);
  dispatch_real(rewards, "rewards", [&](auto tag) {
    using T = decltype(tag);
    polo::kl_penalized_rewards(backend(rewards), lay, dview2<T>(rewards, "rewards"), dview2<T>(logp_old, "logp_old"),
                               dview2<T>(logp_ref, "logp_ref"), dview2<T>(out, "out"), beta, cfg);
    return 0;
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> reinforce_plus_plus_cuda(const at::Tensor& rewards, const at::Tensor& mask,
                                                            double gamma, const std::string& preset) {
  const c10::cuda::CUDAGuard guard(rewards.device());
  polo::reinforce_pp_config cfg = reinforce_pp_preset(preset);
  cfg.gamma = gamma;
  const auto lay = dlayout_of(mask);
  at::Tensor R = out_like(rewards), A = out_like(rewards);
  dispatch_real(rewards, "rewards", [&](auto tag) {
    using T = decltype(tag);
    polo::reinforce_plus_plus(backend(rewards), lay, dview2<T>(rewards, "rewards"), dview2<T>(R, "returns"),
                              dview2<T>(A, "advantages"), cfg);
    return 0;
  });
  return {R, A};
}

}  // namespace

TORCH_LIBRARY_IMPL(polo, CUDA, m) {
  m.impl("group_advantages", &group_advantages_cuda);
  m.impl("group_advantages_by_label", &group_advantages_by_label_cuda);
  m.impl("gae", &gae_cuda);
  m.impl("policy_loss", &policy_loss_cuda);
  m.impl("value_loss", &value_loss_cuda);
  m.impl("whiten", &whiten_cuda);
  m.impl("kl_penalized_rewards", &kl_penalized_rewards_cuda);
  m.impl("reinforce_plus_plus", &reinforce_plus_plus_cuda);
}
