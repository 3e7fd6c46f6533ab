// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
// CPU counterpart of bench/step_bench.cu: the RL math of one GRPO step against one PPO step for
// the same batch on polo::cpu, in time and memory. The steps, their options and the modelling of
// the critic's extra pass are those of step_bench.cu (docs/benchmarks.md):
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
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include <polo/polo.hpp>
#if __has_include(<polo/cpu/policy_loss.hpp>)
#include <polo/cpu/policy_loss.hpp>
#define POLO_STEP_GRPO 1
#if __has_include(<polo/cpu/gae.hpp>) && __has_include(<polo/cpu/whiten.hpp>) && \
    __has_include(<polo/cpu/value_loss.hpp>) && __has_include(<polo/cpu/kl.hpp>)
#include <polo/cpu/gae.hpp>
#include <polo/cpu/kl.hpp>
#include <polo/cpu/value_loss.hpp>
#include <polo/cpu/whiten.hpp>
#define POLO_STEP_PPO 1
#endif
#endif

#include "support/bench_support.hpp"

namespace {

/// Bytes each call must move per token (fp32, uint8 mask), as bench/support/rl_batch.cuh.
double floor_bytes(const std::string& step, std::int64_t B, std::int64_t T) {
  const double bt = double(B) * double(T);
  if (step == "grpo_step") return bt * ((4 + 1) + (4 * 4 + 1 + 4)) + 8.0 * double(B);
  // kl_rewards + gae + whiten + policy_loss (no KL) + value_loss + critic pass
  return bt * ((3 * 4 + 1 + 4) + (2 * 4 + 1 + 2 * 4) + (4 + 1 + 4) + (3 * 4 + 1 + 4) + (3 * 4 + 1 + 4) + (4 + 4));
}

/// Every tensor of one batch in host memory (the distributions of bench/support/rl_batch.cuh).
struct host_batch {
  std::int64_t B, T;
  std::size_t n;
  std::vector<std::uint8_t> mask;
  std::vector<float> scores, adv_out;
  std::vector<float> out, logp, logp_old, logp_ref, grad, rewards, shaped, values, values_new, advantages, returns;

  host_batch(std::int64_t b, std::int64_t t)
      : B(b), T(t), n(std::size_t(b * t)), mask(polo::bench::right_padded_mask(b, t)),
        scores(polo::bench::normal_values<float>(std::size_t(b), 11)), adv_out(std::size_t(b)), out(n),
        logp_old(polo::bench::normal_values<float>(n, 13)), grad(n),
        rewards(polo::bench::normal_values<float>(n, 16)), shaped(n),
        values(polo::bench::normal_values<float>(n, 17)), values_new(n), advantages(n), returns(n) {
    for (float& x : logp_old) x = -std::fabs(x) - 0.05f;
    logp = polo::bench::normal_values<float>(n, 14, 0.0, 0.1);
    logp_ref = polo::bench::normal_values<float>(n, 15, 0.0, 0.1);
    for (std::size_t i = 0; i < n; ++i) {
      logp[i] += logp_old[i];
      logp_ref[i] += logp_old[i];
    }
  }
  [[nodiscard]] polo::padded<> layout() const { return polo::padded<>(polo::matrix_view_of(mask, B, T)); }
  [[nodiscard]] polo::view<float, 2> v(std::vector<float>& x) { return polo::matrix_view_of(x, B, T); }
  [[nodiscard]] polo::view<const float, 2> c(const std::vector<float>& x) const { return polo::matrix_view_of(x, B, T); }
};

#if defined(POLO_STEP_GRPO)
polo::policy_loss_config grpo_config() {
  polo::policy_loss_config c = polo::presets::verl::grpo_loss;
  c.eps_high = 0.28;
  return c;
}
double grpo_tensor_bytes(std::int64_t B, std::int64_t T) {
  return 2.0 * 4 * double(B) + double(B) * double(T) * (1 + 5 * 4);
}
double grpo_step(host_batch& d) {
  static const polo::policy_loss_config cfg = grpo_config();
  const auto lay = d.layout();
  polo::group_advantages(polo::cpu{}, polo::view_of(std::as_const(d.scores)), polo::contiguous_groups{16}, lay,
                         polo::view_of(d.adv_out), d.v(d.out));
  const auto r = polo::policy_loss(polo::cpu{}, lay, d.c(d.logp), d.c(d.logp_old), d.c(d.logp_ref), d.c(d.out),
                                   d.v(d.grad), cfg);
  return r.loss;
}
#endif

#if defined(POLO_STEP_PPO)
polo::policy_loss_config ppo_config() {
  polo::policy_loss_config c = polo::presets::verl::ppo_loss;
  c.eps_high = 0.28;
  return c;
}
double ppo_tensor_bytes(std::int64_t B, std::int64_t T) { return double(B) * double(T) * (1 + 10 * 4); }
double ppo_step(host_batch& d) {
  static const polo::policy_loss_config cfg = ppo_config();
  const auto lay = d.layout();
  polo::kl_penalized_rewards(polo::cpu{}, lay, d.c(d.rewards), d.c(d.logp_old), d.c(d.logp_ref), d.v(d.shaped), 0.001,
                             polo::presets::verl::kl_k1);
  polo::gae(polo::cpu{}, lay, d.c(d.shaped), d.c(d.values), d.v(d.advantages), d.v(d.returns),
            polo::gae_config{.gamma = 1.0, .lambda = 0.95});
  polo::whiten(polo::cpu{}, lay, d.c(d.advantages), d.v(d.advantages), polo::presets::verl::whitening);
  const auto r = polo::policy_loss(polo::cpu{}, lay, d.c(d.logp), d.c(d.logp_old), polo::view<const float, 2>{},
                                   d.c(d.advantages), d.v(d.grad), cfg);
  std::memcpy(d.values_new.data(), d.values.data(), d.n * sizeof(float));  // the modelled critic pass
  const auto v = polo::value_loss(polo::cpu{}, lay, d.c(d.values_new), d.c(d.values), d.c(d.returns),
                                  d.v(d.values_new), polo::presets::verl::critic);
  return r.loss + v.loss;
}
#endif

#if defined(POLO_STEP_GRPO)
host_batch& batch_for(std::int64_t B, std::int64_t T) {
  static std::unique_ptr<host_batch> current;
  if (!current || current->B != B || current->T != T) {
    current.reset();
    current = std::make_unique<host_batch>(B, T);
  }
  return *current;
}

void run_step(benchmark::State& st, const std::string& name, double (*f)(host_batch&), double tensor_bytes) {
  const std::int64_t B = st.range(0), T = st.range(1);
  host_batch& d = batch_for(B, T);
  double check = 0.0;
  try {
    check = f(d);
  } catch (const polo::error& e) {
    st.SkipWithError(e.what());
    return;
  }
  if (!std::isfinite(check)) {
    st.SkipWithError((name + ": the step returned a non-finite loss").c_str());
    return;
  }
  std::vector<double> times;
  for (auto _ : st) {
    const auto a = std::chrono::steady_clock::now();
    benchmark::DoNotOptimize(f(d));
    benchmark::ClobberMemory();
    times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - a).count());
  }
  polo::bench::report(st, floor_bytes(name, B, T));
  std::nth_element(times.begin(), times.begin() + times.size() / 2, times.end());
  const double med = times[times.size() / 2];
  st.counters["median_us"] = med * 1e6;
  st.counters["B"] = double(B);
  st.counters["T"] = double(T);
  st.counters["floor_bytes"] = floor_bytes(name, B, T);
  st.counters["tensor_bytes"] = tensor_bytes;
  st.counters["peak_bytes"] = tensor_bytes;
  st.counters["ns_per_token"] = med * 1e9 / double(B * T);
}

[[maybe_unused]] const bool registered = [] {
  const std::int64_t sizes[][2] = {{512, 4096}, {1024, 8192}};
  for (const auto& s : sizes) {
    benchmark::RegisterBenchmark("polo_cpu/grpo_step/headline",
                                 [](benchmark::State& st) {
                                   run_step(st, "grpo_step", &grpo_step, grpo_tensor_bytes(st.range(0), st.range(1)));
                                 })
        ->Args({s[0], s[1]})
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
#if defined(POLO_STEP_PPO)
    benchmark::RegisterBenchmark("polo_cpu/ppo_step/headline",
                                 [](benchmark::State& st) {
                                   run_step(st, "ppo_step", &ppo_step, ppo_tensor_bytes(st.range(0), st.range(1)));
                                 })
        ->Args({s[0], s[1]})
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
#endif
  }
  return true;
}();
#endif

}  // namespace
