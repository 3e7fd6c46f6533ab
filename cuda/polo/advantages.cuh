// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
#pragma once
/// \file
/// CUDA implementation of <polo/advantages.hpp>: `detail::backend_impl<polo::cuda,
/// detail::advantages_tag>`, plus the scratch-size queries of its two entry points. The public
/// entries (`polo::group_advantages`, `polo::broadcast_to_tokens`) have already checked every
/// shape and option on the host; this layer checks the data on the device, then writes.
///
/// Semantics are the CPU backend's, element for element (the same formulas, statistics in
/// double, exact zero-variance detection, the same error types and messages); only the order
/// of long sums differs (fixed warp and block trees instead of one loop), so results agree
/// with the CPU backend to rounding and are bitwise identical from run to run.
///
/// Synchronization (docs/cuda.md):
/// - `group_advantages` returns its `group_stats` by value. By default it synchronizes the
///   tag's stream exactly once, after the statistics pass, to read back the statistics and the
///   data-dependent checks (non-finite scores, groups of one); it throws or enqueues the write,
///   and returns without waiting for that write. With `be.result` and `be.deferred_errors` set
///   it never synchronizes (detail/async_result.cuh): the statistics go to `be.result` on the
///   device, a data error to `be.deferred_errors`, and nothing is written after an error.
/// - `broadcast_to_tokens` synchronizes once (after its check kernel) when
///   `polo::cuda::deferred_errors` is null, so that it can throw before writing; with
///   `deferred_errors` set it never synchronizes: a failed check makes the write kernel write
///   nothing and the error waits in the status for `polo::cuda_check(be)`.
/// - The combined call (with a layout) checks packed offsets on the device before anything
///   is written (their error comes first, as on the CPU), then runs both steps. For B <= 2048
///   (kernels::fused_max) the statistics, the advantages and the broadcast's check are one
///   kernel and the broadcast a second: one synchronization in all (it reads the first error
///   of both steps); above, one synchronization plus the broadcast's. None with `be.result`
///   and `be.deferred_errors`. There the first kernel lets the broadcast start once the
///   advantages and the gate are final, before it folds the statistics.

#include <cuda_runtime.h>

#include <climits>
#include <cstddef>
#include <string>
#include <type_traits>

#include "polo/advantages.hpp"
#include "polo/core/backend.hpp"
#include "polo/core/error.hpp"
#include "polo/core/layout.hpp"
#include "polo/core/view.hpp"
#include "polo/detail/async_result.cuh"
#include "polo/detail/launch.cuh"
#include "polo/detail/status.cuh"
#include "polo/detail/workspace.cuh"
#include "polo/kernels/advantages.cuh"

namespace polo::detail {

/// Scratch regions of group_advantages, in the order they are taken.
struct advantages_regions {
  kernels::advantages_status* status = nullptr;  // [1]
  kernels::group_info* info = nullptr;           // [max groups]
  kernels::batch_partial* partials = nullptr;    // [stats blocks]
  neumaier_sum* sum_partials = nullptr;          // [advantage blocks]
  double* adv = nullptr;                         // [B] advantages (as T) before the checks pass
  result_slot<group_stats>* slot = nullptr;      // [1] the statistics and the first data error
};

inline advantages_regions take_advantages_regions(scratch_plan& sp, index_t B, index_t max_groups) {
  advantages_regions r;
  r.status = sp.take<kernels::advantages_status>(1);
  r.info = sp.take<kernels::group_info>(max_groups);
  r.partials = sp.take<kernels::batch_partial>(kernels::stats_blocks(max_groups));
  r.sum_partials = sp.take<neumaier_sum>(kernels::advantage_blocks(B));
  r.adv = sp.take<double>(B);
  r.slot = sp.take<result_slot<group_stats>>(1);
  return r;
}

/// Scratch regions of the segmentation of labelled groups (into p's pointers).
template <class Label>
void take_segment_regions(scratch_plan& sp, kernels::segment_labels_params<Label>& p, int B) {
  using K = kernels::label_key_t<Label>;
  p.order = sp.take<int>(B);
  p.seg = sp.take<int>(B);
  p.starts = sp.take<int>(B + 1);
  p.n_groups = sp.take<int>(1);
  if (B > kernels::segment_small_max) {
    p.keys_in = sp.take<K>(B);
    p.keys_out = sp.take<K>(B);
    p.idx_in = sp.take<int>(B);
    p.flags = sp.take<int>(B);
    p.temp_bytes = kernels::segment_temp_bytes<Label>(B);
    p.temp = sp.take<unsigned char>(static_cast<index_t>(p.temp_bytes));
  }
}

template <class G>
struct is_labelled_groups : std::false_type {};
template <class L, class S>
struct is_labelled_groups<labelled_groups<L, S>> : std::true_type {};

/// Scratch bytes of group_advantages for B scores.
template <class Groups>
std::size_t group_advantages_scratch_bytes(index_t B, const Groups& groups) {
  if (B <= 0) return 0;
  scratch_plan sp;
  if constexpr (is_labelled_groups<Groups>::value) {
    using Label = typename std::remove_cvref_t<decltype(groups.labels)>::value_type;
    kernels::segment_labels_params<std::remove_const_t<Label>> p;
    take_segment_regions(sp, p, static_cast<int>(B > INT_MAX ? INT_MAX : B));
    take_advantages_regions(sp, B, B);
  } else {
    take_advantages_regions(sp, B, groups.size >= 1 ? B / groups.size : 0);
  }
  return sp.bytes();
}

}  // namespace polo::detail

namespace polo {

/// Bytes of scratch that `group_advantages(be, scores [B], groups, advantages, cfg)` takes on
/// the CUDA backend: the size a caller-provided `polo::cuda::workspace` needs (0 when B = 0).
/// About 80 bytes per group plus 8 per sequence for contiguous groups; labelled groups about
/// 130 bytes per sequence plus CUB's sort storage. Host-only, launches nothing.
template <class Groups>
std::size_t group_advantages_workspace_bytes(const cuda&, index_t B, const Groups& groups) {
  return detail::group_advantages_scratch_bytes(B, groups);
}

/// Bytes of scratch that `broadcast_to_tokens(be, values, layout, out)` takes on the CUDA
/// backend (a small fixed block for the device-side checks). Host-only.
template <TokenLayout L>
std::size_t broadcast_to_tokens_workspace_bytes(const cuda&, const L&) {
  detail::scratch_plan sp;
  sp.take<kernels::broadcast_check>(1);
  return sp.bytes();
}

/// Bytes of scratch of the combined `group_advantages(be, scores, groups, layout, advantages,
/// token_advantages, cfg)`: the offsets check, the broadcast's check and the statistics, all
/// live at once.
template <class Groups, TokenLayout L>
std::size_t group_advantages_workspace_bytes(const cuda& be, index_t B, const Groups& groups, const L& layout) {
  detail::scratch_plan sp;
  sp.take<kernels::offsets_precheck>(1);
  return sp.bytes() + broadcast_to_tokens_workspace_bytes(be, layout) + group_advantages_workspace_bytes(be, B, groups);
}

}  // namespace polo

namespace polo::detail {

template <>
struct backend_impl<cuda, advantages_tag> {
  /// The combined entry of <polo/advantages.hpp> calls the layout overload below, which checks
  /// device offsets before writing anything.
  static constexpr bool checks_layout_first = true;

  /// What enqueue_advantages left for the caller: where the statistics are published, and
  /// the staged advantages to copy (gated) once the checks pass (null: written directly).
  template <class T>
  struct enqueued {
    result_target<group_stats> target{};
    const T* staged = nullptr;
  };

  /// Enqueues the statistics, the advantages (to the output when no data error is possible
  /// and `stage` is false, else to scratch) and the publication of group_stats; `pre` is an
  /// earlier check whose error comes first. B >= 1.
  template <class T, class Groups>
  static enqueued<T> enqueue_advantages(const cuda& be, view<const T, 1, device_space> s, const Groups& groups,
                                        view<T, 1, device_space> out, const advantage_config& c, scratch_plan& sp,
                                        bool async, const cuda::status* pre, bool stage) {
    constexpr bool labelled = is_labelled_groups<Groups>::value;
    const index_t B = s.n;
    const cudaStream_t stream = stream_of(be);
    const bool direct = !stage && c.nonfinite != nonfinite_policy::error && c.singleton != singleton_rule::error;
    advantages_regions r;
    enqueued<T> e;
    auto run = [&](const auto& map) {
      using Map = std::remove_cvref_t<decltype(map)>;
      kernels::group_stats_params<T, Map> gp;
      gp.scores = s.data;
      gp.scores_stride = s.stride;
      gp.groups = map;
      gp.cfg = c;
      gp.info = r.info;
      gp.partials = r.partials;
      gp.status = r.status;
      POLO_CUDA_TRY(kernels::launch_group_stats(gp, stream));
      kernels::advantage_params<T, Map> ap;
      ap.scores = s.data;
      ap.scores_stride = s.stride;
      ap.n = B;
      ap.groups = map;
      ap.cfg = c;
      ap.info = r.info;
      ap.status = r.status;
      ap.out = direct ? out.data : reinterpret_cast<T*>(r.adv);
      ap.out_stride = direct ? out.stride : 1;
      ap.partials = r.sum_partials;
      ap.pre = pre;
      ap.result = make_result_target(be, r.slot, async);
      e.target = ap.result;
      e.staged = direct ? nullptr : reinterpret_cast<const T*>(r.adv);
      POLO_CUDA_TRY(kernels::launch_group_advantages(ap, stream));
    };
    if constexpr (labelled) {
      using Label = typename std::remove_cvref_t<decltype(groups.labels)>::value_type;
      kernels::segment_labels_params<std::remove_const_t<Label>> seg;
      seg.labels = groups.labels.data;
      seg.labels_stride = groups.labels.stride;
      seg.n = static_cast<int>(B);
      take_segment_regions(sp, seg, seg.n);
      r = take_advantages_regions(sp, B, B);
      POLO_CUDA_TRY(kernels::launch_segment_labels(seg, stream));
      kernels::segmented_map map;
      map.starts = seg.starts;
      map.order = seg.order;
      map.seg = seg.seg;
      map.n_groups = seg.n_groups;
      map.bound = B;
      run(map);
    } else {
      r = take_advantages_regions(sp, B, B / groups.size);
      run(kernels::contiguous_map{groups.size, B / groups.size});
    }
    return e;
  }

  /// B <= kernels::fused_max: the whole of group_advantages in one launch
  /// (kernels::group_advantages_block_kernel; labelled groups are segmented by the same block),
  /// which writes `out` only when no error is found and, for the combined call (L a layout),
  /// also makes the broadcast's check: the slot's error is then the first error of both steps.
  /// `ready` (or null): the flag the kernel releases once `out` and that error are final, for
  /// the broadcast (kernels::broadcast_params::ready). Scratch: the same regions as the
  /// multi-kernel path. Returns where the statistics are published.
  template <class T, class Groups, class L>
  static result_target<group_stats> enqueue_fused(const cuda& be, view<const T, 1, device_space> s, const Groups& groups,
                                                  view<T, 1, device_space> out, const advantage_config& c,
                                                  scratch_plan& sp, bool async, const cuda::status* pre, const L& layout,
                                                  unsigned* ready = nullptr) {
    const index_t B = s.n;
    const cudaStream_t stream = stream_of(be);
    auto run = [&](const auto& map, const auto& seg, const advantages_regions& r) {
      using Map = std::remove_cvref_t<decltype(map)>;
      using Seg = std::remove_cvref_t<decltype(seg)>;
      kernels::fused_advantages_params<T, Map, Seg, L> p;
      p.scores = s.data;
      p.scores_stride = s.stride;
      p.n = B;
      p.groups = map;
      p.cfg = c;
      p.out = out.data;
      p.out_stride = out.stride;
      p.pre = pre;
      p.result = make_result_target(be, r.slot, async);
      p.seg = seg;
      p.layout = layout;
      p.ready = ready;
      POLO_CUDA_TRY(kernels::launch_group_advantages_block(p, stream));
      return p.result;
    };
    if constexpr (is_labelled_groups<Groups>::value) {
      using Label = typename std::remove_cvref_t<decltype(groups.labels)>::value_type;
      kernels::segment_labels_params<std::remove_const_t<Label>> seg;
      seg.labels = groups.labels.data;
      seg.labels_stride = groups.labels.stride;
      seg.n = static_cast<int>(B);
      take_segment_regions(sp, seg, seg.n);
      const advantages_regions r = take_advantages_regions(sp, B, B);
      kernels::segmented_map map;
      map.starts = seg.starts;
      map.order = seg.order;
      map.seg = seg.seg;
      map.n_groups = seg.n_groups;
      map.bound = B;
      return run(map, seg, r);
    } else {
      const advantages_regions r = take_advantages_regions(sp, B, B / groups.size);
      return run(kernels::contiguous_map{groups.size, B / groups.size}, kernels::no_segment{}, r);
    }
  }

  template <class Groups>
  static void check_label_count(index_t B) {
    if constexpr (is_labelled_groups<Groups>::value) {
      if (B > INT_MAX)
        throw_shape("group_advantages", "scores", shape_str({B}),
                    "at most 2147483647 sequences (the CUDA backend indexes labelled groups with 32 bits)");
    }
  }

  /// See <polo/advantages.hpp>. Synchronous: one synchronization (after the statistics), a
  /// throw with nothing written if a data-dependent check fails, otherwise the write is
  /// enqueued. Asynchronous (be.result): no synchronization. Scratch:
  /// group_advantages_workspace_bytes.
  template <class T, class Groups>
  static group_stats group_advantages(const cuda& be, view<const T, 1, device_space> s, const Groups& groups,
                                      view<T, 1, device_space> out, const advantage_config& c) {
    constexpr const char* fn = "group_advantages";
    const bool async = async_result_mode(be, fn);
    const index_t B = s.n;
    if (B == 0) {
      if (async) POLO_CUDA_TRY(cudaMemsetAsync(be.result, 0, sizeof(group_stats), stream_of(be)));
      return group_stats{};
    }
    check_label_count<Groups>(B);
    scratch ws(be, group_advantages_scratch_bytes(B, groups), fn);
    scratch_plan sp(ws.data());
    if (B <= kernels::fused_max) {
      const result_target<group_stats> t = enqueue_fused<T>(be, s, groups, out, c, sp, async, nullptr, kernels::no_token_check{});
      return finish(be, t);  // synchronous: throws (nothing written) or returns
    }
    const enqueued<T> e = enqueue_advantages<T>(be, s, groups, out, c, sp, async, nullptr, false);
    const group_stats st = finish(be, e.target);  // synchronous: throws before anything is written
    if (e.staged != nullptr)
      POLO_CUDA_TRY(kernels::launch_copy_strided(e.staged, B, out.data, out.stride, e.target.gate(), stream_of(be)));
    return st;
  }

  /// The combined entry: packed offsets checked on the device first (their error precedes
  /// the statistics' and nothing is written), then group_advantages and broadcast_to_tokens.
  template <class T, class Groups, TokenLayout L>
  static group_stats group_advantages(const cuda& be, view<const T, 1, device_space> s, const Groups& groups,
                                      const L& layout, view<T, 1, device_space> out, token_tensor<L, T> tok,
                                      const advantage_config& c) {
    constexpr const char* fn = "group_advantages";
    const bool async = async_result_mode(be, fn);
    const index_t B = s.n;
    check_label_count<Groups>(B);
    const cudaStream_t stream = stream_of(be);
    scratch ws(be, group_advantages_workspace_bytes(be, B, groups, layout), fn);
    scratch_plan sp(ws.data());
    kernels::offsets_precheck* pc = sp.take<kernels::offsets_precheck>(1);
    kernels::broadcast_check* bc = sp.take<kernels::broadcast_check>(1);
    const cuda::status* pre = nullptr;
    if constexpr (L::is_packed) {
      POLO_CUDA_TRY(kernels::launch_packed_offsets(layout, pc, entry_group_advantages,
                                                   async ? be.deferred_errors : nullptr, stream));
      pre = &pc->status;
    }
    if (B > 0 && B <= kernels::fused_max) {
      // One launch for the statistics, the advantages and the broadcast's check (its error is
      // the slot's when group_advantages itself succeeds), then the broadcast gated on it.
      // The kernel releases the broadcast (bc->ready) once the advantages and the gate are
      // final, before it folds the statistics.
      unsigned* ready = &bc->ready;
      const result_target<group_stats> t = enqueue_fused<T>(be, s, groups, out, c, sp, async, pre, layout, ready);
      const group_stats st = finish(be, t);  // synchronous: the one read-back, throws first
      if constexpr (!L::is_packed) {
        if (layout.seq_len == 0) return st;
      }
      kernels::broadcast_params<T, L> p;
      p.values = out.data;
      p.values_stride = out.stride;
      p.layout = layout;
      p.out = tok;
      p.gate = t.gate();
      p.ready = ready;
      POLO_CUDA_TRY(kernels::launch_broadcast(p, stream));
      return st;
    }
    group_stats st;
    const cuda::status* gate = pre;
    if (B > 0) {
      const enqueued<T> e = enqueue_advantages<T>(be, s, groups, out, c, sp, async, pre, L::is_packed);
      st = finish(be, e.target);  // synchronous: throws (offsets first) before anything is written
      if (e.staged != nullptr)
        POLO_CUDA_TRY(kernels::launch_copy_strided(e.staged, B, out.data, out.stride, e.target.gate(), stream));
      gate = e.target.gate();
    } else if (async) {
      POLO_CUDA_TRY(cudaMemsetAsync(be.result, 0, sizeof(group_stats), stream));
    } else if (pre != nullptr) {
      cuda::status hs;
      read_back(be, &hs, pre, sizeof hs);
      throw_status(hs);
    }
    if constexpr (!L::is_packed) {
      if (B == 0 || layout.seq_len == 0) return st;  // nothing to check, nothing to write
    }
    kernels::broadcast_params<T, L> p;
    p.values = out.data;
    p.values_stride = out.stride;
    p.layout = layout;
    p.out = tok;
    p.check = bc;
    p.deferred = be.deferred_errors;
    p.gate2 = gate;
    POLO_CUDA_TRY(kernels::launch_broadcast_check(p, stream));
    if (be.deferred_errors == nullptr) {
      cuda::status hs;
      read_back(be, &hs, &p.check->status, sizeof hs);
      throw_status(hs);
    } else {
      p.gate = &p.check->status;
    }
    POLO_CUDA_TRY(kernels::launch_broadcast(p, stream));
    return st;
  }

  /// See <polo/advantages.hpp>. Checks packed offsets and non-finite values on the device,
  /// then writes every element of `out`. Without `be.deferred_errors`: one synchronization,
  /// then a throw (nothing written) or the write. With it: no synchronization; on a failed
  /// check nothing is written and the error is recorded for polo::cuda_check.
  template <class T, TokenLayout L>
  static void broadcast_to_tokens(const cuda& be, view<const T, 1, device_space> values, const L& layout,
                                  token_tensor<L, T> out) {
    constexpr const char* fn = "broadcast_to_tokens";
    const index_t B = layout.num_seqs();
    if constexpr (!L::is_packed) {
      if (B == 0 || layout.seq_len == 0) return;  // nothing to check, nothing to write
    }
    const cudaStream_t stream = stream_of(be);
    scratch ws(be, broadcast_to_tokens_workspace_bytes(be, layout), fn);
    scratch_plan sp(ws.data());
    kernels::broadcast_params<T, L> p;
    p.values = values.data;
    p.values_stride = values.stride;
    p.layout = layout;
    p.out = out;
    p.check = sp.take<kernels::broadcast_check>(1);
    p.deferred = be.deferred_errors;
    POLO_CUDA_TRY(kernels::launch_broadcast_check(p, stream));
    if (be.deferred_errors == nullptr) {
      cuda::status s;
      read_back(be, &s, &p.check->status, sizeof s);
      throw_status(s);
    } else {
      p.gate = &p.check->status;
    }
    POLO_CUDA_TRY(kernels::launch_broadcast(p, stream));
  }
};

}  // namespace polo::detail
