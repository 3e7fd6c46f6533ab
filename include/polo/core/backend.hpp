// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
#pragma once
/// \file
/// Backend tags. A backend is chosen at compile time by the type of the first argument of
/// every primitive: `polo::cpu{}` runs on the host (Eigen), `polo::cuda{stream}` runs on the
/// GPU on the given stream. Each tag names the memory space its data must live in, and the
/// views carry their memory space in their type, so handing host memory to the CUDA backend
/// (or device memory to the CPU backend) is a compile error, not a crash.
///
/// The tags are plain C++ (no CUDA header is needed to name `polo::cuda` or hold a stream);
/// the CUDA implementations live under cuda/polo/ and are only visible to nvcc TUs.

#include <concepts>
#include <type_traits>

#include "polo/core/config.hpp"

struct CUstream_st;  // the CUDA driver's opaque stream; cudaStream_t is CUstream_st*

namespace polo {

/// Memory that the host can dereference (std::vector, Eigen, malloc, pinned memory).
struct host_space {
  static constexpr const char* name = "host";
};

/// Memory of the current CUDA device (cudaMalloc, cudaMallocAsync, torch CUDA tensors).
struct device_space {
  static constexpr const char* name = "cuda-device";
};

/// Same type as `cudaStream_t`, spelled without CUDA headers so .cpp code can hold one.
using stream_t = CUstream_st*;

/// How reproducible a reduction must be (after CUB's determinism levels).
enum class determinism : unsigned char {
  run_to_run,  ///< bitwise identical results for identical inputs on the same device (default)
  fast,        ///< may use floating-point atomics; results can differ in the last bits
};

/// The CPU backend: single-threaded, fixed-order, deterministic loops over Eigen maps.
struct cpu {
  using memory_space = host_space;
  static constexpr const char* name = "cpu";
};

/// The CUDA backend: kernels launched on `stream`, never synchronizing it except where an
/// entry point documents that it returns a host value. Requires including <polo/polo.cuh>
/// from a .cu translation unit.
struct cuda {
  using memory_space = device_space;
  static constexpr const char* name = "cuda";
  stream_t stream = nullptr;                       ///< stream every kernel is launched on
  determinism level = determinism::run_to_run;     ///< reduction reproducibility
};

/// A backend tag: names its memory space and itself.
template <class B>
concept Backend = requires {
  typename B::memory_space;
  { B::name } -> std::convertible_to<const char*>;
};

/// True when data living in `Space` may be handed to backend `B`.
template <class B, class Space>
inline constexpr bool accepts_space_v = std::is_same_v<typename B::memory_space, Space>;

namespace detail {
/// Primary template of the per-backend implementations: `backend_impl<Backend, Primitive>`,
/// where Primitive is a tag type declared next to the primitive's public entry (for example
/// `detail::advantages_tag`). Each backend specializes it per primitive in its own folder
/// (include/polo/cpu/, cuda/polo/); reaching this primary template means the backend's
/// header was not included.
template <class B, class Primitive>
struct backend_impl {
  static_assert(sizeof(B) == 0,
                "polo: no implementation for this backend is visible here. For polo::cpu include "
                "<polo/polo.hpp>; for polo::cuda include <polo/polo.cuh> from a .cu file.");
};
}  // namespace detail

}  // namespace polo
