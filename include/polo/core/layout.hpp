// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
#pragma once
/// \file
/// The two first-class layouts of a batch of B sequences of tokens.
///
/// **padded** (`polo::padded<Mask, Space>`): every per-token tensor is a row-major `[B, T]`
/// `view<T, 2, Space>`; token (i, t) is valid when `mask(i, t) != 0`. Left padding, right
/// padding and interior masked spans (multi-turn tool output) are all just mask patterns. A
/// null mask means every token is valid. Each tensor may have its own row stride.
///
/// **packed** (`polo::packed<Mask, Offset, Space>`): all tokens back to back, every per-token
/// tensor is a contiguous `[N]` `view<T, 1, Space>`, and sequence i occupies tokens
/// `[offsets[i], offsets[i+1])` (flash-attention's `cu_seqlens`, flashinfer's `indptr`).
/// `offsets` has B+1 entries, starts at 0, never decreases and ends at N. An optional `[N]`
/// mask marks interior spans that do not count (tool output inside a packed sequence); a null
/// mask means every token is valid.
///
/// Primitives are written once against the small interface both layouts share:
/// `num_seqs()`, `row_len(i)`, `row_ptr(tensor, i)` and `mask_row(i)`; a packed batch and the
/// same batch padded give bitwise identical results.
///
/// Mask types: any arithmetic type; nonzero means valid. `uint8_t` (the default) moves 4x
/// fewer bytes than a float mask, which matters for these bandwidth-bound kernels.

#include <concepts>
#include <cstdint>
#include <string>
#include <type_traits>

#include "polo/core/backend.hpp"
#include "polo/core/error.hpp"
#include "polo/core/view.hpp"

namespace polo {

/// Padded `[B, T]` layout with an optional `[B, T]` token mask.
template <class Mask = std::uint8_t, class Space = host_space>
struct padded {
  using mask_type = Mask;
  using memory_space = Space;
  /// Type of a per-token tensor in this layout: `[B, T]`.
  template <class T>
  using tensor = view<T, 2, Space>;
  static constexpr bool is_packed = false;
  static constexpr const char* name = "padded";

  index_t batch = 0;                  ///< B
  index_t seq_len = 0;                ///< T
  view<const Mask, 2, Space> mask{};  ///< [B, T]; null means every token is valid

  padded() = default;
  /// Layout given by a `[B, T]` mask.
  explicit padded(view<const Mask, 2, Space> m) : batch(m.rows), seq_len(m.cols), mask(m) {}
  /// B sequences of T tokens, all valid.
  padded(index_t b, index_t t) : batch(b), seq_len(t) {}

  POLO_HD_INLINE index_t num_seqs() const { return batch; }
  POLO_HD_INLINE index_t row_len(index_t) const { return seq_len; }
  template <class T>
  POLO_HD_INLINE T* row_ptr(const tensor<T>& x, index_t i) const {
    return x.data + i * x.row_stride;
  }
  /// Mask entries of row i, or null when every token is valid.
  POLO_HD_INLINE const Mask* mask_row(index_t i) const {
    return mask.data ? mask.data + i * mask.row_stride : nullptr;
  }

  /// Throws shape_error if the layout itself is malformed.
  void check(const char* fn) const {
    if (batch < 0 || seq_len < 0)
      detail::throw_shape(fn, "layout", detail::shape_str({batch, seq_len}), "B >= 0 and T >= 0");
    if (!mask.is_null()) detail::require_extent(fn, "mask", mask, batch, seq_len, "the layout's [B,T]");
  }
  /// Throws shape_error unless `x` is a `[B, T]` token tensor of this layout.
  template <class T>
  void check_tensor(const char* fn, const char* arg, const tensor<T>& x) const {
    detail::require_extent(fn, arg, x, batch, seq_len, "the layout's [B,T]");
  }
  [[nodiscard]] std::string shape() const { return detail::shape_str({batch, seq_len}); }
};

/// Packed layout: `[N]` tokens, `offsets[B+1]`, optional `[N]` mask.
template <class Mask = std::uint8_t, class Offset = std::int64_t, class Space = host_space>
struct packed {
  static_assert(std::is_integral_v<Offset>, "polo::packed: Offset must be an integer type");
  using mask_type = Mask;
  using offset_type = Offset;
  using memory_space = Space;
  template <class T>
  using tensor = view<T, 1, Space>;
  static constexpr bool is_packed = true;
  static constexpr const char* name = "packed";

  view<const Offset, 1, Space> offsets{};  ///< [B+1]: sequence i is [offsets[i], offsets[i+1])
  index_t tokens = 0;                      ///< N = offsets[B]
  view<const Mask, 1, Space> mask{};       ///< [N]; null means every token is valid

  packed() = default;
  packed(view<const Offset, 1, Space> off, index_t n, view<const Mask, 1, Space> m = {})
      : offsets(off), tokens(n), mask(m) {}

  POLO_HD_INLINE index_t num_seqs() const { return offsets.n > 0 ? offsets.n - 1 : 0; }
  POLO_HD_INLINE index_t row_begin(index_t i) const { return static_cast<index_t>(offsets(i)); }
  POLO_HD_INLINE index_t row_len(index_t i) const {
    return static_cast<index_t>(offsets(i + 1)) - static_cast<index_t>(offsets(i));
  }
  template <class T>
  POLO_HD_INLINE T* row_ptr(const tensor<T>& x, index_t i) const {
    return x.data + row_begin(i);
  }
  POLO_HD_INLINE const Mask* mask_row(index_t i) const {
    return mask.data ? mask.data + row_begin(i) : nullptr;
  }

  void check(const char* fn) const {
    detail::check_view(fn, "offsets", offsets);
    if (offsets.n < 1)
      detail::throw_shape(fn, "offsets", offsets.shape(), "[B+1] with at least one entry (offsets[0] = 0)");
    if (tokens < 0) detail::throw_shape(fn, "layout", detail::shape_str({tokens}), "N >= 0 tokens");
    if (!mask.is_null()) {
      detail::require_extent(fn, "mask", mask, tokens, "the layout's [N] tokens");
      if (mask.stride != 1 && mask.n > 1)
        detail::throw_shape(fn, "mask", mask.shape() + " with stride " + std::to_string(mask.stride),
                            "a contiguous [N] mask (stride 1)");
    }
  }
  template <class T>
  void check_tensor(const char* fn, const char* arg, const tensor<T>& x) const {
    detail::require_extent(fn, arg, x, tokens, "the layout's [N] tokens");
    if (x.stride != 1 && x.n > 1)
      detail::throw_shape(fn, arg, x.shape() + " with stride " + std::to_string(x.stride),
                          "a contiguous [N] tensor (stride 1) in the packed layout");
  }
  /// Host-side check of the offsets' values: 0 first, non-decreasing, N last. Only for host
  /// memory; the CUDA backend checks on the device.
  void check_offsets_host(const char* fn) const
    requires std::is_same_v<Space, host_space>
  {
    if (offsets(0) != 0)
      detail::throw_value(fn, "offsets", "starts at " + std::to_string(static_cast<long long>(offsets(0))) +
                                             "; expected offsets[0] = 0");
    for (index_t i = 0; i + 1 < offsets.n; ++i)
      if (offsets(i + 1) < offsets(i))
        detail::throw_value(fn, "offsets",
                            "decreases at index " + std::to_string(i + 1) + " (" +
                                std::to_string(static_cast<long long>(offsets(i))) + " -> " +
                                std::to_string(static_cast<long long>(offsets(i + 1))) +
                                "); expected non-decreasing offsets");
    if (static_cast<index_t>(offsets(offsets.n - 1)) != tokens)
      detail::throw_value(fn, "offsets",
                          "ends at " + std::to_string(static_cast<long long>(offsets(offsets.n - 1))) +
                              "; expected offsets[B] = N = " + std::to_string(tokens));
  }
  [[nodiscard]] std::string shape() const { return "packed " + detail::shape_str({tokens}) + " in " + std::to_string(num_seqs()) + " sequences"; }
};

template <class L>
struct is_layout : std::false_type {};
template <class M, class S>
struct is_layout<padded<M, S>> : std::true_type {};
template <class M, class O, class S>
struct is_layout<packed<M, O, S>> : std::true_type {};

/// One of polo's two token layouts.
template <class L>
concept TokenLayout = is_layout<std::remove_cvref_t<L>>::value;

/// Per-token tensor type of layout L with element type T.
template <class L, class T>
using token_tensor = typename std::remove_cvref_t<L>::template tensor<T>;

}  // namespace polo
