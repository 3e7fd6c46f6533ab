// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
#pragma once
/// \file
/// CPU implementation of <polo/gae.hpp>. Fixed-order (bitwise deterministic; a packed batch
/// and the same batch padded give identical bits). Pass 1 checks every input a result depends
/// on; pass 2 runs one backward scan per sequence with its state in double and writes both
/// outputs; the statistics of a row are taken while it is in cache. With `cpu::threads`, gae
/// and the returns (ReMax included) compute rows on several threads in both passes and fold
/// them on the calling thread in row order (<polo/cpu/parallel.hpp>): the same bits, and the
/// same first error, for every thread count.

#include <algorithm>
#include <string>
#include <type_traits>
#include <vector>

#include "polo/cpu/advantages.hpp"
#include "polo/cpu/eigen_interop.hpp"
#include "polo/cpu/parallel.hpp"
#include "polo/cpu/whiten.hpp"
#include "polo/gae.hpp"

namespace polo::detail {

/// One sequence's GAE, backwards, sequentially through the shared per-position functions of
/// <polo/gae.hpp> (gae_step, gae_next_value, gae_write). Returns Σ R over the valid tokens.
template <bool Skip, bool HasMask, bool Two, class T, class Mask>
double cpu_gae_row(const T* r, const T* v, const Mask* m, index_t len, const gae_row_coeffs& k, masked_fill fill,
                   T* A, T* R) {
  constexpr gae_mask_mode mode = Skip ? gae_mask_mode::skip : gae_mask_mode::through;
  const bool echo_own_value = Skip && fill == masked_fill::recursion;
  double g = 0.0, g2 = 0.0, next = k.next, rsum = 0.0;
  for (index_t t = len - 1; t >= 0; --t) {
    const bool valid = !HasMask || is_valid(m[t]);
    const double rt = valid ? double(r[t]) : 0.0;
    const double vt = valid ? double(v[t]) : 0.0;
    g = affine_apply(gae_step(mode, valid, rt, vt, next, k.gamma, k.gl), g);
    if constexpr (Two) {
      g2 = affine_apply(gae_step(mode, valid, rt, vt, next, k.gamma, k.gl_value), g2);
    } else {
      g2 = g;
    }
    const double v_out = valid ? vt : (echo_own_value ? double(v[t]) : 0.0);
    const gae_output o = gae_write(mode, fill, valid, g, g2, v_out);
    A[t] = T(o.advantage);
    const T rt_out = T(o.ret);
    R[t] = rt_out;
    if (valid) rsum += double(rt_out);
    next = gae_next_value(mode, valid, vt, next);
  }
  return rsum;
}

/// Discounted returns of one row (and ReMax's A = R − b when A is given), backwards, through
/// returns_step and returns_write of <polo/gae.hpp>.
template <bool HasMask, class T, class Mask>
void cpu_returns_row(const T* r, const Mask* m, index_t len, double gamma, masked_fill fill, returns_mask_mode mode,
                     T* R, T* A, double b) {
  double run = 0.0;
  for (index_t t = len - 1; t >= 0; --t) {
    const bool valid = !HasMask || is_valid(m[t]);
    run = affine_apply(returns_step(mode, valid, valid ? double(r[t]) : 0.0, gamma), run);
    const returns_output o = returns_write(fill, valid, run, b);
    R[t] = T(o.ret);
    if (A) A[t] = T(o.advantage);
  }
}

template <>
struct backend_impl<cpu, gae_tag> {
  // ---- GAE -------------------------------------------------------------------------------
  template <class T, class F, TokenLayout L>
  static gae_stats gae(const cpu& be, const L& layout, layout_tensor<L, const T> r, layout_tensor<L, const T> v,
                       view<const F, 1, host_space> truncated, view<const T, 1, host_space> bootstrap,
                       layout_tensor<L, T> A, layout_tensor<L, T> R, const gae_config& c) {
    constexpr const char* fn = "gae";
    const index_t B = layout.num_seqs();
    const bool has_bootstrap = !truncated.is_null() || truncated.n > 0;
    auto is_truncated = [&](index_t i) { return has_bootstrap && truncated(i) != F(0); };
    const int workers = cpu_workers(be, B, cpu_layout_positions(layout));

    // Pass 1: every value a result depends on is finite. Rows are screened in parallel; the
    // ones with a non-finite value are checked again in row order, so the first error in row
    // order (rewards, then values, then the bootstrap) is the one thrown.
    cpu_screen_rows(
        workers, B,
        [&](index_t i) {
          const index_t len = layout.row_len(i);
          const auto* m = layout.mask_row(i);
          return cpu_row_has_nonfinite(layout.row_ptr(r, i), m, len) ||
                 cpu_row_has_nonfinite(layout.row_ptr(v, i), m, len) || (is_truncated(i) && !is_finite(bootstrap(i)));
        },
        [&](index_t i) {
          const index_t len = layout.row_len(i);
          const auto* m = layout.mask_row(i);
          cpu_check_row_finite(fn, "rewards", layout, i, layout.row_ptr(r, i), m, len);
          cpu_check_row_finite(fn, "values", layout, i, layout.row_ptr(v, i), m, len);
          if (is_truncated(i) && !is_finite(bootstrap(i)))
            throw_nonfinite(fn, "bootstrap", i, double(bootstrap(i)),
                            "sequence " + std::to_string(i) + " is flagged truncated");
        });

    // Pass 2: one backward scan per sequence, each row's statistics into its slot, folded in
    // row order below.
    struct row_out {
      moments am{};
      double rsum = 0.0, lambda = 0.0;
    };
    std::vector<row_out> rows(static_cast<std::size_t>(B));
    const bool skip = c.mask == gae_mask_mode::skip;
    const bool two = c.returns == gae_returns::value_lambda;
    cpu_parallel_rows(workers, B, [&](index_t i, int) {
      const index_t len = layout.row_len(i);
      if (len == 0) return;
      const auto* m = layout.mask_row(i);
      // The valid-token count is needed up front only for the length-adaptive λ.
      const index_t n_adaptive = c.lambda_mode == gae_lambda_mode::length_adaptive ? cpu_row_count(m, len) : 0;
      const bool trunc = is_truncated(i);
      const gae_row_coeffs k = gae_row_setup(c, n_adaptive, trunc, trunc ? double(bootstrap(i)) : 0.0);
      const T* rr = layout.row_ptr(r, i);
      const T* vr = layout.row_ptr(v, i);
      T* ar = layout.row_ptr(A, i);
      T* ret = layout.row_ptr(R, i);
      double rsum = 0.0;
      const masked_fill f = c.fill;
      if (m == nullptr)
        rsum = two ? cpu_gae_row<true, false, true>(rr, vr, m, len, k, f, ar, ret)
                   : cpu_gae_row<true, false, false>(rr, vr, m, len, k, f, ar, ret);
      else if (skip)
        rsum = two ? cpu_gae_row<true, true, true>(rr, vr, m, len, k, f, ar, ret)
                   : cpu_gae_row<true, true, false>(rr, vr, m, len, k, f, ar, ret);
      else
        rsum = two ? cpu_gae_row<false, true, true>(rr, vr, m, len, k, f, ar, ret)
                   : cpu_gae_row<false, true, false>(rr, vr, m, len, k, f, ar, ret);
      row_out& o = rows[static_cast<std::size_t>(i)];
      o.am = cpu_row_moments(static_cast<const T*>(ar), m, len);
      o.rsum = rsum;
      o.lambda = k.lambda;
    });
    gae_stats st;
    st.sequences = B;
    for (index_t i = 0; i < B; ++i) {
      if (layout.row_len(i) == 0) continue;
      if (is_truncated(i)) ++st.truncated;
      const row_out& o = rows[static_cast<std::size_t>(i)];
      if (o.am.count > 0) {
        st.tokens += o.am.count;
        st.advantages += o.am;
        st.returns += sum_count<double>{o.rsum, o.am.count};
        st.lambda += sum_count<double>{o.lambda, 1};
      }
    }
    return st;
  }

  // ---- discounted returns and ReMax --------------------------------------------------------
  /// R (and A = R − b when `baselines` is non-null) for every row.
  template <class T, TokenLayout L>
  static returns_stats returns(const cpu& be, const char* fn, const L& layout, layout_tensor<L, const T> r,
                               view<const T, 1, host_space> baselines, layout_tensor<L, T> R,
                               layout_tensor<L, T> A, const returns_config& c) {
    const index_t B = layout.num_seqs();
    const bool remax = baselines.data != nullptr;
    const int workers = cpu_workers(be, B, cpu_layout_positions(layout));
    // Screened in parallel, checked in row order (the first error in row order is thrown).
    cpu_screen_rows(
        workers, B,
        [&](index_t i) {
          const index_t len = layout.row_len(i);
          const auto* m = layout.mask_row(i);
          return cpu_row_has_nonfinite(layout.row_ptr(r, i), m, len) ||
                 (remax && !is_finite(baselines(i)) && cpu_row_count(m, len) > 0);
        },
        [&](index_t i) {
          const index_t len = layout.row_len(i);
          const auto* m = layout.mask_row(i);
          cpu_check_row_finite(fn, "rewards", layout, i, layout.row_ptr(r, i), m, len);
          if (remax && !is_finite(baselines(i)) && cpu_row_count(m, len) > 0)
            throw_nonfinite(fn, "baselines", i, double(baselines(i)),
                            "sequence " + std::to_string(i) + " has valid tokens");
        });
    std::vector<moments> rows(static_cast<std::size_t>(B));
    cpu_parallel_rows(workers, B, [&](index_t i, int) {
      const index_t len = layout.row_len(i);
      if (len == 0) return;
      const auto* m = layout.mask_row(i);
      T* rr = layout.row_ptr(R, i);
      T* ar = remax ? layout.row_ptr(A, i) : nullptr;
      const double b = remax ? double(baselines(i)) : 0.0;
      if (m == nullptr)
        cpu_returns_row<false>(layout.row_ptr(r, i), m, len, c.gamma, c.fill, c.mask, rr, ar, b);
      else
        cpu_returns_row<true>(layout.row_ptr(r, i), m, len, c.gamma, c.fill, c.mask, rr, ar, b);
      rows[static_cast<std::size_t>(i)] = cpu_row_moments(static_cast<const T*>(rr), m, len);
    });
    returns_stats st;
    st.sequences = B;
    for (index_t i = 0; i < B; ++i) {
      if (layout.row_len(i) == 0) continue;
      const moments& rm = rows[static_cast<std::size_t>(i)];
      st.tokens += rm.count;
      st.returns += rm;
    }
    return st;
  }

  // ---- REINFORCE++ ---------------------------------------------------------------------------
  /// Valid tokens of the whole layout.
  template <TokenLayout L>
  static index_t count_tokens(const L& layout) {
    index_t n = 0;
    for (index_t i = 0; i < layout.num_seqs(); ++i) n += cpu_row_count(layout.mask_row(i), layout.row_len(i));
    return n;
  }
  /// Throws before anything is written when the whitening would be degenerate and must raise.
  template <TokenLayout L>
  static void precheck_degenerate(const char* fn, const L& layout, const whiten_config& w) {
    if (w.degenerate != whiten_degenerate::error) return;
    moments m;
    m.count = count_tokens(layout);
    if (whiten_coefficients(m, w).degenerate) throw_degenerate(fn, m, w);
  }

  template <class T, TokenLayout L>
  static reinforce_pp_stats reinforce_plus_plus(const cpu& be, const L& layout, layout_tensor<L, const T> r,
                                                layout_tensor<L, T> R, layout_tensor<L, T> A,
                                                const reinforce_pp_config& c) {
    constexpr const char* fn = "reinforce_plus_plus";
    // Data checks before any write: finite valid rewards, a usable whitening.
    for (index_t i = 0; i < layout.num_seqs(); ++i)
      cpu_check_row_finite(fn, "rewards", layout, i, layout.row_ptr(r, i), layout.mask_row(i), layout.row_len(i));
    precheck_degenerate(fn, layout, c.whiten);
    reinforce_pp_stats st;
    st.returns = returns<T>(be, fn, layout, r, view<const T, 1, host_space>{}, R, layout_tensor<L, T>{},
                            returns_config{c.gamma, masked_fill::zero, c.mask});
    whiten_coeffs w = whiten_coefficients(st.returns.returns, c.whiten);
    st.whiten.local = st.whiten.used = st.returns.returns;
    st.whiten.mean = w.mean;
    st.whiten.inv_scale = w.inv_scale;
    st.whiten.degenerate = w.degenerate;
    backend_impl<cpu, whiten_tag>::apply<T>(layout, layout_tensor<L, const T>(R), A, w, c.whiten,
                                            cpu_workers(be, layout.num_seqs(), cpu_layout_positions(layout)));
    return st;
  }

  template <class T, class Groups, TokenLayout L>
  static reinforce_pp_baseline_stats reinforce_pp_baseline(const cpu& be, view<const T, 1, host_space> scores,
                                                           const Groups& groups, const L& layout,
                                                           view<T, 1, host_space> seq_adv, layout_tensor<L, T> tok,
                                                           const reinforce_pp_baseline_config& c) {
    constexpr const char* fn = "reinforce_pp_baseline";
    precheck_degenerate(fn, layout, c.whiten);
    // The group step validates its data (non-finite scores, groups of one) before it writes.
    // Scores of sequences that are scored but have no valid token still enter the group.
    std::vector<T> a(static_cast<std::size_t>(scores.n));
    view<T, 1, host_space> av{a.data(), scores.n, 1};
    reinforce_pp_baseline_stats st;
    st.group = backend_impl<cpu, advantages_tag>::group_advantages(be, scores, groups, av, c.group);
    for (index_t i = 0; i < scores.n; ++i) seq_adv(i) = a[static_cast<std::size_t>(i)];
    backend_impl<cpu, advantages_tag>::broadcast_to_tokens(be, view<const T, 1, host_space>(av), layout, tok);
    // Whiten the broadcast tokens in place (masked positions hold 0, as verl's (s − μ)·m).
    st.whiten = backend_impl<cpu, whiten_tag>::whiten(be, layout, layout_tensor<L, const T>(tok), tok, nullptr,
                                                      c.whiten);
    return st;
  }

  // ---- OPO ---------------------------------------------------------------------------------
  template <class T, class Groups, TokenLayout L>
  static group_stats opo(const cpu& be, view<const T, 1, host_space> s, const Groups& groups, const L& layout,
                         view<T, 1, host_space> adv, layout_tensor<L, T> tok) {
    constexpr const char* fn = "opo_advantages";
    const index_t B = s.n;
    for (index_t i = 0; i < B; ++i)
      if (!is_finite(s(i))) throw_nonfinite(fn, "scores", i, double(s(i)), "");
    std::vector<index_t> n(static_cast<std::size_t>(B));
    for (index_t i = 0; i < B; ++i) n[i] = cpu_row_count(layout.mask_row(i), layout.row_len(i));
    std::vector<index_t> order, starts;
    backend_impl<cpu, advantages_tag>::group_order(groups, B, order, starts);
    const index_t G = static_cast<index_t>(starts.size()) - 1;
    std::vector<double> a(static_cast<std::size_t>(B), 0.0);
    group_stats st;
    st.sequences = B;
    for (index_t g = 0; g < G; ++g) {
      const index_t k = starts[g + 1] - starts[g];
      ++st.groups;
      double b = 0.0;
      if (k == 1) {
        ++st.singleton_groups;
      } else {
        neumaier_sum num;
        index_t den = 0;
        for (index_t p = starts[g]; p < starts[g + 1]; ++p) {
          index_t i = order[p];
          num.add(double(n[i]) * double(s(i)));
          den += n[i];
        }
        b = den > 0 ? num.value() / double(den) : 0.0;
      }
      for (index_t p = starts[g]; p < starts[g + 1]; ++p) {
        index_t i = order[p];
        a[i] = double(s(i)) - b;
        st.scores.add(double(s(i)));
      }
    }
    neumaier_sum asum;
    for (index_t i = 0; i < B; ++i) {
      adv(i) = T(a[i]);
      asum.add(double(adv(i)));
    }
    st.advantage = {asum.value(), B};
    backend_impl<cpu, advantages_tag>::broadcast_to_tokens(be, view<const T, 1, host_space>(adv), layout, tok);
    return st;
  }
};

}  // namespace polo::detail
