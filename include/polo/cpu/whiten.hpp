// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
#pragma once
/// \file
/// CPU implementation of <polo/whiten.hpp>, and the row helpers the other PPO primitives on the
/// CPU share (finiteness checks at valid tokens, row moments). Fixed-order, bitwise
/// deterministic; statistics in double. Pass 1 checks every valid input and takes the moments
/// row by row (each row is reread from cache for its squared deviations); pass 2 writes. A
/// throw therefore leaves the output untouched. With `cpu::threads` both passes run rows on
/// several threads, the moments merged in row order (the same bits for every count).

#include <string>
#include <type_traits>
#include <vector>

#include "polo/cpu/eigen_interop.hpp"
#include "polo/cpu/parallel.hpp"
#include "polo/cpu/rows.hpp"
#include "polo/whiten.hpp"

namespace polo::detail {

/// Moments of the valid values of one row, in double: the mean as x0 + mean(x − x0) (x0 the
/// first valid value, so a constant row has mean exactly x0), then the squared deviations.
/// Each sum runs in four interleaved partial sums (positions counted from the first valid
/// token, so a packed row and the same row padded group their terms identically), added
/// pairwise at the end: a fixed order, hence bitwise deterministic, with four independent
/// dependency chains instead of one.
template <class T, class Mask>
moments cpu_row_moments(const T* x, const Mask* m, index_t len) {
  moments r;
  index_t f = 0;
  if (m != nullptr)
    while (f < len && !is_valid(m[f])) ++f;
  if (f >= len) return r;
  const double x0 = double(x[f]);
  auto valid = [&](index_t t) { return m == nullptr || is_valid(m[t]); };
  // Σ (x − x0) and the count over the valid positions.
  double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
  index_t n = 0;
  index_t t = f;
  for (; t + 4 <= len; t += 4) {
    s0 += valid(t) ? double(x[t]) - x0 : 0.0;
    s1 += valid(t + 1) ? double(x[t + 1]) - x0 : 0.0;
    s2 += valid(t + 2) ? double(x[t + 2]) - x0 : 0.0;
    s3 += valid(t + 3) ? double(x[t + 3]) - x0 : 0.0;
    n += index_t(valid(t)) + index_t(valid(t + 1)) + index_t(valid(t + 2)) + index_t(valid(t + 3));
  }
  // The tail (at most 3 positions) continues the same assignment: t − f ≡ 0 (mod 4) here.
  if (t < len) s0 += valid(t) ? double(x[t]) - x0 : 0.0;
  if (t + 1 < len) s1 += valid(t + 1) ? double(x[t + 1]) - x0 : 0.0;
  if (t + 2 < len) s2 += valid(t + 2) ? double(x[t + 2]) - x0 : 0.0;
  for (; t < len; ++t) n += index_t(valid(t));
  const double mean = x0 + ((s0 + s1) + (s2 + s3)) / double(n);
  // Σ (x − μ)².
  double q0 = 0.0, q1 = 0.0, q2 = 0.0, q3 = 0.0;
  auto sq = [&](index_t u) {
    const double d = double(x[u]) - mean;
    return valid(u) ? d * d : 0.0;
  };
  for (t = f; t + 4 <= len; t += 4) {
    q0 += sq(t);
    q1 += sq(t + 1);
    q2 += sq(t + 2);
    q3 += sq(t + 3);
  }
  if (t < len) q0 += sq(t);
  if (t + 1 < len) q1 += sq(t + 1);
  if (t + 2 < len) q2 += sq(t + 2);
  r.count = n;
  r.mean = mean;
  r.m2 = (q0 + q1) + (q2 + q3);
  return r;
}

/// Moments of every valid value of a per-token tensor (rows merged in order), checking that
/// each is finite. With `workers` > 1 the rows' moments are taken on several threads and
/// merged here in row order (the same bits); a row with a non-finite value is checked again
/// in row order, so the first one in row order is the error thrown.
template <class T, TokenLayout L>
moments cpu_masked_moments(const char* fn, const char* arg, const L& layout, layout_tensor<L, const T> x,
                           int workers = 1) {
  const index_t B = layout.num_seqs();
  std::vector<moments> rows(static_cast<std::size_t>(B));
  std::vector<unsigned char> bad(static_cast<std::size_t>(B), 0);
  cpu_parallel_rows(workers, B, [&](index_t i, int) {
    const index_t len = layout.row_len(i);
    if (len == 0) return;
    const T* xr = layout.row_ptr(x, i);
    const auto* m = layout.mask_row(i);
    if (cpu_row_has_nonfinite(xr, m, len))
      bad[static_cast<std::size_t>(i)] = 1;
    else
      rows[static_cast<std::size_t>(i)] = cpu_row_moments(xr, m, len);
  });
  moments total;
  for (index_t i = 0; i < B; ++i) {
    const index_t len = layout.row_len(i);
    if (len == 0) continue;
    if (bad[static_cast<std::size_t>(i)])
      cpu_check_row_finite(fn, arg, layout, i, layout.row_ptr(x, i), layout.mask_row(i), len);
    total += rows[static_cast<std::size_t>(i)];
  }
  return total;
}

/// out = (x − mean)·inv + add at valid tokens, and at masked ones either 0 or the same map.
template <class T, class Mask>
void cpu_affine_row(const T* x, const Mask* m, T* out, index_t len, double mean, double inv, double add,
                    bool masked_zero) {
  const_row_array_map<T> xr(x, len);
  row_array_map<T> o(out, len);
  if (m == nullptr || !masked_zero) {
    o = ((xr.template cast<double>() - mean) * inv + add).template cast<T>();
  } else {
    const_row_array_map<Mask> mm(m, len);
    o = (mm != Mask(0)).select(((xr.template cast<double>() - mean) * inv + add).template cast<T>(),
                               Eigen::Array<T, Eigen::Dynamic, 1>::Zero(len));
  }
}

template <>
struct backend_impl<cpu, whiten_tag> {
  template <class T, TokenLayout L>
  static moments masked_moments(const cpu& be, const L& layout, layout_tensor<L, const T> x) {
    if constexpr (L::is_packed) layout.check_offsets_host("masked_moments");
    return cpu_masked_moments<T>("masked_moments", "x", layout, x,
                                 cpu_workers(be, layout.num_seqs(), cpu_layout_positions(layout)));
  }

  /// Writes the whitened tensor given the coefficients (also used by gae.hpp's composites),
  /// rows on `workers` threads.
  template <class T, TokenLayout L>
  static void apply(const L& layout, layout_tensor<L, const T> x, layout_tensor<L, T> out, const whiten_coeffs& w,
                    const whiten_config& c, int workers = 1) {
    const index_t B = layout.num_seqs();
    const double add = c.shift_mean ? 0.0 : w.mean;
    cpu_parallel_rows(workers, B, [&](index_t i, int) {
      const index_t len = layout.row_len(i);
      if (len == 0) return;
      T* o = layout.row_ptr(out, i);
      if (w.degenerate) {
        row_array_map<T>(o, len).setZero();
        return;
      }
      cpu_affine_row(layout.row_ptr(x, i), layout.mask_row(i), o, len, w.mean, w.inv_scale, add,
                     c.write == whiten_write::zero_masked);
    });
  }

  template <class T, TokenLayout L>
  static whiten_stats whiten(const cpu& be, const L& layout, layout_tensor<L, const T> x, layout_tensor<L, T> out,
                             const moments* batch, const whiten_config& c) {
    constexpr const char* fn = "whiten";
    if constexpr (L::is_packed) layout.check_offsets_host(fn);
    const int workers = cpu_workers(be, layout.num_seqs(), cpu_layout_positions(layout));
    whiten_stats st;
    st.local = cpu_masked_moments<T>(fn, "x", layout, x, workers);
    st.used = batch ? *batch : st.local;
    whiten_coeffs w = whiten_coefficients(st.used, c);
    if (w.degenerate && c.degenerate == whiten_degenerate::error) throw_degenerate(fn, st.used, c);
    st.mean = w.mean;
    st.inv_scale = w.inv_scale;
    st.degenerate = w.degenerate;
    apply<T>(layout, x, out, w, c, workers);
    return st;
  }
};

}  // namespace polo::detail
