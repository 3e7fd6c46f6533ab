// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
#pragma once
/// \file
/// Kernels of GAE, the discounted returns and ReMax (layer D of docs/CONTRIBUTING.md): POD
/// params structs, `__global__` kernels and `launch_*` launchers that enqueue on a stream and
/// return `cudaError_t` (never synchronize, never allocate, never throw). The caller
/// (cuda/polo/gae.cuh) owns validation, scratch and the one read-back.
///
/// ## The scan
/// Each position t of a row contributes an affine map g_{t+1} -> a_t*g_{t+1} + b_t
/// (`detail::gae_step` / `detail::returns_step` of <polo/gae.hpp>: the same formulas as the
/// CPU backend). Affine maps compose associatively, so a row is cut into chunks of S = NT*K
/// tokens (K consecutive tokens per thread) and scanned in reverse time:
///
///     summary_kernel  one block per chunk: checks the inputs (non-finite values at valid
///                     positions -> a 64-bit error key, atomicMin on an integer: deterministic),
///                     counts valid tokens, and composes the chunk's map (thread-serial over
///                     its K tokens, then a block suffix scan); the leftmost chunk of a row
///                     needs no map and skips it
///     rows_kernel     one thread per row: λ_i (length-adaptive λ needs the row's count), the
///                     bootstrap / baseline checks, and the state entering each chunk from the
///                     right (the row's chunk maps applied right to left)
///     apply_kernel    one block per chunk, after a gate (no error recorded): the same maps,
///                     a block suffix scan, the state entering each thread, and a thread-serial
///                     pass that writes A and R (`detail::gae_write` / `returns_write`); the
///                     statistics of the chunk in a fixed tree
///     final_kernel    one block: every chunk's and row's partial in a fixed order, and the
///                     first error (row, argument, position) with its value
///
/// GAE's TD error at t needs `next`, the value handed on from the right (skip: the v of the
/// next valid position; through: v'_{t+1}); it is resolved by a second suffix scan (nearest
/// hand-off to the right) before the maps are formed. The one position of a chunk whose
/// `next` lies in another chunk (the boundary position) is kept raw in the summary, and its
/// step is formed by rows_kernel once that value is known, so every step is formed from
/// exactly the inputs the sequential recursion uses.
///
/// Every input is read twice (summary, apply): the check must finish before the first write
/// (a throw leaves the outputs untouched), and the apply pass needs the state entering each
/// chunk. Per float token with a uint8 mask: 2 x 9 bytes read, 8 written.

#include <cuda_runtime.h>

#include <cub/device/device_scan.cuh>

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "polo/core/backend.hpp"
#include "polo/core/config.hpp"
#include "polo/core/layout.hpp"
#include "polo/core/math.hpp"
#include "polo/core/reduce.hpp"
#include "polo/core/view.hpp"
#include "polo/detail/launch.cuh"
#include "polo/gae.hpp"
#include "polo/kernels/scan.cuh"

/// Tuning knobs (compile-time): tokens per thread of the scans, and the minimum resident blocks
/// per multiprocessor the summary and apply kernels are compiled for (caps their registers).
#ifndef POLO_CUDA_SCAN_ITEMS
#define POLO_CUDA_SCAN_ITEMS 8
#endif
#ifndef POLO_CUDA_SCAN_MIN_BLOCKS
#define POLO_CUDA_SCAN_MIN_BLOCKS 3
#endif

namespace polo::kernels {

/// A key that closes the apply pass's gate without being a data error (set before the scan
/// when the caller must throw something else, e.g. a degenerate whitening, if the data is clean).
inline constexpr unsigned long long gate_key = no_error_key - 1;

/// Which recurrence a launch runs.
enum class scan_kind : int { gae, returns };

/// What the summary pass records per chunk.
struct scan_chunk_summary {
  detail::affine_step f{};   ///< composition of the chunk's positions left of the boundary (advantages' decay)
  detail::affine_step f2{};  ///< the same with the returns' decay (gae_returns::value_lambda)
  double r_p = 0.0, v_p = 0.0;  ///< raw inputs of the boundary position
  double hand = 0.0;            ///< `next` handed to the chunk on the left (has_hand)
  long long count = 0;          ///< valid tokens
  int has_p = 0, valid_p = 0, has_hand = 0, pad_ = 0;
};

/// State entering a chunk (or a thread) from the right.
struct scan_state {
  double next = 0.0, g = 0.0, g2 = 0.0, pad_ = 0.0;
};

/// Per-row coefficients, from rows_kernel.
struct scan_row {
  double gl = 1.0, gl2 = 1.0, lambda = 1.0;
  long long n = 0;
};

/// Statistics of one chunk (apply pass).
struct scan_chunk_stats {
  moments m{};        ///< advantages (gae) or returns (returns) at valid tokens, as written
  double rsum = 0.0;  ///< sum of the returns at valid tokens (gae)
};

/// Statistics of one row (rows pass).
struct scan_row_stats {
  double lambda_sum = 0.0;
  long long lambda_count = 0, truncated = 0, pad_ = 0;
};

/// What the final pass hands back to the host.
struct scan_result {
  long long tokens = 0, truncated = 0, lambda_count = 0, pad_ = 0;
  moments m{};
  double rsum = 0.0, lambda_sum = 0.0;
  unsigned long long err_key = no_error_key;
  long long err_flat = 0;
  double err_value = 0.0;
};

/// Chunk geometry: S tokens per chunk; padded rows have `per_row` chunks each, packed rows
/// `start[i+1] - start[i]` (an exclusive scan of ceil(len_i / S), in scratch). With `first`
/// (the scans), every row is cut at its first valid position f_i: ceil(f_i / S) chunks cover
/// the leading masked positions [0, f_i) and the chunks of the rest start at f_i, so a padded
/// row and the same row packed from its first valid token are cut, and scanned, identically;
/// `start` then holds the table for both layouts.
struct chunk_table {
  index_t rows = 0;
  index_t per_row = 0;             ///< padded without `first`
  const index_t* start = nullptr;  ///< packed, or with `first`: [B+1]
  const index_t* first = nullptr;  ///< [B] first valid position of each row, or null
  index_t bound = 0;               ///< chunks launched (an upper bound with a table)
  int S = 0;
};
/// Everything the GAE / returns kernels read and write.
template <class T, class L, class F>
struct scan_params {
  L layout{};
  detail::layout_tensor<L, const T> r{}, v{};  ///< v unused for returns
  detail::layout_tensor<L, T> A{}, R{};        ///< A null for plain returns
  const F* trunc = nullptr;  ///< [B] flags, null without bootstrap
  index_t trunc_stride = 1;
  const T* boot = nullptr;  ///< [B] bootstrap values
  index_t boot_stride = 1;
  const T* base = nullptr;  ///< [B] ReMax baselines, null otherwise
  index_t base_stride = 1;
  gae_config cfg{};      ///< gae (for returns: gamma and fill only)
  returns_mask_mode rmask = returns_mask_mode::carry;  ///< returns: what a masked position does
  scan_kind kind = scan_kind::gae;
  bool two = false;      ///< gae_returns::value_lambda
  chunk_table chunks{};
  scan_chunk_summary* summ = nullptr;  ///< [bound]
  scan_state* state = nullptr;         ///< [bound]
  scan_state* exit_state = nullptr;    ///< [B] state after a row's first valid position (for its leading chunks)
  scan_chunk_stats* cstats = nullptr;  ///< [bound]
  scan_row* rows = nullptr;            ///< [B]
  scan_row_stats* rstats = nullptr;    ///< [B]
  unsigned long long* err = nullptr;   ///< [1], no_error_key when clean
  scan_result* result = nullptr;       ///< [1]
};

// ---- chunk geometry -------------------------------------------------------------------------

template <class L>
__device__ __forceinline__ index_t chunk_begin_of_row(const L&, const chunk_table& ct, index_t i) {
  if (L::is_packed || ct.first != nullptr)
    return ct.start[i];
  else
    return i * ct.per_row;
}
template <class L>
__device__ __forceinline__ index_t chunk_end_of_row(const L&, const chunk_table& ct, index_t i) {
  if (L::is_packed || ct.first != nullptr)
    return ct.start[i + 1];
  else
    return (i + 1) * ct.per_row;
}
/// Row and chunk-within-row of chunk c; false when c is past the last chunk.
template <class L>
__device__ __forceinline__ bool locate_chunk(const L&, const chunk_table& ct, index_t c, index_t& row, index_t& j) {
  if (L::is_packed || ct.first != nullptr) {
    if (c >= ct.start[ct.rows]) return false;
    index_t lo = 0, hi = ct.rows;  // largest i with start[i] <= c
    while (hi - lo > 1) {
      index_t mid = (lo + hi) / 2;
      if (ct.start[mid] <= c) lo = mid; else hi = mid;
    }
    row = lo;
    j = c - ct.start[lo];
    return true;
  } else {
    if (ct.per_row == 0) return false;
    row = c / ct.per_row;
    j = c - row * ct.per_row;
    return row < ct.rows;
  }
}
/// First position t0 and length n of chunk j of row i (of length len).
__device__ __forceinline__ void chunk_span(const chunk_table& ct, index_t i, index_t j, index_t len, index_t& t0,
                                           index_t& n) {
  const index_t S = ct.S;
  if (ct.first == nullptr) {
    t0 = j * S;
    n = len - t0 < S ? len - t0 : S;
    return;
  }
  const index_t f = ct.first[i];
  const index_t nlead = (f + S - 1) / S;
  if (j < nlead) {
    t0 = j * S;
    n = f - t0 < S ? f - t0 : S;
  } else {
    t0 = f + (j - nlead) * S;
    n = len - t0 < S ? len - t0 : S;
  }
}

/// Nearest hand-off to the right: `has` and the value.
struct handoff {
  double v = 0.0;
  int has = 0, pad_ = 0;
};
struct handoff_op {
  __device__ __forceinline__ handoff operator()(const handoff& near, const handoff& far) const {
    return near.has ? near : far;
  }
};
/// Two affine maps composed in parallel (advantages' and returns' decays).
struct step_pair {
  detail::affine_step s1{}, s2{};
};
struct step_pair_op {
  __device__ __forceinline__ step_pair operator()(const step_pair& near, const step_pair& far) const {
    return {detail::affine_compose(near.s1, far.s1), detail::affine_compose(near.s2, far.s2)};
  }
};

/// Shared memory of the per-chunk kernels: one scratch row of NT/32 elements reused by every
/// block-level scan and reduction (each ends with a barrier), and the boundary thread.
template <int NT>
struct chunk_smem {
  static constexpr std::size_t row_bytes =
      (NT / 32) * (sizeof(step_pair) > sizeof(scan_chunk_stats) ? sizeof(step_pair) : sizeof(scan_chunk_stats));
  alignas(16) unsigned char raw[row_bytes];
  int boundary_thread;
  template <class S>
  __device__ __forceinline__ S* as() {
    static_assert(sizeof(S) * (NT / 32) <= row_bytes, "chunk_smem: row too small");
    return reinterpret_cast<S*>(raw);
  }
};

template <class F>
__device__ __forceinline__ bool flag_set(const F* p, index_t stride, index_t i) {
  return p != nullptr && p[i * stride] != F(0);
}

// ---- summary pass -------------------------------------------------------------------------------

template <int NT, int K, bool HasMask, bool CountOnly, class T, class L, class F>
__global__ void __launch_bounds__(NT, POLO_CUDA_SCAN_MIN_BLOCKS) scan_summary_kernel(scan_params<T, L, F> p) {
  __shared__ chunk_smem<NT> sm;
  using Mask = typename L::mask_type;
  const index_t c = blockIdx.x;
  index_t i = 0, j = 0;
  if (!locate_chunk(p.layout, p.chunks, c, i, j)) return;
  const index_t len = p.layout.row_len(i);
  index_t t0 = 0, n = 0;
  chunk_span(p.chunks, i, j, len, t0, n);
  const index_t k0 = index_t(threadIdx.x) * K;

  bool valid[K];
  if constexpr (HasMask) {
    Mask m[K];
    load_blocked<K>(p.layout.mask_row(i) + t0, k0, n, m, Mask(0));
#pragma unroll
    for (int k = 0; k < K; ++k) valid[k] = k0 + k < n && detail::is_valid(m[k]);
  } else {
#pragma unroll
    for (int k = 0; k < K; ++k) valid[k] = k0 + k < n;
  }
  long long cnt = 0;
#pragma unroll
  for (int k = 0; k < K; ++k) cnt += valid[k] ? 1 : 0;
  cnt = block_reduce_fixed<NT>(cnt, [](long long a, long long b) { return a + b; }, sm.template as<long long>());
  if constexpr (CountOnly) {
    if (threadIdx.x == 0) p.summ[c].count = cnt;
    return;
  } else {
    const bool gae = p.kind == scan_kind::gae;
    T r[K], v[K];
    load_blocked<K>(p.layout.row_ptr(p.r, i) + t0, k0, n, r, T(0));
    if (gae) load_blocked<K>(p.layout.row_ptr(p.v, i) + t0, k0, n, v, T(0));
    unsigned long long key = no_error_key;
#pragma unroll
    for (int k = K - 1; k >= 0; --k) {
      if (!valid[k]) continue;
      if (gae && !detail::is_finite(v[k])) key = error_key(i, 1, t0 + k0 + k);
    }
#pragma unroll
    for (int k = K - 1; k >= 0; --k) {
      if (valid[k] && !detail::is_finite(r[k])) key = error_key(i, 0, t0 + k0 + k);
    }
    key = block_reduce_fixed<NT>(key, [](unsigned long long a, unsigned long long b) { return a < b ? a : b; },
                                 sm.template as<unsigned long long>());
    if (threadIdx.x == 0 && key != no_error_key) atomicMin(p.err, key);

    scan_chunk_summary s;
    s.count = cnt;
    if (j > 0) {  // the leftmost chunk's map is never used
      const double gamma = p.cfg.gamma;
      step_pair mine{};
      if (gae) {
        const gae_mask_mode mode = p.cfg.mask;
        const double lam = p.cfg.lambda_mode == gae_lambda_mode::fixed ? p.cfg.lambda : p.rows[i].lambda;
        const double gl = gamma * lam, gl2 = gamma * p.cfg.lambda_value;
        // next handed on by this thread's items (to the thread on its left)
        handoff h{};
#pragma unroll
        for (int k = K - 1; k >= 0; --k) {
          if (k0 + k >= n) continue;
          if (valid[k] || mode == gae_mask_mode::through) {
            h.v = detail::gae_next_value(mode, valid[k], double(v[k]), h.v);
            h.has = 1;
          }
        }
        handoff tot_h;
        handoff right = block_suffix_exclusive<NT>(h, handoff{}, handoff_op{}, sm.template as<handoff>(), tot_h);
        if (threadIdx.x == 0) sm.boundary_thread = -1;
        __syncthreads();
        bool known = right.has != 0;
        double nxt = right.v;
#pragma unroll
        for (int k = K - 1; k >= 0; --k) {
          if (k0 + k >= n) continue;
          const bool needs = valid[k] || mode == gae_mask_mode::through;
          if (!needs) continue;  // skip mode, masked: the identity
          if (!known) {
            sm.boundary_thread = int(threadIdx.x);  // exactly one thread finds it
            s.r_p = double(r[k]);
            s.v_p = double(v[k]);
            s.valid_p = valid[k] ? 1 : 0;
          } else {
            mine.s1 = detail::affine_compose(
                detail::gae_step(mode, valid[k], double(r[k]), double(v[k]), nxt, gamma, gl), mine.s1);
            mine.s2 = detail::affine_compose(
                detail::gae_step(mode, valid[k], double(r[k]), double(v[k]), nxt, gamma, gl2), mine.s2);
          }
          nxt = detail::gae_next_value(mode, valid[k], double(v[k]), nxt);
          known = true;
        }
        s.hand = tot_h.v;
        s.has_hand = tot_h.has;
      } else {
#pragma unroll
        for (int k = K - 1; k >= 0; --k) {
          if (k0 + k >= n) continue;
          mine.s1 = detail::affine_compose(detail::returns_step(p.rmask, valid[k], double(r[k]), gamma), mine.s1);
        }
      }
      step_pair tot;
      (void)block_suffix_exclusive<NT>(mine, step_pair{}, step_pair_op{}, sm.template as<step_pair>(), tot);
      s.f = tot.s1;
      s.f2 = tot.s2;
      // the boundary thread hands its raw inputs to thread 0 through the summary itself
      const int bt = gae ? sm.boundary_thread : -1;
      if (bt >= 0 && int(threadIdx.x) == bt) {
        p.summ[c].r_p = s.r_p;
        p.summ[c].v_p = s.v_p;
        p.summ[c].valid_p = s.valid_p;
      }
      if (threadIdx.x == 0) {
        scan_chunk_summary& o = p.summ[c];
        o.f = s.f;
        o.f2 = s.f2;
        o.hand = s.hand;
        o.has_hand = s.has_hand;
        o.has_p = bt >= 0 ? 1 : 0;
        o.count = cnt;
      }
    } else if (threadIdx.x == 0) {
      p.summ[c].count = cnt;
    }
  }
}

// ---- rows pass ----------------------------------------------------------------------------------

/// Phase 0 (length-adaptive λ): the row's count and λ_i from the chunk counts. Phase 1: checks
/// of per-row inputs, row coefficients, the state entering each chunk, row statistics.
template <int Phase, class T, class L, class F>
__global__ void __launch_bounds__(128) scan_rows_kernel(scan_params<T, L, F> p) {
  const index_t i = index_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= p.chunks.rows) return;
  const index_t c0 = chunk_begin_of_row(p.layout, p.chunks, i), c1 = chunk_end_of_row(p.layout, p.chunks, i);
  long long n = 0;
  for (index_t c = c0; c < c1; ++c) n += p.summ[c].count;
  const bool gae = p.kind == scan_kind::gae;
  if constexpr (Phase == 0) {
    p.rows[i].n = n;
    p.rows[i].lambda = detail::gae_lambda_of(p.cfg, n);
    return;
  } else {
    const index_t len = p.layout.row_len(i);
    scan_row_stats rs{};
    scan_state st{};
    if (gae) {
      const bool trunc = p.trunc != nullptr && flag_set(p.trunc, p.trunc_stride, i);
      const double b = trunc ? double(p.boot[i * p.boot_stride]) : 0.0;
      if (trunc && !detail::is_finite(b)) atomicMin(p.err, error_key(i, 2, 0));
      const detail::gae_row_coeffs k = detail::gae_row_setup(p.cfg, n, trunc, b);
      p.rows[i] = scan_row{k.gl, k.gl_value, k.lambda, n};
      if (len > 0 && trunc) rs.truncated = 1;
      if (len > 0 && n > 0) {
        rs.lambda_sum = k.lambda;
        rs.lambda_count = 1;
      }
      st.next = k.next;
      const gae_mask_mode mode = p.cfg.mask;
      for (index_t c = c1 - 1; c >= c0; --c) {
        p.state[c] = st;
        if (c == c0) break;
        const scan_chunk_summary s = p.summ[c];
        double g = st.g, g2 = st.g2;
        if (s.has_p) {
          g = detail::affine_apply(detail::gae_step(mode, s.valid_p != 0, s.r_p, s.v_p, st.next, k.gamma, k.gl), g);
          g2 = detail::affine_apply(detail::gae_step(mode, s.valid_p != 0, s.r_p, s.v_p, st.next, k.gamma, k.gl_value),
                                    g2);
        }
        st.g = detail::affine_apply(s.f, g);
        st.g2 = detail::affine_apply(s.f2, g2);
        if (s.has_hand) st.next = s.hand;
      }
    } else {
      p.rows[i] = scan_row{p.cfg.gamma, p.cfg.gamma, 1.0, n};
      if (p.base != nullptr && n > 0 && !detail::is_finite(p.base[i * p.base_stride]))
        atomicMin(p.err, error_key(i, 1, 0));
      for (index_t c = c1 - 1; c >= c0; --c) {
        p.state[c] = st;
        if (c == c0) break;
        st.g = detail::affine_apply(p.summ[c].f, st.g);
      }
    }
    p.rstats[i] = rs;
  }
}

// ---- apply pass ---------------------------------------------------------------------------------

/// Lead = false: every chunk but the leading masked ones (see chunk_table), the leftmost main
/// chunk of each row recording the state after the row's first valid position; Lead = true
/// (launched after): the leading chunks, the rightmost of them entering with that exact state
/// (so the echo of masked_fill::recursion equals the first valid value bit for bit).
template <int NT, int K, bool HasMask, bool Two, bool Lead, class T, class L, class F>
__global__ void __launch_bounds__(NT, POLO_CUDA_SCAN_MIN_BLOCKS) scan_apply_kernel(scan_params<T, L, F> p) {
  __shared__ chunk_smem<NT> sm;
  __shared__ struct {
    T a[NT * K];
    T r[NT * K];
  } sv;
  using Mask = typename L::mask_type;
  if (*p.err != no_error_key) return;  // the gate: an error was found, nothing is written
  const index_t c = blockIdx.x;
  index_t i = 0, j = 0;
  if (!locate_chunk(p.layout, p.chunks, c, i, j)) return;
  const index_t len = p.layout.row_len(i);
  index_t t0 = 0, n = 0;
  chunk_span(p.chunks, i, j, len, t0, n);
  const index_t nlead = p.chunks.first != nullptr ? (p.chunks.first[i] + p.chunks.S - 1) / p.chunks.S : 0;
  if (Lead != (j < nlead)) return;
  const index_t k0 = index_t(threadIdx.x) * K;
  const bool gae = p.kind == scan_kind::gae;

  bool valid[K];
  if constexpr (HasMask) {
    Mask m[K];
    load_blocked<K>(p.layout.mask_row(i) + t0, k0, n, m, Mask(0));
#pragma unroll
    for (int k = 0; k < K; ++k) valid[k] = k0 + k < n && detail::is_valid(m[k]);
  } else {
#pragma unroll
    for (int k = 0; k < K; ++k) valid[k] = k0 + k < n;
  }
  T r[K], v[K];
  load_blocked<K>(p.layout.row_ptr(p.r, i) + t0, k0, n, r, T(0));
  if (gae) load_blocked<K>(p.layout.row_ptr(p.v, i) + t0, k0, n, v, T(0));
  const scan_state in = (Lead && j == nlead - 1) ? p.exit_state[i] : p.state[c];
  const scan_row row = p.rows[i];
  double exit_next = 0.0;
  const double gamma = p.cfg.gamma;

  detail::affine_step s1[K], s2[K];
  step_pair mine{};
  if (gae) {
    const gae_mask_mode mode = p.cfg.mask;
    handoff h{};
#pragma unroll
    for (int k = K - 1; k >= 0; --k) {
      if (k0 + k >= n) continue;
      if (valid[k] || mode == gae_mask_mode::through) {
        h.v = detail::gae_next_value(mode, valid[k], double(v[k]), h.v);
        h.has = 1;
      }
    }
    handoff tot_h;
    handoff right = block_suffix_exclusive<NT>(h, handoff{}, handoff_op{}, sm.template as<handoff>(), tot_h);
    double nxt = right.has ? right.v : in.next;
#pragma unroll
    for (int k = K - 1; k >= 0; --k) {
      if (k0 + k >= n) {
        s1[k] = s2[k] = detail::affine_step{};
        continue;
      }
      s1[k] = detail::gae_step(mode, valid[k], double(r[k]), double(v[k]), nxt, gamma, row.gl);
      mine.s1 = detail::affine_compose(s1[k], mine.s1);
      if constexpr (Two) {
        s2[k] = detail::gae_step(mode, valid[k], double(r[k]), double(v[k]), nxt, gamma, row.gl2);
        mine.s2 = detail::affine_compose(s2[k], mine.s2);
      }
      nxt = detail::gae_next_value(mode, valid[k], double(v[k]), nxt);
    }
    exit_next = nxt;
  } else {
#pragma unroll
    for (int k = K - 1; k >= 0; --k) {
      s1[k] = k0 + k < n ? detail::returns_step(p.rmask, valid[k], double(r[k]), gamma) : detail::affine_step{};
      mine.s1 = detail::affine_compose(s1[k], mine.s1);
    }
  }
  step_pair tot;
  const step_pair right = block_suffix_exclusive<NT>(mine, step_pair{}, step_pair_op{}, sm.template as<step_pair>(), tot);
  double g = detail::affine_apply(right.s1, in.g);
  double g2 = Two ? detail::affine_apply(right.s2, in.g2) : 0.0;

  T out_a[K], out_r[K];
  scan_chunk_stats cs{};
  if (gae) {
    const gae_mask_mode mode = p.cfg.mask;
    const masked_fill fill = p.cfg.fill;
#pragma unroll
    for (int k = K - 1; k >= 0; --k) {
      g = detail::affine_apply(s1[k], g);
      if constexpr (Two) g2 = detail::affine_apply(s2[k], g2);
      const detail::gae_output o = detail::gae_write(mode, fill, valid[k], g, Two ? g2 : g, double(v[k]));
      out_a[k] = T(o.advantage);
      out_r[k] = T(o.ret);
    }
    store_blocked<K>(p.layout.row_ptr(p.A, i) + t0, k0, n, out_a);
    store_blocked<K>(p.layout.row_ptr(p.R, i) + t0, k0, n, out_r);
    if (!Lead && j == nlead && nlead > 0 && threadIdx.x == 0) p.exit_state[i] = scan_state{exit_next, g, g2, 0.0};
  } else {
    const masked_fill fill = p.cfg.fill;
    const double b = p.base != nullptr ? double(p.base[i * p.base_stride]) : 0.0;
#pragma unroll
    for (int k = K - 1; k >= 0; --k) {
      g = detail::affine_apply(s1[k], g);
      const detail::returns_output o = detail::returns_write(fill, valid[k], g, b);
      out_r[k] = T(o.ret);
      out_a[k] = T(o.advantage);
    }
    store_blocked<K>(p.layout.row_ptr(p.R, i) + t0, k0, n, out_r);
    if (p.base != nullptr) store_blocked<K>(p.layout.row_ptr(p.A, i) + t0, k0, n, out_a);
    if (!Lead && j == nlead && nlead > 0 && threadIdx.x == 0) p.exit_state[i] = scan_state{0.0, g, 0.0, 0.0};
  }
  // Statistics in an order fixed by the ranks of the valid tokens (not their positions), so a
  // padded row and the same row packed reduce identically: the valid values go to slots by
  // rank, thread t accumulates ranks t, t+NT, ... in order, then a fixed tree.
  {
    long long mine_n = 0;
#pragma unroll
    for (int k = 0; k < K; ++k) mine_n += valid[k] ? 1 : 0;
    long long total_n = 0;
    const long long right_n =
        block_suffix_exclusive<NT>(mine_n, 0ll, [](long long a, long long b) { return a + b; },
                                   sm.template as<long long>(), total_n);
    long long rank = total_n - right_n - mine_n;
#pragma unroll
    for (int k = 0; k < K; ++k)
      if (valid[k]) {
        sv.a[rank] = gae ? out_a[k] : out_r[k];
        sv.r[rank] = out_r[k];
        ++rank;
      }
    __syncthreads();
    for (long long q = threadIdx.x; q < total_n; q += NT) {
      cs.m.add(double(sv.a[q]));
      if (gae) cs.rsum += double(sv.r[q]);
    }
  }
  cs = block_reduce_fixed<NT>(
      cs,
      [](scan_chunk_stats a, const scan_chunk_stats& b) {
        a.m += b.m;
        a.rsum += b.rsum;
        return a;
      },
      sm.template as<scan_chunk_stats>());
  if (threadIdx.x == 0) p.cstats[c] = cs;
}

// ---- final pass ---------------------------------------------------------------------------------

template <class T, class L, class F>
__global__ void __launch_bounds__(256) scan_final_kernel(scan_params<T, L, F> p) {
  constexpr int NT = 256;
  __shared__ detail::shared_array<scan_chunk_stats, NT / 32> s_st;
  __shared__ detail::shared_array<scan_row_stats, NT / 32> s_rs;
  const unsigned long long key = *p.err;
  scan_chunk_stats cs{};
  scan_row_stats rs{};
  if (key == no_error_key) {
    // thread t owns a contiguous range of rows (the same for both layouts), merging each row's
    // chunks in order, then a fixed tree
    const index_t B = p.chunks.rows;
    const index_t perb = (B + NT - 1) / NT;
    for (index_t i = threadIdx.x * perb; i < (threadIdx.x + 1) * perb && i < B; ++i) {
      const index_t c1 = chunk_end_of_row(p.layout, p.chunks, i);
      for (index_t c = chunk_begin_of_row(p.layout, p.chunks, i); c < c1; ++c) {
        const scan_chunk_stats& o = p.cstats[c];
        cs.m += o.m;
        cs.rsum += o.rsum;
      }
    }
    const index_t perr = (B + NT - 1) / NT;
    for (index_t i = threadIdx.x * perr; i < (threadIdx.x + 1) * perr && i < B; ++i) {
      const scan_row_stats& o = p.rstats[i];
      rs.lambda_sum += o.lambda_sum;
      rs.lambda_count += o.lambda_count;
      rs.truncated += o.truncated;
    }
  }
  cs = block_reduce_fixed<NT>(
      cs,
      [](scan_chunk_stats a, const scan_chunk_stats& b) {
        a.m += b.m;
        a.rsum += b.rsum;
        return a;
      },
      &s_st[0]);
  rs = block_reduce_fixed<NT>(
      rs,
      [](scan_row_stats a, const scan_row_stats& b) {
        a.lambda_sum += b.lambda_sum;
        a.lambda_count += b.lambda_count;
        a.truncated += b.truncated;
        return a;
      },
      &s_rs[0]);
  if (threadIdx.x != 0) return;
  scan_result out;
  out.err_key = key;
  if (key < gate_key) {
    const index_t i = error_key_row(key), t = error_key_pos(key);
    const int kind = error_key_kind(key);
    double value = 0.0;
    if (kind == 0) value = double(p.layout.row_ptr(p.r, i)[t]);
    else if (kind == 1 && p.kind == scan_kind::gae) value = double(p.layout.row_ptr(p.v, i)[t]);
    else if (kind == 1) value = double(p.base[i * p.base_stride]);
    else value = double(p.boot[i * p.boot_stride]);
    out.err_value = value;
    out.err_flat = kind <= 1 && !(kind == 1 && p.kind == scan_kind::returns) ? detail::flat_index(p.layout, i, t) : i;
  } else if (key == no_error_key) {
    out.tokens = cs.m.count;
    out.m = cs.m;
    out.rsum = cs.rsum;
    out.truncated = rs.truncated;
    out.lambda_sum = rs.lambda_sum;
    out.lambda_count = rs.lambda_count;
  }
  *p.result = out;
}

// ---- packed layouts: offsets check and the chunk table --------------------------------------

/// First error of a packed layout's offsets in the CPU's order: key 0 (offsets[0] != 0), key j
/// (offsets[j] < offsets[j-1]), key B+1 (offsets[B] != N).
template <class O>
__global__ void __launch_bounds__(256) packed_offsets_check_kernel(const O* off, index_t stride, index_t B,
                                                                   index_t N, unsigned long long* key) {
  const index_t j = index_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j > B) return;
  const index_t oj = static_cast<index_t>(off[j * stride]);
  if (j == 0 && oj != 0) atomicMin(key, 0ull);
  if (j > 0 && oj < static_cast<index_t>(off[(j - 1) * stride])) atomicMin(key, static_cast<unsigned long long>(j));
  if (j == B && oj != N) atomicMin(key, static_cast<unsigned long long>(B + 1));
}

/// cnt[i] = ceil(len_i / S) for i < B, cnt[B] = 0 (scanned into the chunk table).
template <class O>
__global__ void __launch_bounds__(256) packed_chunk_count_kernel(const O* off, index_t stride, index_t B, int S,
                                                                 index_t* cnt) {
  const index_t i = index_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i > B) return;
  if (i == B) {
    cnt[i] = 0;
    return;
  }
  const index_t len = static_cast<index_t>(off[(i + 1) * stride]) - static_cast<index_t>(off[i * stride]);
  cnt[i] = (len + S - 1) / S;
}

template <class O>
cudaError_t launch_packed_offsets_check(const O* off, index_t stride, index_t B, index_t N, unsigned long long* key,
                                        cudaStream_t stream) {
  POLO_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(key, 0xff, sizeof(unsigned long long), stream));
  packed_offsets_check_kernel<<<detail::grid_for(B + 1, 256), 256, 0, stream>>>(off, stride, B, N, key);
  return cudaGetLastError();
}

/// Scratch bytes of cub's exclusive scan over B+1 chunk counts.
inline std::size_t chunk_scan_temp_bytes(index_t B) {
  std::size_t bytes = 0;
  (void)cub::DeviceScan::ExclusiveSum(nullptr, bytes, static_cast<const index_t*>(nullptr),
                                      static_cast<index_t*>(nullptr), static_cast<int>(B + 1));
  return bytes;
}

template <class O>
cudaError_t launch_packed_chunk_table(const O* off, index_t stride, index_t B, int S, index_t* cnt, index_t* start,
                                      void* temp, std::size_t temp_bytes, cudaStream_t stream) {
  packed_chunk_count_kernel<<<detail::grid_for(B + 1, 256), 256, 0, stream>>>(off, stride, B, S, cnt);
  POLO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return cub::DeviceScan::ExclusiveSum(temp, temp_bytes, cnt, start, static_cast<int>(B + 1), stream);
}

/// Enqueues the whole scan: [count pass, phase-0 rows] (length-adaptive λ), summary, rows,
/// apply, final. `*p.err` must hold no_error_key (or an earlier error) before the call.
template <int NT, int K, class T, class L, class F>
cudaError_t launch_scan(const scan_params<T, L, F>& p, cudaStream_t stream) {
  const index_t grid = p.chunks.bound;
  const unsigned row_grid = detail::grid_for(p.chunks.rows, 128);
  const bool has_mask = !p.layout.mask.is_null();
  auto run = [&](auto hm) -> cudaError_t {
    constexpr bool HM = decltype(hm)::value;
    if (grid > 0) {
      if (p.kind == scan_kind::gae && p.cfg.lambda_mode == gae_lambda_mode::length_adaptive) {
        scan_summary_kernel<NT, K, HM, true><<<unsigned(grid), NT, 0, stream>>>(p);
        POLO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
        scan_rows_kernel<0><<<row_grid, 128, 0, stream>>>(p);
        POLO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
      }
      scan_summary_kernel<NT, K, HM, false><<<unsigned(grid), NT, 0, stream>>>(p);
      POLO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
    }
    if (p.chunks.rows > 0) {
      scan_rows_kernel<1><<<row_grid, 128, 0, stream>>>(p);
      POLO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
    }
    if (grid > 0) {
      if (p.two) {
        scan_apply_kernel<NT, K, HM, true, false><<<unsigned(grid), NT, 0, stream>>>(p);
        if (HM) scan_apply_kernel<NT, K, HM, true, true><<<unsigned(grid), NT, 0, stream>>>(p);
      } else {
        scan_apply_kernel<NT, K, HM, false, false><<<unsigned(grid), NT, 0, stream>>>(p);
        if (HM) scan_apply_kernel<NT, K, HM, false, true><<<unsigned(grid), NT, 0, stream>>>(p);
      }
      POLO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
    }
    scan_final_kernel<<<1, 256, 0, stream>>>(p);
    return cudaGetLastError();
  };
  return has_mask ? run(std::true_type{}) : run(std::false_type{});
}


// ---- row anchors and the chunk table of the scans ----------------------------------------------

/// first[i] = the first valid position of row i (0 when it has none or no mask);
/// cnt[i] = ceil(first/S) + ceil((len - first)/S); cnt[B] = 0. One warp per row.
template <class L>
__global__ void __launch_bounds__(256) scan_anchor_kernel(L layout, int S, index_t* first, index_t* cnt) {
  const index_t i = (index_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x & 31;
  const index_t B = layout.num_seqs();
  if (i > B) return;
  if (i == B) {
    if (lane == 0) cnt[B] = 0;
    return;
  }
  const index_t len = layout.row_len(i);
  const auto* m = layout.mask_row(i);
  index_t f = 0;
  if (m != nullptr) {
    f = len;
    for (index_t t0 = 0; t0 < len; t0 += 32) {
      const index_t t = t0 + lane;
      const unsigned ball = __ballot_sync(0xffffffffu, t < len && detail::is_valid(m[t]));
      if (ball != 0) {
        f = t0 + __ffs(ball) - 1;
        break;
      }
    }
    if (f == len) f = 0;  // no valid token: one run of chunks from 0
  }
  if (lane == 0) {
    first[i] = f;
    cnt[i] = (f + S - 1) / S + (len - f + S - 1) / S;
  }
}

template <class L>
cudaError_t launch_scan_chunk_table(const L& layout, int S, index_t* first, index_t* cnt, index_t* start, void* temp,
                                    std::size_t temp_bytes, cudaStream_t stream) {
  const index_t B = layout.num_seqs();
  scan_anchor_kernel<<<detail::grid_for((B + 1) * 32, 256), 256, 0, stream>>>(layout, S, first, cnt);
  POLO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return cub::DeviceScan::ExclusiveSum(temp, temp_bytes, cnt, start, static_cast<int>(B + 1), stream);
}

// ---- helpers of the composite entries (REINFORCE++, OPO) ---------------------------------------

/// n[i] = valid tokens of row i; one warp per row (integer sums: order-free).
template <class L>
__global__ void __launch_bounds__(256) row_count_kernel(L layout, long long* n) {
  const index_t i = (index_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x & 31;
  if (i >= layout.num_seqs()) return;
  const index_t len = layout.row_len(i);
  const auto* m = layout.mask_row(i);
  long long k = 0;
  for (index_t t = lane; t < len; t += 32) k += (m == nullptr || detail::is_valid(m[t])) ? 1 : 0;
#pragma unroll
  for (int d = 16; d > 0; d >>= 1) k += __shfl_down_sync(0xffffffffu, k, d);
  if (lane == 0) n[i] = k;
}

/// total[0] = sum of n[0..B).
__global__ void __launch_bounds__(256) sum_counts_kernel(const long long* n, index_t B, long long* total) {
  __shared__ long long sm[8];
  long long k = 0;
  for (index_t i = threadIdx.x; i < B; i += 256) k += n[i];
  k = block_reduce_fixed<256>(k, [](long long a, long long b) { return a + b; }, sm);
  if (threadIdx.x == 0) *total = k;
}

template <class L>
cudaError_t launch_row_counts(const L& layout, long long* n, long long* total, cudaStream_t stream) {
  const index_t B = layout.num_seqs();
  if (B > 0) {
    row_count_kernel<<<detail::grid_for(B * 32, 256), 256, 0, stream>>>(layout, n);
    POLO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  }
  sum_counts_kernel<<<1, 256, 0, stream>>>(n, B, total);
  return cudaGetLastError();
}

/// First non-finite score (smallest index) -> atomicMin(key, i).
template <class T>
__global__ void __launch_bounds__(256) opo_check_kernel(const T* s, index_t stride, index_t B, unsigned long long* key) {
  const index_t i = index_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < B && !detail::is_finite(s[i * stride])) atomicMin(key, static_cast<unsigned long long>(i));
}

/// OPO per sequence: b_g = sum_j n_j s_j / sum_j n_j over its group (members in ascending
/// index, Neumaier, as the CPU backend), 0 for a group of one; A_i = s_i - b_g. Also flags the
/// first member of each group and whether the group is a singleton.
template <class T, class Label>
__global__ void __launch_bounds__(256) opo_kernel(const T* s, index_t s_stride, index_t B, index_t G,
                                                  const Label* labels, index_t l_stride, const long long* n, T* adv,
                                                  index_t a_stride, int* first, int* single) {
  const index_t i = index_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= B) return;
  detail::neumaier_sum num;
  long long den = 0, k = 0;
  bool is_first = true;
  auto visit = [&](index_t j) {
    num.add(double(n[j]) * double(s[j * s_stride]));
    den += n[j];
    ++k;
  };
  if (labels == nullptr) {
    const index_t g0 = (i / G) * G;
    for (index_t j = g0; j < g0 + G && j < B; ++j) visit(j);
    is_first = i == g0;
  } else {
    const Label li = labels[i * l_stride];
    for (index_t j = 0; j < B; ++j)
      if (labels[j * l_stride] == li) {
        visit(j);
        if (j < i) is_first = false;
      }
  }
  const double b = k == 1 ? 0.0 : (den > 0 ? num.value() / double(den) : 0.0);
  adv[i * a_stride] = T(double(s[i * s_stride]) - b);
  first[i] = is_first ? 1 : 0;
  single[i] = (is_first && k == 1) ? 1 : 0;
}

struct opo_result {
  long long groups = 0, singleton = 0;
  moments scores{};
  double asum = 0.0, pad_ = 0.0;
};

/// Group statistics of OPO in index order (one thread: the CPU's order for contiguous groups).
template <class T>
__global__ void opo_stats_kernel(const T* s, index_t s_stride, const T* adv, index_t a_stride, index_t B,
                                 const int* first, const int* single, opo_result* out) {
  if (threadIdx.x != 0 || blockIdx.x != 0) return;
  opo_result r;
  detail::neumaier_sum as;
  for (index_t i = 0; i < B; ++i) {
    r.groups += first[i];
    r.singleton += single[i];
    r.scores.add(double(s[i * s_stride]));
    as.add(double(adv[i * a_stride]));
  }
  r.asum = as.value();
  *out = r;
}

}  // namespace polo::kernels
