// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
#pragma once
/// \file
/// Scalar helpers shared by the CPU backend, the CUDA kernels and the tests. All are
/// `POLO_HD` and exact about IEEE specials; on the device they need no library call.

#include <cmath>
#include <cstdint>
#include <cstring>

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

/// e^x and e^x - 1 of one float from a single range reduction and polynomial, for the float
/// kernels that need both of the same x (the policy loss's ratio and its k3 statistic; the
/// library's expf and expm1f would reduce and evaluate twice, ~40 instructions against ~15):
///
///     x = k ln2 + r,  k = rint(x / ln2),  |r| <= ln2 / 2   (ln2 in two parts: k ln2_hi exact)
///     q = e^r - 1 = r + r^2 (1/2! + r/3! + ... + r^5/7!)   (Taylor to r^7: truncation < 0.2 ulp)
///     e = 2^k q + 2^k,  em = 2^k q + (2^k - 1)           (one fma each)
///
/// Precondition: |x| <= 80 (callers clamp x there first), so 2^k and every intermediate stay
/// normal floats: the result is then the same bits on the host and on any device, with or
/// without flush-to-zero. Against double exp / expm1 at every float of [-80, 80] (measured
/// once; tests/policy_loss_test.cpp checks a sweep): e within 1.06 ulp, em within 1.65 ulp (at
/// the k = 0 / 1 boundary, x ~ 0.349, where 2q + 1 cancels a bit); CUDA specifies its expf to
/// 2 ulp and expm1f to 1. Outside the range the outputs are unspecified (NaN gives NaN).
POLO_HD_INLINE void exp_expm1_f32(float x, float& e, float& em) noexcept {
#if defined(__CUDA_ARCH__)
  const auto fma = [](float a, float b, float c) { return __fmaf_rn(a, b, c); };
#else
  const auto fma = [](float a, float b, float c) { return std::fma(a, b, c); };
#endif
  // x / ln2 rounded to an integer by adding 1.5 * 2^23 (one rounding, ties to even); the sum's
  // low mantissa bits are then k in two's complement, which builds 2^k's exponent field below.
  constexpr float magic = 12582912.0f;
  const float y = fma(x, 1.44269504f, magic);
  const float kf = y - magic;
  float r = fma(kf, -0.693145751953125f, x);  // ln2_hi: 15 significant bits, so k ln2_hi is exact
  r = fma(kf, -1.42860677e-06f, r);           // ln2_lo = ln2 - ln2_hi
  float p = fma(r, 1.0f / 5040.0f, 1.0f / 720.0f);
  p = fma(p, r, 1.0f / 120.0f);
  p = fma(p, r, 1.0f / 24.0f);
  p = fma(p, r, 1.0f / 6.0f);
  p = fma(p, r, 0.5f);
  const float q = fma(r * r, p, r);
  std::uint32_t yb = 0;
  std::memcpy(&yb, &y, sizeof yb);
  // (k + 127) << 23 with k = yb - bits(magic), as one multiply-add modulo 2^32
  const std::uint32_t tb = yb * 0x800000u + (127u - 0x4B400000u) * 0x800000u;
  float t = 0.0f;
  std::memcpy(&t, &tb, sizeof t);
  e = fma(q, t, t);
  em = fma(q, t, t - 1.0f);
}

}  // namespace polo::detail
