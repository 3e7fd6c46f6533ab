// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
// CPU benchmarks of the PPO side: GAE (skip and through masking), masked whitening and the
// clipped value loss with its gradient, at PERFORMANCE.md's sizes (B x T = 512 x 4096 and
// 1024 x 8192, fp32, uint8 mask, ~10% right padding), against memcpy of the same bytes.
//
// Bytes are the unique bytes each call must move (each input read once, each output written
// once): GAE 4+4+1 in and 4+4 out per token; whitening 4+1 in, 4 out; value loss 4+4+4+1 in,
// 4 out. The CPU backend reads its inputs twice (a checking pass, then the computing pass that
// finds them in cache per row), which these ratios include.
#include <cstdint>
#include <utility>
#include <vector>

#include <polo/polo.hpp>
#include <polo/cpu/gae.hpp>
#include <polo/cpu/value_loss.hpp>
#include <polo/cpu/whiten.hpp>
#include <polo/gae.hpp>
#include <polo/value_loss.hpp>
#include <polo/whiten.hpp>

#include "support/bench_support.hpp"

namespace {

double tokens(const benchmark::State& st) { return double(st.range(0)) * double(st.range(1)); }
double gae_bytes(std::int64_t B, std::int64_t T) { return double(B) * double(T) * (4 + 4 + 1 + 4 + 4); }
double whiten_bytes(std::int64_t B, std::int64_t T) { return double(B) * double(T) * (4 + 1 + 4); }
double value_loss_bytes(std::int64_t B, std::int64_t T) { return double(B) * double(T) * (4 + 4 + 4 + 1 + 4); }

/// threads: polo::cpu::threads (1: the calling thread only; 0: every hardware thread).
void run_gae(benchmark::State& st, const polo::gae_config& cfg, int threads = 1) {
  const std::int64_t B = st.range(0), T = st.range(1);
  const auto n = static_cast<std::size_t>(B * T);
  auto r = polo::bench::normal_values<float>(n, 1, 0.0, 0.1);
  auto v = polo::bench::normal_values<float>(n, 2);
  auto mask = polo::bench::right_padded_mask(B, T);
  std::vector<float> A(n), R(n);
  polo::padded<> layout(polo::matrix_view_of(std::as_const(mask), B, T));
  for (auto _ : st) {
    polo::gae(polo::cpu{.threads = threads}, layout, polo::matrix_view_of(std::as_const(r), B, T),
              polo::matrix_view_of(std::as_const(v), B, T), polo::matrix_view_of(A, B, T),
              polo::matrix_view_of(R, B, T), cfg);
    benchmark::DoNotOptimize(A.data());
    benchmark::DoNotOptimize(R.data());
    benchmark::ClobberMemory();
  }
  polo::bench::report(st, gae_bytes(B, T));
  st.counters["tokens_per_s"] = benchmark::Counter(tokens(st) * double(st.iterations()), benchmark::Counter::kIsRate);
}

void BM_Gae_skip_cpu(benchmark::State& st) { run_gae(st, polo::presets::verl::gae); }
void BM_Gae_through_cpu(benchmark::State& st) { run_gae(st, polo::presets::openrlhf::gae); }
void BM_Gae_vapo_cpu(benchmark::State& st) { run_gae(st, polo::presets::nemo::gae_vapo); }
/// verl's GAE on several threads: the third argument is polo::cpu::threads (0 = all).
void BM_GaeThreads_skip_cpu(benchmark::State& st) {
  run_gae(st, polo::presets::verl::gae, static_cast<int>(st.range(2)));
  st.counters["threads"] = double(polo::detail::cpu_workers(polo::cpu{.threads = static_cast<int>(st.range(2))},
                                                             st.range(0), tokens(st)));
}

void BM_Whiten_cpu(benchmark::State& st) {
  const std::int64_t B = st.range(0), T = st.range(1);
  const auto n = static_cast<std::size_t>(B * T);
  auto x = polo::bench::normal_values<float>(n, 3);
  auto mask = polo::bench::right_padded_mask(B, T);
  std::vector<float> out(n);
  polo::padded<> layout(polo::matrix_view_of(std::as_const(mask), B, T));
  for (auto _ : st) {
    polo::whiten(polo::cpu{}, layout, polo::matrix_view_of(std::as_const(x), B, T), polo::matrix_view_of(out, B, T),
                 polo::presets::verl::whitening);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  polo::bench::report(st, whiten_bytes(B, T));
}

void BM_ValueLoss_cpu(benchmark::State& st) {
  const std::int64_t B = st.range(0), T = st.range(1);
  const auto n = static_cast<std::size_t>(B * T);
  auto vo = polo::bench::normal_values<float>(n, 4);
  auto d = polo::bench::normal_values<float>(n, 5, 0.0, 0.3);
  auto ret = polo::bench::normal_values<float>(n, 6);
  std::vector<float> v(n), grad(n);
  for (std::size_t k = 0; k < n; ++k) v[k] = vo[k] + d[k];
  auto mask = polo::bench::right_padded_mask(B, T);
  polo::padded<> layout(polo::matrix_view_of(std::as_const(mask), B, T));
  for (auto _ : st) {
    auto s = polo::value_loss(polo::cpu{}, layout, polo::matrix_view_of(std::as_const(v), B, T),
                              polo::matrix_view_of(std::as_const(vo), B, T),
                              polo::matrix_view_of(std::as_const(ret), B, T), polo::matrix_view_of(grad, B, T),
                              polo::presets::verl::critic);
    benchmark::DoNotOptimize(s);
    benchmark::DoNotOptimize(grad.data());
    benchmark::ClobberMemory();
  }
  polo::bench::report(st, value_loss_bytes(B, T));
}

void BM_Copy_gae_bytes(benchmark::State& st) { polo::bench::copy_benchmark(st, gae_bytes(st.range(0), st.range(1))); }

}  // namespace

#define POLO_PPO_SIZES ->Args({512, 4096})->Args({1024, 8192})->UseRealTime()->Unit(benchmark::kMillisecond)->MinTime(0.3)
BENCHMARK(BM_Copy_gae_bytes) POLO_PPO_SIZES;
BENCHMARK(BM_Gae_skip_cpu) POLO_PPO_SIZES;
BENCHMARK(BM_Gae_through_cpu) POLO_PPO_SIZES;
BENCHMARK(BM_Gae_vapo_cpu) POLO_PPO_SIZES;
BENCHMARK(BM_GaeThreads_skip_cpu)->Args({512, 4096, 2})->Args({512, 4096, 0})->Args({1024, 8192, 0})->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Whiten_cpu) POLO_PPO_SIZES;
BENCHMARK(BM_ValueLoss_cpu) POLO_PPO_SIZES;
