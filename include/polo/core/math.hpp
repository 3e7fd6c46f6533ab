// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
#pragma once
/// \file
/// Scalar helpers shared by the CPU backend, the CUDA kernels and the tests. All are
/// `POLO_HD`, header-free (no <cmath> needed on the device) and exact about IEEE specials.

#include "polo/core/config.hpp"

namespace polo::detail {

/// True for finite values; false for NaN and +-inf. Works without <cmath> on host and device
/// (x - x is 0 for finite x and NaN otherwise). Not valid under -ffast-math.
template <class T>
POLO_HD_INLINE constexpr bool is_finite(T x) noexcept {
  T d = x - x;
  return d == d;
}

/// True when a mask entry marks a valid token: any nonzero value (bool, integer or float).
template <class Mask>
POLO_HD_INLINE constexpr bool is_valid(Mask m) noexcept {
  return m != Mask(0);
}

template <class T>
POLO_HD_INLINE constexpr T max_of(T a, T b) noexcept {
  return a < b ? b : a;
}
template <class T>
POLO_HD_INLINE constexpr T min_of(T a, T b) noexcept {
  return b < a ? b : a;
}

/// Clamp that keeps NaN (unlike fmin/fmax, which silently replace it with a bound).
template <class T>
POLO_HD_INLINE constexpr T clamp_keep_nan(T x, T lo, T hi) noexcept {
  return x < lo ? lo : (x > hi ? hi : x);
}

/// Neumaier (improved Kahan) compensated sum: order-dependent like any sum, so callers keep a
/// fixed order, but accurate to about one rounding regardless of the number of terms.
struct neumaier_sum {
  double sum = 0.0;
  double comp = 0.0;
  POLO_HD_INLINE void add(double x) noexcept {
    double t = sum + x;
    if ((sum < 0 ? -sum : sum) >= (x < 0 ? -x : x))
      comp += (sum - t) + x;
    else
      comp += (x - t) + sum;
    sum = t;
  }
  POLO_HD_INLINE double value() const noexcept { return sum + comp; }
};

}  // namespace polo::detail
