// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
#pragma once
// One RL batch on the device for bench/sweep_bench.cu and bench/step_bench.cu (polo::cuda),
// the counterpart of bench/support/rl_batch.hpp: every per-token tensor the GRPO and PPO
// primitives read or write, for B sequences of T tokens, generated on the device by
// bench/support/rl_suite.hpp's counter-based generator (a 2^24-token batch takes milliseconds;
// the same seed gives the same batch as on the host), and `run_point`, which checks, times and
// reports one call of the suite on one batch.
//
// Asynchronous statistics: the timed calls run with `deferred_errors` set (a status in the
// batch) and `result` set to the batch's device slot for the entry's statistics (`stats<S>`),
// so no timed call synchronizes -- what a training step that does not want a host round trip
// per call runs; each step synchronizes once (its closing polo::cuda_check).
// The first call of every benchmark runs fully synchronously, so
// that a polo error or a non-finite result is reported instead of timed; after the timing,
// polo::cuda_check surfaces any error the asynchronous calls deferred.

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>

#include <polo/polo.cuh>

#include "support/cuda_timer.cuh"
#include "support/rl_suite.hpp"

namespace polo::bench::rl {

namespace cb = polo::bench::cuda;

/// out[i] = normal_value(seed, i, ...) (rl_suite.hpp).
__global__ void fill_normal_kernel(float* out, const float* base, std::int64_t n, std::uint64_t seed, float mean,
                                   float sd, bool neg_abs) {
  for (std::int64_t i = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += std::int64_t(gridDim.x) * blockDim.x)
    out[i] = normal_value(seed, std::uint64_t(i), mean, sd, base, neg_abs);
}

/// Right-padded mask: row i valid for t < row_length(seed, i, T).
__global__ void fill_mask_kernel(std::uint8_t* mask, std::int64_t B, std::int64_t T, std::uint64_t seed) {
  for (std::int64_t k = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x; k < B * T;
       k += std::int64_t(gridDim.x) * blockDim.x)
    mask[k] = k % T < row_length(seed, k / T, T) ? 1 : 0;
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

/// The stream every benchmark of the suite runs on.
inline cudaStream_t bench_stream() {
  static cudaStream_t s = [] {
    cudaStream_t x{};
    POLO_BENCH_CUDA(cudaStreamCreateWithFlags(&x, cudaStreamNonBlocking));
    return x;
  }();
  return s;
}

/// Every tensor of one batch, on the device, plus the status and the statistics slots of the
/// asynchronous calls (see rl_suite.hpp for the distributions and the interface).
struct device_batch {
  using layout_type = polo::padded<std::uint8_t, polo::device_space>;
  std::int64_t B, T;
  std::size_t n;
  cb::device_buffer<std::uint8_t> mask;
  cb::device_buffer<float> scores, adv_seq, adv_out;                // [B]
  cb::device_buffer<float> tok_adv, logp, logp_old, logp_ref, grad;  // [B,T]
  cb::device_buffer<float> rewards, shaped, values, values_new, returns, advantages, gae_returns, out;
  cb::device_buffer<polo::cuda::status> status{1};  ///< deferred errors of the timed calls
  cb::device_buffer<polo::group_stats> group_result{1};
  cb::device_buffer<polo::whiten_stats> whiten_result{1};
  cb::device_buffer<polo::value_loss_stats> value_loss_result{1};
  cb::device_buffer<polo::gae_stats> gae_result{1};
  cb::device_buffer<polo::kl_reward_stats> kl_result{1};
  cb::device_buffer<polo::policy_loss_result> pl_result{1};

  device_batch(std::int64_t b, std::int64_t t, std::uint64_t seed = 1)
      : B(b), T(t), n(std::size_t(b * t)), mask(n), scores(std::size_t(b)), adv_seq(std::size_t(b)),
        adv_out(std::size_t(b)), tok_adv(n), logp(n), logp_old(n), logp_ref(n), grad(n), rewards(n), shaped(n),
        values(n), values_new(n), returns(n), advantages(n), gae_returns(n), out(n) {
    using S = tensor_seeds;
    const auto N = std::int64_t(n);
    fill_mask_kernel<<<fill_grid(N), 256>>>(mask.data(), B, T, seed);
    POLO_BENCH_CUDA(cudaGetLastError());
    fill(scores, B, seed + S::scores);
    fill(adv_seq, B, seed + S::adv_seq);
    broadcast_kernel<<<fill_grid(N), 256>>>(tok_adv.data(), adv_seq.data(), mask.data(), B, T);
    POLO_BENCH_CUDA(cudaGetLastError());
    fill(logp_old, N, seed + S::logp_old, 0.0f, 1.0f, nullptr, true);
    fill(logp, N, seed + S::logp, 0.0f, 0.1f, logp_old.data());
    fill(logp_ref, N, seed + S::logp_ref, 0.0f, 0.1f, logp_old.data());
    fill(rewards, N, seed + S::rewards);
    fill(values, N, seed + S::values);
    fill(values_new, N, seed + S::values_new, 0.0f, 0.3f, values.data());
    fill(returns, N, seed + S::returns, 0.0f, 1.0f, values.data());
    POLO_BENCH_CUDA(cudaMemset(status.data(), 0, sizeof(polo::cuda::status)));
    POLO_BENCH_CUDA(cudaDeviceSynchronize());
  }

  [[nodiscard]] layout_type layout() const {
    return layout_type(polo::device_view_of<const std::uint8_t>(mask.data(), B, T, T));
  }
  [[nodiscard]] polo::view<float, 2, polo::device_space> v(const cb::device_buffer<float>& x) const {
    return polo::device_view_of(x.data(), B, T, T);
  }
  [[nodiscard]] polo::view<const float, 2, polo::device_space> c(const cb::device_buffer<float>& x) const {
    return polo::device_view_of<const float>(x.data(), B, T, T);
  }
  [[nodiscard]] polo::view<float, 1, polo::device_space> s(const cb::device_buffer<float>& x) const {
    return polo::device_view_of(x.data(), B);
  }
  [[nodiscard]] polo::view<const float, 1, polo::device_space> sc(const cb::device_buffer<float>& x) const {
    return polo::device_view_of<const float>(x.data(), B);
  }
  [[nodiscard]] static polo::view<const float, 2, polo::device_space> none() { return {}; }

  // Backend hooks of rl_suite.hpp.
  /// `be` with `result` set to this batch's slot for S, when `be` defers its errors and the
  /// entry returning S has an asynchronous mode; otherwise `be` unchanged.
  template <class S>
  [[nodiscard]] polo::cuda stats(const polo::cuda& be) const {
    polo::cuda w = be;
    if (be.deferred_errors == nullptr) return w;
    if constexpr (std::is_same_v<S, polo::group_stats>) w.result = group_result.data();
    if constexpr (std::is_same_v<S, polo::whiten_stats>) w.result = whiten_result.data();
    if constexpr (std::is_same_v<S, polo::value_loss_stats>) w.result = value_loss_result.data();
    if constexpr (std::is_same_v<S, polo::gae_stats>) w.result = gae_result.data();
    if constexpr (std::is_same_v<S, polo::kl_reward_stats>) w.result = kl_result.data();
    if constexpr (std::is_same_v<S, polo::policy_loss_result>) w.result = pl_result.data();
    return w;
  }
  /// The modelled critic pass: the new values the critic's forward produces, as one device
  /// copy values -> values_new (one read and one write of a [B,T] fp32 tensor).
  void critic_pass(const polo::cuda& be) const {
    POLO_BENCH_CUDA(cudaMemcpyAsync(values_new.data(), values.data(), n * sizeof(float), cudaMemcpyDeviceToDevice,
                                    be.stream));
  }
  /// Where a step surfaces its deferred errors (one synchronization, and a status read back).
  static void finish(const polo::cuda& be) { polo::cuda_check(be); }

 private:
  static void fill(const cb::device_buffer<float>& x, std::int64_t count, std::uint64_t seed, float mean = 0.0f,
                   float sd = 1.0f, const float* base = nullptr, bool neg_abs = false) {
    fill_normal_kernel<<<fill_grid(count), 256>>>(x.data(), base, count, seed, mean, sd, neg_abs);
    POLO_BENCH_CUDA(cudaGetLastError());
  }
};

using cuda_call = double (*)(const polo::cuda&, device_batch&);

/// One benchmark of the suite on CUDA, on `be` (its stream, scratch source): a synchronous
/// first call (no deferred errors: a polo error or a non-finite result skips the benchmark with
/// the message), then CUDA-event timing of the asynchronous calls (cb::time_loop: L2 flush,
/// median), polo::cuda_check of what they deferred, and the report against the copy kernel
/// (x_copy, bytes/s) with the size counters. Use with ->UseManualTime().
inline void run_point(benchmark::State& st, const std::string& name, cuda_call f, polo::cuda be) {
  const std::int64_t B = st.range(0), T = st.range(1);
  device_batch& d = batch_for<device_batch>(B, T);
  be.result = nullptr;
  be.deferred_errors = nullptr;
  double check = 0.0;
  try {
    check = f(be, d);
    POLO_BENCH_CUDA(cudaStreamSynchronize(be.stream));
  } catch (const polo::error& e) {
    st.SkipWithError(e.what());
    return;
  }
  if (!std::isfinite(check)) {
    st.SkipWithError((name + ": the call returned a non-finite result").c_str());
    return;
  }
  be.deferred_errors = d.status.data();
  cb::time_loop(st, be.stream, [&] { benchmark::DoNotOptimize(f(be, d)); });
  try {
    polo::cuda_check(be);
  } catch (const polo::error& e) {
    st.SkipWithError(e.what());
    return;
  }
  cb::report(st, floor_bytes(name, B, T));
  size_counters(st, name, B, T, st.counters["median_us"].value * 1e-6);
}

}  // namespace polo::bench::rl
