// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
// GAE, discounted returns, ReMax, REINFORCE++(-baseline) and OPO against the float64 oracles
// of tests/reference/gae.hpp, on every option, mask pattern and edge case; run on every backend
// in polo::test::backends (the CUDA twin pairs with cuda/polo/gae.cuh).

#include "support/polo_test.hpp"
#include "reference/gae.hpp"

#include "polo/gae.hpp"
#if defined(__CUDACC__)
#include "polo/gae.cuh"
#else
#include "polo/cpu/gae.hpp"
#endif

#include <array>
#include <set>

namespace {

using namespace polo;
using polo::test::backends;
using polo::test::buffer;
using polo::test::mask_pattern;

constexpr std::array<mask_pattern, 6> patterns{mask_pattern::all_valid,      mask_pattern::right_pad,
                                               mask_pattern::left_pad,       mask_pattern::interior_spans,
                                               mask_pattern::random,         mask_pattern::with_empty_rows};

/// Inputs of one padded batch, already rounded to T (stored as double for the oracle).
template <class T>
struct batch {
  index_t B = 0, Tn = 0;
  std::vector<double> r, v;
  std::vector<std::uint8_t> m;
};

template <class T>
batch<T> make_batch(std::mt19937_64& g, index_t B, index_t Tn, mask_pattern p) {
  batch<T> b;
  b.B = B;
  b.Tn = Tn;
  b.m = test::make_mask(g, B, Tn, p);
  auto rt = test::cast<T>(test::normal(g, B * Tn, 0.1, 1.0));
  auto vt = test::cast<T>(test::normal(g, B * Tn, 0.3, 1.0));
  b.r.assign(rt.begin(), rt.end());
  b.v.assign(vt.begin(), vt.end());
  return b;
}

template <class T>
struct gae_run {
  std::vector<T> A, R;
  gae_stats st;
};

/// GAE on backend Bk over the padded batch (optionally with bootstrap flags and values).
template <class Bk, class T>
gae_run<T> run_padded(const batch<T>& b, const gae_config& c, const std::vector<int>* trunc = nullptr,
                      const std::vector<double>* boot = nullptr, const Bk& be = test::make_backend<Bk>()) {
  using S = typename Bk::memory_space;
  buffer<T, Bk> r(test::cast<T>(b.r)), v(test::cast<T>(b.v)), A(b.B * b.Tn, T(-7)), R(b.B * b.Tn, T(-7));
  buffer<std::uint8_t, Bk> m(b.m);
  padded<std::uint8_t, S> L(m.cview2(b.B, b.Tn));
  gae_run<T> out;
  if (trunc) {
    buffer<int, Bk> tb(*trunc);
    buffer<T, Bk> bb(test::cast<T>(*boot));
    out.st = gae(be, L, r.cview2(b.B, b.Tn), v.cview2(b.B, b.Tn), tb.cview1(), bb.cview1(),
                 A.view2(b.B, b.Tn), R.view2(b.B, b.Tn), c);
  } else {
    out.st = gae(be, L, r.cview2(b.B, b.Tn), v.cview2(b.B, b.Tn), A.view2(b.B, b.Tn),
                 R.view2(b.B, b.Tn), c);
  }
  out.A = A.to_host();
  out.R = R.to_host();
  return out;
}

/// GAE on the packed form of the same batch; outputs scattered back to [B,T] (fill -7).
template <class Bk, class T>
gae_run<T> run_packed(const batch<T>& b, const gae_config& c, const std::vector<int>* trunc = nullptr,
                      const std::vector<double>* boot = nullptr, const Bk& be = test::make_backend<Bk>(),
                      bool prefix = false) {
  using S = typename Bk::memory_space;
  auto pk = test::pack(b.m, b.B, b.Tn, prefix);
  const index_t N = pk.tokens();
  buffer<T, Bk> r(pk.take(test::cast<T>(b.r))), v(pk.take(test::cast<T>(b.v))), A(N, T(-7)), R(N, T(-7));
  buffer<std::uint8_t, Bk> m(pk.mask);
  buffer<std::int64_t, Bk> off(pk.offsets);
  packed<std::uint8_t, std::int64_t, S> L(off.cview1(), N, m.cview1());
  gae_run<T> out;
  if (trunc) {
    buffer<int, Bk> tb(*trunc);
    buffer<T, Bk> bb(test::cast<T>(*boot));
    out.st = gae(be, L, r.cview1(), v.cview1(), tb.cview1(), bb.cview1(), A.view1(), R.view1(), c);
  } else {
    out.st = gae(be, L, r.cview1(), v.cview1(), A.view1(), R.view1(), c);
  }
  out.A = pk.scatter(A.to_host(), T(-7));
  out.R = pk.scatter(R.to_host(), T(-7));
  return out;
}

/// The elements of a padded [B,T] tensor at the positions its packed form keeps (each row's
/// first to last valid token), in order: what a packed run scattered back is compared on.
template <class T>
std::vector<T> kept_positions(const std::vector<T>& x, const std::vector<std::uint8_t>& m, index_t B, index_t Tn) {
  auto pk = test::pack(m, B, Tn);
  const auto keep = pk.scatter(std::vector<std::uint8_t>(std::size_t(pk.tokens()), 1), std::uint8_t(0));
  std::vector<T> y;
  for (std::size_t k = 0; k < x.size(); ++k)
    if (keep[k]) y.push_back(x[k]);
  return y;
}

std::string describe(const gae_config& c) {
  std::ostringstream os;
  os << "gamma " << c.gamma << " lambda " << c.lambda << " mask " << int(c.mask) << " fill " << int(c.fill)
     << " lambda_mode " << int(c.lambda_mode) << " alpha " << c.alpha << " returns " << int(c.returns)
     << " lambda_value " << c.lambda_value;
  return os.str();
}

template <class T>
std::vector<T> only_valid(const std::vector<T>& x, const std::vector<std::uint8_t>& m) {
  std::vector<T> y(x.size(), T(0));
  for (std::size_t k = 0; k < x.size(); ++k)
    if (m[k]) y[k] = x[k];
  return y;
}

}  // namespace

TEMPLATE_LIST_TEST_CASE("gae matches the float64 peer loops for every option and mask pattern", "[gae]", backends) {
  using Bk = TestType;
  auto g = test::rng(101);
  INFO("seed " << test::base_seed());
  for (mask_pattern p : patterns) {
    auto bd = make_batch<double>(g, 6, 17, p);
    auto bf = make_batch<float>(g, 6, 17, p);
    for (auto mode : {gae_mask_mode::skip, gae_mask_mode::through})
      for (auto fill : {masked_fill::zero, masked_fill::recursion})
        for (double gamma : {0.0, 0.5, 0.95, 1.0})
          for (double lambda : {0.0, 0.5, 0.95, 1.0}) {
            gae_config c{.gamma = gamma, .lambda = lambda, .mask = mode, .fill = fill};
            INFO(test::name(p) << " " << describe(c));
            auto want = ref::gae(bd.r, bd.v, bd.m, bd.B, bd.Tn, c);
            auto got = run_padded<Bk, double>(bd, c);
            test::require_close(got.A, want.adv);
            test::require_close(got.R, want.ret);
            auto wf = ref::gae(bf.r, bf.v, bf.m, bf.B, bf.Tn, c);
            auto gf = run_padded<Bk, float>(bf, c);
            test::require_close(gf.A, wf.adv, 2e-5, 1e-5);
            test::require_close(gf.R, wf.ret, 2e-5, 1e-5);
            // statistics: valid tokens and the moments of A there
            long long n = 0;
            double s = 0.0;
            for (std::size_t k = 0; k < bd.m.size(); ++k)
              if (bd.m[k]) {
                ++n;
                s += want.adv[k];
              }
            CHECK(got.st.tokens == n);
            CHECK(got.st.advantages.count == n);
            CHECK(got.st.advantages.mean == Approx(n ? s / double(n) : 0.0).margin(1e-9));
          }
  }
}

TEMPLATE_LIST_TEST_CASE("gae agrees with the explicit sum of discounted TD errors", "[gae]", backends) {
  using Bk = TestType;
  auto g = test::rng(102);
  INFO("seed " << test::base_seed());
  for (mask_pattern p : patterns) {
    auto b = make_batch<double>(g, 5, 23, p);
    for (auto mode : {gae_mask_mode::skip, gae_mask_mode::through})
      for (double gamma : {0.5, 0.95, 1.0})
        for (double lambda : {0.0, 0.5, 0.95, 1.0}) {
          gae_config c{.gamma = gamma, .lambda = lambda, .mask = mode, .fill = masked_fill::zero};
          INFO(test::name(p) << " " << describe(c));
          test::require_close(run_padded<Bk, double>(b, c).A, ref::gae_direct(b.r, b.v, b.m, b.B, b.Tn, c), 1e-9, 1e-9);
        }
  }
}

TEMPLATE_LIST_TEST_CASE("gae: length-adaptive and decoupled lambda (VAPO)", "[gae]", backends) {
  using Bk = TestType;
  auto g = test::rng(103);
  INFO("seed " << test::base_seed());
  for (mask_pattern p : patterns) {
    auto b = make_batch<double>(g, 7, 40, p);
    for (auto mode : {gae_mask_mode::skip, gae_mask_mode::through})
      for (double alpha : {0.05, 0.3})
        for (auto lm : {gae_lambda_mode::fixed, gae_lambda_mode::length_adaptive})
          for (double lv : {1.0, 0.5, 0.0}) {
            gae_config c{.gamma = 0.97, .lambda = 0.9, .mask = mode, .fill = masked_fill::recursion,
                         .lambda_mode = lm, .alpha = alpha, .returns = gae_returns::value_lambda, .lambda_value = lv};
            INFO(test::name(p) << " " << describe(c));
            auto want = ref::gae(b.r, b.v, b.m, b.B, b.Tn, c);
            auto got = run_padded<Bk, double>(b, c);
            test::require_close(got.A, want.adv);
            test::require_close(got.R, want.ret);
            double lsum = 0.0;
            long long rows = 0;
            for (index_t i = 0; i < b.B; ++i) {
              bool any = false;
              for (index_t t = 0; t < b.Tn; ++t) any = any || b.m[i * b.Tn + t];
              if (any) {
                lsum += want.lambda[i];
                ++rows;
              }
            }
            CHECK(got.st.lambda.count == rows);
            CHECK(got.st.lambda.sum == Approx(lsum).margin(1e-12));
          }
  }
  // The adaptive λ of a sequence of n valid tokens is 1 − 1/max(αn, 1): 0 for short ones.
  gae_config c{.lambda_mode = gae_lambda_mode::length_adaptive, .alpha = 0.05};
  CHECK(detail::gae_lambda_of(c, 10) == 0.0);
  CHECK(detail::gae_lambda_of(c, 20) == 0.0);
  CHECK(detail::gae_lambda_of(c, 200) == Approx(0.9));
}

TEMPLATE_LIST_TEST_CASE("gae: truncation bootstrap (AReaL)", "[gae]", backends) {
  using Bk = TestType;
  auto g = test::rng(104);
  INFO("seed " << test::base_seed());
  for (mask_pattern p : patterns) {
    auto b = make_batch<double>(g, 8, 19, p);
    std::vector<int> trunc{1, 0, 1, 1, 0, 0, 1, 0};
    auto boot = test::normal(g, 8, 0.5, 1.0);
    boot[1] = std::numeric_limits<double>::quiet_NaN();  // not truncated: never read
    for (auto mode : {gae_mask_mode::skip, gae_mask_mode::through})
      for (auto fill : {masked_fill::zero, masked_fill::recursion})
        for (double gamma : {0.0, 0.5, 1.0}) {
          gae_config c{.gamma = gamma, .lambda = 0.95, .mask = mode, .fill = fill};
          INFO(test::name(p) << " " << describe(c));
          auto want = ref::gae(b.r, b.v, b.m, b.B, b.Tn, c, trunc, boot);
          auto got = run_padded<Bk, double>(b, c, &trunc, &boot);
          test::require_close(got.A, want.adv);
          test::require_close(got.R, want.ret);
          CHECK(got.st.truncated == 4);
        }
  }
  // A single valid token that is truncated: A = r + γ·bootstrap − v.
  batch<double> one{1, 3, {0.0, 2.0, 0.0}, {0.0, 0.5, 0.0}, {0, 1, 0}};
  std::vector<int> tr{1};
  std::vector<double> bs{4.0};
  auto got = run_padded<Bk, double>(one, gae_config{.gamma = 0.5, .lambda = 0.3}, &tr, &bs);
  CHECK(got.A == std::vector<double>{0.0, 2.0 + 0.5 * 4.0 - 0.5, 0.0});
  CHECK(got.R == std::vector<double>{0.0, 2.0 + 0.5 * 4.0, 0.0});
}

TEMPLATE_LIST_TEST_CASE("gae: packed equals padded bitwise", "[gae][layout]", backends) {
  using Bk = TestType;
  auto g = test::rng(105);
  INFO("seed " << test::base_seed());
  for (mask_pattern p : patterns) {
    auto b = make_batch<float>(g, 9, 21, p);
    std::vector<int> trunc{1, 0, 1, 0, 0, 1, 1, 0, 1};
    auto boot = test::normal(g, 9);
    for (auto mode : {gae_mask_mode::skip, gae_mask_mode::through})
      for (auto fill : {masked_fill::zero, masked_fill::recursion})
        for (auto lm : {gae_lambda_mode::fixed, gae_lambda_mode::length_adaptive}) {
          gae_config c{.gamma = 0.99, .lambda = 0.95, .mask = mode, .fill = fill, .lambda_mode = lm,
                       .returns = gae_returns::value_lambda, .lambda_value = 0.9};
          INFO(test::name(p) << " " << describe(c));
          auto pad = run_padded<Bk, float>(b, c);
          auto pk = run_packed<Bk, float>(b, c);
          // Compare on the positions the packed layout keeps (first to last valid of each row).
          auto sel = [&](const std::vector<float>& x) { return kept_positions(x, b.m, b.B, b.Tn); };
          CHECK(test::bitwise_equal(sel(pad.A), sel(pk.A)));
          CHECK(test::bitwise_equal(sel(pad.R), sel(pk.R)));
          CHECK(pad.st.tokens == pk.st.tokens);
          CHECK(pad.st.advantages.mean == pk.st.advantages.mean);
          // packed rows that keep their masked prefix (rows from position 0)
          auto pp = run_packed<Bk, float>(b, c, nullptr, nullptr, test::make_backend<Bk>(), true);
          CHECK(test::bitwise_equal(sel(pad.A), sel(pp.A)));
          CHECK(test::bitwise_equal(sel(pad.R), sel(pp.R)));
          CHECK(std::memcmp(&pad.st.advantages, &pp.st.advantages, sizeof(moments)) == 0);
          // With the bootstrap, "through" decays it across trailing padding in the padded form
          // (documented); skip is layout-independent.
          if (mode == gae_mask_mode::skip) {
            auto pad2 = run_padded<Bk, float>(b, c, &trunc, &boot);
            auto pk2 = run_packed<Bk, float>(b, c, &trunc, &boot);
            CHECK(test::bitwise_equal(sel(pad2.A), sel(pk2.A)));
            CHECK(test::bitwise_equal(sel(pad2.R), sel(pk2.R)));
          }
        }
  }
}

// Packed rows that keep their leading masked positions, of very different lengths: hundreds of
// short rows and a few long ones whose first valid token lies far in, at the 256-position
// boundary, or nowhere (on the CUDA backend a batch of short rows gets its anchors from a
// thread per row, which hands a row not resolved in its first 256 positions to its warp, and
// chunks of 32 threads x 4 tokens, or 8 under layout_invariant), against the float64 oracle of
// the same rows right-padded (skip mode: trailing padding changes nothing before it). Short
// rows with a masked prefix take two chunks each: more than the CUDA scans' chunk bound held
// before 2026-11-24 (scan_anchored_bound in cuda/polo/gae.cuh).
TEMPLATE_LIST_TEST_CASE("gae: ragged packed rows with masked prefixes", "[gae][layout]", backends) {
  using Bk = TestType;
  using S = typename Bk::memory_space;
  auto g = test::rng(108);
  INFO("seed " << test::base_seed());
  const index_t B = 700, Tmax = 3000;
  std::vector<index_t> len(B), first(B);
  for (index_t i = 0; i < B; ++i) {
    len[std::size_t(i)] = index_t(g() % 61);
    first[std::size_t(i)] = len[std::size_t(i)] > 0 ? index_t(g() % std::uint64_t(len[std::size_t(i)])) : 0;
  }
  // (row, length, first valid position; = length: none); rows 3, 10, 20, 22 share a warp
  for (auto [i, n, f] : {std::tuple<index_t, index_t, index_t>{3, 3000, 2000}, {10, 1200, 1200}, {20, 600, 256},
                         {21, 600, 255}, {22, 257, 256}, {500, 3000, 2900}, {501, 257, 257}}) {
    len[std::size_t(i)] = n;
    first[std::size_t(i)] = f;
  }
  batch<float> b;
  b.B = B;
  b.Tn = Tmax;
  b.m.assign(std::size_t(B * Tmax), 0);
  auto r = test::cast<float>(test::normal(g, B * Tmax, 0.1, 1.0));
  auto v = test::cast<float>(test::normal(g, B * Tmax, 0.3, 1.0));
  b.r.assign(r.begin(), r.end());
  b.v.assign(v.begin(), v.end());
  std::vector<std::int64_t> offsets{0};
  std::vector<std::uint8_t> pm;
  std::vector<float> pr, pv;
  long long valid = 0;
  for (index_t i = 0; i < B; ++i) {
    for (index_t t = 0; t < len[std::size_t(i)]; ++t) {
      const std::size_t k = std::size_t(i * Tmax + t);
      // the first valid position, then three in four valid
      const bool on = t >= first[std::size_t(i)] && (t == first[std::size_t(i)] || g() % 4 != 0);
      b.m[k] = on ? 1 : 0;
      valid += on ? 1 : 0;
      pm.push_back(b.m[k]);
      pr.push_back(r[k]);
      pv.push_back(v[k]);
    }
    offsets.push_back(offsets.back() + len[std::size_t(i)]);
  }
  const index_t N = index_t(offsets.back());
  buffer<float, Bk> rb(pr), vb(pv);
  buffer<std::uint8_t, Bk> mb(pm);
  buffer<std::int64_t, Bk> ob(offsets);
  packed<std::uint8_t, std::int64_t, S> L(ob.cview1(), N, mb.cview1());
  // CUDA: also chunks of 32 x 8 tokens (scan_chunking::layout_invariant)
  std::vector<Bk> bes{test::make_backend<Bk>()};
  if constexpr (requires(Bk x) { x.scans; }) {
    bes.push_back(bes[0]);
    bes[1].scans = scan_chunking::layout_invariant;
  }
  for (std::size_t e = 0; e < bes.size(); ++e) {
    for (auto fill : {masked_fill::zero, masked_fill::recursion})
      for (auto lm : {gae_lambda_mode::fixed, gae_lambda_mode::length_adaptive}) {
        const gae_config c{.gamma = 0.99, .lambda = 0.95, .fill = fill, .lambda_mode = lm};
        const Bk& be = bes[e];
        INFO(describe(c) << " backend variant " << e);
        buffer<float, Bk> A(N, -7.0f), R(N, -7.0f);
        const gae_stats st = gae(be, L, rb.cview1(), vb.cview1(), A.view1(), R.view1(), c);
        const auto want = ref::gae(b.r, b.v, b.m, B, Tmax, c);
        std::vector<double> wa, wr;
        double asum = 0.0;
        for (index_t i = 0; i < B; ++i)
          for (index_t t = 0; t < len[std::size_t(i)]; ++t) {
            const std::size_t k = std::size_t(i * Tmax + t);
            wa.push_back(want.adv[k]);
            wr.push_back(want.ret[k]);
            if (b.m[k]) asum += want.adv[k];
          }
        test::require_close(A.to_host(), wa, 2e-5, 1e-5);
        test::require_close(R.to_host(), wr, 2e-5, 1e-5);
        CHECK(st.tokens == valid);
        CHECK(st.advantages.count == valid);
        CHECK(st.advantages.mean == Approx(asum / double(valid)).epsilon(1e-5).margin(1e-6));
      }
    // the discounted returns (carry: trailing padding changes nothing before it either)
    INFO("discounted_returns, backend variant " << e);
    buffer<float, Bk> R(N, -7.0f);
    const returns_config rc{0.99, masked_fill::zero, returns_mask_mode::carry};
    const auto st = discounted_returns(bes[e], L, rb.cview1(), R.view1(), rc);
    const auto want = ref::returns(b.r, b.m, B, Tmax, 0.99, masked_fill::zero, returns_mask_mode::carry, nullptr);
    std::vector<double> wr;
    for (index_t i = 0; i < B; ++i)
      for (index_t t = 0; t < len[std::size_t(i)]; ++t) wr.push_back(want.ret[std::size_t(i * Tmax + t)]);
    test::require_close(R.to_host(), wr, 2e-5, 1e-5);
    CHECK(st.tokens == valid);
  }
}

// Outputs that start off a 16-byte boundary (a caller's slice of a larger buffer, e.g. a
// tensor view at an element offset): the CUDA apply pass stages the stores of such chunks in
// shared memory (chunks of 256 threads: rows of more than 2,048 tokens) or stores element by
// element (chunks of 32 and 64 threads), and under zero fill writes the leading
// masked chunks of left-padded rows in its first launch. Every element of the views gets the
// float64 oracle's value and the elements around them stay as they were, for A and R at
// offsets of 0-3 elements (independently), padded (left padding: rows cut at their first
// valid token, off the boundary) and packed with the masked prefix kept, in both fills.
TEMPLATE_LIST_TEST_CASE("gae and discounted_returns write views at any element offset", "[gae][layout]", backends) {
  using Bk = TestType;
  using S = typename Bk::memory_space;
  auto g = test::rng(9011);
  constexpr index_t guard = 8;
  for (auto [B, Tn] : {std::pair<index_t, index_t>{3, 5000}, {9, 400}, {40, 100}}) {
    auto b = make_batch<float>(g, B, Tn, mask_pattern::left_pad);
    auto pk = test::pack(b.m, B, Tn, true);
    const index_t N = B * Tn, Np = pk.tokens();
    buffer<float, Bk> r(test::cast<float>(b.r)), v(test::cast<float>(b.v));
    buffer<float, Bk> pr(pk.take(test::cast<float>(b.r))), pv(pk.take(test::cast<float>(b.v)));
    buffer<std::uint8_t, Bk> m(b.m), pm(pk.mask);
    buffer<std::int64_t, Bk> off(pk.offsets);
    padded<std::uint8_t, S> L(m.cview2(B, Tn));
    packed<std::uint8_t, std::int64_t, S> P(off.cview1(), Np, pm.cview1());
    for (auto fill : {masked_fill::zero, masked_fill::recursion}) {
      const gae_config c{.gamma = 0.99, .lambda = 0.95, .fill = fill};
      const returns_config rc{0.99, fill, returns_mask_mode::carry};
      const auto want = ref::gae(b.r, b.v, b.m, B, Tn, c);
      const auto want_r = ref::returns(b.r, b.m, B, Tn, 0.99, fill, returns_mask_mode::carry, nullptr);
      for (index_t oa : {0, 1, 3})
        for (index_t orr : {0, 2, 3}) {
          INFO("B " << B << " T " << Tn << " fill " << int(fill) << " offsets A " << oa << " R " << orr);
          // the views' elements, and the untouched guard elements around them
          auto inside = [](const std::vector<float>& x, index_t o, index_t n) {
            return std::vector<float>(x.begin() + o, x.begin() + o + n);
          };
          auto untouched = [](const std::vector<float>& x, index_t o, index_t n) {
            for (index_t k = 0; k < index_t(x.size()); ++k)
              if ((k < o || k >= o + n) && x[std::size_t(k)] != -7.f) return false;
            return true;
          };
          buffer<float, Bk> A(N + guard, -7.f), R(N + guard, -7.f);
          gae(test::make_backend<Bk>(), L, r.cview2(B, Tn), v.cview2(B, Tn), view<float, 2, S>{A.view1().data + oa, B, Tn, Tn},
              view<float, 2, S>{R.view1().data + orr, B, Tn, Tn}, c);
          auto ah = A.to_host(), rh = R.to_host();
          test::require_close(inside(ah, oa, N), want.adv, 2e-5, 1e-5);
          test::require_close(inside(rh, orr, N), want.ret, 2e-5, 1e-5);
          CHECK(untouched(ah, oa, N));
          CHECK(untouched(rh, orr, N));
          buffer<float, Bk> pA(Np + guard, -7.f), pR(Np + guard, -7.f);
          gae(test::make_backend<Bk>(), P, pr.cview1(), pv.cview1(), view<float, 1, S>{pA.view1().data + oa, Np, 1},
              view<float, 1, S>{pR.view1().data + orr, Np, 1}, c);
          auto pah = pA.to_host(), prh = pR.to_host();
          test::require_close(inside(pah, oa, Np), pk.take(want.adv), 2e-5, 1e-5);
          test::require_close(inside(prh, orr, Np), pk.take(want.ret), 2e-5, 1e-5);
          CHECK(untouched(pah, oa, Np));
          CHECK(untouched(prh, orr, Np));
          buffer<float, Bk> R2(N + guard, -7.f);
          discounted_returns(test::make_backend<Bk>(), L, r.cview2(B, Tn), view<float, 2, S>{R2.view1().data + orr, B, Tn, Tn},
                             rc);
          auto r2 = R2.to_host();
          test::require_close(inside(r2, orr, N), want_r.ret, 2e-5, 1e-5);
          CHECK(untouched(r2, orr, N));
        }
    }
  }
}

TEMPLATE_LIST_TEST_CASE("gae: skip and through agree on right and left padding, differ on interior spans",
                        "[gae][semantics]", backends) {
  using Bk = TestType;
  auto g = test::rng(106);
  INFO("seed " << test::base_seed());
  gae_config skip{.gamma = 0.9, .lambda = 0.95, .mask = gae_mask_mode::skip, .fill = masked_fill::zero};
  gae_config thru = skip;
  thru.mask = gae_mask_mode::through;
  for (mask_pattern p : {mask_pattern::all_valid, mask_pattern::right_pad, mask_pattern::left_pad,
                         mask_pattern::with_empty_rows}) {
    INFO(test::name(p));
    auto b = make_batch<double>(g, 8, 30, p);
    auto a = run_padded<Bk, double>(b, skip), c = run_padded<Bk, double>(b, thru);
    test::require_close(a.A, test::cast<double>(c.A), 1e-13, 1e-13);
    test::require_close(a.R, test::cast<double>(c.R), 1e-13, 1e-13);
  }
  // Left padding: valid tokens agree, but under masked_fill::recursion the padding differs
  // (skip echoes the first valid A; through decays it by γλ per position and drops v).
  {
    auto b = make_batch<double>(g, 4, 12, mask_pattern::left_pad);
    b.m.assign(b.m.size(), 0);
    for (index_t i = 0; i < 4; ++i)
      for (index_t t = 5; t < 12; ++t) b.m[i * 12 + t] = 1;
    gae_config s2 = skip, t2 = thru;
    s2.fill = t2.fill = masked_fill::recursion;
    auto a = run_padded<Bk, double>(b, s2), c = run_padded<Bk, double>(b, t2);
    test::require_close(only_valid(a.A, b.m), test::cast<double>(only_valid(c.A, b.m)), 1e-13, 1e-13);
    CHECK(a.A[4] == a.A[5]);                                  // skip: echo of the first valid A
    CHECK(c.A[4] == Approx(0.9 * 0.95 * c.A[5] + 0.9 * b.v[5]));  // through: δ = γ v_5 at t = 4
  }
  // Interior spans: a valid token before a masked span bootstraps from the next valid value
  // under skip, from 0 under through.
  {
    batch<double> b{1, 5, {1.0, 0.0, 0.0, 2.0, 0.0}, {0.5, 9.0, 9.0, 0.25, 0.0}, {1, 0, 0, 1, 0}};
    gae_config s1{.gamma = 1.0, .lambda = 1.0, .mask = gae_mask_mode::skip};
    gae_config t1 = s1;
    t1.mask = gae_mask_mode::through;
    auto a = run_padded<Bk, double>(b, s1), c = run_padded<Bk, double>(b, t1);
    // skip: A_3 = 2 − 0.25, A_0 = (1 + 0.25 − 0.5) + A_3 = 2.5
    CHECK(a.A == std::vector<double>{2.5, 0.0, 0.0, 1.75, 0.0});
    // through: A_3 = 1.75; t=2,1: δ = γ v'_{t+1} − 0 = 0.25, 0 → A_2 = 2.0, A_1 = 2.0;
    // A_0 = (1 + 0 − 0.5) + 2.0 = 2.5 — equal only because γ = λ = 1; with γλ < 1 they differ.
    CHECK(c.A == std::vector<double>{2.5, 0.0, 0.0, 1.75, 0.0});
    s1.gamma = t1.gamma = 0.5;
    a = run_padded<Bk, double>(b, s1);
    c = run_padded<Bk, double>(b, t1);
    // skip:    A_3 = 1.75; A_0 = 1 + 0.5·0.25 − 0.5 + 0.5·1.75 = 1.5
    // through: A_3 = 1.75; A_2 = 0.5·0.25 + 0.5·1.75 = 1.0; A_1 = 0 + 0.5·1.0 = 0.5;
    //          A_0 = 1 + 0 − 0.5 + 0.5·0.5 = 0.75
    CHECK(a.A[0] == Approx(1.5));
    CHECK(c.A[0] == Approx(0.75));
  }
}

TEMPLATE_LIST_TEST_CASE("gae: edge cases (empty batch, fully masked rows, a single valid token)", "[gae][edge]",
                        backends) {
  using Bk = TestType;
  // Empty batch and zero-length rows.
  for (auto [B, Tn] : {std::pair<index_t, index_t>{0, 5}, {3, 0}, {0, 0}}) {
    batch<double> b{B, Tn, std::vector<double>(std::size_t(B * Tn), 1.0), std::vector<double>(std::size_t(B * Tn), 1.0),
                    std::vector<std::uint8_t>(std::size_t(B * Tn), 1)};
    auto got = run_padded<Bk, double>(b, gae_config{});
    CHECK(got.st.tokens == 0);
    CHECK(got.st.sequences == B);
  }
  // A fully masked row writes 0 (zero fill) and its NaN inputs are never read.
  const double nan = std::numeric_limits<double>::quiet_NaN();
  batch<double> b{2, 4, {1.0, 2.0, 3.0, 4.0, nan, nan, nan, nan}, {0.5, 0.5, 0.5, 0.5, nan, nan, nan, nan},
                  {1, 1, 1, 1, 0, 0, 0, 0}};
  for (auto mode : {gae_mask_mode::skip, gae_mask_mode::through}) {
    auto got = run_padded<Bk, double>(b, gae_config{.gamma = 1.0, .lambda = 1.0, .mask = mode});
    CHECK(got.A == std::vector<double>{9.5, 8.5, 6.5, 3.5, 0, 0, 0, 0});
    CHECK(got.R == std::vector<double>{10.0, 9.0, 7.0, 4.0, 0, 0, 0, 0});
    CHECK(got.st.tokens == 4);
  }
  // Through with recursion fill on a fully masked row: r' = v' = 0, so 0 everywhere.
  auto got = run_padded<Bk, double>(b, gae_config{.mask = gae_mask_mode::through, .fill = masked_fill::recursion});
  CHECK(got.A[4] == 0.0);
  CHECK(got.R[7] == 0.0);
  // A single valid token anywhere: A = r − v (no next value), R = r.
  for (index_t pos : {0, 3, 6}) {
    batch<double> s{1, 7, std::vector<double>(7, nan), std::vector<double>(7, nan), std::vector<std::uint8_t>(7, 0)};
    s.r[pos] = 3.0;
    s.v[pos] = 1.25;
    s.m[pos] = 1;
    for (auto mode : {gae_mask_mode::skip, gae_mask_mode::through}) {
      auto o = run_padded<Bk, double>(s, gae_config{.gamma = 0.9, .lambda = 0.5, .mask = mode});
      std::vector<double> wa(7, 0.0), wr(7, 0.0);
      wa[pos] = 1.75;
      wr[pos] = 3.0;
      CHECK(o.A == wa);
      CHECK(o.R == wr);
    }
  }
}

TEMPLATE_LIST_TEST_CASE("gae: errors name the argument and write nothing", "[gae][errors]", backends) {
  using Bk = TestType;
  using S = typename Bk::memory_space;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  buffer<double, Bk> r(std::vector<double>{1, 2, 3, 4, 5, 6}), v(std::vector<double>{0, 0, nan, 0, 0, 0});
  buffer<std::uint8_t, Bk> m(std::vector<std::uint8_t>{1, 1, 0, 1, 1, 1});
  buffer<double, Bk> A(6, -7.0), R(6, -7.0);
  padded<std::uint8_t, S> L(m.cview2(2, 3));
  auto be = test::make_backend<Bk>();
  auto untouched = [&] {
    CHECK(A.to_host() == std::vector<double>(6, -7.0));
    CHECK(R.to_host() == std::vector<double>(6, -7.0));
  };
  // A masked NaN is fine.
  REQUIRE_NOTHROW(gae(be, L, r.cview2(2, 3), v.cview2(2, 3), A.view2(2, 3), R.view2(2, 3)));
  A = buffer<double, Bk>(6, -7.0);
  R = buffer<double, Bk>(6, -7.0);
  // A valid NaN reward: nonfinite_error with the flat index.
  buffer<double, Bk> rbad(std::vector<double>{1, 2, 3, 4, nan, 6});
  try {
    gae(be, L, rbad.cview2(2, 3), v.cview2(2, 3), A.view2(2, 3), R.view2(2, 3));
    FAIL("no throw");
  } catch (const nonfinite_error& e) {
    CHECK(e.index() == 4);
    CHECK(std::string(e.what()).find("'rewards'") != std::string::npos);
  }
  untouched();
  // Options out of their domain.
  for (gae_config c : {gae_config{.gamma = 1.5}, gae_config{.lambda = -0.1}, gae_config{.lambda_value = nan},
                       gae_config{.lambda_mode = gae_lambda_mode::length_adaptive, .alpha = 0.0}}) {
    REQUIRE_THROWS_AS(gae(be, L, r.cview2(2, 3), v.cview2(2, 3), A.view2(2, 3), R.view2(2, 3), c), config_error);
    untouched();
  }
  // Wrong output shape.
  REQUIRE_THROWS_AS(gae(be, L, r.cview2(2, 3), v.cview2(2, 3), A.view2(3, 2), R.view2(2, 3)), shape_error);
  untouched();
  // A NaN bootstrap of a truncated sequence.
  buffer<int, Bk> tr(std::vector<int>{0, 1});
  buffer<double, Bk> bs(std::vector<double>{0.0, nan});
  REQUIRE_THROWS_AS(gae(be, L, r.cview2(2, 3), v.cview2(2, 3), tr.cview1(), bs.cview1(), A.view2(2, 3), R.view2(2, 3)),
                    nonfinite_error);
  untouched();
  buffer<double, Bk> bs_short(std::vector<double>{0.0});
  REQUIRE_THROWS_AS(
      gae(be, L, r.cview2(2, 3), v.cview2(2, 3), tr.cview1(), bs_short.cview1(), A.view2(2, 3), R.view2(2, 3)),
      shape_error);
  untouched();
  // Malformed packed offsets.
  buffer<std::int64_t, Bk> off(std::vector<std::int64_t>{0, 4, 3, 6});
  packed<std::uint8_t, std::int64_t, S> P(off.cview1(), 6);
  REQUIRE_THROWS_AS(gae(be, P, r.cview1(), v.cview1(), A.view1(), R.view1()), value_error);
  untouched();
}

// ---------------------------------------------------------------------------------------------
// Returns, ReMax, REINFORCE++, REINFORCE++-baseline, OPO
// ---------------------------------------------------------------------------------------------

TEMPLATE_LIST_TEST_CASE("discounted_returns and remax_advantages match verl's scans", "[returns]", backends) {
  using Bk = TestType;
  using S = typename Bk::memory_space;
  auto g = test::rng(107);
  INFO("seed " << test::base_seed());
  for (mask_pattern p : patterns) {
    auto b = make_batch<double>(g, 6, 19, p);
    auto base = test::normal(g, 6);
    for (auto fill : {masked_fill::zero, masked_fill::recursion})
      for (auto mode : {returns_mask_mode::carry, returns_mask_mode::through, returns_mask_mode::reset})
      for (double gamma : {0.0, 0.5, 0.95, 1.0}) {
        INFO(test::name(p) << " gamma " << gamma << " fill " << int(fill) << " mode " << int(mode));
        auto want = ref::returns(b.r, b.m, b.B, b.Tn, gamma, fill, mode, &base);
        buffer<double, Bk> r(b.r), R(b.B * b.Tn, -7.0), A(b.B * b.Tn, -7.0), bl(base);
        buffer<std::uint8_t, Bk> m(b.m);
        padded<std::uint8_t, S> L(m.cview2(b.B, b.Tn));
        auto st = discounted_returns(test::make_backend<Bk>(), L, r.cview2(b.B, b.Tn), R.view2(b.B, b.Tn),
                                     returns_config{gamma, fill, mode});
        test::require_close(R.to_host(), want.ret);
        long long n = 0;
        for (auto x : b.m) n += x ? 1 : 0;
        CHECK(st.tokens == n);
        CHECK(st.returns.count == n);
        R = buffer<double, Bk>(b.B * b.Tn, -7.0);
        remax_advantages(test::make_backend<Bk>(), L, r.cview2(b.B, b.Tn), bl.cview1(), A.view2(b.B, b.Tn),
                         R.view2(b.B, b.Tn), returns_config{gamma, fill, mode});
        test::require_close(R.to_host(), want.ret);
        test::require_close(A.to_host(), want.adv);
        // packed == padded
        auto pk = test::pack(b.m, b.B, b.Tn);
        buffer<double, Bk> pr(pk.take(b.r)), pR(pk.tokens(), -7.0);
        buffer<std::uint8_t, Bk> pm(pk.mask);
        buffer<std::int64_t, Bk> off(pk.offsets);
        packed<std::uint8_t, std::int64_t, S> P(off.cview1(), pk.tokens(), pm.cview1());
        discounted_returns(test::make_backend<Bk>(), P, pr.cview1(), pR.view1(), returns_config{gamma, fill, mode});
        CHECK(test::bitwise_equal(pR.to_host(), pk.take(R.to_host())));
      }
  }
}

TEMPLATE_LIST_TEST_CASE("returns: the three mask modes agree on right padding and differ on interior spans",
                        "[returns][semantics]", backends) {
  using Bk = TestType;
  using S = typename Bk::memory_space;
  auto g = test::rng(112);
  INFO("seed " << test::base_seed());
  auto run3 = [&](const std::vector<double>& r, const std::vector<std::uint8_t>& m, index_t B, index_t Tn,
                  returns_mask_mode mode) {
    buffer<double, Bk> rb(r), R(B * Tn, -7.0);
    buffer<std::uint8_t, Bk> mb(m);
    padded<std::uint8_t, S> L(mb.cview2(B, Tn));
    discounted_returns(test::make_backend<Bk>(), L, rb.cview2(B, Tn), R.view2(B, Tn), returns_config{0.9, masked_fill::zero, mode});
    return R.to_host();
  };
  for (mask_pattern p : {mask_pattern::all_valid, mask_pattern::right_pad, mask_pattern::with_empty_rows}) {
    auto b = make_batch<double>(g, 6, 20, p);
    auto c = run3(b.r, b.m, 6, 20, returns_mask_mode::carry);
    CHECK(test::bitwise_equal(c, run3(b.r, b.m, 6, 20, returns_mask_mode::through)));
    CHECK(test::bitwise_equal(c, run3(b.r, b.m, 6, 20, returns_mask_mode::reset)));
  }
  // r = [1, (masked 5), 2], γ = 0.9: carry 1 + 0.9·2, through 1 + 0.9·0.9·2, reset 1.
  std::vector<double> r{1.0, 5.0, 2.0};
  std::vector<std::uint8_t> m{1, 0, 1};
  CHECK(run3(r, m, 1, 3, returns_mask_mode::carry)[0] == Approx(1.0 + 0.9 * 2.0));
  CHECK(run3(r, m, 1, 3, returns_mask_mode::through)[0] == Approx(1.0 + 0.81 * 2.0));
  CHECK(run3(r, m, 1, 3, returns_mask_mode::reset)[0] == 1.0);
}

TEMPLATE_LIST_TEST_CASE("reinforce_plus_plus matches returns then masked whitening", "[returns][reinforce]",
                        backends) {
  using Bk = TestType;
  using S = typename Bk::memory_space;
  auto g = test::rng(108);
  INFO("seed " << test::base_seed());
  for (mask_pattern p : patterns) {
    auto b = make_batch<float>(g, 6, 25, p);
    for (const reinforce_pp_config& c : {presets::verl::reinforce_pp, presets::openrlhf::reinforce_pp,
                                         reinforce_pp_config{.gamma = 0.9},
                                         reinforce_pp_config{.gamma = 0.9, .mask = returns_mask_mode::reset},
                                         reinforce_pp_config{.gamma = 0.9, .mask = returns_mask_mode::through}}) {
      INFO(test::name(p) << " gamma " << c.gamma << " write " << int(c.whiten.write));
      std::vector<double> wantR;
      auto want = ref::reinforce_plus_plus(b.r, b.m, b.B, b.Tn, c, &wantR);
      buffer<float, Bk> r(test::cast<float>(b.r)), R(b.B * b.Tn, -7.f), A(b.B * b.Tn, -7.f);
      buffer<std::uint8_t, Bk> m(b.m);
      padded<std::uint8_t, S> L(m.cview2(b.B, b.Tn));
      auto st = reinforce_plus_plus(test::make_backend<Bk>(), L, r.cview2(b.B, b.Tn), R.view2(b.B, b.Tn),
                                    A.view2(b.B, b.Tn), c);
      test::require_close(R.to_host(), wantR, 2e-5, 1e-5);
      test::require_close(A.to_host(), want.out, 1e-4, 1e-5);
      CHECK(st.whiten.used.count == want.count);
      // In place: advantages aliasing the returns.
      buffer<float, Bk> RA(b.B * b.Tn, -7.f);
      reinforce_plus_plus(test::make_backend<Bk>(), L, r.cview2(b.B, b.Tn), RA.view2(b.B, b.Tn), RA.view2(b.B, b.Tn), c);
      CHECK(test::bitwise_equal(RA.to_host(), A.to_host()));
    }
  }
}

TEMPLATE_LIST_TEST_CASE("reinforce_pp_baseline and opo_advantages match the oracles", "[reinforce][opo]", backends) {
  using Bk = TestType;
  using S = typename Bk::memory_space;
  auto g = test::rng(109);
  INFO("seed " << test::base_seed());
  const index_t Bn = 12, Tn = 15;
  for (mask_pattern p : patterns) {
    auto m = test::make_mask(g, Bn, Tn, p);
    auto s = test::discrete(g, Bn, {0.0, 1.0, 0.5});
    std::vector<long long> lab{4, 4, 4, 1, 1, 7, 2, 2, 2, 2, 9, 9};  // includes a group of one
    buffer<double, Bk> sb(s), seq(Bn, -7.0), tok(Bn * Tn, -7.0);
    buffer<std::int64_t, Bk> lb(std::vector<std::int64_t>(lab.begin(), lab.end()));
    buffer<std::uint8_t, Bk> mb(m);
    padded<std::uint8_t, S> L(mb.cview2(Bn, Tn));
    long long valid = 0;
    for (auto x : m) valid += x ? 1 : 0;
    for (const reinforce_pp_baseline_config& c :
         {presets::verl::reinforce_pp_baseline, presets::openrlhf::reinforce_pp_baseline,
          presets::nemo::reinforce_pp_baseline}) {
      INFO(test::name(p) << " singleton " << int(c.group.singleton) << " write " << int(c.whiten.write));
      std::vector<double> wseq;
      auto want = ref::reinforce_pp_baseline(s, lab, m, Bn, Tn, c, &wseq);
      if (c.whiten.degenerate == whiten_degenerate::error && valid < 2) {
        REQUIRE_THROWS_AS(reinforce_pp_baseline(test::make_backend<Bk>(), sb.cview1(), groups_by_label(lb.cview1()), L,
                                                seq.view1(), tok.view2(Bn, Tn), c),
                          value_error);
        continue;
      }
      auto st = reinforce_pp_baseline(test::make_backend<Bk>(), sb.cview1(), groups_by_label(lb.cview1()), L,
                                      seq.view1(), tok.view2(Bn, Tn), c);
      test::require_close(seq.to_host(), wseq);
      test::require_close(tok.to_host(), want.out, 1e-9, 1e-9);
      CHECK(st.whiten.used.count == want.count);
    }
    std::vector<double> wtok;
    auto wa = ref::opo(s, lab, m, Bn, Tn, &wtok);
    auto st = opo_advantages(test::make_backend<Bk>(), sb.cview1(), groups_by_label(lb.cview1()), L, seq.view1(),
                             tok.view2(Bn, Tn));
    test::require_close(seq.to_host(), wa);
    test::require_close(tok.to_host(), wtok);
    CHECK(st.groups == 5);
    CHECK(st.singleton_groups == 1);
  }
  // OPO by hand: lengths 2 and 6, scores 1 and 0: b = 2/8, A = 0.75 and −0.25.
  std::vector<std::uint8_t> m(2 * 6, 0);
  for (int t = 0; t < 2; ++t) m[t] = 1;
  for (int t = 0; t < 6; ++t) m[6 + t] = 1;
  buffer<double, Bk> sb(std::vector<double>{1.0, 0.0}), a(2, -7.0), tok(12, -7.0);
  buffer<std::uint8_t, Bk> mb(m);
  padded<std::uint8_t, S> L(mb.cview2(2, 6));
  opo_advantages(test::make_backend<Bk>(), sb.cview1(), contiguous_groups{2}, L, a.view1(), tok.view2(2, 6));
  CHECK(a.to_host() == std::vector<double>{0.75, -0.25});
  // Non-finite scores: error, nothing written.
  buffer<double, Bk> bad(std::vector<double>{1.0, std::numeric_limits<double>::infinity()});
  REQUIRE_THROWS_AS(opo_advantages(test::make_backend<Bk>(), bad.cview1(), contiguous_groups{2}, L, a.view1(),
                                   tok.view2(2, 6)),
                    nonfinite_error);
  CHECK(a.to_host() == std::vector<double>{0.75, -0.25});
}

TEMPLATE_LIST_TEST_CASE("returns entries: errors write nothing", "[returns][errors]", backends) {
  using Bk = TestType;
  using S = typename Bk::memory_space;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  buffer<double, Bk> r(std::vector<double>{1, nan, 3, 4}), R(4, -7.0), A(4, -7.0);
  buffer<std::uint8_t, Bk> m(std::vector<std::uint8_t>{1, 1, 1, 0});
  padded<std::uint8_t, S> L(m.cview2(2, 2));
  auto be = test::make_backend<Bk>();
  REQUIRE_THROWS_AS(discounted_returns(be, L, r.cview2(2, 2), R.view2(2, 2)), nonfinite_error);
  REQUIRE_THROWS_AS(reinforce_plus_plus(be, L, r.cview2(2, 2), R.view2(2, 2), A.view2(2, 2)), nonfinite_error);
  REQUIRE_THROWS_AS(discounted_returns(be, L, r.cview2(2, 2), R.view2(2, 2), returns_config{.gamma = -1.0}),
                    config_error);
  buffer<double, Bk> base(std::vector<double>{0.0, nan}), r2(std::vector<double>{1, 2, 3, 4});
  REQUIRE_THROWS_AS(remax_advantages(be, L, r2.cview2(2, 2), base.cview1(), A.view2(2, 2), R.view2(2, 2)),
                    nonfinite_error);
  // REINFORCE++ with verl's whitening on a single valid token: the degenerate batch throws first.
  buffer<std::uint8_t, Bk> m1(std::vector<std::uint8_t>{1, 0, 0, 0});
  padded<std::uint8_t, S> L1(m1.cview2(2, 2));
  REQUIRE_THROWS_AS(reinforce_plus_plus(be, L1, r2.cview2(2, 2), R.view2(2, 2), A.view2(2, 2),
                                        presets::verl::reinforce_pp),
                    value_error);
  CHECK(R.to_host() == std::vector<double>(4, -7.0));
  CHECK(A.to_host() == std::vector<double>(4, -7.0));
}

TEMPLATE_LIST_TEST_CASE("gae and returns are bitwise deterministic run to run", "[gae][determinism]", backends) {
  using Bk = TestType;
  auto g = test::rng(113);
  INFO("seed " << test::base_seed());
  auto b = make_batch<float>(g, 16, 300, mask_pattern::interior_spans);
  for (const gae_config& c : {presets::verl::gae, presets::openrlhf::gae, presets::nemo::gae_vapo}) {
    auto x = run_padded<Bk, float>(b, c), y = run_padded<Bk, float>(b, c);
    CHECK(test::bitwise_equal(x.A, y.A));
    CHECK(test::bitwise_equal(x.R, y.R));
    CHECK(x.st.advantages.mean == y.st.advantages.mean);
    CHECK(x.st.advantages.m2 == y.st.advantages.m2);
  }
}

#if !defined(__CUDACC__)
TEST_CASE("gae: row-strided views (a [B, T] slice of a wider buffer)", "[gae][cpu]") {
  auto g = test::rng(114);
  const index_t Bn = 5, Tn = 11, W = 16;
  auto b = make_batch<double>(g, Bn, Tn, mask_pattern::interior_spans);
  std::vector<double> r(std::size_t(Bn * W), 99.0), v(std::size_t(Bn * W), 99.0), A(std::size_t(Bn * W), -7.0),
      R(std::size_t(Bn * W), -7.0);
  std::vector<std::uint8_t> m(std::size_t(Bn * W), 1);
  for (index_t i = 0; i < Bn; ++i)
    for (index_t t = 0; t < Tn; ++t) {
      r[i * W + t] = b.r[i * Tn + t];
      v[i * W + t] = b.v[i * Tn + t];
      m[i * W + t] = b.m[i * Tn + t];
    }
  padded<std::uint8_t> L(view<const std::uint8_t, 2>{m.data(), Bn, Tn, W});
  gae(cpu{}, L, view<const double, 2>{r.data(), Bn, Tn, W}, view<const double, 2>{v.data(), Bn, Tn, W},
      view_of(A.data(), Bn, Tn, W), view_of(R.data(), Bn, Tn, W), presets::verl::gae);
  auto want = ref::gae(b.r, b.v, b.m, Bn, Tn, presets::verl::gae);
  std::vector<double> got_a, got_r;
  for (index_t i = 0; i < Bn; ++i)
    for (index_t t = 0; t < W; ++t) {
      if (t < Tn) {
        got_a.push_back(A[i * W + t]);
        got_r.push_back(R[i * W + t]);
      } else {
        CHECK(A[i * W + t] == -7.0);  // outside the slice: untouched
      }
    }
  test::require_close(got_a, want.adv);
  test::require_close(got_r, want.ret);
}

TEST_CASE("gae: AReaL's bootstrap from the last column as a strided view", "[gae][cpu]") {
  // AReaL keeps V(s_end) in the last column of a [B,T+1] values tensor at a masked position.
  auto g = test::rng(110);
  const index_t Bn = 5, Tn = 9, W = Tn + 1;
  auto r = test::normal(g, Bn * W), v = test::normal(g, Bn * W);
  auto m = test::make_mask(g, Bn, W, mask_pattern::right_pad);
  for (index_t i = 0; i < Bn; ++i) m[i * W + Tn] = 0;
  std::vector<int> trunc{1, 0, 1, 0, 1};
  std::vector<double> A(std::size_t(Bn * W), -7.0), R(std::size_t(Bn * W), -7.0);
  padded<std::uint8_t> L(view<const std::uint8_t, 2>{m.data(), Bn, W, W});
  view<const double, 1> boot{v.data() + Tn, Bn, W};
  gae(cpu{}, L, view<const double, 2>{r.data(), Bn, W, W}, view<const double, 2>{v.data(), Bn, W, W}, view_of(trunc),
      boot, view_of(A.data(), Bn, W, W), view_of(R.data(), Bn, W, W), presets::verl::gae);
  std::vector<double> bvals;
  for (index_t i = 0; i < Bn; ++i) bvals.push_back(v[i * W + Tn]);
  auto want = ref::gae(r, v, m, Bn, W, presets::verl::gae, trunc, bvals);
  test::require_close(A, want.adv);
  test::require_close(R, want.ret);
}

TEST_CASE("gae presets carry their peers' options", "[gae][presets]") {
  CHECK(presets::verl::gae.mask == gae_mask_mode::skip);
  CHECK(presets::verl::gae.lambda == 1.0);
  CHECK(presets::openrlhf::gae.mask == gae_mask_mode::through);
  CHECK(presets::trl::gae.lambda == 0.95);
  CHECK(presets::trl::gae.fill == masked_fill::zero);
  CHECK(presets::nemo::gae_vapo.lambda_mode == gae_lambda_mode::length_adaptive);
  CHECK(presets::nemo::gae_vapo.returns == gae_returns::value_lambda);
}

TEST_CASE("gae per-position functions compose as a scan", "[gae][hd]") {
  // Folding affine_compose over a row from the right gives the sequential recursion.
  auto g = test::rng(111);
  auto d = test::normal(g, 50);
  detail::affine_step acc{1.0, 0.0};
  double seq = 0.0;
  for (int t = 49; t >= 0; --t) {
    auto f = detail::gae_step(gae_mask_mode::skip, t % 7 != 3, d[t], 0.25, 0.5, 0.9, 0.9 * 0.95);
    seq = detail::affine_apply(f, seq);
    acc = detail::affine_compose(f, acc);
  }
  CHECK(detail::affine_apply(acc, 0.0) == Approx(seq).epsilon(1e-12));
}
#endif

#if defined(__CUDACC__)
// Determinism of the CUDA scans: each reduction (statistics) and each scanned output run twice
// on the same inputs must agree bitwise; rows long enough to span several chunks, and many
// short rows, cover both carry paths.
TEMPLATE_LIST_TEST_CASE("cuda: gae and returns are bitwise deterministic", "[gae][cuda][determinism]", backends) {
  using Bk = TestType;
  auto g = test::rng(9001);
  for (auto [B, Tn] : {std::pair<index_t, index_t>{3, 20000}, std::pair<index_t, index_t>{300, 100}}) {
    auto m = test::make_mask(g, B, Tn, mask_pattern::interior_spans);
    auto r = test::cast<float>(test::normal(g, B * Tn));
    auto v = test::cast<float>(test::normal(g, B * Tn));
    buffer<std::uint8_t, Bk> mb(m);
    buffer<float, Bk> rb(r), vb(v), A1(B * Tn, 0.f), R1(B * Tn, 0.f), A2(B * Tn, 1.f), R2(B * Tn, 1.f);
    padded<std::uint8_t, typename Bk::memory_space> L(mb.cview2(B, Tn));
    for (const gae_config& c : {gae_config{.gamma = 0.99, .lambda = 0.95}, presets::nemo::gae_vapo, presets::openrlhf::gae}) {
      auto s1 = gae(test::make_backend<Bk>(), L, rb.cview2(B, Tn), vb.cview2(B, Tn), A1.view2(B, Tn), R1.view2(B, Tn), c);
      auto s2 = gae(test::make_backend<Bk>(), L, rb.cview2(B, Tn), vb.cview2(B, Tn), A2.view2(B, Tn), R2.view2(B, Tn), c);
      CHECK(test::bitwise_equal(A1.to_host(), A2.to_host()));
      CHECK(test::bitwise_equal(R1.to_host(), R2.to_host()));
      CHECK(s1.tokens == s2.tokens);
      CHECK(std::memcmp(&s1.advantages, &s2.advantages, sizeof(moments)) == 0);
      CHECK(std::memcmp(&s1.returns.sum, &s2.returns.sum, sizeof(double)) == 0);
      CHECK(std::memcmp(&s1.lambda.sum, &s2.lambda.sum, sizeof(double)) == 0);
    }
    auto t1 = discounted_returns(test::make_backend<Bk>(), L, rb.cview2(B, Tn), R1.view2(B, Tn), returns_config{0.9});
    auto t2 = discounted_returns(test::make_backend<Bk>(), L, rb.cview2(B, Tn), R2.view2(B, Tn), returns_config{0.9});
    CHECK(test::bitwise_equal(R1.to_host(), R2.to_host()));
    CHECK(std::memcmp(&t1.returns, &t2.returns, sizeof(moments)) == 0);
  }
}
#endif

#if defined(__CUDACC__)
// The composite entries (REINFORCE++, REINFORCE++-baseline, OPO) return their statistics by
// value and take no `cuda::result`: a tag that carries one (say, reused from an asynchronous
// whiten call) must leave that memory untouched, and the statistics must be the synchronous
// call's, not the zeros of an inner call that went asynchronous.
TEST_CASE("cuda: composite entries ignore the caller's cuda::result", "[gae][cuda][reinforce][opo]") {
  using Bk = polo::cuda;
  using S = device_space;
  auto g = test::rng(9002);
  const index_t Bn = 12, Tn = 15;
  auto m = test::make_mask(g, Bn, Tn, mask_pattern::random);
  auto s = test::discrete(g, Bn, {0.0, 1.0, 0.5});
  auto r = test::normal(g, Bn * Tn);
  std::vector<std::int64_t> lab{4, 4, 4, 1, 1, 7, 2, 2, 2, 2, 9, 9};
  buffer<double, Bk> sb(s), rb(r), seq(Bn, -7.0), tok(Bn * Tn, -7.0), R(Bn * Tn, -7.0), A(Bn * Tn, -7.0);
  buffer<std::int64_t, Bk> lb(lab);
  buffer<std::uint8_t, Bk> mb(m);
  padded<std::uint8_t, S> L(mb.cview2(Bn, Tn));
  buffer<unsigned char, Bk> res(index_t(512), 0xAB);
  buffer<unsigned char, Bk> status(index_t(sizeof(polo::cuda::status)), 0);
  polo::cuda plain{};
  polo::cuda tagged{};
  tagged.result = res.view1().data;
  tagged.deferred_errors = reinterpret_cast<polo::cuda::status*>(status.view1().data);
  auto untouched = [&] {
    for (unsigned char c : res.to_host())
      if (c != 0xAB) return false;
    return true;
  };
  const auto cfg = presets::openrlhf::reinforce_pp_baseline;
  auto want = reinforce_pp_baseline(plain, sb.cview1(), groups_by_label(lb.cview1()), L, seq.view1(), tok.view2(Bn, Tn),
                                    cfg);
  auto got = reinforce_pp_baseline(tagged, sb.cview1(), groups_by_label(lb.cview1()), L, seq.view1(),
                                   tok.view2(Bn, Tn), cfg);
  CHECK(untouched());
  CHECK(got.group.groups == want.group.groups);
  CHECK(got.group.groups == 5);
  CHECK(got.whiten.used.count == want.whiten.used.count);
  CHECK(got.whiten.used.count > 0);
  CHECK(got.whiten.mean == want.whiten.mean);
  CHECK(got.whiten.inv_scale == want.whiten.inv_scale);
  auto pw = reinforce_plus_plus(plain, L, rb.cview2(Bn, Tn), R.view2(Bn, Tn), A.view2(Bn, Tn));
  auto pg = reinforce_plus_plus(tagged, L, rb.cview2(Bn, Tn), R.view2(Bn, Tn), A.view2(Bn, Tn));
  CHECK(untouched());
  CHECK(pg.whiten.used.count == pw.whiten.used.count);
  CHECK(pg.whiten.inv_scale == pw.whiten.inv_scale);
  CHECK(pg.returns.tokens == pw.returns.tokens);
  auto ow = opo_advantages(plain, sb.cview1(), groups_by_label(lb.cview1()), L, seq.view1(), tok.view2(Bn, Tn));
  auto og = opo_advantages(tagged, sb.cview1(), groups_by_label(lb.cview1()), L, seq.view1(), tok.view2(Bn, Tn));
  CHECK(untouched());
  CHECK(og.groups == ow.groups);
  CHECK(og.singleton_groups == 1);
  CHECK(std::memcmp(&og.scores, &ow.scores, sizeof(moments)) == 0);
  polo::cuda_check(tagged);  // no error was deferred
}

// Long rows (more than 32 chunks of 2048 tokens: several tiles of the CUDA rows pass) and
// many rows (more than 4096: the chunk table by cub's scan): the float64 oracle, and packed ==
// padded bitwise with leading and interior padding.
TEST_CASE("cuda: gae on long rows and on many rows", "[gae][cuda][layout]") {
  using Bk = polo::cuda;
  auto g = test::rng(9004);
  for (auto [B, Tn, p] : {std::tuple<index_t, index_t, mask_pattern>{2, 70001, mask_pattern::left_pad},
                          std::tuple<index_t, index_t, mask_pattern>{2, 70001, mask_pattern::interior_spans},
                          std::tuple<index_t, index_t, mask_pattern>{5000, 9, mask_pattern::random}}) {
    INFO("B " << B << " T " << Tn << " " << test::name(p));
    auto b = make_batch<float>(g, B, Tn, p);
    for (const gae_config& c : {gae_config{.gamma = 0.99, .lambda = 0.95}, presets::nemo::gae_vapo, presets::openrlhf::gae}) {
      INFO(describe(c));
      auto want = ref::gae(b.r, b.v, b.m, b.B, b.Tn, c);
      auto pad = run_padded<Bk, float>(b, c);
      test::require_close(pad.A, want.adv, 2e-5, 1e-5);
      test::require_close(pad.R, want.ret, 2e-5, 1e-5);
      long long n = 0;
      for (auto x : b.m) n += x ? 1 : 0;
      CHECK(pad.st.tokens == n);
      // The statistics of what was written (with 5,000 rows the row blocks' partials are merged
      // by a fold kernel of their own), against a float64 pass over the outputs.
      double sa = 0.0, sr = 0.0, m2 = 0.0;
      for (std::size_t k = 0; k < b.m.size(); ++k)
        if (b.m[k]) sa += pad.A[k], sr += pad.R[k];
      const double mean = n > 0 ? sa / double(n) : 0.0;
      for (std::size_t k = 0; k < b.m.size(); ++k)
        if (b.m[k]) m2 += (pad.A[k] - mean) * (pad.A[k] - mean);
      CHECK(pad.st.advantages.count == n);
      CHECK(pad.st.advantages.mean == Approx(mean).epsilon(1e-9).margin(1e-12));
      CHECK(pad.st.advantages.m2 == Approx(m2).epsilon(1e-9));
      CHECK(pad.st.returns.sum == Approx(sr).epsilon(1e-9).margin(1e-9));
      if (c.mask == gae_mask_mode::skip) {
        auto pk = run_packed<Bk, float>(b, c);
        auto sel = [&](const std::vector<float>& x) { return kept_positions(x, b.m, b.B, b.Tn); };
        CHECK(test::bitwise_equal(sel(pad.A), sel(pk.A)));
        CHECK(test::bitwise_equal(sel(pad.R), sel(pk.R)));
        CHECK(std::memcmp(&pad.st.advantages, &pk.st.advantages, sizeof(moments)) == 0);
        CHECK(pad.st.returns.sum == pk.st.returns.sum);
      }
    }
  }
}

// The CUDA backend picks its scans' chunk width from the typical row length (padded: T;
// packed: N/B), so a padded batch and the same batch packed can be cut differently: one long
// row among three short ones (T = 1000: chunks of 32 threads; packed mean 258 tokens: 64, the
// long row cut in two instead of four; T = 3000: 256 threads with stored suffixes, packed mean
// 757: 32, the long row cut in twelve instead of two; with rows of one token, mean 251: 32
// both). Under scan_chunking::adaptive (the default) the two
// agree to rounding; under scan_chunking::layout_invariant bitwise, outputs and statistics,
// for GAE in every mask mode and fill and for the discounted returns, and its outputs agree
// with the default's and the float64 oracle's to rounding.
template <class T>
void check_scan_chunking(index_t Tn, index_t short_len) {
  using Bk = polo::cuda;
  using S = device_space;
  auto g = test::rng(9007);
  const index_t B = 4;
  auto b = make_batch<T>(g, B, Tn, mask_pattern::all_valid);
  for (index_t i = 1; i < B; ++i)
    for (index_t t = 0; t < Tn; ++t) b.m[std::size_t(i * Tn + t)] = t >= Tn - short_len ? 1 : 0;
  auto pkinfo = test::pack(b.m, b.B, b.Tn);
  auto sel = [&](const std::vector<T>& x) { return kept_positions(x, b.m, b.B, b.Tn); };
  auto dbl = [](const std::vector<T>& x) { return std::vector<double>(x.begin(), x.end()); };
  const double rtol = std::is_same_v<T, float> ? 2e-5 : 1e-12, atol = std::is_same_v<T, float> ? 1e-5 : 1e-12;
  const Bk inv{.scans = scan_chunking::layout_invariant};
  for (auto mode : {gae_mask_mode::skip, gae_mask_mode::through})
    for (auto fill : {masked_fill::zero, masked_fill::recursion}) {
      gae_config c{.gamma = 0.99, .lambda = 0.95, .mask = mode, .fill = fill};
      INFO("T " << Tn << " short rows " << short_len << " " << describe(c));
      auto pad = run_padded<Bk, T>(b, c), pk = run_packed<Bk, T>(b, c);
      test::require_close(sel(pk.A), dbl(sel(pad.A)), rtol, atol);
      test::require_close(sel(pk.R), dbl(sel(pad.R)), rtol, atol);
      auto ipad = run_padded<Bk, T>(b, c, nullptr, nullptr, inv);
      auto ipk = run_packed<Bk, T>(b, c, nullptr, nullptr, inv);
      CHECK(test::bitwise_equal(sel(ipad.A), sel(ipk.A)));
      CHECK(test::bitwise_equal(sel(ipad.R), sel(ipk.R)));
      CHECK(std::memcmp(&ipad.st.advantages, &ipk.st.advantages, sizeof(moments)) == 0);
      CHECK(ipad.st.returns.sum == ipk.st.returns.sum);
      test::require_close(ipad.A, dbl(pad.A), rtol, atol);
      test::require_close(ipad.R, dbl(pad.R), rtol, atol);
      auto want = ref::gae(b.r, b.v, b.m, b.B, b.Tn, c);
      test::require_close(ipad.A, want.adv, rtol, atol);
      test::require_close(ipad.R, want.ret, rtol, atol);
    }
  // the discounted returns, with ReMax's baseline
  auto base = test::cast<T>(test::normal(g, B));
  buffer<T, Bk> r(test::cast<T>(b.r)), pr(pkinfo.take(test::cast<T>(b.r))), bl(base);
  buffer<std::uint8_t, Bk> m(b.m), pm(pkinfo.mask);
  buffer<std::int64_t, Bk> off(pkinfo.offsets);
  padded<std::uint8_t, S> L(m.cview2(b.B, b.Tn));
  packed<std::uint8_t, std::int64_t, S> P(off.cview1(), pkinfo.tokens(), pm.cview1());
  buffer<T, Bk> R(b.B * b.Tn, T(-7)), A(b.B * b.Tn, T(-7)), pR(pkinfo.tokens(), T(-7)), pA(pkinfo.tokens(), T(-7));
  const returns_config rc{0.99, masked_fill::zero, returns_mask_mode::carry};
  auto s1 = remax_advantages(inv, L, r.cview2(b.B, b.Tn), bl.cview1(), A.view2(b.B, b.Tn), R.view2(b.B, b.Tn), rc);
  auto s2 = remax_advantages(inv, P, pr.cview1(), bl.cview1(), pA.view1(), pR.view1(), rc);
  CHECK(test::bitwise_equal(pR.to_host(), pkinfo.take(R.to_host())));
  CHECK(test::bitwise_equal(pA.to_host(), pkinfo.take(A.to_host())));
  CHECK(std::memcmp(&s1.returns, &s2.returns, sizeof(moments)) == 0);
}

TEST_CASE("cuda: scans packed and padded under each scan_chunking", "[gae][cuda][layout]") {
  check_scan_chunking<float>(1000, 10);
  check_scan_chunking<float>(1000, 1);
  check_scan_chunking<float>(3000, 10);
  check_scan_chunking<double>(1000, 10);
  check_scan_chunking<double>(3000, 10);
}

// The returns' scans on rows of several 256-thread chunks (every thread's suffix stored by the
// summary pass; leading chunks under left padding), and on rows of one such chunk: discounted
// returns and ReMax against the float64 oracle in every mask mode and fill, packed == padded
// bitwise, and REINFORCE++ (returns, then the whitening) against its oracle.
TEST_CASE("cuda: returns, ReMax and REINFORCE++ on long rows", "[gae][cuda][returns]") {
  using Bk = polo::cuda;
  using S = device_space;
  auto g = test::rng(9005);
  for (auto [B, Tn, p] : {std::tuple<index_t, index_t, mask_pattern>{3, 9001, mask_pattern::left_pad},
                          std::tuple<index_t, index_t, mask_pattern>{3, 9001, mask_pattern::interior_spans},
                          std::tuple<index_t, index_t, mask_pattern>{4, 1500, mask_pattern::random}}) {
    INFO("B " << B << " T " << Tn << " " << test::name(p));
    auto b = make_batch<float>(g, B, Tn, p);
    auto base = test::cast<float>(test::normal(g, B));
    std::vector<double> based(base.begin(), base.end());
    buffer<float, Bk> r(test::cast<float>(b.r)), bl(base);
    buffer<std::uint8_t, Bk> m(b.m);
    padded<std::uint8_t, S> L(m.cview2(b.B, b.Tn));
    auto pk = test::pack(b.m, b.B, b.Tn);
    buffer<float, Bk> pr(pk.take(test::cast<float>(b.r)));
    buffer<std::uint8_t, Bk> pm(pk.mask);
    buffer<std::int64_t, Bk> off(pk.offsets);
    packed<std::uint8_t, std::int64_t, S> P(off.cview1(), pk.tokens(), pm.cview1());
    for (auto fill : {masked_fill::zero, masked_fill::recursion})
      for (auto mode : {returns_mask_mode::carry, returns_mask_mode::through, returns_mask_mode::reset})
        for (double gamma : {0.99, 1.0}) {
          INFO("gamma " << gamma << " fill " << int(fill) << " mode " << int(mode));
          const returns_config c{gamma, fill, mode};
          auto want = ref::returns(b.r, b.m, b.B, b.Tn, gamma, fill, mode, &based);
          buffer<float, Bk> R(b.B * b.Tn, -7.f), A(b.B * b.Tn, -7.f), pR(pk.tokens(), -7.f);
          auto st = discounted_returns(Bk{}, L, r.cview2(b.B, b.Tn), R.view2(b.B, b.Tn), c);
          test::require_close(R.to_host(), want.ret, 2e-5, 1e-5);
          long long n = 0;
          for (auto x : b.m) n += x ? 1 : 0;
          CHECK(st.tokens == n);
          discounted_returns(Bk{}, P, pr.cview1(), pR.view1(), c);
          CHECK(test::bitwise_equal(pR.to_host(), pk.take(R.to_host())));
          R = buffer<float, Bk>(b.B * b.Tn, -7.f);
          remax_advantages(Bk{}, L, r.cview2(b.B, b.Tn), bl.cview1(), A.view2(b.B, b.Tn), R.view2(b.B, b.Tn), c);
          test::require_close(R.to_host(), want.ret, 2e-5, 1e-5);
          test::require_close(A.to_host(), want.adv, 2e-5, 1e-5);
        }
    for (const reinforce_pp_config& c : {presets::verl::reinforce_pp, presets::openrlhf::reinforce_pp}) {
      std::vector<double> wantR;
      auto want = ref::reinforce_plus_plus(b.r, b.m, b.B, b.Tn, c, &wantR);
      buffer<float, Bk> R(b.B * b.Tn, -7.f), A(b.B * b.Tn, -7.f);
      auto st = reinforce_plus_plus(Bk{}, L, r.cview2(b.B, b.Tn), R.view2(b.B, b.Tn), A.view2(b.B, b.Tn), c);
      test::require_close(R.to_host(), wantR, 2e-5, 1e-5);
      test::require_close(A.to_host(), want.out, 1e-4, 1e-5);
      CHECK(st.whiten.used.count == want.count);
    }
  }
}

// OPO with labelled groups on a batch large enough for the sorted group table (more than
// 2048 sequences), against the float64 oracle.
TEST_CASE("cuda: opo_advantages with many labelled groups", "[gae][cuda][opo]") {
  using Bk = polo::cuda;
  using S = device_space;
  auto g = test::rng(9003);
  const index_t Bn = 5000, Tn = 3;
  auto m = test::make_mask(g, Bn, Tn, mask_pattern::random);
  auto s = test::discrete(g, Bn, {0.0, 1.0, 0.5, 0.25});
  std::vector<long long> lab(static_cast<std::size_t>(Bn));
  std::uniform_int_distribution<long long> pick(0, 700);
  for (auto& x : lab) x = pick(g) * 37 - 9000;  // unsorted, negative labels, groups of every size
  buffer<double, Bk> sb(s), seq(Bn, -7.0), tok(Bn * Tn, -7.0);
  buffer<std::int64_t, Bk> lb(std::vector<std::int64_t>(lab.begin(), lab.end()));
  buffer<std::uint8_t, Bk> mb(m);
  padded<std::uint8_t, S> L(mb.cview2(Bn, Tn));
  std::vector<double> wtok;
  auto wa = ref::opo(s, lab, m, Bn, Tn, &wtok);
  auto st = opo_advantages(polo::cuda{}, sb.cview1(), groups_by_label(lb.cview1()), L, seq.view1(), tok.view2(Bn, Tn));
  test::require_close(seq.to_host(), wa);
  test::require_close(tok.to_host(), wtok);
  std::set<long long> distinct(lab.begin(), lab.end());
  CHECK(st.groups == index_t(distinct.size()));
}
#endif

#if defined(__CUDACC__)
// Statistics without a host synchronization (docs/cuda.md): with `cuda::result` and
// `deferred_errors` set, gae, discounted_returns and remax_advantages enqueue everything and
// return zeros; the device publishes the synchronous call's statistics into *result (compared
// member by member: the structs hold no padding that matters) and writes the same outputs. On a
// data error nothing is written (outputs, *result) and cuda_check throws the synchronous
// call's exception, message included; bad packed offsets are checked on the device.
namespace {

template <class R>
struct async_slot {
  buffer<unsigned char, polo::cuda> res{index_t(sizeof(R)), 0xAB};
  buffer<unsigned char, polo::cuda> st{index_t(sizeof(polo::cuda::status)), 0};
  polo::cuda be() {
    polo::cuda b;
    b.result = res.view1().data;
    b.deferred_errors = reinterpret_cast<polo::cuda::status*>(st.view1().data);
    return b;
  }
  R value() const {
    R r;
    const auto h = res.to_host();
    std::memcpy(&r, h.data(), sizeof r);
    return r;
  }
  bool untouched() const {
    for (unsigned char c : res.to_host())
      if (c != 0xAB) return false;
    return true;
  }
};

template <class X>
bool same_bits(const X& a, const X& b) {
  return std::memcmp(&a, &b, sizeof(X)) == 0;
}
bool same_stats(const gae_stats& a, const gae_stats& b) {
  return a.sequences == b.sequences && a.tokens == b.tokens && a.truncated == b.truncated &&
         same_bits(a.advantages.count, b.advantages.count) && same_bits(a.advantages.mean, b.advantages.mean) &&
         same_bits(a.advantages.m2, b.advantages.m2) && same_bits(a.returns.sum, b.returns.sum) &&
         a.returns.count == b.returns.count && same_bits(a.lambda.sum, b.lambda.sum) &&
         a.lambda.count == b.lambda.count;
}
bool same_stats(const returns_stats& a, const returns_stats& b) {
  return a.sequences == b.sequences && a.tokens == b.tokens && a.returns.count == b.returns.count &&
         same_bits(a.returns.mean, b.returns.mean) && same_bits(a.returns.m2, b.returns.m2);
}

template <class F>
std::string message_of(F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "no exception";
}

std::string check_message(const polo::cuda& be) {
  return message_of([&] { cuda_check(be); });
}

}  // namespace

TEST_CASE("cuda: gae and returns publish their statistics without a host synchronization", "[gae][cuda][async]") {
  using Bk = polo::cuda;
  using S = device_space;
  auto g = test::rng(9004);
  INFO("seed " << test::base_seed());
  for (auto [Bn, Tn] : {std::pair<index_t, index_t>{37, 300}, std::pair<index_t, index_t>{5000, 40}}) {
    const auto m = test::make_mask(g, Bn, Tn, mask_pattern::interior_spans);
    const auto r = test::cast<float>(test::normal(g, Bn * Tn));
    const auto v = test::cast<float>(test::normal(g, Bn * Tn));
    std::vector<int> trunc(static_cast<std::size_t>(Bn));
    for (index_t i = 0; i < Bn; ++i) trunc[i] = i % 3 == 0;
    const auto boot = test::cast<float>(test::normal(g, Bn));
    const auto base = test::cast<float>(test::normal(g, Bn));
    auto pk = test::pack(m, Bn, Tn);
    const index_t N = pk.tokens();
    buffer<std::uint8_t, Bk> mb(m), pmb(pk.mask);
    buffer<std::int64_t, Bk> off(pk.offsets);
    buffer<float, Bk> rb(r), vb(v), prb(pk.take(r)), pvb(pk.take(v)), bb(boot), baseb(base);
    buffer<int, Bk> tb(trunc);
    padded<std::uint8_t, S> L(mb.cview2(Bn, Tn));
    packed<std::uint8_t, std::int64_t, S> P(off.cview1(), N, pmb.cview1());
    for (const gae_config& c : {gae_config{.gamma = 0.99, .lambda = 0.95}, presets::nemo::gae_vapo,
                                gae_config{.returns = gae_returns::value_lambda, .lambda_value = 0.9}}) {
      INFO("B " << Bn << " " << describe(c));
      // padded, with and without the bootstrap
      for (bool with_boot : {false, true}) {
        buffer<float, Bk> A1(Bn * Tn, -7.f), R1(Bn * Tn, -7.f), A2(Bn * Tn, -7.f), R2(Bn * Tn, -7.f);
        async_slot<gae_stats> env;
        gae_stats s1, s0;
        if (with_boot) {
          s1 = gae(Bk{}, L, rb.cview2(Bn, Tn), vb.cview2(Bn, Tn), tb.cview1(), bb.cview1(), A1.view2(Bn, Tn),
                   R1.view2(Bn, Tn), c);
          s0 = gae(env.be(), L, rb.cview2(Bn, Tn), vb.cview2(Bn, Tn), tb.cview1(), bb.cview1(), A2.view2(Bn, Tn),
                   R2.view2(Bn, Tn), c);
          CHECK(s1.truncated > 0);
        } else {
          s1 = gae(Bk{}, L, rb.cview2(Bn, Tn), vb.cview2(Bn, Tn), A1.view2(Bn, Tn), R1.view2(Bn, Tn), c);
          s0 = gae(env.be(), L, rb.cview2(Bn, Tn), vb.cview2(Bn, Tn), A2.view2(Bn, Tn), R2.view2(Bn, Tn), c);
        }
        CHECK(same_stats(s0, gae_stats{}));
        CHECK(s1.sequences == Bn);
        CHECK(s1.tokens > 0);
        CHECK(same_stats(env.value(), s1));
        CHECK(test::bitwise_equal(A1.to_host(), A2.to_host()));
        CHECK(test::bitwise_equal(R1.to_host(), R2.to_host()));
        CHECK(check_message(env.be()) == "no exception");
      }
      // packed
      buffer<float, Bk> A1(N, -7.f), R1(N, -7.f), A2(N, -7.f), R2(N, -7.f);
      async_slot<gae_stats> env;
      const gae_stats s1 = gae(Bk{}, P, prb.cview1(), pvb.cview1(), A1.view1(), R1.view1(), c);
      (void)gae(env.be(), P, prb.cview1(), pvb.cview1(), A2.view1(), R2.view1(), c);
      CHECK(same_stats(env.value(), s1));
      CHECK(test::bitwise_equal(A1.to_host(), A2.to_host()));
      CHECK(test::bitwise_equal(R1.to_host(), R2.to_host()));
      CHECK(check_message(env.be()) == "no exception");
    }
    // discounted_returns and remax_advantages, padded and packed
    for (const returns_config& c : {returns_config{0.9}, presets::verl::remax}) {
      buffer<float, Bk> R1(Bn * Tn, -7.f), R2(Bn * Tn, -7.f), A1(Bn * Tn, -7.f), A2(Bn * Tn, -7.f);
      async_slot<returns_stats> e1, e2, e3;
      const returns_stats t1 = discounted_returns(Bk{}, L, rb.cview2(Bn, Tn), R1.view2(Bn, Tn), c);
      CHECK(same_stats(discounted_returns(e1.be(), L, rb.cview2(Bn, Tn), R2.view2(Bn, Tn), c), returns_stats{}));
      CHECK(t1.tokens > 0);
      CHECK(same_stats(e1.value(), t1));
      CHECK(test::bitwise_equal(R1.to_host(), R2.to_host()));
      const returns_stats u1 =
          remax_advantages(Bk{}, L, rb.cview2(Bn, Tn), baseb.cview1(), A1.view2(Bn, Tn), R1.view2(Bn, Tn), c);
      (void)remax_advantages(e2.be(), L, rb.cview2(Bn, Tn), baseb.cview1(), A2.view2(Bn, Tn), R2.view2(Bn, Tn), c);
      CHECK(same_stats(e2.value(), u1));
      CHECK(test::bitwise_equal(A1.to_host(), A2.to_host()));
      CHECK(test::bitwise_equal(R1.to_host(), R2.to_host()));
      buffer<float, Bk> PR1(N, -7.f), PR2(N, -7.f);
      const returns_stats p1 = discounted_returns(Bk{}, P, prb.cview1(), PR1.view1(), c);
      (void)discounted_returns(e3.be(), P, prb.cview1(), PR2.view1(), c);
      CHECK(same_stats(e3.value(), p1));
      CHECK(test::bitwise_equal(PR1.to_host(), PR2.to_host()));
      CHECK(check_message(e1.be()) == "no exception");
      CHECK(check_message(e2.be()) == "no exception");
      CHECK(check_message(e3.be()) == "no exception");
    }
  }
  // The empty batch publishes the empty batch's statistics.
  buffer<std::uint8_t, Bk> m0(index_t(0), std::uint8_t(1));
  buffer<float, Bk> z(index_t(0), 0.f), za(index_t(0), 0.f), zr(index_t(0), 0.f);
  padded<std::uint8_t, S> L0(m0.cview2(0, 4));
  async_slot<gae_stats> e0;
  const gae_stats s0 = gae(Bk{}, L0, z.cview2(0, 4), z.cview2(0, 4), za.view2(0, 4), zr.view2(0, 4));
  (void)gae(e0.be(), L0, z.cview2(0, 4), z.cview2(0, 4), za.view2(0, 4), zr.view2(0, 4));
  CHECK(same_stats(e0.value(), s0));
  CHECK(check_message(e0.be()) == "no exception");
}

TEST_CASE("cuda: asynchronous gae and returns write nothing on a data error and defer the same exception",
          "[gae][cuda][async][errors]") {
  using Bk = polo::cuda;
  using S = device_space;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const index_t Bn = 64, Tn = 10;
  auto g = test::rng(9005);
  const auto r = test::normal(g, Bn * Tn);
  const auto v = test::normal(g, Bn * Tn);
  std::vector<std::uint8_t> m(static_cast<std::size_t>(Bn * Tn), 1);
  buffer<std::uint8_t, Bk> mb(m);
  padded<std::uint8_t, S> L(mb.cview2(Bn, Tn));
  auto rbad = r, vbad = v;
  rbad[static_cast<std::size_t>(13 * Tn + 4)] = nan;
  vbad[static_cast<std::size_t>(40 * Tn + 2)] = std::numeric_limits<double>::infinity();
  std::vector<int> trunc(static_cast<std::size_t>(Bn), 0);
  trunc[7] = 1;
  std::vector<double> boot(static_cast<std::size_t>(Bn), 0.0), base(static_cast<std::size_t>(Bn), 0.0);
  boot[7] = nan;
  base[21] = nan;
  buffer<double, Bk> rb(r), vb(v), rbb(rbad), vbb(vbad), bb(boot), baseb(base);
  buffer<int, Bk> tb(trunc);
  buffer<double, Bk> A(Bn * Tn, -7.0), R(Bn * Tn, -7.0);
  const std::vector<double> fresh(static_cast<std::size_t>(Bn * Tn), -7.0);
  // Runs `f(tag)` synchronously (must throw) and asynchronously: the same message, nothing written.
  auto same_error = [&](auto&& f, auto slot, const char* what) {
    INFO(what);
    const std::string want = message_of([&] { f(Bk{}); });
    CHECK(want != "no exception");
    CHECK(A.to_host() == fresh);
    CHECK(R.to_host() == fresh);
    std::string got;
    got = message_of([&] { f(slot.be()); });
    CHECK(got == "no exception");  // the call itself never throws a data error
    CHECK(A.to_host() == fresh);
    CHECK(R.to_host() == fresh);
    CHECK(slot.untouched());
    CHECK(check_message(slot.be()) == want);
    CHECK(check_message(slot.be()) == "no exception");  // cuda_check cleared it
  };
  same_error([&](const Bk& be) { gae(be, L, rbb.cview2(Bn, Tn), vb.cview2(Bn, Tn), A.view2(Bn, Tn), R.view2(Bn, Tn)); },
             async_slot<gae_stats>{}, "gae: NaN reward");
  same_error([&](const Bk& be) { gae(be, L, rb.cview2(Bn, Tn), vbb.cview2(Bn, Tn), A.view2(Bn, Tn), R.view2(Bn, Tn)); },
             async_slot<gae_stats>{}, "gae: infinite value");
  same_error([&](const Bk& be) {
    gae(be, L, rb.cview2(Bn, Tn), vb.cview2(Bn, Tn), tb.cview1(), bb.cview1(), A.view2(Bn, Tn), R.view2(Bn, Tn));
  }, async_slot<gae_stats>{}, "gae: NaN bootstrap");
  same_error([&](const Bk& be) { discounted_returns(be, L, rbb.cview2(Bn, Tn), R.view2(Bn, Tn)); },
             async_slot<returns_stats>{}, "discounted_returns: NaN reward");
  same_error([&](const Bk& be) {
    remax_advantages(be, L, rb.cview2(Bn, Tn), baseb.cview1(), A.view2(Bn, Tn), R.view2(Bn, Tn));
  }, async_slot<returns_stats>{}, "remax_advantages: NaN baseline");
  // Malformed packed offsets (start, a decrease, end), and the empty packed batch.
  for (int k = 0; k < 4; ++k) {
    std::vector<std::int64_t> off(static_cast<std::size_t>(Bn + 1));
    for (index_t i = 0; i <= Bn; ++i) off[i] = Tn * i;
    index_t nb = Bn;
    if (k == 0) off[0] = 3;
    if (k == 1) off[20] = 250;  // 190 -> 250 -> 210
    if (k == 2) off[Bn] = Tn * Bn - 1;
    if (k == 3) {
      off.assign(1, 5);  // B = 0, offsets[0] != 0
      nb = 0;
    }
    buffer<std::int64_t, Bk> ob(off);
    packed<std::uint8_t, std::int64_t, S> P(ob.cview1(), Tn * nb);
    const index_t N = Tn * nb;
    INFO("offsets case " << k);
    auto first = [N](auto vw) {  // the first N elements of a view
      vw.n = N;
      return vw;
    };
    same_error([&](const Bk& be) {
      gae(be, P, first(rb.cview1()), first(vb.cview1()), first(A.view1()), first(R.view1()));
    },
               async_slot<gae_stats>{}, "gae: offsets");
    same_error([&](const Bk& be) {
      discounted_returns(be, P, first(rb.cview1()), first(R.view1()));
    },
               async_slot<returns_stats>{}, "discounted_returns: offsets");
  }
  // cuda::result without deferred_errors is a configuration error (nothing written).
  buffer<unsigned char, Bk> res(index_t(sizeof(gae_stats)), 0xAB);
  Bk half{};
  half.result = res.view1().data;
  REQUIRE_THROWS_AS(gae(half, L, rb.cview2(Bn, Tn), vb.cview2(Bn, Tn), A.view2(Bn, Tn), R.view2(Bn, Tn)), config_error);
  REQUIRE_THROWS_AS(discounted_returns(half, L, rb.cview2(Bn, Tn), R.view2(Bn, Tn)), config_error);
  REQUIRE_THROWS_AS(remax_advantages(half, L, rb.cview2(Bn, Tn), baseb.cview1(), A.view2(Bn, Tn), R.view2(Bn, Tn)),
                    config_error);
  // A chunking that is none of scan_chunking's values: a configuration error naming it.
  Bk odd{};
  odd.scans = static_cast<scan_chunking>(7);
  REQUIRE_THROWS_WITH(gae(odd, L, rb.cview2(Bn, Tn), vb.cview2(Bn, Tn), A.view2(Bn, Tn), R.view2(Bn, Tn)),
                      Catch::Contains("option 'scans' is 7"));
  REQUIRE_THROWS_AS(discounted_returns(odd, L, rb.cview2(Bn, Tn), R.view2(Bn, Tn)), config_error);
  CHECK(A.to_host() == fresh);
  CHECK(R.to_host() == fresh);
}
#endif
