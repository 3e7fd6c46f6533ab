// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
// The fixed and adaptive (Ziegler) KL controllers against a transcription of verl's and
// OpenRLHF's AdaptiveKLController.update (host-only value types: no CUDA twin).

#include "support/polo_test.hpp"

#include "polo/kl_controller.hpp"

namespace {

/// verl/trainer/ppo/core_algos.py AdaptiveKLController.update, transcribed:
///   proportional_error = np.clip(current_kl / target - 1, -0.2, 0.2)
///   mult = 1 + proportional_error * n_steps / horizon
///   value *= mult
double verl_update(double value, double target, double horizon, double current_kl, long long n_steps) {
  double e = current_kl / target - 1.0;
  if (e < -0.2) e = -0.2;
  if (e > 0.2) e = 0.2;
  return value * (1.0 + e * double(n_steps) / horizon);
}

}  // namespace

TEST_CASE("adaptive_kl_controller follows verl's update on a random KL trajectory", "[kl_controller]") {
  auto g = polo::test::rng(401);
  INFO("seed " << polo::test::base_seed());
  for (const auto& cfg : {polo::presets::verl::kl_control, polo::presets::openrlhf::kl_control,
                          polo::adaptive_kl_config{.init_beta = 0.05, .target = 6.0, .horizon = 100.0}}) {
    polo::adaptive_kl_controller k(cfg);
    CHECK(k.value() == cfg.init_beta);
    double want = cfg.init_beta;
    std::uniform_real_distribution<double> kl(0.0, 3.0 * cfg.target);
    std::uniform_int_distribution<long long> steps(0, 512);
    for (int it = 0; it < 200; ++it) {
      double x = kl(g);
      long long n = steps(g);
      k.update(x, n);
      want = verl_update(want, cfg.target, cfg.horizon, x, n);
      REQUIRE(k.value() == want);
    }
  }
}

TEST_CASE("adaptive_kl_controller: the proportional error is clipped", "[kl_controller]") {
  polo::adaptive_kl_controller k(polo::adaptive_kl_config{.init_beta = 1.0, .target = 0.1, .horizon = 1000.0});
  CHECK(k.error(0.1) == 0.0);
  CHECK(k.error(0.11) == Approx(0.1));
  CHECK(k.error(10.0) == 0.2);
  CHECK(k.error(0.0) == -0.2);
  k.update(10.0, 1000);  // e = +0.2 over one horizon: beta * 1.2
  CHECK(k.value() == Approx(1.2));
  k.update(0.0, 500);  // e = -0.2 over half a horizon: beta * 0.9
  CHECK(k.value() == Approx(1.08));
  k.update(0.5, 0);  // no samples: unchanged
  CHECK(k.value() == Approx(1.08));
  // A custom clip.
  polo::adaptive_kl_controller w(polo::adaptive_kl_config{.init_beta = 1.0, .target = 1.0, .horizon = 1.0, .max_error = 0.5});
  CHECK(w.error(100.0) == 0.5);
}

TEST_CASE("kl controllers: errors leave beta unchanged", "[kl_controller][errors]") {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  polo::adaptive_kl_controller k;
  REQUIRE_THROWS_AS(k.update(nan, 4), polo::nonfinite_error);
  REQUIRE_THROWS_AS(k.update(std::numeric_limits<double>::infinity(), 4), polo::nonfinite_error);
  REQUIRE_THROWS_AS(k.update(0.2, -1), polo::value_error);
  CHECK(k.value() == polo::adaptive_kl_config{}.init_beta);
  REQUIRE_THROWS_AS(polo::adaptive_kl_controller(polo::adaptive_kl_config{.init_beta = -1.0}), polo::config_error);
  REQUIRE_THROWS_AS(polo::adaptive_kl_controller(polo::adaptive_kl_config{.target = 0.0}), polo::config_error);
  REQUIRE_THROWS_AS(polo::adaptive_kl_controller(polo::adaptive_kl_config{.horizon = nan}), polo::config_error);
  REQUIRE_THROWS_AS(polo::adaptive_kl_controller(polo::adaptive_kl_config{.max_error = 0.0}), polo::config_error);
  try {
    (void)polo::adaptive_kl_controller(polo::adaptive_kl_config{.target = -2.0});
    FAIL("no throw");
  } catch (const polo::config_error& e) {
    CHECK(std::string(e.what()).find("'target'") != std::string::npos);
  }

  polo::fixed_kl_controller f(0.05);
  f.update(123.0, 64);
  CHECK(f.value() == 0.05);
  REQUIRE_THROWS_AS(f.update(nan, 1), polo::nonfinite_error);
  REQUIRE_THROWS_AS(f.update(0.1, -3), polo::value_error);
  CHECK(f.value() == 0.05);
  REQUIRE_THROWS_AS(polo::fixed_kl_controller(-0.1), polo::config_error);
  REQUIRE_THROWS_AS(polo::fixed_kl_controller(nan), polo::config_error);
  CHECK(polo::fixed_kl_controller(polo::presets::verl::kl_coef).value() == 0.001);
  CHECK(polo::fixed_kl_controller(polo::presets::trl::kl_coef).value() == 0.05);
}

TEST_CASE("kl controllers share one interface", "[kl_controller]") {
  // A trainer can hold either behind the same calls.
  auto step = [](auto& ctrl) {
    ctrl.update(0.3, 16);
    return ctrl.value();
  };
  polo::fixed_kl_controller f(0.2);
  polo::adaptive_kl_controller a(polo::adaptive_kl_config{.init_beta = 0.2, .target = 0.1, .horizon = 16.0});
  CHECK(step(f) == 0.2);
  CHECK(step(a) == Approx(0.2 * 1.2));
}
