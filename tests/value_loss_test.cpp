// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
// The clipped PPO value loss against the float64 oracle of tests/reference/value_loss.hpp: every
// clip form, aggregation mode and normalizer; its gradient against central finite differences;
// micro-batch split invariance; the empty batch; packed == padded; errors. Runs on every
// backend in polo::test::backends (the CUDA twin pairs with cuda/polo/value_loss.cuh).

#include "support/polo_test.hpp"
#include "reference/value_loss.hpp"

#include "polo/value_loss.hpp"
#if defined(__CUDACC__)
#include "polo/value_loss.cuh"
#else
#include "polo/cpu/value_loss.hpp"
#endif

#include <array>

namespace {

using namespace polo;
using polo::test::backends;
using polo::test::buffer;
using polo::test::mask_pattern;

constexpr std::array<mask_pattern, 6> patterns{mask_pattern::all_valid,      mask_pattern::right_pad,
                                               mask_pattern::left_pad,       mask_pattern::interior_spans,
                                               mask_pattern::random,         mask_pattern::with_empty_rows};
constexpr std::array<aggregation, 5> aggs{aggregation::token_mean, aggregation::token_sum,
                                          aggregation::seq_mean_token_mean, aggregation::seq_mean_token_sum,
                                          aggregation::token_sum_norm};
constexpr std::array<value_clip, 3> clips{value_clip::none, value_clip::clamp_value, value_clip::clamp_delta};

/// A critic batch rounded to T: old values, new values near them (about half outside ±0.2),
/// returns.
template <class T>
struct critic_batch {
  index_t B = 0, Tn = 0;
  std::vector<double> v, vo, R;
  std::vector<std::uint8_t> m;
};
template <class T>
std::vector<double> rounded(const std::vector<double>& x) {
  auto y = test::cast<T>(x);
  return std::vector<double>(y.begin(), y.end());
}
template <class T>
critic_batch<T> make_critic(std::mt19937_64& g, index_t B, index_t Tn, mask_pattern p) {
  critic_batch<T> b;
  b.B = B;
  b.Tn = Tn;
  b.m = test::make_mask(g, B, Tn, p);
  b.vo = rounded<T>(test::normal(g, B * Tn, 0.0, 1.0));
  auto d = test::normal(g, B * Tn, 0.0, 0.3);
  b.v.resize(b.vo.size());
  for (std::size_t k = 0; k < d.size(); ++k) b.v[k] = b.vo[k] + d[k];
  b.v = rounded<T>(b.v);
  b.R = rounded<T>(test::normal(g, B * Tn, 0.2, 1.0));
  return b;
}

template <class T>
struct vl_run {
  value_loss_stats st;
  std::vector<T> grad;
};

template <class Bk, class T>
vl_run<T> run(const critic_batch<T>& b, const value_loss_config& c, const normalizers& nz = {}) {
  using S = typename Bk::memory_space;
  buffer<T, Bk> v(test::cast<T>(b.v)), vo(test::cast<T>(b.vo)), R(test::cast<T>(b.R)), gr(b.B * b.Tn, T(-7));
  buffer<std::uint8_t, Bk> m(b.m);
  padded<std::uint8_t, S> L(m.cview2(b.B, b.Tn));
  vl_run<T> out;
  out.st = value_loss(test::make_backend<Bk>(), L, v.cview2(b.B, b.Tn), vo.cview2(b.B, b.Tn), R.cview2(b.B, b.Tn),
                      gr.view2(b.B, b.Tn), c, nz);
  out.grad = gr.to_host();
  return out;
}

std::string describe(const value_loss_config& c, const normalizers& nz) {
  std::ostringstream os;
  os << "clip " << int(c.clip) << " range " << c.clip_range << " agg " << aggregation_name(c.agg) << " coef "
     << c.coef << " norm {" << nz.tokens << ", " << nz.sequences << ", " << nz.constant << ", " << nz.scale << "}";
  return os.str();
}

std::vector<normalizers> normalizer_cases() {
  return {normalizers{.constant = 50.0}, normalizers{.tokens = 500.0, .sequences = 11.0, .constant = 64.0, .scale = 1.0},
          normalizers{.constant = 3.0, .scale = 4.0}};
}

}  // namespace

TEMPLATE_LIST_TEST_CASE("value_loss matches the float64 oracle for every clip form and aggregation", "[value_loss]",
                        backends) {
  using Bk = TestType;
  auto g = test::rng(301);
  INFO("seed " << test::base_seed());
  for (mask_pattern p : patterns) {
    auto bd = make_critic<double>(g, 6, 29, p);
    auto bf = make_critic<float>(g, 6, 29, p);
    for (auto clip : clips)
      for (auto agg : aggs)
        for (const auto& nz : normalizer_cases()) {
          value_loss_config c{.clip = clip, .clip_range = 0.2, .agg = agg, .coef = 0.5};
          INFO(test::name(p) << " " << describe(c, nz));
          auto want = ref::value_loss<double>(bd.v, bd.vo, bd.R, bd.m, bd.B, bd.Tn, c, nz);
          auto got = run<Bk, double>(bd, c, nz);
          CHECK(got.st.loss == Approx(want.loss).epsilon(1e-12).margin(1e-15));
          test::require_close(got.grad, want.grad, 1e-12, 1e-15);
          CHECK(got.st.tokens == want.tokens);
          CHECK(got.st.sequences == want.sequences);
          CHECK(got.st.clipped.sum == double(want.clipped));
          CHECK(got.st.clip_fraction() == Approx(want.tokens ? double(want.clipped) / double(want.tokens) : 0.0));
          if (clip != value_clip::none && want.tokens > 20) CHECK(want.clipped > 0);
          auto wf = ref::value_loss<float>(bf.v, bf.vo, bf.R, bf.m, bf.B, bf.Tn, c, nz);
          auto gf = run<Bk, float>(bf, c, nz);
          CHECK(gf.st.loss == Approx(wf.loss).epsilon(1e-12).margin(1e-15));
          test::require_close(gf.grad, wf.grad, 2e-6, 1e-8);
          CHECK(gf.st.clipped.sum == double(wf.clipped));
        }
  }
}

TEMPLATE_LIST_TEST_CASE("value_loss: rows of up to 1,024 positions, aligned or not, against the oracle",
                        "[value_loss]", backends) {
  // On CUDA each such padded row is reduced by one warp in quads of 4 (vector loads where the
  // row is aligned: every row at T = 1024, every other one at T = 602 in float) and
  // differentiated by one warp.
  using Bk = TestType;
  auto g = test::rng(308);
  INFO("seed " << test::base_seed());
  for (index_t Tn : {index_t(602), index_t(1024)})
    for (mask_pattern p : {mask_pattern::left_pad, mask_pattern::interior_spans, mask_pattern::random}) {
      auto bd = make_critic<double>(g, 5, Tn, p);
      auto bf = make_critic<float>(g, 5, Tn, p);
      for (auto clip : {value_clip::none, value_clip::clamp_delta})
        for (auto agg : {aggregation::token_mean, aggregation::seq_mean_token_mean}) {
          value_loss_config c{.clip = clip, .clip_range = 0.2, .agg = agg, .coef = 0.5};
          INFO("T " << Tn << " " << test::name(p) << " " << describe(c, normalizers{}));
          auto want = ref::value_loss<double>(bd.v, bd.vo, bd.R, bd.m, bd.B, bd.Tn, c, normalizers{});
          auto got = run<Bk, double>(bd, c);
          CHECK(got.st.loss == Approx(want.loss).epsilon(1e-12).margin(1e-15));
          test::require_close(got.grad, want.grad, 1e-12, 1e-15);
          CHECK(got.st.tokens == want.tokens);
          auto wf = ref::value_loss<float>(bf.v, bf.vo, bf.R, bf.m, bf.B, bf.Tn, c, normalizers{});
          auto gf = run<Bk, float>(bf, c);
          CHECK(gf.st.loss == Approx(wf.loss).epsilon(1e-12).margin(1e-15));
          test::require_close(gf.grad, wf.grad, 2e-6, 1e-8);
          CHECK(gf.st.clipped.sum == double(wf.clipped));
        }
    }
}

TEMPLATE_LIST_TEST_CASE("value_loss gradient equals central finite differences", "[value_loss][grad]", backends) {
  using Bk = TestType;
  using S = typename Bk::memory_space;
  auto g = test::rng(302);
  INFO("seed " << test::base_seed());
  auto b = make_critic<double>(g, 6, 16, mask_pattern::interior_spans);
  const double h = 1e-6, c_range = 0.2;
  for (auto clip : clips)
    for (auto agg : aggs) {
      value_loss_config c{.clip = clip, .clip_range = c_range, .agg = agg, .coef = 0.5};
      normalizers nz{.constant = 7.0, .scale = 2.0};
      INFO(describe(c, nz));
      auto base = run<Bk, double>(b, c, nz);
      buffer<double, Bk> vo(b.vo), R(b.R);
      buffer<std::uint8_t, Bk> m(b.m);
      padded<std::uint8_t, S> L(m.cview2(b.B, b.Tn));
      auto loss_at = [&](std::size_t k, double dv) {
        auto v = b.v;
        v[k] += dv;
        buffer<double, Bk> vb(v);
        return value_loss(test::make_backend<Bk>(), L, vb.cview2(b.B, b.Tn), vo.cview2(b.B, b.Tn), R.cview2(b.B, b.Tn),
                          c, nz)
            .loss;
      };
      int checked = 0;
      for (std::size_t k = 0; k < b.v.size(); ++k) {
        if (!b.m[k]) {
          CHECK(base.grad[k] == 0.0);
          continue;
        }
        // Skip tokens within reach of a kink (a clip bound, or the two terms of the max tied).
        const double dv = b.v[k] - b.vo[k];
        const double a = (b.v[k] - b.R[k]) * (b.v[k] - b.R[k]);
        const double vc = b.vo[k] + std::clamp(dv, -c_range, c_range);
        const double bb = (vc - b.R[k]) * (vc - b.R[k]);
        if (clip != value_clip::none && (std::abs(std::abs(dv) - c_range) < 1e-4 || std::abs(a - bb) < 1e-4)) continue;
        const double fd = (loss_at(k, h) - loss_at(k, -h)) / (2 * h);
        INFO("token " << k << " grad " << base.grad[k] << " fd " << fd);
        CHECK(base.grad[k] == Approx(fd).epsilon(1e-5).margin(1e-8));
        ++checked;
      }
      CHECK(checked > 10);
    }
}

TEMPLATE_LIST_TEST_CASE("value_loss: micro-batches with global normalizers add up to the whole batch",
                        "[value_loss][split]", backends) {
  using Bk = TestType;
  auto g = test::rng(303);
  INFO("seed " << test::base_seed());
  auto b = make_critic<double>(g, 10, 16, mask_pattern::with_empty_rows);
  for (auto agg : aggs) {
    value_loss_config c{.clip = value_clip::clamp_value, .clip_range = 0.2, .agg = agg};
    auto whole = run<Bk, double>(b, c, normalizers{.constant = 40.0});
    normalizers global{.tokens = double(whole.st.tokens), .sequences = double(whole.st.sequences), .constant = 40.0};
    value_loss_stats sum;
    std::vector<double> grads;
    for (auto [lo, hi] : {std::pair<index_t, index_t>{0, 3}, {3, 4}, {4, 10}}) {
      critic_batch<double> part{hi - lo, b.Tn, {}, {}, {}, {}};
      auto cut = [&](const auto& x) {
        return std::vector<typename std::decay_t<decltype(x)>::value_type>(x.begin() + lo * b.Tn, x.begin() + hi * b.Tn);
      };
      part.v = cut(b.v);
      part.vo = cut(b.vo);
      part.R = cut(b.R);
      part.m = cut(b.m);
      auto r = run<Bk, double>(part, c, global);
      sum += r.st;
      grads.insert(grads.end(), r.grad.begin(), r.grad.end());
    }
    INFO(aggregation_name(agg));
    CHECK(sum.loss == Approx(whole.st.loss).epsilon(1e-12));
    test::require_close(grads, whole.grad, 1e-13, 1e-16);
    CHECK(sum.tokens == whole.st.tokens);
    CHECK(sum.parts.count == whole.st.parts.count);
    CHECK(sum.parts.sum == Approx(whole.st.parts.sum).epsilon(1e-12));
    CHECK(sum.clip_fraction() == whole.st.clip_fraction());
  }
}

TEMPLATE_LIST_TEST_CASE("value_loss: empty batches give loss 0 and gradient 0; packed equals padded",
                        "[value_loss][edge][layout]", backends) {
  using Bk = TestType;
  using S = typename Bk::memory_space;
  auto g = test::rng(304);
  INFO("seed " << test::base_seed());
  auto empty = make_critic<double>(g, 3, 5, mask_pattern::all_valid);
  empty.m.assign(empty.m.size(), 0);
  for (auto agg : aggs)
    for (const auto& nz : normalizer_cases()) {
      auto r = run<Bk, double>(empty, value_loss_config{.agg = agg}, nz);
      CHECK(r.st.loss == 0.0);
      CHECK(r.grad == std::vector<double>(15, 0.0));
      CHECK(r.st.clip_fraction() == 0.0);
    }
  // Explicit zero divisors: loss 0 and gradient 0, never NaN.
  auto b = make_critic<double>(g, 3, 5, mask_pattern::all_valid);
  auto z = run<Bk, double>(b, value_loss_config{.agg = aggregation::token_mean}, normalizers{.tokens = 0.0});
  CHECK(z.st.loss == 0.0);
  CHECK(z.grad == std::vector<double>(15, 0.0));

  for (mask_pattern p : patterns) {
    auto bf = make_critic<float>(g, 7, 23, p);
    for (bool prefix : {false, true}) {
      auto pk = test::pack(bf.m, bf.B, bf.Tn, prefix);
      for (auto clip : clips)
        for (auto agg : aggs) {
          value_loss_config c{.clip = clip, .clip_range = 0.2, .agg = agg};
          normalizers nz{.constant = 9.0};
          INFO(test::name(p) << " " << describe(c, nz) << " packed rows keep their masked prefix: " << prefix);
          auto pad = run<Bk, float>(bf, c, nz);
          buffer<float, Bk> v(pk.take(test::cast<float>(bf.v))), vo(pk.take(test::cast<float>(bf.vo))),
              R(pk.take(test::cast<float>(bf.R))), gr(pk.tokens(), -7.f);
          buffer<std::uint8_t, Bk> m(pk.mask);
          buffer<std::int64_t, Bk> off(pk.offsets);
          packed<std::uint8_t, std::int64_t, S> P(off.cview1(), pk.tokens(), m.cview1());
          auto st = value_loss(test::make_backend<Bk>(), P, v.cview1(), vo.cview1(), R.cview1(), gr.view1(), c, nz);
          CHECK(st.loss == pad.st.loss);
          CHECK(test::bitwise_equal(gr.to_host(), pk.take(pad.grad)));
          // The no-gradient overload reports the same loss; the gradient may overwrite the values.
          auto st2 = value_loss(test::make_backend<Bk>(), P, v.cview1(), vo.cview1(), R.cview1(), c, nz);
          CHECK(st2.loss == st.loss);
          value_loss(test::make_backend<Bk>(), P, v.cview1(), vo.cview1(), R.cview1(), v.view1(), c, nz);
          CHECK(test::bitwise_equal(v.to_host(), gr.to_host()));
        }
    }
  }
}

TEMPLATE_LIST_TEST_CASE("value_loss: short and long rows in both layouts, against the oracle; packed equals padded",
                        "[value_loss][layout]", backends) {
  // Rows of up to 1,024 positions are reduced by one warp on the CUDA backend, longer ones by a
  // block, and a long row whose valid tokens lie within 1,024 of its first goes back to one warp:
  // padded T = 3000 takes the block kernel for every row; the packed batch (mean row under
  // 1,024) the warp kernel, with its long rows listed for the block kernel.
  using Bk = TestType;
  using S = typename Bk::memory_space;
  auto g = test::rng(306);
  INFO("seed " << test::base_seed());
  const index_t B = 24, Tn = 3000;
  auto b = make_critic<double>(g, B, Tn, mask_pattern::all_valid);
  auto bf = make_critic<float>(g, B, Tn, mask_pattern::all_valid);
  std::vector<std::uint8_t> m(std::size_t(B * Tn), 0);
  auto set = [&](index_t i, index_t a, index_t e) {
    for (index_t t = a; t < e; ++t) m[std::size_t(i * Tn + t)] = 1;
  };
  set(0, 100, 600);             // short
  set(1, 7, 7 + 1024);          // exactly the span: short
  set(2, 5, 5 + 1025);          // one past it: long
  set(3, 0, Tn);                // long, all valid
  std::bernoulli_distribution coin(0.7);
  for (index_t t = 200; t < 2800; ++t) m[std::size_t(4 * Tn + t)] = coin(g) ? 1 : 0;
  m[std::size_t(4 * Tn + 200)] = m[std::size_t(4 * Tn + 2799)] = 1;  // long, random holes
  // row 5 empty
  set(6, 0, 300);
  set(6, 1500, 1501);  // long through one token
  std::uniform_int_distribution<index_t> start(0, Tn - 401), len(1, 400);
  for (index_t i = 7; i < B; ++i) {  // short rows with holes
    const index_t a = start(g), n = len(g);
    for (index_t t = a; t < a + n; ++t) m[std::size_t(i * Tn + t)] = coin(g) ? 1 : 0;
    m[std::size_t(i * Tn + a)] = 1;
  }
  b.m = bf.m = m;
  b.v[std::size_t(0 * Tn + 2000)] = std::numeric_limits<double>::quiet_NaN();  // masked: never read
  bf.v[std::size_t(0 * Tn + 1250)] = std::numeric_limits<double>::quiet_NaN();  // masked, inside packed row 0
  // The packed batch keeps row 0 up to position 1,299 (700 masked tokens after its last valid
  // one): 1,200 positions, listed as long, but its valid tokens are short.
  auto pk = test::pack(m, B, Tn);
  {
    std::vector<std::int64_t> off{0};
    std::vector<std::uint8_t> pm;
    for (index_t i = 0; i < B; ++i) {
      const index_t n = i == 0 ? 1200 : pk.offsets[i + 1] - pk.offsets[i];
      for (index_t t = pk.first[i]; t < pk.first[i] + n; ++t) pm.push_back(m[std::size_t(i * Tn + t)]);
      off.push_back(off.back() + n);
    }
    pk.offsets = off;
    pk.mask = pm;
  }
  REQUIRE(pk.tokens() / B <= 1024);
  for (auto clip : clips)
    for (auto agg : {aggregation::token_mean, aggregation::seq_mean_token_mean}) {
      value_loss_config c{.clip = clip, .clip_range = 0.2, .agg = agg, .coef = 0.5};
      normalizers nz{};
      INFO(describe(c, nz));
      auto want = ref::value_loss<double>(b.v, b.vo, b.R, b.m, B, Tn, c, nz);
      auto got = run<Bk, double>(b, c, nz);
      CHECK(got.st.loss == Approx(want.loss).epsilon(1e-12).margin(1e-15));
      test::require_close(got.grad, want.grad, 1e-12, 1e-15);
      CHECK(got.st.tokens == want.tokens);
      CHECK(got.st.sequences == want.sequences);
      CHECK(got.st.clipped.sum == double(want.clipped));
      auto wf = ref::value_loss<float>(bf.v, bf.vo, bf.R, bf.m, B, Tn, c, nz);
      auto pad = run<Bk, float>(bf, c, nz);
      CHECK(pad.st.loss == Approx(wf.loss).epsilon(1e-12).margin(1e-15));
      test::require_close(pad.grad, wf.grad, 2e-6, 1e-8);
      buffer<float, Bk> v(pk.take(test::cast<float>(bf.v))), vo(pk.take(test::cast<float>(bf.vo))),
          R(pk.take(test::cast<float>(bf.R))), gr(pk.tokens(), -7.f);
      buffer<std::uint8_t, Bk> pm(pk.mask);
      buffer<std::int64_t, Bk> off(pk.offsets);
      packed<std::uint8_t, std::int64_t, S> P(off.cview1(), pk.tokens(), pm.cview1());
      auto st = value_loss(test::make_backend<Bk>(), P, v.cview1(), vo.cview1(), R.cview1(), gr.view1(), c, nz);
      CHECK(st.loss == pad.st.loss);
      CHECK(st.parts.sum == pad.st.parts.sum);
      CHECK(st.squared_error.sum == pad.st.squared_error.sum);
      CHECK(st.clipped.sum == pad.st.clipped.sum);
      CHECK(test::bitwise_equal(gr.to_host(), pk.take(pad.grad)));
    }
  // A non-finite valid value in a long row and a later one in a short row: the first is named.
  auto bad = bf;
  bad.R[std::size_t(4 * Tn + 2799)] = std::numeric_limits<double>::infinity();
  bad.R[std::size_t(9 * Tn) + std::size_t(pk.first[9])] = std::numeric_limits<double>::quiet_NaN();
  buffer<float, Bk> v(pk.take(test::cast<float>(bad.v))), vo(pk.take(test::cast<float>(bad.vo))),
      R(pk.take(test::cast<float>(bad.R))), gr(pk.tokens(), -7.f);
  buffer<std::uint8_t, Bk> pm(pk.mask);
  buffer<std::int64_t, Bk> off(pk.offsets);
  packed<std::uint8_t, std::int64_t, S> P(off.cview1(), pk.tokens(), pm.cview1());
  try {
    value_loss(test::make_backend<Bk>(), P, v.cview1(), vo.cview1(), R.cview1(), gr.view1());
    FAIL("no throw");
  } catch (const nonfinite_error& e) {
    CHECK(e.index() == pk.offsets[5] - 1);  // row 4's last position
    CHECK(std::string(e.what()).find("'returns'") != std::string::npos);
  }
  CHECK(gr.to_host() == std::vector<float>(std::size_t(pk.tokens()), -7.f));
}

TEMPLATE_LIST_TEST_CASE("value_loss: errors write nothing", "[value_loss][errors]", backends) {
  using Bk = TestType;
  using S = typename Bk::memory_space;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  buffer<double, Bk> v(std::vector<double>{1, 2, 3, 4}), vo(std::vector<double>{1, nan, 3, 4}),
      R(std::vector<double>{0, 0, 0, 0}), gr(4, -7.0);
  buffer<std::uint8_t, Bk> m(std::vector<std::uint8_t>{1, 1, 0, 1});
  padded<std::uint8_t, S> L(m.cview2(2, 2));
  auto be = test::make_backend<Bk>();
  // old_values are not read without clipping.
  REQUIRE_NOTHROW(value_loss(be, L, v.cview2(2, 2), vo.cview2(2, 2), R.cview2(2, 2),
                             value_loss_config{.clip = value_clip::none}));
  try {
    value_loss(be, L, v.cview2(2, 2), vo.cview2(2, 2), R.cview2(2, 2), gr.view2(2, 2));
    FAIL("no throw");
  } catch (const nonfinite_error& e) {
    CHECK(e.index() == 1);
    CHECK(std::string(e.what()).find("'old_values'") != std::string::npos);
  }
  buffer<double, Bk> vo2(std::vector<double>{1, 2, 3, 4});
  for (auto [c, nz] : {std::pair<value_loss_config, normalizers>{value_loss_config{.clip_range = -1.0}, {}},
                       {value_loss_config{.coef = nan}, {}},
                       {value_loss_config{.agg = aggregation::token_sum_norm}, {}},
                       {value_loss_config{}, normalizers{.tokens = nan}}}) {
    REQUIRE_THROWS_AS(value_loss(be, L, v.cview2(2, 2), vo2.cview2(2, 2), R.cview2(2, 2), gr.view2(2, 2), c, nz),
                      config_error);
  }
  REQUIRE_THROWS_AS(value_loss(be, L, v.cview2(2, 2), vo2.cview2(1, 4), R.cview2(2, 2), gr.view2(2, 2)), shape_error);
  CHECK(gr.to_host() == std::vector<double>(4, -7.0));
  // Malformed packed offsets: the CPU's message, nothing written.
  const index_t N = 9000;
  auto g = test::rng(307);
  buffer<double, Bk> xs(test::normal(g, N, 0.0, 1.0)), ys(test::normal(g, N, 0.0, 1.0)), gs(N, -7.0);
  for (const auto& [bad, needle] : test::malformed_offsets(N)) {
    INFO(needle);
    buffer<std::int64_t, Bk> ob(bad);
    packed<std::uint8_t, std::int64_t, S> P(ob.cview1(), N);
    CHECK_THROWS_WITH(value_loss(be, P, xs.cview1(), ys.cview1(), ys.cview1(), gs.view1()), Catch::Contains(needle));
    CHECK(gs.to_host() == std::vector<double>(std::size_t(N), -7.0));
  }
}

#if !defined(__CUDACC__)
TEST_CASE("value_loss per-token term: clip forms, kinks and ties", "[value_loss][hd]") {
  using detail::value_loss_term;
  // Inside the interval: v_c = v, the plain squared error, gradient 2(v − R).
  auto t = value_loss_term<double>(1.1, 1.0, 0.0, value_clip::clamp_value, 0.2);
  CHECK(t.loss == Approx(1.21));
  CHECK(t.grad == Approx(2.2));
  CHECK(!t.clipped);
  // Clipped term larger: v moved towards R beyond the clip; the gradient of the clipped term is 0.
  t = value_loss_term<double>(0.5, 1.0, 0.0, value_clip::clamp_delta, 0.2);
  CHECK(t.loss == Approx(0.64));
  CHECK(t.grad == 0.0);
  CHECK(t.clipped);
  // Tie of the max outside the interval: half of 2(v − R) (torch.max splits a tie).
  t = value_loss_term<double>(-0.5, 0.75, 0.0, value_clip::clamp_value, 0.25);
  CHECK(t.loss == 0.25);
  CHECK(t.grad == -0.5);
  // On the bound (inclusive): the clamp passes the gradient, the tie sums to 2(v − R).
  t = value_loss_term<double>(1.25, 1.0, 0.0, value_clip::clamp_value, 0.25);
  CHECK(t.grad == Approx(2.5));
  // Presets.
  CHECK(presets::verl::critic.clip_range == 0.5);
  CHECK(presets::openrlhf::critic.clip == value_clip::clamp_delta);
  CHECK(presets::trl::critic.clip_range == 0.2);
  CHECK(presets::nemo::critic.clip == value_clip::none);
}
#endif
