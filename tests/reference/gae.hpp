// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
#pragma once
// Naive float64 oracles for the PPO-side estimators of include/polo/gae.hpp, written as literal
// translations of the peers' Python loops (SEMANTICS.md 2.2, 2.3) over a padded [B,T] batch:
//
//   skip    verl compute_gae_advantage_return: delta from the carried `nextvalues`, then
//           `lastgaelam = lastgaelam_ * m + (1 - m) * lastgaelam` (as a selection)
//   through OpenRLHF get_advantages_and_returns: values and rewards multiplied by the mask
//           first, `nextvalues = values[:, t + 1]`, no mask inside the loop
//
// plus gae_direct, a second oracle that does not recurse at all: A_t = Σ_k (γλ)^k δ_{t+k} over
// the sequence's valid positions (skip) or over every position (through), O(T²) per row.
// Returns, ReMax, REINFORCE++(-baseline) and OPO follow verl's core_algos.py. Groups are
// found by rescanning the batch (O(B²)). No Eigen, no CUDA, no polo code beyond option enums.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "polo/gae.hpp"
#include "reference/whiten.hpp"

namespace polo::ref {

struct gae_result {
  std::vector<double> adv, ret;
  std::vector<double> lambda;  // per row
};

inline double row_lambda(const gae_config& c, long long n) {
  if (c.lambda_mode == gae_lambda_mode::fixed) return c.lambda;
  return 1.0 - 1.0 / std::max(c.alpha * double(n), 1.0);
}

/// GAE over a padded [B,T] batch. `truncated`/`bootstrap` may be empty (no bootstrap).
inline gae_result gae(const std::vector<double>& r, const std::vector<double>& v, const std::vector<std::uint8_t>& m,
                      long long B, long long T, const gae_config& c, const std::vector<int>& truncated = {},
                      const std::vector<double>& bootstrap = {}) {
  gae_result out;
  out.adv.assign(std::size_t(B * T), 0.0);
  out.ret.assign(std::size_t(B * T), 0.0);
  const bool two = c.returns == gae_returns::value_lambda;
  for (long long i = 0; i < B; ++i) {
    long long n = 0;
    for (long long t = 0; t < T; ++t) n += m[i * T + t] ? 1 : 0;
    const double lam = row_lambda(c, n);
    const double lam_v = two ? c.lambda_value : lam;
    out.lambda.push_back(lam);
    const double boot = (!truncated.empty() && truncated[i]) ? bootstrap[i] : 0.0;
    if (c.mask == gae_mask_mode::skip) {
      double nextvalues = boot, lastgaelam = 0.0, lastgaelam_v = 0.0;
      for (long long t = T - 1; t >= 0; --t) {
        const long long k = i * T + t;
        const bool valid = m[k] != 0;
        if (valid) {
          const double delta = r[k] + c.gamma * nextvalues - v[k];
          lastgaelam = delta + c.gamma * lam * lastgaelam;
          lastgaelam_v = delta + c.gamma * lam_v * lastgaelam_v;
          nextvalues = v[k];
          out.adv[k] = lastgaelam;
          out.ret[k] = lastgaelam_v + v[k];
        } else if (c.fill == masked_fill::recursion) {
          out.adv[k] = lastgaelam;
          out.ret[k] = lastgaelam_v + v[k];
        }
      }
    } else {
      std::vector<double> vm(static_cast<std::size_t>(T)), rm(static_cast<std::size_t>(T));
      for (long long t = 0; t < T; ++t) {
        vm[t] = m[i * T + t] ? v[i * T + t] : 0.0;
        rm[t] = m[i * T + t] ? r[i * T + t] : 0.0;
      }
      double lastgaelam = 0.0, lastgaelam_v = 0.0;
      for (long long t = T - 1; t >= 0; --t) {
        const double nextvalues = t < T - 1 ? vm[t + 1] : boot;
        const double delta = rm[t] + c.gamma * nextvalues - vm[t];
        lastgaelam = delta + c.gamma * lam * lastgaelam;
        lastgaelam_v = delta + c.gamma * lam_v * lastgaelam_v;
        const long long k = i * T + t;
        if (m[k] || c.fill == masked_fill::recursion) {
          out.adv[k] = lastgaelam;
          out.ret[k] = lastgaelam_v + vm[t];
        }
      }
    }
  }
  return out;
}

/// Advantages only, by the explicit sum A_t = Σ_{k>=0} (γλ)^k δ_{t+k} over the chain of
/// positions the mode recurses on (valid positions for skip, every position for through);
/// values only at valid tokens (masked positions left 0).
inline std::vector<double> gae_direct(const std::vector<double>& r, const std::vector<double>& v,
                                      const std::vector<std::uint8_t>& m, long long B, long long T,
                                      const gae_config& c) {
  std::vector<double> adv(std::size_t(B * T), 0.0);
  for (long long i = 0; i < B; ++i) {
    std::vector<long long> chain;
    long long n = 0;
    for (long long t = 0; t < T; ++t) {
      n += m[i * T + t] ? 1 : 0;
      if (c.mask == gae_mask_mode::through || m[i * T + t]) chain.push_back(t);
    }
    const double gl = c.gamma * row_lambda(c, n);
    auto val = [&](long long t) { return m[i * T + t] ? v[i * T + t] : 0.0; };
    auto rew = [&](long long t) { return m[i * T + t] ? r[i * T + t] : 0.0; };
    const std::size_t L = chain.size();
    std::vector<double> delta(L);
    for (std::size_t j = 0; j < L; ++j) {
      double next = j + 1 < L ? val(chain[j + 1]) : 0.0;
      delta[j] = rew(chain[j]) + c.gamma * next - val(chain[j]);
    }
    for (std::size_t j = 0; j < L; ++j) {
      if (!m[i * T + chain[j]]) continue;
      double a = 0.0, w = 1.0;
      for (std::size_t k = j; k < L; ++k) {
        a += w * delta[k];
        w *= gl;
      }
      adv[i * T + chain[j]] = a;
    }
  }
  return adv;
}

/// Discounted returns, as each peer's loop (with masked rewards read as 0):
///   carry    ReMax's reverse cumulative sum of r·m, generalised: run changes only where m = 1
///   through  OpenRLHF get_cumulative_returns: rewards·m, then run = r + γ·run everywhere
///   reset    verl compute_reinforce_plus_plus_outcome_advantage: run = r + γ·run, then
///            run *= m ("reset after EOS")
/// and, when `baselines` is given, ReMax's A = R − b·m. fill zero: R·m (and A·m); fill
/// recursion: the run at masked positions (0 after a reset).
struct returns_result {
  std::vector<double> ret, adv;
};
inline returns_result returns(const std::vector<double>& r, const std::vector<std::uint8_t>& m, long long B,
                              long long T, double gamma, masked_fill fill, returns_mask_mode mode = returns_mask_mode::carry,
                              const std::vector<double>* baselines = nullptr) {
  returns_result out;
  out.ret.assign(static_cast<std::size_t>(B * T), 0.0);
  out.adv.assign(static_cast<std::size_t>(B * T), 0.0);
  for (long long i = 0; i < B; ++i) {
    double running = 0.0;
    for (long long t = T - 1; t >= 0; --t) {
      const long long k = i * T + t;
      const double rm = m[k] ? r[k] : 0.0;
      switch (mode) {
        case returns_mask_mode::carry:
          if (m[k]) running = r[k] + gamma * running;
          break;
        case returns_mask_mode::through: running = rm + gamma * running; break;
        case returns_mask_mode::reset:
          running = rm + gamma * running;
          running = running * (m[k] ? 1.0 : 0.0);
          break;
      }
      const bool write = m[k] || fill == masked_fill::recursion;
      if (write) out.ret[k] = running;
      if (baselines && write) out.adv[k] = running - (m[k] ? (*baselines)[i] : 0.0);
    }
  }
  return out;
}

/// REINFORCE++: whiten(R·m) over the batch.
inline whiten_result reinforce_plus_plus(const std::vector<double>& r, const std::vector<std::uint8_t>& m, long long B,
                                         long long T, const reinforce_pp_config& c, std::vector<double>* ret_out) {
  auto R = returns(r, m, B, T, c.gamma, masked_fill::zero, c.mask).ret;
  if (ret_out) *ret_out = R;
  return whiten(R, m, c.whiten);
}

/// Group-mean baseline over labels by rescanning: a_i = s_i − mean of its group; a group of one
/// gets s_i (singleton_rule::raw) or 0 (singleton_rule::zero).
inline std::vector<double> group_mean_centred(const std::vector<double>& s, const std::vector<long long>& label,
                                              singleton_rule single) {
  std::vector<double> a(s.size());
  for (std::size_t i = 0; i < s.size(); ++i) {
    double sum = 0.0;
    long long k = 0;
    for (std::size_t j = 0; j < s.size(); ++j)
      if (label[j] == label[i]) {
        sum += s[j];
        ++k;
      }
    if (k == 1)
      a[i] = single == singleton_rule::raw ? s[i] : 0.0;
    else
      a[i] = s[i] - sum / double(k);
  }
  return a;
}

/// REINFORCE++-baseline: whiten((s − μ_g)·m) over the batch.
inline whiten_result reinforce_pp_baseline(const std::vector<double>& s, const std::vector<long long>& label,
                                           const std::vector<std::uint8_t>& m, long long B, long long T,
                                           const reinforce_pp_baseline_config& c, std::vector<double>* seq_out) {
  auto a = group_mean_centred(s, label, c.group.singleton);
  if (seq_out) *seq_out = a;
  std::vector<double> x(std::size_t(B * T), 0.0);
  for (long long i = 0; i < B; ++i)
    for (long long t = 0; t < T; ++t) x[i * T + t] = m[i * T + t] ? a[i] : 0.0;
  return whiten(x, m, c.whiten);
}

/// OPO: b_g = Σ n_j s_j / Σ n_j (0 for a group of one or Σ n_j = 0); A_i = s_i − b_g, and the
/// token tensor A_i·m.
inline std::vector<double> opo(const std::vector<double>& s, const std::vector<long long>& label,
                               const std::vector<std::uint8_t>& m, long long B, long long T,
                               std::vector<double>* token_out) {
  std::vector<long long> n(std::size_t(B), 0);
  for (long long i = 0; i < B; ++i)
    for (long long t = 0; t < T; ++t) n[i] += m[i * T + t] ? 1 : 0;
  std::vector<double> a(static_cast<std::size_t>(B));
  for (long long i = 0; i < B; ++i) {
    double num = 0.0;
    long long den = 0, k = 0;
    for (long long j = 0; j < B; ++j)
      if (label[j] == label[i]) {
        num += double(n[j]) * s[j];
        den += n[j];
        ++k;
      }
    const double b = (k == 1 || den == 0) ? 0.0 : num / double(den);
    a[i] = s[i] - b;
  }
  if (token_out) {
    token_out->assign(std::size_t(B * T), 0.0);
    for (long long i = 0; i < B; ++i)
      for (long long t = 0; t < T; ++t) (*token_out)[i * T + t] = m[i * T + t] ? a[i] : 0.0;
  }
  return a;
}

}  // namespace polo::ref
