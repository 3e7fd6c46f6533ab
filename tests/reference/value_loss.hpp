// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
#pragma once
// Naive float64 oracle for the clipped PPO value loss of include/polo/value_loss.hpp
// (SEMANTICS.md 2.5, 2.7): the per-token term written as verl/OpenRLHF write it, then each
// aggregation mode written out as its own plain loop over [B,T] (no shared weight function).
// The gradient is the analytic one of the file comment; tests check it against central finite
// differences of the library's own loss. No Eigen, no CUDA.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "polo/value_loss.hpp"

namespace polo::ref {

struct value_loss_result {
  double loss = 0.0;
  std::vector<double> grad;
  long long clipped = 0;
  long long tokens = 0;
  long long sequences = 0;
};

/// Clipped value. clamp_value: torch.max(torch.min(v, vo + c), vo - c) (verl); clamp_delta:
/// vo + torch.clamp(v - vo, -c, c) (OpenRLHF). The intermediate results are rounded to T, as
/// the peers compute them in the tensors' dtype.
template <class T>
double clipped_value(T v, T vo, value_clip clip, T c, bool& inside) {
  if (clip == value_clip::clamp_value) {
    T hi = T(vo + c), lo = T(vo - c);
    inside = v >= lo && v <= hi;
    return double(std::max(std::min(v, hi), lo));
  }
  T d = T(v - vo);
  inside = d >= -c && d <= c;
  return double(T(vo + std::min(std::max(d, T(-c)), c)));
}

/// Inputs are T-valued (stored in double); the clip is evaluated in T.
template <class T>
value_loss_result value_loss(const std::vector<double>& v, const std::vector<double>& vo, const std::vector<double>& R,
                             const std::vector<std::uint8_t>& m, long long B, long long Tn, const value_loss_config& c,
                             const normalizers& nz) {
  value_loss_result out;
  out.grad.assign(std::size_t(B * Tn), 0.0);
  std::vector<double> L(std::size_t(B * Tn), 0.0), dL(std::size_t(B * Tn), 0.0);
  std::vector<long long> n(std::size_t(B), 0);
  for (long long i = 0; i < B; ++i)
    for (long long t = 0; t < Tn; ++t) {
      const long long k = i * Tn + t;
      if (!m[k]) continue;
      ++n[i];
      ++out.tokens;
      const double a = (v[k] - R[k]) * (v[k] - R[k]);
      if (c.clip == value_clip::none) {
        L[k] = a;
        dL[k] = 2.0 * (v[k] - R[k]);
        continue;
      }
      bool inside = false;
      const double vc = clipped_value<T>(T(v[k]), T(vo[k]), c.clip, T(c.clip_range), inside);
      const double b = (vc - R[k]) * (vc - R[k]);
      L[k] = std::max(a, b);
      if (b > a) ++out.clipped;
      const double ga = 2.0 * (v[k] - R[k]), gb = inside ? 2.0 * (vc - R[k]) : 0.0;
      dL[k] = a > b ? ga : (b > a ? gb : 0.5 * (ga + gb));
    }
  for (long long i = 0; i < B; ++i) out.sequences += n[i] > 0 ? 1 : 0;
  const double Ntok = nz.tokens < 0 ? double(out.tokens) : nz.tokens;
  const double Nseq = nz.sequences < 0 ? double(out.sequences) : nz.sequences;
  double loss = 0.0;
  switch (c.agg) {
    case aggregation::token_mean: {
      double s = 0.0;
      for (std::size_t k = 0; k < L.size(); ++k) s += L[k];
      loss = Ntok > 0 ? s / Ntok : 0.0;
      for (std::size_t k = 0; k < L.size(); ++k) out.grad[k] = Ntok > 0 ? dL[k] / Ntok : 0.0;
      break;
    }
    case aggregation::token_sum: {
      for (std::size_t k = 0; k < L.size(); ++k) loss += L[k];
      out.grad = dL;
      break;
    }
    case aggregation::seq_mean_token_mean: {
      for (long long i = 0; i < B; ++i) {
        if (n[i] == 0) continue;
        double s = 0.0;
        for (long long t = 0; t < Tn; ++t) s += L[i * Tn + t];
        loss += Nseq > 0 ? (s / double(n[i])) / Nseq : 0.0;
        for (long long t = 0; t < Tn; ++t)
          out.grad[i * Tn + t] = Nseq > 0 ? dL[i * Tn + t] / double(n[i]) / Nseq : 0.0;
      }
      break;
    }
    case aggregation::seq_mean_token_sum: {
      double s = 0.0;
      for (std::size_t k = 0; k < L.size(); ++k) s += L[k];
      loss = Nseq > 0 ? s / Nseq : 0.0;
      for (std::size_t k = 0; k < L.size(); ++k) out.grad[k] = Nseq > 0 ? dL[k] / Nseq : 0.0;
      break;
    }
    case aggregation::token_sum_norm: {
      double s = 0.0;
      for (std::size_t k = 0; k < L.size(); ++k) s += L[k];
      loss = s / nz.constant;
      for (std::size_t k = 0; k < L.size(); ++k) out.grad[k] = dL[k] / nz.constant;
      break;
    }
  }
  out.loss = c.coef * nz.scale * loss;
  for (auto& g : out.grad) g *= c.coef * nz.scale;
  return out;
}

}  // namespace polo::ref
