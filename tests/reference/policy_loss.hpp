// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
#pragma once
// Naive float64 oracle for polo::policy_loss, written from the formulas of
// include/polo/policy_loss.hpp, include/polo/kl.hpp and SEMANTICS.md 2.4-2.6 the way an autograd
// framework evaluates them, with a deliberately different algorithm from the library: the loss
// is one generic expression over a scalar type, and
//   - the gradient comes from forward-mode dual numbers (one full re-evaluation of the batch
//     per token, O(N^2)): stop-gradients, clamps and straight-through forms are just operations
//     on the dual, no hand-derived chain rule;
//   - the finite-difference oracle evaluates the same expression on a "live/frozen" pair: the
//     live value moves with logp, stop-gradient operands stay at the base point (so the
//     difference quotient is the gradient an autograd framework would produce).
// Only the option types come from polo; no polo code runs here. Padded [B,T] only.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "polo/policy_loss.hpp"

namespace polo::ref {

// ---- scalar types -------------------------------------------------------------------------

/// Forward-mode dual number: value and derivative with respect to one seeded logp.
struct dual {
  double v = 0.0, d = 0.0;
};
inline dual konst(dual, double c) { return {c, 0.0}; }
inline dual sg(dual x) { return {x.v, 0.0}; }
inline dual operator+(dual a, dual b) { return {a.v + b.v, a.d + b.d}; }
inline dual operator-(dual a, dual b) { return {a.v - b.v, a.d - b.d}; }
inline dual operator-(dual a) { return {-a.v, -a.d}; }
inline dual operator*(dual a, dual b) {
  return {a.v * b.v, (a.d == 0.0 ? 0.0 : a.d * b.v) + (b.d == 0.0 ? 0.0 : a.v * b.d)};
}
inline dual operator*(double c, dual a) { return {c * a.v, a.d == 0.0 ? 0.0 : c * a.d}; }
inline dual operator/(dual a, double c) { return {a.v / c, a.d / c}; }
inline dual exp(dual a) {
  double e = std::exp(a.v);
  return {e, a.d == 0.0 ? 0.0 : e * a.d};
}
inline dual sigmoid(dual a) {
  double s = a.v >= 0 ? 1.0 / (1.0 + std::exp(-a.v)) : std::exp(a.v) / (1.0 + std::exp(a.v));
  double sm = a.v >= 0 ? std::exp(-a.v) / (1.0 + std::exp(-a.v)) : 1.0 / (1.0 + std::exp(a.v));
  return {s, s * sm * a.d};
}
inline dual abs(dual a) { return {std::abs(a.v), a.v > 0 ? a.d : (a.v < 0 ? -a.d : 0.0)}; }
/// Replaces the derivative (straight-through): value of `val`, derivative of `grad_of`.
inline dual straight_through(dual val, dual grad_of) { return {val.v, grad_of.d}; }

/// Live/frozen pair: `v` moves with the perturbed logp; `f` is the same expression at the base
/// point. A stop-gradient takes the frozen value.
struct pair {
  double v = 0.0, f = 0.0;
};
inline pair konst(pair, double c) { return {c, c}; }
inline pair sg(pair x) { return {x.f, x.f}; }
inline pair operator+(pair a, pair b) { return {a.v + b.v, a.f + b.f}; }
inline pair operator-(pair a, pair b) { return {a.v - b.v, a.f - b.f}; }
inline pair operator-(pair a) { return {-a.v, -a.f}; }
inline pair operator*(pair a, pair b) { return {a.v * b.v, a.f * b.f}; }
inline pair operator*(double c, pair a) { return {c * a.v, c * a.f}; }
inline pair operator/(pair a, double c) { return {a.v / c, a.f / c}; }
inline pair exp(pair a) { return {std::exp(a.v), std::exp(a.f)}; }
inline pair sigmoid(pair a) { return {1.0 / (1.0 + std::exp(-a.v)), 1.0 / (1.0 + std::exp(-a.f))}; }
inline pair abs(pair a) { return {std::abs(a.v), std::abs(a.f)}; }
/// value of `val` (frozen part) plus the live change of `grad_of`: val + grad_of - sg(grad_of).
inline pair straight_through(pair val, pair grad_of) { return {val.f + grad_of.v - grad_of.f, val.f}; }

/// torch.clamp: the bound where x is strictly outside it (derivative 0), x itself otherwise.
template <class S>
S clamp(S x, double lo, double hi) {
  if (x.v < lo) return konst(x, lo);
  if (x.v > hi) return konst(x, hi);
  return x;
}

// ---- inputs and outputs -------------------------------------------------------------------

struct batch {
  index_t B = 0, T = 0;
  std::vector<double> lp, lo, lref, adv;  // [B*T]; lref may be empty
  std::vector<std::uint8_t> mask;         // [B*T]; empty = all valid
  [[nodiscard]] bool valid(index_t k) const { return mask.empty() || mask[k] != 0; }
};

struct stats {
  long long tokens = 0, sequences = 0, masked = 0, nonfinite = 0, skipped = 0;
  long long contributing = 0, clip_upper = 0, clip_lower = 0, clip_dual = 0, delta_capped = 0, clamped_lr = 0;
  double ratio_min = 0, ratio_max = 0, ratio_sum = 0;
  double approx_kl_k1 = 0, approx_kl_k3 = 0;
  double kl_sum = 0;
  long long kl_count = 0, kl_clamped = 0;
};

struct result {
  bool nonfinite_error = false;
  double loss = 0, policy_loss = 0, kl_loss = 0;
  double policy_parts_sum = 0, kl_parts_sum = 0;
  long long policy_parts_count = 0, kl_parts_count = 0;
  std::vector<double> grad;  // [B*T]
  stats st;
};

// ---- the objective ------------------------------------------------------------------------

struct flags {
  bool upper = false, lower = false, dual_clip = false, delta = false;
};

/// Per-token objective at ratio r (a scalar of type S), advantage A, log-prob lp.
template <class S>
S objective(const policy_loss_config& c, S r, double A, S lp, flags& fl) {
  if (A == 0.0) return konst(r, 0.0);
  switch (c.objective) {
    case policy_objective::clip: {
      S coef2 = clamp(r, 1.0 - c.eps_low, 1.0 + c.eps_high);
      S coef1 = r;
      if (r.v > c.delta) {
        coef1 = konst(r, c.delta);
        fl.delta = true;
      }
      S s1 = -A * coef1, s2 = -A * coef2;
      S L = s1;
      if (s2.v > s1.v) {  // the clipped branch only where strictly larger
        L = s2;
        (r.v > 1.0 ? fl.upper : fl.lower) = true;
      }
      if (A < 0.0 && std::isfinite(c.dual_clip)) {
        double s3 = -A * c.dual_clip;
        if (s3 < L.v) {
          L = konst(r, s3);
          fl.dual_clip = true;
        }
      }
      return L;
    }
    case policy_objective::cispo: {
      S w = r;
      if (c.cispo == cispo_bound::clip_both) {
        w = clamp(r, 1.0 - c.eps_low, 1.0 + c.eps_high);
        if (r.v > 1.0 + c.eps_high) fl.upper = true;
        if (r.v < 1.0 - c.eps_low) fl.lower = true;
      } else if (r.v > c.eps_high) {
        w = konst(r, c.eps_high);
        fl.upper = true;
      }
      return -A * (sg(w) * lp);
    }
    case policy_objective::sapo: {
      double tau = A > 0 ? c.sapo_tau_pos : c.sapo_tau_neg;
      return (-A * 4.0 / tau) * sigmoid(tau * (r - konst(r, 1.0)));
    }
    case policy_objective::reinforce: return -A * lp;
  }
  return konst(r, 0.0);
}

/// The KL estimator of `k` at log-ratio d (scalar S), importance ratio rho (scalar S; only
/// for the weights) and the token's log-prob lp (for the score-function weight).
template <class S>
S kl_value(const kl_config& k, S d, S rho, S lp, bool& clamped) {
  const bool in_ok = !(d.v < -k.input_clamp || d.v > k.input_clamp);
  S x = clamp(d, -k.input_clamp, k.input_clamp);
  S e = x;
  switch (k.estimator) {
    case kl_estimator::k1: e = x; break;
    case kl_estimator::abs: e = abs(x); break;
    case kl_estimator::k2: e = 0.5 * (x * x); break;
    case kl_estimator::k3: e = exp(-x) + x - konst(x, 1.0); break;
  }
  S v = e;
  switch (k.weight) {
    case kl_weight::none: break;
    case kl_weight::ratio: v = (in_ok ? rho : sg(rho)) * e; break;
    case kl_weight::ratio_detached: v = sg(rho) * e; break;
    case kl_weight::score_function: v = (in_ok ? exp(lp - sg(lp)) : konst(lp, 1.0)) * e; break;
  }
  clamped = !in_ok;
  if (v.v < -k.output_clamp || v.v > k.output_clamp) clamped = true;
  v = clamp(v, -k.output_clamp, k.output_clamp);
  if (k.straight_through) v = straight_through(v, 0.5 * (d * d));
  return v;
}

/// Weight of every valid token of a sequence with n valid tokens, given the divisors.
inline double agg_weight(aggregation a, double scale, double ntok, double nseq, double C, long long n) {
  double div = 1.0;
  switch (a) {
    case aggregation::token_mean: div = ntok; break;
    case aggregation::token_sum: div = 1.0; break;
    case aggregation::seq_mean_token_mean:
    case aggregation::seq_mean_token_sum: div = nseq; break;
    case aggregation::token_sum_norm: div = C; break;
  }
  if (!(div > 0.0) || n <= 0) return 0.0;
  double w = scale / div;
  if (a == aggregation::seq_mean_token_mean) w /= double(n);
  return w;
}

/// The whole loss as a scalar of type S; `make(k)` builds the scalar of logp[k]. Fills the
/// value-side outputs of `out` (parts, statistics) when `out` is not null.
template <class S, class Make>
S evaluate(const batch& b, const policy_loss_config& c, const normalizers& nz, Make make, result* out) {
  const bool use_kl = c.kl_coef != 0.0;
  const bool has_ref = use_kl && !b.lref.empty();
  const bool seq_ratio = c.level == ratio_level::sequence;
  const bool seq_kl = use_kl && c.kl.level != kl_level::token;
  std::vector<long long> n(b.B, 0);
  std::vector<char> bad(b.B * b.T, 0), row_bad(b.B, 0);
  stats st;
  for (index_t i = 0; i < b.B; ++i)
    for (index_t t = 0; t < b.T; ++t) {
      index_t k = i * b.T + t;
      if (!b.valid(k)) {
        ++st.masked;
        continue;
      }
      ++n[i];
      bool ok = std::isfinite(b.lp[k]) && std::isfinite(b.lo[k]) && std::isfinite(b.adv[k]) &&
                (!has_ref || std::isfinite(b.lref[k]));
      if (!ok) {
        bad[k] = 1;
        row_bad[i] = 1;
        ++st.nonfinite;
      }
    }
  S zero = konst(make(0), 0.0);
  if (st.nonfinite > 0 && c.nonfinite == token_nonfinite_policy::error) {
    if (out) out->nonfinite_error = true;
    return zero;
  }
  for (index_t i = 0; i < b.B; ++i) {
    st.tokens += n[i];
    st.sequences += n[i] > 0;
  }
  const double ntok = nz.tokens < 0 ? double(st.tokens) : nz.tokens;
  const double nseq = nz.sequences < 0 ? double(st.sequences) : nz.sequences;
  const aggregation kmode = c.kl_agg == kl_aggregation::token_mean ? aggregation::token_mean : c.agg;

  S pol = zero, kl = zero;
  double ppart = 0, kpart = 0;
  st.ratio_min = std::numeric_limits<double>::infinity();
  st.ratio_max = -std::numeric_limits<double>::infinity();
  for (index_t i = 0; i < b.B; ++i) {
    if (n[i] == 0) continue;
    if (row_bad[i] && (seq_ratio || seq_kl)) {
      st.skipped += n[i];
      continue;
    }
    const double w = agg_weight(c.agg, nz.scale, ntok, nseq, nz.constant, n[i]);
    const double wk = agg_weight(kmode, nz.scale, ntok, nseq, nz.constant, n[i]);
    S mean_lr = zero, dsum = zero;
    for (index_t t = 0; t < b.T; ++t) {
      index_t k = i * b.T + t;
      if (!b.valid(k)) continue;
      mean_lr = mean_lr + (make(k) - konst(zero, b.lo[k]));
      if (seq_kl) dsum = dsum + (make(k) - konst(zero, b.lref[k]));
    }
    mean_lr = mean_lr / double(n[i]);
    if (seq_kl) {
      S D = c.kl.level == kl_level::sequence_mean ? dsum / double(n[i]) : dsum;
      bool cl = false;
      S K = kl_value(c.kl, D, konst(zero, 1.0), zero, cl);
      const double wseq = agg_weight(aggregation::seq_mean_token_sum, nz.scale, ntok, nseq, nz.constant, n[i]);
      kl = kl + wseq * K;
      kpart += K.v;
      st.kl_sum += K.v;
      ++st.kl_count;
      st.kl_clamped += cl;
    }
    S row_pol = zero, row_kl = zero;
    for (index_t t = 0; t < b.T; ++t) {
      index_t k = i * b.T + t;
      if (!b.valid(k)) continue;
      if (bad[k]) {
        ++st.skipped;
        continue;
      }
      S lp = make(k);
      S log_r = lp - konst(zero, b.lo[k]);
      if (seq_ratio)
        log_r = c.sequence_gradient == sequence_ratio_gradient::through_mean ? mean_lr : lp - sg(lp) + sg(mean_lr);
      const bool clamped = log_r.v < c.log_ratio_min || log_r.v > c.log_ratio_max;
      S r = exp(clamp(log_r, c.log_ratio_min, c.log_ratio_max));
      flags fl;
      S L = objective(c, r, b.adv[k], lp, fl);
      row_pol = row_pol + L;
      if (use_kl && !seq_kl) {
        bool cl = false;
        S K = kl_value(c.kl, lp - konst(zero, b.lref[k]), r, lp, cl);
        row_kl = row_kl + K;
        st.kl_sum += K.v;
        ++st.kl_count;
        st.kl_clamped += cl;
      }
      ++st.contributing;
      st.clip_upper += fl.upper;
      st.clip_lower += fl.lower;
      st.clip_dual += fl.dual_clip;
      st.delta_capped += fl.delta;
      st.clamped_lr += clamped;
      st.ratio_min = std::min(st.ratio_min, r.v);
      st.ratio_max = std::max(st.ratio_max, r.v);
      st.ratio_sum += r.v;
      const double tl = b.lp[k] - b.lo[k];
      const double tc = std::min(std::max(tl, c.log_ratio_min), c.log_ratio_max);
      st.approx_kl_k1 += -tl;
      st.approx_kl_k3 += (std::exp(tc) - 1.0) - tc;
    }
    pol = pol + w * row_pol;
    ppart += c.agg == aggregation::seq_mean_token_mean ? row_pol.v / double(n[i]) : row_pol.v;
    if (use_kl && !seq_kl) {
      kl = kl + wk * row_kl;
      kpart += kmode == aggregation::seq_mean_token_mean ? row_kl.v / double(n[i]) : row_kl.v;
    }
  }
  if (st.contributing == 0) st.ratio_min = st.ratio_max = 0.0;
  S total = pol + c.kl_coef * kl;
  if (out) {
    out->policy_loss = pol.v;
    out->kl_loss = use_kl ? kl.v : 0.0;
    out->loss = total.v;
    const bool pseq = c.agg == aggregation::seq_mean_token_mean || c.agg == aggregation::seq_mean_token_sum;
    const bool kseq = seq_kl || kmode == aggregation::seq_mean_token_mean || kmode == aggregation::seq_mean_token_sum;
    out->policy_parts_sum = ppart;
    out->policy_parts_count = pseq ? st.sequences : st.tokens;
    out->kl_parts_sum = use_kl ? kpart : 0.0;
    out->kl_parts_count = use_kl ? (kseq ? st.sequences : st.tokens) : 0;
    out->st = st;
  }
  return total;
}

/// Loss, gradient (dual numbers, one evaluation per valid token) and statistics.
inline result policy_loss(const batch& b, const policy_loss_config& c, const normalizers& nz = {}) {
  result out;
  auto base = [&](index_t k) { return dual{b.lp[k], 0.0}; };
  evaluate<dual>(b, c, nz, base, &out);
  out.grad.assign(b.B * b.T, 0.0);
  if (out.nonfinite_error) return out;
  for (index_t u = 0; u < b.B * b.T; ++u) {
    if (!b.valid(u)) continue;
    auto seeded = [&](index_t k) { return dual{b.lp[k], k == u ? 1.0 : 0.0}; };
    out.grad[u] = evaluate<dual>(b, c, nz, seeded, nullptr).d;
  }
  return out;
}

/// The value an autograd framework differentiates when logp[u] moves by h (stop-gradient
/// operands held at the base point): for central finite differences.
inline double perturbed_value(const batch& b, const policy_loss_config& c, const normalizers& nz, index_t u,
                              double h) {
  auto mk = [&](index_t k) { return pair{b.lp[k] + (k == u ? h : 0.0), b.lp[k]}; };
  return evaluate<pair>(b, c, nz, mk, nullptr).v;
}

}  // namespace polo::ref
