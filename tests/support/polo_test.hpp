// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
#pragma once
// Shared test support: the backend list every test body runs on, owning buffers in a
// backend's memory space, seeded random inputs, mask patterns, packing, and comparisons.
//
// A test body is written once, templated on the backend:
//
//     TEMPLATE_LIST_TEST_CASE("...", "[tag]", polo::test::backends) {
//       using B = TestType;
//       auto s = polo::test::buffer<double, B>(host_scores);
//       ... polo::group_advantages(polo::test::make_backend<B>(), s.view(), ...);
//       auto got = out.to_host();
//     }
//
// Built as <name>_cpu from tests/<name>.cpp; the CUDA build adds <name>_cuda from a generated
// .cu that includes the same file, where `backends` holds polo::cuda.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include <catch2/catch.hpp>

#if defined(__CUDACC__)
#include "polo/polo.cuh"
#else
#include "polo/polo.hpp"
#endif

namespace polo::test {

#if defined(__CUDACC__)
using backends = std::tuple<polo::cuda>;
#else
using backends = std::tuple<polo::cpu>;
#endif

/// A default-constructed backend tag of type B (the CUDA one on the default stream).
template <class B>
B make_backend() {
  return B{};
}

/// Owning buffer in the memory space of backend B, filled from host data. The CPU
/// specialization is a std::vector; the CUDA one is in tests/support/cuda_buffer.cuh.
template <class T, class B>
class buffer;

template <class T>
class buffer<T, polo::cpu> {
 public:
  buffer() = default;
  explicit buffer(std::vector<T> host) : data_(std::move(host)) {}
  buffer(index_t n, T fill) : data_(static_cast<std::size_t>(n), fill) {}
  [[nodiscard]] view<T, 1, host_space> view1() { return {data_.data(), index_t(data_.size()), 1}; }
  [[nodiscard]] view<const T, 1, host_space> cview1() const { return {data_.data(), index_t(data_.size()), 1}; }
  [[nodiscard]] view<T, 2, host_space> view2(index_t rows, index_t cols) {
    REQUIRE(index_t(data_.size()) == rows * cols);
    return {data_.data(), rows, cols, cols};
  }
  [[nodiscard]] view<const T, 2, host_space> cview2(index_t rows, index_t cols) const {
    REQUIRE(index_t(data_.size()) == rows * cols);
    return {data_.data(), rows, cols, cols};
  }
  [[nodiscard]] std::vector<T> to_host() const { return data_; }
  [[nodiscard]] index_t size() const { return index_t(data_.size()); }

 private:
  std::vector<T> data_;
};

// ---------------------------------------------------------------------------------------------
// Random inputs
// ---------------------------------------------------------------------------------------------

/// Base seed: POLO_TEST_SEED from the environment, else a fixed default. Tests print it with
/// INFO so any failure can be replayed.
inline std::uint64_t base_seed() {
  if (const char* s = std::getenv("POLO_TEST_SEED")) return std::strtoull(s, nullptr, 10);
  return 20261122ULL;
}
inline std::mt19937_64 rng(std::uint64_t salt) { return std::mt19937_64(base_seed() * 1000003ULL + salt); }

/// Whether the k-th configuration of an exhaustive loop runs: all of them unless
/// POLO_TEST_CONFIG_STRIDE=s (and optionally POLO_TEST_CONFIG_OFFSET=o) select every s-th one
/// from the o-th. For tools that make each call ~1000x slower (compute-sanitizer racecheck):
/// a run per offset covers the loop across processes, or one stride samples it. Unset in CI.
inline bool config_selected(std::size_t k) {
  static const std::size_t stride = [] {
    const char* s = std::getenv("POLO_TEST_CONFIG_STRIDE");
    const unsigned long long v = s ? std::strtoull(s, nullptr, 10) : 1ULL;
    return static_cast<std::size_t>(v > 0 ? v : 1);
  }();
  static const std::size_t offset = [] {
    const char* s = std::getenv("POLO_TEST_CONFIG_OFFSET");
    return static_cast<std::size_t>(s ? std::strtoull(s, nullptr, 10) : 0ULL);
  }();
  return k % stride == offset % stride;
}

inline std::vector<double> normal(std::mt19937_64& g, index_t n, double mean = 0.0, double sd = 1.0) {
  std::normal_distribution<double> d(mean, sd);
  std::vector<double> v(static_cast<std::size_t>(n));
  for (auto& x : v) x = d(g);
  return v;
}
/// Values drawn from a small set (rule-based rewards tie exactly).
inline std::vector<double> discrete(std::mt19937_64& g, index_t n, std::vector<double> levels) {
  std::uniform_int_distribution<std::size_t> d(0, levels.size() - 1);
  std::vector<double> v(static_cast<std::size_t>(n));
  for (auto& x : v) x = levels[d(g)];
  return v;
}

template <class T>
std::vector<T> cast(const std::vector<double>& v) {
  return std::vector<T>(v.begin(), v.end());
}

/// Mask patterns of a padded [B,T] batch.
enum class mask_pattern { all_valid, right_pad, left_pad, interior_spans, random, with_empty_rows };

inline const char* name(mask_pattern p) {
  switch (p) {
    case mask_pattern::all_valid: return "all_valid";
    case mask_pattern::right_pad: return "right_pad";
    case mask_pattern::left_pad: return "left_pad";
    case mask_pattern::interior_spans: return "interior_spans";
    case mask_pattern::random: return "random";
    case mask_pattern::with_empty_rows: return "with_empty_rows";
  }
  return "?";
}

/// A [B,T] row-major 0/1 mask of the given pattern.
inline std::vector<std::uint8_t> make_mask(std::mt19937_64& g, index_t B, index_t T, mask_pattern p) {
  std::vector<std::uint8_t> m(static_cast<std::size_t>(B * T), 0);
  std::uniform_int_distribution<index_t> len(0, T);
  for (index_t i = 0; i < B; ++i) {
    auto row = m.begin() + i * T;
    switch (p) {
      case mask_pattern::all_valid: std::fill(row, row + T, 1); break;
      case mask_pattern::right_pad: std::fill(row, row + std::max<index_t>(1, len(g)) * (T > 0), 1); break;
      case mask_pattern::left_pad: {
        index_t n = T > 0 ? std::max<index_t>(1, len(g)) : 0;
        std::fill(row + (T - n), row + T, 1);
        break;
      }
      case mask_pattern::interior_spans: {
        // a prompt-like prefix of padding, then alternating valid and masked (tool) spans
        index_t t = T > 0 ? len(g) / 4 : 0;
        bool on = true;
        std::uniform_int_distribution<index_t> span(1, std::max<index_t>(1, T / 5));
        while (t < T) {
          index_t n = std::min(T - t, span(g));
          if (on) std::fill(row + t, row + t + n, 1);
          on = !on;
          t += n;
        }
        break;
      }
      case mask_pattern::random: {
        std::bernoulli_distribution b(0.7);
        for (index_t t = 0; t < T; ++t) row[t] = b(g);
        break;
      }
      case mask_pattern::with_empty_rows: {
        if (i % 3 != 1) std::fill(row, row + std::max<index_t>(1, len(g)) * (T > 0), 1);
        break;
      }
    }
  }
  return m;
}

/// A padded batch re-expressed as a packed one: each row keeps the span from its first to its
/// last valid token (interior masked spans stay, marked by the packed mask), or with
/// `keep_prefix` from position 0 to its last valid token (a masked prefix, as a prompt before
/// a response, stays too); empty rows have length 0. `take` copies a padded [B,T] tensor into
/// the packed [N] order.
struct packing {
  std::vector<std::int64_t> offsets;     // [B+1]
  std::vector<std::uint8_t> mask;        // [N]
  std::vector<index_t> first;            // per row: first kept column
  index_t B = 0, T = 0;
  [[nodiscard]] index_t tokens() const { return offsets.empty() ? 0 : offsets.back(); }

  template <class V>
  [[nodiscard]] std::vector<V> take(const std::vector<V>& padded) const {
    std::vector<V> out;
    out.reserve(static_cast<std::size_t>(tokens()));
    for (index_t i = 0; i < B; ++i)
      for (index_t t = first[i]; t < first[i] + (offsets[i + 1] - offsets[i]); ++t) out.push_back(padded[i * T + t]);
    return out;
  }
  /// Scatters a packed [N] tensor back into [B,T] (positions outside the kept spans = fill).
  template <class V>
  [[nodiscard]] std::vector<V> scatter(const std::vector<V>& packed, V fill) const {
    std::vector<V> out(static_cast<std::size_t>(B * T), fill);
    for (index_t i = 0; i < B; ++i)
      for (index_t k = 0; k < offsets[i + 1] - offsets[i]; ++k) out[i * T + first[i] + k] = packed[offsets[i] + k];
    return out;
  }
};

inline packing pack(const std::vector<std::uint8_t>& mask, index_t B, index_t T, bool keep_prefix = false) {
  packing p;
  p.B = B;
  p.T = T;
  p.offsets.push_back(0);
  for (index_t i = 0; i < B; ++i) {
    index_t lo = T, hi = -1;
    for (index_t t = 0; t < T; ++t)
      if (mask[i * T + t]) {
        lo = std::min(lo, t);
        hi = std::max(hi, t);
      }
    if (hi < 0) lo = 0, hi = -1;
    if (keep_prefix) lo = 0;
    p.first.push_back(lo);
    for (index_t t = lo; t <= hi; ++t) p.mask.push_back(mask[i * T + t]);
    p.offsets.push_back(p.offsets.back() + (hi - lo + 1));
  }
  return p;
}

/// Three malformed packed offsets over N >= 2600 tokens and 4 rows (offsets[2] below
/// offsets[1], offsets[B] = N - 1, offsets[0] = 1), each with a phrase the CPU's error message
/// carries ("decreases", "ends at", "starts at").
inline std::vector<std::pair<std::vector<std::int64_t>, const char*>> malformed_offsets(index_t N) {
  const std::vector<std::int64_t> good{0, 1000, 2500, 2600, N};
  auto dec = good, end = good, start = good;
  dec[2] = 900;
  end.back() = N - 1;
  start[0] = 1;
  return {{dec, "decreases"}, {end, "ends at"}, {start, "starts at"}};
}

// ---------------------------------------------------------------------------------------------
// Comparisons
// ---------------------------------------------------------------------------------------------

template <class T>
struct tolerance;
template <>
struct tolerance<double> {
  static constexpr double rtol = 1e-10, atol = 1e-12;
};
template <>
struct tolerance<float> {
  static constexpr double rtol = 2e-5, atol = 2e-6;
};

/// Checks |got - want| <= atol + rtol * |want| elementwise (NaN equal to NaN only when both
/// are NaN); reports the first mismatch with its index.
template <class T>
void require_close(const std::vector<T>& got, const std::vector<double>& want, double rtol = tolerance<T>::rtol,
                   double atol = tolerance<T>::atol) {
  REQUIRE(got.size() == want.size());
  for (std::size_t i = 0; i < got.size(); ++i) {
    double g = double(got[i]), w = want[i];
    bool ok = (std::isnan(g) && std::isnan(w)) || (g == w) || std::abs(g - w) <= atol + rtol * std::abs(w);
    if (!ok) {
      std::ostringstream os;
      os.precision(17);
      os << "index " << i << ": got " << g << ", want " << w << " (|diff| " << std::abs(g - w) << ")";
      FAIL(os.str());
    }
  }
}

/// Bitwise equality of two vectors (determinism and layout-equivalence checks).
template <class T>
bool bitwise_equal(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

}  // namespace polo::test
