// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
#pragma once
/// \file
/// CPU implementation of `kl_penalized_rewards` (<polo/kl.hpp>). Pass 1 checks every input at
/// valid positions (throwing before anything is written); pass 2 writes
/// `rewards - beta * KL` at valid positions and 0 elsewhere, using `detail::kl_term` (the
/// formula the CUDA kernels share), and sums each row's KL values in position order; the rows'
/// sums are then added in row order. With `cpu::threads` both passes run rows on several
/// threads (<polo/cpu/parallel.hpp>): the same bits, and the same first error, for every count.
/// `out` may alias `rewards` exactly: each element is read before it is written.

#include <vector>

#include "polo/aggregation.hpp"  // detail::flat_index
#include "polo/cpu/parallel.hpp"
#include "polo/cpu/rows.hpp"
#include "polo/kl.hpp"

namespace polo::detail {

template <>
struct backend_impl<cpu, kl_tag> {
  template <TokenLayout L, class T, int R>
  static kl_reward_stats kl_penalized_rewards(const cpu& be, const L& layout, view<const T, R, host_space> rewards,
                                              view<const T, R, host_space> logp_old,
                                              view<const T, R, host_space> logp_ref, view<T, R, host_space> out,
                                              double beta, const kl_config& kl) {
    constexpr const char* fn = "kl_penalized_rewards";
    if constexpr (L::is_packed) layout.check_offsets_host(fn);
    const index_t B = layout.num_seqs();
    const int workers = cpu_workers(be, B, cpu_layout_positions(layout));
    // Pass 1: rows screened in parallel; a row with a non-finite input at a valid position is
    // scanned again in row order, so the first error in row order is the one thrown.
    auto screen = [&](index_t i) {
      const index_t len = layout.row_len(i);
      const auto* m = layout.mask_row(i);
      return cpu_row_has_nonfinite(layout.row_ptr(rewards, i), m, len) ||
             cpu_row_has_nonfinite(layout.row_ptr(logp_old, i), m, len) ||
             cpu_row_has_nonfinite(layout.row_ptr(logp_ref, i), m, len);
    };
    cpu_screen_rows(workers, B, screen, [&](index_t i) {
      const index_t len = layout.row_len(i);
      const auto* m = layout.mask_row(i);
      const T* r = layout.row_ptr(rewards, i);
      const T* lo = layout.row_ptr(logp_old, i);
      const T* lr = layout.row_ptr(logp_ref, i);
      for (index_t t = 0; t < len; ++t) {
        if (m != nullptr && !is_valid(m[t])) continue;
        const char* what = nullptr;
        double v = 0.0;
        if (!is_finite(r[t])) what = "rewards", v = double(r[t]);
        else if (!is_finite(lo[t])) what = "logp_old", v = double(lo[t]);
        else if (!is_finite(lr[t])) what = "logp_ref", v = double(lr[t]);
        if (what != nullptr) throw_nonfinite(fn, what, flat_index(layout, i, t), v, "at a valid token");
      }
    });
    // Pass 2: per row (in parallel), its statistics in its slot; folded in row order.
    std::vector<kl_reward_stats> rows(static_cast<std::size_t>(B));
    cpu_parallel_rows(workers, B, [&](index_t i, int) {
      const index_t len = layout.row_len(i);
      const auto* m = layout.mask_row(i);
      const T* r = layout.row_ptr(rewards, i);
      const T* lo = layout.row_ptr(logp_old, i);
      const T* lr = layout.row_ptr(logp_ref, i);
      T* o = layout.row_ptr(out, i);
      kl_reward_stats rs;
      for (index_t t = 0; t < len; ++t) {
        if (m != nullptr && !is_valid(m[t])) {
          o[t] = T(0);
          ++rs.masked_tokens;
          continue;
        }
        const kl_point p = kl_term(kl, double(lo[t]) - double(lr[t]), 1.0);
        const double rt = double(r[t]);
        o[t] = T(rt - beta * p.value);
        ++rs.tokens;
        rs.kl += sum_count<double>{p.value, 1};
        rs.clamped += sum_count<double>{p.clamped ? 1.0 : 0.0, 1};
      }
      rows[static_cast<std::size_t>(i)] = rs;
    });
    kl_reward_stats st;
    for (const kl_reward_stats& rs : rows) st += rs;
    return st;
  }
};

}  // namespace polo::detail
