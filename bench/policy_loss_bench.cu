// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
// CUDA benchmarks of the policy loss (cuda/polo/policy_loss.cuh): the configuration of
// ../shared/guide/PERFORMANCE.md's baseline -- clipped surrogate with clip-higher (0.2/0.28) and
// dual clip 3, k3 KL to a reference (coefficient 0.01), token-mean, forward and gradient, with
// loss and statistics -- at B x T = 512 x 4096 and 1024 x 8192 (float log-probs, uint8 mask,
// ~10% right padding), each with its ratio to a device copy of the same bytes measured in this
// binary (x_copy). Bytes counted per token (the floor): logp, logp_old, logp_ref, advantages
// and mask read once, the gradient written once = 21 bytes (bf16 log-probs: 15).
// torch.compile on the same H100 (PERFORMANCE.md): 789 us at 512 x 4096, 469 us at 1024 x 8192;
// `x_faster_than_torch_compile` divides those by this binary's median. The third argument picks
// the mode: 1 the asynchronous one (be.result + deferred_errors: the result is published to
// device memory, no host synchronization), 0 the synchronous one (one read-back of the result
// per call).
#include <cuda_bf16.h>

#include <cstdint>
#include <vector>

#include <polo/polo.cuh>

#include "support/bench_support.hpp"
#include "support/cuda_timer.cuh"

namespace {

namespace cb = polo::bench::cuda;

/// torch.compile's time for the clipped objective + k3 KL as ../shared/guide/PERFORMANCE.md
/// quotes it (its H100, not this run): the `x_faster_than_torch_compile` counter divides by it.
/// torch.compile's own time moves between machines of one model (469 to 938 us at 1024 x 8192
/// in our runs), so the ratios README quotes come from bench/torch_baseline.py timed in the
/// same call (bench/results/nvidia-h100-80gb-hbm3/kernel_breakdown.md).
double torch_compile_seconds(std::int64_t B, std::int64_t T) {
  if (B == 512 && T == 4096) return 789e-6;
  if (B == 1024 && T == 8192) return 469e-6;
  return 0.0;
}

std::vector<float> logprobs(std::size_t n, std::uint64_t seed, const std::vector<float>* base) {
  std::vector<float> x = polo::bench::normal_values<float>(n, seed, 0.0, base ? 0.05 : 1.0);
  for (std::size_t i = 0; i < n; ++i) x[i] = base ? (*base)[i] + x[i] : -1.0f - (x[i] < 0 ? -x[i] : x[i]);
  return x;
}

template <class LP>
std::vector<LP> as(const std::vector<float>& x) {
  std::vector<LP> y(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) y[i] = LP(x[i]);
  return y;
}

template <class LP>
struct fixture {
  std::int64_t B, T;
  cudaStream_t stream{};
  std::vector<float> h_lp;
  cb::device_buffer<LP> lp, lo, lr;
  cb::device_buffer<float> adv, grad;
  cb::device_buffer<std::uint8_t> mask;
  fixture(std::int64_t b, std::int64_t t)
      : B(b),
        T(t),
        h_lp(logprobs(std::size_t(b * t), 1, nullptr)),
        lp(as<LP>(h_lp)),
        lo(as<LP>(logprobs(std::size_t(b * t), 2, &h_lp))),
        lr(as<LP>(logprobs(std::size_t(b * t), 3, &h_lp))),
        adv(polo::bench::normal_values<float>(std::size_t(b * t), 4)),
        grad(std::size_t(b * t)),
        mask(polo::bench::right_padded_mask(b, t)) {
    POLO_BENCH_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  }
  ~fixture() { (void)cudaStreamDestroy(stream); }
  polo::padded<std::uint8_t, polo::device_space> layout() const {
    return polo::padded<std::uint8_t, polo::device_space>(polo::device_view_of<const std::uint8_t>(mask.data(), B, T, T));
  }
  template <class U>
  polo::view<const U, 2, polo::device_space> in(const cb::device_buffer<U>& x) const {
    return polo::device_view_of<const U>(x.data(), B, T, T);
  }
};

polo::policy_loss_config perf_config(polo::token_nonfinite_policy nf) {
  polo::policy_loss_config c;
  c.eps_high = 0.28;
  c.dual_clip = 3.0;
  c.kl_coef = 0.01;
  c.nonfinite = nf;
  return c;
}

template <class LP>
void run(benchmark::State& st, const polo::policy_loss_config& cfg) {
  fixture<LP> f(st.range(0), st.range(1));
  const auto lay = f.layout();
  polo::cuda probe{};
  cb::device_buffer<unsigned char> ws(polo::policy_loss_workspace_bytes<float>(probe, lay, cfg));
  polo::cuda be{.stream = f.stream, .workspace = ws.data(), .workspace_bytes = ws.size()};
  cb::result_mode<polo::policy_loss_result> mode(st, be, st.range(2) != 0);
  double loss = 0;
  cb::time_loop(st, f.stream, [&] {
    loss += polo::policy_loss(be, lay, f.in(f.lp), f.in(f.lo), f.in(f.lr), f.in(f.adv),
                              polo::device_view_of(f.grad.data(), f.B, f.T, f.T), cfg)
                .loss;
  });
  polo::cuda_check(be);
  benchmark::DoNotOptimize(loss);
  cb::report(st, double(f.B) * double(f.T) * (3.0 * sizeof(LP) + 4 + 1 + 4));
  const double tc = torch_compile_seconds(f.B, f.T);
  if (tc > 0) st.counters["x_faster_than_torch_compile"] = tc / (st.counters["median_us"].value * 1e-6);
}

void BM_PolicyLossKl_cuda(benchmark::State& st) { run<float>(st, perf_config(polo::token_nonfinite_policy::error)); }
void BM_PolicyLossKlSkip_cuda(benchmark::State& st) { run<float>(st, perf_config(polo::token_nonfinite_policy::skip)); }
void BM_PolicyLossKlBf16_cuda(benchmark::State& st) {
  run<__nv_bfloat16>(st, perf_config(polo::token_nonfinite_policy::skip));
}
void BM_PolicyLossGspo_cuda(benchmark::State& st) { run<float>(st, polo::presets::trl::gspo_loss); }

void BM_CopyFloor_policy_loss_bytes(benchmark::State& st) {
  cb::copy_benchmark(st, double(st.range(0)) * double(st.range(1)) * 21.0);
}

}  // namespace

BENCHMARK(BM_CopyFloor_policy_loss_bytes)->Args({512, 4096})->Args({1024, 8192})->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_PolicyLossKl_cuda)
    ->Apply(cb::headline_sizes_both_modes)
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_PolicyLossKlSkip_cuda)
    ->Apply(cb::headline_sizes_both_modes)
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_PolicyLossKlBf16_cuda)
    ->Apply(cb::headline_sizes_both_modes)
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_PolicyLossGspo_cuda)
    ->Apply(cb::headline_sizes_both_modes)
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);
