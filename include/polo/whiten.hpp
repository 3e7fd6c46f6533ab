// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
#pragma once
/// \file
/// Masked whitening of a per-token tensor (PPO advantages, REINFORCE++ returns): the mean and
/// variance are taken over the valid tokens of the whole batch, and every peer's convention is
/// an option. Backend-neutral: options, presets, validation and entry points; the CPU
/// implementation is in <polo/cpu/whiten.hpp>.
///
/// ## The computation
/// Over the N valid tokens (mask != 0) of x, with μ their mean and M2 = Σ (x − μ)²:
///
///     var = M2 / (N − 1)            std_kind::sample       (verl, TRL-PPO: unbiased)
///         = M2 / N                  std_kind::population   (OpenRLHF)
///     D   = sqrt(var + eps)         eps_placement::inside_sqrt     (verl, TRL, NeMo: rsqrt(var+eps))
///         = sqrt(max(var, eps))     eps_placement::floor_variance  (OpenRLHF: rsqrt(max(var, eps)))
///         = sqrt(var) + eps         eps_placement::add_to_std      (CleanRL: std + eps)
///     out = (x − μ) / D             shift_mean = true
///         = (x − μ) / D + μ         shift_mean = false (rescale, keep the mean: verl/TRL/NeMo)
///
/// written at the valid tokens; at masked tokens either 0 (`whiten_write::zero_masked`: TRL-PPO,
/// NeMo, verl's REINFORCE++ which multiplies by the mask) or the same affine map of the masked
/// input (`whiten_write::all_positions`: verl's GAE, OpenRLHF). Masked inputs never enter μ or
/// var; under all_positions a non-finite masked input stays non-finite at its own position only.
///
/// **Degenerate batches.** With N = 0 valid tokens, or N = 1 under the sample variance, the
/// variance is undefined: verl and TRL raise, OpenRLHF returns NaN. polo makes this an option:
/// `whiten_degenerate::zero` (polo's default, after ECOSYSTEM.md 4.3: an empty batch contributes
/// nothing and is never NaN) writes 0 at every position it writes and flags the stats;
/// `whiten_degenerate::error` throws value_error (verl, TRL). With N = 1 under the population
/// variance var = 0 and the formula applies (out = 0 when the mean is shifted).
///
/// **Across ranks.** Statistics are returned as `moments` (count, mean, M2); each rank computes
/// `masked_moments` (or takes `whiten_stats::local` / `gae_stats::advantages`), all-reduces
/// them with `moments::operator+=` (Chan's exact merge), and calls the `whiten` overload that
/// takes the batch moments: every rank then applies the same μ and D.
///
/// Statistics accumulate in double, per row in two passes (sum of x − x_first, then squared
/// deviations), rows merged in order with Chan's update: a constant batch has M2 exactly 0.
///
/// polo's default (`whiten_config{}`) is verl's statistic (sample variance, eps 1e-8 inside the
/// square root, mean shifted) with masked positions zeroed and degenerate batches giving 0.
/// verl and TRL divide by (N + 1e-8) in their masked mean; polo divides by N (a relative
/// difference of 1e-8/N, below float resolution).

#include <cmath>
#include <string>
#include <type_traits>

#include "polo/advantages.hpp"
#include "polo/aggregation.hpp"
#include "polo/core/backend.hpp"
#include "polo/core/error.hpp"
#include "polo/core/layout.hpp"
#include "polo/core/math.hpp"
#include "polo/core/reduce.hpp"
#include "polo/core/view.hpp"

namespace polo {

/// What whitening writes at masked positions.
enum class whiten_write : unsigned char {
  zero_masked,    ///< 0 at masked positions (TRL-PPO, NeMo, verl REINFORCE++)
  all_positions,  ///< the same affine map at every position (verl GAE, OpenRLHF)
};

/// What whitening does when the variance is undefined (N = 0, or N = 1 with a sample variance).
enum class whiten_degenerate : unsigned char {
  zero,   ///< write 0 everywhere it writes; `whiten_stats::degenerate` is set
  error,  ///< throw polo::value_error, nothing written (verl, TRL)
};

/// Options of whiten. Defaults: polo's (see the file comment).
struct whiten_config {
  std_kind std = std_kind::sample;                       ///< variance divisor N−1 or N
  eps_placement eps_mode = eps_placement::inside_sqrt;   ///< where eps enters D
  double eps = 1e-8;                                     ///< > 0
  bool shift_mean = true;                                ///< false: add μ back after scaling
  whiten_write write = whiten_write::zero_masked;        ///< masked positions: 0 or mapped
  whiten_degenerate degenerate = whiten_degenerate::zero;
};

/// What one whiten call used and saw.
struct whiten_stats {
  moments local{};          ///< count, mean, M2 of this call's valid inputs
  moments used{};           ///< the moments the output was computed from (local or passed in)
  double mean = 0.0;        ///< μ applied
  double inv_scale = 0.0;   ///< 1 / D applied (0 when degenerate)
  bool degenerate = false;  ///< the variance was undefined and 0 was written
};

namespace presets {
namespace verl {
/// verl `masked_whiten` as used on GAE advantages: unbiased variance, rsqrt(var + 1e-8), mean
/// shifted, written at every position; N <= 1 raises.
inline constexpr whiten_config whitening{.std = std_kind::sample,
                                         .eps_mode = eps_placement::inside_sqrt,
                                         .eps = 1e-8,
                                         .shift_mean = true,
                                         .write = whiten_write::all_positions,
                                         .degenerate = whiten_degenerate::error};
/// verl REINFORCE++ / REINFORCE++-baseline / GDPO: `masked_whiten(x, m) * m`.
inline constexpr whiten_config whitening_masked{.std = std_kind::sample,
                                                .eps_mode = eps_placement::inside_sqrt,
                                                .eps = 1e-8,
                                                .shift_mean = true,
                                                .write = whiten_write::zero_masked,
                                                .degenerate = whiten_degenerate::error};
}  // namespace verl
namespace trl {
/// TRL PPOTrainer: `masked_whiten(advantages, ~padding_mask)` (unbiased, +1e-8), then padding
/// filled with 0; N <= 1 raises.
inline constexpr whiten_config whitening{.std = std_kind::sample,
                                         .eps_mode = eps_placement::inside_sqrt,
                                         .eps = 1e-8,
                                         .shift_mean = true,
                                         .write = whiten_write::zero_masked,
                                         .degenerate = whiten_degenerate::error};
}  // namespace trl
namespace openrlhf {
/// OpenRLHF advantage whitening over all experiences (fp32): population variance,
/// rsqrt(max(var, 1e-8)), applied at every position. OpenRLHF yields NaN on an empty batch;
/// the preset writes 0 instead.
inline constexpr whiten_config whitening{.std = std_kind::population,
                                         .eps_mode = eps_placement::floor_variance,
                                         .eps = 1e-8,
                                         .shift_mean = true,
                                         .write = whiten_write::all_positions,
                                         .degenerate = whiten_degenerate::zero};
}  // namespace openrlhf
namespace nemo {
/// NeMo-RL GAE `normalize_advantages`: (x − μ)·rsqrt(var + 1e-8) over the mask, masked
/// positions then filled with 0. The masked variance is taken as the masked mean of squared
/// deviations (population).
inline constexpr whiten_config whitening{.std = std_kind::population,
                                         .eps_mode = eps_placement::inside_sqrt,
                                         .eps = 1e-8,
                                         .shift_mean = true,
                                         .write = whiten_write::zero_masked,
                                         .degenerate = whiten_degenerate::zero};
}  // namespace nemo
}  // namespace presets

namespace detail {

/// Tag of this primitive family in detail::backend_impl.
struct whiten_tag {};

inline void check_whiten_config(const char* fn, const whiten_config& c) {
  if (!(c.eps > 0.0) || !is_finite(c.eps)) throw_config(fn, "eps", value_str(c.eps), "a finite value > 0");
  if (c.std != std_kind::sample && c.std != std_kind::population)
    throw_config(fn, "std", std::to_string(unsigned(c.std)), "std_kind::sample or std_kind::population");
  if (unsigned(c.eps_mode) > unsigned(eps_placement::floor_variance))
    throw_config(fn, "eps_mode", std::to_string(unsigned(c.eps_mode)), "a value of polo::eps_placement");
}

inline void check_moments_arg(const char* fn, const char* arg, const moments& m) {
  if (m.count < 0 || !is_finite(m.mean) || !(m.m2 >= 0.0) || !is_finite(m.m2))
    throw_config(fn, arg,
                 "moments{count=" + std::to_string(m.count) + ", mean=" + value_str(m.mean) +
                     ", m2=" + value_str(m.m2) + "}",
                 "count >= 0, a finite mean and a finite m2 >= 0");
}

/// μ, 1/D and the degenerate flag from batch moments under a config. Shared by every backend.
struct whiten_coeffs {
  double mean = 0.0;
  double inv_scale = 0.0;
  bool degenerate = false;
};
/// Square root on the host and in device code.
POLO_HD_INLINE double whiten_sqrt(double x) {
#if defined(__CUDA_ARCH__)
  return ::sqrt(x);
#else
  return std::sqrt(x);
#endif
}
/// D(var) under each eps placement.
POLO_HD_INLINE double whiten_divisor(double var, eps_placement mode, double eps) {
  switch (mode) {
    case eps_placement::inside_sqrt: return whiten_sqrt(var + eps);
    case eps_placement::floor_variance: return whiten_sqrt(var > eps ? var : eps);
    case eps_placement::add_to_std: return whiten_sqrt(var) + eps;
  }
  return whiten_sqrt(var + eps);
}
/// μ and 1/D from the (batch) moments; degenerate when N = 0, or N = 1 with a sample variance.
POLO_HD_INLINE whiten_coeffs whiten_coefficients(const moments& m, const whiten_config& c) {
  whiten_coeffs w;
  index_t denom = c.std == std_kind::sample ? m.count - 1 : m.count;
  if (m.count == 0 || denom <= 0) {
    w.degenerate = true;
    return w;
  }
  double var = m.m2 > 0.0 ? m.m2 / double(denom) : 0.0;
  w.mean = m.mean;
  w.inv_scale = 1.0 / whiten_divisor(var, c.eps_mode, c.eps);
  return w;
}
/// The affine map of a whitened value: (x − μ)·(1/D) + add, with add = 0 (shift_mean) or μ.
POLO_HD_INLINE double whiten_value(double x, double mean, double inv_scale, double add) {
  return (x - mean) * inv_scale + add;
}
/// What whitening writes at one position: 0 when degenerate or when masked under
/// whiten_write::zero_masked; the affine map of x otherwise.
POLO_HD_INLINE double whiten_token(bool valid, double x, const whiten_coeffs& w, const whiten_config& c) {
  if (w.degenerate || (!valid && c.write == whiten_write::zero_masked)) return 0.0;
  return whiten_value(x, w.mean, w.inv_scale, c.shift_mean ? 0.0 : w.mean);
}

[[noreturn]] inline void throw_degenerate(const char* fn, const moments& m, const whiten_config& c) {
  throw_value(fn, "mask",
              "has " + std::to_string(m.count) + " valid token" + (m.count == 1 ? "" : "s") +
                  "; expected " + (c.std == std_kind::sample ? ">= 2 for a sample variance" : ">= 1") +
                  " under whiten_degenerate::error (choose whiten_degenerate::zero to write 0)");
}

template <class U, class T>
constexpr void static_check_whiten_types() {
  static_assert(std::is_same_v<std::remove_const_t<U>, T>, "polo::whiten: x and out must have the same element type");
  static_assert(!std::is_const_v<T>, "polo::whiten: out must be writable");
  static_check_real<T>();
}

}  // namespace detail

/// Moments (count, mean, M2) of the valid tokens of a per-token tensor, for whitening across
/// ranks: all-reduce them with `moments::operator+=` and pass them to `whiten`.
///
/// \param layout `padded{mask [B,T]}` or `packed{offsets [B+1], N, mask [N]}` (null mask: all valid)
/// \param x      per-token values of the layout (`[B,T]` or `[N]`), float or double
/// \returns the moments in double; count 0 for an empty batch
/// \throws shape_error; nonfinite_error naming 'x' and the flat index of the first non-finite
///         valid value. Masked values are never read into the result.
/// Bytes moved: T-size + mask bytes per token, read once.
template <Backend B, TokenLayout L, class U>
moments masked_moments(const B& be, const L& layout, detail::layout_tensor<L, U> x) {
  detail::static_check_space<B, typename L::memory_space>();
  detail::static_check_real<std::remove_const_t<U>>();
  constexpr const char* fn = "masked_moments";
  layout.check(fn);
  layout.check_tensor(fn, "x", x);
  using T = std::remove_const_t<U>;
  return detail::backend_impl<B, detail::whiten_tag>::masked_moments(be, layout, detail::layout_tensor<L, const T>(x));
}

/// Masked whitening with statistics of this call's valid tokens:
///
///     out = (x − μ) / D(var)  [+ μ when !shift_mean]   at valid tokens; see whiten_config
///
/// \param layout `padded{mask [B,T]}` or `packed{offsets [B+1], N, mask [N]}`
/// \param x      per-token input of the layout, float or double
/// \param out    per-token output, same type; may alias x exactly (in place)
/// \param cfg    options; presets in polo::presets::{verl,trl,openrlhf,nemo}::whitening
/// \returns the moments of x and the μ, 1/D applied
/// \throws shape_error, config_error; nonfinite_error ('x', flat index) for a non-finite valid
///         value; value_error for a degenerate batch under whiten_degenerate::error. On throw
///         nothing is written.
/// Bytes moved: x and mask read twice (statistics, then output), out written once.
template <Backend B, TokenLayout L, class U, class T>
whiten_stats whiten(const B& be, const L& layout, detail::layout_tensor<L, U> x, detail::layout_tensor<L, T> out,
                    const whiten_config& cfg = {}) {
  detail::static_check_space<B, typename L::memory_space>();
  detail::static_check_whiten_types<U, T>();
  constexpr const char* fn = "whiten";
  layout.check(fn);
  layout.check_tensor(fn, "x", x);
  layout.check_tensor(fn, "out", out);
  detail::check_whiten_config(fn, cfg);
  return detail::backend_impl<B, detail::whiten_tag>::whiten(be, layout, detail::layout_tensor<L, const T>(x), out,
                                                             nullptr, cfg);
}

/// Masked whitening with given batch statistics (all-reduced across micro-batches or ranks):
/// as above, with μ and var taken from `batch` instead of this call's tokens. The degenerate
/// rule applies to `batch.count`. This call's own moments are still returned in `local`.
/// \throws as above, and config_error if `batch` is malformed (negative count, non-finite mean
///         or M2, M2 < 0).
template <Backend B, TokenLayout L, class U, class T>
whiten_stats whiten(const B& be, const L& layout, detail::layout_tensor<L, U> x, detail::layout_tensor<L, T> out,
                    const moments& batch, const whiten_config& cfg = {}) {
  detail::static_check_space<B, typename L::memory_space>();
  detail::static_check_whiten_types<U, T>();
  constexpr const char* fn = "whiten";
  layout.check(fn);
  layout.check_tensor(fn, "x", x);
  layout.check_tensor(fn, "out", out);
  detail::check_whiten_config(fn, cfg);
  detail::check_moments_arg(fn, "batch", batch);
  return detail::backend_impl<B, detail::whiten_tag>::whiten(be, layout, detail::layout_tensor<L, const T>(x), out,
                                                             &batch, cfg);
}

}  // namespace polo
