// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
#pragma once
/// \file
/// CUDA implementation of <polo/whiten.hpp> (`masked_moments`, `whiten`): the same statistics
/// as the CPU backend (per-row two-pass moments in double, rows merged with Chan's update; only
/// the merge order differs, a fixed tree), the same per-token map, errors and messages.
///
/// Synchronization: both entries return host values, so each synchronizes the tag's stream
/// once, after the statistics, to read them back with the data checks (non-finite valid
/// inputs, packed offsets); `whiten` then throws (nothing written) or enqueues the write and
/// returns without waiting for it. Scratch: `whiten_workspace_bytes` (32 bytes per row).
/// Deterministic: bitwise identical run to run, and packed == padded (detail/row_reduce.cuh).

#include <cuda_runtime.h>

#include <cstddef>

#include "polo/aggregation.hpp"
#include "polo/core/backend.hpp"
#include "polo/core/error.hpp"
#include "polo/core/layout.hpp"
#include "polo/detail/launch.cuh"
#include "polo/detail/status.cuh"
#include "polo/detail/workspace.cuh"
#include "polo/kernels/whiten.cuh"
#include "polo/whiten.hpp"

namespace polo::detail {

struct whiten_regions {
  kernels::whiten_row* rows = nullptr;
  kernels::offsets_check* check = nullptr;
  kernels::whiten_status* status = nullptr;
};

inline whiten_regions take_whiten_regions(scratch_plan& sp, index_t B) {
  whiten_regions r;
  r.rows = sp.take<kernels::whiten_row>(B > 0 ? B : 1);
  r.check = sp.take<kernels::offsets_check>(1);
  r.status = sp.take<kernels::whiten_status>(1);
  return r;
}

}  // namespace polo::detail

namespace polo {

/// Bytes of scratch that `whiten` and `masked_moments` take on the CUDA backend for this
/// layout (the size a caller-provided `polo::cuda::workspace` needs). Host-only.
template <TokenLayout L>
std::size_t whiten_workspace_bytes(const cuda&, const L& layout) {
  detail::scratch_plan sp;
  detail::take_whiten_regions(sp, layout.num_seqs());
  return sp.bytes();
}

}  // namespace polo

namespace polo::detail {

template <>
struct backend_impl<cuda, whiten_tag> {
  /// Statistics of the valid tokens of x, checked; one synchronization. Throws what the CPU
  /// backend throws for the same data (offsets, then the first non-finite valid value).
  template <class T, TokenLayout L>
  static moments checked_moments(const cuda& be, const L& layout, layout_tensor<L, const T> x, const char* fn,
                                 int entry) {
    scratch ws(be, whiten_workspace_bytes(be, layout), fn);
    scratch_plan sp(ws.data());
    const whiten_regions r = take_whiten_regions(sp, layout.num_seqs());
    kernels::whiten_stats_params<T, L> p;
    p.layout = layout;
    p.x = x;
    p.entry = entry;
    p.rows = r.rows;
    p.check = r.check;
    p.status = r.status;
    POLO_CUDA_TRY(kernels::launch_whiten_stats(p, stream_of(be)));
    kernels::whiten_status hs;
    read_back(be, &hs, r.status, sizeof hs);
    throw_status(hs.offsets);
    if (hs.bad != LLONG_MAX) throw_nonfinite(fn, "x", hs.bad, hs.bad_value, "");
    return hs.local;
  }

  template <class T, TokenLayout L>
  static moments masked_moments(const cuda& be, const L& layout, layout_tensor<L, const T> x) {
    return checked_moments<T>(be, layout, x, "masked_moments", entry_masked_moments);
  }

  /// Enqueues the write of the whitened tensor given the coefficients (no synchronization).
  template <class T, TokenLayout L>
  static void apply(const cuda& be, const L& layout, layout_tensor<L, const T> x, layout_tensor<L, T> out,
                    const whiten_coeffs& w, const whiten_config& c) {
    kernels::whiten_apply_params<T, L> p;
    p.layout = layout;
    p.x = x;
    p.out = out;
    p.w = w;
    p.cfg = c;
    POLO_CUDA_TRY(kernels::launch_whiten_apply(p, stream_of(be)));
  }

  template <class T, TokenLayout L>
  static whiten_stats whiten(const cuda& be, const L& layout, layout_tensor<L, const T> x, layout_tensor<L, T> out,
                             const moments* batch, const whiten_config& c) {
    constexpr const char* fn = "whiten";
    whiten_stats st;
    st.local = checked_moments<T>(be, layout, x, fn, entry_whiten);
    st.used = batch ? *batch : st.local;
    const whiten_coeffs w = whiten_coefficients(st.used, c);
    if (w.degenerate && c.degenerate == whiten_degenerate::error) throw_degenerate(fn, st.used, c);
    st.mean = w.mean;
    st.inv_scale = w.inv_scale;
    st.degenerate = w.degenerate;
    apply<T>(be, layout, x, out, w, c);
    return st;
  }
};

}  // namespace polo::detail
