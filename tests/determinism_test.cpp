// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
// Determinism (issue 5's proof): every reduction runs twice on identical inputs and its outputs
// and statistics must be bitwise identical. Sizes are large enough to use many blocks, long
// rows (several chunks per row) and the sorted path of labelled groups on the CUDA backend.
// Runs on every backend in polo::test::backends.

#include "support/polo_test.hpp"

#include "polo/advantages.hpp"
#include "polo/value_loss.hpp"
#include "polo/whiten.hpp"
#if defined(__CUDACC__)
#include "polo/advantages.cuh"
#include "polo/value_loss.cuh"
#include "polo/whiten.cuh"
#else
#include "polo/cpu/advantages.hpp"
#include "polo/cpu/value_loss.hpp"
#include "polo/cpu/whiten.hpp"
#endif

#include <cstring>

namespace {

using namespace polo;
using polo::test::backends;
using polo::test::buffer;

/// Bitwise equality of any trivially copyable value (statistics structs of doubles and counts).
template <class S>
bool same_bits(const S& a, const S& b) {
  return std::memcmp(&a, &b, sizeof(S)) == 0;
}

bool same_bits(const group_stats& a, const group_stats& b) {
  return a.sequences == b.sequences && a.groups == b.groups && a.empty_groups == b.empty_groups &&
         a.singleton_groups == b.singleton_groups && a.zero_std_groups == b.zero_std_groups &&
         a.nonfinite_scores == b.nonfinite_scores && same_bits(a.scores, b.scores) &&
         same_bits(a.group_std, b.group_std) && same_bits(a.advantage, b.advantage);
}
bool same_bits(const whiten_stats& a, const whiten_stats& b) {
  return same_bits(a.local, b.local) && same_bits(a.used, b.used) && same_bits(a.mean, b.mean) &&
         same_bits(a.inv_scale, b.inv_scale) && a.degenerate == b.degenerate;
}
bool same_bits(const value_loss_stats& a, const value_loss_stats& b) {
  return same_bits(a.loss, b.loss) && same_bits(a.parts, b.parts) && same_bits(a.clipped, b.clipped) &&
         same_bits(a.squared_error, b.squared_error) && a.tokens == b.tokens && a.sequences == b.sequences;
}

}  // namespace

TEMPLATE_LIST_TEST_CASE("determinism: group_advantages twice gives the same bits", "[determinism][advantages]",
                        backends) {
  using Bk = TestType;
  auto g = test::rng(901);
  INFO("seed " << test::base_seed());
  const index_t B = 16384;
  auto s = test::normal(g, B, 0.5, 2.0);
  std::vector<std::int64_t> labels(static_cast<std::size_t>(B));
  for (index_t i = 0; i < B; ++i) labels[i] = (i * 2654435761LL) % 1021;  // shuffled, unequal groups
  buffer<float, Bk> sf(test::cast<float>(s));
  buffer<double, Bk> sd(s);
  buffer<std::int64_t, Bk> lb(labels);
  for (const advantage_config& c : {advantage_config{}, presets::nemo::grpo, presets::trl::grpo_batch_std}) {
    buffer<float, Bk> a1(B, -7.f), a2(B, -7.f);
    buffer<double, Bk> d1(B, -7.0), d2(B, -7.0);
    auto be = test::make_backend<Bk>();
    const group_stats s1 = group_advantages(be, sf.cview1(), contiguous_groups{16}, a1.view1(), c);
    const group_stats s2 = group_advantages(be, sf.cview1(), contiguous_groups{16}, a2.view1(), c);
    CHECK(same_bits(s1, s2));
    CHECK(test::bitwise_equal(a1.to_host(), a2.to_host()));
    const group_stats l1 = group_advantages(be, sd.cview1(), groups_by_label(lb.cview1()), d1.view1(), c);
    const group_stats l2 = group_advantages(be, sd.cview1(), groups_by_label(lb.cview1()), d2.view1(), c);
    CHECK(same_bits(l1, l2));
    CHECK(test::bitwise_equal(d1.to_host(), d2.to_host()));
  }
}

TEMPLATE_LIST_TEST_CASE("determinism: whiten and masked_moments twice give the same bits", "[determinism][whiten]",
                        backends) {
  using Bk = TestType;
  using S = typename Bk::memory_space;
  auto g = test::rng(902);
  INFO("seed " << test::base_seed());
  const index_t B = 48, T = 3001;
  auto m = test::make_mask(g, B, T, test::mask_pattern::random);
  buffer<float, Bk> x(test::cast<float>(test::normal(g, B * T, 3.0, 5.0)));
  buffer<std::uint8_t, Bk> mb(m);
  padded<std::uint8_t, S> L(mb.cview2(B, T));
  auto be = test::make_backend<Bk>();
  const moments m1 = masked_moments(be, L, x.cview2(B, T));
  const moments m2 = masked_moments(be, L, x.cview2(B, T));
  CHECK(same_bits(m1, m2));
  buffer<float, Bk> o1(B * T, -7.f), o2(B * T, -7.f);
  const whiten_stats w1 = whiten(be, L, x.cview2(B, T), o1.view2(B, T));
  const whiten_stats w2 = whiten(be, L, x.cview2(B, T), o2.view2(B, T));
  CHECK(same_bits(w1, w2));
  CHECK(test::bitwise_equal(o1.to_host(), o2.to_host()));
}

TEMPLATE_LIST_TEST_CASE("determinism: value_loss twice gives the same bits", "[determinism][value_loss]", backends) {
  using Bk = TestType;
  using S = typename Bk::memory_space;
  auto g = test::rng(903);
  INFO("seed " << test::base_seed());
  const index_t B = 40, T = 2777;
  auto m = test::make_mask(g, B, T, test::mask_pattern::interior_spans);
  auto vo = test::normal(g, B * T);
  auto v = vo;
  auto d = test::normal(g, B * T, 0.0, 0.3);
  for (std::size_t k = 0; k < v.size(); ++k) v[k] += d[k];
  buffer<double, Bk> vb(v), vob(vo), rb(test::normal(g, B * T, 0.2, 1.0));
  buffer<std::uint8_t, Bk> mb(m);
  padded<std::uint8_t, S> L(mb.cview2(B, T));
  auto be = test::make_backend<Bk>();
  for (auto agg : {aggregation::token_mean, aggregation::seq_mean_token_mean}) {
    const value_loss_config c{.clip = value_clip::clamp_value, .clip_range = 0.2, .agg = agg};
    buffer<double, Bk> g1(B * T, -7.0), g2(B * T, -7.0);
    const value_loss_stats s1 = value_loss(be, L, vb.cview2(B, T), vob.cview2(B, T), rb.cview2(B, T), g1.view2(B, T), c);
    const value_loss_stats s2 = value_loss(be, L, vb.cview2(B, T), vob.cview2(B, T), rb.cview2(B, T), g2.view2(B, T), c);
    CHECK(same_bits(s1, s2));
    CHECK(test::bitwise_equal(g1.to_host(), g2.to_host()));
  }
}
