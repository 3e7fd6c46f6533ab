// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
#pragma once
// One RL batch on the device for bench/sweep_bench.cu and bench/step_bench.cu: every per-token
// tensor the GRPO and PPO primitives read or write, for B sequences of T tokens, generated on
// the device (a counter-based hash, so a 2^24-token batch takes milliseconds, and the same
// seed gives the same batch), with the inputs of bench/torch_baseline.py's distributions:
//
//   mask        right-padded, each row's length uniform in [0.8 T, T] (about 10% masked)
//   scores      N(0,1) per sequence;   adv_seq N(0,1) per sequence, tok_adv its broadcast
//   logp_old    -|N(0,1)| - 0.05;      logp, logp_ref = logp_old + N(0, 0.1^2)
//   rewards, values  N(0,1);           values_new = values + N(0, 0.3^2);  returns = values + N(0,1)
//
// Outputs (grad, advantages, ...) are allocated but left unwritten: every primitive timed
// writes all of its output elements. Bytes each primitive must move (the memory floor's
// numerator) are in `floor_bytes`, the same table as bench/torch_baseline.py's BYTES_PER_TOKEN.

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <string>

#include <polo/core/layout.hpp>
#include <polo/core/view.hpp>

#include "support/cuda_timer.cuh"

namespace polo::bench::rl {

namespace cb = polo::bench::cuda;

__device__ inline std::uint64_t splitmix64(std::uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

/// A standard normal value for (seed, i): Box-Muller over two hashed uniforms.
__device__ inline float hashed_normal(std::uint64_t seed, std::uint64_t i) {
  const std::uint64_t h = splitmix64(seed * 0x100000001B3ull ^ splitmix64(i));
  const double u1 = (double((h >> 11) & ((1ull << 26) - 1)) + 0.5) / double(1ull << 26);
  const double u2 = double(h >> 38) / double(1ull << 26);
  return float(sqrt(-2.0 * log(u1)) * cospi(2.0 * u2));
}

/// out[i] = (base ? base[i] : mean) + sd * N(0,1); with `neg_abs`, out[i] = -|N(0,1)| - 0.05.
__global__ void fill_normal_kernel(float* out, const float* base, std::int64_t n, std::uint64_t seed, float mean,
                                   float sd, bool neg_abs) {
  for (std::int64_t i = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += std::int64_t(gridDim.x) * blockDim.x) {
    const float z = hashed_normal(seed, std::uint64_t(i));
    out[i] = neg_abs ? -fabsf(z) - 0.05f : (base ? base[i] : mean) + sd * z;
  }
}

/// Right-padded mask: row i valid for t < len_i, len_i = floor(u_i * T), u_i uniform in [0.8, 1].
__global__ void fill_mask_kernel(std::uint8_t* mask, std::int64_t B, std::int64_t T, std::uint64_t seed) {
  for (std::int64_t k = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x; k < B * T;
       k += std::int64_t(gridDim.x) * blockDim.x) {
    const std::int64_t i = k / T, t = k % T;
    const double u = 0.8 + 0.2 * double(splitmix64(seed ^ splitmix64(std::uint64_t(i))) >> 11) / double(1ull << 53);
    mask[k] = t < std::int64_t(u * double(T)) ? 1 : 0;
  }
}

/// tok[i,t] = mask[i,t] ? adv[i] : 0.
__global__ void broadcast_kernel(float* tok, const float* adv, const std::uint8_t* mask, std::int64_t B,
                                 std::int64_t T) {
  for (std::int64_t k = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x; k < B * T;
       k += std::int64_t(gridDim.x) * blockDim.x)
    tok[k] = mask[k] ? adv[k / T] : 0.0f;
}

inline unsigned fill_grid(std::int64_t n) {
  const std::int64_t g = (n + 255) / 256;
  return unsigned(g < 8192 ? (g > 0 ? g : 1) : 8192);
}

inline void fill_normal(float* out, std::int64_t n, std::uint64_t seed, float mean = 0.0f, float sd = 1.0f,
                        const float* base = nullptr, bool neg_abs = false) {
  fill_normal_kernel<<<fill_grid(n), 256>>>(out, base, n, seed, mean, sd, neg_abs);
  POLO_BENCH_CUDA(cudaGetLastError());
}

/// Bytes each primitive must move per token (fp32 tensors, uint8 mask) and per sequence: every
/// input read once, every output written once. Steps: the sum of their calls' floors (for
/// PPO, with the modelled critic pass: one read and one write of a [B,T] fp32 tensor).
inline double bytes_per_token(const std::string& prim) {
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
inline double bytes_per_seq(const std::string& prim) {
  return (prim == "group_advantages" || prim == "grpo_step") ? 8.0 : 0.0;
}
inline double floor_bytes(const std::string& prim, std::int64_t B, std::int64_t T) {
  return bytes_per_token(prim) * double(B) * double(T) + bytes_per_seq(prim) * double(B);
}

/// Every tensor of one batch, on the device.
struct batch {
  using layout_type = polo::padded<std::uint8_t, polo::device_space>;
  std::int64_t B, T;
  std::size_t n;
  cb::device_buffer<std::uint8_t> mask;
  cb::device_buffer<float> scores, adv_seq, adv_out;                // [B]
  cb::device_buffer<float> tok_adv, logp, logp_old, logp_ref, grad;  // [B,T]
  cb::device_buffer<float> rewards, shaped, values, values_new, returns, advantages, gae_returns, out;

  batch(std::int64_t b, std::int64_t t, std::uint64_t seed = 1)
      : B(b), T(t), n(std::size_t(b * t)), mask(n), scores(std::size_t(b)), adv_seq(std::size_t(b)),
        adv_out(std::size_t(b)), tok_adv(n), logp(n), logp_old(n), logp_ref(n), grad(n), rewards(n), shaped(n),
        values(n), values_new(n), returns(n), advantages(n), gae_returns(n), out(n) {
    const auto N = std::int64_t(n);
    fill_mask_kernel<<<fill_grid(N), 256>>>(mask.data(), B, T, seed);
    POLO_BENCH_CUDA(cudaGetLastError());
    fill_normal(scores.data(), B, seed + 1);
    fill_normal(adv_seq.data(), B, seed + 2);
    broadcast_kernel<<<fill_grid(N), 256>>>(tok_adv.data(), adv_seq.data(), mask.data(), B, T);
    POLO_BENCH_CUDA(cudaGetLastError());
    fill_normal(logp_old.data(), N, seed + 3, 0.0f, 1.0f, nullptr, true);
    fill_normal(logp.data(), N, seed + 4, 0.0f, 0.1f, logp_old.data());
    fill_normal(logp_ref.data(), N, seed + 5, 0.0f, 0.1f, logp_old.data());
    fill_normal(rewards.data(), N, seed + 6);
    fill_normal(values.data(), N, seed + 7);
    fill_normal(values_new.data(), N, seed + 8, 0.0f, 0.3f, values.data());
    fill_normal(returns.data(), N, seed + 9, 0.0f, 1.0f, values.data());
    POLO_BENCH_CUDA(cudaDeviceSynchronize());
  }

  [[nodiscard]] layout_type layout() const {
    return layout_type(polo::device_view_of<const std::uint8_t>(mask.data(), B, T, T));
  }
  /// `[B,T]` view of one of this batch's token tensors.
  [[nodiscard]] polo::view<float, 2, polo::device_space> v(const cb::device_buffer<float>& x) const {
    return polo::device_view_of(x.data(), B, T, T);
  }
  [[nodiscard]] polo::view<const float, 2, polo::device_space> c(const cb::device_buffer<float>& x) const {
    return polo::device_view_of<const float>(x.data(), B, T, T);
  }
  /// `[B]` view of a per-sequence tensor.
  [[nodiscard]] polo::view<float, 1, polo::device_space> s(const cb::device_buffer<float>& x) const {
    return polo::device_view_of(x.data(), B);
  }
};

}  // namespace polo::bench::rl
