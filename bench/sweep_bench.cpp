// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
// Every polo primitive on the CPU over the sizes of bench/sweep_bench.cu, wall-clock timed
// (median of the iterations) and reported against memcpy moving the same bytes in this binary
// (x_copy = time / copy time; 1.0 is the memory floor) and in bytes/s:
//
//   headline  PERFORMANCE.md's sizes: 512 x 4096 and 1024 x 8192
//   tokens    T = 4096, tokens = 2^16 .. 2^24 (B = 16 .. 4096)
//   seqlen    2^22 tokens, T = 2^8 .. 2^16 (B = 16384 .. 64)
//
// The whole range of the CUDA sweep: on one core of a 2-core build machine the binary runs in
// about a minute at --benchmark_min_time=0.2 (2^23 and 2^24 take 13 s of it) and holds 1.2 GB
// at 2^24 (the batch's 16 fp32 tensors), so nothing needs capping. The CPU backend is
// single-threaded; a large call runs one or a few iterations (policy_loss at 2^24: ~0.3 s each).
//
// Benchmarks are named polo_cpu/<primitive>/<sweep>/<B>/<T>, as polo_cuda/... in
// sweep_bench.cu; the primitives, options and inputs are bench/support/rl_suite.hpp's.
#include <string>

#include "support/rl_batch.hpp"

namespace {

namespace rl = polo::bench::rl;

constexpr int cpu_max_log2_tokens = 24;

[[maybe_unused]] const bool registered = [] {
  const auto prims = rl::sweep_primitives<polo::cpu, rl::host_batch>();
  for (const rl::size_point& p : rl::sweep_points(cpu_max_log2_tokens)) {  // sizes outer: one batch alive at a time
    for (const auto& [name, fn] : prims) {
      const std::string full = "polo_cpu/" + name + "/" + p.sweep;
      benchmark::RegisterBenchmark(full.c_str(), [name = name, fn = fn](benchmark::State& st) { rl::run_point(st, name, fn); })
          ->Args({p.B, p.T})
          ->UseRealTime()
          ->Unit(benchmark::kMicrosecond);
    }
  }
  return true;
}();

}  // namespace
