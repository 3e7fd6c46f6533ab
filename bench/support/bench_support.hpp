// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
#pragma once
// Shared support for polo's CPU benchmarks: the memory-copy floor measured in the same binary,
// and one call that reports a primitive's bytes/s and its ratio to that floor.
//
//     static void BM_Foo_cpu(benchmark::State& st) {
//       ... set up inputs ...
//       for (auto _ : st) { polo::foo(polo::cpu{}, ...); benchmark::ClobberMemory(); }
//       polo::bench::report(st, bytes_per_call);
//     }
//     BENCHMARK(BM_Foo_cpu)->Args({512, 4096})->UseRealTime()->Unit(benchmark::kMicrosecond);
//
// Counters: `bytes_per_second` (Google Benchmark's own, from SetBytesProcessed), and `x_copy`:
// wall time per call divided by the time memcpy takes to move the same number of bytes (half
// read, half written) on this machine, measured once per size in this process: 1.0 means the
// primitive runs at the copy floor.

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <map>
#include <random>
#include <vector>

#include <benchmark/benchmark.h>

namespace polo::bench {

/// Median wall seconds of one memcpy moving `bytes_moved` bytes (bytes_moved / 2 read and the
/// same written), after a warm-up; cached per size.
inline double copy_seconds(double bytes_moved) {
  static std::map<std::int64_t, double> cache;
  const auto half = static_cast<std::size_t>(std::max(64.0, bytes_moved / 2));
  auto it = cache.find(static_cast<std::int64_t>(half));
  if (it != cache.end()) return it->second;
  std::vector<unsigned char> src(half, 1), dst(half, 0);
  for (std::size_t i = 0; i < half; i += 4096) src[i] = static_cast<unsigned char>(i);
  std::vector<double> t;
  for (int r = 0; r < 23; ++r) {
    auto a = std::chrono::steady_clock::now();
    std::memcpy(dst.data(), src.data(), half);
    benchmark::DoNotOptimize(dst.data());
    benchmark::ClobberMemory();
    auto b = std::chrono::steady_clock::now();
    if (r >= 3) t.push_back(std::chrono::duration<double>(b - a).count());
  }
  std::nth_element(t.begin(), t.begin() + t.size() / 2, t.end());
  double med = t[t.size() / 2];
  cache[static_cast<std::int64_t>(half)] = med;
  return med;
}

/// Call after the timing loop: sets bytes processed and the `x_copy` ratio (time per call over
/// the copy time of the same bytes). Use with ->UseRealTime().
inline void report(benchmark::State& st, double bytes_per_iteration) {
  const double copy = copy_seconds(bytes_per_iteration);
  st.SetBytesProcessed(static_cast<std::int64_t>(bytes_per_iteration * double(st.iterations())));
  // kIsRate divides by the elapsed time; kInvert flips it: elapsed / (iterations * copy).
  st.counters["x_copy"] = benchmark::Counter(copy * double(st.iterations()),
                                             benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
  st.counters["copy_GBps"] = bytes_per_iteration / copy * 1e-9;
}

/// The floor itself as a benchmark: memcpy of `bytes` (read + written) per iteration.
inline void copy_benchmark(benchmark::State& st, double bytes_moved) {
  const auto half = static_cast<std::size_t>(bytes_moved / 2);
  std::vector<unsigned char> src(half, 1), dst(half, 0);
  for (auto _ : st) {
    std::memcpy(dst.data(), src.data(), half);
    benchmark::DoNotOptimize(dst.data());
    benchmark::ClobberMemory();
  }
  report(st, bytes_moved);
}

/// Deterministic standard-normal values for benchmark inputs.
template <class T>
std::vector<T> normal_values(std::size_t n, std::uint64_t seed, double mean = 0.0, double sd = 1.0) {
  std::mt19937_64 g(seed);
  std::normal_distribution<double> d(mean, sd);
  std::vector<T> v(n);
  for (auto& x : v) x = static_cast<T>(d(g));
  return v;
}

/// A [B,T] right-padded 0/1 mask with about `valid` of the tokens valid (PERFORMANCE.md's
/// baselines mask ~10% of tokens).
inline std::vector<std::uint8_t> right_padded_mask(std::int64_t B, std::int64_t T, double valid = 0.9,
                                                   std::uint64_t seed = 7) {
  std::mt19937_64 g(seed);
  std::uniform_real_distribution<double> u(2 * valid - 1.0, 1.0);
  std::vector<std::uint8_t> m(static_cast<std::size_t>(B * T), 0);
  for (std::int64_t i = 0; i < B; ++i) {
    auto len = static_cast<std::int64_t>(std::clamp(u(g), 0.0, 1.0) * double(T));
    std::fill(m.begin() + i * T, m.begin() + i * T + len, std::uint8_t(1));
  }
  return m;
}

/// The same rows with their padding on the left (a prompt masked before the response): row i
/// has the valid span [T - len_i, T), len_i as in right_padded_mask.
inline std::vector<std::uint8_t> left_padded_mask(std::int64_t B, std::int64_t T, double valid = 0.9,
                                                  std::uint64_t seed = 7) {
  std::vector<std::uint8_t> m = right_padded_mask(B, T, valid, seed);
  for (std::int64_t i = 0; i < B; ++i) std::reverse(m.begin() + i * T, m.begin() + (i + 1) * T);
  return m;
}

}  // namespace polo::bench
