// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
#pragma once
/// \file
/// CUDA implementation of <polo/value_loss.hpp>: the same per-token term
/// (`detail::value_loss_term`, computed in the input type where the peers round), the same
/// aggregation weights, statistics, errors and messages as the CPU backend; sums in double
/// (position-ordered within a row, Neumaier across rows in a fixed tree), so results agree with
/// the CPU to rounding, are bitwise identical run to run, and padded == packed bitwise.
///
/// Synchronization: value_loss returns its statistics. By default it synchronizes the tag's
/// stream once, after the statistics pass (which also checks every valid input and packed
/// offsets); it then throws (nothing written) or enqueues the gradient write and returns
/// without waiting. With `be.result` and `be.deferred_errors` set it never synchronizes
/// (detail/async_result.cuh): the statistics go to `be.result`, errors to
/// `be.deferred_errors`, and the gradient kernel writes nothing after an error (it reads the
/// divisor on the device). Scratch: `value_loss_workspace_bytes`.

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
#include "polo/kernels/value_loss.cuh"
#include "polo/value_loss.hpp"

namespace polo {

/// Bytes of scratch that `value_loss` takes on the CUDA backend for this layout. Host-only.
template <TokenLayout L>
std::size_t value_loss_workspace_bytes(const cuda&, const L& layout) {
  detail::scratch_plan sp;
  const index_t B = layout.num_seqs();
  sp.take<kernels::value_loss_row>(B > 0 ? B : 1);
  sp.take<index_t>(B > 0 ? B : 1);
  sp.take<kernels::value_loss_fold>(kernels::fold_blocks(B, kernels::value_loss_threads));
  sp.take<kernels::offsets_check>(1);
  sp.take<double>(1);
  sp.take<detail::result_slot<value_loss_stats>>(1);
  return sp.bytes();
}

}  // namespace polo

namespace polo::detail {

template <>
struct backend_impl<cuda, value_loss_tag> {
  template <class T, TokenLayout L>
  static value_loss_stats value_loss(const cuda& be, const L& layout, layout_tensor<L, const T> v,
                                     layout_tensor<L, const T> vo, layout_tensor<L, const T> R,
                                     layout_tensor<L, T> grad, bool write_grad, const value_loss_config& c,
                                     const normalizers& norm) {
    constexpr const char* fn = "value_loss";
    const bool async = async_result_mode(be, fn);
    const index_t B = layout.num_seqs();
    scratch ws(be, value_loss_workspace_bytes(be, layout), fn);
    scratch_plan sp(ws.data());
    kernels::value_loss_params<T, L> p;
    p.layout = layout;
    p.v = v;
    p.vo = vo;
    p.ret = R;
    p.grad = grad;
    p.cfg = c;
    p.norm = norm;
    p.rows = sp.take<kernels::value_loss_row>(B > 0 ? B : 1);
    p.long_rows = sp.take<index_t>(B > 0 ? B : 1);
    p.chunks = sp.take<kernels::value_loss_fold>(kernels::fold_blocks(B, kernels::value_loss_threads));
    p.check = sp.take<kernels::offsets_check>(1);
    p.divisor = sp.take<double>(1);
    p.out = make_result_target(be, sp.take<result_slot<value_loss_stats>>(1), async);
    POLO_CUDA_TRY(kernels::launch_value_loss_stats(p, stream_of(be)));
    // Synchronous: the one read-back, which throws before anything is written.
    const value_loss_stats st = finish(be, p.out);
    if (write_grad) POLO_CUDA_TRY(kernels::launch_value_loss_grad(p, stream_of(be)));
    return st;
  }
};

}  // namespace polo::detail
