// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
// group_advantages and broadcast_to_tokens against the float64 oracle, on every option
// combination, every preset and every edge case; run on every backend in polo::test::backends.

#include "support/polo_test.hpp"
#include "reference/advantages.hpp"

#include <algorithm>
#include <array>
#include <map>
#include <utility>

namespace {

using namespace polo;
using polo::test::backends;
using polo::test::buffer;

std::vector<long long> contiguous_labels(index_t B, index_t G) {
  std::vector<long long> l(static_cast<std::size_t>(B));
  for (index_t i = 0; i < B; ++i) l[i] = i / G;
  return l;
}

/// Every option combination the config allows (singleton_rule::error excluded: tested apart).
std::vector<advantage_config> all_configs() {
  std::vector<advantage_config> out;
  for (auto bl : {baseline_kind::group_mean, baseline_kind::leave_one_out, baseline_kind::none})
    for (auto sc : {scale_kind::group_std, scale_kind::leave_one_out_std, scale_kind::batch_std, scale_kind::none})
      for (auto sk : {std_kind::sample, std_kind::population})
        for (auto em : {eps_placement::add_to_std, eps_placement::inside_sqrt, eps_placement::floor_variance})
          for (auto sr : {singleton_rule::zero, singleton_rule::raw})
            for (auto zr : {zero_variance_rule::zero, zero_variance_rule::divide, zero_variance_rule::skip_scale})
              for (auto nf : {nonfinite_policy::error, nonfinite_policy::zero_advantage}) {
                advantage_config c;
                c.baseline = bl;
                c.scale = sc;
                c.std = sk;
                c.eps_mode = em;
                c.eps = em == eps_placement::add_to_std ? 1e-6 : 1e-8;
                c.singleton = sr;
                c.zero_variance = zr;
                c.nonfinite = nf;
                out.push_back(c);
              }
  return out;
}

std::string describe(const advantage_config& c) {
  std::ostringstream os;
  os << "baseline " << int(c.baseline) << " scale " << int(c.scale) << " std " << int(c.std) << " eps_mode "
     << int(c.eps_mode) << " eps " << c.eps << " singleton " << int(c.singleton) << " zero_var "
     << int(c.zero_variance) << " nonfinite " << int(c.nonfinite);
  return os.str();
}

/// Runs group_advantages on backend B with labels or contiguous groups; returns A as double.
template <class B, class T>
std::vector<T> run(const std::vector<double>& scores, const std::vector<long long>* labels, index_t G,
                   const advantage_config& c, group_stats* st = nullptr) {
  buffer<T, B> s(test::cast<T>(scores));
  buffer<T, B> a(index_t(scores.size()), T(-7));
  group_stats got;
  if (labels) {
    buffer<std::int64_t, B> l(std::vector<std::int64_t>(labels->begin(), labels->end()));
    got = group_advantages(test::make_backend<B>(), s.cview1(), groups_by_label(l.cview1()), a.view1(), c);
  } else {
    got = group_advantages(test::make_backend<B>(), s.cview1(), contiguous_groups{G}, a.view1(), c);
  }
  if (st) *st = got;
  return a.to_host();
}

/// Scores with exact ties, constant groups, a few NaN/inf and continuous values.
std::vector<double> tricky_scores(std::mt19937_64& g, index_t B, bool with_nonfinite) {
  auto s = test::discrete(g, B, {0.0, 0.5, 1.0});
  auto n = test::normal(g, B, 0.3, 2.0);
  for (index_t i = 0; i < B; ++i)
    if (i % 5 == 3) s[i] = n[i];
  for (index_t i = 8; i < std::min<index_t>(B, 16); ++i) s[i] = 0.1;  // constant groups at G = 4 and 8
  if (with_nonfinite && B > 24) {
    s[2] = std::numeric_limits<double>::quiet_NaN();
    s[21] = std::numeric_limits<double>::infinity();
    s[22] = -std::numeric_limits<double>::infinity();
    s[23] = std::numeric_limits<double>::quiet_NaN();  // group 5 (G=4): two scoreable left
  }
  return s;
}

}  // namespace

TEMPLATE_LIST_TEST_CASE("group_advantages matches the float64 reference for every option", "[advantages]", backends) {
  using B = TestType;
  auto g = test::rng(1);
  INFO("seed " << test::base_seed());
  const index_t Bn = 48;
  for (bool nonfinite : {false, true}) {
    auto scores = tricky_scores(g, Bn, nonfinite);
    // labelled: unsorted labels of unequal sizes, including groups of one
    std::vector<long long> labels(static_cast<std::size_t>(Bn));
    std::uniform_int_distribution<long long> lab(-3, 9);
    for (auto& l : labels) l = lab(g) * 1000 + 17;
    labels[5] = 424242;  // a group of one
    for (index_t G : {index_t(4), index_t(8)}) {
      auto clabels = contiguous_labels(Bn, G);
      // One section per (nonfinite, G, baseline): each can run alone (-c "nonfinite 0 G 4
      // baseline 0"), so that a sanitizer run of this case can be split across processes.
      for (int bl = 0; bl < 3; ++bl) {
        DYNAMIC_SECTION("nonfinite " << int(nonfinite) << " G " << G << " baseline " << bl) {
          std::size_t k = 0;
          for (const auto& c : all_configs()) {
            if (int(c.baseline) != bl) continue;
            if (!test::config_selected(k++)) continue;  // POLO_TEST_CONFIG_STRIDE (sanitizer runs)
            INFO(describe(c) << " G " << G << " nonfinite " << nonfinite);
            auto want = ref::group_advantages(scores, clabels, c);
            auto want_l = ref::group_advantages(scores, labels, c);
            if (want.nonfinite_error) {
              REQUIRE_THROWS_AS((run<B, double>(scores, nullptr, G, c)), nonfinite_error);
              REQUIRE_THROWS_AS((run<B, float>(scores, &labels, G, c)), nonfinite_error);
              continue;
            }
            group_stats st;
            test::require_close(run<B, double>(scores, nullptr, G, c, &st), want.adv);
            CHECK(st.zero_std_groups == want.zero_std_groups);
            test::require_close(run<B, float>(scores, nullptr, G, c), want.adv, 2e-5, 5e-5);
            if (!want_l.singleton_error) {
              test::require_close(run<B, double>(scores, &labels, G, c), want_l.adv);
              test::require_close(run<B, float>(scores, &labels, G, c), want_l.adv, 2e-5, 5e-5);
            }
          }
        }
      }
    }
  }
}

TEMPLATE_LIST_TEST_CASE("group_advantages presets reproduce the peers", "[advantages][presets]", backends) {
  using B = TestType;
  // Hand-checked values: group {1, 0, 0, 1} and {0.5, 0.5, 0.5, 0.5}, then a group of one.
  const std::vector<double> s = {1, 0, 0, 1, 0.5, 0.5, 0.5, 0.5};
  const double sd = std::sqrt(1.0 / 3.0);  // sample std of {1,0,0,1}
  SECTION("verl grpo: (s-mu)/(sigma+1e-6), constant group 0, singleton s/(1+1e-6)") {
    auto a = run<B, double>(s, nullptr, 4, presets::verl::grpo);
    test::require_close(a, {0.5 / (sd + 1e-6), -0.5 / (sd + 1e-6), -0.5 / (sd + 1e-6), 0.5 / (sd + 1e-6), 0, 0, 0, 0});
    auto one = run<B, double>({2.5}, nullptr, 1, presets::verl::grpo);
    test::require_close(one, {2.5 / (1 + 1e-6)});
  }
  SECTION("TRL grpo: eps 1e-4, NaN rows get 0 and leave the statistics") {
    std::vector<double> t = {1, 0, std::numeric_limits<double>::quiet_NaN(), 1};
    auto a = run<B, double>(t, nullptr, 4, presets::trl::grpo);
    double sd3 = std::sqrt(1.0 / 3.0);  // sample std of {1,0,1}
    double mu = 2.0 / 3.0;
    test::require_close(a, {(1 - mu) / (sd3 + 1e-4), (0 - mu) / (sd3 + 1e-4), 0, (1 - mu) / (sd3 + 1e-4)});
    auto one = run<B, double>({2.5, 1.0}, nullptr, 1, presets::trl::grpo);
    test::require_close(one, {0, 0});
  }
  SECTION("OpenRLHF rloo and group_norm; groups of one are refused") {
    auto a = run<B, double>({1, 0, 0, 1}, nullptr, 4, presets::openrlhf::rloo);
    test::require_close(a, {1 - 1.0 / 3, 0 - 2.0 / 3, 0 - 2.0 / 3, 1 - 1.0 / 3});
    auto gn = run<B, double>({1, 0, 0, 1}, nullptr, 4, presets::openrlhf::group_norm);
    test::require_close(gn, {0.5 / (sd + 1e-9), -0.5 / (sd + 1e-9), -0.5 / (sd + 1e-9), 0.5 / (sd + 1e-9)});
    REQUIRE_THROWS_AS((run<B, double>({1.0}, nullptr, 1, presets::openrlhf::group_norm)), value_error);
  }
  SECTION("NeMo grpo: leave-one-out mean and std, no division where the others are constant") {
    // {1,0,0,0}: for i=0 the others {0,0,0} are constant -> A = 1 - 0 undivided.
    auto a = run<B, double>({1, 0, 0, 0}, nullptr, 4, presets::nemo::grpo);
    double so = std::sqrt(1.0 / 3.0);  // sample std of {1,0,0}
    test::require_close(a, {1.0, (0 - 1.0 / 3) / (so + 1e-6), (0 - 1.0 / 3) / (so + 1e-6), (0 - 1.0 / 3) / (so + 1e-6)});
    auto two = run<B, double>({3, 1}, nullptr, 2, presets::nemo::grpo);
    test::require_close(two, {2, -2});
  }
  SECTION("verl rloo keeps a singleton's score, rloo_vectorized zeroes it") {
    test::require_close(run<B, double>({4.0}, nullptr, 1, presets::verl::rloo), {4.0});
    test::require_close(run<B, double>({4.0}, nullptr, 1, presets::verl::rloo_vectorized), {0.0});
  }
}

TEMPLATE_LIST_TEST_CASE("group_advantages edge cases", "[advantages][edge]", backends) {
  using B = TestType;
  SECTION("polo's default refuses a group of one and writes nothing") {
    buffer<double, B> s(std::vector<double>{1, 2, 3});
    buffer<double, B> a(3, -7.0);
    std::vector<std::int64_t> lab = {5, 9, 5};
    buffer<std::int64_t, B> l(lab);
    try {
      group_advantages(test::make_backend<B>(), s.cview1(), groups_by_label(l.cview1()), a.view1());
      FAIL("expected value_error");
    } catch (const value_error& e) {
      CHECK_THAT(e.what(), Catch::Contains("sequence 1") && Catch::Contains("singleton_rule"));
    }
    test::require_close(a.to_host(), {-7, -7, -7});
  }
  SECTION("constant groups give exactly 0 and are counted") {
    group_stats st;
    auto a = run<B, float>({0.1, 0.1, 0.1, 0.3, 0.7, 0.7}, nullptr, 3, {}, &st);
    CHECK(a[0] == 0.0f);
    CHECK(a[1] == 0.0f);
    CHECK(a[2] == 0.0f);
    CHECK(st.zero_std_groups == 1);
    CHECK(st.frac_zero_std() == Approx(0.5));
  }
  SECTION("a non-finite score is reported with its index, nothing written") {
    buffer<float, B> s(std::vector<float>{1, 2, std::numeric_limits<float>::infinity(), 4});
    buffer<float, B> a(4, -7.0f);
    try {
      group_advantages(test::make_backend<B>(), s.cview1(), contiguous_groups{2}, a.view1());
      FAIL("expected nonfinite_error");
    } catch (const nonfinite_error& e) {
      CHECK(e.index() == 2);
      CHECK_THAT(e.what(), Catch::Contains("'scores'") && Catch::Contains("inf") && Catch::Contains("index 2"));
    }
    test::require_close(a.to_host(), {-7, -7, -7, -7});
  }
  SECTION("a group with every score non-finite gets 0 under zero_advantage") {
    advantage_config c;
    c.nonfinite = nonfinite_policy::zero_advantage;
    group_stats st;
    double nan = std::numeric_limits<double>::quiet_NaN();
    auto a = run<B, double>({nan, nan, 1, 3}, nullptr, 2, c, &st);
    test::require_close(a, {0, 0, -1 / (std::sqrt(2.0) + 1e-6), 1 / (std::sqrt(2.0) + 1e-6)});
    CHECK(st.empty_groups == 1);
    CHECK(st.nonfinite_scores == 2);
    CHECK(st.scores.count == 2);
  }
  SECTION("an empty batch is fine") {
    auto a = run<B, double>({}, nullptr, 4, {});
    CHECK(a.empty());
  }
  SECTION("in place: advantages may alias scores") {
    std::vector<double> v = {1, 0, 0, 1, 3, 5};
    auto want = ref::group_advantages(v, contiguous_labels(6, 3), advantage_config{}).adv;
    buffer<double, B> s(v);
    group_advantages(test::make_backend<B>(), s.cview1(), contiguous_groups{3}, s.view1());
    test::require_close(s.to_host(), want);
  }
  SECTION("labels: order and numbering do not matter, results are bitwise equal") {
    auto g = test::rng(7);
    auto s = test::normal(g, 40);
    std::vector<long long> l1(40), l2(40);
    for (int i = 0; i < 40; ++i) {
      l1[i] = (i * 7) % 5;          // interleaved groups
      l2[i] = 1000 - 13 * l1[i];    // same partition, other numbering and order
    }
    auto a1 = run<B, double>(s, &l1, 1, {});
    auto a2 = run<B, double>(s, &l2, 1, {});
    CHECK(test::bitwise_equal(a1, a2));
  }
  SECTION("deterministic: two runs are bitwise equal") {
    auto g = test::rng(8);
    auto s = test::normal(g, 4096);
    std::vector<long long> l(4096);
    for (int i = 0; i < 4096; ++i) l[i] = (i * 2654435761LL) % 97;
    auto a1 = run<B, float>(s, &l, 1, presets::nemo::grpo);
    auto a2 = run<B, float>(s, &l, 1, presets::nemo::grpo);
    CHECK(test::bitwise_equal(a1, a2));
  }
}

namespace {

/// Scores of B sequences in contiguous groups of G with exact ties, continuous values, inf
/// scattered, and (when there are enough groups) a constant group, a group with one finite
/// member and a group with none.
std::vector<double> shaped_scores(std::mt19937_64& g, index_t B, index_t G) {
  const double nan = std::numeric_limits<double>::quiet_NaN(), inf = std::numeric_limits<double>::infinity();
  auto s = test::discrete(g, B, {0.0, 0.5, 1.0});
  auto n = test::normal(g, B, 0.2, 1.5);
  for (index_t i = 0; i < B; ++i)
    if (i % 3 == 1) s[i] = n[i];
  const index_t groups = B / G;
  if (groups >= 2)
    for (index_t i = G; i < 2 * G; ++i) s[i] = 0.25;  // group 1: constant
  if (groups >= 3 && G >= 2)
    for (index_t i = 2 * G + 1; i < 3 * G; ++i) s[i] = nan;  // group 2: one scoreable member
  if (groups >= 4)
    for (index_t i = 3 * G; i < 4 * G; ++i) s[i] = -inf;  // group 3: none
  for (index_t i = 5 * G + 2; i < B; i += 97) s[i] = (i % 2) ? inf : nan;
  return s;
}

/// What group_stats should say about `s` in the groups `labels` names, in float64 (the moments
/// straight from their definitions, the σ sum from each group's two-pass std).
struct naive_group_stats {
  index_t groups = 0, empty = 0, singleton = 0, nonfinite = 0, std_count = 0, count = 0;
  double mean = 0.0, m2 = 0.0, std_sum = 0.0;
};
naive_group_stats naive_stats(const std::vector<double>& s, const std::vector<long long>& labels, std_kind k) {
  naive_group_stats r;
  std::map<long long, std::vector<double>> members;  // finite scores of each group
  for (std::size_t i = 0; i < s.size(); ++i) {
    auto& m = members[labels[i]];
    if (std::isfinite(s[i])) m.push_back(s[i]);
    else ++r.nonfinite;
  }
  std::vector<double> all;
  for (const auto& [label, m] : members) {
    ++r.groups;
    all.insert(all.end(), m.begin(), m.end());
    if (m.empty()) ++r.empty;
    if (m.size() == 1) ++r.singleton;
    if (m.size() >= 2) {
      bool defined = false;
      r.std_sum += ref::std_of(m, k, defined);
      ++r.std_count;
    }
  }
  r.count = index_t(all.size());
  for (double x : all) r.mean += x / double(all.size());
  for (double x : all) r.m2 += (x - r.mean) * (x - r.mean);
  return r;
}

/// Checks group_stats against naive_stats and the reference's advantages.
void check_stats(const group_stats& st, const naive_group_stats& expect, const ref::advantages_result& want,
                 index_t Bn) {
  CHECK(st.sequences == Bn);
  CHECK(st.groups == expect.groups);
  CHECK(st.empty_groups == expect.empty);
  CHECK(st.singleton_groups == expect.singleton);
  CHECK(st.zero_std_groups == want.zero_std_groups);
  CHECK(st.nonfinite_scores == expect.nonfinite);
  CHECK(st.scores.count == expect.count);
  CHECK(st.scores.mean == Approx(expect.mean).epsilon(1e-12).margin(1e-12));
  CHECK(st.scores.m2 == Approx(expect.m2).epsilon(1e-11));
  CHECK(st.group_std.count == expect.std_count);
  CHECK(st.group_std.sum == Approx(expect.std_sum).epsilon(1e-11));
  double asum = 0.0;
  for (double x : want.adv) asum += x;
  CHECK(st.advantage.count == Bn);
  CHECK(st.advantage.sum == Approx(asum).margin(1e-9 * double(Bn)));
}

}  // namespace

TEMPLATE_LIST_TEST_CASE("group_advantages over every contiguous group size and batch size", "[advantages][shapes]",
                        backends) {
  // On the GPU: batches of up to 2048 sequences in one block (groups of up to 32 share a warp,
  // larger ones take a warp in chunks of 32), larger batches in several kernels.
  using B = TestType;
  auto g = test::rng(21);
  INFO("seed " << test::base_seed());
  std::vector<advantage_config> configs(4);
  for (auto& c : configs) c.nonfinite = nonfinite_policy::zero_advantage;
  configs[0].singleton = singleton_rule::zero;
  configs[1].baseline = baseline_kind::leave_one_out;
  configs[1].scale = scale_kind::leave_one_out_std;
  configs[1].std = std_kind::population;
  configs[1].eps_mode = eps_placement::inside_sqrt;
  configs[1].eps = 1e-8;
  configs[1].singleton = singleton_rule::raw;
  configs[2].scale = scale_kind::batch_std;
  configs[2].singleton = singleton_rule::raw;
  configs[2].zero_variance = zero_variance_rule::divide;
  configs[3].nonfinite = nonfinite_policy::error;
  configs[3].singleton = singleton_rule::zero;
  std::vector<std::pair<index_t, index_t>> shapes;  // (B, G)
  for (index_t G : {1, 3, 8, 16, 17, 31, 32, 33, 64, 100, 128, 129, 700, 2048}) {
    shapes.emplace_back(G == 2048 ? G : 2 * G, G);
    if (2048 / G > 2) shapes.emplace_back(G * (2048 / G), G);
    if (G == 1 || G == 16 || G == 100) shapes.emplace_back(G * (2048 / G + 1), G);
  }
  std::size_t k = 0;
  for (const auto& [Bn, G] : shapes) {
    const advantage_config& c = configs[k++ % configs.size()];
    INFO("B " << Bn << " G " << G << " config " << describe(c));
    const auto scores = shaped_scores(g, Bn, G);
    const auto want = ref::group_advantages(scores, contiguous_labels(Bn, G), c);
    if (want.nonfinite_error) {
      index_t first = 0;
      while (std::isfinite(scores[first])) ++first;
      buffer<float, B> s(test::cast<float>(scores));
      buffer<float, B> a(Bn, -7.0f);
      try {
        group_advantages(test::make_backend<B>(), s.cview1(), contiguous_groups{G}, a.view1(), c);
        FAIL("expected nonfinite_error");
      } catch (const nonfinite_error& e) {
        CHECK(e.index() == first);
      }
      CHECK(test::bitwise_equal(a.to_host(), std::vector<float>(std::size_t(Bn), -7.0f)));
      continue;
    }
    const auto expect = naive_stats(scores, contiguous_labels(Bn, G), c.std);
    group_stats st;
    const auto got = run<B, double>(scores, nullptr, G, c, &st);
    test::require_close(got, want.adv);
    test::require_close(run<B, float>(scores, nullptr, G, c), want.adv, 2e-5, 5e-5);
    check_stats(st, expect, want, Bn);
    // Run to run: the same bits, advantages and statistics.
    group_stats st2;
    CHECK(test::bitwise_equal(got, run<B, double>(scores, nullptr, G, c, &st2)));
    CHECK(std::memcmp(&st, &st2, sizeof st) == 0);
  }
}

TEMPLATE_LIST_TEST_CASE("group_advantages over labelled groups of uneven sizes", "[advantages][shapes]", backends) {
  // Shuffled labels, groups of 1 to 40 members and one of 300, at batch sizes up to 2048 (one
  // block on the GPU, which sorts the labels itself) and above.
  using B = TestType;
  auto g = test::rng(23);
  INFO("seed " << test::base_seed());
  std::vector<advantage_config> configs(3);
  for (auto& c : configs) {
    c.nonfinite = nonfinite_policy::zero_advantage;
    c.singleton = singleton_rule::raw;
  }
  configs[1].baseline = baseline_kind::leave_one_out;
  configs[1].scale = scale_kind::leave_one_out_std;
  configs[2].scale = scale_kind::batch_std;
  std::size_t k = 0;
  for (index_t Bn : {index_t(48), index_t(1000), index_t(2048), index_t(2049)}) {
    std::vector<long long> labels;
    std::uniform_int_distribution<int> size(1, 40);
    long long next = 0;
    if (Bn >= 1000) labels.assign(300, 7777);
    while (index_t(labels.size()) < Bn) {
      const int sz = std::min<int>(size(g), int(Bn - index_t(labels.size())));
      labels.insert(labels.end(), std::size_t(sz), 31 * next++ - 500);
    }
    std::shuffle(labels.begin(), labels.end(), g);
    auto scores = shaped_scores(g, Bn, 1);
    for (index_t i = 0; i < Bn; ++i)
      if (labels[i] == 31 * 3 - 500) scores[i] = 0.75;  // a constant group
    const advantage_config& c = configs[k++ % configs.size()];
    INFO("B " << Bn << " config " << describe(c));
    const auto want = ref::group_advantages(scores, labels, c);
    const auto expect = naive_stats(scores, labels, c.std);
    group_stats st;
    const auto got = run<B, double>(scores, &labels, 1, c, &st);
    test::require_close(got, want.adv);
    test::require_close(run<B, float>(scores, &labels, 1, c), want.adv, 2e-5, 5e-5);
    check_stats(st, expect, want, Bn);
    group_stats st2;
    CHECK(test::bitwise_equal(got, run<B, double>(scores, &labels, 1, c, &st2)));
    CHECK(std::memcmp(&st, &st2, sizeof st) == 0);
  }
}

TEMPLATE_LIST_TEST_CASE("group statistics combine exactly across micro-batches and ranks", "[advantages][split]", backends) {
  using B = TestType;
  auto g = test::rng(11);
  auto s = test::normal(g, 64, 1.0, 3.0);
  advantage_config c = presets::trl::grpo_batch_std;
  group_stats whole;
  auto a_whole = run<B, double>(s, nullptr, 8, c, &whole);
  // Two ranks, each with 4 whole groups: all-reduce the score moments, then normalize.
  std::vector<double> s0(s.begin(), s.begin() + 32), s1(s.begin() + 32, s.end());
  group_stats st0, st1;
  run<B, double>(s0, nullptr, 8, c, &st0);
  run<B, double>(s1, nullptr, 8, c, &st1);
  advantage_config cg = c;
  cg.batch = st0.scores + st1.scores;
  auto a0 = run<B, double>(s0, nullptr, 8, cg, &st0);
  auto a1 = run<B, double>(s1, nullptr, 8, cg, &st1);
  a0.insert(a0.end(), a1.begin(), a1.end());
  test::require_close(a0, std::vector<double>(a_whole.begin(), a_whole.end()), 1e-12, 1e-12);
  group_stats sum = st0;
  sum += st1;
  CHECK(sum.groups == whole.groups);
  CHECK(sum.scores.count == whole.scores.count);
  CHECK(sum.scores.mean == Approx(whole.scores.mean).epsilon(1e-14));
  CHECK(sum.scores.m2 == Approx(whole.scores.m2).epsilon(1e-12));
  CHECK(sum.group_std.sum == Approx(whole.group_std.sum).epsilon(1e-12));
  CHECK(sum.advantage.count == whole.advantage.count);
}

TEMPLATE_LIST_TEST_CASE("group_advantages rejects bad shapes and options by name", "[advantages][errors]", backends) {
  using B = TestType;
  buffer<double, B> s(std::vector<double>{1, 2, 3, 4, 5, 6});
  buffer<double, B> a(6, -7.0);
  buffer<double, B> short_out(5, -7.0);
  auto be = test::make_backend<B>();
  CHECK_THROWS_WITH(group_advantages(be, s.cview1(), contiguous_groups{4}, a.view1()),
                    Catch::Contains("'scores' has shape [6]") && Catch::Contains("multiple of the group size G = 4"));
  CHECK_THROWS_WITH(group_advantages(be, s.cview1(), contiguous_groups{3}, short_out.view1()),
                    Catch::Contains("'advantages' has shape [5]; expected [6]"));
  CHECK_THROWS_AS(group_advantages(be, s.cview1(), contiguous_groups{0}, a.view1()), config_error);
  advantage_config bad;
  bad.eps = -1;
  CHECK_THROWS_WITH(group_advantages(be, s.cview1(), contiguous_groups{3}, a.view1(), bad),
                    Catch::Contains("option 'eps' is -1"));
  bad.eps = 0;
  bad.zero_variance = zero_variance_rule::divide;
  CHECK_THROWS_AS(group_advantages(be, s.cview1(), contiguous_groups{3}, a.view1(), bad), config_error);
  buffer<std::int64_t, B> l(std::vector<std::int64_t>{1, 2});
  CHECK_THROWS_WITH(group_advantages(be, s.cview1(), groups_by_label(l.cview1()), a.view1()),
                    Catch::Contains("'groups.labels' has shape [2]; expected [6]"));
  test::require_close(a.to_host(), std::vector<double>(6, -7.0));
}

TEMPLATE_LIST_TEST_CASE("broadcast to tokens: padded and packed agree bitwise with the reference", "[advantages][tokens]", backends) {
  using B = TestType;
  auto g = test::rng(21);
  for (auto p : {test::mask_pattern::all_valid, test::mask_pattern::right_pad, test::mask_pattern::left_pad,
                 test::mask_pattern::interior_spans, test::mask_pattern::random, test::mask_pattern::with_empty_rows}) {
    for (index_t T : {index_t(1), index_t(37)}) {
      INFO("pattern " << test::name(p) << " T " << T);
      const index_t Bn = 12;
      auto mask = test::make_mask(g, Bn, T, p);
      auto scores = test::normal(g, Bn);
      auto want_seq = ref::group_advantages(scores, contiguous_labels(Bn, 4), advantage_config{}).adv;
      auto want_tok = ref::broadcast(want_seq, mask, T);

      buffer<float, B> s(test::cast<float>(scores));
      buffer<float, B> a(Bn, -7.0f);
      buffer<float, B> tok(Bn * T, -7.0f);
      buffer<std::uint8_t, B> m(mask);
      auto be = test::make_backend<B>();
      padded<std::uint8_t, typename B::memory_space> lay(m.cview2(Bn, T));
      group_advantages(be, s.cview1(), contiguous_groups{4}, lay, a.view1(), tok.view2(Bn, T));
      auto got_tok = tok.to_host();
      test::require_close(got_tok, want_tok, 2e-5, 5e-5);

      for (bool prefix : {false, true}) {
        INFO("packed rows keep their masked prefix: " << prefix);
        auto pk = test::pack(mask, Bn, T, prefix);
        buffer<std::int64_t, B> off(pk.offsets);
        buffer<std::uint8_t, B> pm(pk.mask);
        buffer<float, B> ptok(pk.tokens(), -7.0f);
        packed<std::uint8_t, std::int64_t, typename B::memory_space> play(off.cview1(), pk.tokens(), pm.cview1());
        buffer<float, B> a2(Bn, -7.0f);
        group_advantages(be, s.cview1(), contiguous_groups{4}, play, a2.view1(), ptok.view1());
        CHECK(test::bitwise_equal(a.to_host(), a2.to_host()));
        CHECK(test::bitwise_equal(pk.scatter(ptok.to_host(), 0.0f), got_tok));
      }
    }
  }
}

TEMPLATE_LIST_TEST_CASE("broadcast to tokens: NaN only fails where it reaches a valid token", "[advantages][tokens][edge]", backends) {
  using B = TestType;
  const index_t Bn = 3, T = 4;
  std::vector<std::uint8_t> mask = {1, 1, 0, 0, /* empty row */ 0, 0, 0, 0, 0, 1, 1, 1};
  buffer<std::uint8_t, B> m(mask);
  padded<std::uint8_t, typename B::memory_space> lay(m.cview2(Bn, T));
  double nan = std::numeric_limits<double>::quiet_NaN();
  auto be = test::make_backend<B>();
  {
    buffer<double, B> v(std::vector<double>{1.5, nan, -2});
    buffer<double, B> out(Bn * T, -7.0);
    broadcast_to_tokens(be, v.cview1(), lay, out.view2(Bn, T));
    test::require_close(out.to_host(), {1.5, 1.5, 0, 0, 0, 0, 0, 0, 0, -2, -2, -2});
  }
  {
    buffer<double, B> v(std::vector<double>{1.5, 0, nan});
    buffer<double, B> out(Bn * T, -7.0);
    CHECK_THROWS_AS(broadcast_to_tokens(be, v.cview1(), lay, out.view2(Bn, T)), nonfinite_error);
    test::require_close(out.to_host(), std::vector<double>(Bn * T, -7.0));
  }
  {
    buffer<double, B> v(std::vector<double>{1, 2, 3});
    buffer<double, B> out(Bn * (T - 1), -7.0);
    CHECK_THROWS_WITH(broadcast_to_tokens(be, v.cview1(), lay, out.view2(Bn, T - 1)),
                      Catch::Contains("'out' has shape [3,3]; expected [3,4]"));
  }
}

#if !defined(__CUDACC__)  // CPU-only: host offsets and Eigen maps
TEST_CASE("packed offsets are validated on the host", "[advantages][tokens][errors]") {
  std::vector<std::int64_t> off = {0, 3, 2, 5};
  std::vector<double> v = {1, 2, 3}, out(5, -7.0);
  packed<> lay(view_of(std::as_const(off)), 5);
  CHECK_THROWS_WITH(broadcast_to_tokens(cpu{}, view_of(std::as_const(v)), lay, view_of(out)),
                    Catch::Contains("'offsets' decreases at index 2"));
  std::vector<std::int64_t> off2 = {0, 3, 4, 4};
  packed<> lay2(view_of(std::as_const(off2)), 5);
  CHECK_THROWS_WITH(broadcast_to_tokens(cpu{}, view_of(std::as_const(v)), lay2, view_of(out)),
                    Catch::Contains("ends at 4; expected offsets[B] = N = 5"));
  CHECK(out == std::vector<double>(5, -7.0));
}

TEST_CASE("views adapt std::vector, strided memory and Eigen without copies", "[views]") {
  std::vector<double> scores = {0, 99, 1, 99, 0, 99, 1, 99};  // every other element is a score
  std::vector<double> adv(4, -7.0);
  auto st = group_advantages(cpu{}, view_of(scores.data(), 4, 2), contiguous_groups{4}, view_of(adv));
  CHECK(st.sequences == 4);
  test::require_close(adv, ref::group_advantages({0, 1, 0, 1}, {0, 0, 0, 0}, advantage_config{}).adv);

  Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> tok(4, 6);
  tok.setConstant(-7.0f);
  Eigen::VectorXf a = Eigen::VectorXf::LinSpaced(4, -1.0f, 1.0f);
  // the whole [4,6] matrix is not [4,3]; a [4,3] block of it is a strided view
  CHECK_THROWS_AS(broadcast_to_tokens(cpu{}, cpu_view_of(std::as_const(a)), padded<>(4, 3), cpu_view_of(tok)),
                  shape_error);
  auto blk = tok.leftCols(3);
  view<float, 2> bv{blk.data(), 4, 3, static_cast<index_t>(blk.outerStride())};
  broadcast_to_tokens(cpu{}, cpu_view_of(std::as_const(a)), padded<>(4, 3), bv);
  CHECK(tok(0, 0) == -1.0f);
  CHECK(tok(3, 2) == 1.0f);
  CHECK(tok(3, 3) == -7.0f);  // outside the block: untouched
}
#endif
