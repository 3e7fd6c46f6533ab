// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
// Every polo primitive on CUDA over three sets of sizes, each timed with CUDA events (median of
// the iterations, after an L2 flush) and reported against the copy kernel moving the same bytes
// in this binary (x_copy = time / copy time; 1.0 is the memory floor):
//
//   headline  PERFORMANCE.md's sizes: 512 x 4096 and 1024 x 8192
//   tokens    T = 4096, tokens = 2^16 .. 2^24 (B = 16 .. 4096)
//   seqlen    2^22 tokens, T = 2^8 .. 2^16 (B = 16384 .. 64): few long sequences stress a
//             scan along T
//
// Benchmarks are named polo_cuda/<primitive>/<sweep>/<B>/<T>; bench/plot.py joins them with
// bench/torch_baseline.py's records of the same primitive and size, and with sweep_bench.cpp's
// polo_cpu/... records. The primitives, their options and inputs are bench/support/rl_suite.hpp's
// (the same computations as the PyTorch baselines):
//
//   group_advantages  contiguous groups of 16, polo's default config (sample std, eps 1e-6),
//                     advantages [B] and their broadcast onto the valid tokens [B,T]
//   policy_loss       verl's GRPO loss with clip-higher: eps 0.2/0.28, dual clip 3, k3 KL
//                     (low_var_kl, clamps 20/10) with coefficient 0.001, token-mean; loss,
//                     gradient dL/dlogp and statistics in one call
//   gae               gamma 1, lambda 0.95, masked positions skipped (verl): advantages, returns
//   whiten            verl's masked_whiten (sample variance, eps 1e-8 inside the sqrt)
//   value_loss        verl's critic loss (clip 0.5, 1/2 token-mean), loss and dL/dvalues
//   kl_rewards        verl's apply_kl_penalty: rewards - 0.001 * (logp_old - logp_ref)
//
// group_advantages, whiten and value_loss are timed in their asynchronous mode (be.result +
// deferred_errors: no host synchronization), the others synchronize once to return their
// statistics (bench/support/rl_batch.cuh).
#include <string>

#include "support/rl_batch.cuh"

namespace {

namespace rl = polo::bench::rl;

constexpr int cuda_max_log2_tokens = 24;

[[maybe_unused]] const bool registered = [] {
  const auto prims = rl::sweep_primitives<polo::cuda, rl::device_batch>();
  for (const rl::size_point& p : rl::sweep_points(cuda_max_log2_tokens)) {  // sizes outer: one batch alive at a time
    for (const auto& [name, fn] : prims) {
      const std::string full = "polo_cuda/" + name + "/" + p.sweep;
      benchmark::RegisterBenchmark(full.c_str(),
                                   [name = name, fn = fn](benchmark::State& st) {
                                     rl::run_point(st, name, fn, polo::cuda{.stream = rl::bench_stream()});
                                   })
          ->Args({p.B, p.T})
          ->UseManualTime()
          ->Unit(benchmark::kMicrosecond);
    }
  }
  return true;
}();

}  // namespace
