// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
// CPU counterpart of bench/step_bench.cu: the RL math of one GRPO step against one PPO step for
// the same batch on polo::cpu, in time and memory, at PERFORMANCE.md's headline sizes. The steps
// (their calls, options and the modelled critic pass) are bench/support/rl_suite.hpp's
// grpo_step and ppo_step, the very code step_bench.cu times on CUDA (docs/benchmarks.md):
//
//   GRPO step  group_advantages (groups of 16) + policy_loss (clip 0.2/0.28, dual clip 3, k3 KL
//              0.001 with clamps 20/10, token-mean)
//   PPO step   kl_penalized_rewards (k1, 0.001) + gae (gamma 1, lambda 0.95) + whiten (in place)
//              + policy_loss (no KL term) + the critic's pass modelled as one read and one write
//              of a [B,T] fp32 tensor (a memcpy) + value_loss (clip 0.5)
//
// Memory (`peak_bytes`) counts the tensors the step reads or writes (fp32, uint8 mask); the CPU
// backend's own temporaries are not counted. Time: wall clock per step, the median of the
// iterations (`median_us`), and x_copy against memcpy of the same bytes in this binary.
#include <string>

#include "support/rl_batch.hpp"

namespace {

namespace rl = polo::bench::rl;

void run_step(benchmark::State& st, const std::string& name, rl::cpu_call f) {
  rl::run_point(st, name, f);
  if (st.error_occurred()) return;
  st.counters["tensor_bytes"] = rl::step_tensor_bytes(name, st.range(0), st.range(1));
  st.counters["peak_bytes"] = st.counters["tensor_bytes"];
}

[[maybe_unused]] const bool registered = [] {
  const std::pair<const char*, rl::cpu_call> steps[] = {{"grpo_step", &rl::grpo_step<polo::cpu, rl::host_batch>},
                                                        {"ppo_step", &rl::ppo_step<polo::cpu, rl::host_batch>}};
  for (const rl::size_point& p : rl::headline_points()) {
    for (const auto& [name, fn] : steps) {
      benchmark::RegisterBenchmark((std::string("polo_cpu/") + name + "/headline").c_str(),
                                   [name = std::string(name), fn = fn](benchmark::State& st) { run_step(st, name, fn); })
          ->Args({p.B, p.T})
          ->UseRealTime()
          ->Unit(benchmark::kMillisecond);
    }
  }
  return true;
}();

}  // namespace
