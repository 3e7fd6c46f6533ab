// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
#pragma once
/// \file
/// KL coefficient controllers for the KL penalty in the reward (r_t − β·KL_t): a fixed β, and
/// the adaptive controller of Ziegler et al. (2019) as verl and OpenRLHF implement it:
///
///     e = clip(KL / target − 1, −0.2, +0.2)
///     β ← β · (1 + e · n_steps / horizon)
///
/// where KL is the current observed KL and n_steps the number of samples since the last update
/// (verl passes the batch mean of each sequence's token-mean KL and n_steps = batch size). The
/// proportional error is clipped, so β changes by at most a factor (1 ± 0.2·n_steps/horizon) per
/// update and stays positive whenever n_steps < 5·horizon.
///
/// Host-only value types (no backend: the controller runs once per step on a scalar). Both have
/// the same interface (`value()`, `update(kl, n_steps)`), so a trainer can hold either.

#include <string>

#include "polo/core/config.hpp"
#include "polo/core/error.hpp"
#include "polo/core/math.hpp"

namespace polo {

/// A constant β: update() validates its arguments and changes nothing (verl's default
/// kl_ctrl.type = fixed).
class fixed_kl_controller {
 public:
  /// \throws config_error unless beta is finite and >= 0.
  explicit fixed_kl_controller(double beta) : beta_(beta) {
    if (!(beta >= 0.0) || !detail::is_finite(beta))
      detail::throw_config("fixed_kl_controller", "beta", detail::value_str(beta), "a finite value >= 0");
  }
  /// The current coefficient β.
  [[nodiscard]] double value() const noexcept { return beta_; }
  /// Observes a KL value; β is unchanged.
  /// \throws nonfinite_error if kl is not finite; value_error if n_steps < 0.
  void update(double kl, index_t n_steps) const {
    if (!detail::is_finite(kl)) detail::throw_nonfinite("fixed_kl_controller::update", "kl", 0, kl, "");
    if (n_steps < 0)
      detail::throw_value("fixed_kl_controller::update", "n_steps", "is " + std::to_string(n_steps) + "; expected >= 0");
  }

 private:
  double beta_;
};

/// Options of the adaptive controller.
struct adaptive_kl_config {
  double init_beta = 0.001;  ///< β before the first update, >= 0 (verl kl_ctrl.kl_coef)
  double target = 0.1;       ///< target KL, > 0 (verl kl_ctrl.target_kl)
  double horizon = 10000.0;  ///< > 0 (verl kl_ctrl.horizon)
  double max_error = 0.2;    ///< clip of the proportional error, > 0 (0.2 in Ziegler, verl, OpenRLHF)
};

/// Ziegler's adaptive controller (verl AdaptiveKLController, OpenRLHF AdaptiveKLController).
class adaptive_kl_controller {
 public:
  /// \throws config_error naming the option unless init_beta >= 0, target > 0, horizon > 0,
  ///         max_error > 0, all finite.
  explicit adaptive_kl_controller(const adaptive_kl_config& c = {}) : cfg_(c), beta_(c.init_beta) {
    constexpr const char* fn = "adaptive_kl_controller";
    if (!(c.init_beta >= 0.0) || !detail::is_finite(c.init_beta))
      detail::throw_config(fn, "init_beta", detail::value_str(c.init_beta), "a finite value >= 0");
    if (!(c.target > 0.0) || !detail::is_finite(c.target))
      detail::throw_config(fn, "target", detail::value_str(c.target), "a finite value > 0");
    if (!(c.horizon > 0.0) || !detail::is_finite(c.horizon))
      detail::throw_config(fn, "horizon", detail::value_str(c.horizon), "a finite value > 0");
    if (!(c.max_error > 0.0) || !detail::is_finite(c.max_error))
      detail::throw_config(fn, "max_error", detail::value_str(c.max_error), "a finite value > 0");
  }
  /// The current coefficient β.
  [[nodiscard]] double value() const noexcept { return beta_; }
  [[nodiscard]] const adaptive_kl_config& config() const noexcept { return cfg_; }
  /// The clipped proportional error e for an observed KL.
  [[nodiscard]] double error(double kl) const noexcept {
    double e = kl / cfg_.target - 1.0;
    return detail::clamp_keep_nan(e, -cfg_.max_error, cfg_.max_error);
  }
  /// β ← β · (1 + e · n_steps / horizon). On throw β is unchanged.
  /// \throws nonfinite_error if kl is not finite; value_error if n_steps < 0.
  void update(double kl, index_t n_steps) {
    constexpr const char* fn = "adaptive_kl_controller::update";
    if (!detail::is_finite(kl)) detail::throw_nonfinite(fn, "kl", 0, kl, "");
    if (n_steps < 0) detail::throw_value(fn, "n_steps", "is " + std::to_string(n_steps) + "; expected >= 0");
    beta_ *= 1.0 + error(kl) * double(n_steps) / cfg_.horizon;
  }

 private:
  adaptive_kl_config cfg_;
  double beta_;
};

namespace presets {
namespace verl {
/// verl algorithm.kl_ctrl with type = adaptive: kl_coef 0.001, target_kl 0.1, horizon 10000.
inline constexpr adaptive_kl_config kl_control{.init_beta = 0.001, .target = 0.1, .horizon = 10000.0};
/// verl's default controller type (fixed) uses kl_coef = 0.001.
inline constexpr double kl_coef = 0.001;
}  // namespace verl
namespace openrlhf {
/// OpenRLHF: init_kl_coef 0.01, kl_horizon 10000. OpenRLHF has no default KL target (it
/// builds the adaptive controller only when a target is given); this preset carries verl's 0.1,
/// replace it with yours.
inline constexpr adaptive_kl_config kl_control{.init_beta = 0.01, .target = 0.1, .horizon = 10000.0};
inline constexpr double kl_coef = 0.01;
}  // namespace openrlhf
namespace trl {
/// TRL PPOTrainer: a fixed coefficient, PPOConfig.kl_coef = 0.05 (no adaptive controller).
inline constexpr double kl_coef = 0.05;
}  // namespace trl
}  // namespace presets

}  // namespace polo
