// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
#pragma once
/// \file
/// CUDA implementation of <polo/whiten.hpp> (`masked_moments`, `whiten`): the same statistics
/// as the CPU backend to rounding (moments in double: one pass per row with sums shifted by the
/// row's first valid value, added in fixed trees, then the rows merged with Chan's update in a
/// fixed tree, where the CPU takes two passes per row), the
/// same per-token map, errors and messages.
///
/// Synchronization: both entries return host values. By default each synchronizes the tag's
/// stream once, after the statistics, to read them back with the data checks (non-finite
/// valid inputs, packed offsets, a degenerate batch under whiten_degenerate::error); `whiten`
/// then throws (nothing written) or enqueues the write and returns without waiting for it.
/// With `be.result` and `be.deferred_errors` set they never synchronize
/// (detail/async_result.cuh): the statistics go to `be.result` on the device, errors to
/// `be.deferred_errors`, and the write kernel writes nothing after an error. Scratch:
/// `whiten_workspace_bytes`. Deterministic: bitwise identical run to run, and packed == padded
/// (kernels/whiten.cuh).

#include <cuda_runtime.h>

#include <cstddef>

#include "polo/aggregation.hpp"
#include "polo/core/backend.hpp"
#include "polo/core/error.hpp"
#include "polo/core/layout.hpp"
#include "polo/detail/async_result.cuh"
#include "polo/detail/launch.cuh"
#include "polo/detail/status.cuh"
#include "polo/detail/workspace.cuh"
#include "polo/kernels/whiten.cuh"
#include "polo/whiten.hpp"

namespace polo::detail {

struct whiten_regions {
  kernels::whiten_row* rows = nullptr;
  index_t* long_rows = nullptr;
  kernels::whiten_row* chunks = nullptr;
  kernels::offsets_check* check = nullptr;
  result_slot<whiten_stats>* ws = nullptr;
  result_slot<moments>* ms = nullptr;
};

inline whiten_regions take_whiten_regions(scratch_plan& sp, index_t B) {
  whiten_regions r;
  r.rows = sp.take<kernels::whiten_row>(B > 0 ? B : 1);
  r.long_rows = sp.take<index_t>(B > 0 ? B : 1);
  r.chunks = sp.take<kernels::whiten_row>(kernels::fold_blocks(B, kernels::whiten_threads));
  r.check = sp.take<kernels::offsets_check>(1);
  r.ws = sp.take<result_slot<whiten_stats>>(1);
  r.ms = sp.take<result_slot<moments>>(1);
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
  template <class T, TokenLayout L>
  static moments masked_moments(const cuda& be, const L& layout, layout_tensor<L, const T> x) {
    constexpr const char* fn = "masked_moments";
    const bool async = async_result_mode(be, fn);
    scratch ws(be, whiten_workspace_bytes(be, layout), fn);
    scratch_plan sp(ws.data());
    const whiten_regions r = take_whiten_regions(sp, layout.num_seqs());
    kernels::whiten_stats_params<T, L> p;
    p.layout = layout;
    p.x = x;
    p.entry = entry_masked_moments;
    p.rows = r.rows;
    p.long_rows = r.long_rows;
    p.chunks = r.chunks;
    p.check = r.check;
    p.ms = make_result_target(be, r.ms, async);
    POLO_CUDA_TRY(kernels::launch_whiten_stats(p, stream_of(be)));
    return finish(be, p.ms);
  }

  template <class T, TokenLayout L>
  static whiten_stats whiten(const cuda& be, const L& layout, layout_tensor<L, const T> x, layout_tensor<L, T> out,
                             const moments* batch, const whiten_config& c) {
    constexpr const char* fn = "whiten";
    const bool async = async_result_mode(be, fn);
    scratch ws(be, whiten_workspace_bytes(be, layout), fn);
    scratch_plan sp(ws.data());
    const whiten_regions r = take_whiten_regions(sp, layout.num_seqs());
    kernels::whiten_stats_params<T, L> p;
    p.layout = layout;
    p.x = x;
    p.entry = entry_whiten;
    p.rows = r.rows;
    p.long_rows = r.long_rows;
    p.chunks = r.chunks;
    p.check = r.check;
    p.cfg = c;
    p.has_batch = batch != nullptr;
    if (batch != nullptr) p.batch = *batch;
    p.ws = make_result_target(be, r.ws, async);
    POLO_CUDA_TRY(kernels::launch_whiten_stats(p, stream_of(be)));
    // Synchronous: the one read-back, which throws before anything is written.
    const whiten_stats st = finish(be, p.ws);
    kernels::whiten_apply_params<T, L> ap;
    ap.layout = layout;
    ap.x = x;
    ap.out = out;
    ap.slot = r.ws;
    ap.cfg = c;
    POLO_CUDA_TRY(kernels::launch_whiten_apply(ap, stream_of(be)));
    return st;
  }
};

}  // namespace polo::detail
