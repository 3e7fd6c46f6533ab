// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
#pragma once
/// \file
/// Scratch memory of the CUDA backend: where it comes from (the `polo::cuda` tag's
/// `workspace`, its `alloc` callbacks, or `cudaMallocAsync` on its stream), how one block of
/// it is carved into aligned regions, and the one host read-back that a synchronizing entry
/// point does.
///
/// Each primitive describes its scratch once, as a function that takes regions from a
/// `scratch_plan` in a fixed order. Run on a null base it sizes the scratch (the public
/// `*_workspace_bytes` query); run on the real block it hands out the pointers. Sizing and
/// carving therefore never disagree.

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "polo/core/backend.hpp"
#include "polo/core/config.hpp"
#include "polo/core/error.hpp"
#include "polo/detail/launch.cuh"

namespace polo::detail {

/// Alignment of every scratch region, and required of a caller-provided `workspace`.
inline constexpr std::size_t scratch_alignment = 256;

constexpr std::size_t align_up(std::size_t n, std::size_t a) noexcept { return (n + a - 1) / a * a; }

/// Bump allocator over one block of scratch. With a null base it only counts bytes.
class scratch_plan {
 public:
  explicit scratch_plan(void* base = nullptr) noexcept : base_(static_cast<char*>(base)) {}

  /// Next region of `n` elements of T, aligned to `scratch_alignment` (null when sizing).
  template <class T>
  T* take(index_t n) noexcept {
    offset_ = align_up(offset_, scratch_alignment);
    T* p = base_ ? reinterpret_cast<T*>(base_ + offset_) : nullptr;
    offset_ += static_cast<std::size_t>(n > 0 ? n : 0) * sizeof(T);
    return p;
  }
  /// Bytes taken so far, rounded up to the alignment.
  [[nodiscard]] std::size_t bytes() const noexcept { return align_up(offset_, scratch_alignment); }

 private:
  char* base_ = nullptr;
  std::size_t offset_ = 0;
};

/// One block of scratch for the duration of one entry-point call, released stream-ordered
/// when the call returns or throws (the kernels already enqueued may still be using it; the
/// release is ordered after them on the tag's stream).
class scratch {
 public:
  /// Acquires `bytes` for entry point `fn` from the tag (see polo::cuda for the order).
  /// Throws config_error if a caller-provided workspace is too small or misaligned, and
  /// cuda_error if an allocation fails.
  scratch(const cuda& be, std::size_t bytes, const char* fn) : be_(be), bytes_(bytes) {
    if (bytes_ == 0) return;
    if (be.workspace != nullptr) {
      if (be.workspace_bytes < bytes_)
        throw_config(fn, "workspace_bytes", std::to_string(be.workspace_bytes),
                     ">= " + std::to_string(bytes_) + " (the size polo::" + fn +
                         "_workspace_bytes reports for these arguments)");
      if (!is_aligned(be.workspace, scratch_alignment))
        throw_config(fn, "workspace", "a pointer misaligned by " +
                                          std::to_string(reinterpret_cast<std::uintptr_t>(be.workspace) %
                                                         scratch_alignment) + " bytes",
                     "a 256-byte aligned device pointer (cudaMalloc's alignment)");
      ptr_ = be.workspace;
      mode_ = mode::borrowed;
    } else if (be.alloc.allocate != nullptr) {
      ptr_ = be.alloc.allocate(be.alloc.context, bytes_, be.stream);
      if (ptr_ == nullptr)
        throw cuda_error(std::string("polo::") + fn + ": the polo::cuda::allocator returned null for " +
                             std::to_string(bytes_) + " bytes of scratch",
                         static_cast<int>(cudaErrorMemoryAllocation));
      mode_ = mode::callbacks;
    } else {
      POLO_CUDA_TRY(cudaMallocAsync(&ptr_, bytes_, stream_of(be)));
      mode_ = mode::pool;
    }
  }
  scratch(const scratch&) = delete;
  scratch& operator=(const scratch&) = delete;
  ~scratch() {
    switch (mode_) {
      case mode::callbacks:
        if (be_.alloc.deallocate != nullptr) be_.alloc.deallocate(be_.alloc.context, ptr_, bytes_, be_.stream);
        break;
      case mode::pool: (void)cudaFreeAsync(ptr_, stream_of(be_)); break;
      default: break;
    }
  }
  [[nodiscard]] void* data() const noexcept { return ptr_; }

 private:
  enum class mode { none, borrowed, callbacks, pool };
  cuda be_;
  std::size_t bytes_ = 0;
  void* ptr_ = nullptr;
  mode mode_ = mode::none;
};

/// Copies `bytes` from device to host memory on the tag's stream and waits for the stream:
/// the one synchronization point of an entry point that must return or check a host value.
inline void read_back(const cuda& be, void* host, const void* device, std::size_t bytes) {
  POLO_CUDA_TRY(cudaMemcpyAsync(host, device, bytes, cudaMemcpyDeviceToHost, stream_of(be)));
  POLO_CUDA_TRY(cudaStreamSynchronize(stream_of(be)));
}

}  // namespace polo::detail
