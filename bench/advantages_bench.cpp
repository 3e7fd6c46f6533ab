// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
// CPU benchmarks of group-normalized advantages: per-sequence statistics plus the per-token
// broadcast (the part that moves the bytes), at PERFORMANCE.md's sizes, against memcpy.
#include <cstdint>
#include <vector>

#include <polo/polo.hpp>

#include "support/bench_support.hpp"

namespace {

// Bytes counted as PERFORMANCE.md counts them for group advantages: 8 per token (the [B,T]
// fp32 advantage out, and the mask in at 1 byte, rounded with the per-sequence terms).
double advantage_bytes(std::int64_t B, std::int64_t T) {
  return double(B) * double(T) * (sizeof(float) + sizeof(std::uint8_t)) + double(B) * 2 * sizeof(float);
}

void BM_GroupAdvantages_cpu(benchmark::State& st) {
  const std::int64_t B = st.range(0), T = st.range(1), G = 16;
  auto scores = polo::bench::normal_values<float>(static_cast<std::size_t>(B), 1);
  auto mask = polo::bench::right_padded_mask(B, T);
  std::vector<float> adv(static_cast<std::size_t>(B)), tok(static_cast<std::size_t>(B * T));
  polo::padded<> layout(polo::matrix_view_of(std::as_const(mask), B, T));
  for (auto _ : st) {
    polo::group_advantages(polo::cpu{}, polo::view_of(std::as_const(scores)), polo::contiguous_groups{G}, layout,
                           polo::view_of(adv), polo::matrix_view_of(tok, B, T));
    benchmark::DoNotOptimize(tok.data());
    benchmark::ClobberMemory();
  }
  polo::bench::report(st, advantage_bytes(B, T));
}

void BM_GroupAdvantagesLabelled_cpu(benchmark::State& st) {
  const std::int64_t B = st.range(0), T = st.range(1);
  auto scores = polo::bench::normal_values<float>(static_cast<std::size_t>(B), 2);
  std::vector<std::int64_t> labels(static_cast<std::size_t>(B));
  for (std::int64_t i = 0; i < B; ++i) labels[i] = (i * 7919) % (B / 16);  // shuffled groups of 16
  auto mask = polo::bench::right_padded_mask(B, T);
  std::vector<float> adv(static_cast<std::size_t>(B)), tok(static_cast<std::size_t>(B * T));
  polo::padded<> layout(polo::matrix_view_of(std::as_const(mask), B, T));
  for (auto _ : st) {
    polo::group_advantages(polo::cpu{}, polo::view_of(std::as_const(scores)),
                           polo::groups_by_label(polo::view_of(std::as_const(labels))), layout, polo::view_of(adv),
                           polo::matrix_view_of(tok, B, T));
    benchmark::DoNotOptimize(tok.data());
    benchmark::ClobberMemory();
  }
  polo::bench::report(st, advantage_bytes(B, T) + double(B) * sizeof(std::int64_t));
}

void BM_Copy_advantage_bytes(benchmark::State& st) {
  polo::bench::copy_benchmark(st, advantage_bytes(st.range(0), st.range(1)));
}

}  // namespace

BENCHMARK(BM_Copy_advantage_bytes)->Args({512, 4096})->Args({1024, 8192})->UseRealTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_GroupAdvantages_cpu)->Args({512, 4096})->Args({1024, 8192})->UseRealTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_GroupAdvantagesLabelled_cpu)->Args({512, 4096})->Args({1024, 8192})->UseRealTime()->Unit(benchmark::kMicrosecond);
