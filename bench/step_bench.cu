// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
// The RL math of one GRPO step against one PPO step for the same batch, on CUDA, in time and in
// memory: what dropping the critic saves. The steps are bench/support/rl_suite.hpp's grpo_step
// and ppo_step, the very code bench/step_bench.cpp times on the CPU, through polo's public
// entry points only, with the options of bench/torch_baseline.py (docs/benchmarks.md):
//
//   GRPO step  group_advantages (groups of 16) -> per-token advantages [B,T]
//              policy_loss: clip 0.2/0.28, dual clip 3, k3 KL to the reference (0.001, clamps
//              20/10), token-mean: loss, dL/dlogp, statistics
//   PPO step   kl_penalized_rewards: r - 0.001 * k1(logp_old, logp_ref) (the KL goes into the
//              reward, as PPO does)
//              gae (gamma 1, lambda 0.95) -> advantages, returns
//              whiten (verl masked_whiten), in place
//              policy_loss: the same objective without the KL term
//              the critic's extra pass, modelled as one read and one write of a [B,T] fp32 value
//              tensor (a device copy values -> values_new: the critic's forward producing the
//              new values the value loss needs)
//              value_loss (verl: clip 0.5, 1/2 token-mean), dL/dvalues written over values_new
//
// Synchronization, as a trainer that keeps the GPU fed runs the step: group_advantages, whiten
// and value_loss hand their statistics back in device memory (be.result + deferred_errors, no
// host synchronization); policy_loss, gae and kl_penalized_rewards return theirs on the host
// (one stream synchronization each: they have no asynchronous mode); each step ends with
// polo::cuda_check (one synchronization and a status read back), where a trainer surfaces the
// deferred errors. GRPO: 2 synchronizations per step; PPO: 4.
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
// Time: CUDA events around the whole step, median of the iterations after an L2 flush; x_copy
// is the step's time over the copy kernel moving the sum of its calls' floor bytes.
#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>

#include "support/rl_batch.cuh"

namespace {

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

void run_step(benchmark::State& st, const std::string& name, rl::cuda_call f) {
  counting_allocator counter;
  rl::run_point(st, name, f,
                polo::cuda{.stream = rl::bench_stream(),
                           .alloc = {&counting_allocator::allocate, &counting_allocator::deallocate, &counter}});
  if (st.error_occurred()) return;
  const double tensors = rl::step_tensor_bytes(name, st.range(0), st.range(1));
  st.counters["tensor_bytes"] = tensors;
  st.counters["scratch_peak_bytes"] = double(counter.peak);
  st.counters["peak_bytes"] = tensors + double(counter.peak);
}

[[maybe_unused]] const bool registered = [] {
  const std::pair<const char*, rl::cuda_call> steps[] = {{"grpo_step", &rl::grpo_step<polo::cuda, rl::device_batch>},
                                                         {"ppo_step", &rl::ppo_step<polo::cuda, rl::device_batch>}};
  for (const rl::size_point& p : rl::sweep_points(24)) {
    if (std::string(p.sweep) == "seqlen") continue;  // the steps: headline sizes and the token sweep
    for (const auto& [name, fn] : steps) {
      benchmark::RegisterBenchmark((std::string("polo_cuda/") + name + "/" + p.sweep).c_str(),
                                   [name = std::string(name), fn = fn](benchmark::State& st) { run_step(st, name, fn); })
          ->Args({p.B, p.T})
          ->UseManualTime()
          ->Unit(benchmark::kMicrosecond);
    }
  }
  return true;
}();

}  // namespace
