// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
// CUDA benchmarks of group-normalized advantages and broadcast_to_tokens at PERFORMANCE.md's
// sizes, each against the device copy kernel moving the same bytes in this binary (x_copy).
//
// - BM_GroupAdvantagesTokens_cuda: the combined entry (statistics, one read-back of the
//   group_stats it returns, then the [B,T] broadcast); contiguous groups of 16.
// - BM_GroupAdvantagesTokensLabelled_cuda: the same with shuffled int64 labels (adds the sort).
// - BM_BroadcastDeferred_cuda: broadcast_to_tokens alone with deferred errors (no host
//   synchronization at all): the part that moves the bytes.
// Scratch comes from a caller workspace sized by the *_workspace_bytes queries. For the
// combined entry the third argument picks the mode: 1 asynchronous (be.result +
// deferred_errors: no host synchronization, the number that goes against the floor), 0
// synchronous (one read-back: at these B the statistics and the broadcast's check come from one
// kernel).
#include <cstdint>
#include <vector>

#include <polo/advantages.cuh>  // only the primitive measured (builds without the others)

#include "support/bench_support.hpp"
#include "support/cuda_timer.cuh"

namespace {

namespace cb = polo::bench::cuda;

// As bench/advantages_bench.cpp: the [B,T] fp32 advantages out, the uint8 mask in, and the
// per-sequence score in and advantage out.
double advantage_bytes(std::int64_t B, std::int64_t T) {
  return double(B) * double(T) * (sizeof(float) + sizeof(std::uint8_t)) + double(B) * 2 * sizeof(float);
}

struct fixture {
  std::int64_t B, T;
  cudaStream_t stream{};
  cb::device_buffer<float> scores, adv, tok;
  cb::device_buffer<std::uint8_t> mask;
  cb::device_buffer<std::int64_t> labels;
  fixture(std::int64_t b, std::int64_t t)
      : B(b),
        T(t),
        scores(polo::bench::normal_values<float>(static_cast<std::size_t>(b), 1)),
        adv(static_cast<std::size_t>(b)),
        tok(static_cast<std::size_t>(b * t)),
        mask(polo::bench::right_padded_mask(b, t)),
        labels(make_labels(b)) {
    POLO_BENCH_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  }
  ~fixture() { (void)cudaStreamDestroy(stream); }
  static std::vector<std::int64_t> make_labels(std::int64_t B) {
    std::vector<std::int64_t> l(static_cast<std::size_t>(B));
    for (std::int64_t i = 0; i < B; ++i) l[i] = (i * 7919) % (B / 16);  // shuffled groups of 16
    return l;
  }
  polo::padded<std::uint8_t, polo::device_space> layout() const {
    return polo::padded<std::uint8_t, polo::device_space>(polo::device_view_of<const std::uint8_t>(mask.data(), B, T, T));
  }
};

void BM_GroupAdvantagesTokens_cuda(benchmark::State& st) {
  fixture f(st.range(0), st.range(1));
  const auto lay = f.layout();
  const polo::contiguous_groups groups{16};
  polo::cuda probe{};
  cb::device_buffer<unsigned char> ws(polo::group_advantages_workspace_bytes(probe, f.B, groups, lay));
  polo::cuda be{.stream = f.stream, .workspace = ws.data(), .workspace_bytes = ws.size()};
  cb::result_mode<polo::group_stats> mode(st, be, st.range(2) != 0);
  cb::time_loop(st, f.stream, [&] {
    polo::group_advantages(be, polo::device_view_of<const float>(f.scores.data(), f.B), groups, lay,
                           polo::device_view_of(f.adv.data(), f.B), polo::device_view_of(f.tok.data(), f.B, f.T, f.T));
  });
  polo::cuda_check(be);
  cb::report(st, advantage_bytes(f.B, f.T));
}

void BM_GroupAdvantagesTokensLabelled_cuda(benchmark::State& st) {
  fixture f(st.range(0), st.range(1));
  const auto lay = f.layout();
  const auto groups = polo::groups_by_label(polo::device_view_of<const std::int64_t>(f.labels.data(), f.B));
  polo::cuda probe{};
  cb::device_buffer<unsigned char> ws(polo::group_advantages_workspace_bytes(probe, f.B, groups, lay));
  polo::cuda be{.stream = f.stream, .workspace = ws.data(), .workspace_bytes = ws.size()};
  cb::result_mode<polo::group_stats> mode(st, be, st.range(2) != 0);
  cb::time_loop(st, f.stream, [&] {
    polo::group_advantages(be, polo::device_view_of<const float>(f.scores.data(), f.B), groups, lay,
                           polo::device_view_of(f.adv.data(), f.B), polo::device_view_of(f.tok.data(), f.B, f.T, f.T));
  });
  polo::cuda_check(be);
  cb::report(st, advantage_bytes(f.B, f.T) + double(f.B) * sizeof(std::int64_t));
}

void BM_BroadcastDeferred_cuda(benchmark::State& st) {
  fixture f(st.range(0), st.range(1));
  const auto lay = f.layout();
  cb::device_buffer<polo::cuda::status> status(1);
  POLO_BENCH_CUDA(cudaMemset(status.data(), 0, sizeof(polo::cuda::status)));
  polo::cuda probe{};
  cb::device_buffer<unsigned char> ws(polo::broadcast_to_tokens_workspace_bytes(probe, lay));
  polo::cuda be{.stream = f.stream, .workspace = ws.data(), .workspace_bytes = ws.size(), .deferred_errors = status.data()};
  cb::time_loop(st, f.stream, [&] {
    polo::broadcast_to_tokens(be, polo::device_view_of<const float>(f.adv.data(), f.B), lay,
                              polo::device_view_of(f.tok.data(), f.B, f.T, f.T));
  });
  polo::cuda_check(be);
  // Bytes: the [B,T] output and mask, the [B] values.
  cb::report(st, double(f.B) * double(f.T) * (sizeof(float) + 1) + double(f.B) * sizeof(float));
}

void BM_CopyFloor_advantage_bytes(benchmark::State& st) {
  cb::copy_benchmark(st, advantage_bytes(st.range(0), st.range(1)));
}

}  // namespace

BENCHMARK(BM_CopyFloor_advantage_bytes)->Args({512, 4096})->Args({1024, 8192})->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_GroupAdvantagesTokens_cuda)->Apply(cb::headline_sizes_both_modes)->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_GroupAdvantagesTokensLabelled_cuda)->Apply(cb::headline_sizes_both_modes)->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_BroadcastDeferred_cuda)->Args({512, 4096})->Args({1024, 8192})->UseManualTime()->Unit(benchmark::kMicrosecond);
