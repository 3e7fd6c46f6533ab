// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
// CUDA benchmarks of GAE and the discounted returns (cuda/polo/gae.cuh) at B x T = 512 x 4096
// and 1024 x 8192 (float, uint8 mask, ~10% right padding; BM_GaeLeftPadded_cuda: the same
// padding on the left; BM_GaePackedPrompt_cuda: those rows packed, each a masked prompt then
// its response), plus one case of few long rows and one of many short rows, each with its
// ratio to a device copy of the same bytes measured in this binary (x_copy). Bytes counted per token: the floor, every input read once and every
// output written once (GAE: r, v, mask in, A, R out = 17 bytes; returns: r, mask in, R out = 9).
// The Python loop baseline of ../shared/guide/PERFORMANCE.md (reverse loop over T in PyTorch,
// H100) took 524 ms at 512 x 4096 and 980 ms at 1024 x 8192; `x_faster_than_python_loop`
// divides those by this binary's median. The third argument picks the mode: 1 the asynchronous
// one (be.result + deferred_errors: no host synchronization), 0 the synchronous one (one
// read-back of the statistics per call).
#include <cstdint>
#include <vector>

#include <polo/polo.cuh>

#include "support/bench_support.hpp"
#include "support/cuda_timer.cuh"

namespace {

namespace cb = polo::bench::cuda;

double python_loop_seconds(std::int64_t B, std::int64_t T) {
  if (B == 512 && T == 4096) return 0.524;
  if (B == 1024 && T == 8192) return 0.980;
  return 0.0;
}

struct fixture {
  std::int64_t B, T;
  cudaStream_t stream{};
  cb::device_buffer<float> r, v, A, R;
  cb::device_buffer<std::uint8_t> mask;
  fixture(std::int64_t b, std::int64_t t, bool left = false)
      : B(b),
        T(t),
        r(polo::bench::normal_values<float>(static_cast<std::size_t>(b * t), 1)),
        v(polo::bench::normal_values<float>(static_cast<std::size_t>(b * t), 2)),
        A(static_cast<std::size_t>(b * t)),
        R(static_cast<std::size_t>(b * t)),
        mask(left ? polo::bench::left_padded_mask(b, t) : polo::bench::right_padded_mask(b, t)) {
    POLO_BENCH_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  }
  ~fixture() { (void)cudaStreamDestroy(stream); }
  polo::padded<std::uint8_t, polo::device_space> layout() const {
    return polo::padded<std::uint8_t, polo::device_space>(polo::device_view_of<const std::uint8_t>(mask.data(), B, T, T));
  }
  polo::view<const float, 2, polo::device_space> in(const cb::device_buffer<float>& x) const {
    return polo::device_view_of<const float>(x.data(), B, T, T);
  }
  polo::view<float, 2, polo::device_space> out(cb::device_buffer<float>& x) const {
    return polo::device_view_of(x.data(), B, T, T);
  }
};

void run_gae(benchmark::State& st, const polo::gae_config& cfg, bool left = false,
             polo::scan_chunking chunks = polo::scan_chunking::adaptive) {
  fixture f(st.range(0), st.range(1), left);
  const auto lay = f.layout();
  const polo::cuda probe{.scans = chunks};
  cb::device_buffer<unsigned char> ws(polo::gae_workspace_bytes<float>(probe, lay));
  polo::cuda be{.stream = f.stream, .workspace = ws.data(), .workspace_bytes = ws.size(), .scans = chunks};
  cb::result_mode<polo::gae_stats> mode(st, be, st.range(2) != 0);
  cb::time_loop(st, f.stream, [&] { polo::gae(be, lay, f.in(f.r), f.in(f.v), f.out(f.A), f.out(f.R), cfg); });
  polo::cuda_check(be);
  cb::report(st, double(f.B) * double(f.T) * 17.0);
  const double py = python_loop_seconds(f.B, f.T);
  if (py > 0) st.counters["x_faster_than_python_loop"] = py / (st.counters["median_us"].value * 1e-6);
}

void BM_Gae_cuda(benchmark::State& st) { run_gae(st, polo::gae_config{}); }
// the same batch with its padding on the left: the leading masked chunks of every row (the
// apply pass's second launch)
void BM_GaeLeftPadded_cuda(benchmark::State& st) { run_gae(st, polo::gae_config{}, true); }
// chunks of one warp for every batch (packed == padded bitwise whatever the lengths)
void BM_GaeLayoutInvariant_cuda(benchmark::State& st) {
  run_gae(st, polo::gae_config{}, false, polo::scan_chunking::layout_invariant);
}
// The same tokens as a packed batch of B rows of T, each row a masked prompt and then its
// response (the left-padded mask), as a trainer that removes padding passes them: the packed
// path's chunk table, anchors past the prompt and the prompts' leading chunks.
void BM_GaePackedPrompt_cuda(benchmark::State& st) {
  fixture f(st.range(0), st.range(1), true);
  std::vector<std::int64_t> off(static_cast<std::size_t>(f.B + 1));
  for (std::size_t i = 0; i < off.size(); ++i) off[i] = std::int64_t(i) * f.T;
  const cb::device_buffer<std::int64_t> doff(off);
  const polo::index_t N = f.B * f.T;
  const polo::packed<std::uint8_t, std::int64_t, polo::device_space> lay(
      polo::device_view_of<const std::int64_t>(doff.data(), f.B + 1),
      N, polo::device_view_of<const std::uint8_t>(f.mask.data(), N));
  const polo::cuda probe{};
  cb::device_buffer<unsigned char> ws(polo::gae_workspace_bytes<float>(probe, lay));
  polo::cuda be{.stream = f.stream, .workspace = ws.data(), .workspace_bytes = ws.size()};
  cb::result_mode<polo::gae_stats> mode(st, be, st.range(2) != 0);
  auto flat = [&](const cb::device_buffer<float>& x) { return polo::device_view_of<const float>(x.data(), N); };
  cb::time_loop(st, f.stream, [&] {
    polo::gae(be, lay, flat(f.r), flat(f.v), polo::device_view_of(f.A.data(), N), polo::device_view_of(f.R.data(), N),
              polo::gae_config{});
  });
  polo::cuda_check(be);
  cb::report(st, double(N) * 17.0);
  const double py = python_loop_seconds(f.B, f.T);
  if (py > 0) st.counters["x_faster_than_python_loop"] = py / (st.counters["median_us"].value * 1e-6);
}
void BM_GaeThrough_cuda(benchmark::State& st) { run_gae(st, polo::presets::openrlhf::gae); }
void BM_GaeVapo_cuda(benchmark::State& st) { run_gae(st, polo::presets::nemo::gae_vapo); }

void BM_DiscountedReturns_cuda(benchmark::State& st) {
  fixture f(st.range(0), st.range(1));
  const auto lay = f.layout();
  polo::cuda probe{};
  cb::device_buffer<unsigned char> ws(polo::discounted_returns_workspace_bytes<float>(probe, lay));
  polo::cuda be{.stream = f.stream, .workspace = ws.data(), .workspace_bytes = ws.size()};
  cb::result_mode<polo::returns_stats> mode(st, be, st.range(2) != 0);
  cb::time_loop(st, f.stream, [&] { polo::discounted_returns(be, lay, f.in(f.r), f.out(f.R), polo::returns_config{0.99}); });
  polo::cuda_check(be);
  cb::report(st, double(f.B) * double(f.T) * 9.0);
}

void BM_CopyFloor_gae_bytes(benchmark::State& st) { cb::copy_benchmark(st, double(st.range(0)) * double(st.range(1)) * 17.0); }

}  // namespace

BENCHMARK(BM_CopyFloor_gae_bytes)->Args({512, 4096})->Args({1024, 8192})->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_Gae_cuda)
    ->Args({512, 4096, 1})
    ->Args({1024, 8192, 1})
    ->Args({8, 1 << 20, 1})    // few long rows
    ->Args({65536, 128, 1})   // many short rows
    ->Args({512, 4096, 0})
    ->Args({1024, 8192, 0})
    ->Args({8, 1 << 20, 0})
    ->Args({65536, 128, 0})
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_GaeLeftPadded_cuda)->Apply(cb::headline_sizes_both_modes)->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_GaeLayoutInvariant_cuda)
    ->Args({512, 4096, 1})
    ->Args({1024, 8192, 1})
    ->Args({8, 1 << 20, 1})
    ->Args({65536, 128, 1})
    ->Args({1024, 8192, 0})
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);
// 2^23 tokens at every row length from 2^6 to 2^17, asynchronous: the default chunk widths
// against chunks of one warp
void seqlen_shapes(benchmark::internal::Benchmark* b) { cb::seqlen_shapes(b, 6, 17); }
BENCHMARK(BM_Gae_cuda)->Name("BM_GaeSeqlen_cuda")->Apply(seqlen_shapes)->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_GaeLayoutInvariant_cuda)
    ->Name("BM_GaeSeqlenLayoutInvariant_cuda")
    ->Apply(seqlen_shapes)
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_GaePackedPrompt_cuda)->Apply(cb::headline_sizes_both_modes)->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_GaeThrough_cuda)->Apply(cb::headline_sizes_both_modes)->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_GaeVapo_cuda)->Apply(cb::headline_sizes_both_modes)->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_DiscountedReturns_cuda)->Apply(cb::headline_sizes_both_modes)->UseManualTime()->Unit(benchmark::kMicrosecond);
