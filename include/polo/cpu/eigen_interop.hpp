// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
#pragma once
/// \file
/// Zero-copy views of Eigen objects, and Eigen maps of polo views (for the CPU backend).
///
/// - `polo::cpu_view_of(v)` for an Eigen vector (any inner stride) gives a `view<T, 1>`;
/// - `polo::cpu_view_of(m)` for a **row-major** Eigen matrix, Map or Ref gives a `view<T, 2>`
///   `[rows, cols]`; a column-major matrix is rejected at compile time (polo's `[B, T]` data is
///   row-major, like PyTorch's), and a row-major one whose inner stride is not 1 throws.
/// - `detail::row_map(ptr, n)` is the Eigen array map the CPU kernels use over one row.

#include <Eigen/Core>
#include <type_traits>

#include "polo/core/error.hpp"
#include "polo/core/view.hpp"

namespace polo {

/// View of an Eigen vector expression with direct access (Matrix, Map, Ref, Block).
template <class Derived>
  requires(Derived::IsVectorAtCompileTime == 1)
auto cpu_view_of(Eigen::DenseBase<Derived>& v) {
  using Scalar = typename Derived::Scalar;
  auto& d = v.derived();
  return view<Scalar, 1, host_space>{d.data(), static_cast<index_t>(d.size()),
                                     static_cast<index_t>(d.innerStride())};
}
template <class Derived>
  requires(Derived::IsVectorAtCompileTime == 1)
auto cpu_view_of(const Eigen::DenseBase<Derived>& v) {
  using Scalar = typename Derived::Scalar;
  const auto& d = v.derived();
  return view<const Scalar, 1, host_space>{d.data(), static_cast<index_t>(d.size()),
                                           static_cast<index_t>(d.innerStride())};
}

/// View `[rows, cols]` of a row-major Eigen matrix with direct access.
template <class Derived>
  requires(Derived::IsVectorAtCompileTime == 0)
auto cpu_view_of(Eigen::DenseBase<Derived>& m) {
  static_assert(Derived::IsRowMajor,
                "polo::cpu_view_of: [B,T] data must be row-major; use "
                "Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>");
  using Scalar = typename Derived::Scalar;
  auto& d = m.derived();
  if (d.innerStride() != 1)
    detail::throw_shape("cpu_view_of", "m", "inner stride " + std::to_string(d.innerStride()),
                        "a contiguous last dimension (inner stride 1)");
  return view<Scalar, 2, host_space>{d.data(), static_cast<index_t>(d.rows()),
                                     static_cast<index_t>(d.cols()),
                                     static_cast<index_t>(d.outerStride())};
}
template <class Derived>
  requires(Derived::IsVectorAtCompileTime == 0)
auto cpu_view_of(const Eigen::DenseBase<Derived>& m) {
  static_assert(Derived::IsRowMajor,
                "polo::cpu_view_of: [B,T] data must be row-major; use "
                "Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>");
  using Scalar = typename Derived::Scalar;
  const auto& d = m.derived();
  if (d.innerStride() != 1)
    detail::throw_shape("cpu_view_of", "m", "inner stride " + std::to_string(d.innerStride()),
                        "a contiguous last dimension (inner stride 1)");
  return view<const Scalar, 2, host_space>{d.data(), static_cast<index_t>(d.rows()),
                                           static_cast<index_t>(d.cols()),
                                           static_cast<index_t>(d.outerStride())};
}

namespace detail {
/// Eigen array map over n contiguous elements (one row of a token tensor).
template <class T>
using row_array_map = Eigen::Map<Eigen::Array<std::remove_const_t<T>, Eigen::Dynamic, 1>, Eigen::Unaligned>;
template <class T>
using const_row_array_map =
    Eigen::Map<const Eigen::Array<std::remove_const_t<T>, Eigen::Dynamic, 1>, Eigen::Unaligned>;
}  // namespace detail

}  // namespace polo
