// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
#pragma once
/// \file
/// CPU implementation of <polo/advantages.hpp>. Single-threaded, fixed-order and therefore
/// bitwise deterministic; statistics accumulate in double. Two passes over the scores
/// (statistics, then advantages) so that every data-dependent error is raised before
/// anything is written.

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "polo/advantages.hpp"
#include "polo/cpu/eigen_interop.hpp"

namespace polo::detail {

/// Statistics of one group's scoreable members, in double.
struct cpu_group_info {
  index_t k = 0;           // scoreable members
  double sum = 0.0;        // their sum
  double mean = 0.0;       // their mean (exactly the common value for a constant group)
  double m2 = 0.0;         // sum of squared deviations from mean
  double min = 0.0, max = 0.0;
  index_t n_min = 0, n_max = 0;  // members equal to min / max
  [[nodiscard]] bool constant() const { return k >= 1 && min == max; }
};

/// D(σ): the divisor after eps placement.
inline double scale_divisor(double sigma, const advantage_config& c) {
  switch (c.eps_mode) {
    case eps_placement::add_to_std: return sigma + c.eps;
    case eps_placement::inside_sqrt: return std::sqrt(sigma * sigma + c.eps);
    case eps_placement::floor_variance: return std::sqrt(std::max(sigma * sigma, c.eps));
  }
  return sigma + c.eps;
}

/// std from a sum of squared deviations over n values; `defined` is false when the sample
/// std has fewer than two values.
inline double std_from_m2(double m2, index_t n, std_kind kind, bool& defined) {
  index_t denom = kind == std_kind::sample ? n - 1 : n;
  defined = denom > 0;
  return defined ? std::sqrt(std::max(m2, 0.0) / double(denom)) : 0.0;
}

/// A_i from the centred score and σ under the zero-variance rule.
inline double scaled_advantage(double centred, double sigma, bool zero_var, const advantage_config& c) {
  if (zero_var) {
    switch (c.zero_variance) {
      case zero_variance_rule::zero: return 0.0;
      case zero_variance_rule::skip_scale: return centred;
      case zero_variance_rule::divide: return centred / scale_divisor(0.0, c);
    }
  }
  return centred / scale_divisor(sigma, c);
}

}  // namespace polo::detail

namespace polo::detail {

template <>
struct backend_impl<cpu, advantages_tag> {
  /// Fills `order` with sequence indices grouped (ascending index within a group) and
  /// `starts` with each group's first position in `order` (plus a final B).
  static void group_order(const contiguous_groups& g, index_t B, std::vector<index_t>& order,
                          std::vector<index_t>& starts) {
    order.resize(static_cast<std::size_t>(B));
    std::iota(order.begin(), order.end(), index_t(0));
    starts.clear();
    for (index_t s = 0; s <= B; s += g.size) starts.push_back(s);
    if (starts.empty() || starts.back() != B) starts.push_back(B);
  }
  template <class L>
  static void group_order(const labelled_groups<L, host_space>& g, index_t B,
                          std::vector<index_t>& order, std::vector<index_t>& starts) {
    order.resize(static_cast<std::size_t>(B));
    std::iota(order.begin(), order.end(), index_t(0));
    std::stable_sort(order.begin(), order.end(),
                     [&](index_t a, index_t b) { return g.labels(a) < g.labels(b); });
    starts.clear();
    for (index_t p = 0; p < B; ++p)
      if (p == 0 || g.labels(order[p]) != g.labels(order[p - 1])) starts.push_back(p);
    starts.push_back(B);
  }

  template <class T, class Groups>
  static group_stats group_advantages(const cpu&, view<const T, 1, host_space> s, const Groups& groups,
                                      view<T, 1, host_space> out, const advantage_config& c) {
    constexpr const char* fn = "group_advantages";
    const index_t B = s.n;
    group_stats st;
    st.sequences = B;

    // Pass 0: non-finite scores.
    std::vector<unsigned char> ok(static_cast<std::size_t>(B), 1);
    for (index_t i = 0; i < B; ++i) {
      if (!is_finite(s(i))) {
        if (c.nonfinite == nonfinite_policy::error)
          throw_nonfinite(fn, "scores", i, double(s(i)),
                          "set nonfinite_policy::zero_advantage to give unscorable sequences A = 0");
        ok[i] = 0;
        ++st.nonfinite_scores;
      }
    }

    std::vector<index_t> order, starts;
    group_order(groups, B, order, starts);
    const index_t n_groups = static_cast<index_t>(starts.size()) - 1;

    // Pass 1: per-group statistics (two passes over each group, in double).
    std::vector<cpu_group_info> info(static_cast<std::size_t>(n_groups));
    double batch_min = 0.0, batch_max = 0.0;
    bool batch_seen = false;
    for (index_t g = 0; g < n_groups; ++g) {
      cpu_group_info& gi = info[g];
      neumaier_sum acc;
      for (index_t p = starts[g]; p < starts[g + 1]; ++p) {
        index_t i = order[p];
        if (!ok[i]) continue;
        double x = double(s(i));
        acc.add(x);
        if (gi.k == 0 || x < gi.min) { gi.min = x; gi.n_min = 0; }
        if (gi.k == 0 || x > gi.max) { gi.max = x; gi.n_max = 0; }
        if (x == gi.min) ++gi.n_min;
        if (x == gi.max) ++gi.n_max;
        ++gi.k;
        st.scores.add(x);
        if (!batch_seen || x < batch_min) batch_min = x;
        if (!batch_seen || x > batch_max) batch_max = x;
        batch_seen = true;
      }
      gi.sum = acc.value();
      if (gi.k > 0) gi.mean = gi.constant() ? gi.min : gi.sum / double(gi.k);
      if (gi.k > 1 && !gi.constant()) {
        neumaier_sum m2;
        for (index_t p = starts[g]; p < starts[g + 1]; ++p) {
          index_t i = order[p];
          if (!ok[i]) continue;
          double d = double(s(i)) - gi.mean;
          m2.add(d * d);
        }
        gi.m2 = m2.value();
      }
      ++st.groups;
      if (gi.k == 0) ++st.empty_groups;
      if (gi.k == 1) {
        ++st.singleton_groups;
        if (c.singleton == singleton_rule::error)
          throw_value(fn, "scores",
                      "has a group of one scoreable member (sequence " + std::to_string(order[starts[g]]) +
                          " of group " + std::to_string(g) +
                          " counting groups in ascending label order); expected >= 2 per group under "
                          "singleton_rule::error (choose singleton_rule::zero or ::raw)");
      }
      if (gi.k >= 2) {
        bool defined = false;
        double sg = gi.constant() ? 0.0 : std_from_m2(gi.m2, gi.k, c.std, defined);
        st.group_std += sum_count<double>{sg, 1};
        if (gi.constant()) ++st.zero_std_groups;
      }
    }

    // Batch σ (scale_kind::batch_std): from the config's all-reduced moments, or this call.
    double batch_sigma = 0.0;
    bool batch_zero = true;
    if (c.scale == scale_kind::batch_std) {
      moments bm = c.batch.count > 0 ? c.batch : st.scores;
      bool defined = false;
      bool all_equal = c.batch.count > 0 ? bm.m2 == 0.0 : (!batch_seen || batch_min == batch_max);
      batch_sigma = all_equal ? 0.0 : std_from_m2(bm.m2, bm.count, c.std, defined);
      batch_zero = all_equal || !defined;
    }

    // Pass 2: advantages.
    neumaier_sum adv_sum;
    for (index_t g = 0; g < n_groups; ++g) {
      const cpu_group_info& gi = info[g];
      for (index_t p = starts[g]; p < starts[g + 1]; ++p) {
        index_t i = order[p];
        double a = 0.0;
        if (ok[i] && gi.k == 1) {
          if (c.singleton == singleton_rule::raw) {
            double x = double(s(i));
            switch (c.scale) {
              case scale_kind::none: a = x; break;
              case scale_kind::batch_std: a = scaled_advantage(x, batch_sigma, batch_zero, c); break;
              default: a = x / scale_divisor(1.0, c); break;
            }
          }
        } else if (ok[i] && gi.k >= 2) {
          double x = double(s(i));
          double b = 0.0;
          if (c.baseline == baseline_kind::group_mean) {
            b = gi.mean;
          } else if (c.baseline == baseline_kind::leave_one_out) {
            b = gi.constant() ? gi.min : (gi.sum - x) / double(gi.k - 1);
          }
          double centred = x - b;
          switch (c.scale) {
            case scale_kind::none: a = centred; break;
            case scale_kind::group_std: {
              bool defined = false;
              double sg = gi.constant() ? 0.0 : std_from_m2(gi.m2, gi.k, c.std, defined);
              a = scaled_advantage(centred, sg, gi.constant(), c);
              break;
            }
            case scale_kind::leave_one_out_std: {
              // The others are all equal when the group is constant, or x is the group's only
              // copy of one extreme and every other member sits at the other extreme.
              index_t others = gi.k - 1;
              bool others_equal = gi.constant() ||
                                  (x == gi.min && gi.n_min == 1 && gi.n_max == others) ||
                                  (x == gi.max && gi.n_max == 1 && gi.n_min == others);
              double so = 0.0;
              bool defined = others >= 1;
              if (!others_equal) {
                double mean_o = (gi.sum - x) / double(others);
                double m2_o = gi.m2 - (x - gi.mean) * (x - mean_o);  // Welford downdate
                so = std_from_m2(m2_o, others, c.std, defined);
              } else if (c.std == std_kind::sample) {
                defined = others >= 2;
              }
              a = scaled_advantage(centred, so, others_equal || !defined, c);
              break;
            }
            case scale_kind::batch_std: a = scaled_advantage(centred, batch_sigma, batch_zero, c); break;
          }
        }
        out(i) = static_cast<T>(a);
        adv_sum.add(double(static_cast<T>(a)));
      }
    }
    st.advantage = {adv_sum.value(), B};
    return st;
  }

  template <class T, TokenLayout L>
  static void broadcast_to_tokens(const cpu&, view<const T, 1, host_space> values, const L& layout,
                                  token_tensor<L, T> out) {
    constexpr const char* fn = "broadcast_to_tokens";
    using Mask = typename L::mask_type;
    if constexpr (L::is_packed) layout.check_offsets_host(fn);
    const index_t B = layout.num_seqs();
    // A non-finite value is an error only where it would reach a valid token.
    for (index_t i = 0; i < B; ++i) {
      if (is_finite(values(i))) continue;
      const Mask* m = layout.mask_row(i);
      index_t len = layout.row_len(i);
      bool any = m == nullptr ? len > 0 : std::any_of(m, m + len, [](Mask v) { return is_valid(v); });
      if (any)
        throw_nonfinite(fn, "values", i, double(values(i)),
                        "sequence " + std::to_string(i) + " has valid tokens");
    }
    for (index_t i = 0; i < B; ++i) {
      const index_t len = layout.row_len(i);
      if (len == 0) continue;
      row_array_map<T> o(layout.row_ptr(out, i), len);
      const Mask* m = layout.mask_row(i);
      const T v = values(i);
      if (m == nullptr) {
        o.setConstant(v);
      } else {
        const_row_array_map<Mask> mm(m, len);
        o = (mm != Mask(0)).select(Eigen::Array<T, Eigen::Dynamic, 1>::Constant(len, v),
                                   Eigen::Array<T, Eigen::Dynamic, 1>::Zero(len));
      }
    }
  }
};

}  // namespace polo::detail
