// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
// CPU benchmarks of the policy objective: loss + dL/dlogp + statistics in one call, at
// PERFORMANCE.md's B x T = 512 x 4096 (float, uint8 mask, ~10% of tokens padded), for polo's
// default clip loss, verl's GRPO loss with the k3 KL term, and GSPO's sequence ratio; plus PPO's
// KL reward shaping. Each reports bytes/s and its ratio to a memcpy of the same bytes measured in
// this binary (x_copy).
#include <cstdint>
#include <vector>

#include <polo/cpu/kl.hpp>
#include <polo/cpu/policy_loss.hpp>
#include <polo/polo.hpp>

#include "support/bench_support.hpp"

namespace {

// Bytes per token: logp, logp_old, advantages read, grad written (4 x 4), the mask (1), and
// logp_ref (4) when the KL term is on.
double loss_bytes(std::int64_t B, std::int64_t T, bool kl) {
  return double(B) * double(T) * (4.0 * sizeof(float) + sizeof(std::uint8_t) + (kl ? sizeof(float) : 0));
}

struct inputs {
  std::int64_t B, T;
  std::vector<float> lp, lo, lref, adv, grad;
  std::vector<std::uint8_t> mask;
  inputs(std::int64_t b, std::int64_t t) : B(b), T(t) {
    const auto n = static_cast<std::size_t>(B * T);
    lp = polo::bench::normal_values<float>(n, 1, -1.0, 0.5);
    lo = polo::bench::normal_values<float>(n, 2, 0.0, 0.2);
    lref = polo::bench::normal_values<float>(n, 3, 0.0, 0.3);
    for (std::size_t k = 0; k < n; ++k) lo[k] += lp[k], lref[k] += lp[k];
    auto a = polo::bench::normal_values<float>(static_cast<std::size_t>(B), 4);
    adv.resize(n);
    for (std::size_t k = 0; k < n; ++k) adv[k] = a[k / static_cast<std::size_t>(T)];
    grad.assign(n, 0.0f);
    mask = polo::bench::right_padded_mask(B, T);
  }
  auto m(const std::vector<float>& v) const { return polo::matrix_view_of(v, B, T); }
};

/// threads: polo::cpu::threads (1: the calling thread only; 0: every hardware thread).
void run_loss(benchmark::State& st, const polo::policy_loss_config& cfg, int threads = 1) {
  inputs in(st.range(0), st.range(1));
  polo::padded<> layout(polo::matrix_view_of(std::as_const(in.mask), in.B, in.T));
  const bool kl = cfg.kl_coef != 0.0;
  for (auto _ : st) {
    auto r = polo::policy_loss(polo::cpu{.threads = threads}, layout, in.m(in.lp), in.m(in.lo), kl ? in.m(in.lref) : decltype(in.m(in.lp)){},
                               in.m(in.adv), polo::matrix_view_of(in.grad, in.B, in.T), cfg);
    benchmark::DoNotOptimize(r);
    benchmark::DoNotOptimize(in.grad.data());
    benchmark::ClobberMemory();
  }
  polo::bench::report(st, loss_bytes(in.B, in.T, kl));
}

void BM_PolicyLoss_default_cpu(benchmark::State& st) { run_loss(st, polo::policy_loss_config{}); }
void BM_PolicyLoss_verl_grpo_k3_cpu(benchmark::State& st) { run_loss(st, polo::presets::verl::grpo_loss); }
void BM_PolicyLoss_trl_gspo_cpu(benchmark::State& st) { run_loss(st, polo::presets::trl::gspo_loss); }
/// The same on several threads: the third argument is polo::cpu::threads (0 = all).
void BM_PolicyLossThreads_verl_grpo_k3_cpu(benchmark::State& st) {
  run_loss(st, polo::presets::verl::grpo_loss, static_cast<int>(st.range(2)));
  st.counters["threads"] = double(polo::detail::cpu_workers(polo::cpu{.threads = static_cast<int>(st.range(2))},
                                                             st.range(0), double(st.range(0) * st.range(1))));
}

void BM_KlPenalizedRewards_cpu(benchmark::State& st) {
  inputs in(st.range(0), st.range(1));
  polo::padded<> layout(polo::matrix_view_of(std::as_const(in.mask), in.B, in.T));
  for (auto _ : st) {
    auto r = polo::kl_penalized_rewards(polo::cpu{}, layout, in.m(in.adv), in.m(in.lo), in.m(in.lref),
                                        polo::matrix_view_of(in.grad, in.B, in.T), 0.05, polo::presets::verl::kl_k1);
    benchmark::DoNotOptimize(r);
    benchmark::ClobberMemory();
  }
  polo::bench::report(st, loss_bytes(in.B, in.T, false));
}

void BM_Copy_loss_bytes(benchmark::State& st) { polo::bench::copy_benchmark(st, loss_bytes(st.range(0), st.range(1), false)); }
void BM_Copy_loss_kl_bytes(benchmark::State& st) { polo::bench::copy_benchmark(st, loss_bytes(st.range(0), st.range(1), true)); }

}  // namespace

BENCHMARK(BM_Copy_loss_bytes)->Args({512, 4096})->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Copy_loss_kl_bytes)->Args({512, 4096})->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_PolicyLoss_default_cpu)->Args({512, 4096})->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_PolicyLoss_verl_grpo_k3_cpu)->Args({512, 4096})->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_PolicyLoss_trl_gspo_cpu)->Args({512, 4096})->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_PolicyLossThreads_verl_grpo_k3_cpu)->Args({512, 4096, 2})->Args({512, 4096, 0})->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_KlPenalizedRewards_cpu)->Args({512, 4096})->UseRealTime()->Unit(benchmark::kMillisecond);
