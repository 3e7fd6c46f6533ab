// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
#pragma once
/// \file
/// The parts of a reduction, so a batch split across micro-batches or data-parallel ranks
/// combines exactly: every statistic polo reports is a `sum_count` (or `moments`) whose parts
/// a caller can add (or all-reduce) before dividing. Dividing per micro-batch and averaging
/// the quotients is the classic normalisation bug (SEMANTICS.md section 4.1); adding the parts
/// and dividing once is exact.

#include "polo/core/config.hpp"

namespace polo {

/// A sum and the number of terms in it. `mean()` is 0 for an empty reduction (never NaN).
template <class T = double>
struct sum_count {
  T sum = T(0);
  index_t count = 0;

  POLO_HD_INLINE constexpr sum_count& operator+=(const sum_count& o) {
    sum += o.sum;
    count += o.count;
    return *this;
  }
  friend POLO_HD_INLINE constexpr sum_count operator+(sum_count a, const sum_count& b) { return a += b; }
  /// sum / count, or 0 when count == 0.
  [[nodiscard]] POLO_HD_INLINE constexpr T mean() const { return count > 0 ? sum / T(count) : T(0); }
  friend constexpr bool operator==(const sum_count&, const sum_count&) = default;
};

/// Count, mean and sum of squared deviations (M2) of a set of values, mergeable exactly with
/// Chan et al.'s pairwise update, so a batch variance across ranks needs no second pass.
struct moments {
  index_t count = 0;
  double mean = 0.0;
  double m2 = 0.0;  ///< sum of (x - mean)^2

  /// Adds one value (Welford's update).
  POLO_HD_INLINE constexpr void add(double x) {
    ++count;
    double d = x - mean;
    mean += d / double(count);
    m2 += d * (x - mean);
  }
  /// Merges another set of values (Chan, Golub and LeVeque).
  POLO_HD_INLINE constexpr moments& operator+=(const moments& o) {
    if (o.count == 0) return *this;
    if (count == 0) {
      *this = o;
      return *this;
    }
    index_t n = count + o.count;
    double d = o.mean - mean;
    mean += d * double(o.count) / double(n);
    m2 += o.m2 + d * d * double(count) * double(o.count) / double(n);
    count = n;
    return *this;
  }
  friend POLO_HD_INLINE constexpr moments operator+(moments a, const moments& b) { return a += b; }
  /// Population (n) variance; 0 when empty.
  [[nodiscard]] POLO_HD_INLINE constexpr double population_variance() const {
    return count > 0 ? m2 / double(count) : 0.0;
  }
  /// Sample (n-1) variance; 0 when fewer than two values.
  [[nodiscard]] POLO_HD_INLINE constexpr double sample_variance() const {
    return count > 1 ? m2 / double(count - 1) : 0.0;
  }
};

}  // namespace polo
