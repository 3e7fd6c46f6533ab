// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
#pragma once
/// \file
/// Row helpers of the CPU backend's check passes: the valid-token count of a row, whether a
/// valid value of a row is non-finite, and the error naming the first one. Plain C++ (no
/// Eigen), so the CPU headers that use them (policy_loss, kl) stay includable where Eigen is
/// not on the include path (the CUDA twins of the tests compare against them).

#include "polo/aggregation.hpp"  // flat_index
#include "polo/core/config.hpp"
#include "polo/core/error.hpp"
#include "polo/core/layout.hpp"
#include "polo/core/math.hpp"

namespace polo::detail {

/// True when a valid value of the row is NaN or infinite. x − x is exactly 0 for finite x and
/// NaN otherwise, and NaN != 0; the flags are OR-ed (an associative integer reduction, so the
/// compiler vectorizes the loop; masked values are looked at but never matter).
template <class T, class Mask>
bool cpu_row_has_nonfinite(const T* x, const Mask* m, index_t len) {
  unsigned bad = 0;
  if (m == nullptr) {
    for (index_t t = 0; t < len; ++t) bad |= unsigned((x[t] - x[t]) != T(0));
  } else {
    for (index_t t = 0; t < len; ++t) bad |= unsigned(m[t] != Mask(0)) & unsigned((x[t] - x[t]) != T(0));
  }
  return bad != 0;
}

/// Valid tokens of one row.
template <class Mask>
index_t cpu_row_count(const Mask* m, index_t len) {
  if (m == nullptr) return len;
  index_t n = 0;
  for (index_t t = 0; t < len; ++t) n += is_valid(m[t]) ? 1 : 0;
  return n;
}

/// Throws nonfinite_error naming `arg` and the flat index of the first non-finite value at a
/// valid token of row i (masked values are never looked at).
template <class T, class Mask, TokenLayout L>
void cpu_check_row_finite(const char* fn, const char* arg, const L& layout, index_t i, const T* x, const Mask* m,
                          index_t len, const char* hint = "") {
  if (!cpu_row_has_nonfinite(x, m, len)) return;
  for (index_t t = 0; t < len; ++t) {
    if (m != nullptr && !is_valid(m[t])) continue;
    if (!is_finite(x[t])) throw_nonfinite(fn, arg, flat_index(layout, i, t), double(x[t]), hint);
  }
}

}  // namespace polo::detail
