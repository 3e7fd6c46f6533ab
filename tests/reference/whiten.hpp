// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
#pragma once
// Naive float64 oracle for masked whitening, written from the formulas of
// include/polo/whiten.hpp and SEMANTICS.md 2.2 (verl/TRL masked_whiten, OpenRLHF, NeMo-RL): one
// plain sum for the mean, one for the squared deviations, over the whole [B,T] batch at once
// (no per-row moments, no merging). No Eigen, no CUDA, no polo code beyond the option enums.

#include <cmath>
#include <cstdint>
#include <vector>

#include "polo/whiten.hpp"

namespace polo::ref {

struct whiten_result {
  std::vector<double> out;
  double mean = 0.0;
  double var = 0.0;
  long long count = 0;
  bool degenerate = false;
};

/// Whitens x [n] over the positions where mask != 0. `given` (optional) replaces the
/// statistics: {count, mean, population M2}.
inline whiten_result whiten(const std::vector<double>& x, const std::vector<std::uint8_t>& mask,
                            const whiten_config& c, const moments* given = nullptr) {
  whiten_result r;
  r.out.assign(x.size(), 0.0);
  long long n = 0;
  double sum = 0.0;
  for (std::size_t k = 0; k < x.size(); ++k)
    if (mask[k]) {
      sum += x[k];
      ++n;
    }
  double mean = n > 0 ? sum / double(n) : 0.0;
  double ss = 0.0;
  for (std::size_t k = 0; k < x.size(); ++k)
    if (mask[k]) ss += (x[k] - mean) * (x[k] - mean);
  if (given) {
    n = given->count;
    mean = given->mean;
    ss = given->m2;
  }
  r.count = n;
  const long long denom = c.std == std_kind::sample ? n - 1 : n;
  if (n == 0 || denom <= 0) {
    r.degenerate = true;
    return r;  // zeros everywhere
  }
  const double var = ss / double(denom);
  double D = 0.0;
  switch (c.eps_mode) {
    case eps_placement::inside_sqrt: D = std::sqrt(var + c.eps); break;
    case eps_placement::floor_variance: D = std::sqrt(std::max(var, c.eps)); break;
    case eps_placement::add_to_std: D = std::sqrt(var) + c.eps; break;
  }
  r.mean = mean;
  r.var = var;
  for (std::size_t k = 0; k < x.size(); ++k) {
    if (!mask[k] && c.write == whiten_write::zero_masked) continue;
    double y = (x[k] - mean) / D;
    if (!c.shift_mean) y += mean;
    r.out[k] = y;
  }
  return r;
}

}  // namespace polo::ref
