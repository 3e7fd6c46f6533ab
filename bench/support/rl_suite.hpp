// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
#pragma once
// The RL benchmark suite written once for both backends: the sizes, the inputs' generator, the
// bytes each primitive must move, and the calls themselves (every primitive of the sweep, one
// GRPO step, one PPO step), as templates over the backend and the batch. Plain C++20 (usable
// from .cpp and .cu files); the batches live in bench/support/rl_batch.hpp (host, polo::cpu)
// and bench/support/rl_batch.cuh (device, polo::cuda):
//
//   bench/sweep_bench.cpp, sweep_bench.cu   every primitive over the sweeps below
//   bench/step_bench.cpp,  step_bench.cu    one GRPO step against one PPO step
//
// A batch provides: B, T, its tensors (mask, scores, adv_seq, adv_out [B]; tok_adv, logp,
// logp_old, logp_ref, grad, rewards, shaped, values, values_new, returns, advantages,
// gae_returns, out [B,T]), layout(), v(x)/c(x) (mutable/const [B,T] views), s(x)/sc(x)
// ([B] views), none() (a null const [B,T] view), and three backend hooks:
//   stats<S>(be)       the backend an entry returning S should run on: `be` itself, or on CUDA
//                      `be` with `result` pointing at the batch's device slot for S when the
//                      entry can return S asynchronously (docs/cuda.md)
//   critic_pass(be)    the modelled critic pass (docs/benchmarks.md): values -> values_new
//   finish(be)         where a trainer surfaces deferred errors (polo::cuda_check on CUDA)
//
// Options are those of bench/torch_baseline.py (docs/benchmarks.md, "The computations").

#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <polo/advantages.hpp>
#include <polo/gae.hpp>
#include <polo/kl.hpp>
#include <polo/policy_loss.hpp>
#include <polo/value_loss.hpp>
#include <polo/whiten.hpp>

#if defined(__CUDACC__)
#define POLO_BENCH_HD __host__ __device__ inline
#else
#define POLO_BENCH_HD inline
#endif

namespace polo::bench::rl {

// ---- sizes --------------------------------------------------------------------------------

inline constexpr std::int64_t group_size = 16;       ///< answers per prompt
inline constexpr std::int64_t tokens_sweep_T = 4096;  ///< the token sweep's sequence length
inline constexpr int seqlen_sweep_log2_tokens = 22;   ///< the sequence-length sweep's token count

struct size_point {
  std::int64_t B, T;
  const char* sweep;  ///< "headline", "tokens" or "seqlen": the third part of a benchmark's name
};

/// PERFORMANCE.md's sizes: 512 x 4096 and 1024 x 8192.
inline std::vector<size_point> headline_points() { return {{512, 4096, "headline"}, {1024, 8192, "headline"}}; }

/// headline_points(); tokens: T = 4096, 2^16 .. 2^max_log2_tokens tokens; seqlen: 2^22 tokens,
/// T = 2^8 .. 2^16 (B = 16384 .. 64).
inline std::vector<size_point> sweep_points(int max_log2_tokens) {
  std::vector<size_point> p = headline_points();
  for (int k = 16; k <= max_log2_tokens; ++k) p.push_back({(std::int64_t(1) << k) / tokens_sweep_T, tokens_sweep_T, "tokens"});
  for (int k : {8, 10, 12, 14, 16})
    p.push_back({(std::int64_t(1) << seqlen_sweep_log2_tokens) >> k, std::int64_t(1) << k, "seqlen"});
  return p;
}

// ---- bytes ----------------------------------------------------------------------------------

/// Bytes each primitive must move per token (fp32 tensors, uint8 mask) and per sequence: every
/// input read once, every output written once (bench/torch_baseline.py's BYTES_PER_TOKEN).
/// Steps: the sum of their calls' floors (for PPO with the modelled critic pass: one read and
/// one write of a [B,T] fp32 tensor).
inline double bytes_per_token(std::string_view prim) {
  if (prim == "group_advantages") return 4 + 1;
  if (prim == "policy_loss") return 4 * 4 + 1 + 4;
  if (prim == "policy_loss_nokl") return 3 * 4 + 1 + 4;
  if (prim == "gae") return 2 * 4 + 1 + 2 * 4;
  if (prim == "whiten") return 4 + 1 + 4;
  if (prim == "value_loss") return 3 * 4 + 1 + 4;
  if (prim == "kl_rewards") return 3 * 4 + 1 + 4;
  if (prim == "critic_pass") return 4 + 4;
  if (prim == "grpo_step") return bytes_per_token("group_advantages") + bytes_per_token("policy_loss");
  if (prim == "ppo_step")
    return bytes_per_token("kl_rewards") + bytes_per_token("gae") + bytes_per_token("whiten") +
           bytes_per_token("policy_loss_nokl") + bytes_per_token("value_loss") + bytes_per_token("critic_pass");
  return 0;
}
inline double bytes_per_seq(std::string_view prim) {
  return (prim == "group_advantages" || prim == "grpo_step") ? 8.0 : 0.0;
}
inline double floor_bytes(std::string_view prim, std::int64_t B, std::int64_t T) {
  return bytes_per_token(prim) * double(B) * double(T) + bytes_per_seq(prim) * double(B);
}

/// Bytes of the tensors a step holds (its memory without polo's scratch). GRPO: scores and
/// advantages [B]; mask, token advantages, logp, logp_old, logp_ref, gradient [B,T]. PPO: mask;
/// rewards, logp_old, logp_ref, shaped rewards, values, advantages (whitened in place), returns,
/// logp, gradient, new values (dL/dvalues in place) [B,T].
inline double step_tensor_bytes(std::string_view step, std::int64_t B, std::int64_t T) {
  const double bt = double(B) * double(T);
  return step == "grpo_step" ? 2.0 * 4 * double(B) + bt * (1 + 5 * 4) : bt * (1 + 10 * 4);
}

// ---- inputs ---------------------------------------------------------------------------------
// A counter-based generator, so that a 2^24-token batch is generated in milliseconds on the
// device, quickly on the host, and the same seed gives the same batch on both backends.

POLO_BENCH_HD std::uint64_t splitmix64(std::uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

/// A standard normal value for (seed, i): Box-Muller over two hashed uniforms.
POLO_BENCH_HD float hashed_normal(std::uint64_t seed, std::uint64_t i) {
  const std::uint64_t h = splitmix64(seed * 0x100000001B3ull ^ splitmix64(i));
  const double u1 = (double((h >> 11) & ((1ull << 26) - 1)) + 0.5) / double(1ull << 26);
  const double u2 = double(h >> 38) / double(1ull << 26);
  return float(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

/// Element i of a generated tensor: (base ? base : mean) + sd * N(0,1), or with `neg_abs`
/// -|N(0,1)| - 0.05 (the old log-probs).
POLO_BENCH_HD float normal_value(std::uint64_t seed, std::uint64_t i, float mean, float sd, const float* base,
                                 bool neg_abs) {
  const float z = hashed_normal(seed, i);
  return neg_abs ? -fabsf(z) - 0.05f : (base ? base[i] : mean) + sd * z;
}

/// Valid length of row i of the right-padded mask: floor(u_i * T), u_i uniform in [0.8, 1]
/// (about 10% of the tokens masked, as PERFORMANCE.md's baselines).
POLO_BENCH_HD std::int64_t row_length(std::uint64_t seed, std::int64_t i, std::int64_t T) {
  const double u = 0.8 + 0.2 * double(splitmix64(seed ^ splitmix64(std::uint64_t(i))) >> 11) / double(1ull << 53);
  return std::int64_t(u * double(T));
}

/// How a batch's tensors are generated (the same on both backends; bench/torch_baseline.py
/// draws the same distributions with its own generator):
///   mask        right-padded, row_length()          scores, adv_seq  N(0,1) per sequence
///   tok_adv     adv_seq broadcast onto valid tokens logp_old          -|N(0,1)| - 0.05
///   logp, logp_ref  logp_old + N(0, 0.1^2)          rewards, values  N(0,1)
///   values_new  values + N(0, 0.3^2)                returns          values + N(0,1)
/// Outputs (grad, advantages, ...) are left unwritten: every call timed writes all of them.
struct tensor_seeds {
  static constexpr std::uint64_t scores = 1, adv_seq = 2, logp_old = 3, logp = 4, logp_ref = 5, rewards = 6,
                                 values = 7, values_new = 8, returns = 9;
};

/// The batch of the size being benchmarked: benchmarks are registered size by size, so only
/// one batch of a binary is alive at a time.
template <class Batch>
Batch& batch_for(std::int64_t B, std::int64_t T) {
  static std::unique_ptr<Batch> current;
  if (!current || current->B != B || current->T != T) {
    current.reset();
    current = std::make_unique<Batch>(B, T);
  }
  return *current;
}

// ---- options --------------------------------------------------------------------------------

/// The policy loss of the GRPO step and of the sweep: verl's GRPO preset (dual clip 3, k3 KL
/// `low_var_kl` x 0.001 with clamps 20/10, token-mean) with clip-higher 0.2/0.28 (DAPO).
inline polo::policy_loss_config grpo_loss_config() {
  polo::policy_loss_config c = polo::presets::verl::grpo_loss;
  c.eps_high = 0.28;
  return c;
}
/// The PPO step's policy loss: the same objective without the KL term (verl's PPO preset with
/// clip-higher): PPO puts the KL into the reward.
inline polo::policy_loss_config ppo_loss_config() {
  polo::policy_loss_config c = polo::presets::verl::ppo_loss;
  c.eps_high = 0.28;
  return c;
}
inline constexpr polo::gae_config gae_options{.gamma = 1.0, .lambda = 0.95};  ///< masked positions skipped (verl)
inline constexpr double kl_reward_beta = 0.001;  ///< verl apply_kl_penalty, k1 (presets::verl::kl_k1)

// ---- the calls --------------------------------------------------------------------------------
// Each returns a value that must be finite (a loss, a count, a mean) so that a broken call is
// reported rather than timed. Asynchronous statistics (d.stats<S>) return zeros: those checks
// are made on the first, synchronous call (see check_call in the batches' headers).

template <class Be, class Batch>
double call_group_advantages(const Be& be, Batch& d) {
  const polo::group_stats s = polo::group_advantages(d.template stats<polo::group_stats>(be), d.sc(d.scores),
                                                     polo::contiguous_groups{group_size}, d.layout(), d.s(d.adv_out),
                                                     d.v(d.out));
  return double(s.groups);
}
template <class Be, class Batch>
double call_policy_loss(const Be& be, Batch& d) {
  static const polo::policy_loss_config cfg = grpo_loss_config();
  return polo::policy_loss(d.template stats<polo::policy_loss_result>(be), d.layout(), d.c(d.logp), d.c(d.logp_old),
                           d.c(d.logp_ref), d.c(d.tok_adv), d.v(d.grad), cfg)
      .loss;
}
template <class Be, class Batch>
double call_gae(const Be& be, Batch& d) {
  return double(polo::gae(d.template stats<polo::gae_stats>(be), d.layout(), d.c(d.rewards), d.c(d.values),
                          d.v(d.advantages), d.v(d.gae_returns), gae_options)
                    .tokens);
}
template <class Be, class Batch>
double call_whiten(const Be& be, Batch& d) {
  return polo::whiten(d.template stats<polo::whiten_stats>(be), d.layout(), d.c(d.rewards), d.v(d.out),
                      polo::presets::verl::whitening)
      .mean;
}
template <class Be, class Batch>
double call_value_loss(const Be& be, Batch& d) {
  return polo::value_loss(d.template stats<polo::value_loss_stats>(be), d.layout(), d.c(d.values_new), d.c(d.values),
                          d.c(d.returns), d.v(d.grad), polo::presets::verl::critic)
      .loss;
}
template <class Be, class Batch>
double call_kl_rewards(const Be& be, Batch& d) {
  return polo::kl_penalized_rewards(d.template stats<polo::kl_reward_stats>(be), d.layout(), d.c(d.rewards),
                                    d.c(d.logp_old), d.c(d.logp_ref), d.v(d.shaped), kl_reward_beta,
                                    polo::presets::verl::kl_k1)
      .kl.mean();
}

/// The primitives of the sweep, by the names bench/torch_baseline.py and bench/plot.py use.
template <class Be, class Batch>
std::vector<std::pair<std::string, double (*)(const Be&, Batch&)>> sweep_primitives() {
  return {{"group_advantages", &call_group_advantages<Be, Batch>}, {"policy_loss", &call_policy_loss<Be, Batch>},
          {"gae", &call_gae<Be, Batch>},
          {"whiten", &call_whiten<Be, Batch>},
          {"value_loss", &call_value_loss<Be, Batch>},
          {"kl_rewards", &call_kl_rewards<Be, Batch>}};
}

/// One GRPO step's RL math: group_advantages (contiguous groups of 16) -> per-token advantages,
/// then policy_loss with its KL term (loss, dL/dlogp, statistics); deferred errors surfaced at
/// the end, where the step synchronizes anyway.
template <class Be, class Batch>
double grpo_step(const Be& be, Batch& d) {
  static const polo::policy_loss_config cfg = grpo_loss_config();
  const auto lay = d.layout();
  polo::group_advantages(d.template stats<polo::group_stats>(be), d.sc(d.scores), polo::contiguous_groups{group_size},
                         lay, d.s(d.adv_out), d.v(d.out));
  const auto r = polo::policy_loss(d.template stats<polo::policy_loss_result>(be), lay, d.c(d.logp), d.c(d.logp_old),
                                   d.c(d.logp_ref), d.c(d.out), d.v(d.grad), cfg);
  d.finish(be);
  return r.loss;
}

/// One PPO step's RL math: kl_penalized_rewards (k1, 0.001), gae (gamma 1, lambda 0.95),
/// whiten (verl, in place over the advantages), policy_loss without a KL term, the modelled
/// critic pass (values -> values_new), value_loss (verl critic, dL/dvalues over values_new).
template <class Be, class Batch>
double ppo_step(const Be& be, Batch& d) {
  static const polo::policy_loss_config cfg = ppo_loss_config();
  const auto lay = d.layout();
  polo::kl_penalized_rewards(d.template stats<polo::kl_reward_stats>(be), lay, d.c(d.rewards), d.c(d.logp_old),
                             d.c(d.logp_ref), d.v(d.shaped), kl_reward_beta, polo::presets::verl::kl_k1);
  polo::gae(d.template stats<polo::gae_stats>(be), lay, d.c(d.shaped), d.c(d.values), d.v(d.advantages),
            d.v(d.gae_returns), gae_options);
  polo::whiten(d.template stats<polo::whiten_stats>(be), lay, d.c(d.advantages), d.v(d.advantages),
               polo::presets::verl::whitening);
  const auto r = polo::policy_loss(d.template stats<polo::policy_loss_result>(be), lay, d.c(d.logp), d.c(d.logp_old),
                                   d.none(), d.c(d.advantages), d.v(d.grad), cfg);
  d.critic_pass(be);
  const auto v = polo::value_loss(d.template stats<polo::value_loss_stats>(be), lay, d.c(d.values_new), d.c(d.values),
                                  d.c(d.gae_returns), d.v(d.values_new), polo::presets::verl::critic);
  d.finish(be);
  return r.loss + v.loss;
}

/// The counters every record of the suite carries (bench/plot.py reads B, T, median_us).
template <class State>
void size_counters(State& st, std::string_view name, std::int64_t B, std::int64_t T, double median_s) {
  st.counters["B"] = double(B);
  st.counters["T"] = double(T);
  st.counters["floor_bytes"] = floor_bytes(name, B, T);
  st.counters["ns_per_token"] = median_s * 1e9 / double(B * T);
}

}  // namespace polo::bench::rl
