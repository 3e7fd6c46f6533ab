// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
// CUDA benchmark of the clipped value loss and its gradient at PERFORMANCE.md's sizes, against
// the device copy kernel moving the same bytes in this binary (x_copy). value_loss reads its
// three inputs and the mask twice (statistics and checks, then the gradient) and writes the
// gradient once; bytes are counted as the minimum (each input read once, the gradient written
// once), so x_copy includes the cost of the second read. Scratch comes from a caller
// workspace (value_loss_workspace_bytes). The third argument picks the mode: 1 the
// asynchronous one (be.result + deferred_errors: no host synchronization, the number that
// goes against the floor), 0 the synchronous one (one read-back of the statistics); the fourth
// 1 with the gradient, 0 the statistics alone (to split the time into its two passes).
#include <cstdint>
#include <vector>

#include <polo/value_loss.cuh>  // only the primitive measured

#include "support/bench_support.hpp"
#include "support/cuda_timer.cuh"

namespace {

namespace cb = polo::bench::cuda;

double value_loss_bytes(std::int64_t B, std::int64_t T) { return double(B) * double(T) * (4 * sizeof(float) + 1); }
// Without the gradient (the fourth argument 0): the statistics and checks pass alone, its three
// inputs and the mask read once.
double stats_bytes(std::int64_t B, std::int64_t T) { return double(B) * double(T) * (3 * sizeof(float) + 1); }

void BM_ValueLoss_cuda(benchmark::State& st) {
  const std::int64_t B = st.range(0), T = st.range(1);
  const auto n = static_cast<std::size_t>(B * T);
  cb::device_buffer<float> v(polo::bench::normal_values<float>(n, 4)), vo(polo::bench::normal_values<float>(n, 5)),
      ret(polo::bench::normal_values<float>(n, 6)), grad(n);
  cb::device_buffer<std::uint8_t> mask(polo::bench::right_padded_mask(B, T));
  cudaStream_t stream{};
  POLO_BENCH_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  const polo::padded<std::uint8_t, polo::device_space> lay(polo::device_view_of<const std::uint8_t>(mask.data(), B, T, T));
  cb::device_buffer<unsigned char> ws(polo::value_loss_workspace_bytes(polo::cuda{}, lay));
  polo::cuda be{.stream = stream, .workspace = ws.data(), .workspace_bytes = ws.size()};
  cb::result_mode<polo::value_loss_stats> mode(st, be, st.range(2) != 0);
  auto view = [&](const cb::device_buffer<float>& b) { return polo::device_view_of<const float>(b.data(), B, T, T); };
  const bool with_grad = st.range(3) != 0;
  cb::time_loop(st, stream, [&] {
    if (with_grad)
      polo::value_loss(be, lay, view(v), view(vo), view(ret), polo::device_view_of(grad.data(), B, T, T),
                       polo::presets::verl::critic);
    else
      benchmark::DoNotOptimize(polo::value_loss(be, lay, view(v), view(vo), view(ret), polo::presets::verl::critic));
  });
  polo::cuda_check(be);
  cb::report(st, with_grad ? value_loss_bytes(B, T) : stats_bytes(B, T));
  (void)cudaStreamDestroy(stream);
}

void BM_CopyFloor_value_loss_bytes(benchmark::State& st) {
  cb::copy_benchmark(st, value_loss_bytes(st.range(0), st.range(1)));
}

void BM_CopyFloor_value_loss_stats_bytes(benchmark::State& st) { cb::copy_benchmark(st, stats_bytes(st.range(0), st.range(1))); }

}  // namespace

BENCHMARK(BM_CopyFloor_value_loss_bytes)->Args({512, 4096})->Args({1024, 8192})->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_ValueLoss_cuda)->Args({512, 4096, 1, 1})->Args({1024, 8192, 1, 1})->Args({512, 4096, 0, 1})->Args({1024, 8192, 0, 1})->UseManualTime()->Unit(benchmark::kMicrosecond);
// 2^23 tokens at row lengths 2^8 .. 2^15 (many short rows to few long ones), asynchronous, with
// the gradient
BENCHMARK(BM_ValueLoss_cuda)
    ->Name("BM_ValueLossSeqlen_cuda")
    ->Apply([](benchmark::internal::Benchmark* b) { cb::seqlen_shapes(b, 8, 15, {1}); })
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_CopyFloor_value_loss_stats_bytes)->Args({512, 4096})->Args({1024, 8192})->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_ValueLoss_cuda)->Args({512, 4096, 1, 0})->Args({1024, 8192, 1, 0})->UseManualTime()->Unit(benchmark::kMicrosecond);
