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
// bench/torch_baseline.py's records of the same primitive and size. Primitives and their
// options (the same computations the PyTorch baselines time):
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
// A primitive whose CUDA header is not in this checkout is left out (__has_include), so the
// binary always builds; run it with --benchmark_list_tests to see what it holds.
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <polo/polo.cuh>
#if __has_include(<polo/policy_loss.cuh>)
#include <polo/policy_loss.cuh>
#define POLO_SWEEP_POLICY_LOSS 1
#endif
#if __has_include(<polo/gae.cuh>)
#include <polo/gae.cuh>
#define POLO_SWEEP_GAE 1
#endif
#if __has_include(<polo/whiten.cuh>)
#include <polo/whiten.cuh>
#define POLO_SWEEP_WHITEN 1
#endif
#if __has_include(<polo/value_loss.cuh>)
#include <polo/value_loss.cuh>
#define POLO_SWEEP_VALUE_LOSS 1
#endif
#if __has_include(<polo/kl.cuh>)
#include <polo/kl.cuh>
#define POLO_SWEEP_KL_REWARDS 1
#endif

#include "support/cuda_timer.cuh"
#include "support/rl_batch.cuh"

namespace {

namespace cb = polo::bench::cuda;
namespace rl = polo::bench::rl;

struct size_point {
  std::int64_t B, T;
  const char* sweep;
};

std::vector<size_point> sweep_points() {
  std::vector<size_point> p{{512, 4096, "headline"}, {1024, 8192, "headline"}};
  for (int k = 16; k <= 24; ++k) p.push_back({(std::int64_t(1) << k) / 4096, 4096, "tokens"});
  for (int k : {8, 10, 12, 14, 16}) p.push_back({(std::int64_t(1) << 22) >> k, std::int64_t(1) << k, "seqlen"});
  return p;
}

/// The batch of the size being benchmarked (benchmarks run size by size, so one lives at a time).
rl::batch& batch_for(std::int64_t B, std::int64_t T) {
  static std::unique_ptr<rl::batch> current;
  if (!current || current->B != B || current->T != T) {
    current.reset();
    current = std::make_unique<rl::batch>(B, T);
  }
  return *current;
}

cudaStream_t bench_stream() {
  static cudaStream_t s = [] {
    cudaStream_t x{};
    POLO_BENCH_CUDA(cudaStreamCreateWithFlags(&x, cudaStreamNonBlocking));
    return x;
  }();
  return s;
}

/// One primitive: runs it once on the batch and returns a value that must be finite (a loss, a
/// count), so a broken call is reported rather than timed.
using primitive_fn = double (*)(const polo::cuda&, rl::batch&);

double run_group_advantages(const polo::cuda& be, rl::batch& d) {
  const polo::group_stats s =
      polo::group_advantages(be, polo::device_view_of<const float>(d.scores.data(), d.B), polo::contiguous_groups{16},
                             d.layout(), d.s(d.adv_out), d.v(d.out));
  return double(s.groups);
}

#if defined(POLO_SWEEP_POLICY_LOSS)
polo::policy_loss_config grpo_loss_config() {
  polo::policy_loss_config c = polo::presets::verl::grpo_loss;  // dual clip 3, k3 KL 0.001, clamps 20/10
  c.eps_high = 0.28;                                             // clip-higher (DAPO), as the baseline
  return c;
}
double run_policy_loss(const polo::cuda& be, rl::batch& d) {
  static const polo::policy_loss_config cfg = grpo_loss_config();
  const auto r = polo::policy_loss(be, d.layout(), d.c(d.logp), d.c(d.logp_old), d.c(d.logp_ref), d.c(d.tok_adv),
                                   d.v(d.grad), cfg);
  return r.loss;
}
#endif

#if defined(POLO_SWEEP_GAE)
double run_gae(const polo::cuda& be, rl::batch& d) {
  const polo::gae_stats s = polo::gae(be, d.layout(), d.c(d.rewards), d.c(d.values), d.v(d.advantages),
                                      d.v(d.gae_returns), polo::gae_config{.gamma = 1.0, .lambda = 0.95});
  return double(s.tokens);
}
#endif

#if defined(POLO_SWEEP_WHITEN)
double run_whiten(const polo::cuda& be, rl::batch& d) {
  const polo::whiten_stats s = polo::whiten(be, d.layout(), d.c(d.rewards), d.v(d.out), polo::presets::verl::whitening);
  return s.mean;
}
#endif

#if defined(POLO_SWEEP_VALUE_LOSS)
double run_value_loss(const polo::cuda& be, rl::batch& d) {
  const polo::value_loss_stats s = polo::value_loss(be, d.layout(), d.c(d.values_new), d.c(d.values), d.c(d.returns),
                                                    d.v(d.grad), polo::presets::verl::critic);
  return s.loss;
}
#endif

#if defined(POLO_SWEEP_KL_REWARDS)
double run_kl_rewards(const polo::cuda& be, rl::batch& d) {
  const polo::kl_reward_stats s = polo::kl_penalized_rewards(be, d.layout(), d.c(d.rewards), d.c(d.logp_old),
                                                             d.c(d.logp_ref), d.v(d.shaped), 0.001,
                                                             polo::presets::verl::kl_k1);
  return s.kl.mean();
}
#endif

void run_point(benchmark::State& st, const std::string& prim, primitive_fn f) {
  const std::int64_t B = st.range(0), T = st.range(1);
  rl::batch& d = batch_for(B, T);
  const polo::cuda be{.stream = bench_stream()};
  double check = 0.0;
  try {
    check = f(be, d);
    POLO_BENCH_CUDA(cudaStreamSynchronize(be.stream));
  } catch (const polo::error& e) {
    st.SkipWithError(e.what());
    return;
  }
  if (!std::isfinite(check)) {
    st.SkipWithError((prim + ": the call returned a non-finite result").c_str());
    return;
  }
  cb::time_loop(st, be.stream, [&] { benchmark::DoNotOptimize(f(be, d)); });
  cb::report(st, rl::floor_bytes(prim, B, T));
  st.counters["B"] = double(B);
  st.counters["T"] = double(T);
  st.counters["floor_bytes"] = rl::floor_bytes(prim, B, T);
  st.counters["ns_per_token"] = st.counters["median_us"].value * 1e3 / double(B * T);
}

[[maybe_unused]] const bool registered = [] {
  std::vector<std::pair<std::string, primitive_fn>> prims{{"group_advantages", &run_group_advantages}};
#if defined(POLO_SWEEP_POLICY_LOSS)
  prims.emplace_back("policy_loss", &run_policy_loss);
#endif
#if defined(POLO_SWEEP_GAE)
  prims.emplace_back("gae", &run_gae);
#endif
#if defined(POLO_SWEEP_WHITEN)
  prims.emplace_back("whiten", &run_whiten);
#endif
#if defined(POLO_SWEEP_VALUE_LOSS)
  prims.emplace_back("value_loss", &run_value_loss);
#endif
#if defined(POLO_SWEEP_KL_REWARDS)
  prims.emplace_back("kl_rewards", &run_kl_rewards);
#endif
  for (const size_point& p : sweep_points()) {  // sizes outer: one batch alive at a time
    for (const auto& [name, fn] : prims) {
      const std::string full = "polo_cuda/" + name + "/" + p.sweep;
      benchmark::RegisterBenchmark(full.c_str(), [name = name, fn = fn](benchmark::State& st) { run_point(st, name, fn); })
          ->Args({p.B, p.T})
          ->UseManualTime()
          ->Unit(benchmark::kMicrosecond);
    }
  }
  return true;
}();

}  // namespace
