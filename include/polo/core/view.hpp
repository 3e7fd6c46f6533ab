// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
#pragma once
/// \file
/// Non-owning views over the caller's buffers: the only way data enters polo. A view is a
/// pointer, its extents and a stride in *elements* (DLPack and PyTorch convention), plus its
/// memory space as a type, so no entry point ever copies input or accepts memory its backend
/// cannot reach.
///
/// - `view<T, 1, Space>`: `n` elements `data[i * stride]` (any stride >= 1 for per-sequence
///   arrays; token tensors of the packed layout require stride 1).
/// - `view<T, 2, Space>`: a row-major `[rows, cols]` matrix; element (i, j) is
///   `data[i * row_stride + j]`. The last dimension is contiguous; `row_stride >= cols`, so a
///   slice of a wider buffer (a PyTorch `x[:, :T]`) is accepted without a copy.
///
/// Views are trivially copyable aggregates, usable in device code. A `view<T>` converts
/// implicitly to `view<const T>`.
///
/// Adapters: `view_of(std::vector&)`, `view_of(std::span)`, `view_of(ptr, n[, stride])`,
/// `matrix_view_of(std::vector&, rows, cols)`, `view_of(ptr, rows, cols[, row_stride])` for host
/// memory; `device_view_of(...)` for device pointers (cudaMalloc, torch CUDA tensors); Eigen
/// adapters live in <polo/cpu/eigen_interop.hpp>.

#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "polo/core/backend.hpp"
#include "polo/core/config.hpp"
#include "polo/core/error.hpp"

namespace polo {

template <class T, int Rank, class Space = host_space>
struct view;

/// One-dimensional strided view: `n` elements at `data[i * stride]`.
template <class T, class Space>
struct view<T, 1, Space> {
  using value_type = T;
  using memory_space = Space;
  static constexpr int rank = 1;

  T* data = nullptr;   ///< first element (may be null when n == 0)
  index_t n = 0;       ///< number of elements
  index_t stride = 1;  ///< distance between consecutive elements, in elements

  POLO_HD_INLINE T& operator()(index_t i) const { return data[i * stride]; }
  POLO_HD_INLINE T& operator[](index_t i) const { return data[i * stride]; }
  POLO_HD_INLINE index_t size() const { return n; }
  POLO_HD_INLINE bool empty() const { return n == 0; }
  /// True when the view points at nothing (an optional argument left out).
  POLO_HD_INLINE bool is_null() const { return data == nullptr; }

  // A template so that nvcc does not instantiate a (never used) conversion to the view's own
  // type when T is already const (warning #554).
  template <class U>
    requires(std::is_same_v<U, const T> && !std::is_const_v<T>)
  POLO_HD_INLINE operator view<U, 1, Space>() const  // NOLINT(google-explicit-constructor)
  {
    return {data, n, stride};
  }
  [[nodiscard]] std::string shape() const { return detail::shape_str({n}); }
};

/// Row-major matrix view `[rows, cols]`: element (i, j) at `data[i * row_stride + j]`.
template <class T, class Space>
struct view<T, 2, Space> {
  using value_type = T;
  using memory_space = Space;
  static constexpr int rank = 2;

  T* data = nullptr;       ///< element (0, 0)
  index_t rows = 0;        ///< first extent (B)
  index_t cols = 0;        ///< second extent (T), contiguous
  index_t row_stride = 0;  ///< distance between rows, in elements (>= cols)

  POLO_HD_INLINE T& operator()(index_t i, index_t j) const { return data[i * row_stride + j]; }
  /// Pointer to the first element of row i.
  POLO_HD_INLINE T* row(index_t i) const { return data + i * row_stride; }
  POLO_HD_INLINE index_t size() const { return rows * cols; }
  POLO_HD_INLINE bool empty() const { return rows == 0 || cols == 0; }
  POLO_HD_INLINE bool is_null() const { return data == nullptr; }

  // A template so that nvcc does not instantiate a (never used) conversion to the view's own
  // type when T is already const (warning #554).
  template <class U>
    requires(std::is_same_v<U, const T> && !std::is_const_v<T>)
  POLO_HD_INLINE operator view<U, 2, Space>() const  // NOLINT(google-explicit-constructor)
  {
    return {data, rows, cols, row_stride};
  }
  [[nodiscard]] std::string shape() const { return detail::shape_str({rows, cols}); }
};

template <class T, class Space = host_space>
using vector_view = view<T, 1, Space>;
template <class T, class Space = host_space>
using matrix_view = view<T, 2, Space>;

// ---------------------------------------------------------------------------------------------
// Host adapters
// ---------------------------------------------------------------------------------------------

/// View of a whole std::vector (host memory).
template <class T, class A>
view<T, 1, host_space> view_of(std::vector<T, A>& v) {
  return {v.data(), static_cast<index_t>(v.size()), 1};
}
template <class T, class A>
view<const T, 1, host_space> view_of(const std::vector<T, A>& v) {
  return {v.data(), static_cast<index_t>(v.size()), 1};
}
/// View of a std::span (host memory).
template <class T, std::size_t E>
view<T, 1, host_space> view_of(std::span<T, E> s) {
  return {s.data(), static_cast<index_t>(s.size()), 1};
}
/// View of `n` host elements `p[i * stride]`.
template <class T>
view<T, 1, host_space> view_of(T* p, index_t n, index_t stride = 1) {
  return {p, n, stride};
}
/// Row-major `[rows, cols]` view of host memory with the given row stride (default: dense).
template <class T>
view<T, 2, host_space> view_of(T* p, index_t rows, index_t cols, index_t row_stride) {
  return {p, rows, cols, row_stride};
}
/// Dense row-major `[rows, cols]` view of a std::vector; throws shape_error unless
/// `v.size() == rows * cols`.
template <class V>
auto matrix_view_of(V& v, index_t rows, index_t cols) {
  using T = std::remove_reference_t<decltype(*v.data())>;
  if (rows < 0 || cols < 0 || static_cast<index_t>(v.size()) != rows * cols)
    detail::throw_shape("matrix_view_of", "v", detail::shape_str({static_cast<index_t>(v.size())}),
                        "rows * cols = " + std::to_string(rows) + " * " + std::to_string(cols) +
                            " elements");
  return view<T, 2, host_space>{v.data(), rows, cols, cols};
}

// ---------------------------------------------------------------------------------------------
// Device adapters (no CUDA header needed: the caller asserts the pointer is device memory)
// ---------------------------------------------------------------------------------------------

/// View of `n` elements of device memory (cudaMalloc, torch CUDA `data_ptr()`).
template <class T>
view<T, 1, device_space> device_view_of(T* p, index_t n, index_t stride = 1) {
  return {p, n, stride};
}
/// Row-major `[rows, cols]` view of device memory.
template <class T>
view<T, 2, device_space> device_view_of(T* p, index_t rows, index_t cols, index_t row_stride) {
  return {p, rows, cols, row_stride};
}

namespace detail {

/// Checks the structural invariants every view must satisfy (non-negative extents, strides
/// that keep rows disjoint, a pointer when non-empty).
template <class T, class Space>
void check_view(const char* fn, const char* arg, const view<T, 1, Space>& v) {
  if (v.n < 0) throw_shape(fn, arg, v.shape(), "a non-negative extent");
  if (v.n > 0 && v.data == nullptr) throw_shape(fn, arg, v.shape(), "a non-null pointer");
  if (v.n > 1 && v.stride < 1)
    throw_shape(fn, arg, v.shape() + " with stride " + std::to_string(v.stride), "stride >= 1");
}
template <class T, class Space>
void check_view(const char* fn, const char* arg, const view<T, 2, Space>& v) {
  if (v.rows < 0 || v.cols < 0) throw_shape(fn, arg, v.shape(), "non-negative extents");
  if (!v.empty() && v.data == nullptr) throw_shape(fn, arg, v.shape(), "a non-null pointer");
  if (v.rows > 1 && v.row_stride < v.cols)
    throw_shape(fn, arg, v.shape() + " with row stride " + std::to_string(v.row_stride),
                "row stride >= cols (rows must not overlap)");
}

/// Throws unless `v` has exactly `n` elements.
template <class T, class Space>
void require_extent(const char* fn, const char* arg, const view<T, 1, Space>& v, index_t n,
                    const char* why) {
  check_view(fn, arg, v);
  if (v.n != n) throw_shape(fn, arg, v.shape(), shape_str({n}) + " (" + why + ")");
}
/// Throws unless `v` is `[rows, cols]`.
template <class T, class Space>
void require_extent(const char* fn, const char* arg, const view<T, 2, Space>& v, index_t rows,
                    index_t cols, const char* why) {
  check_view(fn, arg, v);
  if (v.rows != rows || v.cols != cols)
    throw_shape(fn, arg, v.shape(), shape_str({rows, cols}) + " (" + why + ")");
}

}  // namespace detail
}  // namespace polo
