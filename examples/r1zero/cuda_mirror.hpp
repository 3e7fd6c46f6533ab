// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
#pragma once
// The polo::cuda pieces of the trainers that the C++ compiler builds: buffers and scratch on
// the GPU through the CUDA runtime's C API (cuda_runtime.h needs no nvcc), and the declarations
// of the polo calls (rl_math_cuda.hpp; defined in rl_math_cuda.cu, compiled by nvcc).
//
// mirror<polo::cuda, T>: a host buffer and a device copy of it, for running the trainers' RL
// math on the GPU while the model stays on the CPU. upload() copies host -> device before a
// primitive reads the buffer; download() copies device -> host after a primitive wrote it.
// Copies are synchronous on the legacy default stream, the stream polo::cuda{} launches on.
//
// workspace<polo::cuda>: one block of device scratch for every polo call of a run. Without it
// polo::cuda takes each call's scratch from cudaMallocAsync on the default memory pool, whose
// release threshold is 0: every stream synchronization (each call that returns statistics has
// one) hands the memory back to the driver, so the next call allocates it again. The calls
// run one after another on one stream, so one block sized with polo's *_workspace_bytes queries
// (rl_math::workspace_bytes) serves them all, allocated once before the first step.

#include <cuda_runtime.h>

#include <cstddef>
#include <stdexcept>
#include <string>
#include <vector>

#include <polo/core/view.hpp>

#include "rl_math_cuda.hpp"
#include "trainer.hpp"

namespace r1zero {

inline void cuda_check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
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

template <>
class workspace<polo::cuda> {
 public:
  explicit workspace(std::size_t bytes) : bytes_(bytes) {
    if (bytes_ > 0) cuda_check(cudaMalloc(&ptr_, bytes_), "cudaMalloc (workspace)");  // 256-byte aligned
  }
  workspace(const workspace&) = delete;
  workspace& operator=(const workspace&) = delete;
  ~workspace() {
    if (ptr_) cudaFree(ptr_);
  }
  /// `be` with this block as its scratch, unless the caller already gave it scratch of its own.
  polo::cuda attach(polo::cuda be) const {
    if (be.workspace == nullptr && be.alloc.allocate == nullptr) {
      be.workspace = ptr_;
      be.workspace_bytes = bytes_;
    }
    return be;
  }

 private:
  void* ptr_ = nullptr;
  std::size_t bytes_ = 0;
};

}  // namespace r1zero
