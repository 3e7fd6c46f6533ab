// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
#pragma once
/// \file
/// Launch plumbing shared by every CUDA primitive: turning `cudaError_t` into
/// `polo::cuda_error`, grid arithmetic, and runtime-to-compile-time dispatch.
///
/// Two error conventions, one per layer (docs/cuda.md):
/// - launchers (`launch_*` in cuda/polo/kernels/) return `cudaError_t`, never throw, never
///   synchronize; `POLO_CUDA_RETURN_IF_ERROR` chains them;
/// - backend implementations (cuda/polo/<prim>.cuh) wrap every runtime call and launcher in
///   `POLO_CUDA_TRY`, which throws `polo::cuda_error` naming the call, the file, the line and
///   CUDA's own error string.

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>

#include "polo/core/backend.hpp"
#include "polo/core/config.hpp"
#include "polo/core/error.hpp"

static_assert(std::is_same_v<cudaStream_t, polo::stream_t>,
              "polo::stream_t must be the same type as cudaStream_t");

namespace polo::detail {

/// Throws `polo::cuda_error` for a failed runtime call: "polo: CUDA error cudaErrorInvalidValue
/// (invalid argument) from `cudaMemcpyAsync(...)` at file.cuh:42". `code()` is the cudaError_t.
[[noreturn]] inline void throw_cuda(cudaError_t e, const char* what, const char* file, int line) {
  std::string msg = std::string("polo: CUDA error ") + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) +
                    ") from `" + what + "` at " + file + ":" + std::to_string(line);
  throw cuda_error(msg, static_cast<int>(e));
}

/// The stream of a backend tag, as the runtime spells it.
inline cudaStream_t stream_of(const cuda& be) noexcept { return be.stream; }

/// ceil(a / b) for positive b.
template <class I>
POLO_HD_INLINE constexpr I ceil_div(I a, I b) noexcept {
  return (a + b - 1) / b;
}

/// Number of blocks of `block` threads covering `n` work items, clamped to `max_blocks`
/// (for grid-stride loops) and at least 1.
inline unsigned grid_for(index_t n, unsigned block, index_t max_blocks = 0x7fffffff) noexcept {
  index_t g = ceil_div<index_t>(n > 0 ? n : 1, static_cast<index_t>(block));
  if (g > max_blocks) g = max_blocks;
  return static_cast<unsigned>(g);
}

/// Calls `f(std::integral_constant<bool, flag>{})`: lifts a runtime flag to a template
/// argument (two instantiations).
template <class F>
decltype(auto) dispatch_bool(bool flag, F&& f) {
  if (flag) return std::forward<F>(f)(std::integral_constant<bool, true>{});
  return std::forward<F>(f)(std::integral_constant<bool, false>{});
}

/// Calls `f(std::integral_constant<int, V>{})` for the widest V in `Vs...` (listed widest
/// first) that divides `n`; the last of `Vs` is the fallback. Use for vector widths:
/// `dispatch_width<4, 2, 1>(row_len, [&](auto v) { launch<decltype(v)::value>(...); })`.
template <int V, int... Vs, class F>
decltype(auto) dispatch_width(index_t n, F&& f) {
  if constexpr (sizeof...(Vs) == 0) {
    return std::forward<F>(f)(std::integral_constant<int, V>{});
  } else {
    if (n % V == 0) return std::forward<F>(f)(std::integral_constant<int, V>{});
    return dispatch_width<Vs...>(n, std::forward<F>(f));
  }
}

/// Uninitialized storage for `N` objects of a class type in `__shared__` memory (a class with
/// default member initializers cannot be declared `__shared__` directly).
template <class T, int N>
struct shared_array {
  alignas(T) unsigned char raw[sizeof(T) * N];
  POLO_HD_INLINE T& operator[](int i) { return reinterpret_cast<T*>(raw)[i]; }
};

/// True when `p` is aligned to `bytes`.
POLO_HD_INLINE bool is_aligned(const void* p, std::size_t bytes) noexcept {
  return reinterpret_cast<std::uintptr_t>(p) % bytes == 0;
}

}  // namespace polo::detail

/// Evaluates a CUDA runtime call (or a `launch_*` launcher) and throws `polo::cuda_error`
/// with the expression, file, line and CUDA's error string when it fails. Host code only.
#define POLO_CUDA_TRY(expr)                                                       \
  do {                                                                            \
    cudaError_t polo_cuda_try_err_ = (expr);                                      \
    if (polo_cuda_try_err_ != cudaSuccess)                                        \
      ::polo::detail::throw_cuda(polo_cuda_try_err_, #expr, __FILE__, __LINE__);  \
  } while (0)

/// In a launcher (a function returning cudaError_t): returns the error of `expr` if any.
#define POLO_CUDA_RETURN_IF_ERROR(expr)                \
  do {                                                 \
    cudaError_t polo_cuda_ret_err_ = (expr);           \
    if (polo_cuda_ret_err_ != cudaSuccess) return polo_cuda_ret_err_; \
  } while (0)
