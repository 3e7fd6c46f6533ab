// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
#pragma once
/// \file
/// CUDA implementation of the scans of <polo/gae.hpp>: `gae` (every mask mode, fill, bootstrap,
/// length-adaptive and decoupled λ), `discounted_returns` and `remax_advantages`, as
/// `detail::backend_impl<polo::cuda, detail::gae_tag>`, plus their scratch-size queries. The
/// public entries have checked every shape and option on the host.
///
/// Semantics are the CPU backend's position for position: the per-position steps and writes
/// are the POLO_HD_INLINE functions of <polo/gae.hpp> (`gae_step`, `gae_next_value`,
/// `gae_write`, `returns_step`, `returns_write`, `gae_row_setup`), with the scan state in
/// double. Only the association of the recurrence differs (a parallel scan of affine maps in
/// reverse time instead of one loop), so results agree with the CPU backend to rounding and
/// are bitwise identical run to run (fixed trees; the only atomic is an integer min on the
/// error key). Algorithm and byte counts: cuda/polo/kernels/gae.cuh.
///
/// Synchronization: each call returns statistics by value, so it synchronizes the tag's stream
/// once, after the final reduction; a packed layout adds one synchronization after the device
/// check of its offsets (before anything is launched that reads through them). On a data error
/// (a non-finite value at a valid position, a non-finite bootstrap or baseline, bad offsets)
/// nothing is written and the CPU backend's exception is thrown, with its message.
///
/// Limits of the CUDA backend: fewer than 2^29 sequences and fewer than 2^32 tokens per
/// sequence (shape_error otherwise).

#include <cuda_runtime.h>

#include <cstddef>
#include <string>
#include <type_traits>

#include "polo/core/backend.hpp"
#include "polo/core/error.hpp"
#include "polo/core/layout.hpp"
#include "polo/core/view.hpp"
#include "polo/detail/launch.cuh"
#include "polo/detail/workspace.cuh"
#include "polo/advantages.cuh"
#include "polo/gae.hpp"
#include "polo/kernels/gae.cuh"
#include "polo/whiten.cuh"

namespace polo::detail {

/// Threads per block and tokens per thread of the scan kernels for element type T.
template <class T>
inline constexpr int scan_items_v = POLO_CUDA_SCAN_ITEMS;

/// Chunk geometry for a layout: S = NT*K with NT the smallest of {32, 64, 256} whose chunk
/// holds a typical row (padded: T; packed: N/B), 256 for long rows.
template <class T, TokenLayout L>
int scan_threads(const L& layout) {
  const index_t B = layout.num_seqs();
  index_t typical = 0;
  if constexpr (L::is_packed)
    typical = B > 0 ? (layout.tokens + B - 1) / B : 0;
  else
    typical = layout.seq_len;
  constexpr int K = scan_items_v<T>;
  if (typical <= 32 * K) return 32;
  if (typical <= 64 * K) return 64;
  return 256;
}

struct scan_regions {
  unsigned long long* err = nullptr;
  kernels::scan_result* result = nullptr;
  kernels::scan_chunk_summary* summ = nullptr;
  kernels::scan_state* state = nullptr;
  kernels::scan_state* exit_state = nullptr;
  kernels::scan_chunk_stats* cstats = nullptr;
  kernels::scan_row* rows = nullptr;
  kernels::scan_row_stats* rstats = nullptr;
  index_t* first = nullptr;  // [B] row anchors
  index_t* cnt = nullptr;    // [B+1]
  index_t* start = nullptr;  // [B+1] chunk table
  void* temp = nullptr;      // cub scan
  std::size_t temp_bytes = 0;
};

/// Chunks launched by the scans (rows cut at their first valid token): an upper bound.
template <TokenLayout L>
index_t scan_anchored_bound(const L& layout, int S) {
  const index_t B = layout.num_seqs();
  if constexpr (L::is_packed)
    return (layout.tokens + S - 1) / S + B;
  else
    return layout.seq_len > 0 ? B * ((layout.seq_len + S - 1) / S + 1) : 0;
}

/// Chunks launched: B * ceil(T/S) (padded), ceil(N/S) + B (packed: an upper bound).
template <TokenLayout L>
index_t scan_chunk_bound(const L& layout, int S) {
  const index_t B = layout.num_seqs();
  if constexpr (L::is_packed)
    return (layout.tokens + S - 1) / S + B;
  else
    return layout.seq_len > 0 ? B * ((layout.seq_len + S - 1) / S) : 0;
}

template <class T, TokenLayout L>
scan_regions take_scan_regions(scratch_plan& sp, const L& layout) {
  const int S = scan_threads<T>(layout) * scan_items_v<T>;
  const index_t B = layout.num_seqs();
  const index_t bound = scan_anchored_bound(layout, S);
  scan_regions r;
  r.err = sp.take<unsigned long long>(1);
  r.result = sp.take<kernels::scan_result>(1);
  r.summ = sp.take<kernels::scan_chunk_summary>(bound);
  r.state = sp.take<kernels::scan_state>(bound);
  r.cstats = sp.take<kernels::scan_chunk_stats>(bound);
  r.rows = sp.take<kernels::scan_row>(B);
  r.exit_state = sp.take<kernels::scan_state>(B);
  r.rstats = sp.take<kernels::scan_row_stats>(B);
  r.first = sp.take<index_t>(B);
  r.cnt = sp.take<index_t>(B + 1);
  r.start = sp.take<index_t>(B + 1);
  r.temp_bytes = kernels::chunk_scan_temp_bytes(B);
  r.temp = sp.take<unsigned char>(static_cast<index_t>(r.temp_bytes));
  return r;
}

template <class T, TokenLayout L>
std::size_t scan_scratch_bytes(const L& layout) {
  scratch_plan sp;
  (void)take_scan_regions<T>(sp, layout);
  return sp.bytes();
}

/// Shape limits of the CUDA scans (see the file comment).
template <TokenLayout L>
void check_scan_limits(const char* fn, const L& layout) {
  const index_t B = layout.num_seqs();
  if (B >= (index_t(1) << 29))
    throw_shape(fn, "layout", layout.shape(), "fewer than 2^29 sequences on the CUDA backend");
  index_t maxlen = 0;
  if constexpr (L::is_packed)
    maxlen = layout.tokens;
  else
    maxlen = layout.seq_len;
  if (maxlen >= (index_t(1) << 32))
    throw_shape(fn, "layout", layout.shape(), "fewer than 2^32 tokens per sequence on the CUDA backend");
}

/// Device check of a packed layout's offsets (one synchronization), throwing the CPU
/// backend's value_error. Does nothing for a padded layout.
template <TokenLayout L>
void check_packed_offsets_device(const cuda& be, const char* fn, const L& layout, unsigned long long* key_dev) {
  if constexpr (L::is_packed) {
    const index_t B = layout.num_seqs();
    POLO_CUDA_TRY(kernels::launch_packed_offsets_check(layout.offsets.data, layout.offsets.stride, B, layout.tokens,
                                                       key_dev, stream_of(be)));
    unsigned long long key = 0;
    read_back(be, &key, key_dev, sizeof key);
    if (key == kernels::no_error_key) return;
    using O = typename L::offset_type;
    auto at = [&](index_t j) {
      O x{};
      read_back(be, &x, layout.offsets.data + j * layout.offsets.stride, sizeof x);
      return static_cast<long long>(x);
    };
    if (key == 0) throw_value(fn, "offsets", "starts at " + std::to_string(at(0)) + "; expected offsets[0] = 0");
    if (static_cast<index_t>(key) <= B)
      throw_value(fn, "offsets",
                  "decreases at index " + std::to_string(key) + " (" + std::to_string(at(index_t(key) - 1)) + " -> " +
                      std::to_string(at(index_t(key))) + "); expected non-decreasing offsets");
    throw_value(fn, "offsets",
                "ends at " + std::to_string(at(B)) + "; expected offsets[B] = N = " + std::to_string(layout.tokens));
  }
}

/// Runs one scan end to end and reads its result back (the one synchronization).
template <class T, class F, TokenLayout L>
kernels::scan_result run_scan(const cuda& be, const char* fn, kernels::scan_params<T, L, F>& p,
                              unsigned long long seed = kernels::no_error_key) {
  check_scan_limits(fn, p.layout);
  const cudaStream_t stream = stream_of(be);
  scratch ws(be, scan_scratch_bytes<T>(p.layout), fn);
  scratch_plan sp(ws.data());
  const scan_regions r = take_scan_regions<T>(sp, p.layout);
  const int NT = scan_threads<T>(p.layout);
  constexpr int K = scan_items_v<T>;
  const int S = NT * K;
  check_packed_offsets_device(be, fn, p.layout, r.err);
  p.chunks.rows = p.layout.num_seqs();
  p.chunks.S = S;
  p.chunks.bound = scan_anchored_bound(p.layout, S);
  if (p.chunks.rows > 0)
    POLO_CUDA_TRY(kernels::launch_scan_chunk_table(p.layout, S, r.first, r.cnt, r.start, r.temp, r.temp_bytes, stream));
  p.chunks.start = r.start;
  p.chunks.first = r.first;
  p.summ = r.summ;
  p.state = r.state;
  p.exit_state = r.exit_state;
  p.cstats = r.cstats;
  p.rows = r.rows;
  p.rstats = r.rstats;
  p.err = r.err;
  p.result = r.result;
  kernels::scan_result out;
  if (p.chunks.rows == 0) return out;
  if (seed == kernels::no_error_key)
    POLO_CUDA_TRY(cudaMemsetAsync(r.err, 0xff, sizeof(unsigned long long), stream));
  else
    POLO_CUDA_TRY(cudaMemcpyAsync(r.err, &seed, sizeof seed, cudaMemcpyHostToDevice, stream));
  switch (NT) {
    case 32: POLO_CUDA_TRY((kernels::launch_scan<32, K>(p, stream))); break;
    case 64: POLO_CUDA_TRY((kernels::launch_scan<64, K>(p, stream))); break;
    default: POLO_CUDA_TRY((kernels::launch_scan<256, K>(p, stream))); break;
  }
  read_back(be, &out, r.result, sizeof out);
  return out;
}

template <>
struct backend_impl<cuda, gae_tag> {
  /// See <polo/gae.hpp>. One synchronization (two for a packed layout); nothing written on a
  /// data error. Scratch: gae_workspace_bytes.
  template <class T, class F, TokenLayout L>
  static gae_stats gae(const cuda& be, const L& layout, layout_tensor<L, const T> r, layout_tensor<L, const T> v,
                       view<const F, 1, device_space> truncated, view<const T, 1, device_space> bootstrap,
                       layout_tensor<L, T> A, layout_tensor<L, T> R, const gae_config& c) {
    constexpr const char* fn = "gae";
    kernels::scan_params<T, L, F> p;
    p.layout = layout;
    p.r = r;
    p.v = v;
    p.A = A;
    p.R = R;
    const bool has_bootstrap = !truncated.is_null() || truncated.n > 0;
    p.trunc = has_bootstrap ? truncated.data : nullptr;
    p.trunc_stride = truncated.stride;
    p.boot = has_bootstrap ? bootstrap.data : nullptr;
    p.boot_stride = bootstrap.stride;
    p.cfg = c;
    p.kind = kernels::scan_kind::gae;
    p.two = c.returns == gae_returns::value_lambda;
    const kernels::scan_result o = run_scan<T, F>(be, fn, p);
    if (o.err_key != kernels::no_error_key) {
      const int kind = kernels::error_key_kind(o.err_key);
      const index_t i = kernels::error_key_row(o.err_key);
      if (kind == 0) throw_nonfinite(fn, "rewards", o.err_flat, o.err_value, "");
      if (kind == 1) throw_nonfinite(fn, "values", o.err_flat, o.err_value, "");
      throw_nonfinite(fn, "bootstrap", i, o.err_value, "sequence " + std::to_string(i) + " is flagged truncated");
    }
    gae_stats st;
    st.sequences = layout.num_seqs();
    st.tokens = o.tokens;
    st.truncated = o.truncated;
    st.advantages = o.m;
    st.returns = sum_count<double>{o.rsum, o.tokens};
    st.lambda = sum_count<double>{o.lambda_sum, o.lambda_count};
    return st;
  }

  /// See <polo/gae.hpp> (discounted_returns, remax_advantages): R, and A = R − b when
  /// `baselines` is non-null. One synchronization (two for a packed layout).
  template <class T, TokenLayout L>
  static returns_stats returns(const cuda& be, const char* fn, const L& layout, layout_tensor<L, const T> r,
                               view<const T, 1, device_space> baselines, layout_tensor<L, T> R,
                               layout_tensor<L, T> A, const returns_config& c) {
    kernels::scan_params<T, L, unsigned char> p;
    p.layout = layout;
    p.r = r;
    p.R = R;
    p.A = A;
    p.base = baselines.data;
    p.base_stride = baselines.stride;
    p.cfg.gamma = c.gamma;
    p.cfg.fill = c.fill;
    p.rmask = c.mask;
    p.kind = kernels::scan_kind::returns;
    const kernels::scan_result o = run_scan<T, unsigned char>(be, fn, p);
    if (o.err_key != kernels::no_error_key) {
      const int kind = kernels::error_key_kind(o.err_key);
      const index_t i = kernels::error_key_row(o.err_key);
      if (kind == 0) throw_nonfinite(fn, "rewards", o.err_flat, o.err_value, "");
      throw_nonfinite(fn, "baselines", i, o.err_value, "sequence " + std::to_string(i) + " has valid tokens");
    }
    returns_stats st;
    st.sequences = layout.num_seqs();
    st.tokens = o.m.count;
    st.returns = o.m;
    return st;
  }

  /// Valid tokens of the whole layout (one synchronization; packed offsets checked first).
  template <TokenLayout L>
  static index_t count_valid(const cuda& be, const char* fn, const L& layout) {
    check_scan_limits(fn, layout);
    const index_t B = layout.num_seqs();
    scratch ws(be, static_cast<std::size_t>(B + 2) * sizeof(long long) + 512, fn);
    scratch_plan sp(ws.data());
    long long* total = sp.take<long long>(1);
    long long* n = sp.take<long long>(B);
    check_packed_offsets_device(be, fn, layout, reinterpret_cast<unsigned long long*>(total));
    POLO_CUDA_TRY(kernels::launch_row_counts(layout, n, total, stream_of(be)));
    long long h = 0;
    read_back(be, &h, total, sizeof h);
    return static_cast<index_t>(h);
  }

  /// See <polo/gae.hpp>: the returns scan (nothing written if the rewards hold a non-finite
  /// valid value, or if the whitening would be degenerate under whiten_degenerate::error), then
  /// the whitening of R into A. Three synchronizations (count, scan, whitening statistics come
  /// from the scan itself: two).
  template <class T, TokenLayout L>
  static reinforce_pp_stats reinforce_plus_plus(const cuda& be, const L& layout, layout_tensor<L, const T> r,
                                                layout_tensor<L, T> R, layout_tensor<L, T> A,
                                                const reinforce_pp_config& c) {
    constexpr const char* fn = "reinforce_plus_plus";
    moments pre;
    pre.count = count_valid(be, fn, layout);
    const bool degenerate = c.whiten.degenerate == whiten_degenerate::error && whiten_coefficients(pre, c.whiten).degenerate;
    kernels::scan_params<T, L, unsigned char> p;
    p.layout = layout;
    p.r = r;
    p.R = R;
    p.cfg.gamma = c.gamma;
    p.cfg.fill = masked_fill::zero;
    p.rmask = c.mask;
    p.kind = kernels::scan_kind::returns;
    const kernels::scan_result o =
        run_scan<T, unsigned char>(be, fn, p, degenerate ? kernels::gate_key : kernels::no_error_key);
    if (o.err_key < kernels::gate_key) throw_nonfinite(fn, "rewards", o.err_flat, o.err_value, "");
    if (o.err_key == kernels::gate_key) throw_degenerate(fn, pre, c.whiten);
    reinforce_pp_stats st;
    st.returns.sequences = layout.num_seqs();
    st.returns.tokens = o.m.count;
    st.returns.returns = o.m;
    // The whitening with the scan's own moments of R as the batch statistics (the CPU backend's
    // coefficients); the CUDA whiten re-reads R for its local statistics, which are the same.
    const moments m = st.returns.returns;
    st.whiten = backend_impl<cuda, whiten_tag>::whiten<T>(be, layout, layout_tensor<L, const T>(R), A, &m, c.whiten);
    st.whiten.local = st.whiten.used = m;
    return st;
  }

  /// See <polo/gae.hpp>: group_advantages, broadcast_to_tokens and whiten on the CUDA backend,
  /// in the CPU backend's order (the degenerate-whitening check first).
  template <class T, class Groups, TokenLayout L>
  static reinforce_pp_baseline_stats reinforce_pp_baseline(const cuda& be, view<const T, 1, device_space> scores,
                                                           const Groups& groups, const L& layout,
                                                           view<T, 1, device_space> seq_adv, layout_tensor<L, T> tok,
                                                           const reinforce_pp_baseline_config& c) {
    constexpr const char* fn = "reinforce_pp_baseline";
    if (c.whiten.degenerate == whiten_degenerate::error) {
      moments pre;
      pre.count = count_valid(be, fn, layout);
      if (whiten_coefficients(pre, c.whiten).degenerate) throw_degenerate(fn, pre, c.whiten);
    }
    reinforce_pp_baseline_stats st;
    st.group = backend_impl<cuda, advantages_tag>::group_advantages(be, scores, groups, seq_adv, c.group);
    backend_impl<cuda, advantages_tag>::broadcast_to_tokens(be, view<const T, 1, device_space>(seq_adv), layout, tok);
    st.whiten = backend_impl<cuda, whiten_tag>::whiten<T>(be, layout, layout_tensor<L, const T>(tok), tok, nullptr,
                                                          c.whiten);
    return st;
  }

  /// See <polo/gae.hpp> (opo_advantages): the length-weighted group baseline, one thread per
  /// sequence (labelled groups: each thread scans the labels, O(B) per sequence), then
  /// broadcast_to_tokens. Two synchronizations (the score check, the statistics).
  template <class T, class Groups, TokenLayout L>
  static group_stats opo(const cuda& be, view<const T, 1, device_space> s, const Groups& groups, const L& layout,
                         view<T, 1, device_space> adv, layout_tensor<L, T> tok) {
    constexpr const char* fn = "opo_advantages";
    check_scan_limits(fn, layout);
    const index_t B = s.n;
    const cudaStream_t stream = stream_of(be);
    scratch ws(be, static_cast<std::size_t>(B + 2) * 16 + sizeof(kernels::opo_result) + 2048, fn);
    scratch_plan sp(ws.data());
    unsigned long long* key = sp.take<unsigned long long>(1);
    long long* total = sp.take<long long>(1);
    long long* n = sp.take<long long>(B);
    int* first = sp.take<int>(B);
    int* single = sp.take<int>(B);
    kernels::opo_result* res = sp.take<kernels::opo_result>(1);
    check_packed_offsets_device(be, fn, layout, key);
    group_stats st;
    st.sequences = B;
    if (B == 0) {
      backend_impl<cuda, advantages_tag>::broadcast_to_tokens(be, view<const T, 1, device_space>(adv), layout, tok);
      return st;
    }
    POLO_CUDA_TRY(cudaMemsetAsync(key, 0xff, sizeof *key, stream));
    kernels::opo_check_kernel<<<grid_for(B, 256), 256, 0, stream>>>(s.data, s.stride, B, key);
    POLO_CUDA_TRY(cudaGetLastError());
    unsigned long long hk = 0;
    read_back(be, &hk, key, sizeof hk);
    if (hk != kernels::no_error_key) {
      T v{};
      read_back(be, &v, s.data + index_t(hk) * s.stride, sizeof v);
      throw_nonfinite(fn, "scores", index_t(hk), double(v), "");
    }
    POLO_CUDA_TRY(kernels::launch_row_counts(layout, n, total, stream));
    if constexpr (is_labelled_groups<Groups>::value)
      kernels::opo_kernel<<<grid_for(B, 256), 256, 0, stream>>>(s.data, s.stride, B, index_t(1), groups.labels.data,
                                                                groups.labels.stride, n, adv.data, adv.stride, first,
                                                                single);
    else
      kernels::opo_kernel<T, int><<<grid_for(B, 256), 256, 0, stream>>>(s.data, s.stride, B, groups.size, nullptr,
                                                                        index_t(1), n, adv.data, adv.stride, first,
                                                                        single);
    POLO_CUDA_TRY(cudaGetLastError());
    kernels::opo_stats_kernel<<<1, 32, 0, stream>>>(s.data, s.stride, adv.data, adv.stride, B, first, single, res);
    POLO_CUDA_TRY(cudaGetLastError());
    kernels::opo_result o;
    read_back(be, &o, res, sizeof o);
    st.groups = o.groups;
    st.singleton_groups = o.singleton;
    st.scores = o.scores;
    st.advantage = {o.asum, B};
    backend_impl<cuda, advantages_tag>::broadcast_to_tokens(be, view<const T, 1, device_space>(adv), layout, tok);
    return st;
  }
};

}  // namespace polo::detail

namespace polo {

/// Bytes of scratch that `gae(be, layout, ...)` with element type T takes on the CUDA backend
/// (the size a caller-provided `polo::cuda::workspace` needs): about 130 bytes per chunk of
/// 4096 float (2048 double) tokens plus 64 per sequence; a packed layout adds 16 per sequence
/// and cub's scan scratch. Host-only.
template <class T, TokenLayout L>
std::size_t gae_workspace_bytes(const cuda&, const L& layout) {
  return detail::scan_scratch_bytes<T>(layout);
}

/// Bytes of scratch of `discounted_returns` / `remax_advantages` (the same as gae's).
template <class T, TokenLayout L>
std::size_t discounted_returns_workspace_bytes(const cuda&, const L& layout) {
  return detail::scan_scratch_bytes<T>(layout);
}

}  // namespace polo
