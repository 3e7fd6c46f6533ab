// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
// Masked whitening and masked moments against the float64 oracle of tests/reference/whiten.hpp:
// every convention, the degenerate batches (0 and 1 valid tokens), statistics given from other
// ranks, in-place use, packed == padded, masked NaN, and errors. Runs on every backend in
// polo::test::backends (the CUDA twin pairs with cuda/polo/whiten.cuh).

#include "support/polo_test.hpp"
#include "reference/whiten.hpp"

#include "polo/whiten.hpp"
#if defined(__CUDACC__)
#include "polo/whiten.cuh"
#else
#include "polo/cpu/whiten.hpp"
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

std::vector<whiten_config> all_configs() {
  std::vector<whiten_config> out;
  for (auto sk : {std_kind::sample, std_kind::population})
    for (auto em : {eps_placement::inside_sqrt, eps_placement::floor_variance, eps_placement::add_to_std})
      for (bool shift : {true, false})
        for (auto w : {whiten_write::zero_masked, whiten_write::all_positions})
          for (auto d : {whiten_degenerate::zero, whiten_degenerate::error})
            out.push_back(whiten_config{.std = sk, .eps_mode = em, .eps = 1e-8, .shift_mean = shift, .write = w,
                                        .degenerate = d});
  return out;
}

std::string describe(const whiten_config& c) {
  std::ostringstream os;
  os << "std " << int(c.std) << " eps_mode " << int(c.eps_mode) << " shift " << c.shift_mean << " write "
     << int(c.write) << " degenerate " << int(c.degenerate);
  return os.str();
}

template <class Bk, class T>
std::vector<T> run(const std::vector<double>& x, const std::vector<std::uint8_t>& m, index_t B, index_t Tn,
                   const whiten_config& c, whiten_stats* st = nullptr, const moments* batch = nullptr) {
  using S = typename Bk::memory_space;
  buffer<T, Bk> xb(test::cast<T>(x)), out(B * Tn, T(-7));
  buffer<std::uint8_t, Bk> mb(m);
  padded<std::uint8_t, S> L(mb.cview2(B, Tn));
  whiten_stats s = batch ? whiten(test::make_backend<Bk>(), L, xb.cview2(B, Tn), out.view2(B, Tn), *batch, c)
                         : whiten(test::make_backend<Bk>(), L, xb.cview2(B, Tn), out.view2(B, Tn), c);
  if (st) *st = s;
  return out.to_host();
}

}  // namespace

TEMPLATE_LIST_TEST_CASE("whiten matches the float64 oracle for every convention and mask pattern", "[whiten]",
                        backends) {
  using Bk = TestType;
  auto g = test::rng(201);
  INFO("seed " << test::base_seed());
  for (mask_pattern p : patterns) {
    const index_t B = 7, Tn = 33;
    auto m = test::make_mask(g, B, Tn, p);
    auto xd = test::normal(g, B * Tn, 1.5, 3.0);
    auto xf_ = test::cast<float>(xd);
    std::vector<double> xf(xf_.begin(), xf_.end());
    for (const auto& c : all_configs()) {
      INFO(test::name(p) << " " << describe(c));
      auto want = ref::whiten(xd, m, c);
      whiten_stats st;
      test::require_close(run<Bk, double>(xd, m, B, Tn, c, &st), want.out, 1e-12, 1e-12);
      CHECK(st.local.count == want.count);
      CHECK(st.mean == Approx(want.mean).epsilon(1e-12));
      CHECK(!st.degenerate);
      auto wf = ref::whiten(xf, m, c);
      test::require_close(run<Bk, float>(xf, m, B, Tn, c), wf.out, 1e-5, 1e-5);
    }
  }
}

TEMPLATE_LIST_TEST_CASE("whiten: rows of up to 1,024 positions, aligned or not, against the oracle", "[whiten]",
                        backends) {
  // On CUDA such padded rows are reduced by one warp each, in quads of 4 (vector loads where
  // the row is aligned: every row at T = 1024, every other one at T = 602 in float), and rows
  // of up to 512 positions written by one warp each (T = 300).
  using Bk = TestType;
  auto g = test::rng(208);
  INFO("seed " << test::base_seed());
  for (index_t Tn : {index_t(300), index_t(602), index_t(1024)})
    for (mask_pattern p : {mask_pattern::left_pad, mask_pattern::interior_spans, mask_pattern::random}) {
      const index_t B = 5;
      auto m = test::make_mask(g, B, Tn, p);
      auto xd = test::normal(g, B * Tn, -0.5, 2.0);
      auto xf_ = test::cast<float>(xd);
      std::vector<double> xf(xf_.begin(), xf_.end());
      for (const whiten_config& c :
           {whiten_config{}, whiten_config{.std = std_kind::population, .write = whiten_write::all_positions}}) {
        INFO("T " << Tn << " " << test::name(p) << " " << describe(c));
        test::require_close(run<Bk, double>(xd, m, B, Tn, c), ref::whiten(xd, m, c).out, 1e-12, 1e-12);
        test::require_close(run<Bk, float>(xf, m, B, Tn, c), ref::whiten(xf, m, c).out, 1e-5, 1e-5);
      }
    }
}

TEMPLATE_LIST_TEST_CASE("whiten: zero and one valid token", "[whiten][edge]", backends) {
  using Bk = TestType;
  const index_t B = 2, Tn = 4;
  std::vector<double> x{3.0, -1.0, 2.5, 7.0, 0.5, 0.25, 9.0, 4.0};
  for (const auto& c : all_configs()) {
    INFO(describe(c));
    // Zero valid tokens: degenerate under every convention.
    std::vector<std::uint8_t> none(8, 0);
    if (c.degenerate == whiten_degenerate::error) {
      REQUIRE_THROWS_AS((run<Bk, double>(x, none, B, Tn, c)), value_error);
    } else {
      whiten_stats st;
      CHECK(run<Bk, double>(x, none, B, Tn, c, &st) == std::vector<double>(8, 0.0));
      CHECK(st.degenerate);
      CHECK(st.local.count == 0);
    }
    // One valid token: degenerate under the sample variance; var = 0 under the population one.
    std::vector<std::uint8_t> one(8, 0);
    one[5] = 1;
    auto want = ref::whiten(x, one, c);
    if (c.std == std_kind::sample && c.degenerate == whiten_degenerate::error) {
      REQUIRE_THROWS_AS((run<Bk, double>(x, one, B, Tn, c)), value_error);
      continue;
    }
    whiten_stats st;
    auto got = run<Bk, double>(x, one, B, Tn, c, &st);
    test::require_close(got, want.out, 1e-12, 1e-12);
    CHECK(st.degenerate == (c.std == std_kind::sample));
    if (c.std == std_kind::population && c.shift_mean) CHECK(got[5] == 0.0);
    if (c.std == std_kind::population && !c.shift_mean) CHECK(got[5] == 0.25);
  }
}

TEMPLATE_LIST_TEST_CASE("whiten with all-reduced moments equals whitening the whole batch", "[whiten][split]",
                        backends) {
  using Bk = TestType;
  using S = typename Bk::memory_space;
  auto g = test::rng(202);
  INFO("seed " << test::base_seed());
  const index_t B = 8, Tn = 20, half = 4;
  auto m = test::make_mask(g, B, Tn, mask_pattern::interior_spans);
  auto x = test::normal(g, B * Tn, -2.0, 0.5);
  for (const auto& c : all_configs()) {
    INFO(describe(c));
    auto whole = run<Bk, double>(x, m, B, Tn, c);
    // Two "ranks": each takes its moments, they are merged, each whitens with the merged ones.
    std::vector<double> x0(x.begin(), x.begin() + half * Tn), x1(x.begin() + half * Tn, x.end());
    std::vector<std::uint8_t> m0(m.begin(), m.begin() + half * Tn), m1(m.begin() + half * Tn, m.end());
    buffer<double, Bk> b0(x0), b1(x1);
    buffer<std::uint8_t, Bk> mb0(m0), mb1(m1);
    padded<std::uint8_t, S> L0(mb0.cview2(half, Tn)), L1(mb1.cview2(B - half, Tn));
    moments all = masked_moments(test::make_backend<Bk>(), L0, b0.cview2(half, Tn));
    all += masked_moments(test::make_backend<Bk>(), L1, b1.cview2(B - half, Tn));
    auto o0 = run<Bk, double>(x0, m0, half, Tn, c, nullptr, &all);
    auto o1 = run<Bk, double>(x1, m1, B - half, Tn, c, nullptr, &all);
    o0.insert(o0.end(), o1.begin(), o1.end());
    test::require_close(o0, whole, 1e-12, 1e-12);
    auto want = ref::whiten(x, m, c);
    CHECK(all.count == want.count);
    CHECK(all.mean == Approx(want.mean).epsilon(1e-13));
  }
}

TEMPLATE_LIST_TEST_CASE("whiten: packed equals padded, in place, masked NaN", "[whiten][layout]", backends) {
  using Bk = TestType;
  using S = typename Bk::memory_space;
  auto g = test::rng(203);
  INFO("seed " << test::base_seed());
  for (mask_pattern p : patterns) {
    const index_t B = 6, Tn = 27;
    auto m = test::make_mask(g, B, Tn, p);
    auto x = test::cast<float>(test::normal(g, B * Tn, 0.0, 2.0));
    for (const auto& c : all_configs()) {
      if (c.degenerate == whiten_degenerate::error) continue;
      INFO(test::name(p) << " " << describe(c));
      auto pad = run<Bk, float>(std::vector<double>(x.begin(), x.end()), m, B, Tn, c);
      for (bool prefix : {false, true}) {
        INFO("packed rows keep their masked prefix: " << prefix);
        auto pk = test::pack(m, B, Tn, prefix);
        buffer<float, Bk> px(pk.take(x)), pout(pk.tokens(), -7.f);
        buffer<std::uint8_t, Bk> pm(pk.mask);
        buffer<std::int64_t, Bk> off(pk.offsets);
        packed<std::uint8_t, std::int64_t, S> P(off.cview1(), pk.tokens(), pm.cview1());
        whiten(test::make_backend<Bk>(), P, px.cview1(), pout.view1(), c);
        CHECK(test::bitwise_equal(pout.to_host(), pk.take(pad)));
        // in place
        whiten(test::make_backend<Bk>(), P, px.cview1(), px.view1(), c);
        CHECK(test::bitwise_equal(px.to_host(), pout.to_host()));
      }
    }
  }
  // A NaN at a masked position never enters the statistics; under all_positions it stays at
  // its own position only.
  const double nan = std::numeric_limits<double>::quiet_NaN();
  std::vector<double> x{1.0, nan, 3.0, 5.0};
  std::vector<std::uint8_t> m{1, 0, 1, 1};
  auto z = run<Bk, double>(x, m, 1, 4, whiten_config{.write = whiten_write::zero_masked});
  CHECK(z[1] == 0.0);
  CHECK(z[0] == Approx(-2.0 / std::sqrt(4.0 + 1e-8)));
  auto a = run<Bk, double>(x, m, 1, 4, whiten_config{.write = whiten_write::all_positions});
  CHECK(std::isnan(a[1]));
  CHECK(a[2] == 0.0);
}

// Long rows with every kind of padding (the CUDA row pass takes 4,096 positions from the first
// valid token per step: one step or two here): valid tokens in [100, 600) of 5000, in 1024
// positions from 7, in 1025 from 5, a whole row, interior spans from 200 to 4800,
// an empty row, and a NaN in a row's trailing padding. Against the float64 oracle, and packed
// == padded bitwise (outputs, and the moments of whiten and masked_moments).
TEMPLATE_LIST_TEST_CASE("whiten: long rows, packed equals padded", "[whiten][layout]", backends) {
  using Bk = TestType;
  using S = typename Bk::memory_space;
  auto g = test::rng(205);
  const index_t B = 6, Tn = 5000;
  std::vector<std::uint8_t> m(std::size_t(B * Tn), 0);
  auto set = [&](index_t i, index_t a, index_t b) {
    for (index_t t = a; t < b; ++t) m[std::size_t(i * Tn + t)] = 1;
  };
  set(0, 100, 600);
  set(1, 7, 7 + 1024);
  set(2, 5, 5 + 1025);
  set(3, 0, Tn);
  std::bernoulli_distribution coin(0.7);
  for (index_t t = 200; t < 4800; ++t) m[std::size_t(4 * Tn + t)] = coin(g) ? 1 : 0;
  m[std::size_t(4 * Tn + 200)] = m[std::size_t(4 * Tn + 4799)] = 1;
  auto x = test::cast<float>(test::normal(g, B * Tn, 0.5, 2.0));
  x[std::size_t(0 * Tn + 2000)] = std::numeric_limits<float>::quiet_NaN();  // masked: never read as a value
  std::vector<double> xd(x.begin(), x.end());
  for (const whiten_config& c : {whiten_config{}, whiten_config{.std = std_kind::population, .write = whiten_write::all_positions}}) {
    INFO(describe(c));
    whiten_stats st;
    auto want = ref::whiten(xd, m, c);
    auto pad = run<Bk, float>(xd, m, B, Tn, c, &st);
    test::require_close(pad, want.out, 1e-5, 1e-5);
    CHECK(st.local.count == want.count);
    test::require_close(run<Bk, double>(xd, m, B, Tn, c), want.out, 1e-12, 1e-12);
    for (bool prefix : {false, true}) {
      INFO("packed rows keep their masked prefix: " << prefix);
      auto pk = test::pack(m, B, Tn, prefix);
      buffer<float, Bk> px(pk.take(x)), pout(pk.tokens(), -7.f);
      buffer<std::uint8_t, Bk> pm(pk.mask);
      buffer<std::int64_t, Bk> off(pk.offsets);
      packed<std::uint8_t, std::int64_t, S> P(off.cview1(), pk.tokens(), pm.cview1());
      const whiten_stats pst = whiten(test::make_backend<Bk>(), P, px.cview1(), pout.view1(), c);
      CHECK(test::bitwise_equal(pout.to_host(), pk.take(pad)));
      CHECK(std::memcmp(&pst.local, &st.local, sizeof(moments)) == 0);
      buffer<float, Bk> xb(x);
      buffer<std::uint8_t, Bk> mb(m);
      padded<std::uint8_t, S> L(mb.cview2(B, Tn));
      const moments a = masked_moments(test::make_backend<Bk>(), L, xb.cview2(B, Tn));
      const moments b = masked_moments(test::make_backend<Bk>(), P, px.cview1());
      CHECK(std::memcmp(&a, &b, sizeof(moments)) == 0);
      CHECK(std::memcmp(&a, &st.local, sizeof(moments)) == 0);
    }
  }
  // Non-finite valid values in long rows (the CUDA block pass notes one, then finds the first
  // in the row): two in row 3 (whole row; steps 0 and 1), one in row 4, and the masked NaN of
  // row 0 before them. The first valid one is named, in both layouts, and nothing is written.
  auto bad = x;
  bad[std::size_t(3 * Tn + 4500)] = std::numeric_limits<float>::quiet_NaN();
  bad[std::size_t(3 * Tn + 4000)] = std::numeric_limits<float>::infinity();
  bad[std::size_t(4 * Tn + 4799)] = std::numeric_limits<float>::quiet_NaN();
  {
    buffer<float, Bk> xb(bad), out(B * Tn, -7.f);
    buffer<std::uint8_t, Bk> mb(m);
    padded<std::uint8_t, S> L(mb.cview2(B, Tn));
    try {
      whiten(test::make_backend<Bk>(), L, xb.cview2(B, Tn), out.view2(B, Tn));
      FAIL("no throw");
    } catch (const nonfinite_error& e) {
      CHECK(e.index() == 3 * Tn + 4000);
    }
    CHECK(out.to_host() == std::vector<float>(std::size_t(B * Tn), -7.f));
    auto pk = test::pack(m, B, Tn, false);
    buffer<float, Bk> px(pk.take(bad)), pout(pk.tokens(), -7.f);
    buffer<std::uint8_t, Bk> pm(pk.mask);
    buffer<std::int64_t, Bk> off(pk.offsets);
    packed<std::uint8_t, std::int64_t, S> P(off.cview1(), pk.tokens(), pm.cview1());
    try {
      masked_moments(test::make_backend<Bk>(), P, px.cview1());
      FAIL("no throw");
    } catch (const nonfinite_error& e) {
      CHECK(e.index() == pk.offsets[3] + 4000);  // row 3 starts with a valid token
    }
  }
}

TEMPLATE_LIST_TEST_CASE("whiten: errors write nothing", "[whiten][errors]", backends) {
  using Bk = TestType;
  using S = typename Bk::memory_space;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  buffer<double, Bk> x(std::vector<double>{1.0, 2.0, nan, 4.0}), out(4, -7.0);
  buffer<std::uint8_t, Bk> m(std::vector<std::uint8_t>{1, 1, 1, 0});
  padded<std::uint8_t, S> L(m.cview2(2, 2));
  auto be = test::make_backend<Bk>();
  try {
    whiten(be, L, x.cview2(2, 2), out.view2(2, 2));
    FAIL("no throw");
  } catch (const nonfinite_error& e) {
    CHECK(e.index() == 2);
  }
  REQUIRE_THROWS_AS(masked_moments(be, L, x.cview2(2, 2)), nonfinite_error);
  buffer<double, Bk> y(std::vector<double>{1.0, 2.0, 3.0, 4.0});
  REQUIRE_THROWS_AS(whiten(be, L, y.cview2(2, 2), out.view2(2, 2), whiten_config{.eps = 0.0}), config_error);
  REQUIRE_THROWS_AS(whiten(be, L, y.cview2(2, 2), out.view2(2, 2), moments{-1, 0.0, 0.0}), config_error);
  REQUIRE_THROWS_AS(whiten(be, L, y.cview2(2, 2), out.view2(2, 2), moments{3, 0.0, -1.0}), config_error);
  REQUIRE_THROWS_AS(whiten(be, L, y.cview2(2, 2), out.view2(1, 4)), shape_error);
  CHECK(out.to_host() == std::vector<double>(4, -7.0));
  // Malformed packed offsets: the CPU's message, nothing written (the CUDA write of a packed
  // batch runs flat over its N tokens, several blocks here, gated by the statistics' check).
  const index_t N = 9000;
  auto g = test::rng(207);
  buffer<double, Bk> xs(test::normal(g, N, 0.0, 1.0)), os(N, -7.0);
  for (const auto& [bad, needle] : test::malformed_offsets(N)) {
    INFO(needle);
    buffer<std::int64_t, Bk> ob(bad);
    packed<std::uint8_t, std::int64_t, S> P(ob.cview1(), N);
    CHECK_THROWS_WITH(whiten(be, P, xs.cview1(), os.view1()), Catch::Contains(needle));
    CHECK_THROWS_WITH(masked_moments(be, P, xs.cview1()), Catch::Contains(needle));
    CHECK(os.to_host() == std::vector<double>(std::size_t(N), -7.0));
  }
}

#if !defined(__CUDACC__)
TEST_CASE("whiten presets carry their peers' conventions", "[whiten][presets]") {
  CHECK(presets::verl::whitening.std == std_kind::sample);
  CHECK(presets::verl::whitening.write == whiten_write::all_positions);
  CHECK(presets::verl::whitening.degenerate == whiten_degenerate::error);
  CHECK(presets::openrlhf::whitening.std == std_kind::population);
  CHECK(presets::openrlhf::whitening.eps_mode == eps_placement::floor_variance);
  CHECK(presets::trl::whitening.write == whiten_write::zero_masked);
  CHECK(presets::nemo::whitening.eps_mode == eps_placement::inside_sqrt);
}

TEST_CASE("whiten per-token function is the map the CPU backend applies", "[whiten][hd]") {
  whiten_config c{.shift_mean = false, .write = whiten_write::zero_masked};
  detail::whiten_coeffs w{2.0, 0.5, false};
  CHECK(detail::whiten_token(true, 4.0, w, c) == 3.0);
  CHECK(detail::whiten_token(false, 4.0, w, c) == 0.0);
  c.write = whiten_write::all_positions;
  CHECK(detail::whiten_token(false, 4.0, w, c) == 3.0);
  w.degenerate = true;
  CHECK(detail::whiten_token(true, 4.0, w, c) == 0.0);
}
#endif
