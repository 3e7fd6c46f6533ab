// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
// The RL math of one GRPO step against one PPO step for the same batch, on CUDA, in time and in
// memory: what dropping the critic saves. (bench/step_bench.cpp is the CPU counterpart;
// docs/benchmarks.md explains the model.)
//
//   GRPO step  group_advantages (groups of 16) -> per-token advantages [B,T]
//              policy_loss: clip 0.2/0.28, dual clip 3, k3 KL to the reference (0.001, clamps
//              20/10), token-mean: loss, dL/dlogp, statistics
//   PPO step   kl_penalized_rewards: r - 0.001 * k1(logp_old, logp_ref)  (the KL goes into the
//              reward, as PPO does; while polo has no CUDA backend for it, a one-pass kernel of
//              this file stands in: counter kl_rewards_polo = 0)
//              gae (gamma 1, lambda 0.95) -> advantages, returns
//              whiten (verl masked_whiten), in place
//              policy_loss: the same objective without the KL term
//              the critic's extra pass, modelled as one read and one write of a [B,T] fp32 value
//              tensor (a device copy values -> values_new: the critic's forward producing the
//              new values the value loss needs)
//              value_loss (verl: clip 0.5, 1/2 token-mean), dL/dvalues written over values_new
//
// What is NOT modelled: the critic network itself (its weights, optimizer state, activations
// and its forward/backward FLOPs are a second model of the policy's size in most PPO setups;
// they dwarf everything here). This benchmark isolates the per-token RL math and the
// critic's per-token tensors, the part polo implements.
//
// Memory (`peak_bytes`) = the bytes of every tensor the step reads or writes (inputs and
// outputs, fp32 with a uint8 mask) + the peak of polo's scratch, counted by a caller allocator
// handed to polo::cuda (stream-ordered, so it is the scratch alive at once). Buffers reuse what
// polo allows in place (whitening over the advantages, dL/dvalues over the new values).
//
// Time: CUDA events around the whole step (every call, including the synchronizations the entry
// points that return statistics make), median of the iterations after an L2 flush; x_copy is
// the step's time over the copy kernel moving the sum of its calls' floor bytes.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <polo/polo.cuh>
#if __has_include(<polo/policy_loss.cuh>)
#include <polo/policy_loss.cuh>
#define POLO_STEP_GRPO 1
#if __has_include(<polo/gae.cuh>) && __has_include(<polo/whiten.cuh>) && __has_include(<polo/value_loss.cuh>)
#include <polo/gae.cuh>
#include <polo/value_loss.cuh>
#include <polo/whiten.cuh>
#define POLO_STEP_PPO 1
#if __has_include(<polo/kl.cuh>)
#include <polo/kl.cuh>
#define POLO_STEP_KL_REWARDS 1
#endif
#endif
#endif

#include "support/cuda_timer.cuh"
#include "support/rl_batch.cuh"

namespace {

namespace cb = polo::bench::cuda;
namespace rl = polo::bench::rl;

/// polo::cuda::allocator over cudaMallocAsync that counts the scratch alive at once.
struct counting_allocator {
  std::size_t current = 0;
  std::size_t peak = 0;
  static void* allocate(void* ctx, std::size_t bytes, polo::stream_t stream) {
    void* p = nullptr;
    if (cudaMallocAsync(&p, bytes, stream) != cudaSuccess) return nullptr;
    auto* self = static_cast<counting_allocator*>(ctx);
    self->current += bytes;
    self->peak = std::max(self->peak, self->current);
    return p;
  }
  static void deallocate(void* ctx, void* p, std::size_t bytes, polo::stream_t stream) {
    (void)cudaFreeAsync(p, stream);
    static_cast<counting_allocator*>(ctx)->current -= bytes;
  }
};

cudaStream_t bench_stream() {
  static cudaStream_t s = [] {
    cudaStream_t x{};
    POLO_BENCH_CUDA(cudaStreamCreateWithFlags(&x, cudaStreamNonBlocking));
    return x;
  }();
  return s;
}

rl::batch& batch_for(std::int64_t B, std::int64_t T) {
  static std::unique_ptr<rl::batch> current;
  if (!current || current->B != B || current->T != T) {
    current.reset();
    current = std::make_unique<rl::batch>(B, T);
  }
  return *current;
}

using step_fn = double (*)(const polo::cuda&, rl::batch&);

#if defined(POLO_STEP_GRPO)
polo::policy_loss_config grpo_config() {
  polo::policy_loss_config c = polo::presets::verl::grpo_loss;
  c.eps_high = 0.28;
  return c;
}

/// Tensors of the GRPO step: scores, advantages [B]; mask; token advantages, logp, logp_old,
/// logp_ref, grad [B,T].
double grpo_tensor_bytes(std::int64_t B, std::int64_t T) {
  return 2.0 * 4 * double(B) + double(B) * double(T) * (1 + 5 * 4);
}

double grpo_step(const polo::cuda& be, rl::batch& d) {
  static const polo::policy_loss_config cfg = grpo_config();
  polo::group_advantages(be, polo::device_view_of<const float>(d.scores.data(), d.B), polo::contiguous_groups{16},
                         d.layout(), d.s(d.adv_out), d.v(d.out));
  const auto r = polo::policy_loss(be, d.layout(), d.c(d.logp), d.c(d.logp_old), d.c(d.logp_ref), d.c(d.out),
                                   d.v(d.grad), cfg);
  return r.loss;
}
#endif

#if defined(POLO_STEP_PPO)
polo::policy_loss_config ppo_config() {
  polo::policy_loss_config c = polo::presets::verl::ppo_loss;  // dual clip 3, no KL term
  c.eps_high = 0.28;
  return c;
}

/// Tensors of the PPO step: mask; rewards, logp_old, logp_ref, shaped rewards, values (old),
/// advantages (whitened in place), returns, logp, dL/dlogp, new values (dL/dvalues in place)
/// [B,T].
double ppo_tensor_bytes(std::int64_t B, std::int64_t T) { return double(B) * double(T) * (1 + 10 * 4); }

#if !defined(POLO_STEP_KL_REWARDS)
/// Stand-in for polo::kl_penalized_rewards while this checkout has no CUDA backend for it
/// (<polo/kl.cuh>): the same single pass, out = mask ? r - beta * (logp_old - logp_ref) : 0,
/// over the same 17 bytes per token. The benchmark's `kl_rewards_polo` counter says which ran.
__global__ void kl_rewards_kernel(float* out, const float* r, const float* old, const float* ref,
                                  const std::uint8_t* mask, std::int64_t n, float beta) {
  for (std::int64_t i = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += std::int64_t(gridDim.x) * blockDim.x)
    out[i] = mask[i] ? r[i] - beta * (old[i] - ref[i]) : 0.0f;
}
#endif

double ppo_step(const polo::cuda& be, rl::batch& d) {
  static const polo::policy_loss_config cfg = ppo_config();
  const auto lay = d.layout();
#if defined(POLO_STEP_KL_REWARDS)
  polo::kl_penalized_rewards(be, lay, d.c(d.rewards), d.c(d.logp_old), d.c(d.logp_ref), d.v(d.shaped), 0.001,
                             polo::presets::verl::kl_k1);
#else
  kl_rewards_kernel<<<rl::fill_grid(std::int64_t(d.n)), 256, 0, be.stream>>>(
      d.shaped.data(), d.rewards.data(), d.logp_old.data(), d.logp_ref.data(), d.mask.data(), std::int64_t(d.n), 0.001f);
  POLO_BENCH_CUDA(cudaGetLastError());
#endif
  polo::gae(be, lay, d.c(d.shaped), d.c(d.values), d.v(d.advantages), d.v(d.gae_returns),
            polo::gae_config{.gamma = 1.0, .lambda = 0.95});
  polo::whiten(be, lay, d.c(d.advantages), d.v(d.advantages), polo::presets::verl::whitening);
  const auto r = polo::policy_loss(be, lay, d.c(d.logp), d.c(d.logp_old), polo::view<const float, 2, polo::device_space>{},
                                   d.c(d.advantages), d.v(d.grad), cfg);
  // The critic's extra pass (modelled): read the [B,T] values, write the new values.
  POLO_BENCH_CUDA(cudaMemcpyAsync(d.values_new.data(), d.values.data(), d.n * sizeof(float),
                                  cudaMemcpyDeviceToDevice, be.stream));
  const auto v = polo::value_loss(be, lay, d.c(d.values_new), d.c(d.values), d.c(d.gae_returns), d.v(d.values_new),
                                  polo::presets::verl::critic);
  return r.loss + v.loss;
}
#endif

#if defined(POLO_STEP_GRPO)
void run_step(benchmark::State& st, const std::string& name, step_fn f, double tensor_bytes) {
  const std::int64_t B = st.range(0), T = st.range(1);
  rl::batch& d = batch_for(B, T);
  counting_allocator counter;
  const polo::cuda be{.stream = bench_stream(),
                      .alloc = {&counting_allocator::allocate, &counting_allocator::deallocate, &counter}};
  double check = 0.0;
  try {
    check = f(be, d);
    POLO_BENCH_CUDA(cudaStreamSynchronize(be.stream));
  } catch (const polo::error& e) {
    st.SkipWithError(e.what());
    return;
  }
  if (!std::isfinite(check)) {
    st.SkipWithError((name + ": the step returned a non-finite loss").c_str());
    return;
  }
  cb::time_loop(st, be.stream, [&] { benchmark::DoNotOptimize(f(be, d)); });
  cb::report(st, rl::floor_bytes(name, B, T));
  st.counters["B"] = double(B);
  st.counters["T"] = double(T);
  st.counters["floor_bytes"] = rl::floor_bytes(name, B, T);
  st.counters["tensor_bytes"] = tensor_bytes;
  st.counters["scratch_peak_bytes"] = double(counter.peak);
  st.counters["peak_bytes"] = tensor_bytes + double(counter.peak);
  st.counters["ns_per_token"] = st.counters["median_us"].value * 1e3 / double(B * T);
#if defined(POLO_STEP_KL_REWARDS)
  st.counters["kl_rewards_polo"] = 1.0;
#else
  st.counters["kl_rewards_polo"] = 0.0;
#endif
}
#endif

[[maybe_unused]] const bool registered = [] {
  struct point {
    std::int64_t B, T;
    const char* sweep;
  };
  std::vector<point> pts{{512, 4096, "headline"}, {1024, 8192, "headline"}};
  for (int k = 16; k <= 24; ++k) pts.push_back({(std::int64_t(1) << k) / 4096, 4096, "tokens"});
  for (const point& p : pts) {
#if defined(POLO_STEP_GRPO)
    benchmark::RegisterBenchmark((std::string("polo_cuda/grpo_step/") + p.sweep).c_str(),
                                 [](benchmark::State& st) {
                                   run_step(st, "grpo_step", &grpo_step, grpo_tensor_bytes(st.range(0), st.range(1)));
                                 })
        ->Args({p.B, p.T})
        ->UseManualTime()
        ->Unit(benchmark::kMicrosecond);
#endif
#if defined(POLO_STEP_PPO)
    benchmark::RegisterBenchmark((std::string("polo_cuda/ppo_step/") + p.sweep).c_str(),
                                 [](benchmark::State& st) {
                                   run_step(st, "ppo_step", &ppo_step, ppo_tensor_bytes(st.range(0), st.range(1)));
                                 })
        ->Args({p.B, p.T})
        ->UseManualTime()
        ->Unit(benchmark::kMicrosecond);
#endif
  }
  return true;
}();

}  // namespace

#if !defined(POLO_STEP_GRPO)
// Without the CUDA policy loss there is no step to time; say so rather than print an empty table.
static const bool polo_step_note = [] {
  benchmark::RegisterBenchmark("polo_cuda/unavailable", [](benchmark::State& st) {
    st.SkipWithError("step_bench: <polo/policy_loss.cuh> is not in this checkout");
    for (auto _ : st) {
    }
  });
  return true;
}();
#endif
