// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
#pragma once
/// \file
/// CPU implementation of <polo/policy_loss.hpp>. Fixed-order, so bitwise deterministic, and a
/// packed batch gives bitwise the results of the same batch padded. With `cpu::threads` the
/// rows of both passes are computed on several threads and folded on the calling thread in
/// row order (<polo/cpu/parallel.hpp>): the same bits for every thread count.
/// Everything is computed in double from the per-token formulas of the backend-neutral header
/// (`detail::ratio_from_log_ratio`, `detail::surrogate`, `detail::kl_term`), the same ones the
/// CUDA kernels run.
///
/// Pass 1 reads the mask and checks every used input at valid positions (throwing before
/// anything is written under `token_nonfinite_policy::error`), counting valid tokens per
/// sequence for the local normalizers. Pass 2 goes row by row: per-row sums of the objective
/// and the KL term (Neumaier-compensated), the gradient of each token written once, statistics
/// added in row order. A row's loss enters the total as w_i * S_i with the row's weight w_i.

#include <vector>

#include "polo/cpu/parallel.hpp"
#include "polo/cpu/rows.hpp"
#include "polo/kl.hpp"
#include "polo/policy_loss.hpp"

namespace polo::detail {

/// (r - 1) - x for r = e^x, without a second transcendental call: a Taylor polynomial for
/// |x| < 1/16 (truncation below 1e-14 relative), r - 1 - x otherwise (cancellation below
/// 1e-13 relative there). Agrees with approx_kl_k3 (expm1(x) - x) to about 1e-13 relative.
inline double cpu_k3_from_ratio(double x, double r) {
  if (x > -0.0625 && x < 0.0625) {
    const double x2 = x * x;
    return x2 * (0.5 + x * (1.0 / 6 + x * (1.0 / 24 + x * (1.0 / 120 + x * (1.0 / 720 + x * (1.0 / 5040 + x * (1.0 / 40320)))))));
  }
  return (r - 1.0) - x;
}

template <>
struct backend_impl<cpu, policy_loss_tag> {
  template <TokenLayout L>
  static token_counts count_tokens(const cpu&, const L& layout) {
    if constexpr (L::is_packed) layout.check_offsets_host("count_tokens");
    token_counts c;
    for (index_t i = 0; i < layout.num_seqs(); ++i) {
      const index_t n = row_valid_count(layout, i);
      c.tokens += n;
      c.sequences += n > 0 ? 1 : 0;
    }
    return c;
  }

  template <TokenLayout L>
  static index_t row_valid_count(const L& layout, index_t i) {
    const index_t len = layout.row_len(i);
    const auto* m = layout.mask_row(i);
    if (m == nullptr) return len;
    index_t k = 0;
    for (index_t t = 0; t < len; ++t) k += is_valid(m[t]) ? 1 : 0;
    return k;
  }

  template <TokenLayout L, class T, int R>
  static policy_loss_result policy_loss(const cpu& be, const L& layout, view<const T, R, host_space> logp,
                                        view<const T, R, host_space> logp_old, view<const T, R, host_space> logp_ref,
                                        view<const T, R, host_space> adv, view<T, R, host_space> grad,
                                        const policy_loss_config& c, const normalizers& norm) {
    constexpr const char* fn = "policy_loss";
    if constexpr (L::is_packed) layout.check_offsets_host(fn);
    const index_t B = layout.num_seqs();
    const bool use_kl = uses_kl(c);
    const bool seq_ratio = uses_ratio_level_sequence(c);
    const bool seq_kl = uses_sequence_kl(c);
    const bool read_ref = use_kl && !logp_ref.is_null();
    const bool skip = c.nonfinite == token_nonfinite_policy::skip;

    policy_loss_result res;
    policy_loss_stats& st = res.stats;

    // ---- pass 1: counts and non-finite inputs at valid positions (nothing written) ----
    // Per row, in parallel (branch-free, vectorizable): the valid-token count and whether any
    // used input is non-finite at a valid position. Then, on this thread in row order, a row
    // with one is scanned again for the position: the first in row order throws (error), or
    // its tokens are counted and the row flagged (skip).
    const int workers = cpu_workers(be, B, cpu_layout_positions(layout));
    struct row_in {
      const T *lp, *lo, *lr, *a;  // lr null without the reference
    };
    auto inputs = [&](index_t i) {
      return row_in{layout.row_ptr(logp, i), layout.row_ptr(logp_old, i),
                    read_ref ? layout.row_ptr(logp_ref, i) : nullptr, layout.row_ptr(adv, i)};
    };
    std::vector<index_t> n(static_cast<std::size_t>(B), 0);
    std::vector<unsigned char> row_bad(static_cast<std::size_t>(B), 0);
    cpu_screen_rows(
        workers, B,
        [&](index_t i) {  // also counts the row's valid tokens
          const index_t len = layout.row_len(i);
          const auto* m = layout.mask_row(i);
          const row_in in = inputs(i);
          n[static_cast<std::size_t>(i)] = cpu_row_count(m, len);
          int ok = 1;
          for (index_t t = 0; t < len; ++t) {
            const T z = (in.lp[t] - in.lp[t]) + (in.lo[t] - in.lo[t]) + (in.a[t] - in.a[t]) +
                        (in.lr != nullptr ? in.lr[t] - in.lr[t] : T(0));
            ok &= (m != nullptr && !is_valid(m[t])) | (z == T(0));
          }
          return ok == 0;
        },
        [&](index_t i) {
          const index_t len = layout.row_len(i);
          const auto* m = layout.mask_row(i);
          const row_in in = inputs(i);
          row_bad[static_cast<std::size_t>(i)] = 1;
          for (index_t t = 0; t < len; ++t) {
            if (m != nullptr && !is_valid(m[t])) continue;
            const char* bad = nullptr;
            double v = 0.0;
            if (!is_finite(in.lp[t])) bad = "logp", v = double(in.lp[t]);
            else if (!is_finite(in.lo[t])) bad = "logp_old", v = double(in.lo[t]);
            else if (in.lr != nullptr && !is_finite(in.lr[t])) bad = "logp_ref", v = double(in.lr[t]);
            else if (!is_finite(in.a[t])) bad = "advantages", v = double(in.a[t]);
            if (bad == nullptr) continue;
            if (!skip)
              throw_nonfinite(fn, bad, flat_index(layout, i, t), v,
                              "at a valid token; set token_nonfinite_policy::skip to leave such tokens out");
            ++st.nonfinite_tokens;
          }
        });
    for (index_t i = 0; i < B; ++i) {
      const index_t k = n[static_cast<std::size_t>(i)];
      st.tokens += k;
      st.sequences += k > 0 ? 1 : 0;
    }

    // ---- normalizers and weights ----
    const double div = aggregation_divisor(c.agg, norm, st.tokens, st.sequences);
    const double div_tok = aggregation_divisor(aggregation::token_mean, norm, st.tokens, st.sequences);
    const double div_seq = aggregation_divisor(aggregation::seq_mean_token_sum, norm, st.tokens, st.sequences);
    const aggregation kl_mode = kl_aggregation_of(c);
    const bool per_seq_parts = c.agg == aggregation::seq_mean_token_mean || c.agg == aggregation::seq_mean_token_sum;
    const bool kl_per_seq_parts =
        kl_mode == aggregation::seq_mean_token_mean || kl_mode == aggregation::seq_mean_token_sum;
    const double beta = c.kl_coef;

    // ---- pass 2: per row, in parallel; each row's sums and statistics into its own slot ----
    struct row_out {
      bool skipped_row = false;  ///< a sequence-level term with a skipped token: gradient 0, nothing else
      bool has_seq_kl = false;
      bool seq_kl_clamped = false;
      index_t skipped = 0;
      double seq_kl_value = 0.0, seq_kl_weighted = 0.0;
      double w = 0.0, wk = 0.0, S = 0.0, K = 0.0;
      double s_up = 0, s_lo = 0, s_dual = 0, s_delta = 0, s_clamp = 0, s_k1 = 0, s_k3 = 0, s_kl = 0, s_klc = 0;
      index_t s_n = 0, s_nkl = 0;
      value_range s_ratio;
    };
    std::vector<row_out> rows(static_cast<std::size_t>(B));
    struct scratch {
      std::vector<double> dlogp, sens;  // per-token scratch for sequence-level ratios
    };
    std::vector<scratch> scr(static_cast<std::size_t>(workers));
    cpu_parallel_rows(workers, B, [&](index_t i, int wid) {
      const index_t len = layout.row_len(i);
      if (len == 0) return;
      row_out& ro = rows[static_cast<std::size_t>(i)];
      const auto* m = layout.mask_row(i);
      const row_in in = inputs(i);
      const T *lp = in.lp, *lo = in.lo, *lr = in.lr, *a = in.a;
      T* g = layout.row_ptr(grad, i);
      const index_t ni = n[static_cast<std::size_t>(i)];
      auto valid = [&](index_t t) { return m == nullptr || is_valid(m[t]); };
      const bool check_tokens = row_bad[static_cast<std::size_t>(i)] != 0;
      auto token_ok = [&](index_t t) {
        return is_finite(lp[t]) && is_finite(lo[t]) && (lr == nullptr || is_finite(lr[t])) && is_finite(a[t]);
      };
      // A sequence-level term needs every token of its sequence: skip the whole row.
      if (check_tokens && (seq_ratio || seq_kl)) {
        for (index_t t = 0; t < len; ++t) g[t] = T(0);
        ro.skipped_row = true;
        return;
      }
      const double w = aggregation_weight(c.agg, norm.scale, div, ni);
      const double wk = aggregation_weight(kl_mode, norm.scale, kl_mode == c.agg ? div : div_tok, ni);
      ro.w = w;
      ro.wk = wk;

      // Sequence-level quantities: the mean log-ratio (GSPO) and the KL input D_i.
      ratio_point seq_r{};
      kl_point seq_k{};
      double seq_kl_d = 0.0;
      if (seq_ratio || seq_kl) {
        neumaier_sum slr, sd;
        for (index_t t = 0; t < len; ++t) {
          if (!valid(t)) continue;
          slr.add(double(lp[t]) - double(lo[t]));
          if (seq_kl) sd.add(double(lp[t]) - double(lr[t]));
        }
        const double nd = ni > 0 ? double(ni) : 1.0;
        if (seq_ratio) seq_r = ratio_from_log_ratio(c, slr.value() / nd);
        if (seq_kl && ni > 0) {
          const double D = c.kl.level == kl_level::sequence_mean ? sd.value() / nd : sd.value();
          seq_k = kl_term(c.kl, D, 1.0);
          const double wseq = aggregation_weight(aggregation::seq_mean_token_sum, norm.scale, div_seq, ni);
          seq_kl_d = beta * wseq * seq_k.grad * (c.kl.level == kl_level::sequence_mean ? 1.0 / nd : 1.0);
          ro.has_seq_kl = true;
          ro.seq_kl_weighted = wseq * seq_k.value;
          ro.seq_kl_value = seq_k.value;
          ro.seq_kl_clamped = seq_k.clamped;
        }
      }
      std::vector<double>& row_dlogp = scr[static_cast<std::size_t>(wid)].dlogp;
      std::vector<double>& row_sens = scr[static_cast<std::size_t>(wid)].sens;
      if (seq_ratio) {
        row_dlogp.assign(static_cast<std::size_t>(len), 0.0);
        row_sens.assign(static_cast<std::size_t>(len), 0.0);
      }

      neumaier_sum row_pol, row_kl, row_sens_sum;
      double s_up = 0, s_lo = 0, s_dual = 0, s_delta = 0, s_clamp = 0, s_k1 = 0, s_k3 = 0, s_kl = 0, s_klc = 0;
      index_t s_n = 0, s_nkl = 0;
      value_range s_ratio;
      for (index_t t = 0; t < len; ++t) {
        if (!valid(t)) {
          g[t] = T(0);
          continue;
        }
        if (check_tokens && !token_ok(t)) {  // only under skip, token-level terms only
          g[t] = T(0);
          ++ro.skipped;
          continue;
        }
        const double x = double(lp[t]), xo = double(lo[t]), A = double(a[t]);
        const double tok_lr = x - xo;
        const ratio_point tr = ratio_from_log_ratio(c, tok_lr);
        const ratio_point& rp = seq_ratio ? seq_r : tr;
        const surrogate_point sp = surrogate(c, rp.ratio, A, x);
        row_pol.add(sp.loss);
        double dlogp = w * sp.d_logp;
        double sens = w * sp.d_ratio;
        if (use_kl && !seq_kl) {
          const kl_point kp = kl_term(c.kl, x - double(lr[t]), rp.ratio);
          row_kl.add(kp.value);
          dlogp += beta * wk * kp.grad;
          sens += beta * wk * kp.d_ratio;
          s_kl += kp.value;
          s_klc += kp.clamped ? 1.0 : 0.0;
          ++s_nkl;
        }
        if (seq_kl) dlogp += seq_kl_d;
        if (seq_ratio) {
          row_dlogp[static_cast<std::size_t>(t)] = dlogp;
          row_sens[static_cast<std::size_t>(t)] = sens;
          row_sens_sum.add(sens);
        } else {
          g[t] = T(dlogp + times_sensitivity(sens, rp.d_log_ratio));
        }
        // statistics of a contributing token
        s_up += (sp.flags & surrogate_clip_upper) ? 1.0 : 0.0;
        s_lo += (sp.flags & surrogate_clip_lower) ? 1.0 : 0.0;
        s_dual += (sp.flags & surrogate_clip_dual) ? 1.0 : 0.0;
        s_delta += (sp.flags & surrogate_delta_capped) ? 1.0 : 0.0;
        s_ratio.add(rp.ratio);
        s_clamp += rp.clamped ? 1.0 : 0.0;
        s_k1 += xo - x;
        if (seq_ratio) {
          s_k3 += approx_kl_k3(c, tok_lr);
        } else {
          const double xc = tok_lr < c.log_ratio_min ? c.log_ratio_min : (tok_lr > c.log_ratio_max ? c.log_ratio_max : tok_lr);
          s_k3 += cpu_k3_from_ratio(xc, tr.ratio);
        }
        ++s_n;
      }
      if (seq_ratio) {
        // d s_i / d logp_u = s_i/n_i where the clamp is inactive (through the mean), or s_i per
        // token (verl's straight-through form).
        const double nd = ni > 0 ? double(ni) : 1.0;
        const bool through = c.sequence_gradient == sequence_ratio_gradient::through_mean;
        const double total = through ? times_sensitivity(row_sens_sum.value(), seq_r.d_log_ratio / nd) : 0.0;
        for (index_t t = 0; t < len; ++t) {
          if (!valid(t)) continue;  // already written 0
          const double own = through ? 0.0 : times_sensitivity(row_sens[static_cast<std::size_t>(t)], seq_r.d_log_ratio);
          g[t] = T(row_dlogp[static_cast<std::size_t>(t)] + total + own);
        }
      }
      ro.S = row_pol.value();
      ro.K = row_kl.value();
      ro.s_up = s_up, ro.s_lo = s_lo, ro.s_dual = s_dual, ro.s_delta = s_delta, ro.s_clamp = s_clamp;
      ro.s_k1 = s_k1, ro.s_k3 = s_k3, ro.s_kl = s_kl, ro.s_klc = s_klc;
      ro.s_n = s_n, ro.s_nkl = s_nkl;
      ro.s_ratio = s_ratio;
    });

    // ---- the rows folded in row order (the operations and order of a single-threaded loop) ----
    neumaier_sum loss_pol, loss_kl, parts_pol, parts_kl;
    for (index_t i = 0; i < B; ++i) {
      const index_t len = layout.row_len(i);
      if (len == 0) continue;
      const row_out& ro = rows[static_cast<std::size_t>(i)];
      const index_t ni = n[static_cast<std::size_t>(i)];
      st.masked_tokens += len - ni;
      if (ro.skipped_row) {
        st.skipped_tokens += ni;
        continue;
      }
      if (ro.has_seq_kl) {
        loss_kl.add(ro.seq_kl_weighted);
        parts_kl.add(ro.seq_kl_value);
        st.kl_ref += sum_count<double>{ro.seq_kl_value, 1};
        st.kl_clamped += sum_count<double>{ro.seq_kl_clamped ? 1.0 : 0.0, 1};
      }
      st.skipped_tokens += ro.skipped;
      st.clip_upper += sum_count<double>{ro.s_up, ro.s_n};
      st.clip_lower += sum_count<double>{ro.s_lo, ro.s_n};
      st.clip_dual += sum_count<double>{ro.s_dual, ro.s_n};
      st.delta_capped += sum_count<double>{ro.s_delta, ro.s_n};
      st.ratio += ro.s_ratio;
      st.clamped_log_ratio += sum_count<double>{ro.s_clamp, ro.s_n};
      st.approx_kl_k1 += sum_count<double>{ro.s_k1, ro.s_n};
      st.approx_kl_k3 += sum_count<double>{ro.s_k3, ro.s_n};
      if (ro.s_nkl > 0) {
        st.kl_ref += sum_count<double>{ro.s_kl, ro.s_nkl};
        st.kl_clamped += sum_count<double>{ro.s_klc, ro.s_nkl};
      }
      // Row sums into the loss (w_i * S_i) and into the sum-and-count parts.
      loss_pol.add(ro.w * ro.S);
      if (ni > 0) {
        if (c.agg == aggregation::seq_mean_token_mean)
          parts_pol.add(ro.S / double(ni));
        else
          parts_pol.add(ro.S);
      }
      if (use_kl && !seq_kl) {
        loss_kl.add(ro.wk * ro.K);
        if (ni > 0) parts_kl.add(kl_mode == aggregation::seq_mean_token_mean ? ro.K / double(ni) : ro.K);
      }
    }

    res.policy_loss = loss_pol.value();
    res.kl_loss = use_kl ? loss_kl.value() : 0.0;
    res.loss = res.policy_loss + beta * res.kl_loss;
    res.policy_parts = {parts_pol.value(), per_seq_parts ? st.sequences : st.tokens};
    if (use_kl)
      res.kl_parts = {parts_kl.value(), (seq_kl || kl_per_seq_parts) ? st.sequences : st.tokens};
    return res;
  }
};

}  // namespace polo::detail
