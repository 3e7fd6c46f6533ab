// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
// Statistics without a host synchronization (cuda/polo/detail/async_result.cuh): with
// `polo::cuda::result` and `deferred_errors` set, group_advantages (alone and with a layout),
// masked_moments, whiten, value_loss and kl_penalized_rewards write the statistics they would return to device
// memory, bitwise equal to the synchronous call's, return a default value, write the same
// outputs, and on a data error write nothing (outputs and result untouched) and leave the
// synchronous call's very exception for polo::cuda_check. The combined group_advantages with
// malformed device offsets writes nothing in either mode. CUDA only: the CPU backend has no
// asynchronous mode, so the CPU build of this file holds no cases.

#include "support/polo_test.hpp"

#include "polo/advantages.hpp"
#include "polo/kl.hpp"
#include "polo/value_loss.hpp"
#include "polo/whiten.hpp"
#if defined(__CUDACC__)
#include "polo/advantages.cuh"
#include "polo/kl.cuh"
#include "polo/value_loss.cuh"
#include "polo/whiten.cuh"

#include <cstring>
#include <string>
#include <vector>

namespace {

using namespace polo;
using tag = polo::cuda;
using polo::test::buffer;
using Bk = polo::cuda;
using S = device_space;

/// Device memory for one S (poisoned) and a zeroed status; a tag in asynchronous mode.
template <class R>
struct async_env {
  buffer<unsigned char, Bk> res{index_t(sizeof(R)), 0xAB};
  buffer<unsigned char, Bk> st{index_t(sizeof(tag::status)), 0};
  tag be() {
    tag b;
    b.result = res.view1().data;
    b.deferred_errors = reinterpret_cast<tag::status*>(st.view1().data);
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

template <class R>
bool same_bits(const R& a, const R& b) {
  return std::memcmp(&a, &b, sizeof(R)) == 0;
}

// whiten_stats ends in a bool followed by padding bytes, whose values are unspecified: compare
// its members' bits, not the object's.
bool same_bits(const whiten_stats& a, const whiten_stats& b) {
  return same_bits(a.local, b.local) && same_bits(a.used, b.used) && same_bits(a.mean, b.mean) &&
         same_bits(a.inv_scale, b.inv_scale) && a.degenerate == b.degenerate;
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

std::string check_message(const tag& be) {
  return message_of([&] { cuda_check(be); });
}

/// The first k elements of a 1-D view.
template <class V>
V head(V v, index_t k) {
  return {v.data, k, 1};
}

bool same_bits(const kl_reward_stats& a, const kl_reward_stats& b) {
  return a.tokens == b.tokens && a.masked_tokens == b.masked_tokens && same_bits(a.kl.sum, b.kl.sum) &&
         a.kl.count == b.kl.count && same_bits(a.clamped.sum, b.clamped.sum) && a.clamped.count == b.clamped.count;
}

struct critic {
  index_t B, Tn;
  std::vector<std::uint8_t> m;
  std::vector<float> v, vo, R;
};

critic make_critic(std::mt19937_64& g, index_t B, index_t Tn) {
  critic c{B, Tn, test::make_mask(g, B, Tn, test::mask_pattern::left_pad), {}, {}, {}};
  c.v = test::cast<float>(test::normal(g, B * Tn, 0.0, 1.0));
  c.vo = test::cast<float>(test::normal(g, B * Tn, 0.0, 1.0));
  c.R = test::cast<float>(test::normal(g, B * Tn, 0.5, 1.0));
  return c;
}

}  // namespace

TEST_CASE("async: whiten and masked_moments publish the synchronous statistics", "[async][whiten]") {
  auto g = test::rng(1101);
  INFO("seed " << test::base_seed());
  const index_t B = 37, Tn = 1500;
  buffer<std::uint8_t, Bk> m(test::make_mask(g, B, Tn, test::mask_pattern::left_pad));
  auto xs = test::cast<float>(test::normal(g, B * Tn, 1.0, 3.0));
  buffer<float, Bk> x(xs);
  padded<std::uint8_t, S> L(m.cview2(B, Tn));
  for (const auto& c : {whiten_config{}, presets::verl::whitening}) {
    buffer<float, Bk> o1(B * Tn, -7.f), o2(B * Tn, -7.f);
    const whiten_stats s1 = whiten(tag{}, L, x.cview2(B, Tn), o1.view2(B, Tn), c);
    async_env<whiten_stats> env;
    const whiten_stats s0 = whiten(env.be(), L, x.cview2(B, Tn), o2.view2(B, Tn), c);
    CHECK(s0.local.count == 0);  // the returned value is default-constructed
    CHECK(test::bitwise_equal(o1.to_host(), o2.to_host()));
    CHECK(same_bits(env.value(), s1));
    CHECK(check_message(env.be()) == "no exception");
  }
  const moments m1 = masked_moments(tag{}, L, x.cview2(B, Tn));
  async_env<moments> env;
  const moments m0 = masked_moments(env.be(), L, x.cview2(B, Tn));
  CHECK(m0.count == 0);
  CHECK(same_bits(env.value(), m1));
  CHECK(m1.count > 0);

  // A NaN at a valid token: nothing written, the same exception later.
  xs[static_cast<std::size_t>(5 * Tn + Tn - 1)] = std::numeric_limits<float>::quiet_NaN();
  buffer<float, Bk> xb(xs), o(B * Tn, -7.f);
  const std::string sync_msg = message_of([&] { whiten(tag{}, L, xb.cview2(B, Tn), o.view2(B, Tn)); });
  CHECK(sync_msg.find("polo::whiten") != std::string::npos);
  async_env<whiten_stats> e2;
  CHECK_NOTHROW(whiten(e2.be(), L, xb.cview2(B, Tn), o.view2(B, Tn)));
  CHECK(o.to_host() == std::vector<float>(static_cast<std::size_t>(B * Tn), -7.f));
  CHECK(e2.untouched());
  CHECK(check_message(e2.be()) == sync_msg);
  CHECK(check_message(e2.be()) == "no exception");  // cuda_check cleared the status

  // A degenerate batch under whiten_degenerate::error.
  buffer<std::uint8_t, Bk> z(std::vector<std::uint8_t>(static_cast<std::size_t>(B * Tn), 0));
  padded<std::uint8_t, S> Z(z.cview2(B, Tn));
  whiten_config strict;
  strict.degenerate = whiten_degenerate::error;
  const std::string deg = message_of([&] { whiten(tag{}, Z, x.cview2(B, Tn), o.view2(B, Tn), strict); });
  async_env<whiten_stats> e3;
  whiten(e3.be(), Z, x.cview2(B, Tn), o.view2(B, Tn), strict);
  CHECK(o.to_host() == std::vector<float>(static_cast<std::size_t>(B * Tn), -7.f));
  CHECK(check_message(e3.be()) == deg);

  // result without deferred_errors is a configuration error.
  tag bad;
  bad.result = env.res.view1().data;
  CHECK_THROWS_AS(masked_moments(bad, L, x.cview2(B, Tn)), config_error);
}

TEST_CASE("async: value_loss publishes the synchronous statistics", "[async][value_loss]") {
  auto g = test::rng(1102);
  INFO("seed " << test::base_seed());
  auto c = make_critic(g, 29, 2100);
  const index_t n = c.B * c.Tn;
  buffer<std::uint8_t, Bk> m(c.m);
  buffer<float, Bk> v(c.v), vo(c.vo), R(c.R);
  padded<std::uint8_t, S> L(m.cview2(c.B, c.Tn));
  for (auto agg : {aggregation::token_mean, aggregation::seq_mean_token_mean}) {
    value_loss_config cfg{.clip = value_clip::clamp_value, .clip_range = 0.2, .agg = agg};
    buffer<float, Bk> g1(n, -7.f), g2(n, -7.f);
    const value_loss_stats s1 =
        value_loss(tag{}, L, v.cview2(c.B, c.Tn), vo.cview2(c.B, c.Tn), R.cview2(c.B, c.Tn), g1.view2(c.B, c.Tn), cfg);
    async_env<value_loss_stats> env;
    const value_loss_stats s0 =
        value_loss(env.be(), L, v.cview2(c.B, c.Tn), vo.cview2(c.B, c.Tn), R.cview2(c.B, c.Tn), g2.view2(c.B, c.Tn), cfg);
    CHECK(s0.tokens == 0);
    CHECK(s1.tokens > 0);
    CHECK(same_bits(env.value(), s1));
    CHECK(test::bitwise_equal(g1.to_host(), g2.to_host()));
    CHECK(check_message(env.be()) == "no exception");
  }
  auto R2 = c.R;
  for (index_t k = 0; k < n; ++k)
    if (c.m[k]) {
      R2[k] = std::numeric_limits<float>::infinity();
      break;
    }
  buffer<float, Bk> Rb(R2), gr(n, -7.f);
  const std::string sync_msg = message_of(
      [&] { value_loss(tag{}, L, v.cview2(c.B, c.Tn), vo.cview2(c.B, c.Tn), Rb.cview2(c.B, c.Tn), gr.view2(c.B, c.Tn)); });
  CHECK(sync_msg.find("returns") != std::string::npos);
  async_env<value_loss_stats> env;
  value_loss(env.be(), L, v.cview2(c.B, c.Tn), vo.cview2(c.B, c.Tn), Rb.cview2(c.B, c.Tn), gr.view2(c.B, c.Tn));
  CHECK(gr.to_host() == std::vector<float>(static_cast<std::size_t>(n), -7.f));
  CHECK(env.untouched());
  CHECK(check_message(env.be()) == sync_msg);
}

TEST_CASE("async: group_advantages publishes the synchronous statistics; bad offsets write nothing",
          "[async][advantages]") {
  auto g = test::rng(1103);
  INFO("seed " << test::base_seed());
  const index_t B = 4096, Tn = 300, G = 16;
  auto sc = test::cast<float>(test::normal(g, B, 0.5, 2.0));
  buffer<float, Bk> s(sc);
  buffer<std::uint8_t, Bk> m(test::make_mask(g, B, Tn, test::mask_pattern::right_pad));
  padded<std::uint8_t, S> L(m.cview2(B, Tn));
  for (const advantage_config& c : {advantage_config{}, presets::nemo::grpo}) {
    buffer<float, Bk> a1(B, -7.f), a2(B, -7.f), t1(B * Tn, -7.f), t2(B * Tn, -7.f);
    const group_stats s1 = group_advantages(tag{}, s.cview1(), contiguous_groups{G}, L, a1.view1(), t1.view2(B, Tn), c);
    async_env<group_stats> env;
    const group_stats s0 = group_advantages(env.be(), s.cview1(), contiguous_groups{G}, L, a2.view1(), t2.view2(B, Tn), c);
    CHECK(s0.sequences == 0);
    CHECK(s1.sequences == B);
    CHECK(same_bits(env.value(), s1));
    CHECK(test::bitwise_equal(a1.to_host(), a2.to_host()));
    CHECK(test::bitwise_equal(t1.to_host(), t2.to_host()));
    CHECK(check_message(env.be()) == "no exception");
  }
  // A non-finite score under nonfinite_policy::error: nothing written, the same exception.
  auto sc2 = sc;
  sc2[77] = std::numeric_limits<float>::quiet_NaN();
  buffer<float, Bk> sb(sc2), a(B, -7.f);
  advantage_config strict;
  strict.nonfinite = nonfinite_policy::error;
  const std::string nf = message_of([&] { group_advantages(tag{}, sb.cview1(), contiguous_groups{G}, a.view1(), strict); });
  CHECK(nf.find("scores") != std::string::npos);
  async_env<group_stats> e1;
  group_advantages(e1.be(), sb.cview1(), contiguous_groups{G}, a.view1(), strict);
  CHECK(a.to_host() == std::vector<float>(static_cast<std::size_t>(B), -7.f));
  CHECK(e1.untouched());
  CHECK(check_message(e1.be()) == nf);

  // Malformed packed offsets (a decrease): nothing written in either mode.
  const index_t Bp = 64;
  std::vector<std::int64_t> off(static_cast<std::size_t>(Bp + 1));
  for (index_t i = 0; i <= Bp; ++i) off[i] = 10 * i;
  off[20] = 250;  // 190 -> 250 -> 210: decreases at index 21
  buffer<std::int64_t, Bk> ob(off);
  buffer<float, Bk> sp(std::vector<float>(sc.begin(), sc.begin() + Bp)), ap(Bp, -7.f), tp(10 * Bp, -7.f);
  packed<std::uint8_t, std::int64_t, S> P(ob.cview1(), 10 * Bp);
  const std::string off_msg =
      message_of([&] { group_advantages(tag{}, sp.cview1(), contiguous_groups{G}, P, ap.view1(), tp.view1()); });
  CHECK(off_msg.find("polo::group_advantages") != std::string::npos);
  CHECK(off_msg.find("decreases") != std::string::npos);
  CHECK(ap.to_host() == std::vector<float>(static_cast<std::size_t>(Bp), -7.f));
  CHECK(tp.to_host() == std::vector<float>(static_cast<std::size_t>(10 * Bp), -7.f));
  async_env<group_stats> e2;
  group_advantages(e2.be(), sp.cview1(), contiguous_groups{G}, P, ap.view1(), tp.view1());
  CHECK(ap.to_host() == std::vector<float>(static_cast<std::size_t>(Bp), -7.f));
  CHECK(tp.to_host() == std::vector<float>(static_cast<std::size_t>(10 * Bp), -7.f));
  CHECK(e2.untouched());
  CHECK(check_message(e2.be()) == off_msg);
}

TEST_CASE("async: kl_penalized_rewards publishes the synchronous statistics; errors write nothing",
          "[async][kl]") {
  auto g = test::rng(1104);
  INFO("seed " << test::base_seed());
  const index_t B = 23, Tn = 1700, n = B * Tn;
  buffer<std::uint8_t, Bk> m(test::make_mask(g, B, Tn, test::mask_pattern::right_pad));
  auto rs = test::cast<float>(test::normal(g, n, 0.0, 1.0));
  auto los = test::cast<float>(test::normal(g, n, -1.0, 0.5));
  auto lrs = test::cast<float>(test::normal(g, n, -1.0, 0.5));
  los[3] = 40.f;  // a clamped token (if valid)
  buffer<float, Bk> r(rs), lo(los), lr(lrs);
  padded<std::uint8_t, S> L(m.cview2(B, Tn));
  for (const double beta : {0.05, 1.0}) {
    buffer<float, Bk> o1(n, -7.f), o2(n, -7.f);
    const kl_reward_stats s1 =
        kl_penalized_rewards(tag{}, L, r.cview2(B, Tn), lo.cview2(B, Tn), lr.cview2(B, Tn), o1.view2(B, Tn), beta);
    async_env<kl_reward_stats> env;
    const kl_reward_stats s0 =
        kl_penalized_rewards(env.be(), L, r.cview2(B, Tn), lo.cview2(B, Tn), lr.cview2(B, Tn), o2.view2(B, Tn), beta);
    CHECK(s0.tokens == 0);
    CHECK(s1.tokens > 0);
    CHECK(same_bits(env.value(), s1));
    CHECK(test::bitwise_equal(o1.to_host(), o2.to_host()));
    CHECK(check_message(env.be()) == "no exception");
  }
  // Packed, and an empty packed batch.
  {
    const index_t Bp = 40;
    std::vector<std::int64_t> off(static_cast<std::size_t>(Bp + 1));
    for (index_t i = 0; i <= Bp; ++i) off[static_cast<std::size_t>(i)] = 37 * i + (i > 0 ? 3 : 0);
    const index_t N = off.back();
    buffer<std::int64_t, Bk> ob(off);
    packed<std::uint8_t, std::int64_t, S> P(ob.cview1(), N);
    buffer<float, Bk> o1(N, -7.f), o2(N, -7.f);
    const kl_reward_stats s1 = kl_penalized_rewards(tag{}, P, head(r.cview1(), N), head(lo.cview1(), N),
                                                    head(lr.cview1(), N), o1.view1(), 0.1);
    async_env<kl_reward_stats> env;
    kl_penalized_rewards(env.be(), P, head(r.cview1(), N), head(lo.cview1(), N), head(lr.cview1(), N), o2.view1(), 0.1);
    CHECK(s1.tokens == N);
    CHECK(same_bits(env.value(), s1));
    CHECK(test::bitwise_equal(o1.to_host(), o2.to_host()));
    CHECK(check_message(env.be()) == "no exception");

    buffer<std::int64_t, Bk> z(std::vector<std::int64_t>{0});
    packed<std::uint8_t, std::int64_t, S> E(z.cview1(), 0);
    buffer<float, Bk> e(1, -7.f);
    async_env<kl_reward_stats> env0;
    kl_penalized_rewards(env0.be(), E, head(r.cview1(), 0), head(lo.cview1(), 0), head(lr.cview1(), 0),
                         head(e.view1(), 0), 0.1);
    CHECK(same_bits(env0.value(), kl_reward_stats{}));
    CHECK(check_message(env0.be()) == "no exception");

    // Malformed offsets (a decrease): nothing written in either mode, the same exception.
    auto bad = off;
    bad[10] = bad[12];
    buffer<std::int64_t, Bk> bb(bad);
    packed<std::uint8_t, std::int64_t, S> PB(bb.cview1(), N);
    buffer<float, Bk> o3(N, -7.f);
    const std::string off_msg = message_of([&] {
      kl_penalized_rewards(tag{}, PB, head(r.cview1(), N), head(lo.cview1(), N), head(lr.cview1(), N), o3.view1(), 0.1);
    });
    CHECK(off_msg.find("polo::kl_penalized_rewards") != std::string::npos);
    CHECK(off_msg.find("decreases") != std::string::npos);
    async_env<kl_reward_stats> e2;
    kl_penalized_rewards(e2.be(), PB, head(r.cview1(), N), head(lo.cview1(), N), head(lr.cview1(), N), o3.view1(), 0.1);
    CHECK(o3.to_host() == std::vector<float>(static_cast<std::size_t>(N), -7.f));
    CHECK(e2.untouched());
    CHECK(check_message(e2.be()) == off_msg);
  }
  // A non-finite input at a valid token (the last valid token of row 4): nothing written.
  const auto mh = m.to_host();
  index_t at = -1;
  for (index_t t = 0; t < Tn; ++t)
    if (mh[static_cast<std::size_t>(4 * Tn + t)] != 0) at = 4 * Tn + t;
  REQUIRE(at >= 0);
  auto lr2 = lrs;
  lr2[static_cast<std::size_t>(at)] = std::numeric_limits<float>::infinity();
  buffer<float, Bk> lrb(lr2), o(n, -7.f);
  const std::string nf = message_of([&] {
    kl_penalized_rewards(tag{}, L, r.cview2(B, Tn), lo.cview2(B, Tn), lrb.cview2(B, Tn), o.view2(B, Tn), 0.1);
  });
  CHECK(nf.find("logp_ref") != std::string::npos);
  async_env<kl_reward_stats> e1;
  CHECK_NOTHROW(
      kl_penalized_rewards(e1.be(), L, r.cview2(B, Tn), lo.cview2(B, Tn), lrb.cview2(B, Tn), o.view2(B, Tn), 0.1));
  CHECK(o.to_host() == std::vector<float>(static_cast<std::size_t>(n), -7.f));
  CHECK(e1.untouched());
  CHECK(check_message(e1.be()) == nf);

  // result without deferred_errors is a configuration error (nothing written).
  tag cfg;
  cfg.result = e1.res.view1().data;
  CHECK_THROWS_AS(
      kl_penalized_rewards(cfg, L, r.cview2(B, Tn), lo.cview2(B, Tn), lr.cview2(B, Tn), o.view2(B, Tn), 0.1),
      config_error);
  CHECK(o.to_host() == std::vector<float>(static_cast<std::size_t>(n), -7.f));
}

#endif  // __CUDACC__
