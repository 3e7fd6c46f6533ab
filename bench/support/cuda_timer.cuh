// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
#pragma once
// Shared support for polo's CUDA benchmarks (bench/*_bench.cu): CUDA-event timing through
// Google Benchmark's manual time, the L2 flush between iterations, device buffers, and the
// memory floor -- a device copy kernel moving the same bytes, measured in the same binary.
//
//     static void BM_Foo_cuda(benchmark::State& st) {
//       polo::bench::cuda::device_buffer<float> x(host), y(n);
//       polo::cuda be{stream};
//       polo::bench::cuda::time_loop(st, stream, [&] { polo::foo(be, ...); });
//       polo::bench::cuda::report(st, bytes_per_call);
//     }
//     BENCHMARK(BM_Foo_cuda)->Args({512, 4096})->UseManualTime()->Unit(benchmark::kMicrosecond);
//
// Each timed iteration is one call bracketed by two events on the stream; before it, the L2
// (50 MB on an H100) is flushed by a memset of a larger buffer outside the timed region, so
// every size, even one that fits in L2, is timed from device memory like the copy floor.
// Counters: `bytes_per_second` (from the manual time), `x_copy` = time per call divided by
// the copy kernel's time for the same bytes (half read, half written): 1.0 is the floor.

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

#include <benchmark/benchmark.h>

#include <polo/core/backend.hpp>

namespace polo::bench::cuda {

/// Aborts the benchmark binary on a CUDA error (benchmarks have no test framework to fail).
inline void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    std::fprintf(stderr, "CUDA error %s (%s) from %s\n", cudaGetErrorName(e), cudaGetErrorString(e), what);
    std::exit(2);
  }
}
#define POLO_BENCH_CUDA(expr) ::polo::bench::cuda::check((expr), #expr)

/// Owning device buffer, filled from host data or left uninitialized.
template <class T>
class device_buffer {
 public:
  explicit device_buffer(std::size_t n) : n_(n) {
    if (n_ > 0) POLO_BENCH_CUDA(cudaMalloc(reinterpret_cast<void**>(&p_), n_ * sizeof(T)));
  }
  explicit device_buffer(const std::vector<T>& h) : device_buffer(h.size()) {
    if (n_ > 0) POLO_BENCH_CUDA(cudaMemcpy(p_, h.data(), n_ * sizeof(T), cudaMemcpyHostToDevice));
  }
  device_buffer(const device_buffer&) = delete;
  device_buffer& operator=(const device_buffer&) = delete;
  ~device_buffer() {
    if (p_ != nullptr) (void)cudaFree(p_);
  }
  [[nodiscard]] T* data() const { return p_; }
  [[nodiscard]] std::size_t size() const { return n_; }

 private:
  T* p_ = nullptr;
  std::size_t n_ = 0;
};

/// Evicts the L2: a memset of twice its size (at least 64 MiB), enqueued on `stream`.
inline void flush_l2(cudaStream_t stream) {
  static device_buffer<unsigned char>* junk = [] {
    int dev = 0, l2 = 0;
    POLO_BENCH_CUDA(cudaGetDevice(&dev));
    POLO_BENCH_CUDA(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, dev));
    return new device_buffer<unsigned char>(std::max<std::size_t>(std::size_t(2) * std::size_t(l2), std::size_t(64) << 20));
  }();
  POLO_BENCH_CUDA(cudaMemsetAsync(junk->data(), 0, junk->size(), stream));
}

/// Times one call of `f` per iteration with CUDA events on `stream` (after one warm-up call,
/// and an L2 flush before every call) and hands the time to Google Benchmark as manual time.
/// Use with ->UseManualTime(). Also records the median in the `median_us` counter.
template <class F>
void time_loop(benchmark::State& st, cudaStream_t stream, F&& f) {
  cudaEvent_t a, b;
  POLO_BENCH_CUDA(cudaEventCreate(&a));
  POLO_BENCH_CUDA(cudaEventCreate(&b));
  f();  // warm-up: module load, pool growth
  POLO_BENCH_CUDA(cudaStreamSynchronize(stream));
  std::vector<double> times;
  for (auto _ : st) {
    flush_l2(stream);
    POLO_BENCH_CUDA(cudaEventRecord(a, stream));
    f();
    POLO_BENCH_CUDA(cudaEventRecord(b, stream));
    POLO_BENCH_CUDA(cudaEventSynchronize(b));
    float ms = 0.0f;
    POLO_BENCH_CUDA(cudaEventElapsedTime(&ms, a, b));
    st.SetIterationTime(double(ms) * 1e-3);
    times.push_back(double(ms) * 1e-3);
  }
  POLO_BENCH_CUDA(cudaEventDestroy(a));
  POLO_BENCH_CUDA(cudaEventDestroy(b));
  if (!times.empty()) {
    std::nth_element(times.begin(), times.begin() + times.size() / 2, times.end());
    st.counters["median_us"] = times[times.size() / 2] * 1e6;
  }
}

/// The floor: out[i] = in[i] over 16-byte vectors, grid-stride, every byte read once and
/// written once.
__global__ void __launch_bounds__(256) copy_kernel(const uint4* __restrict__ in, uint4* __restrict__ out, std::size_t n) {
  for (std::size_t i = std::size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += std::size_t(gridDim.x) * blockDim.x)
    out[i] = in[i];
}

/// Launches copy_kernel over `bytes / 16` vectors.
inline void launch_copy(const void* in, void* out, std::size_t bytes, cudaStream_t stream) {
  const std::size_t n = bytes / sizeof(uint4);
  int dev = 0, sms = 0;
  POLO_BENCH_CUDA(cudaGetDevice(&dev));
  POLO_BENCH_CUDA(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  const std::size_t want = (n + 255) / 256;
  const unsigned grid = static_cast<unsigned>(std::max<std::size_t>(1, std::min<std::size_t>(want, std::size_t(sms) * 8)));
  copy_kernel<<<grid, 256, 0, stream>>>(static_cast<const uint4*>(in), static_cast<uint4*>(out), n);
  POLO_BENCH_CUDA(cudaGetLastError());
}

/// Median seconds of the copy kernel moving `bytes_moved` bytes (half read, half written), each
/// run after an L2 flush; measured once per size in this process.
inline double copy_seconds(double bytes_moved) {
  static std::map<std::int64_t, double> cache;
  const std::size_t half = (static_cast<std::size_t>(std::max(32.0, bytes_moved / 2)) + 15) / 16 * 16;
  auto it = cache.find(static_cast<std::int64_t>(half));
  if (it != cache.end()) return it->second;
  device_buffer<unsigned char> src(half), dst(half);
  POLO_BENCH_CUDA(cudaMemset(src.data(), 1, half));
  cudaEvent_t a, b;
  POLO_BENCH_CUDA(cudaEventCreate(&a));
  POLO_BENCH_CUDA(cudaEventCreate(&b));
  std::vector<double> t;
  for (int r = 0; r < 53; ++r) {
    flush_l2(nullptr);
    POLO_BENCH_CUDA(cudaEventRecord(a, nullptr));
    launch_copy(src.data(), dst.data(), half, nullptr);
    POLO_BENCH_CUDA(cudaEventRecord(b, nullptr));
    POLO_BENCH_CUDA(cudaEventSynchronize(b));
    float ms = 0.0f;
    POLO_BENCH_CUDA(cudaEventElapsedTime(&ms, a, b));
    if (r >= 3) t.push_back(double(ms) * 1e-3);
  }
  POLO_BENCH_CUDA(cudaEventDestroy(a));
  POLO_BENCH_CUDA(cudaEventDestroy(b));
  std::nth_element(t.begin(), t.begin() + t.size() / 2, t.end());
  const double med = t[t.size() / 2];
  cache[static_cast<std::int64_t>(half)] = med;
  return med;
}

/// Call after time_loop: bytes processed, `x_copy` (median time per call over the copy floor's
/// median for the same bytes; the mean is in Google Benchmark's own time column) and
/// `copy_GBps` (the floor's bandwidth, read + written).
inline void report(benchmark::State& st, double bytes_per_iteration) {
  const double copy = copy_seconds(bytes_per_iteration);
  st.SetBytesProcessed(static_cast<std::int64_t>(bytes_per_iteration * double(st.iterations())));
  const auto it = st.counters.find("median_us");
  if (it != st.counters.end()) st.counters["x_copy"] = it->second.value * 1e-6 / copy;
  st.counters["copy_GBps"] = bytes_per_iteration / copy * 1e-9;
}

/// The floor itself as a benchmark: the copy kernel over `bytes_moved` (read + written).
inline void copy_benchmark(benchmark::State& st, double bytes_moved) {
  const std::size_t half = (static_cast<std::size_t>(bytes_moved / 2) + 15) / 16 * 16;
  device_buffer<unsigned char> src(half), dst(half);
  POLO_BENCH_CUDA(cudaMemset(src.data(), 1, half));
  time_loop(st, nullptr, [&] { launch_copy(src.data(), dst.data(), half, nullptr); });
  report(st, bytes_moved);
}

/// The two modes of an entry that returns statistics, picked by a benchmark argument:
/// asynchronous (be.result + be.deferred_errors: no host synchronization, the number compared
/// with the floor) or synchronous (one read-back of the statistics per call). Holds the device
/// memory of the result (`Stats`) and of the status (zeroed), puts `be` in the chosen mode and
/// labels the benchmark "async" or "sync". Keep it alive while `be` is used.
template <class Stats>
struct result_mode {
  device_buffer<unsigned char> result{sizeof(Stats)};
  device_buffer<polo::cuda::status> status{1};
  result_mode(benchmark::State& st, polo::cuda& be, bool async) {
    POLO_BENCH_CUDA(cudaMemset(status.data(), 0, sizeof(polo::cuda::status)));
    if (async) {
      be.deferred_errors = status.data();
      be.result = result.data();
    }
    st.SetLabel(async ? "async" : "sync");
  }
};

/// 2^23 tokens at row lengths 2^lo .. 2^hi (B = 2^23 / T), asynchronous mode (third argument 1;
/// `extra` appended after it): how a primitive's time moves with the row length at a fixed size.
inline void seqlen_shapes(benchmark::internal::Benchmark* b, int lo, int hi, std::vector<std::int64_t> extra = {}) {
  for (int lt = lo; lt <= hi; ++lt) {
    std::vector<std::int64_t> a{std::int64_t(1) << (23 - lt), std::int64_t(1) << lt, 1};
    a.insert(a.end(), extra.begin(), extra.end());
    b->Args(a);
  }
}

/// Benchmark arguments {B, T, mode}: the headline sizes (512 x 4096, 1024 x 8192) in the
/// asynchronous mode (1), then in the synchronous one (0). Use with ->Apply().
inline void headline_sizes_both_modes(benchmark::internal::Benchmark* b) {
  for (int mode : {1, 0}) {
    b->Args({512, 4096, mode});
    b->Args({1024, 8192, mode});
  }
}

}  // namespace polo::bench::cuda
