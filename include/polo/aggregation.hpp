// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
#pragma once
/// \file
/// How a per-token loss L[i,t] becomes one number, and what it is divided by. Shared by the
/// PPO critic's loss (<polo/value_loss.hpp>) and meant to be shared by every per-token loss.
///
/// With m the token mask, n_i = Σ_t m[i,t] the valid tokens of sequence i, and S_i = Σ_t L·m:
///
///     token_mean            loss = scale · Σ_i S_i / N_tok          (verl token-mean, OpenRLHF
///                                                                    token level, NeMo TOKEN_LEVEL)
///     token_sum             loss = scale · Σ_i S_i                   (verl token-sum)
///     seq_mean_token_mean   loss = scale · Σ_{i: n_i>0} (S_i / n_i) / N_seq   (verl, TRL "grpo",
///                                                                    OpenRLHF sample level)
///     seq_mean_token_sum    loss = scale · Σ_i S_i / N_seq           (verl seq-mean-token-sum)
///     token_sum_norm        loss = scale · Σ_i S_i / C               (Dr. GRPO: TRL dr_grpo with
///                                                                    C = B·max_completion_length;
///                                                                    verl seq-mean-token-sum-norm
///                                                                    with C = N_seq·loss_scale_factor)
///
/// The divisors are **explicit** (`normalizers`): N_tok, N_seq and C are the counts of the whole
/// optimizer batch (every micro-batch of every rank), so that the losses and gradients of the
/// micro-batches add up exactly to the loss and gradient of the whole batch (SEMANTICS.md 4.1:
/// dividing each micro-batch by its own count and averaging is the most common normalisation
/// bug). Left at `normalizers::local`, a divisor is this call's own count: right for a call that
/// sees the whole batch, wrong for a micro-batch. A divisor of 0 gives a loss of exactly 0 and a
/// zero gradient (an all-masked batch), never NaN.
///
/// Every loss also reports its **sum-and-count** parts: the numerator before division and the
/// local count it would be divided by, so a caller can all-reduce both and divide once.

#include <cstdint>
#include <string>
#include <type_traits>

#include "polo/core/backend.hpp"
#include "polo/core/config.hpp"
#include "polo/core/error.hpp"
#include "polo/core/layout.hpp"
#include "polo/core/math.hpp"
#include "polo/core/view.hpp"

namespace polo {

/// How per-token losses are reduced to one loss (see the file comment for the formulas).
enum class aggregation : unsigned char {
  token_mean,           ///< Σ L·m / N_tok
  token_sum,            ///< Σ L·m
  seq_mean_token_mean,  ///< Σ over non-empty sequences of (Σ_t L·m / n_i), / N_seq
  seq_mean_token_sum,   ///< Σ L·m / N_seq
  token_sum_norm,       ///< Σ L·m / C (a constant; Dr. GRPO)
};

/// The divisors of an aggregation, and an overall scale. Counts are doubles so that fractional
/// window normalisers (OpenRLHF's `batch_num_tokens / gas`) can be passed as they are.
struct normalizers {
  /// Marker: take the count from this call's own mask (the whole batch in one call only).
  static constexpr double local = -1.0;
  /// N_tok for token_mean: valid tokens of the whole optimizer batch (all micro-batches and
  /// ranks). `local` (any negative value) uses this call's valid-token count.
  double tokens = local;
  /// N_seq for the seq_mean_* modes: non-empty sequences of the whole optimizer batch. `local`
  /// (any negative value) uses this call's count of sequences with at least one valid token.
  double sequences = local;
  /// C for token_sum_norm; must be > 0 in that mode, ignored otherwise.
  double constant = 0.0;
  /// Multiplies the aggregated loss (and its gradient): e.g. the data-parallel world size when
  /// the framework averages gradients across ranks (verl's `· dp`), or a loss coefficient.
  double scale = 1.0;
};

/// Name of an aggregation mode, as in error messages and logs.
[[nodiscard]] constexpr const char* aggregation_name(aggregation a) noexcept {
  switch (a) {
    case aggregation::token_mean: return "token_mean";
    case aggregation::token_sum: return "token_sum";
    case aggregation::seq_mean_token_mean: return "seq_mean_token_mean";
    case aggregation::seq_mean_token_sum: return "seq_mean_token_sum";
    case aggregation::token_sum_norm: return "token_sum_norm";
  }
  return "?";
}

namespace detail {

// ---- helpers for per-token tensors of a layout (used by gae, whiten and value_loss) --------

/// Rank of a per-token tensor of layout L: 2 for padded `[B,T]`, 1 for packed `[N]`.
template <class L>
inline constexpr int token_rank_v = std::remove_cvref_t<L>::is_packed ? 1 : 2;

/// A per-token tensor of layout L with element type U, spelled so that U is deduced from the
/// argument (token_tensor<L, U> is not deducible; this is the same type).
template <class L, class U>
using layout_tensor = view<U, token_rank_v<L>, typename std::remove_cvref_t<L>::memory_space>;

/// Row-major element index of token t of sequence i within a token tensor of the layout (the
/// index reported by nonfinite_error): i*T + t for padded, offsets[i] + t for packed.
template <TokenLayout L>
POLO_HD_INLINE index_t flat_index(const L& layout, index_t i, index_t t) {
  if constexpr (std::remove_cvref_t<L>::is_packed)
    return layout.row_begin(i) + t;
  else
    return i * layout.seq_len + t;
}

/// Throws config_error unless the normalizers are usable with this aggregation.
inline void check_normalizers(const char* fn, aggregation agg, const normalizers& n) {
  auto ok_count = [](double c) { return c < 0.0 ? c == c : is_finite(c); };
  if (!ok_count(n.tokens))
    throw_config(fn, "norm.tokens", value_str(n.tokens), "a finite count >= 0, or normalizers::local");
  if (!ok_count(n.sequences))
    throw_config(fn, "norm.sequences", value_str(n.sequences), "a finite count >= 0, or normalizers::local");
  if (!is_finite(n.scale)) throw_config(fn, "norm.scale", value_str(n.scale), "a finite value");
  if (agg == aggregation::token_sum_norm && !(n.constant > 0.0 && is_finite(n.constant)))
    throw_config(fn, "norm.constant", value_str(n.constant),
                 "a finite value > 0 with aggregation::token_sum_norm (the constant divisor C)");
  if (static_cast<unsigned>(agg) > static_cast<unsigned>(aggregation::token_sum_norm))
    throw_config(fn, "agg", std::to_string(static_cast<unsigned>(agg)), "a value of polo::aggregation");
}

/// The divisor D of the aggregation (N_tok, N_seq, C or 1) given this call's local counts.
POLO_HD_INLINE double aggregation_divisor(aggregation agg, const normalizers& n, index_t local_tokens,
                                          index_t local_seqs) {
  switch (agg) {
    case aggregation::token_mean: return n.tokens < 0.0 ? double(local_tokens) : n.tokens;
    case aggregation::token_sum: return 1.0;
    case aggregation::seq_mean_token_mean:
    case aggregation::seq_mean_token_sum: return n.sequences < 0.0 ? double(local_seqs) : n.sequences;
    case aggregation::token_sum_norm: return n.constant;
  }
  return 1.0;
}

/// The part of aggregation_weight that every row shares: scale / D, or 0 when D is not > 0.
POLO_HD_INLINE double aggregation_call_weight(double scale, double divisor) {
  return divisor > 0.0 ? scale / divisor : 0.0;
}

/// A row's weight from the call's (aggregation_call_weight): 0 for a row without valid tokens
/// (n_i <= 0), call_weight / n_i for seq_mean_token_mean, call_weight otherwise.
POLO_HD_INLINE double aggregation_row_weight(aggregation agg, double call_weight, index_t n_i) {
  if (n_i <= 0) return 0.0;
  return agg == aggregation::seq_mean_token_mean ? call_weight / double(n_i) : call_weight;
}

/// Weight w_i of every valid token of a sequence with n_i valid tokens in the loss
/// (loss = Σ_it w_i·L·m): scale / D, divided by n_i for seq_mean_token_mean; 0 when D (or n_i)
/// is 0, so an empty batch has loss 0 and gradient 0. The composition of
/// aggregation_call_weight and aggregation_row_weight (the same operations in the same order,
/// so a backend that forms the call's part once gets the same bits).
POLO_HD_INLINE double aggregation_weight(aggregation agg, double scale, double divisor, index_t n_i) {
  return aggregation_row_weight(agg, aggregation_call_weight(scale, divisor), n_i);
}

}  // namespace detail
}  // namespace polo
