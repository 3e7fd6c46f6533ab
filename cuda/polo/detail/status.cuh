// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
#pragma once
/// \file
/// Data-dependent errors found on the device, and how they reach the host.
///
/// A check kernel describes the first error it finds as a `polo::cuda::status` (a code and the
/// offending index and values). The host turns a status into the very exception, with the very
/// message, that the CPU backend throws for the same input (`throw_status`). A status reaches
/// the host in one of two ways (docs/cuda.md, "How errors surface"):
/// - immediately: the entry point reads it back with one stream synchronization and throws
///   before launching any write (the default);
/// - deferred: with `polo::cuda::deferred_errors` set, the write kernel itself sees the error,
///   writes nothing and records it there; `polo::cuda_check(be)` throws it later.

#include <cuda_runtime.h>

#include <string>

#include "polo/core/backend.hpp"
#include "polo/core/error.hpp"
#include "polo/detail/launch.cuh"
#include "polo/detail/workspace.cuh"
#include "polo/whiten.hpp"

namespace polo::detail {

/// `polo::cuda::status::code` values.
enum status_code : int {
  status_ok = 0,
  status_nonfinite_value = 1,    ///< index: sequence; value: the non-finite value
  status_offsets_start = 2,      ///< a: offsets[0]
  status_offsets_decrease = 3,   ///< index: i + 1; a: offsets[i]; b: offsets[i + 1]
  status_offsets_end = 4,        ///< a: offsets[B]; b: N
  status_nonfinite_arg = 5,      ///< index: flat index; value: the value; a: argument (nonfinite_arg)
  status_singleton = 6,          ///< a: first member of the group; b: the group (ascending label order)
  status_degenerate = 7,         ///< a: valid tokens; b: 1 under std_kind::sample
  status_nonfinite_token = 8,    ///< index: flat index; value: the value; a: argument (token_nonfinite_arg)
};

/// `status_nonfinite_arg`'s argument names (status::a).
enum nonfinite_arg : int { arg_x = 0, arg_values = 1, arg_old_values = 2, arg_returns = 3, arg_scores = 4 };
/// The scans' arguments (gae, discounted_returns, remax_advantages); index: flat index for
/// rewards / values, the sequence for bootstrap / baselines.
enum scan_nonfinite_arg : int { arg_rewards = 16, arg_bootstrap = 17, arg_baselines = 18 };
/// kl_penalized_rewards' and policy_loss's per-token arguments (status_nonfinite_token; rewards
/// is arg_rewards).
enum token_nonfinite_arg : int { arg_logp = 24, arg_logp_old = 25, arg_logp_ref = 26, arg_advantages = 27 };

inline const char* nonfinite_arg_name(long long a) {
  switch (a) {
    case arg_x: return "x";
    case arg_values: return "values";
    case arg_old_values: return "old_values";
    case arg_returns: return "returns";
    case arg_scores: return "scores";
    case arg_rewards: return "rewards";
    case arg_bootstrap: return "bootstrap";
    case arg_baselines: return "baselines";
    case arg_logp: return "logp";
    case arg_logp_old: return "logp_old";
    case arg_logp_ref: return "logp_ref";
    case arg_advantages: return "advantages";
    default: return "unknown_argument";
  }
}

/// `polo::cuda::status::entry` values: the entry point that recorded the error.
enum status_entry : int {
  entry_none = 0,
  entry_broadcast_to_tokens = 1,
  entry_whiten = 2,
  entry_masked_moments = 3,
  entry_value_loss = 4,
  entry_group_advantages = 5,
  entry_gae = 16,
  entry_discounted_returns = 17,
  entry_remax_advantages = 18,
  entry_kl_penalized_rewards = 24,
  entry_policy_loss = 25,
};

inline const char* entry_name(int entry) {
  switch (entry) {
    case entry_broadcast_to_tokens: return "broadcast_to_tokens";
    case entry_whiten: return "whiten";
    case entry_masked_moments: return "masked_moments";
    case entry_value_loss: return "value_loss";
    case entry_group_advantages: return "group_advantages";
    case entry_gae: return "gae";
    case entry_discounted_returns: return "discounted_returns";
    case entry_remax_advantages: return "remax_advantages";
    case entry_kl_penalized_rewards: return "kl_penalized_rewards";
    case entry_policy_loss: return "policy_loss";
    default: return "unknown_entry";
  }
}

/// Throws the exception the CPU backend throws for the error `s` describes; returns if none.
inline void throw_status(const cuda::status& s) {
  const char* fn = entry_name(s.entry);
  switch (s.code) {
    case status_ok: return;
    case status_nonfinite_value:
      throw_nonfinite(fn, "values", s.index, s.value, "sequence " + std::to_string(s.index) + " has valid tokens");
    case status_offsets_start:
      throw_value(fn, "offsets", "starts at " + std::to_string(s.a) + "; expected offsets[0] = 0");
    case status_offsets_decrease:
      throw_value(fn, "offsets",
                  "decreases at index " + std::to_string(s.index) + " (" + std::to_string(s.a) + " -> " +
                      std::to_string(s.b) + "); expected non-decreasing offsets");
    case status_offsets_end:
      throw_value(fn, "offsets",
                  "ends at " + std::to_string(s.a) + "; expected offsets[B] = N = " + std::to_string(s.b));
    case status_nonfinite_arg:
      if (s.a == arg_bootstrap)
        throw_nonfinite(fn, "bootstrap", s.index, s.value, "sequence " + std::to_string(s.index) + " is flagged truncated");
      if (s.a == arg_baselines)
        throw_nonfinite(fn, "baselines", s.index, s.value, "sequence " + std::to_string(s.index) + " has valid tokens");
      throw_nonfinite(fn, nonfinite_arg_name(s.a), s.index, s.value,
                      s.a == arg_scores ? "set nonfinite_policy::zero_advantage to give unscorable sequences A = 0" : "");
    case status_singleton:
      throw_value(fn, "scores",
                  "has a group of one scoreable member (sequence " + std::to_string(s.a) + " of group " +
                      std::to_string(s.b) +
                      " counting groups in ascending label order); expected >= 2 per group under "
                      "singleton_rule::error (choose singleton_rule::zero or ::raw)");
    case status_nonfinite_token:
      throw_nonfinite(fn, nonfinite_arg_name(s.a), s.index, s.value,
                      s.entry == entry_policy_loss
                          ? "at a valid token; set token_nonfinite_policy::skip to leave such tokens out"
                          : "at a valid token");
    case status_degenerate: {
      moments m;
      m.count = static_cast<index_t>(s.a);
      whiten_config c;
      c.std = s.b != 0 ? std_kind::sample : std_kind::population;
      throw_degenerate(fn, m, c);
    }
    default:
      throw value_error("polo: unknown device status code " + std::to_string(s.code) + " from polo::" + fn);
  }
}

#if defined(__CUDACC__)
/// Records `s` in `*dst` unless an earlier error is already recorded there (first error wins).
/// Device code; one thread.
__device__ inline void record_status(cuda::status* dst, const cuda::status& s) {
  if (dst == nullptr || s.code == status_ok) return;
  if (atomicCAS(&dst->code, 0, s.code) == 0) {
    dst->entry = s.entry;
    dst->index = s.index;
    dst->a = s.a;
    dst->b = s.b;
    dst->value = s.value;
  }
}
#endif

}  // namespace polo::detail

namespace polo {

/// Surfaces an error recorded under `polo::cuda::deferred_errors`: waits for the tag's stream,
/// reads the status, clears it, and throws the exception the failing call would have thrown
/// without deferral (same type, same message). Does nothing when `be.deferred_errors` is null.
/// This is a synchronization point; call it where your training step synchronizes anyway
/// (before reading the loss, say).
inline void cuda_check(const cuda& be) {
  if (be.deferred_errors == nullptr) return;
  cuda::status s;
  detail::read_back(be, &s, be.deferred_errors, sizeof s);
  if (s.code != detail::status_ok)
    POLO_CUDA_TRY(cudaMemsetAsync(be.deferred_errors, 0, sizeof(cuda::status), detail::stream_of(be)));
  detail::throw_status(s);
}

}  // namespace polo
