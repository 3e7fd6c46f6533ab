// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
#pragma once
/// \file
/// Layout-independent, deterministic reductions over the valid tokens of one row, and a
/// fixed-tree reduction of per-row results: the building blocks of the CUDA whiten and
/// value_loss (and of any primitive whose padded and packed results must agree bitwise).
///
/// A padded row and the same row packed hold the same valid values at different positions
/// (left padding, a shorter span). `rank_ordered_sum` makes the order of every floating-point
/// addition depend only on the sequence of valid values: the block walks the row in chunks of
/// `Threads` positions, ranks the valid ones with a block scan, and the value of valid rank r
/// is added to slot r % Threads; slots accumulate in rank order and are then combined in a
/// fixed binary tree. The result is therefore bitwise the same for both layouts, and from run
/// to run (no atomics on floating-point values).
///
/// The faster scheme that whiten and value_loss use (no scan, no barrier per chunk):
/// `row_first_valid` finds the row's first valid position f, each thread k then takes, at
/// steps c = f, f + S, ... (S = Threads·Q·U), the quads of Q consecutive positions
/// c + (u·Threads + k)·Q + e (u < U, e < Q) in increasing order (`load_quad`: one vector load
/// per quad where aligned), and `block_tree_fold` merges the threads' results in a fixed tree.
/// The assignment depends only on the position relative to f, so a padded row and the same
/// row packed from its first valid token (interior masked tokens kept, as polo packs) agree
/// bitwise (the vector and scalar loads give the same values).

#include <cuda_runtime.h>

#include <cub/block/block_scan.cuh>

#include <climits>
#include <cstring>
#include <type_traits>
#include <utility>

#include "polo/core/backend.hpp"
#include "polo/core/config.hpp"
#include "polo/core/layout.hpp"
#include "polo/detail/launch.cuh"
#include "polo/detail/status.cuh"

namespace polo::kernels {

/// Shared memory of rank_ordered_sum for a block of `Threads` and values of type V.
template <int Threads, class V>
struct rank_sum_storage {
  typename cub::BlockScan<int, Threads>::TempStorage scan;
  detail::shared_array<V, Threads> slot;
};

/// The typical row length of a layout: padded T, or packed N/B rounded up (0 without rows).
/// Kernels that reduce short rows by one warp each pick their path from it. Host and device.
template <class L>
POLO_HD_INLINE index_t typical_row_length(const L& layout) {
  const index_t B = layout.num_seqs();
  if constexpr (L::is_packed) return B > 0 ? detail::ceil_div<index_t>(layout.tokens, B) : 0;
  else return layout.seq_len;
}

/// Blocks for a kernel that strides over the rows longer than `span` positions that a
/// one-warp-per-row kernel listed, in a batch whose typical row is at most `span`: none for a
/// padded batch (T <= span), for a packed one N / (span + 1) (rows of valid offsets cannot be
/// more; any count would be correct) and at most B and `cap`.
template <class L>
index_t long_row_blocks(const L& layout, index_t span, index_t cap) {
  if constexpr (!L::is_packed) {
    return 0;
  } else {
    index_t n = layout.tokens / (span + 1);
    if (n > layout.num_seqs()) n = layout.num_seqs();
    return n < cap ? n : cap;
  }
}

/// Blocks of a grid_tree_fold kernel over n rows: ceil(n / threads), at least one.
inline index_t fold_blocks(index_t n, int threads) { return n > 0 ? detail::ceil_div<index_t>(n, threads) : 1; }

#if defined(__CUDACC__)

/// Σ load(t) over the positions t in [0, len) with valid(t), summed with `add` in an order
/// fixed by the ranks of the valid positions (see the file comment). Call from every thread
/// of the block with the same len; returns the sum in every thread and the number of valid
/// positions in `count`. `load` is called once per valid position, by one thread.
template <int Threads, class V, class Valid, class Load, class Add>
__device__ V rank_ordered_sum(index_t len, Valid&& valid, Load&& load, Add&& add, V zero,
                              rank_sum_storage<Threads, V>& sm, index_t& count) {
  V acc = zero;
  index_t base = 0;
  const int tid = threadIdx.x;
  for (index_t c = 0; c < len; c += Threads) {
    const index_t t = c + tid;
    const bool ok = t < len && valid(t);
    int rank = 0, total = 0;
    cub::BlockScan<int, Threads>(sm.scan).ExclusiveSum(ok ? 1 : 0, rank, total);
    if (ok) sm.slot[static_cast<int>((base + rank) % Threads)] = load(t);
    __syncthreads();
    const int first = static_cast<int>(base % Threads);
    const int j = (tid - first + Threads) % Threads;  // this slot's rank offset within the chunk
    if (j < total) acc = add(acc, sm.slot[tid]);
    __syncthreads();
    base += total;
  }
  sm.slot[tid] = acc;
  __syncthreads();
  for (int s = Threads / 2; s > 0; s >>= 1) {
    if (tid < s) sm.slot[tid] = add(sm.slot[tid], sm.slot[tid + s]);
    __syncthreads();
  }
  const V r = sm.slot[0];
  __syncthreads();  // the storage may be reused by the caller
  count = base;
  return r;
}

/// First valid position of a row (len when none), the same in every thread of the block.
template <int Threads, class Valid>
__device__ index_t first_valid(index_t len, Valid&& valid, int* sh) {
  index_t found = len;
  for (index_t c = 0; c < len; c += Threads) {
    if (threadIdx.x == 0) *sh = Threads;
    __syncthreads();
    const index_t t = c + threadIdx.x;
    if (t < len && valid(t)) atomicMin(sh, static_cast<int>(threadIdx.x));
    __syncthreads();
    const int f = *sh;
    __syncthreads();
    if (f < Threads) {
      found = c + f;
      break;
    }
  }
  return found;
}

/// First valid position of a row (len when none), the same in every thread of the block; a
/// warp-shuffle minimum over chunks of 4·Threads positions (no atomics). `sh` holds
/// Threads / 32 ints. The row's first valid token anchors the position-ordered reductions
/// below: positions are counted from it, so a padded row and the same row packed from its
/// first valid token assign every valid value to the same thread in the same order.
template <int Threads, class Valid>
__device__ index_t row_first_valid(index_t len, Valid&& valid, int* sh) {
  constexpr int U = 4;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  for (index_t c = 0; c < len; c += index_t(Threads) * U) {
    int best = INT_MAX;
#pragma unroll
    for (int u = U - 1; u >= 0; --u) {
      const index_t t = c + index_t(u) * Threads + tid;
      if (t < len && valid(t)) best = u * Threads + tid;
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const int other = __shfl_xor_sync(0xffffffffu, best, o);
      best = other < best ? other : best;
    }
    if (lane == 0) sh[warp] = best;
    __syncthreads();
    int b = INT_MAX;
#pragma unroll
    for (int w = 0; w < Threads / 32; ++w) b = sh[w] < b ? sh[w] : b;
    __syncthreads();
    if (b != INT_MAX) return c + b;
  }
  return len;
}

/// Whether a stored value is finite, as |x| <= the largest finite value: one compare (with
/// the absolute value as an operand modifier) that chains into the next check's predicate,
/// where detail::is_finite's x - x == x - x takes a subtraction and a compare. NaN fails.
/// (bf16 and half are tested through float.)
template <class T>
__device__ __forceinline__ bool finite_of(T x) {
  if constexpr (std::is_same_v<T, double>)
    return ::fabs(x) <= 1.7976931348623157e308;
  else
    return ::fabsf(static_cast<float>(x)) <= 3.40282347e38f;
}

/// The unsigned integer of X's size (1, 2, 4 or 8 bytes), for the cache-hinted loads and
/// stores below (CUDA's __ldcs / __stcs have no overload for every element type, e.g. bool).
template <class X>
using bits_of = std::conditional_t<
    sizeof(X) == 1, unsigned char,
    std::conditional_t<sizeof(X) == 2, unsigned short,
                       std::conditional_t<sizeof(X) == 4, unsigned int, unsigned long long>>>;

/// *p loaded evict-first (`ld.global.cs`): for a value the call reads for the last time, so
/// that it does not push out of L2 the inputs still to be read again. Any trivially copyable
/// type of 1, 2, 4 or 8 bytes.
template <class X>
__device__ __forceinline__ X load_last_use(const X* p) {
  static_assert(std::is_trivially_copyable_v<X> && (sizeof(X) == 1 || sizeof(X) == 2 || sizeof(X) == 4 ||
                                                    sizeof(X) == 8),
                "load_last_use: a trivially copyable type of 1, 2, 4 or 8 bytes");
  if constexpr (std::is_arithmetic_v<X> && !std::is_same_v<X, bool>) {
    return __ldcs(p);
  } else {
    const bits_of<X> u = __ldcs(reinterpret_cast<const bits_of<X>*>(p));
    X x;
    memcpy(&x, &u, sizeof(X));
    return x;
  }
}

/// *p = x stored evict-first (`st.global.cs`): an output the call does not read again.
template <class X>
__device__ __forceinline__ void store_streaming(X* p, const X& x) {
  static_assert(std::is_trivially_copyable_v<X> && (sizeof(X) == 1 || sizeof(X) == 2 || sizeof(X) == 4 ||
                                                    sizeof(X) == 8),
                "store_streaming: a trivially copyable type of 1, 2, 4 or 8 bytes");
  if constexpr (std::is_arithmetic_v<X> && !std::is_same_v<X, bool>) {
    __stcs(p, x);
  } else {
    bits_of<X> u;
    memcpy(&u, &x, sizeof(X));
    __stcs(reinterpret_cast<bits_of<X>*>(p), u);
  }
}

/// The minimum over a group of S threads (S = 32: a warp; S = 256: the block, which then
/// needs `sh`, N shared slots) of each of N indices (LLONG_MAX: none), returned to every
/// thread: the first non-finite value of a row, whichever thread found it. Call from the
/// whole group.
template <int S, int N>
__device__ void group_min_index(long long (&x)[N], unsigned long long* sh) {
  for (int k = 0; k < N; ++k)
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const long long other = __shfl_xor_sync(0xffffffffu, x[k], o);
      x[k] = other < x[k] ? other : x[k];
    }
  if constexpr (S > 32) {
    if (threadIdx.x == 0)
      for (int k = 0; k < N; ++k) sh[k] = LLONG_MAX;
    __syncthreads();
    if ((threadIdx.x & 31) == 0)
      for (int k = 0; k < N; ++k)
        if (x[k] != LLONG_MAX) atomicMin(&sh[k], static_cast<unsigned long long>(x[k]));
    __syncthreads();
    for (int k = 0; k < N; ++k) x[k] = static_cast<long long>(sh[k]);
  }
}

/// Q consecutive elements, aligned for one vector load.
template <int Q, class T>
struct alignas(sizeof(T) * Q) quad_of {
  T x[Q];
};

/// The Q elements base[pos .. pos+Q) (0 past len): one vector load when `vec` (base + pos
/// aligned to Q elements) and the quad is whole, else element by element. The values, and so
/// any sum over them, are the same either way.
template <int Q, class T>
__device__ __forceinline__ void load_quad(const T* base, index_t pos, index_t len, bool vec, T (&out)[Q]) {
  if (vec && pos + Q <= len) {
    const quad_of<Q, T> q = *reinterpret_cast<const quad_of<Q, T>*>(base + pos);
#pragma unroll
    for (int e = 0; e < Q; ++e) out[e] = q.x[e];
  } else {
#pragma unroll
    for (int e = 0; e < Q; ++e) out[e] = pos + e < len ? base[pos + e] : T(0);
  }
}

/// The mask entries of a quad of Q consecutive positions, as a row pass keeps them between
/// its loads and its sums: the Q elements (any mask type), or for a 1-byte integral or bool
/// mask and Q = 4 one 32-bit word (one register instead of four, which lets a pass keep the
/// next step's loads in flight while it sums the current one). valid(e): is_valid of entry e.
template <class M, int Q>
struct mask_quad {
  M x[Q];
  [[nodiscard]] POLO_HD_INLINE bool valid(int e) const { return detail::is_valid(x[e]); }
};
template <class M>
  requires(sizeof(M) == 1 && (std::is_integral_v<M> || std::is_same_v<M, bool>))
struct mask_quad<M, 4> {
  unsigned w;
  [[nodiscard]] POLO_HD_INLINE bool valid(int e) const { return (w & (0xffu << (8 * e))) != 0u; }
};

/// The mask entries base[pos .. pos+Q) (0 past len) into a mask_quad: one vector load when
/// `vec` (base + pos aligned to Q elements) and the quad is whole, else element by element.
template <int Q, class M>
__device__ __forceinline__ void load_mask_quad(const M* base, index_t pos, index_t len, bool vec, mask_quad<M, Q>& out) {
  if constexpr (requires { out.w; }) {
    if (vec && pos + Q <= len) {
      out.w = *reinterpret_cast<const unsigned*>(base + pos);
    } else {
      unsigned w = 0;
#pragma unroll
      for (int e = 0; e < Q; ++e)
        if (pos + e < len) w |= unsigned(*reinterpret_cast<const unsigned char*>(base + pos + e)) << (8 * e);
      out.w = w;
    }
  } else {
    load_quad<Q>(base, pos, len, vec, out.x);
  }
}

/// Every position of one step of a block-per-row pass (thread `tid` of NT, U quads of Q
/// positions c + (u·NT + tid)·Q + e, their mask `mk` loaded by the caller with load_mask_quad;
/// `m` null: no mask), in increasing order: calls add(u, e, ok) for each, with ok = the
/// position is valid (inside the row, tested only when !Whole: a step that lies wholly inside
/// the row needs no bound, and its mask says valid). `add` folds a position that is not ok as
/// a neutral value, without a branch: the per-token work has no divergence to reconverge
/// (H100, whiten's statistics: about 18 instructions per token with a branch per position,
/// ~10 without). Sets `far` when a valid position lies at or past f + NT·Q, the one-warp span
/// of whiten and value_loss: in the row's first step (c == f) the first quad of each thread
/// lies below it, every other position at or past it.
template <int NT, int Q, int U, bool Whole, class M, class Add>
__device__ __forceinline__ void step_each(index_t c, index_t f, index_t len, int tid, const M* m,
                                          const mask_quad<M, Q> (&mk)[U], bool& far, Add&& add) {
  const bool later = c != f;
#pragma unroll
  for (int u = 0; u < U; ++u) {
    const index_t pos = c + (index_t(u) * NT + tid) * Q;
    bool any = false;
#pragma unroll
    for (int e = 0; e < Q; ++e) {
      const bool ok = (Whole || pos + e < len) && (m == nullptr || mk[u].valid(e));
      add(u, e, ok);
      any = any || ok;
    }
    if (u > 0 || later) far = far || any;
  }
}

/// A warp shuffle of a trivially copyable value of any size: `shfl` applied to each of its
/// 32-bit words.
template <class V, class Shfl>
__device__ __forceinline__ V shfl_words(const V& v, Shfl&& shfl) {
  static_assert(sizeof(V) % 4 == 0, "shuffled values: a multiple of 4 bytes");
  constexpr int N = sizeof(V) / 4;
  unsigned w[N];
  memcpy(w, &v, sizeof(V));
#pragma unroll
  for (int k = 0; k < N; ++k) w[k] = shfl(w[k]);
  V r;
  memcpy(&r, w, sizeof(V));
  return r;
}

/// __shfl_down_sync of a trivially copyable value of any size (as 32-bit words).
template <class V>
__device__ __forceinline__ V shfl_down_value(const V& v, int d) {
  return shfl_words(v, [d](unsigned x) { return __shfl_down_sync(0xffffffffu, x, d); });
}

/// __shfl_xor_sync of a trivially copyable value of any size (as 32-bit words).
template <class V>
__device__ __forceinline__ V shfl_xor_value(const V& v, int d) {
  return shfl_words(v, [d](unsigned x) { return __shfl_xor_sync(0xffffffffu, x, d); });
}

/// Fixed binary tree over the lanes of a warp: returns merge of every lane's `v` in lane order
/// (pairs (l, l+1), then (l, l+2), ...), in lane 0 (others: unspecified). Call from a whole warp.
template <class V, class Merge>
__device__ __forceinline__ V warp_tree_fold(const V& v, Merge&& merge) {
  const int lane = int(threadIdx.x & 31);
  V a = v;
#pragma unroll
  for (int s = 1; s < 32; s <<= 1) {
    const V b = shfl_down_value(a, s);
    if (lane % (2 * s) == 0) a = merge(a, b);
  }
  return a;
}

/// Fixed binary tree over the threads of a block: returns merge of every thread's `v` in
/// thread order (pairs (t, t+1), then (t, t+2), ...), in thread 0 (others: unspecified).
/// `sh` is reused on return.
/// The levels inside a warp use shuffles (warp_tree_fold: the same pairs, so the same tree),
/// the rest shared memory: 3 barriers for 256 threads instead of 9.
template <int Threads, class V, class Merge>
__device__ V block_tree_fold(const V& v, Merge&& merge, detail::shared_array<V, Threads>& sh) {
  static_assert(Threads % 32 == 0, "block_tree_fold: whole warps");
  const int t = threadIdx.x, lane = t & 31;
  const V a = warp_tree_fold(v, merge);
  if (lane == 0) sh[t >> 5] = a;
  __syncthreads();
#pragma unroll
  for (int s = 1; s < Threads / 32; s <<= 1) {
    if (t < Threads / 32 && t % (2 * s) == 0) sh[t] = merge(sh[t], sh[t + s]);
    __syncthreads();
  }
  const V r = sh[0];
  __syncthreads();
  return r;
}

/// One block folds `n` items with `merge` in a fixed order: thread t merges the contiguous
/// range [t·per, (t+1)·per) in order, then a binary tree over the threads. Returns the result
/// in thread 0 (other threads: unspecified).
template <int Threads, class V, class Get, class Merge>
__device__ V fixed_tree_fold(index_t n, Get&& get, Merge&& merge, V zero, detail::shared_array<V, Threads>& sh) {
  const int t = threadIdx.x;
  const index_t per = detail::ceil_div<index_t>(n, Threads);
  V acc = zero;
  for (index_t q = index_t(t) * per; q < index_t(t + 1) * per && q < n; ++q) acc = merge(acc, get(q));
  sh[t] = acc;
  __syncthreads();
  for (int s = 1; s < Threads; s <<= 1) {
    if (t % (2 * s) == 0) sh[t] = merge(sh[t], sh[t + s]);
    __syncthreads();
  }
  return sh[0];
}

/// Device-side check of packed offsets (the CUDA counterpart of `packed::check_offsets_host`),
/// accumulated with integer atomics only: every block checks its own row, block 0 the ends.
struct offsets_check {
  unsigned int flags = 0;           ///< bit 0: offsets[0] != 0; bit 1: offsets[B] != N
  unsigned int blocks_done = 0;     ///< blocks finished (last_block_done's counter)
  unsigned long long decrease = 0;  ///< ~(i + 1) for the smallest i with offsets[i+1] < offsets[i]; 0: none
  unsigned int rows_listed = 0;     ///< rows a one-warp-per-row pass listed for a block each (block_rows)
  unsigned int pad_ = 0;
};

/// First position t in [from, len) with valid(t), or len, the same in every lane of the warp:
/// lane l tests positions c + 4l .. c + 4l + 3 of each step of 128, and the smallest found wins
/// (an integer warp minimum). Call from a whole warp.
template <class Valid>
__device__ index_t warp_first_valid(index_t from, index_t len, Valid&& valid) {
  const int lane = int(threadIdx.x & 31);
  for (index_t c = from; c < len; c += 128) {
    int best = INT_MAX;
#pragma unroll
    for (int e = 3; e >= 0; --e) {
      const index_t t = c + index_t(lane) * 4 + e;
      if (t < len && valid(t)) best = lane * 4 + e;
    }
    best = __reduce_min_sync(0xffffffffu, best);
    if (best != INT_MAX) return c + best;
  }
  return len;
}

/// Thread 0 of block `blockIdx.x`: checks row i's offsets (and, in block 0, both ends);
/// returns false when row i cannot be read (its range decreases or leaves [0, N]). Padded
/// layouts always pass.
template <class L>
__device__ bool check_row_offsets(const L& layout, index_t i, offsets_check* chk) {
  if constexpr (L::is_packed) {
    const index_t B = layout.num_seqs();
    if (blockIdx.x == 0) {
      if (layout.offsets(0) != 0) atomicOr(&chk->flags, 1u);
      if (static_cast<index_t>(layout.offsets(B)) != layout.tokens) atomicOr(&chk->flags, 2u);
    }
    if (i >= B) return false;
    const index_t o0 = static_cast<index_t>(layout.offsets(i)), o1 = static_cast<index_t>(layout.offsets(i + 1));
    if (o1 < o0) atomicMax(&chk->decrease, ~static_cast<unsigned long long>(i + 1));
    return o0 >= 0 && o1 >= o0 && o1 <= layout.tokens;
  } else {
    return i < layout.num_seqs();
  }
}

/// One-warp-per-row kernels (8 rows per block of 256): whether this warp's row i can be read,
/// the same in every lane. Lane 0 checks its offsets (check_row_offsets on p.check; in block 0
/// each warp also checks both ends: idempotent atomics) and, for a row it cannot read, stores
/// an empty result in p.rows[i] (rows past B: nothing). `p`: the kernel's params (layout,
/// check, rows). Call from a whole warp.
template <class P>
__device__ bool warp_row_readable(const P& p, index_t i) {
  const int lane = int(threadIdx.x & 31);
  bool ok = false;
  if (lane == 0) ok = check_row_offsets(p.layout, i, p.check);
  if (__shfl_sync(0xffffffffu, ok, 0)) return true;
  if (lane == 0 && i < p.layout.num_seqs()) p.rows[i] = {};
  return false;
}

/// The rows of a block-per-row statistics kernel, each reduced by `stats(i)` with the whole
/// block. Listed: the rows a one-warp-per-row kernel listed (p.long_rows[0 .. rows_listed)),
/// strided over the grid (each row on its own: their order does not matter). Otherwise row
/// blockIdx.x, its offsets checked by thread 0 (an unreadable row gets an empty result).
/// `p`: the kernel's params (layout, check, long_rows, rows).
template <bool Listed, class P, class Stats>
__device__ void block_rows(const P& p, Stats&& stats) {
  if constexpr (Listed) {
    const index_t listed = index_t(p.check->rows_listed);  // written by the previous kernel
    for (index_t q = blockIdx.x; q < listed; q += gridDim.x) stats(p.long_rows[q]);
  } else {
    __shared__ bool sh_ok;
    const index_t i = blockIdx.x;
    if (threadIdx.x == 0) sh_ok = check_row_offsets(p.layout, i, p.check);
    __syncthreads();
    if (sh_ok) stats(i);  // block-uniform
    else if (threadIdx.x == 0 && i < p.layout.num_seqs()) p.rows[i] = {};
  }
}

/// Every thread of every block calls this after thread 0 wrote the block's results to global
/// memory: true in every thread of the one block that finishes last (integer atomic on a
/// counter zeroed before the launch), which then sees every block's results and, through
/// `read_offsets_check`, the offsets flags. Lets the last block merge the blocks' results in a
/// fixed order without another launch (grid_tree_fold).
__device__ inline bool last_block_done(unsigned int* counter, bool* sh_last) {
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();
    *sh_last = atomicAdd(counter, 1u) == gridDim.x - 1;
  }
  __syncthreads();
  const bool last = *sh_last;
  if (last) __threadfence();
  return last;
}

/// Two-level fixed fold of n per-row results over a grid (a kernel of its own, so that the
/// rows are folded by many blocks at once): block g merges rows [g·Threads, (g+1)·Threads)
/// (`get(q)`; `zero` past n) in a fixed tree (block_tree_fold) and stores the result in
/// chunks[g]; the block that finishes last (last_block_done on `counter`, zeroed before the
/// launch) folds the G = gridDim.x chunks and returns true in all its threads, with the total
/// in thread 0's *total (other threads: unspecified); the others return false. Up to 32
/// chunks (8,192 rows of 256) the last block's first warp folds them alone (warp_tree_fold:
/// shuffles, no barrier; the same pairs as fixed_tree_fold's tree, whose other levels only
/// merged `zero`); more go through fixed_tree_fold. The tree depends on n and the grid only
/// (launch ceil(n / Threads) blocks, at least one): bitwise the same run to run, whichever
/// block finishes last. Rows meet in index order, so an order-sensitive merge (the first
/// error) sees them as the CPU does. (One block folding 32,768 rows took 120-200 us on an
/// H100; at 1,024 rows the fold kernels took 9-11 us under ncu, most of it barriers and
/// merges of the last block's 256-thread tree over 4 chunks.)
template <int Threads, class V, class Get, class Merge>
__device__ bool grid_tree_fold(index_t n, Get&& get, Merge&& merge, const V& zero, V* chunks, unsigned int* counter,
                               detail::shared_array<V, Threads>& sh, bool* sh_last, V* total) {
  const index_t q = index_t(blockIdx.x) * Threads + index_t(threadIdx.x);
  const V c = block_tree_fold<Threads>(q < n ? V(get(q)) : zero, merge, sh);
  if (threadIdx.x == 0) chunks[blockIdx.x] = c;
  if (!last_block_done(counter, sh_last)) return false;
  const unsigned G = gridDim.x;
  if (G <= 32) {
    if (threadIdx.x < 32) {
      const unsigned lane = threadIdx.x;
      const V x = warp_tree_fold(lane < G ? V(chunks[lane]) : zero, merge);
      if (lane == 0) *total = x;
    }
  } else {
    *total = fixed_tree_fold<Threads>(index_t(G), [&](index_t g) { return chunks[g]; }, merge, zero, sh);
  }
  return true;
}

/// The flags of an offsets_check written by other blocks' atomics (read atomically).
__device__ inline offsets_check read_offsets_check(offsets_check* chk) {
  offsets_check c;
  c.flags = atomicOr(&chk->flags, 0u);
  c.decrease = atomicMax(&chk->decrease, 0ull);
  return c;
}

/// Resolves an offsets_check into the first error in the CPU's order (offsets[0], the first
/// decrease, offsets[B]) as a polo::cuda::status for entry `entry`; code 0 when none. One thread.
template <class L>
__device__ cuda::status resolve_offsets(const L& layout, const offsets_check& chk, int entry) {
  cuda::status s;
  s.entry = entry;
  if constexpr (L::is_packed) {
    const index_t B = layout.num_seqs();
    if (chk.flags & 1u) {
      s.code = detail::status_offsets_start;
      s.a = static_cast<long long>(layout.offsets(0));
    } else if (chk.decrease != 0) {
      const index_t at = static_cast<index_t>(~chk.decrease);
      s.code = detail::status_offsets_decrease;
      s.index = at;
      s.a = static_cast<long long>(layout.offsets(at - 1));
      s.b = static_cast<long long>(layout.offsets(at));
    } else if (chk.flags & 2u) {
      s.code = detail::status_offsets_end;
      s.a = static_cast<long long>(layout.offsets(B));
      s.b = layout.tokens;
    }
  }
  return s;
}

/// resolve_offsets of the check at `chk`, read only for a packed layout (a padded one has no
/// offsets: no atomics on the fold's last thread's path). One thread.
template <class L>
__device__ cuda::status resolve_offsets(const L& layout, offsets_check* chk, int entry) {
  if constexpr (L::is_packed) {
    return resolve_offsets(layout, read_offsets_check(chk), entry);
  } else {
    cuda::status s;
    s.entry = entry;
    return s;
  }
}

/// Programmatic dependent launch (sm_90+): a write kernel that follows a statistics kernel on
/// the same stream is launched with `launch_dependent`, so that its blocks can be scheduled
/// (and load the inputs that do not depend on the statistics) while the statistics kernel
/// finishes; `grid_dependency_wait` then blocks until the preceding kernel has completed and
/// its writes are visible. It must come before the first read of anything the preceding
/// kernel writes. Launched normally, or on an older GPU, the wait is a no-op.
__device__ __forceinline__ void grid_dependency_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

/// Lets the kernel launched after this one with `launch_dependent` start being scheduled (each
/// block calls it once its own loads are issued; without it, at the block's exit).
__device__ __forceinline__ void allow_dependent_launch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

/// Element at a flat index of a per-token tensor of the layout (i*T + t for padded, the
/// position itself for packed).
template <class L, class X>
__device__ auto at_flat(const L& layout, const X& x, index_t flat) {
  if constexpr (L::is_packed) {
    return x.data[flat];
  } else {
    return x.row(flat / layout.seq_len)[flat % layout.seq_len];
  }
}

/// Launches `kernel<<<grid, block, 0, stream>>>(args...)` as a programmatic dependent of the
/// kernel before it on the stream (see grid_dependency_wait).
template <class... Params, class... Args>
cudaError_t launch_dependent(void (*kernel)(Params...), dim3 grid, dim3 block, cudaStream_t stream, Args&&... args) {
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = 0;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  return cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...);
}

/// Enqueues the row statistics of whiten / masked_moments and value_loss: zeroes p.check (its
/// block counter and list count); for a batch whose typical row (typical_row_length) is longer
/// than `span`, `rows_all` with a block per row; otherwise `short_rows` with one warp per row
/// (8 rows per block of Threads = 256) and, when long_row_blocks allows any, `rows_listed` with
/// that many blocks for the rows it listed; then `fold` (a grid_tree_fold over the rows, as a
/// programmatic dependent). `p`: the kernels' params (layout, check). Returns the first launch
/// error.
template <int Threads, class P>
cudaError_t launch_row_stats(const P& p, index_t span, index_t long_cap, void (*rows_all)(P), void (*short_rows)(P),
                             void (*rows_listed)(P), void (*fold)(P), cudaStream_t stream) {
  const auto& layout = p.layout;
  POLO_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(p.check, 0, sizeof(offsets_check), stream));
  const index_t B = layout.num_seqs();
  if (B > 0x7fffffff) return cudaErrorInvalidConfiguration;
  if (typical_row_length(layout) > span) {
    rows_all<<<static_cast<unsigned>(B > 0 ? B : 1), Threads, 0, stream>>>(p);
  } else {
    constexpr index_t R = Threads / 32;
    short_rows<<<static_cast<unsigned>(B > 0 ? (B + R - 1) / R : 1), Threads, 0, stream>>>(p);
    const index_t blocks = long_row_blocks(layout, span, long_cap);
    if (blocks > 0) {
      POLO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
      rows_listed<<<static_cast<unsigned>(blocks), Threads, 0, stream>>>(p);
    }
  }
  POLO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return launch_dependent(fold, dim3(static_cast<unsigned>(fold_blocks(B, Threads))), dim3(Threads), stream, p);
}

#endif  // __CUDACC__

}  // namespace polo::kernels
