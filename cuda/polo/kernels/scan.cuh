// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
#pragma once
/// \file
/// Block-level building blocks of the CUDA scans and single-pass reductions (GAE, returns,
/// policy loss): shuffles of small structs, fixed-shape warp and block trees (suffix scans in
/// reverse time, reductions), and the 64-bit error key that orders data errors exactly as the
/// CPU backend's row-by-row checks find them. Every tree has a shape fixed by the block size
/// alone, so results are bitwise identical run to run.

#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>

#include "polo/core/config.hpp"

namespace polo::kernels {

/// `__shfl_down_sync` of any trivially copyable struct whose size is a multiple of 4 bytes.
template <class S>
__device__ __forceinline__ S shfl_down_struct(const S& s, int delta) {
  static_assert(sizeof(S) % 4 == 0, "shfl_down_struct: pad the struct to a multiple of 4 bytes");
  constexpr int W = sizeof(S) / 4;
  unsigned w[W];
  std::memcpy(w, &s, sizeof(S));
#pragma unroll
  for (int i = 0; i < W; ++i) w[i] = __shfl_down_sync(0xffffffffu, w[i], delta);
  S out;
  std::memcpy(&out, w, sizeof(S));
  return out;
}

/// Exclusive suffix scan over the threads of a block (NT threads, a multiple of 32): thread i
/// gets op(x_{i+1}, op(x_{i+2}, ... x_{NT-1})) -- the combination of every thread to its right,
/// nearest first -- or `identity` for the last thread; `total` gets the combination of all
/// threads in the first warp (thread 0 is the one that uses it; elsewhere it is unspecified).
/// `op(near, far)` must be associative. `smem` holds NT/32 elements. Contains __syncthreads
/// (call from every thread of the block).
template <int NT, class S, class Op>
__device__ __forceinline__ S block_suffix_exclusive(S x, const S& identity, Op op, S* smem, S& total) {
  constexpr int warps = NT / 32;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  S incl = x;
#pragma unroll
  for (int d = 1; d < 32; d <<= 1) {
    S y = shfl_down_struct(incl, d);
    if (lane + d < 32) incl = op(incl, y);
  }
  S excl = shfl_down_struct(incl, 1);
  if (lane == 31) excl = identity;
  if (lane == 0) smem[warp] = incl;
  __syncthreads();
  S far = identity;  // combination of the warps to the right of this one
#pragma unroll
  for (int w = warps - 1; w > 0; --w)
    if (w > warp) far = op(smem[w], far);
  // In the first warp, `far` combines warps 1.. in the order a fold over every warp would, so
  // this is that fold's value (each thread used to form it: 2 x NT/32 more steps per thread).
  total = op(smem[0], far);
  __syncthreads();
  return op(excl, far);
}

/// The lane stage of the fixed trees: for d = 16, 8, .., 1 lane i combines its value with lane
/// i + d's (`op(left, right)`); the warp's result is valid in lane 0. Lanes i >= 32 - d combine
/// with their own value (shfl_down's result past the last lane) instead of keeping it: no lane
/// that lane 0's result reads from is among them (lane 0 reads lanes d, 3d/2, ... < 32), so the
/// result is the guarded tree's, without a select per word and step. `op` must be safe on any
/// pair of its own results (it is never asked to trap).
template <class S, class Op>
__device__ __forceinline__ S warp_reduce_fixed(S x, Op op) {
#pragma unroll
  for (int d = 16; d > 0; d >>= 1) x = op(x, shfl_down_struct(x, d));
  return x;
}

/// The warp stage of the fixed trees: lane 0 of each warp holds its warp's value, and thread 0
/// combines them in warp order (`op(left, right)`); the result is valid in thread 0 only.
/// `smem` holds NT/32 elements. Contains __syncthreads (the last one frees `smem`).
template <int NT, class S, class Op>
__device__ __forceinline__ S block_fold_warps(const S& x, Op op, S* smem) {
  constexpr int warps = NT / 32;
  if ((threadIdx.x & 31) == 0) smem[threadIdx.x >> 5] = x;
  __syncthreads();
  S r = smem[0];
  if (threadIdx.x == 0) {
#pragma unroll
    for (int w = 1; w < warps; ++w) r = op(r, smem[w]);
  }
  __syncthreads();
  return r;
}

/// Reduction over the threads of a block in a fixed tree (lanes, then warps in order);
/// `op(left, right)` combines neighbours. The result is valid in thread 0 only. `smem` holds
/// NT/32 elements. Contains __syncthreads.
template <int NT, class S, class Op>
__device__ __forceinline__ S block_reduce_fixed(S x, Op op, S* smem) {
  return block_fold_warps<NT>(warp_reduce_fixed(x, op), op, smem);
}

/// Chunk-level form of the suffix scan above for kernels that run CPB chunks per block: CPB = 1
/// is the block of NT threads (the functions above); CPB > 1 needs NT = 32 (one warp per
/// chunk): the same lane trees with warp barriers only, so each warp's chunk is independent of
/// its neighbours (and a warp may leave early). Results are those of the CPB = 1 form on a
/// 32-thread block, every lane receiving them.
template <int CPB>
__device__ __forceinline__ void chunk_sync() {
  if constexpr (CPB > 1)
    __syncwarp();
  else
    __syncthreads();
}

template <class S>
__device__ __forceinline__ S shfl_idx_struct(const S& s, int src) {
  static_assert(sizeof(S) % 4 == 0, "shfl_idx_struct: pad the struct to a multiple of 4 bytes");
  constexpr int W = sizeof(S) / 4;
  unsigned w[W];
  std::memcpy(w, &s, sizeof(S));
#pragma unroll
  for (int i = 0; i < W; ++i) w[i] = __shfl_sync(0xffffffffu, w[i], src);
  S out;
  std::memcpy(&out, w, sizeof(S));
  return out;
}

template <int NT, int CPB, class S, class Op>
__device__ __forceinline__ S chunk_suffix_exclusive(S x, const S& identity, Op op, S* smem, S& total) {
  if constexpr (CPB == 1) {
    return block_suffix_exclusive<NT>(x, identity, op, smem, total);
  } else {
    static_assert(NT == 32, "chunk_suffix_exclusive: several chunks per block need one warp per chunk");
    const int lane = threadIdx.x & 31;
    S incl = x;
#pragma unroll
    for (int d = 1; d < 32; d <<= 1) {
      S y = shfl_down_struct(incl, d);
      if (lane + d < 32) incl = op(incl, y);
    }
    S excl = shfl_down_struct(incl, 1);
    if (lane == 31) excl = identity;
    total = op(shfl_idx_struct(incl, 0), identity);
    __syncwarp();  // like the block form, ends with a barrier (orders the caller's shared memory)
    return op(excl, identity);
  }
}

/// Error key: orders data errors as the CPU backend finds them (row by row; within a row the
/// arguments in `kind` order; within an argument by position). Smaller is earlier; none is
/// `no_error_key`. Rows below 2^29, kinds below 4, positions below 2^32.
inline constexpr unsigned long long no_error_key = ~0ull;
POLO_HD_INLINE unsigned long long error_key(index_t row, int kind, index_t t) {
  return (static_cast<unsigned long long>(row) << 34) | (static_cast<unsigned long long>(kind) << 32) |
         static_cast<unsigned long long>(t);
}
POLO_HD_INLINE index_t error_key_row(unsigned long long k) { return static_cast<index_t>(k >> 34); }
POLO_HD_INLINE int error_key_kind(unsigned long long k) { return static_cast<int>((k >> 32) & 3u); }
POLO_HD_INLINE index_t error_key_pos(unsigned long long k) { return static_cast<index_t>(k & 0xffffffffull); }

/// Widest vector (16, 8 or 4 bytes, else 0: scalar) that divides a run of K elements of T.
template <int K, class T>
inline constexpr int vector_bytes_v = (K * sizeof(T)) % 16 == 0 ? 16 : (K * sizeof(T)) % 8 == 0 ? 8 : (K * sizeof(T)) % 4 == 0 ? 4 : 0;

template <int VB>
struct vector_word;
template <>
struct vector_word<16> { using type = uint4; };
template <>
struct vector_word<8> { using type = uint2; };
template <>
struct vector_word<4> { using type = unsigned; };

/// Loads `K` consecutive elements starting at `p + k0` (blocked: thread-owned, contiguous)
/// with a bound `n`; out-of-range items get `fill`. Uses the widest vector loads (16, 8 or 4
/// bytes) that the run's length and `p + k0`'s alignment allow, scalar loads otherwise.
/// EvictFirst = true marks the vector loads evict-first (`ld.global.cs`): for the call's last
/// read of them.
template <int K, bool EvictFirst, class T>
__device__ __forceinline__ void load_blocked_as(const T* __restrict__ p, index_t k0, index_t n, T (&out)[K], T fill) {
  constexpr int VB = vector_bytes_v<K, T>;
  const T* q = p + k0;
  if constexpr (VB > 0) {
    if (k0 + K <= n && (reinterpret_cast<std::uintptr_t>(q) % VB) == 0) {
      using W = typename vector_word<VB>::type;
      constexpr int per = VB / sizeof(T);
#pragma unroll
      for (int v = 0; v < K / per; ++v) {
        W u;
        if constexpr (EvictFirst)
          u = __ldcs(reinterpret_cast<const W*>(q) + v);
        else
          u = __ldg(reinterpret_cast<const W*>(q) + v);
        T tmp[per];
        std::memcpy(tmp, &u, VB);
#pragma unroll
        for (int j = 0; j < per; ++j) out[v * per + j] = tmp[j];
      }
      return;
    }
  }
#pragma unroll
  for (int k = 0; k < K; ++k) out[k] = (k0 + k < n) ? q[k] : fill;
}

template <int K, class T>
__device__ __forceinline__ void load_blocked(const T* __restrict__ p, index_t k0, index_t n, T (&out)[K], T fill) {
  load_blocked_as<K, false>(p, k0, n, out, fill);
}

/// Stores the first `min(K, n - k0)` of `K` consecutive elements at `p + k0` (vector stores
/// when the whole run is in range and aligned). EvictFirst = true marks the vector stores
/// evict-first (`st.global.cs`): outputs that no later pass of the call reads should not push
/// out of L2 the inputs a later pass will read again.
template <int K, bool EvictFirst, class T>
__device__ __forceinline__ void store_blocked_as(T* __restrict__ p, index_t k0, index_t n, const T (&in)[K]) {
  constexpr int VB = vector_bytes_v<K, T>;
  T* q = p + k0;
  if constexpr (VB > 0) {
    if (k0 + K <= n && (reinterpret_cast<std::uintptr_t>(q) % VB) == 0) {
      using W = typename vector_word<VB>::type;
      constexpr int per = VB / sizeof(T);
#pragma unroll
      for (int v = 0; v < K / per; ++v) {
        T tmp[per];
#pragma unroll
        for (int j = 0; j < per; ++j) tmp[j] = in[v * per + j];
        W u;
        std::memcpy(&u, tmp, VB);
        if constexpr (EvictFirst)
          __stcs(reinterpret_cast<W*>(q) + v, u);
        else
          reinterpret_cast<W*>(q)[v] = u;
      }
      return;
    }
  }
#pragma unroll
  for (int k = 0; k < K; ++k)
    if (k0 + k < n) q[k] = in[k];
}

template <int K, class T>
__device__ __forceinline__ void store_blocked(T* __restrict__ p, index_t k0, index_t n, const T (&in)[K]) {
  store_blocked_as<K, false>(p, k0, n, in);
}

}  // namespace polo::kernels
