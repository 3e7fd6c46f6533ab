// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
#pragma once
// Naive float64 oracle for group-normalized advantages, written straight from the formulas of
// include/polo/advantages.hpp and SEMANTICS.md 2.1, with a deliberately different algorithm
// from the library: for every sequence it rescans the whole batch for its group's members and
// recomputes every mean and std from scratch (O(B^2)). No Eigen, no CUDA.

#include <cmath>
#include <cstdint>
#include <vector>

#include "polo/advantages.hpp"

namespace polo::ref {

struct advantages_result {
  std::vector<double> adv;
  bool singleton_error = false;
  bool nonfinite_error = false;
  long long zero_std_groups = 0;
};

/// Mean written as x0 + mean(x - x0): exact for a constant set.
inline double mean_of(const std::vector<double>& v) {
  if (v.empty()) return 0.0;
  double acc = 0.0;
  for (double x : v) acc += x - v[0];
  return v[0] + acc / double(v.size());
}
inline bool all_equal(const std::vector<double>& v) {
  for (double x : v)
    if (x != v[0]) return false;
  return true;
}
/// std of v; `defined` false for a sample std of fewer than two values.
inline double std_of(const std::vector<double>& v, std_kind k, bool& defined) {
  long long n = static_cast<long long>(v.size());
  long long d = k == std_kind::sample ? n - 1 : n;
  defined = d > 0;
  if (!defined) return 0.0;
  double mu = mean_of(v), ss = 0.0;
  for (double x : v) ss += (x - mu) * (x - mu);
  return std::sqrt(ss / double(d));
}
inline double divisor(double sigma, const advantage_config& c) {
  switch (c.eps_mode) {
    case eps_placement::add_to_std: return sigma + c.eps;
    case eps_placement::inside_sqrt: return std::sqrt(sigma * sigma + c.eps);
    case eps_placement::floor_variance: return std::sqrt(sigma * sigma > c.eps ? sigma * sigma : c.eps);
  }
  return 0.0;
}
inline double apply_scale(double centred, double sigma, bool zero, const advantage_config& c) {
  if (zero) {
    if (c.zero_variance == zero_variance_rule::zero) return 0.0;
    if (c.zero_variance == zero_variance_rule::skip_scale) return centred;
    return centred / divisor(0.0, c);
  }
  return centred / divisor(sigma, c);
}

/// labels[i] names the group of sequence i.
inline advantages_result group_advantages(const std::vector<double>& s, const std::vector<long long>& labels,
                                          const advantage_config& c) {
  const std::size_t B = s.size();
  advantages_result r;
  r.adv.assign(B, 0.0);
  auto scoreable = [&](std::size_t j) { return std::isfinite(s[j]); };
  for (std::size_t j = 0; j < B; ++j)
    if (!scoreable(j) && c.nonfinite == nonfinite_policy::error) {
      r.nonfinite_error = true;
      return r;
    }
  std::vector<double> batch;
  for (std::size_t j = 0; j < B; ++j)
    if (scoreable(j)) batch.push_back(s[j]);

  double batch_sigma = 0.0;
  bool batch_zero = true;
  if (c.scale == scale_kind::batch_std) {
    bool defined = false;
    if (c.batch.count > 0) {
      long long d = c.std == std_kind::sample ? c.batch.count - 1 : c.batch.count;
      defined = d > 0;
      batch_sigma = defined ? std::sqrt(c.batch.m2 / double(d)) : 0.0;
      batch_zero = !defined || c.batch.m2 == 0.0;
    } else {
      batch_sigma = std_of(batch, c.std, defined);
      batch_zero = batch.empty() || all_equal(batch) || !defined;
    }
  }

  // zero-std group count: groups with >= 2 scoreable members, all equal
  std::vector<long long> seen;
  for (std::size_t i = 0; i < B; ++i) {
    bool dup = false;
    for (long long l : seen) dup = dup || l == labels[i];
    if (dup) continue;
    seen.push_back(labels[i]);
    std::vector<double> m;
    for (std::size_t j = 0; j < B; ++j)
      if (labels[j] == labels[i] && scoreable(j)) m.push_back(s[j]);
    if (m.size() >= 2 && all_equal(m)) ++r.zero_std_groups;
  }

  for (std::size_t i = 0; i < B; ++i) {
    if (!scoreable(i)) continue;
    std::vector<double> members, others;
    for (std::size_t j = 0; j < B; ++j) {
      if (labels[j] != labels[i] || !scoreable(j)) continue;
      members.push_back(s[j]);
      if (j != i) others.push_back(s[j]);
    }
    if (members.size() == 1) {
      if (c.singleton == singleton_rule::error) {
        r.singleton_error = true;
        return r;
      }
      if (c.singleton == singleton_rule::zero) continue;
      // raw: baseline 0, σ = 1 for group scales
      if (c.scale == scale_kind::none)
        r.adv[i] = s[i];
      else if (c.scale == scale_kind::batch_std)
        r.adv[i] = apply_scale(s[i], batch_sigma, batch_zero, c);
      else
        r.adv[i] = s[i] / divisor(1.0, c);
      continue;
    }
    double b = 0.0;
    if (c.baseline == baseline_kind::group_mean) b = mean_of(members);
    if (c.baseline == baseline_kind::leave_one_out) b = mean_of(others);
    double centred = s[i] - b;
    bool defined = false;
    switch (c.scale) {
      case scale_kind::none: r.adv[i] = centred; break;
      case scale_kind::group_std: {
        double sg = std_of(members, c.std, defined);
        r.adv[i] = apply_scale(centred, sg, all_equal(members) || !defined, c);
        break;
      }
      case scale_kind::leave_one_out_std: {
        double so = std_of(others, c.std, defined);
        r.adv[i] = apply_scale(centred, so, all_equal(others) || !defined, c);
        break;
      }
      case scale_kind::batch_std: r.adv[i] = apply_scale(centred, batch_sigma, batch_zero, c); break;
    }
  }
  return r;
}

/// out[i,t] = mask[i,t] ? v[i] : 0 over a padded [B,T] batch.
inline std::vector<double> broadcast(const std::vector<double>& v, const std::vector<std::uint8_t>& mask, long long T) {
  std::vector<double> out(mask.size(), 0.0);
  for (std::size_t k = 0; k < mask.size(); ++k)
    if (mask[k]) out[k] = v[k / static_cast<std::size_t>(T)];
  return out;
}

}  // namespace polo::ref
