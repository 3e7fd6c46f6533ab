// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
#pragma once
/// \file
/// CPU implementation of <polo/value_loss.hpp>. Pass 1 checks the inputs and counts valid
/// tokens per sequence (the local divisors); pass 2 computes the per-token loss, writes the
/// gradient and sums in double in a fixed order (bitwise deterministic, packed == padded).
/// With `cpu::threads` both passes compute rows on several threads and fold them on the
/// calling thread in row order (<polo/cpu/parallel.hpp>): the same bits for every count.

#include <type_traits>
#include <vector>

#include "polo/cpu/eigen_interop.hpp"
#include "polo/cpu/parallel.hpp"
#include "polo/cpu/whiten.hpp"
#include "polo/value_loss.hpp"

namespace polo::detail {

template <>
struct backend_impl<cpu, value_loss_tag> {
  template <class T, TokenLayout L>
  static value_loss_stats value_loss(const cpu& be, const L& layout, layout_tensor<L, const T> v,
                                     layout_tensor<L, const T> vo, layout_tensor<L, const T> R,
                                     layout_tensor<L, T> grad, bool write_grad, const value_loss_config& c,
                                     const normalizers& norm) {
    constexpr const char* fn = "value_loss";
    const index_t B = layout.num_seqs();
    const bool clipping = c.clip != value_clip::none;
    const int workers = cpu_workers(be, B, cpu_layout_positions(layout));

    // Pass 1: checks and counts. Rows are screened and counted in parallel; a row with a
    // non-finite input is checked again in row order, so the first error in row order
    // (values, then old_values, then returns) is the one thrown.
    std::vector<index_t> n(static_cast<std::size_t>(B), 0);
    cpu_screen_rows(
        workers, B,
        [&](index_t i) {  // also counts the row's valid tokens
          const index_t len = layout.row_len(i);
          const auto* m = layout.mask_row(i);
          n[static_cast<std::size_t>(i)] = cpu_row_count(m, len);
          return cpu_row_has_nonfinite(layout.row_ptr(v, i), m, len) ||
                 (clipping && cpu_row_has_nonfinite(layout.row_ptr(vo, i), m, len)) ||
                 cpu_row_has_nonfinite(layout.row_ptr(R, i), m, len);
        },
        [&](index_t i) {
          const index_t len = layout.row_len(i);
          const auto* m = layout.mask_row(i);
          cpu_check_row_finite(fn, "values", layout, i, layout.row_ptr(v, i), m, len);
          if (clipping) cpu_check_row_finite(fn, "old_values", layout, i, layout.row_ptr(vo, i), m, len);
          cpu_check_row_finite(fn, "returns", layout, i, layout.row_ptr(R, i), m, len);
        });
    value_loss_stats st;
    for (index_t i = 0; i < B; ++i) {
      const index_t len = layout.row_len(i);
      if (len == 0) continue;
      const index_t k = n[static_cast<std::size_t>(i)];
      st.tokens += k;
      st.sequences += k > 0 ? 1 : 0;
    }
    const double divisor = aggregation_divisor(c.agg, norm, st.tokens, st.sequences);
    const bool per_seq = c.agg == aggregation::seq_mean_token_mean || c.agg == aggregation::seq_mean_token_sum;

    // Pass 2: loss terms, gradient, per-row sums (in parallel), folded in row order.
    struct row_out {
      double row = 0.0, row_sq = 0.0;
      index_t row_clipped = 0;
    };
    std::vector<row_out> rows(static_cast<std::size_t>(B));
    const T cr = T(c.clip_range);
    cpu_parallel_rows(workers, B, [&](index_t i, int) {
      const index_t len = layout.row_len(i);
      if (len == 0) return;
      const auto* m = layout.mask_row(i);
      const T* vr = layout.row_ptr(v, i);
      const T* vor = layout.row_ptr(vo, i);
      const T* rr = layout.row_ptr(R, i);
      T* gr = write_grad ? layout.row_ptr(grad, i) : nullptr;
      const double w = c.coef * aggregation_weight(c.agg, norm.scale, divisor, n[static_cast<std::size_t>(i)]);
      double row = 0.0, row_sq = 0.0;
      index_t row_clipped = 0;
      // Every position is evaluated and masked ones are selected away (never multiplied by 0,
      // so a NaN there cannot leak); the loop then has no data-dependent branch.
      auto body = [&](auto clip_c, auto has_grad) {
        constexpr value_clip clip = decltype(clip_c)::value;
        for (index_t t = 0; t < len; ++t) {
          const bool valid = m == nullptr || is_valid(m[t]);
          const value_term term =
              value_loss_term<T>(vr[t], clip == value_clip::none ? vr[t] : vor[t], rr[t], clip, cr);
          row += valid ? term.loss : 0.0;
          row_sq += valid ? term.sq : 0.0;
          row_clipped += (valid && term.clipped) ? 1 : 0;
          if constexpr (decltype(has_grad)::value) gr[t] = valid ? T(w * term.grad) : T(0);
        }
      };
      using yes = std::true_type;
      using no = std::false_type;
      switch (c.clip) {
        case value_clip::none:
          gr ? body(std::integral_constant<value_clip, value_clip::none>{}, yes{})
             : body(std::integral_constant<value_clip, value_clip::none>{}, no{});
          break;
        case value_clip::clamp_value:
          gr ? body(std::integral_constant<value_clip, value_clip::clamp_value>{}, yes{})
             : body(std::integral_constant<value_clip, value_clip::clamp_value>{}, no{});
          break;
        case value_clip::clamp_delta:
          gr ? body(std::integral_constant<value_clip, value_clip::clamp_delta>{}, yes{})
             : body(std::integral_constant<value_clip, value_clip::clamp_delta>{}, no{});
          break;
      }
      rows[static_cast<std::size_t>(i)] = row_out{row, row_sq, row_clipped};
    });
    neumaier_sum num, clipped, sq;
    for (index_t i = 0; i < B; ++i) {
      const index_t ni = n[static_cast<std::size_t>(i)];
      if (layout.row_len(i) == 0 || ni == 0) continue;
      const row_out& ro = rows[static_cast<std::size_t>(i)];
      num.add(c.agg == aggregation::seq_mean_token_mean ? ro.row / double(ni) : ro.row);
      clipped.add(double(ro.row_clipped));
      sq.add(ro.row_sq);
    }
    st.parts = {num.value(), per_seq ? st.sequences : st.tokens};
    st.clipped = {clipped.value(), st.tokens};
    st.squared_error = {sq.value(), st.tokens};
    st.loss = divisor > 0.0 ? c.coef * norm.scale * st.parts.sum / divisor : 0.0;
    return st;
  }
};

}  // namespace polo::detail
