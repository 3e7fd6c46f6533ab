// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
#pragma once
/// \file
/// CUDA implementation of <polo/value_loss.hpp>: the same per-token term
/// (`detail::value_loss_term`, computed in the input type where the peers round), the same
/// aggregation weights, statistics, errors and messages as the CPU backend; sums in double
/// (rank-ordered within a row, Neumaier across rows in a fixed tree), so results agree with
/// the CPU to rounding, are bitwise identical run to run, and padded == packed bitwise.
///
/// Synchronization: value_loss returns its statistics, so it synchronizes the tag's stream
/// once, after the statistics pass (which also checks every valid input and packed offsets);
/// it then throws (nothing written) or enqueues the gradient write and returns without
/// waiting. Scratch: `value_loss_workspace_bytes` (56 bytes per row).

#include <cuda_runtime.h>

#include <cstddef>

#include "polo/aggregation.hpp"
#include "polo/core/backend.hpp"
#include "polo/core/error.hpp"
#include "polo/core/layout.hpp"
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
  sp.take<kernels::offsets_check>(1);
  sp.take<kernels::value_loss_status>(1);
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
    p.scale = norm.scale;
    p.rows = sp.take<kernels::value_loss_row>(B > 0 ? B : 1);
    p.check = sp.take<kernels::offsets_check>(1);
    p.status = sp.take<kernels::value_loss_status>(1);
    POLO_CUDA_TRY(kernels::launch_value_loss_stats(p, stream_of(be)));

    // The one synchronization: counts, sums and checks back to the host.
    kernels::value_loss_status hs;
    read_back(be, &hs, p.status, sizeof hs);
    throw_status(hs.offsets);
    if (hs.bad_arg >= 0) {
      static constexpr const char* args[3] = {"values", "old_values", "returns"};
      throw_nonfinite(fn, args[hs.bad_arg], hs.bad, hs.bad_value, "");
    }

    value_loss_stats st;
    st.tokens = hs.tokens;
    st.sequences = hs.sequences;
    const double divisor = aggregation_divisor(c.agg, norm, st.tokens, st.sequences);
    const bool per_seq = c.agg == aggregation::seq_mean_token_mean || c.agg == aggregation::seq_mean_token_sum;
    st.parts = {hs.num.value(), per_seq ? st.sequences : st.tokens};
    st.clipped = {hs.clipped.value(), st.tokens};
    st.squared_error = {hs.sq.value(), st.tokens};
    st.loss = divisor > 0.0 ? c.coef * norm.scale * st.parts.sum / divisor : 0.0;
    if (write_grad) {
      p.divisor = divisor;
      POLO_CUDA_TRY(kernels::launch_value_loss_grad(p, stream_of(be)));
    }
    return st;
  }
};

}  // namespace polo::detail
