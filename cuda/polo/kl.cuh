// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
#pragma once
/// \file
/// CUDA implementation of <polo/kl.hpp>'s entry point `kl_penalized_rewards` (PPO's
/// r_t - beta*KL_t reward shaping): `detail::backend_impl<polo::cuda, detail::kl_tag>`. The KL
/// term is `detail::kl_term` of <polo/kl.hpp>, the function the CPU backend and the policy
/// loss use; statistics in double, reduced in fixed trees (bitwise identical run to run).
///
/// Two passes over the chunks of each row (cuda/polo/kernels/gae.cuh's geometry): a check of
/// the inputs at valid positions (first error in the CPU's order: row, position, then rewards,
/// logp_old, logp_ref), then, behind a gate, the write and the statistics; one synchronization
/// at the end (one more for a packed layout's offsets). Nothing is written on a data error.
/// With `be.result` and `be.deferred_errors` set (docs/cuda.md, "Statistics without a host
/// synchronization") none: the packed offsets are checked on the device (an error stops every
/// pass before it reads a row), and the final kernel publishes the statistics into
/// `*be.result` or the first error into `be.deferred_errors`.
/// `out` may alias `rewards` exactly (each element is read before it is written, by the same
/// thread).

#include <cuda_runtime.h>

#include <cstddef>
#include <type_traits>

#include "polo/core/backend.hpp"
#include "polo/core/error.hpp"
#include "polo/core/layout.hpp"
#include "polo/core/view.hpp"
#include "polo/detail/async_result.cuh"
#include "polo/detail/launch.cuh"
#include "polo/detail/status.cuh"
#include "polo/detail/workspace.cuh"
#include "polo/gae.cuh"  // chunk geometry, packed offsets check
#include "polo/kl.hpp"
#include "polo/kernels/policy_loss.cuh"
#include "polo/policy_loss.cuh"  // chunk sizes and dispatch of the per-token kernels

namespace polo::kernels {

struct klr_stats {
  long long tokens = 0, masked = 0, clamped = 0, pad_ = 0;
  double kl = 0.0, pad2_ = 0.0;
};
struct klr_stats_op {
  __device__ __forceinline__ klr_stats operator()(klr_stats a, const klr_stats& b) const {
    a.tokens += b.tokens;
    a.masked += b.masked;
    a.clamped += b.clamped;
    a.kl += b.kl;
    return a;
  }
};
struct klr_result {
  klr_stats st{};
  unsigned long long err_key = no_error_key;
  long long err_flat = 0;
  double err_value = 0.0;
};

template <class T, class L>
struct klr_params {
  L layout{};
  detail::layout_tensor<L, const T> r{}, lo{}, lr{};
  detail::layout_tensor<L, T> out{};
  double beta = 0.0;
  kl_config kl{};
  chunk_table chunks{};
  klr_stats* cstats = nullptr;
  unsigned long long* err = nullptr;
  klr_result* result = nullptr;
  // asynchronous mode (be.result set), else null:
  const unsigned long long* off_key = nullptr;  ///< packed offsets check's key (packed layouts)
  kl_reward_stats* user_result = nullptr;       ///< be.result
  cuda::status* deferred = nullptr;             ///< be.deferred_errors
};

/// Write = false: the check; Write = true: behind the gate, out and the statistics, with the
/// scans' L2 reuse (kernels::scan_apply_evict_first): chunks in the reverse of the check's
/// order, so the inputs it read last (some still in L2) are read again first, inputs loaded and
/// outputs stored evict-first (the call's last read of them; its outputs no pass reads). The
/// order changes no result: each chunk's statistics go to its own slot.
template <int NT, int K, bool HasMask, bool Write, class T, class L>
__global__ void __launch_bounds__(NT) klr_kernel(klr_params<T, L> p) {
  __shared__ detail::shared_array<klr_stats, NT / 32> sm;
  __shared__ unsigned long long skey[NT / 32];
  using Mask = typename L::mask_type;
  if (Write && *p.err != no_error_key) return;
  if (p.off_key != nullptr && *p.off_key != no_error_key) return;  // bad packed offsets: no row is read
  constexpr bool EF = Write && scan_apply_evict_first;
  const index_t c = Write ? index_t(gridDim.x) - 1 - index_t(blockIdx.x) : index_t(blockIdx.x);
  index_t i = 0, j = 0;
  if (!locate_chunk(p.layout, p.chunks, c, i, j)) return;
  const index_t len = p.layout.row_len(i);
  const index_t t0 = j * p.chunks.S;
  const index_t n = len - t0 < p.chunks.S ? len - t0 : p.chunks.S;
  const index_t k0 = index_t(threadIdx.x) * K;
  bool valid[K];
  if constexpr (HasMask) {
    Mask m[K];
    load_blocked_as<K, EF>(p.layout.mask_row(i) + t0, k0, n, m, Mask(0));
#pragma unroll
    for (int k = 0; k < K; ++k) valid[k] = k0 + k < n && detail::is_valid(m[k]);
  } else {
#pragma unroll
    for (int k = 0; k < K; ++k) valid[k] = k0 + k < n;
  }
  T r[K], lo[K], lr[K];
  load_blocked_as<K, EF>(p.layout.row_ptr(p.r, i) + t0, k0, n, r, T(0));
  load_blocked_as<K, EF>(p.layout.row_ptr(p.lo, i) + t0, k0, n, lo, T(0));
  load_blocked_as<K, EF>(p.layout.row_ptr(p.lr, i) + t0, k0, n, lr, T(0));
  if constexpr (!Write) {
    unsigned long long key = no_error_key;
#pragma unroll
    for (int k = K - 1; k >= 0; --k) {
      if (!valid[k]) continue;
      int bad = -1;
      if (!detail::is_finite(r[k])) bad = 0;
      else if (!detail::is_finite(lo[k])) bad = 1;
      else if (!detail::is_finite(lr[k])) bad = 2;
      if (bad >= 0) key = pl_error_key(i, t0 + k0 + k, bad);
    }
    key = block_reduce_fixed<NT>(key, [](unsigned long long a, unsigned long long b) { return a < b ? a : b; }, skey);
    if (threadIdx.x == 0 && key != no_error_key) atomicMin(p.err, key);
  } else {
    klr_stats st{};
    T o[K];
#pragma unroll
    for (int k = 0; k < K; ++k) {
      if (k0 + k >= n) {
        o[k] = T(0);
        continue;
      }
      if (!valid[k]) {
        o[k] = T(0);
        ++st.masked;
        continue;
      }
      const detail::kl_point kp = detail::kl_term(p.kl, double(lo[k]) - double(lr[k]), 1.0);
      o[k] = T(double(r[k]) - p.beta * kp.value);
      ++st.tokens;
      st.kl += kp.value;
      st.clamped += kp.clamped ? 1 : 0;
    }
    store_blocked_as<K, EF>(p.layout.row_ptr(p.out, i) + t0, k0, n, o);
    st = block_reduce_fixed<NT>(st, klr_stats_op{}, &sm[0]);
    if (threadIdx.x == 0) p.cstats[c] = st;
  }
}

template <class T, class L>
__global__ void __launch_bounds__(256) klr_final_kernel(klr_params<T, L> p) {
  __shared__ detail::shared_array<klr_stats, 8> sm;
  const unsigned long long key = *p.err;
  const bool bad_offsets = p.off_key != nullptr && *p.off_key != no_error_key;
  index_t nchunks = p.chunks.bound;
  if constexpr (L::is_packed) nchunks = p.chunks.rows > 0 ? p.chunks.start[p.chunks.rows] : 0;
  klr_stats st{};
  if (key == no_error_key && !bad_offsets) {
    const index_t per = (nchunks + 255) / 256;
    for (index_t c = threadIdx.x * per; c < (threadIdx.x + 1) * per && c < nchunks; ++c)
      st = klr_stats_op{}(st, p.cstats[c]);
  }
  st = block_reduce_fixed<256>(st, klr_stats_op{}, &sm[0]);
  if (threadIdx.x != 0) return;
  klr_result out;
  out.st = st;
  out.err_key = key;
  if (key != no_error_key) {
    const index_t i = static_cast<index_t>(key >> 34);
    const index_t t = static_cast<index_t>((key >> 2) & 0xffffffffull);
    const int kind = static_cast<int>(key & 3u);
    const auto& x = kind == 0 ? p.r : (kind == 1 ? p.lo : p.lr);
    out.err_value = double(p.layout.row_ptr(x, i)[t]);
    out.err_flat = detail::flat_index(p.layout, i, t);
  }
  *p.result = out;
  if (p.deferred == nullptr) return;
  // asynchronous mode: the offsets error, else the first non-finite input, else the statistics
  cuda::status s{};
  s.entry = detail::entry_kl_penalized_rewards;
  if (bad_offsets) {
    if constexpr (L::is_packed) packed_offsets_status(p.layout, *p.off_key, s);
  } else if (key != no_error_key) {
    const int kind = static_cast<int>(key & 3u);
    s.code = detail::status_nonfinite_token;
    s.index = out.err_flat;
    s.value = out.err_value;
    s.a = kind == 0 ? detail::arg_rewards : (kind == 1 ? detail::arg_logp_old : detail::arg_logp_ref);
  } else {
    kl_reward_stats v{};
    v.tokens = st.tokens;
    v.masked_tokens = st.masked;
    v.kl.sum = st.kl;
    v.kl.count = st.tokens;
    v.clamped.sum = double(st.clamped);
    v.clamped.count = st.tokens;
    *p.user_result = v;
  }
  detail::record_status(p.deferred, s);
}

}  // namespace polo::kernels

namespace polo::detail {

static_assert(std::is_trivially_copyable_v<kl_reward_stats> && alignof(kl_reward_stats) <= 8,
              "kl_reward_stats is published to device memory by the asynchronous mode");

template <>
struct backend_impl<cuda, kl_tag> {
  /// See <polo/kl.hpp>. One synchronization (two for a packed layout); none with `be.result`
  /// (asynchronous mode, docs/cuda.md): the final kernel publishes the statistics into
  /// `*be.result` (a `kl_reward_stats`, 8-byte aligned device memory) or the first error
  /// into `be.deferred_errors` (bad packed offsets are checked on the device: no row is read,
  /// nothing written), and the call returns `kl_reward_stats{}`.
  template <TokenLayout L, class T, int R>
  static kl_reward_stats kl_penalized_rewards(const cuda& be, const L& layout, view<const T, R, device_space> rewards,
                                              view<const T, R, device_space> logp_old,
                                              view<const T, R, device_space> logp_ref, view<T, R, device_space> out,
                                              double beta, const kl_config& kl) {
    constexpr const char* fn = "kl_penalized_rewards";
    const bool async = async_result_mode(be, fn);
    check_scan_limits(fn, layout);
    const cudaStream_t stream = stream_of(be);
    constexpr int K = pl_items;
    const int NT = pl_threads(layout);
    const int S = NT * K;
    const index_t B = layout.num_seqs();
    const index_t bound = scan_chunk_bound(layout, S);
    scratch_plan probe;
    auto take = [&](scratch_plan& sp, kernels::klr_params<T, L>& p, pl_regions& r) {
      p.err = sp.take<unsigned long long>(2);  // [1]: the packed offsets check's key (asynchronous mode)
      p.result = sp.take<kernels::klr_result>(1);
      p.cstats = sp.take<kernels::klr_stats>(bound);
      if constexpr (L::is_packed) {
        r.cnt = sp.take<index_t>(B + 1);
        r.start = sp.take<index_t>(B + 1);
        r.temp_bytes = kernels::chunk_scan_temp_bytes(B);
        r.temp = sp.take<unsigned char>(static_cast<index_t>(r.temp_bytes));
      }
    };
    kernels::klr_params<T, L> p;
    pl_regions r;
    take(probe, p, r);
    scratch ws(be, probe.bytes(), fn);
    scratch_plan sp(ws.data());
    take(sp, p, r);
    p.layout = layout;
    p.r = rewards;
    p.lo = logp_old;
    p.lr = logp_ref;
    p.out = out;
    p.beta = beta;
    p.kl = kl;
    kl_reward_stats st;
    if (async) {
      p.user_result = static_cast<kl_reward_stats*>(be.result);
      p.deferred = be.deferred_errors;
      if constexpr (L::is_packed) {
        POLO_CUDA_TRY(kernels::launch_packed_offsets_check(layout.offsets.data, layout.offsets.stride, B, layout.tokens,
                                                           p.err + 1, stream));
        p.off_key = p.err + 1;
      }
    } else {
      check_packed_offsets_device(be, fn, layout, p.err);
      if (B == 0) return st;
    }
    p.chunks.rows = B;
    p.chunks.S = S;
    p.chunks.bound = bound;
    if constexpr (L::is_packed) {
      if (B > 0)
        POLO_CUDA_TRY(kernels::launch_packed_chunk_table(layout.offsets.data, layout.offsets.stride, B, S, r.cnt,
                                                         r.start, r.temp, r.temp_bytes, stream));
      p.chunks.start = r.start;
    } else {
      p.chunks.per_row = layout.seq_len > 0 ? (layout.seq_len + S - 1) / S : 0;
    }
    POLO_CUDA_TRY(cudaMemsetAsync(p.err, 0xff, sizeof(unsigned long long), stream));
    const bool hm = !layout.mask.is_null();
    POLO_CUDA_TRY(pl_dispatch_threads<256>(NT, [&](auto v) -> cudaError_t {
      constexpr int NTc = decltype(v)::value;
      if (bound > 0) {
        if (hm) {
          kernels::klr_kernel<NTc, K, true, false><<<unsigned(bound), NTc, 0, stream>>>(p);
          kernels::klr_kernel<NTc, K, true, true><<<unsigned(bound), NTc, 0, stream>>>(p);
        } else {
          kernels::klr_kernel<NTc, K, false, false><<<unsigned(bound), NTc, 0, stream>>>(p);
          kernels::klr_kernel<NTc, K, false, true><<<unsigned(bound), NTc, 0, stream>>>(p);
        }
        POLO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
      }
      kernels::klr_final_kernel<<<1, 256, 0, stream>>>(p);
      return cudaGetLastError();
    }));
    if (async) return st;
    kernels::klr_result o;
    read_back(be, &o, p.result, sizeof o);
    if (o.err_key != kernels::no_error_key) {
      static const char* names[3] = {"rewards", "logp_old", "logp_ref"};
      throw_nonfinite(fn, names[o.err_key & 3u], o.err_flat, o.err_value, "at a valid token");
    }
    st.tokens = o.st.tokens;
    st.masked_tokens = o.st.masked;
    st.kl = {o.st.kl, o.st.tokens};
    st.clamped = {double(o.st.clamped), o.st.tokens};
    return st;
  }
};

}  // namespace polo::detail

namespace polo {

/// Bytes of scratch that `kl_penalized_rewards` takes on the CUDA backend (about 48 bytes per
/// chunk of 2048 tokens; packed layouts add 16 per sequence and cub's scan scratch). Host-only.
template <TokenLayout L>
std::size_t kl_penalized_rewards_workspace_bytes(const cuda&, const L& layout) {
  const int S = detail::pl_threads(layout) * detail::pl_items;
  const index_t B = layout.num_seqs();
  detail::scratch_plan sp;
  sp.take<unsigned long long>(2);
  sp.take<kernels::klr_result>(1);
  sp.take<kernels::klr_stats>(detail::scan_chunk_bound(layout, S));
  if constexpr (L::is_packed) {
    sp.take<index_t>(B + 1);
    sp.take<index_t>(B + 1);
    sp.take<unsigned char>(static_cast<index_t>(kernels::chunk_scan_temp_bytes(B)));
  }
  return sp.bytes();
}

}  // namespace polo
