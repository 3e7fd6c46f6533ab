// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
// KL estimators: the per-token math (detail::kl_term) against the float64 reference and finite
// differences, with its clamp conventions; kl_penalized_rewards (PPO's r_t - beta*KL_t) against
// the reference on every estimator and clamp, packed == padded, aliasing, masked NaN, the peers'
// presets and error cases that write nothing; the sequence-level KL as a loss term through
// policy_loss, with its exact gradient. Runs on every backend in polo::test::backends.

#include "support/polo_test.hpp"

#if defined(__CUDACC__)
#if __has_include("polo/kl.cuh")
#include "polo/kl.cuh"
#endif
#if __has_include("polo/policy_loss.cuh")
#include "polo/policy_loss.cuh"
#endif
#else
#include "polo/cpu/kl.hpp"
#include "polo/cpu/policy_loss.hpp"
#endif

#include "reference/kl.hpp"

namespace {

using namespace polo;
using polo::test::backends;
using polo::test::buffer;
constexpr double nan_v = std::numeric_limits<double>::quiet_NaN();
constexpr double inf_v = std::numeric_limits<double>::infinity();

std::vector<kl_config> estimator_configs() {
  std::vector<kl_config> out;
  for (auto e : {kl_estimator::k1, kl_estimator::abs, kl_estimator::k2, kl_estimator::k3})
    for (bool st : {false, true})
      for (int cl = 0; cl < 4; ++cl) {
        kl_config k{.estimator = e, .straight_through = st};
        if (cl == 1) k.input_clamp = unbounded, k.output_clamp = unbounded;
        if (cl == 2) k.input_clamp = 0.5, k.output_clamp = 0.1;
        if (cl == 3) k.output_clamp = 0.4;
        out.push_back(k);
      }
  return out;
}

std::string describe(const kl_config& k) {
  std::ostringstream os;
  os << "est " << int(k.estimator) << " st " << k.straight_through << " level " << int(k.level) << " weight "
     << int(k.weight) << " in " << k.input_clamp << " out " << k.output_clamp;
  return os.str();
}

struct reward_case {
  index_t B = 0, T = 0;
  std::vector<double> r, lo, lref;
  std::vector<std::uint8_t> mask;
};

reward_case random_case(std::mt19937_64& g, index_t B, index_t T, test::mask_pattern p) {
  reward_case c;
  c.B = B;
  c.T = T;
  c.r = test::normal(g, B * T, 0.0, 1.0);
  c.lo = test::normal(g, B * T, -1.0, 0.5);
  auto d = test::normal(g, B * T, 0.0, 0.8);
  c.lref.resize(B * T);
  for (index_t k = 0; k < B * T; ++k) c.lref[k] = c.lo[k] - d[k];
  c.mask = test::make_mask(g, B, T, p);
  return c;
}

template <class B, class T>
std::vector<double> run_rewards(const reward_case& c, double beta, const kl_config& k, kl_reward_stats* st = nullptr,
                                bool alias = false) {
  buffer<T, B> r(test::cast<T>(c.r)), lo(test::cast<T>(c.lo)), lr(test::cast<T>(c.lref));
  buffer<T, B> out(c.B * c.T, T(-7));
  buffer<std::uint8_t, B> m(c.mask);
  padded<std::uint8_t, typename B::memory_space> layout(m.cview2(c.B, c.T));
  auto dst = alias ? r.view2(c.B, c.T) : out.view2(c.B, c.T);
  try {
    auto s = kl_penalized_rewards(test::make_backend<B>(), layout, r.cview2(c.B, c.T), lo.cview2(c.B, c.T),
                                  lr.cview2(c.B, c.T), dst, beta, k);
    if (st) *st = s;
  } catch (...) {
    for (auto x : out.to_host()) REQUIRE(double(x) == -7.0);
    auto rh = r.to_host();
    for (index_t j = 0; j < c.B * c.T; ++j) {
      const double x = double(rh[j]), y = double(T(c.r[j]));
      REQUIRE(((std::isnan(x) && std::isnan(y)) || x == y));
    }
    throw;
  }
  auto h = alias ? r.to_host() : out.to_host();
  return {h.begin(), h.end()};
}

}  // namespace

TEST_CASE("kl_term: every estimator's value and gradient, clamps and straight-through", "[kl][scalar]") {
  for (const auto& k : estimator_configs()) {
    INFO(describe(k));
    for (double d = -3.05; d <= 3.0; d += 0.1) {
      const auto p = detail::kl_term(k, d, 1.0);
      bool cl = false;
      CHECK(p.value == Approx(ref::kl_estimate(k, d, &cl)).epsilon(1e-12).margin(1e-15));
      CHECK(p.clamped == cl);
      CHECK(p.d_ratio == 0.0);
      CHECK(p.grad == Approx(ref::kl_estimate_grad(k, d)).epsilon(1e-12).margin(1e-15));
      if (!k.straight_through) {  // the gradient is the derivative of the value (away from kinks)
        const double h = 1e-6;
        const double fd = (ref::kl_estimate(k, d + h) - ref::kl_estimate(k, d - h)) / (2 * h);
        bool near_kink = std::abs(std::abs(d) - k.input_clamp) < 1e-3 || std::abs(d) < 1e-3;
        bool cp = false, cm = false;
        ref::kl_estimate(k, d + h, &cp);
        ref::kl_estimate(k, d - h, &cm);
        if (!near_kink && cp == cm) CHECK(p.grad == Approx(fd).epsilon(1e-6).margin(1e-8));
      }
    }
  }
  SECTION("k3 output clamp zeroes the gradient where log(pi_ref/pi) > 2.61 (verl/NeMo/OpenRLHF)") {
    const auto p = detail::kl_term(presets::verl::low_var_kl, -2.7, 1.0);
    CHECK(p.value == 10.0);
    CHECK(p.grad == 0.0);
    CHECK(p.clamped);
    const auto q = detail::kl_term(kl_config{}, -2.7, 1.0);  // polo's default: no output clamp
    CHECK(q.value == Approx(std::exp(2.7) - 3.7));
    CHECK(q.grad == Approx(1.0 - std::exp(2.7)));
  }
  SECTION("k3 is accurate near d = 0 and finite for |d| = 1e4 under the input clamp") {
    const double d = 1e-9;
    CHECK(detail::kl_term(kl_config{}, d, 1.0).value == Approx(0.5 * d * d).epsilon(1e-6));
    for (double big : {1e4, -1e4}) {
      const auto p = detail::kl_term(kl_config{}, big, 1.0);
      CHECK(std::isfinite(p.value));
      CHECK(p.grad == 0.0);
      CHECK(p.clamped);
    }
  }
  SECTION("weights: ratio differentiates through rho, ratio_detached does not, score_function adds k") {
    const double d = 0.3, rho = 1.4;
    const double k3 = std::exp(-d) + d - 1, dk3 = 1 - std::exp(-d);
    auto w = [&](kl_weight x) { return detail::kl_term(kl_config{.weight = x}, d, rho); };
    CHECK(w(kl_weight::ratio).value == Approx(rho * k3));
    CHECK(w(kl_weight::ratio).grad == Approx(rho * dk3));
    CHECK(w(kl_weight::ratio).d_ratio == Approx(k3));
    CHECK(w(kl_weight::ratio_detached).d_ratio == 0.0);
    CHECK(w(kl_weight::ratio_detached).value == Approx(rho * k3));
    CHECK(w(kl_weight::score_function).value == Approx(k3));
    CHECK(w(kl_weight::score_function).grad == Approx(dk3 + k3));
    // rho*(k3 + k3') = rho*d: the importance-weighted k2 gradient (d rho/d logp = rho)
    CHECK(w(kl_weight::ratio).grad + w(kl_weight::ratio).d_ratio * rho == Approx(rho * d));
  }
}

TEMPLATE_LIST_TEST_CASE("kl_penalized_rewards matches the reference", "[kl][rewards]", backends) {
  using B = TestType;
  INFO("seed " << test::base_seed());
  auto g = test::rng(21);
  const test::mask_pattern pats[] = {test::mask_pattern::right_pad, test::mask_pattern::left_pad,
                                     test::mask_pattern::interior_spans, test::mask_pattern::with_empty_rows};
  int i = 0;
  for (const auto& k : estimator_configs()) {
    const auto pat = pats[i++ % 4];
    INFO(describe(k) << " mask " << test::name(pat));
    auto c = random_case(g, 5, 9, pat);
    const double beta = 0.05 * i;
    auto want = ref::kl_penalized_rewards(c.B, c.T, c.r, c.lo, c.lref, c.mask, beta, k);
    kl_reward_stats st;
    test::require_close(run_rewards<B, double>(c, beta, k, &st), want.out);
    CHECK(st.tokens == want.tokens);
    CHECK(st.masked_tokens == want.masked);
    CHECK(st.kl.sum == Approx(want.kl_sum).epsilon(1e-12).margin(1e-14));
    CHECK(st.kl.count == want.tokens);
    CHECK(st.clamped.sum == double(want.clamped));
    test::require_close(run_rewards<B, float>(c, beta, k), want.out, 2e-5, 5e-6);
    // out may alias rewards exactly
    test::require_close(run_rewards<B, double>(c, beta, k, nullptr, true), want.out);
  }
}

TEMPLATE_LIST_TEST_CASE("kl_penalized_rewards: packed == padded, masked NaN, presets, errors", "[kl][rewards]",
                        backends) {
  using B = TestType;
  auto g = test::rng(22);
  SECTION("packed equals padded bitwise; NaN at masked positions does not leak") {
    for (const auto& k : estimator_configs()) {
      INFO(describe(k));
      auto c = random_case(g, 6, 8, test::mask_pattern::interior_spans);
      for (index_t j = 0; j < c.B * c.T; ++j)
        if (!c.mask[j]) c.r[j] = nan_v, c.lo[j] = inf_v, c.lref[j] = nan_v;
      auto pad = run_rewards<B, float>(c, 0.1, k);
      for (index_t j = 0; j < c.B * c.T; ++j)
        if (!c.mask[j]) CHECK(pad[j] == 0.0);
      for (bool prefix : {false, true}) {
        INFO("packed rows keep their masked prefix: " << prefix);
        auto p = test::pack(c.mask, c.B, c.T, prefix);
        buffer<float, B> r(test::cast<float>(p.take(c.r))), lo(test::cast<float>(p.take(c.lo))),
            lr(test::cast<float>(p.take(c.lref))), out(p.tokens(), -7.f);
        buffer<std::int64_t, B> off(p.offsets);
        buffer<std::uint8_t, B> pm(p.mask);
        packed<std::uint8_t, std::int64_t, typename B::memory_space> layout(off.cview1(), p.tokens(), pm.cview1());
        kl_penalized_rewards(test::make_backend<B>(), layout, r.cview1(), lo.cview1(), lr.cview1(), out.view1(), 0.1, k);
        auto h = out.to_host();
        auto back = p.scatter(std::vector<double>(h.begin(), h.end()), 0.0);
        CHECK(test::bitwise_equal(back, pad));
      }
    }
  }
  SECTION("presets: verl k1 reward shaping, OpenRLHF k1 with output clamp 10, verl low_var_kl") {
    auto c = random_case(g, 4, 6, test::mask_pattern::right_pad);
    c.lref[0] = c.lo[0] - 12.0;  // |d| = 12: OpenRLHF clamps k1 to 10
    c.lref[1] = c.lo[1] + 3.0;   // d = -3: verl's k3 output clamp is active
    auto verl_k1 = run_rewards<B, double>(c, 0.2, presets::verl::kl_k1);
    auto orl_k1 = run_rewards<B, double>(c, 0.2, presets::openrlhf::kl_k1);
    auto verl_k3 = run_rewards<B, double>(c, 0.2, presets::verl::low_var_kl);
    for (index_t j = 0; j < c.B * c.T; ++j) {
      if (!c.mask[j]) continue;
      const double d = c.lo[j] - c.lref[j];
      CHECK(verl_k1[j] == Approx(c.r[j] - 0.2 * d).epsilon(1e-14));
      CHECK(orl_k1[j] == Approx(c.r[j] - 0.2 * std::clamp(d, -10.0, 10.0)).epsilon(1e-14));
      const double x = std::clamp(-d, -20.0, 20.0);  // verl: kl = ref - logprob
      CHECK(verl_k3[j] == Approx(c.r[j] - 0.2 * std::clamp(std::exp(x) - x - 1, -10.0, 10.0)).epsilon(1e-13));
    }
    CHECK(orl_k1[0] == Approx(c.r[0] - 2.0));
    CHECK(verl_k3[1] == Approx(c.r[1] - 2.0));
  }
  SECTION("errors write nothing") {
    auto c = random_case(g, 3, 5, test::mask_pattern::right_pad);
    CHECK_THROWS_AS((run_rewards<B, double>(c, nan_v, kl_config{})), config_error);
    CHECK_THROWS_AS((run_rewards<B, double>(c, 0.1, kl_config{.level = kl_level::sequence_sum})), config_error);
    CHECK_THROWS_AS((run_rewards<B, double>(c, 0.1, kl_config{.weight = kl_weight::ratio})), config_error);
    CHECK_THROWS_AS((run_rewards<B, double>(c, 0.1, kl_config{.input_clamp = 0.0})), config_error);
    CHECK_THROWS_AS((run_rewards<B, double>(c, 0.1, kl_config{.output_clamp = nan_v})), config_error);
    auto bad = c;
    bad.lref[5] = inf_v;  // row 1, col 0: valid under right padding
    try {
      run_rewards<B, float>(bad, 0.1, kl_config{});
      FAIL("expected nonfinite_error");
    } catch (const nonfinite_error& e) {
      CHECK(e.index() == 5);
      CHECK_THAT(e.what(), Catch::Contains("'logp_ref'"));
    }
    bad = c;
    bad.r[0] = nan_v;
    CHECK_THROWS_AS((run_rewards<B, double>(bad, 0.1, kl_config{}, nullptr, true)), nonfinite_error);
    buffer<double, B> x(15, 0.0), y(16, 0.0), out(15, -7.0);
    buffer<std::uint8_t, B> m(c.mask);
    padded<std::uint8_t, typename B::memory_space> layout(m.cview2(3, 5));
    CHECK_THROWS_AS(kl_penalized_rewards(test::make_backend<B>(), layout, x.cview2(3, 5), y.cview2(4, 4),
                                         x.cview2(3, 5), out.view2(3, 5), 0.1),
                    shape_error);
    for (double v : out.to_host()) CHECK(v == -7.0);
    // an output overlapping an input other than rewards exactly
    buffer<double, B> big(20, 1.0);
    auto bv = big.view1();
    view<double, 2, typename B::memory_space> shifted{bv.data + 1, 3, 5, 5};
    view<const double, 2, typename B::memory_space> base{bv.data, 3, 5, 5};
    CHECK_THROWS_AS(kl_penalized_rewards(test::make_backend<B>(), layout, base, x.cview2(3, 5), x.cview2(3, 5),
                                         shifted, 0.1),
                    shape_error);
    CHECK_THROWS_AS(kl_penalized_rewards(test::make_backend<B>(), layout, x.cview2(3, 5), base, x.cview2(3, 5),
                                         view<double, 2, typename B::memory_space>{bv.data, 3, 5, 5}, 0.1),
                    shape_error);
    for (double v : big.to_host()) CHECK(v == 1.0);
  }
}

TEMPLATE_LIST_TEST_CASE("sequence-level KL as a loss term: value and exact gradient", "[kl][sequence]", backends) {
  using B = TestType;
  INFO("seed " << test::base_seed());
  auto g = test::rng(23);
  const index_t Bn = 5, T = 7;
  auto mask = test::make_mask(g, Bn, T, test::mask_pattern::with_empty_rows);
  auto lp = test::normal(g, Bn * T, -1.0, 0.4);
  auto d = test::normal(g, Bn * T, 0.0, 0.3);
  std::vector<double> lref(Bn * T), zeros(Bn * T, 0.0);
  for (index_t k = 0; k < Bn * T; ++k) lref[k] = lp[k] - d[k];
  for (auto lv : {kl_level::sequence_sum, kl_level::sequence_mean})
    for (const auto& base : estimator_configs()) {
      kl_config k = base;
      k.level = lv;
      INFO(describe(k));
      // REINFORCE with A = 0: the loss is beta * sum_i K_i / N_seq and nothing else.
      const double beta = 0.7;
      policy_loss_config c{.objective = policy_objective::reinforce, .kl_coef = beta, .kl = k};
      buffer<double, B> blp(lp), bref(lref), bz(zeros), grad(Bn * T, -7.0);
      buffer<std::uint8_t, B> bm(mask);
      padded<std::uint8_t, typename B::memory_space> layout(bm.cview2(Bn, T));
      auto res = policy_loss(test::make_backend<B>(), layout, blp.cview2(Bn, T), blp.cview2(Bn, T),
                             bref.cview2(Bn, T), bz.cview2(Bn, T), grad.view2(Bn, T), c);
      auto gh = grad.to_host();
      double want = 0.0;
      long long nseq = 0;
      std::vector<double> want_g(Bn * T, 0.0);
      std::vector<double> Ds(Bn, 0.0);
      std::vector<long long> ns(Bn, 0);
      for (index_t i = 0; i < Bn; ++i) {
        for (index_t t = 0; t < T; ++t)
          if (mask[i * T + t]) Ds[i] += lp[i * T + t] - lref[i * T + t], ++ns[i];
        nseq += ns[i] > 0;
      }
      for (index_t i = 0; i < Bn; ++i) {
        if (ns[i] == 0) continue;
        const double D = lv == kl_level::sequence_mean ? Ds[i] / double(ns[i]) : Ds[i];
        want += ref::kl_estimate(k, D) / double(nseq);
        const double gi = ref::kl_estimate_grad(k, D) / double(nseq) * (lv == kl_level::sequence_mean ? 1.0 / ns[i] : 1.0);
        for (index_t t = 0; t < T; ++t)
          if (mask[i * T + t]) want_g[i * T + t] = beta * gi;
      }
      CHECK(res.kl_loss == Approx(want).epsilon(1e-12).margin(1e-15));
      CHECK(res.loss == Approx(beta * want).epsilon(1e-12).margin(1e-15));
      CHECK(res.kl_parts.count == nseq);
      CHECK(res.stats.kl_ref.count == nseq);
      test::require_close(gh, want_g, 1e-11, 1e-14);
    }
}
