// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
// Statistics without a host synchronization (cuda/polo/detail/async_result.cuh): with
// `polo::cuda::result` and `deferred_errors` set, group_advantages (alone and with a layout),
// masked_moments, whiten, value_loss, kl_penalized_rewards and policy_loss (both overloads)
// write the statistics they would return to device
// memory, bitwise equal to the synchronous call's, return a default value, write the same
// outputs, and on a data error write nothing (outputs and result untouched) and leave the
// synchronous call's very exception for polo::cuda_check. The combined group_advantages with
// malformed device offsets writes nothing in either mode. CUDA only: the CPU backend has no
// asynchronous mode, so the CPU build of this file holds no cases.

#include "support/polo_test.hpp"

#include "polo/advantages.hpp"
#include "polo/kl.hpp"
#include "polo/policy_loss.hpp"
#include "polo/value_loss.hpp"
#include "polo/whiten.hpp"
#if defined(__CUDACC__)
#include <cuda_bf16.h>

#include "polo/advantages.cuh"
#include "polo/kl.cuh"
#include "polo/policy_loss.cuh"
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

TEST_CASE("async: the one-block group_advantages releases the broadcast early; the same bits and errors",
          "[async][advantages]") {
  // B <= 2048: the broadcast's blocks start on the kernel's flag, before it
  // folds the statistics (broadcast_params::ready). Long rows keep the broadcast running while
  // the statistics are folded.
  auto g = test::rng(1109);
  INFO("seed " << test::base_seed());
  const index_t Tn = 2048, G = 16;
  advantage_config batch_std = presets::trl::grpo_batch_std;  // σ needs the batch M2 before A
  for (index_t B : {index_t(1024), index_t(2048)}) {
    auto sc = test::cast<float>(test::normal(g, B, 0.5, 2.0));
    buffer<float, Bk> s(sc);
    buffer<std::uint8_t, Bk> m(test::make_mask(g, B, Tn, test::mask_pattern::right_pad));
    padded<std::uint8_t, S> L(m.cview2(B, Tn));
    for (const advantage_config& c : {advantage_config{}, presets::nemo::grpo, batch_std}) {
      INFO("B " << B << " scale " << int(c.scale));
      buffer<float, Bk> a1(B, -7.f), a2(B, -7.f), t1(B * Tn, -7.f), t2(B * Tn, -7.f);
      const group_stats s1 = group_advantages(tag{}, s.cview1(), contiguous_groups{G}, L, a1.view1(), t1.view2(B, Tn), c);
      async_env<group_stats> env;
      group_advantages(env.be(), s.cview1(), contiguous_groups{G}, L, a2.view1(), t2.view2(B, Tn), c);
      CHECK(same_bits(env.value(), s1));
      CHECK(test::bitwise_equal(a1.to_host(), a2.to_host()));
      CHECK(test::bitwise_equal(t1.to_host(), t2.to_host()));
      CHECK(check_message(env.be()) == "no exception");
      const auto tok = t2.to_host();
      const auto adv = a2.to_host();
      const auto mask = m.to_host();
      std::size_t wrong = 0;
      for (index_t i = 0; i < B * Tn; ++i)
        if (tok[i] != (mask[i] ? adv[i / Tn] : 0.f)) ++wrong;
      CHECK(wrong == 0);
    }
    // Labelled groups (shuffled groups of 16; the same block sorts them first).
    {
      std::vector<std::int64_t> lab(static_cast<std::size_t>(B));
      for (index_t i = 0; i < B; ++i) lab[i] = (i * 7919) % (B / 16);
      buffer<std::int64_t, Bk> lb(lab);
      const auto groups = groups_by_label(lb.cview1());
      buffer<float, Bk> a1(B, -7.f), a2(B, -7.f), t1(B * Tn, -7.f), t2(B * Tn, -7.f);
      const group_stats s1 = group_advantages(tag{}, s.cview1(), groups, L, a1.view1(), t1.view2(B, Tn));
      async_env<group_stats> env;
      group_advantages(env.be(), s.cview1(), groups, L, a2.view1(), t2.view2(B, Tn));
      CHECK(s1.groups == B / 16);
      CHECK(same_bits(env.value(), s1));
      CHECK(test::bitwise_equal(a1.to_host(), a2.to_host()));
      CHECK(test::bitwise_equal(t1.to_host(), t2.to_host()));
      CHECK(check_message(env.be()) == "no exception");
    }
    // A non-finite score under nonfinite_policy::error: nothing written, the same exception.
    {
      auto bad = sc;
      bad[B - 3] = std::numeric_limits<float>::infinity();
      buffer<float, Bk> sb(bad), a(B, -7.f), t(B * Tn, -7.f);
      advantage_config strict;
      strict.nonfinite = nonfinite_policy::error;
      const std::string msg = message_of(
          [&] { group_advantages(tag{}, sb.cview1(), contiguous_groups{G}, L, a.view1(), t.view2(B, Tn), strict); });
      CHECK(msg.find("'scores'") != std::string::npos);
      async_env<group_stats> env;
      group_advantages(env.be(), sb.cview1(), contiguous_groups{G}, L, a.view1(), t.view2(B, Tn), strict);
      CHECK(a.to_host() == std::vector<float>(static_cast<std::size_t>(B), -7.f));
      CHECK(t.to_host() == std::vector<float>(static_cast<std::size_t>(B * Tn), -7.f));
      CHECK(env.untouched());
      CHECK(check_message(env.be()) == msg);
    }
    // An advantage that overflows float on a row with valid tokens (leave-one-out baseline, no
    // scale: 3e38 - (-3e38)): group_advantages succeeds and writes A, the broadcast's check
    // fails and no token is written.
    {
      auto big = sc;
      big[32] = 3e38f;
      for (index_t j = 33; j < 48; ++j) big[j] = -3e38f;
      buffer<float, Bk> sb(big), a(B, -7.f), t(B * Tn, -7.f);
      advantage_config loo;
      loo.baseline = baseline_kind::leave_one_out;
      loo.scale = scale_kind::none;
      const std::string msg = message_of(
          [&] { group_advantages(tag{}, sb.cview1(), contiguous_groups{G}, L, a.view1(), t.view2(B, Tn), loo); });
      CHECK(msg.find("index 32") != std::string::npos);
      const auto a_sync = a.to_host();
      CHECK(std::isinf(a_sync[32]));
      buffer<float, Bk> a2(B, -7.f);
      async_env<group_stats> env;
      group_advantages(env.be(), sb.cview1(), contiguous_groups{G}, L, a2.view1(), t.view2(B, Tn), loo);
      CHECK(test::bitwise_equal(a2.to_host(), a_sync));
      CHECK(t.to_host() == std::vector<float>(static_cast<std::size_t>(B * Tn), -7.f));
      CHECK(check_message(env.be()) == msg);
    }
  }
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

namespace {

/// Member by member (bits of every double, every count) of two policy_loss results.
void check_same(const policy_loss_result& a, const policy_loss_result& b) {
  auto sc = [](const sum_count<double>& u, const sum_count<double>& v) {
    return same_bits(u.sum, v.sum) && u.count == v.count;
  };
  const policy_loss_stats& x = a.stats;
  const policy_loss_stats& y = b.stats;
  CHECK(same_bits(a.loss, b.loss));
  CHECK(same_bits(a.policy_loss, b.policy_loss));
  CHECK(same_bits(a.kl_loss, b.kl_loss));
  CHECK(sc(a.policy_parts, b.policy_parts));
  CHECK(sc(a.kl_parts, b.kl_parts));
  CHECK(x.tokens == y.tokens);
  CHECK(x.sequences == y.sequences);
  CHECK(x.masked_tokens == y.masked_tokens);
  CHECK(x.nonfinite_tokens == y.nonfinite_tokens);
  CHECK(x.skipped_tokens == y.skipped_tokens);
  CHECK(sc(x.clip_upper, y.clip_upper));
  CHECK(sc(x.clip_lower, y.clip_lower));
  CHECK(sc(x.clip_dual, y.clip_dual));
  CHECK(sc(x.delta_capped, y.delta_capped));
  CHECK(sc(x.ratio.total, y.ratio.total));
  CHECK(same_bits(x.ratio.lo, y.ratio.lo));
  CHECK(same_bits(x.ratio.hi, y.ratio.hi));
  CHECK(sc(x.clamped_log_ratio, y.clamped_log_ratio));
  CHECK(sc(x.approx_kl_k1, y.approx_kl_k1));
  CHECK(sc(x.approx_kl_k3, y.approx_kl_k3));
  CHECK(sc(x.kl_ref, y.kl_ref));
  CHECK(sc(x.kl_clamped, y.kl_clamped));
}

/// `call(be, grad)` runs policy_loss on tag `be` writing `grad` (a buffer of n elements of G,
/// at least one):
/// the asynchronous call returns a default value, publishes the synchronous call's result bit
/// for bit, writes the same gradient bit for bit and defers no error.
template <class G, class Call>
policy_loss_result async_matches_sync(index_t n, Call&& call) {
  buffer<G, Bk> g1(std::max<index_t>(n, 1), G(-7)), g2(std::max<index_t>(n, 1), G(-7));
  const policy_loss_result s1 = call(tag{}, g1);
  async_env<policy_loss_result> env;
  const policy_loss_result s0 = call(env.be(), g2);
  check_same(s0, policy_loss_result{});
  check_same(env.value(), s1);
  CHECK(test::bitwise_equal(g1.to_host(), g2.to_host()));
  CHECK(check_message(env.be()) == "no exception");
  return s1;
}

/// `call(be, grad)` fails with a data error: the synchronous call throws a message containing
/// `needle` and writes nothing; the asynchronous call neither throws nor writes (gradient and
/// result untouched) and defers the very same message.
template <class G, class Call>
void async_error_matches_sync(index_t n, const char* needle, Call&& call) {
  buffer<G, Bk> g(std::max<index_t>(n, 1), G(-7));
  const std::vector<G> untouched(static_cast<std::size_t>(std::max<index_t>(n, 1)), G(-7));
  const std::string msg = message_of([&] { call(tag{}, g); });
  CHECK(msg.find("polo::policy_loss") != std::string::npos);
  CHECK(msg.find(needle) != std::string::npos);
  CHECK(g.to_host() == untouched);
  async_env<policy_loss_result> env;
  CHECK_NOTHROW(call(env.be(), g));
  CHECK(g.to_host() == untouched);
  CHECK(env.untouched());
  CHECK(check_message(env.be()) == msg);
}

struct pl_inputs {
  std::vector<float> lp, lo, lr, adv;
};

pl_inputs make_pl_inputs(std::mt19937_64& g, index_t n) {
  pl_inputs x;
  x.lp = test::cast<float>(test::normal(g, n, -1.0, 0.5));
  const auto d = test::normal(g, n, 0.0, 0.15);
  x.lo.resize(x.lp.size());
  for (std::size_t k = 0; k < x.lp.size(); ++k) x.lo[k] = x.lp[k] + float(d[k]);
  x.lr = test::cast<float>(test::normal(g, n, -1.0, 0.5));
  x.adv = test::cast<float>(test::normal(g, n, 0.0, 1.0));
  return x;
}

/// Flat index k of a valid token of some row >= 4 (its last one) whose two predecessors k-1,
/// k-2 are valid tokens of the same row, or -1.
index_t valid_token(const std::vector<std::uint8_t>& m, index_t B, index_t Tn) {
  auto ok = [&](index_t i, index_t t) { return m[static_cast<std::size_t>(i * Tn + t)] != 0; };
  for (index_t i = 4; i < B; ++i)
    for (index_t t = Tn - 1; t >= 2; --t)
      if (ok(i, t)) {
        if (ok(i, t - 1) && ok(i, t - 2)) return i * Tn + t;
        break;
      }
  return -1;
}

policy_loss_config with_skip(policy_loss_config c) {
  c.nonfinite = token_nonfinite_policy::skip;
  return c;
}

}  // namespace

TEST_CASE("async: policy_loss publishes the synchronous result; errors write nothing", "[async][policy_loss]") {
  auto g = test::rng(1105);
  INFO("seed " << test::base_seed());
  // 2500 tokens per row: two chunks of the 256-thread kernels.
  const index_t B = 23, Tn = 2500, n = B * Tn;
  const auto mh = test::make_mask(g, B, Tn, test::mask_pattern::right_pad);
  buffer<std::uint8_t, Bk> m(mh);
  pl_inputs in = make_pl_inputs(g, n);
  in.lo[3] = 40.f;  // a clamped log-ratio (if valid)
  // NaN / inf inputs at valid tokens for the skip policy.
  pl_inputs nf = in;
  const index_t at = valid_token(mh, B, Tn);
  REQUIRE(at >= 0);
  nf.lp[static_cast<std::size_t>(at)] = std::numeric_limits<float>::quiet_NaN();
  nf.adv[static_cast<std::size_t>(at - 1)] = std::numeric_limits<float>::infinity();
  nf.lr[static_cast<std::size_t>(at - 2)] = -std::numeric_limits<float>::infinity();
  buffer<float, Bk> lp(in.lp), lo(in.lo), lr(in.lr), adv(in.adv);
  buffer<float, Bk> nlp(nf.lp), nlo(nf.lo), nlr(nf.lr), nadv(nf.adv);
  padded<std::uint8_t, S> L(m.cview2(B, Tn));

  policy_loss_config seq_mean = presets::verl::grpo_loss;
  seq_mean.agg = aggregation::seq_mean_token_mean;
  seq_mean.kl_agg = kl_aggregation::token_mean;
  const policy_loss_config gspo = presets::trl::gspo_loss;  // through_mean gradient
  policy_loss_config gspo_kl = presets::verl::gspo_loss;    // straight-through, sequence-level KL
  gspo_kl.kl_coef = 0.02;
  gspo_kl.kl.level = kl_level::sequence_mean;
  const std::vector<policy_loss_config> cfgs = {
      policy_loss_config{}, presets::verl::grpo_loss, seq_mean, gspo, gspo_kl, with_skip(presets::verl::grpo_loss),
      with_skip(gspo)};
  for (std::size_t k = 0; k < cfgs.size(); ++k) {
    const policy_loss_config& c = cfgs[k];
    INFO("config " << k);
    const auto s1 = async_matches_sync<float>(n, [&](const tag& be, buffer<float, Bk>& gr) {
      return policy_loss(be, L, lp.cview2(B, Tn), lo.cview2(B, Tn), lr.cview2(B, Tn), adv.cview2(B, Tn),
                         gr.view2(B, Tn), c);
    });
    CHECK(s1.stats.tokens > 0);
    CHECK(s1.loss != 0.0);
  }
  // Non-finite inputs under ::skip (the token level and GSPO's whole sequence left out).
  for (const policy_loss_config& c : {with_skip(presets::verl::grpo_loss), with_skip(gspo)}) {
    const auto s1 = async_matches_sync<float>(n, [&](const tag& be, buffer<float, Bk>& gr) {
      return policy_loss(be, L, nlp.cview2(B, Tn), nlo.cview2(B, Tn), nlr.cview2(B, Tn), nadv.cview2(B, Tn),
                         gr.view2(B, Tn), c);
    });
    CHECK(s1.stats.nonfinite_tokens == (c.kl_coef != 0.0 ? 3 : 2));  // logp_ref is read with a KL term only
    CHECK(s1.stats.skipped_tokens >= s1.stats.nonfinite_tokens);
  }
  // double
  {
    buffer<double, Bk> dlp(std::vector<double>(in.lp.begin(), in.lp.end()));
    buffer<double, Bk> dlo(std::vector<double>(in.lo.begin(), in.lo.end()));
    buffer<double, Bk> dlr(std::vector<double>(in.lr.begin(), in.lr.end()));
    buffer<double, Bk> dad(std::vector<double>(in.adv.begin(), in.adv.end()));
    for (const policy_loss_config& c : {presets::verl::grpo_loss, gspo}) {
      const auto s1 = async_matches_sync<double>(n, [&](const tag& be, buffer<double, Bk>& gr) {
        return policy_loss(be, L, dlp.cview2(B, Tn), dlo.cview2(B, Tn), dlr.cview2(B, Tn), dad.cview2(B, Tn),
                           gr.view2(B, Tn), c);
      });
      CHECK(s1.stats.tokens > 0);
    }
  }
  // Log-probs in bf16 (the CUDA-only overload).
  {
    auto bf = [](const std::vector<float>& v) {
      std::vector<__nv_bfloat16> o(v.size());
      for (std::size_t k = 0; k < v.size(); ++k) o[k] = __float2bfloat16(v[k]);
      return o;
    };
    buffer<__nv_bfloat16, Bk> blp(bf(in.lp)), blo(bf(in.lo)), blr(bf(in.lr));
    for (const policy_loss_config& c : {presets::verl::grpo_loss, with_skip(presets::verl::grpo_loss), gspo}) {
      const auto s1 = async_matches_sync<float>(n, [&](const tag& be, buffer<float, Bk>& gr) {
        return policy_loss(be, L, blp.cview2(B, Tn), blo.cview2(B, Tn), blr.cview2(B, Tn), adv.cview2(B, Tn),
                           gr.view2(B, Tn), c);
      });
      CHECK(s1.stats.tokens > 0);
    }
  }

  // Packed (short rows: the 32-thread kernels), and an empty packed batch.
  const index_t Bp = 40;
  std::vector<std::int64_t> off(static_cast<std::size_t>(Bp + 1));
  for (index_t i = 0; i <= Bp; ++i) off[static_cast<std::size_t>(i)] = 37 * i + (i > 0 ? 3 : 0) + (i > 20 ? 500 : 0);
  const index_t N = off.back();
  REQUIRE(N <= n);
  buffer<std::int64_t, Bk> ob(off);
  packed<std::uint8_t, std::int64_t, S> P(ob.cview1(), N);
  auto packed_call = [&](const packed<std::uint8_t, std::int64_t, S>& lay, index_t NN, const policy_loss_config& c) {
    return [&, NN, c](const tag& be, buffer<float, Bk>& gr) {
      return policy_loss(be, lay, head(lp.cview1(), NN), head(lo.cview1(), NN), head(lr.cview1(), NN),
                         head(adv.cview1(), NN), head(gr.view1(), NN), c);
    };
  };
  for (const policy_loss_config& c : {policy_loss_config{}, presets::verl::grpo_loss, gspo, with_skip(gspo)}) {
    const auto s1 = async_matches_sync<float>(N, packed_call(P, N, c));
    CHECK(s1.stats.tokens == N);
  }
  buffer<std::int64_t, Bk> z(std::vector<std::int64_t>{0});
  packed<std::uint8_t, std::int64_t, S> E(z.cview1(), 0);
  for (const policy_loss_config& c : {policy_loss_config{}, gspo}) {
    buffer<float, Bk> e(1, -7.f);
    async_env<policy_loss_result> env0;
    policy_loss(env0.be(), E, head(lp.cview1(), 0), head(lo.cview1(), 0), head(lr.cview1(), 0), head(adv.cview1(), 0),
                head(e.view1(), 0), c);
    const policy_loss_result s1 = policy_loss(tag{}, E, head(lp.cview1(), 0), head(lo.cview1(), 0),
                                              head(lr.cview1(), 0), head(adv.cview1(), 0), head(e.view1(), 0), c);
    check_same(env0.value(), s1);
    check_same(env0.value(), policy_loss_result{});
    CHECK(check_message(env0.be()) == "no exception");
  }

  // Malformed offsets: nothing written in either mode (the direct gradient of ::skip included),
  // the same exception.
  auto dec = off;
  dec[10] = dec[12];
  auto end = off;
  end.back() = N - 1;
  auto start = off;
  start[0] = 1;
  for (const auto& [bad, needle] :
       {std::pair{dec, "decreases"}, std::pair{end, "ends at"}, std::pair{start, "starts at"}}) {
    buffer<std::int64_t, Bk> bb(bad);
    packed<std::uint8_t, std::int64_t, S> PB(bb.cview1(), N);
    for (const policy_loss_config& c : {policy_loss_config{}, with_skip(presets::verl::grpo_loss), gspo}) {
      INFO(needle);
      async_error_matches_sync<float>(N, needle, packed_call(PB, N, c));
    }
  }
  // An empty packed batch with offsets[0] != 0.
  {
    buffer<std::int64_t, Bk> z1(std::vector<std::int64_t>{2});
    packed<std::uint8_t, std::int64_t, S> E1(z1.cview1(), 0);
    async_error_matches_sync<float>(0, "starts at", packed_call(E1, 0, policy_loss_config{}));
  }

  // A non-finite input at a valid token under ::error: token level (the gradient waits in
  // scratch), sequence level (found by the prep pass), the bf16 overload.
  auto padded_call = [&](const policy_loss_config& c) {
    return [&, c](const tag& be, buffer<float, Bk>& gr) {
      return policy_loss(be, L, nlp.cview2(B, Tn), nlo.cview2(B, Tn), nlr.cview2(B, Tn), nadv.cview2(B, Tn),
                         gr.view2(B, Tn), c);
    };
  };
  // First in the CPU's order (row, position): logp_ref at k-2 when it is read, else advantages at k-1.
  async_error_matches_sync<float>(n, "logp_ref", padded_call(presets::verl::grpo_loss));
  async_error_matches_sync<float>(n, "advantages", padded_call(policy_loss_config{}));
  async_error_matches_sync<float>(n, "advantages", padded_call(gspo));
  async_error_matches_sync<float>(n, "logp_ref", padded_call(gspo_kl));
  {
    auto lp2 = in.lp;
    lp2[static_cast<std::size_t>(at)] = std::numeric_limits<float>::infinity();
    std::vector<__nv_bfloat16> b2(lp2.size()), bo(in.lo.size());
    for (std::size_t k = 0; k < lp2.size(); ++k) {
      b2[k] = __float2bfloat16(lp2[k]);
      bo[k] = __float2bfloat16(in.lo[k]);
    }
    buffer<__nv_bfloat16, Bk> blp(b2), blo(bo);
    async_error_matches_sync<float>(n, "logp", [&](const tag& be, buffer<float, Bk>& gr) {
      return policy_loss(be, L, blp.cview2(B, Tn), blo.cview2(B, Tn), view<const __nv_bfloat16, 2, S>{},
                         adv.cview2(B, Tn), gr.view2(B, Tn), policy_loss_config{});
    });
  }

  // result without deferred_errors is a configuration error (nothing written).
  buffer<float, Bk> o(n, -7.f);
  async_env<policy_loss_result> e1;
  tag cfg;
  cfg.result = e1.res.view1().data;
  CHECK_THROWS_AS(policy_loss(cfg, L, lp.cview2(B, Tn), lo.cview2(B, Tn), lr.cview2(B, Tn), adv.cview2(B, Tn),
                              o.view2(B, Tn), presets::verl::grpo_loss),
                  config_error);
  CHECK(o.to_host() == std::vector<float>(static_cast<std::size_t>(n), -7.f));
  CHECK(e1.untouched());
}

#endif  // __CUDACC__
