// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
#pragma once
// polo::test::buffer<T, polo::cuda>: the CUDA twin of the std::vector-backed CPU buffer in
// polo_test.hpp. Owns cudaMalloc'd memory; every copy is synchronous (cudaMemcpy orders after
// the work on the legacy default stream that make_backend<polo::cuda>() launches on), so
// to_host() sees everything enqueued before it. Any CUDA failure fails the test with the
// runtime's own message.

#include <cuda_runtime.h>

#include <string>
#include <utility>
#include <vector>

#include "support/polo_test.hpp"

namespace polo::test {

/// FAIL()s the current test if `e` is not cudaSuccess.
inline void require_cuda(cudaError_t e, const char* what) {
  if (e != cudaSuccess) FAIL(std::string("CUDA error ") + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ") from " + what);
}

template <class T>
class buffer<T, polo::cuda> {
 public:
  buffer() = default;
  explicit buffer(const std::vector<T>& host) : n_(index_t(host.size())) {
    allocate();
    if (n_ > 0) require_cuda(cudaMemcpy(ptr_, host.data(), bytes(), cudaMemcpyHostToDevice), "cudaMemcpy H2D");
  }
  buffer(index_t n, T fill) : buffer(std::vector<T>(static_cast<std::size_t>(n), fill)) {}
  buffer(const buffer&) = delete;
  buffer& operator=(const buffer&) = delete;
  buffer(buffer&& o) noexcept : ptr_(std::exchange(o.ptr_, nullptr)), n_(std::exchange(o.n_, 0)) {}
  buffer& operator=(buffer&& o) noexcept {
    if (this != &o) {
      release();
      ptr_ = std::exchange(o.ptr_, nullptr);
      n_ = std::exchange(o.n_, 0);
    }
    return *this;
  }
  ~buffer() { release(); }

  [[nodiscard]] view<T, 1, device_space> view1() { return {ptr_, n_, 1}; }
  [[nodiscard]] view<const T, 1, device_space> cview1() const { return {ptr_, n_, 1}; }
  [[nodiscard]] view<T, 2, device_space> view2(index_t rows, index_t cols) {
    REQUIRE(n_ == rows * cols);
    return {ptr_, rows, cols, cols};
  }
  [[nodiscard]] view<const T, 2, device_space> cview2(index_t rows, index_t cols) const {
    REQUIRE(n_ == rows * cols);
    return {ptr_, rows, cols, cols};
  }
  /// Waits for the device and copies the contents back.
  [[nodiscard]] std::vector<T> to_host() const {
    std::vector<T> h(static_cast<std::size_t>(n_));
    require_cuda(cudaDeviceSynchronize(), "cudaDeviceSynchronize before to_host");
    if (n_ > 0) require_cuda(cudaMemcpy(h.data(), ptr_, bytes(), cudaMemcpyDeviceToHost), "cudaMemcpy D2H");
    return h;
  }
  [[nodiscard]] index_t size() const { return n_; }
  /// Raw device pointer (for tests that build views by hand).
  [[nodiscard]] T* data() const { return ptr_; }

 private:
  [[nodiscard]] std::size_t bytes() const { return static_cast<std::size_t>(n_) * sizeof(T); }
  void allocate() {
    if (n_ > 0) require_cuda(cudaMalloc(reinterpret_cast<void**>(&ptr_), bytes()), "cudaMalloc");
  }
  void release() noexcept {
    if (ptr_ != nullptr) (void)cudaFree(ptr_);
    ptr_ = nullptr;
    n_ = 0;
  }
  T* ptr_ = nullptr;
  index_t n_ = 0;
};

}  // namespace polo::test
