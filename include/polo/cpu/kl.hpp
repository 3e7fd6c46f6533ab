// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
#pragma once
/// \file
/// CPU implementation of `kl_penalized_rewards` (<polo/kl.hpp>). Pass 1 checks every input at
/// valid positions (throwing before anything is written); pass 2 writes
/// `rewards - beta * KL` at valid positions and 0 elsewhere, row by row in a fixed order, using
/// `detail::kl_term` (the formula the CUDA kernels share). `out` may alias `rewards` exactly:
/// each element is read before it is written.

#include "polo/aggregation.hpp"  // detail::flat_index
#include "polo/kl.hpp"

namespace polo::detail {

template <>
struct backend_impl<cpu, kl_tag> {
  template <TokenLayout L, class T, int R>
  static kl_reward_stats kl_penalized_rewards(const cpu&, const L& layout, view<const T, R, host_space> rewards,
                                              view<const T, R, host_space> logp_old,
                                              view<const T, R, host_space> logp_ref, view<T, R, host_space> out,
                                              double beta, const kl_config& kl) {
    constexpr const char* fn = "kl_penalized_rewards";
    if constexpr (L::is_packed) layout.check_offsets_host(fn);
    const index_t B = layout.num_seqs();
    for (index_t i = 0; i < B; ++i) {
      const index_t len = layout.row_len(i);
      const auto* m = layout.mask_row(i);
      const T* r = layout.row_ptr(rewards, i);
      const T* lo = layout.row_ptr(logp_old, i);
      const T* lr = layout.row_ptr(logp_ref, i);
      for (index_t t = 0; t < len; ++t) {
        if (m != nullptr && !is_valid(m[t])) continue;
        const char* bad = nullptr;
        double v = 0.0;
        if (!is_finite(r[t])) bad = "rewards", v = double(r[t]);
        else if (!is_finite(lo[t])) bad = "logp_old", v = double(lo[t]);
        else if (!is_finite(lr[t])) bad = "logp_ref", v = double(lr[t]);
        if (bad != nullptr) throw_nonfinite(fn, bad, flat_index(layout, i, t), v, "at a valid token");
      }
    }
    kl_reward_stats st;
    for (index_t i = 0; i < B; ++i) {
      const index_t len = layout.row_len(i);
      const auto* m = layout.mask_row(i);
      const T* r = layout.row_ptr(rewards, i);
      const T* lo = layout.row_ptr(logp_old, i);
      const T* lr = layout.row_ptr(logp_ref, i);
      T* o = layout.row_ptr(out, i);
      for (index_t t = 0; t < len; ++t) {
        if (m != nullptr && !is_valid(m[t])) {
          o[t] = T(0);
          ++st.masked_tokens;
          continue;
        }
        const kl_point p = kl_term(kl, double(lo[t]) - double(lr[t]), 1.0);
        const double rt = double(r[t]);
        o[t] = T(rt - beta * p.value);
        ++st.tokens;
        st.kl += sum_count<double>{p.value, 1};
        st.clamped += sum_count<double>{p.clamped ? 1.0 : 0.0, 1};
      }
    }
    return st;
  }
};

}  // namespace polo::detail
