// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
// policy_loss against the float64 dual-number oracle (tests/reference/policy_loss.hpp) on every
// objective, ratio level, clamp, aggregation and KL variant; every gradient against central
// finite differences away from kinks; the kink conventions at exact bounds; split invariance
// and the sum-and-count form; edge cases (all masked, length one, |log-ratio| 1e4, NaN at
// masked positions, left padding and interior spans, packed == padded); the peers' presets
// against hand-written peer formulas; and error cases that must write nothing. Runs on every
// backend in polo::test::backends.

#include "support/polo_test.hpp"

#if defined(__CUDACC__)
#if __has_include("polo/policy_loss.cuh")
#include "polo/policy_loss.cuh"
#endif
#include "polo/cpu/policy_loss.hpp"  // the CPU backend as the oracle of the large CUDA case
#else
#include "polo/cpu/policy_loss.hpp"
#endif

#include "reference/policy_loss.hpp"

#include <functional>

namespace {

using namespace polo;
using polo::test::backends;
using polo::test::buffer;
constexpr double nan_v = std::numeric_limits<double>::quiet_NaN();
constexpr double inf_v = std::numeric_limits<double>::infinity();

struct lib_out {
  policy_loss_result r;
  std::vector<double> grad;
};

/// Runs policy_loss on backend B in precision T over a padded batch (a null mask when the
/// batch has none); the gradient buffer starts at `fill`.
template <class B, class T>
lib_out run(const ref::batch& b, const policy_loss_config& c, const normalizers& nz = {}, double fill = -7.0) {
  buffer<T, B> lp(test::cast<T>(b.lp)), lo(test::cast<T>(b.lo)), adv(test::cast<T>(b.adv));
  buffer<T, B> lr(test::cast<T>(b.lref));
  buffer<T, B> g(b.B * b.T, T(fill));
  buffer<std::uint8_t, B> m(b.mask);
  padded<std::uint8_t, typename B::memory_space> layout(b.B, b.T);
  if (!b.mask.empty()) layout = padded<std::uint8_t, typename B::memory_space>(m.cview2(b.B, b.T));
  view<const T, 2, typename B::memory_space> ref_view{};
  if (!b.lref.empty()) ref_view = lr.cview2(b.B, b.T);
  lib_out o;
  try {
    o.r = policy_loss(test::make_backend<B>(), layout, lp.cview2(b.B, b.T), lo.cview2(b.B, b.T), ref_view,
                      adv.cview2(b.B, b.T), g.view2(b.B, b.T), c, nz);
  } catch (...) {
    auto h = g.to_host();
    for (auto x : h) REQUIRE(double(x) == fill);  // nothing written on error
    throw;
  }
  auto h = g.to_host();
  o.grad.assign(h.begin(), h.end());
  return o;
}

/// The same batch packed (test::pack: each row trimmed to its first..last valid token, or with
/// `prefix` kept from position 0).
template <class B, class T>
lib_out run_packed(const ref::batch& b, const policy_loss_config& c, const normalizers& nz = {}, bool prefix = false) {
  auto mask = b.mask.empty() ? std::vector<std::uint8_t>(b.B * b.T, 1) : b.mask;
  auto p = test::pack(mask, b.B, b.T, prefix);
  buffer<T, B> lp(test::cast<T>(p.take(b.lp))), lo(test::cast<T>(p.take(b.lo))), adv(test::cast<T>(p.take(b.adv)));
  buffer<T, B> lr(test::cast<T>(b.lref.empty() ? std::vector<double>{} : p.take(b.lref)));
  buffer<T, B> g(p.tokens(), T(-7));
  buffer<std::int64_t, B> off(p.offsets);
  buffer<std::uint8_t, B> pm(p.mask);
  packed<std::uint8_t, std::int64_t, typename B::memory_space> layout(off.cview1(), p.tokens(), pm.cview1());
  view<const T, 1, typename B::memory_space> ref_view{};
  if (!b.lref.empty()) ref_view = lr.cview1();
  lib_out o;
  o.r = policy_loss(test::make_backend<B>(), layout, lp.cview1(), lo.cview1(), ref_view, adv.cview1(), g.view1(), c,
                    nz);
  auto h = g.to_host();
  o.grad = p.scatter(std::vector<double>(h.begin(), h.end()), 0.0);
  return o;
}

/// A random batch: log-probs, old log-probs spread across the clip band, reference log-probs,
/// advantages broadcast per sequence (with some per-token noise, some exact zeros).
ref::batch random_batch(std::mt19937_64& g, index_t B, index_t T, test::mask_pattern p, double spread = 0.3,
                        bool per_token_adv = true) {
  ref::batch b;
  b.B = B;
  b.T = T;
  auto x = test::normal(g, B * T, 0.0, 1.0);
  auto y = test::normal(g, B * T, 0.0, spread);
  auto z = test::normal(g, B * T, 0.0, 0.5);
  auto a = test::normal(g, B, 0.0, 1.0);
  auto an = test::normal(g, B * T, 0.0, 0.5);
  b.lp.resize(B * T);
  b.lo.resize(B * T);
  b.lref.resize(B * T);
  b.adv.resize(B * T);
  for (index_t k = 0; k < B * T; ++k) {
    b.lp[k] = -std::abs(x[k]) - 0.05;
    b.lo[k] = b.lp[k] + y[k];
    b.lref[k] = b.lp[k] + z[k];
    b.adv[k] = a[k / T] + (per_token_adv ? an[k] : 0.0);
  }
  if (B > 2 && per_token_adv) b.adv[2 * T] = 0.0;  // an exact zero advantage
  b.mask = test::make_mask(g, B, T, p);
  return b;
}

/// Poisons masked positions with NaN/inf (they must never be read into a result).
void poison_masked(ref::batch& b) {
  for (index_t k = 0; k < b.B * b.T; ++k)
    if (!b.valid(k)) {
      b.lp[k] = nan_v;
      b.lo[k] = inf_v;
      b.lref[k] = -inf_v;
      b.adv[k] = nan_v;
    }
}

std::string describe(const policy_loss_config& c) {
  std::ostringstream os;
  os << "obj " << int(c.objective) << " level " << int(c.level) << " seqgrad " << int(c.sequence_gradient) << " eps "
     << c.eps_low << "/" << c.eps_high << " dual " << c.dual_clip << " delta " << c.delta << " cispo " << int(c.cispo)
     << " lr [" << c.log_ratio_min << "," << c.log_ratio_max << "] agg " << aggregation_name(c.agg) << " beta "
     << c.kl_coef << " kl{est " << int(c.kl.estimator) << " st " << c.kl.straight_through << " level "
     << int(c.kl.level) << " weight " << int(c.kl.weight) << " in " << c.kl.input_clamp << " out "
     << c.kl.output_clamp << "} kl_agg " << int(c.kl_agg) << " nonfinite " << int(c.nonfinite);
  return os.str();
}

/// Objective variants (no KL).
std::vector<policy_loss_config> objective_configs() {
  std::vector<policy_loss_config> out;
  std::vector<policy_loss_config> objs;
  objs.push_back({});
  objs.push_back({.eps_high = 0.28, .dual_clip = 3.0});
  objs.push_back({.eps_low = 0.1, .eps_high = 0.15, .dual_clip = 1.2, .delta = 1.3});
  objs.push_back({.objective = policy_objective::cispo});
  objs.push_back({.objective = policy_objective::cispo, .eps_high = 1.25, .cispo = cispo_bound::upper_raw});
  objs.push_back({.objective = policy_objective::sapo});
  objs.push_back({.objective = policy_objective::reinforce});
  for (auto o : objs)
    for (int lv = 0; lv < 3; ++lv)
      for (int cl = 0; cl < 3; ++cl)
        for (auto agg : {aggregation::token_mean, aggregation::token_sum, aggregation::seq_mean_token_mean,
                         aggregation::seq_mean_token_sum, aggregation::token_sum_norm}) {
          policy_loss_config c = o;
          c.level = lv == 0 ? ratio_level::token : ratio_level::sequence;
          c.sequence_gradient =
              lv == 2 ? sequence_ratio_gradient::straight_through : sequence_ratio_gradient::through_mean;
          if (cl == 1) c.log_ratio_min = -unbounded, c.log_ratio_max = unbounded;
          if (cl == 2) c.log_ratio_min = -0.12, c.log_ratio_max = 0.1;  // active on many tokens
          c.agg = agg;
          out.push_back(c);
        }
  return out;
}

/// KL variants (every estimator, level, weight, straight-through and clamp).
std::vector<kl_config> kl_configs() {
  std::vector<kl_config> out;
  for (auto e : {kl_estimator::k1, kl_estimator::abs, kl_estimator::k2, kl_estimator::k3})
    for (auto lv : {kl_level::token, kl_level::sequence_sum, kl_level::sequence_mean})
      for (auto w : {kl_weight::none, kl_weight::ratio, kl_weight::ratio_detached, kl_weight::score_function})
        for (bool st : {false, true})
          for (int cl = 0; cl < 4; ++cl) {
            if (lv != kl_level::token && w != kl_weight::none) continue;
            if (st && w != kl_weight::none) continue;
            kl_config k{.estimator = e, .straight_through = st, .level = lv, .weight = w};
            if (cl == 1) k.input_clamp = unbounded, k.output_clamp = unbounded;
            if (cl == 2) k.input_clamp = 0.4, k.output_clamp = lv == kl_level::token ? 0.05 : 0.3;
            if (cl == 3) k.input_clamp = 0.3;  // input clamp alone
            out.push_back(k);
          }
  return out;
}

/// Every objective configuration paired with a KL configuration (rotating), plus every KL
/// configuration on a few objectives.
std::vector<policy_loss_config> all_configs() {
  auto objs = objective_configs();
  auto kls = kl_configs();
  std::vector<policy_loss_config> out;
  for (std::size_t i = 0; i < objs.size(); ++i) {
    out.push_back(objs[i]);
    auto c = objs[i];
    c.kl_coef = 0.07;
    c.kl = kls[(i * 7) % kls.size()];
    c.kl_agg = i % 2 ? kl_aggregation::token_mean : kl_aggregation::same_as_policy;
    out.push_back(c);
  }
  for (std::size_t j = 0; j < kls.size(); ++j) {
    auto c = objs[(j * 11) % objs.size()];
    c.kl_coef = 0.3;
    c.kl = kls[j];
    c.kl_agg = j % 3 == 0 ? kl_aggregation::token_mean : kl_aggregation::same_as_policy;
    out.push_back(c);
  }
  return out;
}

normalizers norm_for(const policy_loss_config& c, int variant) {
  normalizers n;
  if (c.agg == aggregation::token_sum_norm) n.constant = 57.0;
  if (variant == 1) {
    n.tokens = 101.0;
    n.sequences = 9.0;
    n.scale = 2.0;
    n.constant = 77.0;
  }
  return n;
}

void check_against_ref(const lib_out& got, const ref::result& want, double rtol, double atol) {
  CHECK(got.r.loss == Approx(want.loss).epsilon(rtol).margin(atol));
  CHECK(got.r.policy_loss == Approx(want.policy_loss).epsilon(rtol).margin(atol));
  CHECK(got.r.kl_loss == Approx(want.kl_loss).epsilon(rtol).margin(atol));
  CHECK(got.r.policy_parts.sum == Approx(want.policy_parts_sum).epsilon(rtol).margin(atol));
  CHECK(got.r.policy_parts.count == want.policy_parts_count);
  CHECK(got.r.kl_parts.sum == Approx(want.kl_parts_sum).epsilon(rtol).margin(atol));
  CHECK(got.r.kl_parts.count == want.kl_parts_count);
  test::require_close(got.grad, want.grad, rtol, atol);
  const auto& s = got.r.stats;
  const auto& w = want.st;
  CHECK(s.tokens == w.tokens);
  CHECK(s.sequences == w.sequences);
  CHECK(s.masked_tokens == w.masked);
  CHECK(s.nonfinite_tokens == w.nonfinite);
  CHECK(s.skipped_tokens == w.skipped);
  CHECK(s.clip_upper.count == w.contributing);
  CHECK(s.clip_upper.sum == double(w.clip_upper));
  CHECK(s.clip_lower.sum == double(w.clip_lower));
  CHECK(s.clip_dual.sum == double(w.clip_dual));
  CHECK(s.delta_capped.sum == double(w.delta_capped));
  CHECK(s.clamped_log_ratio.sum == double(w.clamped_lr));
  CHECK(s.ratio.min() == Approx(w.ratio_min).epsilon(rtol).margin(atol));
  CHECK(s.ratio.max() == Approx(w.ratio_max).epsilon(rtol).margin(atol));
  CHECK(s.ratio.total.sum == Approx(w.ratio_sum).epsilon(rtol).margin(atol));
  CHECK(s.approx_kl_k1.sum == Approx(w.approx_kl_k1).epsilon(rtol).margin(atol));
  CHECK(s.approx_kl_k3.sum == Approx(w.approx_kl_k3).epsilon(rtol).margin(atol));
  CHECK(s.kl_ref.sum == Approx(w.kl_sum).epsilon(rtol).margin(atol));
  CHECK(s.kl_ref.count == w.kl_count);
  CHECK(s.kl_clamped.sum == double(w.kl_clamped));
}

}  // namespace

TEMPLATE_LIST_TEST_CASE("policy_loss matches the float64 reference for every variant", "[policy_loss]", backends) {
  using B = TestType;
  INFO("seed " << test::base_seed());
  auto g = test::rng(11);
  const auto cfgs = all_configs();
  const test::mask_pattern pats[] = {test::mask_pattern::right_pad, test::mask_pattern::left_pad,
                                     test::mask_pattern::interior_spans, test::mask_pattern::random,
                                     test::mask_pattern::with_empty_rows, test::mask_pattern::all_valid};
  for (std::size_t ci = 0; ci < cfgs.size(); ++ci) {
    const auto& c = cfgs[ci];
    const auto pat = pats[ci % 6];
    auto b = random_batch(g, 5, 7, pat, ci % 3 == 0 ? 0.05 : 0.3);
    if (ci % 4 == 1) poison_masked(b);
    const auto nz = norm_for(c, int(ci % 2));
    INFO(describe(c) << " mask " << test::name(pat) << " norm variant " << ci % 2);
    auto want = ref::policy_loss(b, c, nz);
    REQUIRE_FALSE(want.nonfinite_error);
    check_against_ref(run<B, double>(b, c, nz), want, 1e-10, 1e-12);
    check_against_ref(run<B, float>(b, c, nz), want, 2e-5, 5e-6);
  }
}

TEMPLATE_LIST_TEST_CASE("policy_loss gradients match central finite differences away from kinks",
                        "[policy_loss][gradient]", backends) {
  using B = TestType;
  INFO("seed " << test::base_seed());
  auto g = test::rng(12);
  const auto cfgs = all_configs();
  long long checked = 0, kinks = 0;
  for (std::size_t ci = 0; ci < cfgs.size(); ++ci) {
    const auto& c = cfgs[ci];
    auto b = random_batch(g, 4, 5, ci % 2 ? test::mask_pattern::interior_spans : test::mask_pattern::right_pad);
    const auto nz = norm_for(c, int(ci % 2));
    INFO(describe(c));
    auto got = run<B, double>(b, c, nz);
    const double h = 1e-6;
    for (index_t u = 0; u < b.B * b.T; ++u) {
      if (!b.valid(u)) {
        CHECK(got.grad[u] == 0.0);
        continue;
      }
      const double f0 = ref::perturbed_value(b, c, nz, u, 0.0);
      const double fp = ref::perturbed_value(b, c, nz, u, h), fm = ref::perturbed_value(b, c, nz, u, -h);
      const double left = (f0 - fm) / h, right = (fp - f0) / h, central = (fp - fm) / (2 * h);
      if (std::abs(left - right) > 1e-4 * (1.0 + std::abs(central))) {
        ++kinks;  // a kink inside [x-h, x+h]: no derivative to compare with
        continue;
      }
      ++checked;
      INFO("token " << u << " fd " << central << " grad " << got.grad[u]);
      CHECK(std::abs(got.grad[u] - central) <= 2e-6 * (1.0 + std::abs(central)));
    }
  }
  INFO("checked " << checked << " kinks " << kinks);
  CHECK(checked > 20 * kinks);
}

TEMPLATE_LIST_TEST_CASE("policy_loss kink conventions at exact bounds", "[policy_loss][kinks]", backends) {
  using B = TestType;
  // One token per sequence, all valid, token_sum (W = 1): the gradient is dL/dlogp itself.
  auto one = [](double lp, double lo, double A, double lref = 0.0) {
    ref::batch b;
    b.B = 1;
    b.T = 1;
    b.lp = {lp};
    b.lo = {lo};
    b.adv = {A};
    b.lref = {lref};
    return b;
  };
  const double lp = -1.0;
  SECTION("ratio exactly on the upper clip bound counts as unclipped: gradient -A*r") {
    auto b = one(lp, -1.25, 2.0);  // lr = 0.25 exactly
    const double r = std::exp(0.25);
    policy_loss_config c{.eps_high = r - 1.0, .agg = aggregation::token_sum};  // 1 + eps_high == r exactly
    REQUIRE(1.0 + c.eps_high == r);
    auto o = run<B, double>(b, c);
    CHECK(o.grad[0] == Approx(-2.0 * r).epsilon(1e-15));
    CHECK(o.r.stats.clip_upper.sum == 0.0);
    c.eps_high = std::nextafter(r, 0.0) - 1.0;  // one ulp inside: clipped, gradient 0
    o = run<B, double>(b, c);
    CHECK(o.grad[0] == 0.0);
    CHECK(o.r.stats.clip_upper.sum == 1.0);
  }
  SECTION("ratio exactly on the lower clip bound with A < 0 counts as unclipped") {
    auto b = one(lp, -0.75, -1.5);  // lr = -0.25
    const double r = std::exp(-0.25);
    policy_loss_config c{.eps_low = 1.0 - r, .agg = aggregation::token_sum};
    REQUIRE(1.0 - c.eps_low == r);
    auto o = run<B, double>(b, c);
    CHECK(o.grad[0] == Approx(1.5 * r).epsilon(1e-15));
    CHECK(o.r.stats.clip_lower.sum == 0.0);
  }
  SECTION("dual clip exactly tied keeps the undual-clipped gradient; strictly below takes 0") {
    auto b = one(lp, -1.5, -1.0);  // lr = 0.5, r = e^0.5 > 1.2
    const double r = std::exp(0.5);
    policy_loss_config c{.dual_clip = r, .agg = aggregation::token_sum};
    auto o = run<B, double>(b, c);
    CHECK(o.grad[0] == Approx(r).epsilon(1e-15));  // -A*r with A = -1
    CHECK(o.r.stats.clip_dual.sum == 0.0);
    c.dual_clip = std::nextafter(r, 0.0);
    o = run<B, double>(b, c);
    CHECK(o.grad[0] == 0.0);
    CHECK(o.r.stats.clip_dual.sum == 1.0);
    CHECK(o.r.loss == Approx(c.dual_clip));
  }
  SECTION("log-ratio exactly on the clamp passes the gradient; beyond it the gradient is 0") {
    auto b = one(lp, -1.5, 1.0);  // lr = 0.5
    policy_loss_config c{.objective = policy_objective::sapo, .log_ratio_max = 0.5, .agg = aggregation::token_sum};
    auto o = run<B, double>(b, c);
    CHECK(o.grad[0] != 0.0);
    CHECK(o.r.stats.clamped_log_ratio.sum == 0.0);
    c.log_ratio_max = std::nextafter(0.5, 0.0);
    o = run<B, double>(b, c);
    CHECK(o.grad[0] == 0.0);
    CHECK(o.r.stats.clamped_log_ratio.sum == 1.0);
  }
  SECTION("KL input and output clamps: on the bound the gradient passes, outside it is 0") {
    auto b = one(lp, lp, 0.0, lp + 3.0);  // d = logp - logp_ref = -3: log(pi_ref/pi) = 3 > 2.61
    const double d = -3.0;
    const double k3 = std::exp(-d) + d - 1.0, dk3 = 1.0 - std::exp(-d);
    policy_loss_config c{.agg = aggregation::token_sum, .kl_coef = 1.0};
    auto o = run<B, double>(b, c);  // polo's default: no output clamp
    CHECK(o.r.kl_loss == Approx(k3));
    CHECK(o.grad[0] == Approx(dk3));
    c.kl = presets::verl::low_var_kl;  // output clamp 10 < k3(-3) = 16.1: the gradient vanishes
    o = run<B, double>(b, c);
    CHECK(o.r.kl_loss == 10.0);
    CHECK(o.grad[0] == 0.0);
    CHECK(o.r.stats.kl_clamped.sum == 1.0);
    c.kl = presets::verl::low_var_kl_plus;  // straight-through: value clamped, gradient d
    o = run<B, double>(b, c);
    CHECK(o.r.kl_loss == 10.0);
    CHECK(o.grad[0] == Approx(d));
    c.kl = {.input_clamp = 3.0};  // |d| == input clamp: passes
    o = run<B, double>(b, c);
    CHECK(o.grad[0] == Approx(dk3));
    c.kl = {.input_clamp = std::nextafter(3.0, 0.0)};
    o = run<B, double>(b, c);
    CHECK(o.grad[0] == 0.0);
    c.kl = {.output_clamp = k3};  // |value| == output clamp: passes
    o = run<B, double>(b, c);
    CHECK(o.grad[0] == Approx(dk3));
  }
  SECTION("abs estimator at d = 0 has gradient 0; A = 0 gives exactly 0 even where r overflows") {
    auto b = one(lp, lp, 0.0, lp);
    policy_loss_config c{.agg = aggregation::token_sum, .kl_coef = 1.0, .kl = {.estimator = kl_estimator::abs}};
    CHECK(run<B, double>(b, c).grad[0] == 0.0);
    auto big = one(0.0, -1e4, 0.0);
    policy_loss_config u{.log_ratio_min = -unbounded, .log_ratio_max = unbounded, .agg = aggregation::token_sum};
    auto o = run<B, double>(big, u);
    CHECK(o.r.loss == 0.0);
    CHECK(o.grad[0] == 0.0);
  }
}

TEMPLATE_LIST_TEST_CASE("policy_loss split into micro-batches with global normalizers equals the whole batch",
                        "[policy_loss][split]", backends) {
  using B = TestType;
  INFO("seed " << test::base_seed());
  auto g = test::rng(13);
  const auto cfgs = all_configs();
  for (std::size_t ci = 0; ci < cfgs.size(); ci += 3) {
    const auto& c = cfgs[ci];
    INFO(describe(c));
    auto b = random_batch(g, 8, 6, test::mask_pattern::with_empty_rows);
    normalizers whole = norm_for(c, 0);
    whole.scale = 1.5;
    // Global counts from count_tokens over the micro-batches.
    const std::vector<std::pair<index_t, index_t>> parts = {{0, 3}, {3, 5}, {5, 8}};
    auto slice = [&](index_t r0, index_t r1) {
      ref::batch s;
      s.B = r1 - r0;
      s.T = b.T;
      auto cut = [&](const std::vector<double>& v) {
        return std::vector<double>(v.begin() + r0 * b.T, v.begin() + r1 * b.T);
      };
      s.lp = cut(b.lp);
      s.lo = cut(b.lo);
      s.lref = cut(b.lref);
      s.adv = cut(b.adv);
      s.mask.assign(b.mask.begin() + r0 * b.T, b.mask.begin() + r1 * b.T);
      return s;
    };
    token_counts total;
    for (auto [r0, r1] : parts) {
      auto s = slice(r0, r1);
      buffer<std::uint8_t, B> m(s.mask);
      total += count_tokens(test::make_backend<B>(), padded<std::uint8_t, typename B::memory_space>(m.cview2(s.B, s.T)));
    }
    normalizers global = whole;
    global.tokens = double(total.tokens);
    global.sequences = double(total.sequences);
    auto full = run<B, double>(b, c, whole);
    double loss = 0.0;
    sum_count<double> pp, kp;
    std::vector<double> grad;
    for (auto [r0, r1] : parts) {
      auto o = run<B, double>(slice(r0, r1), c, global);
      loss += o.r.loss;
      pp += o.r.policy_parts;
      kp += o.r.kl_parts;
      grad.insert(grad.end(), o.grad.begin(), o.grad.end());
    }
    CHECK(std::abs(loss - full.r.loss) <= 1e-12 * (1.0 + std::abs(full.r.loss)));
    test::require_close(grad, full.grad, 0.0, 1e-12);
    // the sum-and-count form: reduced parts give the whole batch's loss
    const double from_parts = policy_loss_from_parts(c, pp, kp, whole);
    CHECK(std::abs(from_parts - full.r.loss) <= 1e-12 * (1.0 + std::abs(full.r.loss)));
    CHECK(policy_loss_from_parts(c, full.r.policy_parts, full.r.kl_parts, whole) == Approx(full.r.loss).epsilon(1e-13));
  }
}

TEMPLATE_LIST_TEST_CASE("policy_loss edge cases", "[policy_loss][edge]", backends) {
  using B = TestType;
  auto g = test::rng(14);
  const auto cfgs = all_configs();
  SECTION("an all-masked batch gives loss 0 and gradient 0 (no NaN), for every variant") {
    auto b = random_batch(g, 3, 4, test::mask_pattern::all_valid);
    std::fill(b.mask.begin(), b.mask.end(), 0);
    poison_masked(b);
    for (const auto& c : cfgs) {
      INFO(describe(c));
      auto o = run<B, double>(b, c, norm_for(c, 0));
      CHECK(o.r.loss == 0.0);
      CHECK(o.r.policy_parts.count == 0);
      CHECK(o.r.stats.masked_tokens == 12);
      CHECK(o.r.stats.ratio.min() == 0.0);
      for (double x : o.grad) CHECK(x == 0.0);
    }
    // and an empty batch
    ref::batch e;
    auto o = run<B, float>(e, policy_loss_config{});
    CHECK(o.r.loss == 0.0);
  }
  SECTION("NaN and inf at masked positions do not leak: bitwise the result of zeros there") {
    for (std::size_t ci = 0; ci < cfgs.size(); ci += 5) {
      const auto& c = cfgs[ci];
      INFO(describe(c));
      auto b = random_batch(g, 4, 6, test::mask_pattern::interior_spans);
      auto z = b;
      for (index_t k = 0; k < b.B * b.T; ++k)
        if (!b.valid(k)) z.lp[k] = z.lo[k] = z.lref[k] = z.adv[k] = 0.0;
      poison_masked(b);
      auto x = run<B, float>(b, c, norm_for(c, 0)), y = run<B, float>(z, c, norm_for(c, 0));
      CHECK(x.r.loss == y.r.loss);
      CHECK(test::bitwise_equal(x.grad, y.grad));
      CHECK(std::isfinite(x.r.loss));
    }
  }
  SECTION("|log-ratio| up to 1e4 stays finite under the default clamp (loss, gradient, statistics)") {
    auto b = random_batch(g, 4, 6, test::mask_pattern::all_valid);
    for (index_t k = 0; k < b.B * b.T; ++k) b.lo[k] = b.lp[k] + (k % 2 ? 1e4 : -1e4) * (k % 3 ? 1.0 : 0.3);
    for (index_t k = 0; k < b.B * b.T; ++k) b.lref[k] = b.lp[k] + (k % 2 ? -1e4 : 1e4);
    for (auto c : {policy_loss_config{}, policy_loss_config{.kl_coef = 0.1},
                   policy_loss_config{.level = ratio_level::sequence, .kl_coef = 0.1},
                   presets::verl::grpo_loss, presets::openrlhf::ppo_loss, presets::verl::gspo_loss,
                   policy_loss_config{.objective = policy_objective::sapo, .kl_coef = 1.0}}) {
      INFO(describe(c));
      if (c.kl.input_clamp == unbounded && c.kl.output_clamp == unbounded) c.kl.input_clamp = 20.0;
      auto o = run<B, float>(b, c);
      auto d = run<B, double>(b, c);
      for (const auto* x : {&o, &d}) {
        CHECK(std::isfinite(x->r.loss));
        for (double v : x->grad) CHECK(std::isfinite(v));
        CHECK(std::isfinite(x->r.stats.ratio.max()));
        CHECK(std::isfinite(x->r.stats.approx_kl_k3.sum));
        CHECK(std::isfinite(x->r.stats.kl_ref.sum));
      }
      if (c.level == ratio_level::token) CHECK(d.r.stats.clamped_log_ratio.sum > 0.0);
      auto want = ref::policy_loss(b, c);
      check_against_ref(d, want, 1e-10, 1e-9);
    }
  }
  SECTION("sequences of length one, padded and packed, token and sequence level") {
    for (std::size_t ci = 0; ci < cfgs.size(); ci += 4) {
      const auto& c = cfgs[ci];
      INFO(describe(c));
      auto b = random_batch(g, 5, 1, test::mask_pattern::all_valid);
      b.mask[3] = 0;
      auto want = ref::policy_loss(b, c, norm_for(c, 0));
      check_against_ref(run<B, double>(b, c, norm_for(c, 0)), want, 1e-10, 1e-12);
      auto p = run_packed<B, double>(b, c, norm_for(c, 0));
      test::require_close(p.grad, want.grad);
      CHECK(p.r.loss == Approx(want.loss).epsilon(1e-12).margin(1e-14));
    }
  }
  SECTION("packed equals padded bitwise (left padding, interior spans, empty rows)") {
    for (std::size_t ci = 0; ci < cfgs.size(); ci += 2) {
      const auto& c = cfgs[ci];
      INFO(describe(c));
      const auto pat = ci % 4 == 0 ? test::mask_pattern::left_pad
                                   : (ci % 4 == 2 ? test::mask_pattern::interior_spans : test::mask_pattern::with_empty_rows);
      auto b = random_batch(g, 6, 9, pat);
      poison_masked(b);
      auto x = run<B, float>(b, c, norm_for(c, 1));
      for (bool prefix : {false, true}) {  // packed rows from the first valid token, or from 0
        INFO("packed rows keep their masked prefix: " << prefix);
        auto y = run_packed<B, float>(b, c, norm_for(c, 1), prefix);
        CHECK(x.r.loss == y.r.loss);
        CHECK(x.r.kl_loss == y.r.kl_loss);
        CHECK(x.r.policy_parts == y.r.policy_parts);
        CHECK(x.r.stats.approx_kl_k3 == y.r.stats.approx_kl_k3);
        CHECK(x.r.stats.clip_upper == y.r.stats.clip_upper);
        CHECK(x.r.stats.tokens == y.r.stats.tokens);
        CHECK(test::bitwise_equal(x.grad, y.grad));
      }
    }
  }
  SECTION("strided [B,T] views (row stride > T, a slice of a wider buffer) equal dense ones bitwise") {
    const index_t Bn = 4, T = 6, S = 9;
    auto b = random_batch(g, Bn, T, test::mask_pattern::interior_spans);
    auto widen = [&](const std::vector<double>& v, double fill) {
      std::vector<double> w(Bn * S, fill);
      for (index_t i = 0; i < Bn; ++i)
        for (index_t t = 0; t < T; ++t) w[i * S + t] = v[i * T + t];
      return w;
    };
    std::vector<std::uint8_t> wm(Bn * S, 1);
    for (index_t i = 0; i < Bn; ++i)
      for (index_t t = 0; t < T; ++t) wm[i * S + t] = b.mask[i * T + t];
    buffer<double, B> lp(widen(b.lp, nan_v)), lo(widen(b.lo, nan_v)), lr(widen(b.lref, nan_v)),
        adv(widen(b.adv, nan_v)), gr(Bn * S, -7.0);
    buffer<std::uint8_t, B> m(wm);
    using Sp = typename B::memory_space;
    auto cv = [&](buffer<double, B>& x) { return view<const double, 2, Sp>{x.view1().data, Bn, T, S}; };
    padded<std::uint8_t, Sp> layout(view<const std::uint8_t, 2, Sp>{m.cview1().data, Bn, T, S});
    for (std::size_t ci = 0; ci < cfgs.size(); ci += 7) {
      const auto& c = cfgs[ci];
      INFO(describe(c));
      auto r = policy_loss(test::make_backend<B>(), layout, cv(lp), cv(lo), cv(lr), cv(adv),
                           view<double, 2, Sp>{gr.view1().data, Bn, T, S}, c, norm_for(c, 0));
      auto dense = run<B, double>(b, c, norm_for(c, 0));
      CHECK(r.loss == dense.r.loss);
      auto h = gr.to_host();
      for (index_t i = 0; i < Bn; ++i)
        for (index_t t = 0; t < S; ++t) {
          if (t < T)
            CHECK(h[i * S + t] == dense.grad[i * T + t]);
          else
            CHECK(h[i * S + t] == -7.0);  // outside the view: untouched
        }
    }
  }
  SECTION("token_nonfinite_policy::skip leaves the token (or its sequence) out and counts it") {
    for (std::size_t ci = 0; ci < cfgs.size(); ci += 3) {
      auto c = cfgs[ci];
      c.nonfinite = token_nonfinite_policy::skip;
      INFO(describe(c));
      auto b = random_batch(g, 5, 6, test::mask_pattern::right_pad);
      b.lp[0] = nan_v;        // row 0, always valid
      b.adv[4 * 6] = inf_v;   // row 4, first token
      auto want = ref::policy_loss(b, c, norm_for(c, 0));
      auto got = run<B, double>(b, c, norm_for(c, 0));
      check_against_ref(got, want, 1e-10, 1e-12);
      CHECK(got.r.stats.nonfinite_tokens == 2);
      CHECK(got.grad[0] == 0.0);
    }
  }
}

TEMPLATE_LIST_TEST_CASE("policy_loss error cases throw and write nothing", "[policy_loss][errors]", backends) {
  using B = TestType;
  auto g = test::rng(15);
  auto b = random_batch(g, 3, 4, test::mask_pattern::right_pad);
  auto bad_cfg = [&](policy_loss_config c, normalizers nz = {}) {
    INFO(describe(c));
    CHECK_THROWS_AS((run<B, float>(b, c, nz)), config_error);
  };
  bad_cfg({.eps_low = -0.1});
  bad_cfg({.eps_low = 1.5});
  bad_cfg({.eps_high = -1.0});
  bad_cfg({.eps_high = nan_v});
  bad_cfg({.objective = policy_objective::cispo, .eps_high = 0.0, .cispo = cispo_bound::upper_raw});
  bad_cfg({.dual_clip = 1.0});
  bad_cfg({.dual_clip = nan_v});
  bad_cfg({.delta = 0.9});
  bad_cfg({.sapo_tau_pos = 0.0});
  bad_cfg({.sapo_tau_neg = inf_v});
  bad_cfg({.log_ratio_min = 0.5});
  bad_cfg({.log_ratio_max = -0.5});
  bad_cfg({.log_ratio_min = 0.0, .log_ratio_max = 0.0});
  bad_cfg({.kl_coef = -0.1});
  bad_cfg({.kl_coef = inf_v});
  bad_cfg({.kl_coef = 0.1, .kl = {.input_clamp = 0.0}});
  bad_cfg({.kl_coef = 0.1, .kl = {.output_clamp = -1.0}});
  bad_cfg({.kl_coef = 0.1, .kl = {.level = kl_level::sequence_sum, .weight = kl_weight::ratio}});
  bad_cfg({.kl_coef = 0.1, .kl = {.straight_through = true, .weight = kl_weight::score_function}});
  bad_cfg({.agg = aggregation::token_sum_norm});  // no constant
  bad_cfg({}, normalizers{.tokens = nan_v});
  bad_cfg({}, normalizers{.scale = inf_v});

  SECTION("a NaN at a valid position names the argument and its flat index") {
    for (auto [which, name] : {std::pair{0, "logp"}, {1, "logp_old"}, {2, "logp_ref"}, {3, "advantages"}}) {
      auto x = b;
      std::vector<double>* v[] = {&x.lp, &x.lo, &x.lref, &x.adv};
      (*v[which])[4] = which == 2 ? -inf_v : nan_v;  // row 1, col 0 (valid under right padding)
      REQUIRE(x.valid(4));
      try {
        run<B, double>(x, policy_loss_config{.kl_coef = 0.1});
        FAIL("expected nonfinite_error");
      } catch (const nonfinite_error& e) {
        CHECK(e.index() == 4);
        CHECK_THAT(e.what(), Catch::Contains(std::string("'") + name + "'") && Catch::Contains("index 4"));
      }
    }
    // logp_ref is not read without a KL term
    auto x = b;
    x.lref[4] = nan_v;
    CHECK_NOTHROW(run<B, double>(x, policy_loss_config{}));
  }
  SECTION("shapes, a missing logp_ref and an overlapping output") {
    buffer<float, B> lp(test::cast<float>(b.lp)), w(12, -7.f), wide(15, 0.f);
    buffer<std::uint8_t, B> m(b.mask);
    padded<std::uint8_t, typename B::memory_space> layout(m.cview2(3, 4));
    auto be = test::make_backend<B>();
    CHECK_THROWS_AS(policy_loss(be, layout, lp.cview2(3, 4), lp.cview2(3, 4), {}, wide.cview2(3, 5), w.view2(3, 4)),
                    shape_error);
    CHECK_THROWS_AS(policy_loss(be, layout, lp.cview2(3, 4), lp.cview2(3, 4), {}, lp.cview2(3, 4), w.view2(3, 4),
                                policy_loss_config{.kl_coef = 0.1}),
                    shape_error);
    CHECK_THROWS_AS(policy_loss(be, layout, lp.cview2(3, 4), lp.cview2(3, 4), {}, lp.cview2(3, 4), lp.view2(3, 4)),
                    shape_error);
    for (auto x : w.to_host()) CHECK(x == -7.f);
    // packed offsets that do not end at N
    std::vector<std::int64_t> off = {0, 5, 11};
    buffer<std::int64_t, B> ob(off);
    packed<std::uint8_t, std::int64_t, typename B::memory_space> pk(ob.cview1(), 12);
    CHECK_THROWS_AS(policy_loss(be, pk, lp.cview1(), lp.cview1(), {}, lp.cview1(), w.view1()), value_error);
    for (auto x : w.to_host()) CHECK(x == -7.f);
  }
}

namespace {

// ---- hand-written peer formulas (value only), for the presets --------------------------------

double masked_mean_all(const std::vector<double>& x, const ref::batch& b) {
  double s = 0, n = 0;
  for (index_t k = 0; k < b.B * b.T; ++k)
    if (b.valid(k)) s += x[k], n += 1;
  return s / n;
}
double seq_mean_token_mean(const std::vector<double>& x, const ref::batch& b) {
  double tot = 0;
  for (index_t i = 0; i < b.B; ++i) {
    double s = 0, n = 0;
    for (index_t t = 0; t < b.T; ++t)
      if (b.valid(i * b.T + t)) s += x[i * b.T + t], n += 1;
    tot += s / std::max(n, 1.0);
  }
  return tot / double(b.B);
}

/// verl compute_policy_loss_vanilla (+ kl_penalty low_var_kl with use_kl_loss) at lp.
double verl_vanilla(const ref::batch& b, const std::vector<double>& lp, double el, double eh, double cc, double klc) {
  std::vector<double> pg(b.B * b.T, 0.0), kl(b.B * b.T, 0.0);
  for (index_t k = 0; k < b.B * b.T; ++k) {
    if (!b.valid(k)) continue;
    double nak = std::clamp(lp[k] - b.lo[k], -20.0, 20.0);
    double ratio = std::exp(nak);
    double A = b.adv[k];
    double pg1 = -A * ratio, pg2 = -A * std::clamp(ratio, 1 - el, 1 + eh);
    double c1 = std::max(pg1, pg2);
    double pg3 = -A * cc;
    double c2 = std::min(pg3, c1);
    pg[k] = A < 0 ? c2 : c1;
    double x = std::clamp(b.lref[k] - lp[k], -20.0, 20.0);
    kl[k] = std::clamp(std::exp(x) - x - 1, -10.0, 10.0);
  }
  return masked_mean_all(pg, b) + klc * masked_mean_all(kl, b);
}

/// TRL GRPOTrainer _compute_loss at lp: coef1 = e^(lp-old), -min(coef1*A, coef2*A) + beta*k3.
double trl_loss(const ref::batch& b, const std::vector<double>& lp, double e, double eh, double beta, bool grpo_agg,
                bool seq_level, double dr_const = 0) {
  std::vector<double> ptl(b.B * b.T, 0.0);
  for (index_t i = 0; i < b.B; ++i) {
    double s = 0, n = 0;
    for (index_t t = 0; t < b.T; ++t)
      if (b.valid(i * b.T + t)) s += lp[i * b.T + t] - b.lo[i * b.T + t], n += 1;
    for (index_t t = 0; t < b.T; ++t) {
      index_t k = i * b.T + t;
      if (!b.valid(k)) continue;
      double coef1 = std::exp(seq_level ? s / std::max(n, 1.0) : lp[k] - b.lo[k]);
      double coef2 = std::clamp(coef1, 1 - e, 1 + eh);
      double A = b.adv[k];
      double d = b.lref[k] - lp[k];
      ptl[k] = -std::min(coef1 * A, coef2 * A) + beta * (std::exp(d) - d - 1);
    }
  }
  if (dr_const > 0) {
    double s = 0;
    for (index_t k = 0; k < b.B * b.T; ++k)
      if (b.valid(k)) s += ptl[k];
    return s / dr_const;
  }
  return grpo_agg ? seq_mean_token_mean(ptl, b) : masked_mean_all(ptl, b);
}

/// OpenRLHF PolicyLoss (token level) + compute_approx_kl k3 as a token-mean loss.
double openrlhf_loss(const ref::batch& b, const std::vector<double>& lp, double kl_coef) {
  std::vector<double> l(b.B * b.T, 0.0), kl(b.B * b.T, 0.0);
  for (index_t k = 0; k < b.B * b.T; ++k) {
    if (!b.valid(k)) continue;
    double ratio = std::exp(std::clamp(lp[k] - b.lo[k], -20.0, 20.0));
    double s1 = ratio * b.adv[k], s2 = std::clamp(ratio, 0.8, 1.2) * b.adv[k];
    l[k] = -std::min(s1, s2);
    double lr = -(lp[k] - b.lref[k]);
    kl[k] = std::clamp(std::exp(lr) - 1 - lr, -10.0, 10.0);
  }
  return masked_mean_all(l, b) + kl_coef * masked_mean_all(kl, b);
}

/// NeMo-RL ClippedPGLoss value (token level): clip loss + 0.01 * clamp(k3(clamp(ref-lp,+-20)),+-10).
double nemo_loss(const ref::batch& b, const std::vector<double>& lp, int objective) {
  std::vector<double> l(b.B * b.T, 0.0), kl(b.B * b.T, 0.0);
  for (index_t k = 0; k < b.B * b.T; ++k) {
    if (!b.valid(k)) continue;
    double r = std::exp(lp[k] - b.lo[k]), A = b.adv[k];
    double rc = std::clamp(r, 0.8, 1.2);
    if (objective == 0) l[k] = std::max(-A * r, -A * rc);
    if (objective == 1) l[k] = -rc * A * lp[k];  // use_cispo (value; the weight is detached)
    if (objective == 2) l[k] = -A * lp[k];       // disable_ppo_ratio
    double x = std::clamp(b.lref[k] - lp[k], -20.0, 20.0);
    kl[k] = std::clamp(std::exp(x) - x - 1, -10.0, 10.0);
  }
  return masked_mean_all(l, b) + 0.01 * masked_mean_all(kl, b);
}

/// Central difference of a peer formula in logp[u].
double fd(const std::function<double(const std::vector<double>&)>& f, std::vector<double> lp, index_t u) {
  const double h = 1e-6, x = lp[u];
  lp[u] = x + h;
  double fp = f(lp);
  lp[u] = x - h;
  double fm = f(lp);
  return (fp - fm) / (2 * h);
}

}  // namespace

TEMPLATE_LIST_TEST_CASE("policy_loss presets reproduce the peers' formulas", "[policy_loss][presets]", backends) {
  using B = TestType;
  INFO("seed " << test::base_seed());
  auto g = test::rng(16);
  auto b = random_batch(g, 6, 8, test::mask_pattern::right_pad, 0.25);
  for (index_t k = 0; k < b.B * b.T; ++k) b.lref[k] = b.lp[k] + (k % 9 == 0 ? 3.5 : 0.4 * std::sin(double(k)));
  auto check = [&](const policy_loss_config& c, const std::function<double(const std::vector<double>&)>& peer,
                   bool check_grad = true, normalizers nz = {}) {
    INFO(describe(c));
    auto o = run<B, double>(b, c, nz);
    CHECK(o.r.loss == Approx(peer(b.lp)).epsilon(1e-12).margin(1e-14));
    if (!check_grad) return;
    for (index_t u = 0; u < b.B * b.T; ++u)
      if (b.valid(u)) {
        double f = fd(peer, b.lp, u);
        INFO("token " << u);
        CHECK(o.grad[u] == Approx(f).epsilon(1e-5).margin(1e-7));
      }
  };
  // Tokens exactly on a kink are not expected with random data; the FD gradient is then exact.
  check(presets::verl::ppo_loss, [&](auto& lp) { return verl_vanilla(b, lp, 0.2, 0.2, 3.0, 0.0); });
  check(presets::verl::grpo_loss, [&](auto& lp) { return verl_vanilla(b, lp, 0.2, 0.2, 3.0, 0.001); });
  check(presets::verl::dapo_loss, [&](auto& lp) { return verl_vanilla(b, lp, 0.2, 0.28, 3.0, 0.0); });
  auto trl_dapo = presets::trl::dapo_loss;
  trl_dapo.kl_coef = 0.04;
  check(trl_dapo, [&](auto& lp) { return trl_loss(b, lp, 0.2, 0.2, 0.04, false, false); });
  auto trl_grpo = presets::trl::grpo_loss;
  trl_grpo.kl_coef = 0.04;
  check(trl_grpo, [&](auto& lp) { return trl_loss(b, lp, 0.2, 0.2, 0.04, true, false); });
  check(presets::trl::dr_grpo_loss, [&](auto& lp) { return trl_loss(b, lp, 0.2, 0.2, 0.0, false, false, 6.0 * 8.0); },
        true, normalizers{.constant = 48.0});
  check(presets::trl::gspo_loss, [&](auto& lp) { return trl_loss(b, lp, 3e-4, 4e-4, 0.0, true, true); });
  check(presets::openrlhf::grpo_loss, [&](auto& lp) { return openrlhf_loss(b, lp, 0.01); });
  // NeMo: the KL weight e^(lp - sg lp) changes the gradient, not the value; CISPO's weight is
  // detached: values only, gradients are covered by the reference test.
  check(presets::nemo::grpo_loss, [&](auto& lp) { return nemo_loss(b, lp, 0); }, false);
  check(presets::nemo::cispo_loss, [&](auto& lp) { return nemo_loss(b, lp, 1); }, false);
  check(presets::nemo::reinforce_loss, [&](auto& lp) { return nemo_loss(b, lp, 2); }, false);
  SECTION("TRL grpo's mean over all rows: an all-masked row counts with normalizers::sequences = B") {
    auto e = b;
    for (index_t t = 0; t < e.T; ++t) e.mask[t] = 0;
    auto o = run<B, double>(e, presets::trl::grpo_loss, normalizers{.sequences = double(e.B)});
    CHECK(o.r.loss == Approx(trl_loss(e, e.lp, 0.2, 0.2, 0.0, true, false)).epsilon(1e-12));
  }
  SECTION("NeMo's KL gradient is k3' + k3 (the score-function weight)") {
    auto one = b;
    std::fill(one.adv.begin(), one.adv.end(), 0.0);
    auto o = run<B, double>(one, presets::nemo::grpo_loss);
    double n = 0;
    for (index_t k = 0; k < b.B * b.T; ++k) n += b.valid(k);
    for (index_t k = 0; k < b.B * b.T; ++k) {
      if (!b.valid(k)) continue;
      double x = b.lref[k] - b.lp[k];
      double k3 = std::exp(x) - x - 1, dk3 = 1 - std::exp(x);
      double want = std::abs(k3) > 10 ? 0.0 : 0.01 * (dk3 + k3) / n;
      CHECK(o.grad[k] == Approx(want).epsilon(1e-12).margin(1e-15));
    }
  }
  SECTION("verl GSPO (straight-through) equals TRL GSPO (through the mean) when A is per sequence") {
    auto s = random_batch(g, 6, 8, test::mask_pattern::right_pad, 1e-4, false);
    auto v = run<B, double>(s, presets::verl::gspo_loss), t = run<B, double>(s, presets::trl::gspo_loss);
    CHECK(v.r.loss == Approx(t.r.loss).epsilon(1e-13));
    test::require_close(v.grad, t.grad, 1e-12, 1e-15);
  }
}

// detail::exp_expm1_f32 (the float kernels' shared e^x and e^x - 1 of the clamped log-ratio)
// against double exp / expm1 at every 1009th float of [-80, 80] in both signs, every float
// around the k = 0 / 1 boundary (|x| ~ ln2 / 2, its worst case), and exact points; in ulps of
// the float nearest the double result. On the host here; the CUDA build also checks that the
// device's bits are the host's.
namespace {
std::vector<float> exp_expm1_points() {
  std::vector<float> xs;
  auto from_bits = [](std::uint32_t u) {
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
  };
  for (std::uint32_t u = 0; u <= 0x42A00000u; u += 1009) xs.insert(xs.end(), {from_bits(u), -from_bits(u)});
  for (float x = 0.33f; x < 0.36f; x = std::nextafter(x, 1.0f)) xs.insert(xs.end(), {x, -x});
  xs.insert(xs.end(), {0.0f, -0.0f, 80.0f, -80.0f, 1e-30f, -1e-30f, 1.17549435e-38f, 0.5f, -0.5f, 1.0f, -1.0f});
  return xs;
}
}  // namespace

#if !defined(__CUDACC__)
static double ulps_from(float got, double want) {
  const float wf = static_cast<float>(want);
  if (wf == 0.0f) return got == 0.0f ? 0.0 : 1e30;
  int ex = 0;
  std::frexp(wf, &ex);
  return std::abs(double(got) - want) / std::ldexp(1.0, ex - 24);
}
TEST_CASE("exp_expm1_f32 is within 1.06 / 1.65 ulp of double exp / expm1 on [-80, 80]", "[policy_loss][math]") {
  const auto xs = exp_expm1_points();
  double worst_e = 0.0, worst_em = 0.0;
  float at_e = 0.0f, at_em = 0.0f;
  for (float x : xs) {
    float e = 0.0f, em = 0.0f;
    detail::exp_expm1_f32(x, e, em);
    const double ue = ulps_from(e, std::exp(double(x))), um = ulps_from(em, std::expm1(double(x)));
    if (ue > worst_e) worst_e = ue, at_e = x;
    if (um > worst_em) worst_em = um, at_em = x;
  }
  INFO(xs.size() << " points; e worst " << worst_e << " ulp at " << at_e << ", em worst " << worst_em << " ulp at "
                 << at_em);
  CHECK(worst_e <= 1.06);  // the bounds over every float of the range (header comment)
  CHECK(worst_em <= 1.65);
  CHECK(worst_em > 1.0);  // the sweep reaches the boundary's worst case (the documented bound is tight)
  float e = 1.0f, em = 1.0f;
  detail::exp_expm1_f32(0.0f, e, em);
  CHECK((e == 1.0f && em == 0.0f));
  detail::exp_expm1_f32(1e-30f, e, em);
  CHECK((e == 1.0f && em == 1e-30f));  // tiny x: e^x - 1 = x exactly, no cancellation
  detail::exp_expm1_f32(std::numeric_limits<float>::quiet_NaN(), e, em);
  CHECK((std::isnan(e) && std::isnan(em)));
}
#else
static __global__ void exp_expm1_kernel(const float* x, float* e, float* em, index_t n) {
  const index_t i = index_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) detail::exp_expm1_f32(x[i], e[i], em[i]);
}
TEST_CASE("cuda: exp_expm1_f32 gives the host's bits on the device", "[policy_loss][math][cuda]") {
  const auto xs = exp_expm1_points();
  const index_t n = index_t(xs.size());
  buffer<float, polo::cuda> xb(xs), eb(n, 0.0f), emb(n, 0.0f);
  exp_expm1_kernel<<<unsigned((n + 255) / 256), 256>>>(xb.cview1().data, eb.view1().data, emb.view1().data, n);
  test::require_cuda(cudaGetLastError(), "exp_expm1_kernel launch");
  const auto e = eb.to_host(), em = emb.to_host();
  std::vector<float> he(xs.size()), hem(xs.size());
  for (std::size_t k = 0; k < xs.size(); ++k) detail::exp_expm1_f32(xs[k], he[k], hem[k]);
  CHECK(test::bitwise_equal(e, he));
  CHECK(test::bitwise_equal(em, hem));
}
#endif

#if defined(__CUDACC__)
// Many rows of several chunks each: the CUDA final reduction runs in several blocks (256 rows
// each) and the last block combines them; the per-token math runs in float for float inputs.
// The float64 oracle is O(N^2) in its gradient, so the check is against the CPU backend (itself
// checked against the oracle above) in double on the same float-representable inputs, kept
// 2e-5 away from every kink in log-ratio so that float rounding cannot flip a clip decision.
lib_out run_cpu(const ref::batch& b, const policy_loss_config& c) {
  std::vector<double> g(b.B * b.T, -7.0);
  auto v = [&](const std::vector<double>& x) { return view<const double, 2, host_space>{x.data(), b.B, b.T, b.T}; };
  padded<std::uint8_t, host_space> layout(view<const std::uint8_t, 2, host_space>{b.mask.data(), b.B, b.T, b.T});
  lib_out o;
  o.r = policy_loss(polo::cpu{}, layout, v(b.lp), v(b.lo), v(b.lref), v(b.adv),
                    view<double, 2, host_space>{g.data(), b.B, b.T, b.T}, c);
  o.grad = g;
  return o;
}

void check_against_cpu(const lib_out& got, const lib_out& want, double rtol, double atol) {
  const auto& r = got.r;
  const auto& w = want.r;
  CHECK(r.loss == Approx(w.loss).epsilon(rtol).margin(atol));
  CHECK(r.policy_loss == Approx(w.policy_loss).epsilon(rtol).margin(atol));
  CHECK(r.kl_loss == Approx(w.kl_loss).epsilon(rtol).margin(atol));
  CHECK(r.policy_parts.sum == Approx(w.policy_parts.sum).epsilon(rtol).margin(atol));
  CHECK(r.policy_parts.count == w.policy_parts.count);
  CHECK(r.kl_parts.sum == Approx(w.kl_parts.sum).epsilon(rtol).margin(atol));
  CHECK(r.kl_parts.count == w.kl_parts.count);
  double scale = 0;
  for (double x : want.grad) scale = std::max(scale, std::abs(x));
  test::require_close(got.grad, want.grad, rtol, 1e-6 * scale);
  const auto& s = r.stats;
  const auto& t = w.stats;
  CHECK(s.tokens == t.tokens);
  CHECK(s.sequences == t.sequences);
  CHECK(s.masked_tokens == t.masked_tokens);
  CHECK(s.nonfinite_tokens == t.nonfinite_tokens);
  CHECK(s.skipped_tokens == t.skipped_tokens);
  CHECK(s.clip_upper == t.clip_upper);
  CHECK(s.clip_lower == t.clip_lower);
  CHECK(s.clip_dual == t.clip_dual);
  CHECK(s.delta_capped == t.delta_capped);
  CHECK(s.clamped_log_ratio == t.clamped_log_ratio);
  CHECK(s.ratio.total.count == t.ratio.total.count);
  CHECK(s.ratio.total.sum == Approx(t.ratio.total.sum).epsilon(rtol));
  CHECK(s.ratio.min() == Approx(t.ratio.min()).epsilon(rtol));
  CHECK(s.ratio.max() == Approx(t.ratio.max()).epsilon(rtol));
  CHECK(s.approx_kl_k1.sum == Approx(t.approx_kl_k1.sum).epsilon(rtol).margin(atol));
  CHECK(s.approx_kl_k3.sum == Approx(t.approx_kl_k3.sum).epsilon(rtol).margin(atol));
  CHECK(s.kl_ref.sum == Approx(t.kl_ref.sum).epsilon(rtol).margin(atol));
  CHECK(s.kl_ref.count == t.kl_ref.count);
  CHECK(s.kl_clamped == t.kl_clamped);
}

TEMPLATE_LIST_TEST_CASE("cuda: many rows of several chunks match the CPU backend", "[policy_loss][cuda][large]",
                        backends) {
  using B = TestType;
  INFO("seed " << test::base_seed());
  auto g = test::rng(9003);
  auto b = random_batch(g, 300, 2500, test::mask_pattern::random);
  for (auto* v : {&b.lp, &b.lo, &b.lref, &b.adv})
    for (double& x : *v) x = double(float(x));
  // Kinks of the configs below in log-ratio (clip bounds, dual clip, delta, the log-ratio
  // clamp) and in logp - logp_ref (the KL input clamp), kept 2e-5 away.
  const double kinks[] = {std::log(0.8), std::log(1.2), std::log(1.28), std::log(3.0),
                          std::log(1.8), std::log(2.0), -0.9, 0.9};
  for (index_t k = 0; k < b.B * b.T; ++k) {
    for (double kink : kinks)
      if (std::abs((b.lp[k] - b.lo[k]) - kink) < 2e-5) b.lo[k] = double(float(b.lo[k] - 1e-4));
    if (std::abs(std::abs(b.lp[k] - b.lref[k]) - 1.2) < 2e-5) b.lref[k] = double(float(b.lref[k] - 1e-4));
  }
  // `every_count` makes each of the main kernel's eight packed counts nonzero (clip upper and
  // lower, dual clip, delta cap, clamped log-ratio, clamped KL; valid tokens; non-finite in
  // the section below), all in the float path (its clamp lies within +-80).
  const policy_loss_config every_count{.eps_high = 0.28, .dual_clip = 1.8, .delta = 2.0, .log_ratio_min = -0.9,
                                       .log_ratio_max = 0.9, .kl_coef = 0.01, .kl = {.input_clamp = 1.2}};
  const policy_loss_config cfgs[] = {{.eps_high = 0.28, .dual_clip = 3.0, .kl_coef = 0.01},
                                     every_count,
                                     presets::verl::grpo_loss, presets::trl::gspo_loss,
                                     {.objective = policy_objective::sapo, .kl_coef = 0.05}};
  for (const auto& c : cfgs) {
    INFO(describe(c));
    const auto want = run_cpu(b, c);
    if (c.objective == policy_objective::clip) CHECK(want.r.stats.clip_upper.sum + want.r.stats.clip_lower.sum > 0.0);
    if (&c == &cfgs[1]) {
      const auto& s = want.r.stats;
      CHECK(s.clip_upper.sum > 0.0);
      CHECK(s.clip_lower.sum > 0.0);
      CHECK(s.clip_dual.sum > 0.0);
      CHECK(s.delta_capped.sum > 0.0);
      CHECK(s.clamped_log_ratio.sum > 0.0);
      CHECK(s.kl_clamped.sum > 0.0);
    }
    check_against_cpu(run<B, double>(b, c), want, 1e-10, 1e-12);
    check_against_cpu(run<B, float>(b, c), want, 2e-5, 5e-6);
  }
  SECTION("a non-finite input in the last row throws and writes nothing (error mode)") {
    auto e = b;
    index_t k = (b.B - 1) * b.T + b.T - 1;
    while (!e.valid(k)) --k;
    e.adv[k] = nan_v;
    CHECK_THROWS_AS((run<B, float>(e, cfgs[0])), nonfinite_error);
    auto c = cfgs[0];
    c.nonfinite = token_nonfinite_policy::skip;
    const auto s = run<B, float>(e, c);
    CHECK(s.r.stats.nonfinite_tokens == 1);
    CHECK(s.grad[k] == 0.0);
  }
}

// The fused mode (no sequence-level term: no plan kernel; the count kernel tallies the valid
// tokens with integer atomics, its last block writes the call's totals, and each row's weights
// come from its tally) on a packed batch of 520 rows, rows 256..511 empty (their tallies never
// move), mostly short rows (32-thread blocks of 256-token chunks) and one row of 9000 tokens (36
// chunks adding to one row's tally). GSPO (the plan kernel) on the same batch. Against the CPU
// backend on the padded batch (the packed layout's masked count is its own), and bitwise run to
// run. Then 4200 rows of 6 tokens with empty rows (more rows than the count kernel's 256
// threads, and than the 4096 the fused mode used to be limited to), token_mean and
// seq_mean_token_mean, and a KL aggregated by token_mean under seq_mean_token_mean (the two
// weights differ).
TEMPLATE_LIST_TEST_CASE("cuda: the fused plan (tallies, empty rows, a row of many chunks) matches the CPU",
                        "[policy_loss][cuda][large]", backends) {
  using B = TestType;
  INFO("seed " << test::base_seed());
  auto g = test::rng(9004);
  const index_t Bn = 520, T = 9000, longest = 515;
  auto b = random_batch(g, Bn, T, test::mask_pattern::all_valid);
  for (auto* v : {&b.lp, &b.lo, &b.lref, &b.adv})
    for (double& x : *v) x = double(float(x));
  const double kinks[] = {std::log(0.8), std::log(1.2), std::log(1.28), std::log(3.0)};
  for (index_t k = 0; k < Bn * T; ++k)
    for (double kink : kinks)
      if (std::abs((b.lp[k] - b.lo[k]) - kink) < 2e-5) b.lo[k] = double(float(b.lo[k] - 1e-4));
  std::uniform_int_distribution<index_t> len(1, 40);
  std::bernoulli_distribution hole(0.2);
  for (index_t i = 0; i < Bn; ++i) {
    const index_t n = i == longest ? T : (i >= 256 && i < 512 ? 0 : len(g));
    for (index_t t = 0; t < T; ++t) b.mask[i * T + t] = t < n && !(t > 0 && t + 1 < n && hole(g)) ? 1 : 0;
  }
  const auto p = test::pack(b.mask, Bn, T);
  index_t valid = 0;
  for (auto m : p.mask) valid += m ? 1 : 0;
  REQUIRE(p.offsets[512] == p.offsets[256]);
  REQUIRE(p.offsets[longest + 1] - p.offsets[longest] == T);
  const policy_loss_config cfgs[] = {{.eps_high = 0.28, .dual_clip = 3.0, .kl_coef = 0.01},
                                     presets::verl::grpo_loss,
                                     {.agg = aggregation::seq_mean_token_mean, .kl_coef = 0.02},
                                     presets::trl::gspo_loss};
  for (const auto& c : cfgs) {
    INFO(describe(c));
    auto want = run_cpu(b, c);
    want.r.stats.masked_tokens = p.tokens() - valid;
    check_against_cpu(run_packed<B, double>(b, c), want, 1e-10, 1e-12);
    const auto x = run_packed<B, float>(b, c), y = run_packed<B, float>(b, c);
    check_against_cpu(x, want, 2e-5, 5e-6);
    CHECK(std::memcmp(&x.r.loss, &y.r.loss, sizeof(double)) == 0);
    CHECK(std::memcmp(&x.r.stats.ratio.total.sum, &y.r.stats.ratio.total.sum, sizeof(double)) == 0);
    CHECK(std::memcmp(&x.r.stats.approx_kl_k3.sum, &y.r.stats.approx_kl_k3.sum, sizeof(double)) == 0);
    CHECK(test::bitwise_equal(x.grad, y.grad));
  }
  SECTION("many short rows") {
    const index_t Bm = 4200, Tm = 6;
    auto m = random_batch(g, Bm, Tm, test::mask_pattern::with_empty_rows);
    for (auto* v : {&m.lp, &m.lo, &m.lref, &m.adv})
      for (double& x : *v) x = double(float(x));
    const policy_loss_config kl_tok{
        .agg = aggregation::seq_mean_token_mean, .kl_coef = 0.05, .kl_agg = kl_aggregation::token_mean};
    for (const auto& c : {cfgs[0], cfgs[2], kl_tok}) {
      INFO(describe(c));
      const auto want = run_cpu(m, c);
      check_against_cpu(run<B, double>(m, c), want, 1e-10, 1e-12);
      check_against_cpu(run<B, float>(m, c), want, 2e-5, 5e-6);
    }
  }
}

// Determinism of the CUDA policy loss: the loss, its parts, every statistic and the gradient,
// run twice on the same inputs, agree bitwise (token level with a KL term, and GSPO's
// sequence-level ratio through the mean).
TEMPLATE_LIST_TEST_CASE("cuda: policy_loss is bitwise deterministic", "[policy_loss][cuda][determinism]", backends) {
  using Bk = TestType;
  auto g = test::rng(9002);
  const index_t B = 40, Tn = 5000;
  auto m = test::make_mask(g, B, Tn, test::mask_pattern::random);
  auto lp = test::normal(g, B * Tn, -1.0, 0.5), lo = test::normal(g, B * Tn, -1.0, 0.5);
  auto lr = test::normal(g, B * Tn, -1.0, 0.5), a = test::normal(g, B * Tn);
  buffer<std::uint8_t, Bk> mb(m);
  buffer<float, Bk> lpb(test::cast<float>(lp)), lob(test::cast<float>(lo)), lrb(test::cast<float>(lr)),
      ab(test::cast<float>(a)), g1(B * Tn, 0.f), g2(B * Tn, 1.f);
  padded<std::uint8_t, typename Bk::memory_space> L(mb.cview2(B, Tn));
  policy_loss_config tok{.eps_high = 0.28, .dual_clip = 3.0, .kl_coef = 0.01};
  for (const policy_loss_config& c : {tok, presets::trl::gspo_loss, presets::verl::gspo_loss}) {
    auto r1 = policy_loss(test::make_backend<Bk>(), L, lpb.cview2(B, Tn), lob.cview2(B, Tn), lrb.cview2(B, Tn),
                          ab.cview2(B, Tn), g1.view2(B, Tn), c);
    auto r2 = policy_loss(test::make_backend<Bk>(), L, lpb.cview2(B, Tn), lob.cview2(B, Tn), lrb.cview2(B, Tn),
                          ab.cview2(B, Tn), g2.view2(B, Tn), c);
    CHECK(test::bitwise_equal(g1.to_host(), g2.to_host()));
    CHECK(std::memcmp(&r1.loss, &r2.loss, sizeof(double)) == 0);
    CHECK(std::memcmp(&r1.policy_parts.sum, &r2.policy_parts.sum, sizeof(double)) == 0);
    CHECK(std::memcmp(&r1.kl_parts.sum, &r2.kl_parts.sum, sizeof(double)) == 0);
    CHECK(std::memcmp(&r1.stats.ratio.total.sum, &r2.stats.ratio.total.sum, sizeof(double)) == 0);
    CHECK(std::memcmp(&r1.stats.approx_kl_k3.sum, &r2.stats.approx_kl_k3.sum, sizeof(double)) == 0);
    CHECK(std::memcmp(&r1.stats.kl_ref.sum, &r2.stats.kl_ref.sum, sizeof(double)) == 0);
    CHECK(r1.stats.clip_upper.sum == r2.stats.clip_upper.sum);
  }
}
#endif
