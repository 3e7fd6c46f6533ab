// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
// The example trainers (examples/r1zero): the gradient polo hands to the model matches finite
// differences of polo's loss through the model, a short seeded GRPO run raises the reward, and
// the same seed gives the same curve. CPU-only: the models are host code (no CUDA twin is built,
// there is no cuda/polo/trainer.cuh).
#if !defined(__CUDACC__)

#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <vector>

#include "../examples/r1zero/trainer.hpp"
#include "support/polo_test.hpp"

namespace {

using r1zero::index_t;
using r1zero::token_t;

r1zero::policy_config small_config() {
  r1zero::policy_config c;
  c.shape.vocab = r1zero::tok::vocab;
  c.shape.outputs = r1zero::tok::vocab;
  c.shape.context = 8;
  c.shape.embed = 4;
  c.shape.hidden = {12, 10};
  c.pad = r1zero::tok::pad;
  c.stop = r1zero::tok::close;
  return c;
}

/// A batch of completions sampled from `pol` for random 2-digit problems.
r1zero::rollout sample_batch(r1zero::mlp_policy<double>& pol, std::uint64_t seed, int N, int G) {
  r1zero::task_config task;
  task.digits = 2;
  task.max_completion = 6;
  r1zero::rng g(seed);
  std::vector<r1zero::problem> ps;
  for (int i = 0; i < N; ++i) ps.push_back(r1zero::sample_problem(g, 2));
  return r1zero::sample(pol, ps, G, task, seed, 1.0);
}

}  // namespace

TEST_CASE("r1zero: the policy-loss gradient polo returns matches finite differences through the model",
          "[trainer]") {
  const std::uint64_t seed = polo::test::base_seed();
  r1zero::mlp_policy<double> pol(small_config());
  pol.init(seed);
  r1zero::rollout r = sample_batch(pol, seed + 1, 3, 4);
  const polo::token_batch<> b = r.batch();
  const index_t B = r.rows, T = r.T;
  const polo::padded<> layout(polo::view<const std::uint8_t, 2>{r.mask.data(), B, T, T});

  // Old and reference log-probs a little away from the current ones, so that ratios differ
  // from 1 (some tokens clipped) and the KL term is not at its minimum; random advantages.
  std::vector<double> logp(std::size_t(B * T)), old(logp.size()), ref(logp.size()), adv(logp.size()),
      grad(logp.size());
  polo::token_logprobs(pol, b, polo::view<double, 2>{logp.data(), B, T, T});
  auto rng = polo::test::rng(seed + 2);
  std::uniform_real_distribution<double> u(-1.0, 1.0);
  for (std::size_t k = 0; k < logp.size(); ++k) {
    old[k] = logp[k] + 0.3 * u(rng);
    ref[k] = logp[k] + 0.5 * u(rng);
    adv[k] = u(rng);
  }
  polo::policy_loss_config cfg;
  cfg.kl_coef = 0.1;
  cfg.kl = polo::kl_config{.estimator = polo::kl_estimator::k3};
  auto loss_at = [&](r1zero::mlp_policy<double>& p, std::vector<double>& g) {
    std::vector<double> lp(logp.size());
    polo::token_logprobs(p, b, polo::view<double, 2>{lp.data(), B, T, T});
    return polo::policy_loss(polo::cpu{}, layout, polo::view<const double, 2>{lp.data(), B, T, T},
                             polo::view<const double, 2>{old.data(), B, T, T},
                             polo::view<const double, 2>{ref.data(), B, T, T},
                             polo::view<const double, 2>{adv.data(), B, T, T},
                             polo::view<double, 2>{g.data(), B, T, T}, cfg)
        .loss;
  };
  loss_at(pol, grad);
  pol.net().zero_grad();
  polo::policy_backward(pol, b, polo::view<double, 2>{grad.data(), B, T, T});
  const r1zero::vector<double> analytic = pol.net().grads();
  REQUIRE(analytic.norm() > 0);

  // Central differences on a spread of parameters: embeddings, both hidden layers, the head.
  const index_t n = pol.net().num_params();
  std::vector<double> scratch(logp.size());
  int checked = 0;
  for (index_t k = 0; k < n; k += 7) {
    const double h = 1e-6, keep = pol.net().params()[k];
    pol.net().params()[k] = keep + h;
    const double lp = loss_at(pol, scratch);
    pol.net().params()[k] = keep - h;
    const double lm = loss_at(pol, scratch);
    pol.net().params()[k] = keep;
    const double fd = (lp - lm) / (2 * h);
    INFO("parameter " << k << " of " << n);
    CHECK(analytic[k] == Approx(fd).margin(1e-7).epsilon(1e-5));
    ++checked;
  }
  CHECK(checked > 50);
}

TEST_CASE("r1zero: the value-loss gradient polo returns matches finite differences through the critic",
          "[trainer]") {
  const std::uint64_t seed = polo::test::base_seed();
  r1zero::mlp_policy<double> pol(small_config());
  pol.init(seed);
  r1zero::mlp_critic<double> critic(small_config());
  critic.init(seed + 3);
  r1zero::rollout r = sample_batch(pol, seed + 4, 4, 2);
  const polo::token_batch<> b = r.batch();
  const index_t B = r.rows, T = r.T;
  const polo::padded<> layout(polo::view<const std::uint8_t, 2>{r.mask.data(), B, T, T});
  std::vector<double> v(std::size_t(B * T)), vold(v.size()), ret(v.size()), g(v.size());
  polo::token_values(critic, b, polo::view<double, 2>{v.data(), B, T, T});
  auto rng = polo::test::rng(seed + 5);
  std::uniform_real_distribution<double> u(-1.0, 1.0);
  for (std::size_t k = 0; k < v.size(); ++k) {
    vold[k] = v[k] + 0.3 * u(rng);
    ret[k] = u(rng);
  }
  polo::value_loss_config vcfg;
  auto loss_at = [&](std::vector<double>& grad) {
    std::vector<double> vv(v.size());
    polo::token_values(critic, b, polo::view<double, 2>{vv.data(), B, T, T});
    return polo::value_loss(polo::cpu{}, layout, polo::view<const double, 2>{vv.data(), B, T, T},
                            polo::view<const double, 2>{vold.data(), B, T, T},
                            polo::view<const double, 2>{ret.data(), B, T, T}, polo::view<double, 2>{grad.data(), B, T, T},
                            vcfg)
        .loss;
  };
  loss_at(g);
  critic.net().zero_grad();
  polo::value_backward(critic, b, polo::view<double, 2>{g.data(), B, T, T});
  const r1zero::vector<double> analytic = critic.net().grads();
  REQUIRE(analytic.norm() > 0);
  std::vector<double> scratch(v.size());
  for (index_t k = 0; k < critic.net().num_params(); k += 5) {
    const double h = 1e-6, keep = critic.net().params()[k];
    critic.net().params()[k] = keep + h;
    const double lp = loss_at(scratch);
    critic.net().params()[k] = keep - h;
    const double lm = loss_at(scratch);
    critic.net().params()[k] = keep;
    INFO("parameter " << k);
    CHECK(analytic[k] == Approx((lp - lm) / (2 * h)).margin(1e-7).epsilon(1e-5));
  }
}

namespace {

r1zero::options tiny_run() {
  r1zero::options o;
  o.digits = 1;  // one-digit addition: completions of 3-4 tokens, learnt in a few hundred steps
  o.max_completion = 5;
  o.context = 8;
  o.hidden = "64";
  o.warmup_steps = 200;
  o.warmup_batch = 32;
  o.digit_noise = 0;
  o.format_noise = 0;
  o.steps = 200;
  o.prompts = 8;
  o.group = 8;
  o.lr = 3e-3;
  o.eval_prompts = 20;
  o.eval_k = 4;
  o.eval_every = 100;
  o.quiet = true;
  return o;
}

double mean_accuracy(const r1zero::run_log& log, std::size_t from, std::size_t to) {
  double s = 0;
  for (std::size_t k = from; k < to; ++k) s += log.rows[k].accuracy;
  return s / double(to - from);
}

}  // namespace

TEST_CASE("r1zero: a short seeded GRPO run raises the reward, and the same seed gives the same curve",
          "[trainer]") {
  r1zero::options o = tiny_run();
  o.seed = polo::test::base_seed();
  const r1zero::problem_set held = r1zero::held_out_set(o);
  r1zero::mlp_policy<float> base = r1zero::base_policy<float>(o, held);

  r1zero::mlp_policy<float> p1 = base;
  const r1zero::run_log a = r1zero::train_grpo<polo::cpu>(p1, o, held);
  REQUIRE(a.rows.size() == std::size_t(o.steps));
  const double first = mean_accuracy(a, 0, 30), last = mean_accuracy(a, a.rows.size() - 30, a.rows.size());
  INFO("train accuracy, first 30 steps " << first << ", last 30 steps " << last);
  CHECK(last > first + 0.15);

  r1zero::mlp_policy<float> p2 = base;
  const r1zero::run_log b = r1zero::train_grpo<polo::cpu>(p2, o, held);
  REQUIRE(b.rows.size() == a.rows.size());
  for (std::size_t k = 0; k < a.rows.size(); ++k) {
    INFO("step " << a.rows[k].step);
    CHECK(a.rows[k].reward == b.rows[k].reward);
    CHECK(a.rows[k].kl == b.rows[k].kl);
    CHECK(a.rows[k].entropy == b.rows[k].entropy);
    CHECK(a.rows[k].loss == b.rows[k].loss);
  }
  CHECK(p1.net().params() == p2.net().params());
}

TEST_CASE("r1zero: the PNG writer's checksums and deflate stream", "[trainer]") {
  const std::string check = "123456789";
  CHECK(r1zero::plot::crc32(reinterpret_cast<const std::uint8_t*>(check.data()), check.size()) == 0xCBF43926u);
  // A run of 1000 equal bytes: zlib header, one fixed-Huffman block of a literal and a few
  // matches at distance 1, then the Adler-32 of the data (computed here independently).
  const std::vector<std::uint8_t> data(1000, 97);
  const std::vector<std::uint8_t> z = r1zero::plot::zlib_compress(data, {1});
  REQUIRE(z.size() > 6);
  CHECK(z.size() < 40);
  CHECK(z[0] == 0x78);
  CHECK((z[0] * 256 + z[1]) % 31 == 0);  // the zlib header check
  CHECK((z[2] & 7) == 3);                // BFINAL = 1, BTYPE = 01 (fixed codes)
  std::uint32_t a = 1, b = 0;
  for (std::uint8_t v : data) a = (a + v) % 65521, b = (b + a) % 65521;
  const std::uint32_t adler = (b << 16) | a;
  CHECK(((std::uint32_t(z[z.size() - 4]) << 24) | (std::uint32_t(z[z.size() - 3]) << 16) |
         (std::uint32_t(z[z.size() - 2]) << 8) | z[z.size() - 1]) == adler);
}

#endif  // !defined(__CUDACC__)
