// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
#pragma once
// Naive float64 oracle for the KL estimators of include/polo/kl.hpp and for
// polo::kl_penalized_rewards, written the way verl/OpenRLHF write them (SEMANTICS.md 2.6): the
// log-ratio d = logp - logp_ref, the input clamp on d, the estimator in its textbook form
// (k3 = e^(-x) + x - 1, not expm1), the output clamp on the value. Only the option types come
// from polo; no polo code runs here. Padded [B,T] only.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "polo/kl.hpp"

namespace polo::ref {

/// Value of estimator `k` (no weight) at d, with its clamps; `clamped` reports either clamp.
inline double kl_estimate(const kl_config& k, double d, bool* clamped = nullptr) {
  double x = std::min(std::max(d, -k.input_clamp), k.input_clamp);
  double v = 0.0;
  switch (k.estimator) {
    case kl_estimator::k1: v = x; break;
    case kl_estimator::abs: v = std::fabs(x); break;
    case kl_estimator::k2: v = 0.5 * x * x; break;
    case kl_estimator::k3: v = std::exp(-x) + x - 1.0; break;
  }
  double y = std::min(std::max(v, -k.output_clamp), k.output_clamp);
  if (clamped) *clamped = x != d || y != v;
  return y;
}

/// Derivative of `kl_estimate` in d where it is smooth (no weight): 0 where a clamp is active,
/// the k2 gradient d under straight_through.
inline double kl_estimate_grad(const kl_config& k, double d) {
  if (k.straight_through) return d;
  if (std::fabs(d) > k.input_clamp) return 0.0;
  bool cl = false;
  kl_estimate(k, d, &cl);
  if (cl) return 0.0;
  switch (k.estimator) {
    case kl_estimator::k1: return 1.0;
    case kl_estimator::abs: return d > 0 ? 1.0 : (d < 0 ? -1.0 : 0.0);
    case kl_estimator::k2: return d;
    case kl_estimator::k3: return 1.0 - std::exp(-d);
  }
  return 0.0;
}

struct kl_reward_result {
  std::vector<double> out;
  double kl_sum = 0.0;
  long long tokens = 0, masked = 0, clamped = 0;
};

/// rewards - beta * KL(logp_old - logp_ref) at valid tokens, 0 elsewhere.
inline kl_reward_result kl_penalized_rewards(index_t B, index_t T, const std::vector<double>& rewards,
                                             const std::vector<double>& lo, const std::vector<double>& lref,
                                             const std::vector<std::uint8_t>& mask, double beta,
                                             const kl_config& k) {
  kl_reward_result r;
  r.out.assign(B * T, 0.0);
  for (index_t j = 0; j < B * T; ++j) {
    if (!mask.empty() && mask[j] == 0) {
      ++r.masked;
      continue;
    }
    bool cl = false;
    double v = kl_estimate(k, lo[j] - lref[j], &cl);
    r.out[j] = rewards[j] - beta * v;
    r.kl_sum += v;
    ++r.tokens;
    r.clamped += cl;
  }
  return r;
}

}  // namespace polo::ref
