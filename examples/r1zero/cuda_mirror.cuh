// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
#pragma once
// mirror<polo::cuda, T>: a host buffer and a device copy of it, for running the trainers' RL
// math on the GPU while the model stays on the CPU. upload() copies host -> device before a
// primitive reads the buffer; download() copies device -> host after a primitive wrote it.
// Copies are synchronous on the legacy default stream, the stream polo::cuda{} launches on.

#include <cuda_runtime.h>

#include <stdexcept>
#include <string>
#include <vector>

#include <polo/core/view.hpp>

#include "trainer.hpp"

namespace r1zero {

inline void cuda_check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string("r1zero: ") + what + ": " + cudaGetErrorString(e));
}

template <class T>
class mirror<polo::cuda, T> {
 public:
  mirror() = default;
  mirror(const mirror&) = delete;
  mirror& operator=(const mirror&) = delete;
  ~mirror() {
    if (dev_) cudaFree(dev_);
  }
  void resize(index_t rows, index_t cols) {
    rows_ = rows;
    cols_ = cols;
    host_.assign(std::size_t(rows * cols), T{});
    if (dev_) cudaFree(dev_);
    dev_ = nullptr;
    if (rows * cols > 0) cuda_check(cudaMalloc(&dev_, sizeof(T) * std::size_t(rows * cols)), "cudaMalloc");
  }
  std::vector<T>& host() { return host_; }
  polo::view<T, 2, polo::device_space> view2() { return {dev_, rows_, cols_, cols_}; }
  polo::view<const T, 2, polo::device_space> cview2() { return {dev_, rows_, cols_, cols_}; }
  polo::view<T, 1, polo::device_space> view1() { return {dev_, rows_ * cols_, 1}; }
  void upload() {
    if (!host_.empty())
      cuda_check(cudaMemcpy(dev_, host_.data(), sizeof(T) * host_.size(), cudaMemcpyHostToDevice), "upload");
  }
  void download() {
    if (!host_.empty())
      cuda_check(cudaMemcpy(host_.data(), dev_, sizeof(T) * host_.size(), cudaMemcpyDeviceToHost), "download");
  }

 private:
  std::vector<T> host_;
  T* dev_ = nullptr;
  index_t rows_ = 0, cols_ = 0;
};

}  // namespace r1zero
