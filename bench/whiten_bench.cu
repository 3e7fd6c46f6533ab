// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
// CUDA benchmark of masked whitening at PERFORMANCE.md's sizes, against the device copy kernel
// moving the same bytes in this binary (x_copy). whiten reads x and the mask twice (statistics,
// then the write) and writes out once; bytes are counted as the minimum, each input read once
// and the output written once, so x_copy includes the cost of the second read. Scratch comes
// from a caller workspace (whiten_workspace_bytes). The third argument picks the mode: 1 the
// asynchronous one (be.result + deferred_errors: no host synchronization, the number that
// goes against the floor), 0 the synchronous one (one read-back of the statistics).
#include <cstdint>
#include <vector>

#include <polo/whiten.cuh>  // only the primitive measured

#include "support/bench_support.hpp"
#include "support/cuda_timer.cuh"

namespace {

namespace cb = polo::bench::cuda;

double whiten_bytes(std::int64_t B, std::int64_t T) { return double(B) * double(T) * (2 * sizeof(float) + 1); }

void BM_Whiten_cuda(benchmark::State& st) {
  const std::int64_t B = st.range(0), T = st.range(1);
  cb::device_buffer<float> x(polo::bench::normal_values<float>(static_cast<std::size_t>(B * T), 3)),
      out(static_cast<std::size_t>(B * T));
  cb::device_buffer<std::uint8_t> mask(polo::bench::right_padded_mask(B, T));
  cudaStream_t stream{};
  POLO_BENCH_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  const polo::padded<std::uint8_t, polo::device_space> lay(polo::device_view_of<const std::uint8_t>(mask.data(), B, T, T));
  cb::device_buffer<unsigned char> ws(polo::whiten_workspace_bytes(polo::cuda{}, lay));
  polo::cuda be{.stream = stream, .workspace = ws.data(), .workspace_bytes = ws.size()};
  cb::result_mode<polo::whiten_stats> mode(st, be, st.range(2) != 0);
  cb::time_loop(st, stream, [&] {
    polo::whiten(be, lay, polo::device_view_of<const float>(x.data(), B, T, T), polo::device_view_of(out.data(), B, T, T),
                 polo::presets::verl::whitening_masked);
  });
  polo::cuda_check(be);
  cb::report(st, whiten_bytes(B, T));
  (void)cudaStreamDestroy(stream);
}

// masked_moments alone: the statistics pass of whiten (x and the mask read once, nothing
// written but the statistics), to split whiten's time into its two passes.
double moments_bytes(std::int64_t B, std::int64_t T) { return double(B) * double(T) * (sizeof(float) + 1); }

void BM_MaskedMoments_cuda(benchmark::State& st) {
  const std::int64_t B = st.range(0), T = st.range(1);
  cb::device_buffer<float> x(polo::bench::normal_values<float>(static_cast<std::size_t>(B * T), 3));
  cb::device_buffer<std::uint8_t> mask(polo::bench::right_padded_mask(B, T));
  cudaStream_t stream{};
  POLO_BENCH_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  const polo::padded<std::uint8_t, polo::device_space> lay(polo::device_view_of<const std::uint8_t>(mask.data(), B, T, T));
  cb::device_buffer<unsigned char> ws(polo::whiten_workspace_bytes(polo::cuda{}, lay));
  polo::cuda be{.stream = stream, .workspace = ws.data(), .workspace_bytes = ws.size()};
  cb::result_mode<polo::moments> mode(st, be, st.range(2) != 0);
  cb::time_loop(st, stream, [&] {
    benchmark::DoNotOptimize(polo::masked_moments(be, lay, polo::device_view_of<const float>(x.data(), B, T, T)));
  });
  polo::cuda_check(be);
  cb::report(st, moments_bytes(B, T));
  (void)cudaStreamDestroy(stream);
}

void BM_CopyFloor_moments_bytes(benchmark::State& st) { cb::copy_benchmark(st, moments_bytes(st.range(0), st.range(1))); }

void BM_CopyFloor_whiten_bytes(benchmark::State& st) { cb::copy_benchmark(st, whiten_bytes(st.range(0), st.range(1))); }

}  // namespace

BENCHMARK(BM_CopyFloor_whiten_bytes)->Args({512, 4096})->Args({1024, 8192})->UseManualTime()->Unit(benchmark::kMicrosecond);
// 2^23 tokens at row lengths 2^8 .. 2^15 (many short rows to few long ones), asynchronous
BENCHMARK(BM_Whiten_cuda)
    ->Name("BM_WhitenSeqlen_cuda")
    ->Apply([](benchmark::internal::Benchmark* b) { cb::seqlen_shapes(b, 8, 15); })
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_Whiten_cuda)->Apply(cb::headline_sizes_both_modes)->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_CopyFloor_moments_bytes)->Args({512, 4096})->Args({1024, 8192})->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_MaskedMoments_cuda)->Apply(cb::headline_sizes_both_modes)->UseManualTime()->Unit(benchmark::kMicrosecond);
