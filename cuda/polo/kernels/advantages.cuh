// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
#pragma once
/// \file
/// Kernels of group advantages and broadcast_to_tokens (layer D of docs/CONTRIBUTING.md): POD
/// params structs, `__global__` kernels, and `launch_*` launchers that enqueue on a stream and
/// return `cudaError_t`. Launchers never synchronize, never allocate and never throw; the
/// caller (cuda/polo/advantages.cuh) owns validation, scratch memory and the one host
/// read-back. Most users call the public entries instead (docs/cuda.md).
///
/// ## group_advantages on the GPU
/// Sequences are visited in *group order*: a position p in [0, B) maps to a group g(p) and a
/// sequence index i(p); members of a group are consecutive positions in ascending sequence
/// index (for contiguous groups p == i; for labelled groups the (label, index) pairs are
/// radix-sorted, which is stable). Then, all in double:
///
///     1. group_stats_kernel       one warp per group: scoreable count k, Neumaier sum, mean
///                                 (exactly the common value of a constant group), M2 (second
///                                 pass), min, max and their multiplicities, non-finite count;
///                                 one batch_partial per block
///     2. finalize_batch_kernel    one block: merges the block partials in a fixed tree, adds
///                                 the batch σ (scale_kind::batch_std) -> advantages_status
///     3. advantage_kernel         one thread per position: A_i as the CPU backend computes it,
///                                 written to scratch (or straight to the output when no
///                                 data-dependent error is possible); Neumaier partial of ΣA
///     4. finalize_sum_kernel      one block: ΣA in a fixed tree; builds the group_stats and
///                                 the first data error and publishes them
///                                 (detail/async_result.cuh); copy_strided_kernel (the write
///                                 when an error was possible) writes nothing after an error
///
/// The combined call with a packed layout first runs packed_offsets_kernel (offsets only), whose
/// error takes precedence in step 4, so that nothing is written for malformed offsets.
///
/// Batches of at most `fused_max` (2048) sequences, the common case, take none of steps 1-4:
/// group_advantages_block_kernel does all of it in one block of 512 threads (one launch):
/// labelled groups are first segmented by that block; each group is held in the registers of
/// a few lanes; the first error is found before anything is written; A is written, then (the
/// combined call) the broadcast's check and the release of the broadcast through
/// broadcast_params::ready; the batch statistics are folded last, while the broadcast writes.
/// The combined call is two launches (that kernel and broadcast_kernel) and, synchronously,
/// one read-back.
///
/// Every reduction has a fixed shape that depends on B (and G) only: no floating-point atomics,
/// so results are bitwise identical run to run (determinism::run_to_run).
///
/// ## broadcast_to_tokens on the GPU
///     broadcast_check_kernel      one warp per row: packed offsets (start, decrease, end) and
///                                 non-finite values whose row has a valid token; the last block
///                                 to finish resolves the first error (CPU precedence) into a
///                                 `polo::cuda::status` in scratch, and into the caller's
///                                 deferred status if any
///     broadcast_kernel            one block per (row, slice): 16-byte stores of
///                                 mask ? value : 0, vector mask loads where aligned; with a gate
///                                 it writes nothing when the check found an error. Launched as
///                                 a programmatic dependent (detail/row_reduce.cuh): its blocks
///                                 load the mask while the check (or the one-block
///                                 group_advantages kernel) runs, then wait for it (or for its
///                                 release of `ready`) before reading the values

#include <cuda_runtime.h>

#include <cub/block/block_radix_sort.cuh>
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>
#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_scan.cuh>
#include <cuda/std/limits>

#include <climits>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "polo/advantages.hpp"
#include "polo/core/backend.hpp"
#include "polo/core/config.hpp"
#include "polo/core/layout.hpp"
#include "polo/core/math.hpp"
#include "polo/core/reduce.hpp"
#include "polo/core/view.hpp"
#include "polo/detail/async_result.cuh"
#include "polo/detail/launch.cuh"
#include "polo/detail/row_reduce.cuh"
#include "polo/detail/status.cuh"

namespace polo::kernels {

// =============================================================================================
// Scalar formulas (host and device), the same as the CPU backend's
// =============================================================================================

/// D(σ): the divisor after eps placement.
POLO_HD_INLINE double scale_divisor(double sigma, const advantage_config& c) {
  switch (c.eps_mode) {
    case eps_placement::add_to_std: return sigma + c.eps;
    case eps_placement::inside_sqrt: return ::sqrt(sigma * sigma + c.eps);
    case eps_placement::floor_variance: return ::sqrt(detail::max_of(sigma * sigma, c.eps));
  }
  return sigma + c.eps;
}

/// std from a sum of squared deviations over n values; `defined` is false for a sample std of
/// fewer than two values.
POLO_HD_INLINE double std_from_m2(double m2, index_t n, std_kind kind, bool& defined) {
  index_t denom = kind == std_kind::sample ? n - 1 : n;
  defined = denom > 0;
  return defined ? ::sqrt(detail::max_of(m2, 0.0) / double(denom)) : 0.0;
}

/// A from the centred score and σ under the zero-variance rule.
POLO_HD_INLINE double scaled_advantage(double centred, double sigma, bool zero_var, const advantage_config& c) {
  if (zero_var) {
    switch (c.zero_variance) {
      case zero_variance_rule::zero: return 0.0;
      case zero_variance_rule::skip_scale: return centred;
      case zero_variance_rule::divide: return centred / scale_divisor(0.0, c);
    }
  }
  return centred / scale_divisor(sigma, c);
}

/// Merges two Neumaier accumulators (a's terms first).
POLO_HD_INLINE detail::neumaier_sum merge_sums(detail::neumaier_sum a, const detail::neumaier_sum& b) {
  a.add(b.sum);
  a.comp += b.comp;
  return a;
}

/// Statistics of one group's scoreable members (scratch, one per group).
struct group_info {
  double sum = 0.0;   // Neumaier sum
  double mean = 0.0;  // exactly min for a constant group
  double m2 = 0.0;    // sum of squared deviations; 0 unless k > 1 and not constant
  double min = 0.0, max = 0.0;
  index_t k = 0;      // scoreable members
  index_t n_min = 0, n_max = 0;
  POLO_HD_INLINE bool constant() const { return k >= 1 && min == max; }
};

/// Batch-level part of a reduction over groups; merged in a fixed order.
struct batch_partial {
  long long groups = 0, empty = 0, singleton = 0, zero_std = 0, nonfinite = 0;
  long long first_nonfinite = LLONG_MAX;      ///< smallest sequence index with a non-finite score
  long long first_singleton = LLONG_MAX;      ///< smallest group (in group order) with k == 1
  long long first_singleton_seq = LLONG_MAX;  ///< that group's first member
  moments scores{};                           ///< moments of the scoreable scores
  double min = 0.0, max = 0.0;                ///< of the scoreable scores (when scores.count > 0)
  double std_sum = 0.0;                       ///< Σσ_g over groups with k >= 2
  long long std_count = 0;
};

/// Merges b into a (a's groups precede b's).
POLO_HD_INLINE void merge(batch_partial& a, const batch_partial& b) {
  a.groups += b.groups;
  a.empty += b.empty;
  a.singleton += b.singleton;
  a.zero_std += b.zero_std;
  a.nonfinite += b.nonfinite;
  if (b.first_nonfinite < a.first_nonfinite) a.first_nonfinite = b.first_nonfinite;
  if (b.first_singleton < a.first_singleton) {
    a.first_singleton = b.first_singleton;
    a.first_singleton_seq = b.first_singleton_seq;
  }
  if (b.scores.count > 0) {
    if (a.scores.count == 0) {
      a.min = b.min;
      a.max = b.max;
    } else {
      a.min = detail::min_of(a.min, b.min);
      a.max = detail::max_of(a.max, b.max);
    }
  }
  a.scores += b.scores;
  a.std_sum += b.std_sum;
  a.std_count += b.std_count;
}

/// What the host reads back after the statistics pass (one copy, one synchronization).
struct advantages_status {
  batch_partial batch{};
  double first_nonfinite_value = 0.0;  ///< scores[first_nonfinite]
  double batch_sigma = 0.0;            ///< σ of scale_kind::batch_std
  int batch_zero = 1;                  ///< batch σ counts as zero
  double advantage_sum = 0.0;          ///< Σ A_i (as stored in T), Neumaier, fixed order
};

// =============================================================================================
// Group maps: position p in group order -> group, sequence
// =============================================================================================

/// Contiguous groups of G: position p is sequence p, group p / G.
struct contiguous_map {
  index_t size = 1;      ///< G
  index_t n_groups = 0;  ///< B / G
  POLO_HD_INLINE index_t num_groups() const { return n_groups; }
  POLO_HD_INLINE index_t max_groups() const { return n_groups; }
  POLO_HD_INLINE index_t begin(index_t g) const { return g * size; }
  POLO_HD_INLINE index_t end(index_t g) const { return (g + 1) * size; }
  POLO_HD_INLINE index_t seq(index_t p) const { return p; }
  POLO_HD_INLINE index_t group_of(index_t p) const { return p / size; }
};

/// Labelled groups after segmentation (launch_segment_labels): positions sorted by (label,
/// sequence index).
struct segmented_map {
  const int* starts = nullptr;    ///< [n_groups + 1] first position of each group, then B
  const int* order = nullptr;     ///< [B] sequence index at position p
  const int* seg = nullptr;       ///< [B] 1 + group of position p
  const int* n_groups = nullptr;  ///< device scalar: number of groups
  index_t bound = 0;              ///< B: upper bound on the number of groups (launch size)
#if defined(__CUDACC__)
  __device__ __forceinline__ index_t num_groups() const { return *n_groups; }
  __device__ __forceinline__ index_t begin(index_t g) const { return starts[g]; }
  __device__ __forceinline__ index_t end(index_t g) const { return starts[g + 1]; }
  __device__ __forceinline__ index_t seq(index_t p) const { return order[p]; }
  __device__ __forceinline__ index_t group_of(index_t p) const { return seq_group(p); }
  __device__ __forceinline__ index_t seq_group(index_t p) const { return index_t(seg[p]) - 1; }
#endif
  POLO_HD_INLINE index_t max_groups() const { return bound; }
};

// =============================================================================================
// Segmentation of labelled groups
// =============================================================================================

/// Radix-sort key of a label type (bool is sorted as unsigned char).
template <class Label>
using label_key_t = std::conditional_t<std::is_same_v<std::remove_cv_t<Label>, bool>, unsigned char,
                                       std::remove_cv_t<Label>>;

/// Params of launch_segment_labels.
template <class Label>
struct segment_labels_params {
  using label_type = Label;
  using key_type = label_key_t<Label>;
  const Label* labels = nullptr;  ///< [B] at stride labels_stride
  index_t labels_stride = 1;
  int n = 0;                      ///< B (< 2^31)
  // outputs
  int* order = nullptr;           ///< [B] sequence at each position
  int* seg = nullptr;             ///< [B] 1 + group of each position
  int* starts = nullptr;          ///< [B + 1]
  int* n_groups = nullptr;        ///< scalar
  // scratch of the large-B path (unused when n <= segment_small_max)
  key_type* keys_in = nullptr;    ///< [B]
  key_type* keys_out = nullptr;   ///< [B]
  int* idx_in = nullptr;          ///< [B]
  int* flags = nullptr;           ///< [B]
  void* temp = nullptr;           ///< CUB temporary storage
  std::size_t temp_bytes = 0;
};

/// Batches up to this size are segmented by one block (one launch); larger ones by
/// cub::DeviceRadixSort and cub::DeviceScan.
inline constexpr int segment_small_threads = 256;
inline constexpr int segment_small_items = 8;
inline constexpr int segment_small_max = segment_small_threads * segment_small_items;

/// CUB temporary bytes of the large-B path (sort and scan reuse one region).
template <class Label>
std::size_t segment_temp_bytes(int n) {
  using K = label_key_t<Label>;
  if (n <= segment_small_max) return 0;
  std::size_t sort_bytes = 0, scan_bytes = 0;
  (void)cub::DeviceRadixSort::SortPairs(nullptr, sort_bytes, static_cast<const K*>(nullptr), static_cast<K*>(nullptr),
                                        static_cast<const int*>(nullptr), static_cast<int*>(nullptr), n);
  (void)cub::DeviceScan::InclusiveSum(nullptr, scan_bytes, static_cast<const int*>(nullptr), static_cast<int*>(nullptr), n);
  return sort_bytes > scan_bytes ? sort_bytes : scan_bytes;
}

#if defined(__CUDACC__)

/// Shared memory of segment_small_block (the caller's, so that it can share it with what
/// follows the segmentation).
template <class Label, int Threads, int Items>
struct segment_small_storage {
  using K = label_key_t<Label>;
  using UK = std::make_unsigned_t<K>;
  using W = std::conditional_t<std::is_signed_v<K>, long long, unsigned long long>;
  using sort_t = cub::BlockRadixSort<UK, Threads, Items, int>;
  using scan_t = cub::BlockScan<int, Threads>;
  union {
    typename sort_t::TempStorage sort;
    typename scan_t::TempStorage scan;
  } tmp;
  UK last_key[Threads];
  W warp_lo[Threads / 32], warp_hi[Threads / 32];
};

/// One block sorts (label, index) pairs of a batch of at most segment_small_max and writes the
/// whole segmentation.
/// (The block-wide body; every thread of a block of Threads calls it.)
template <class Label, int Threads, int Items>
__device__ void segment_small_block(const segment_labels_params<Label>& p,
                                    segment_small_storage<Label, Threads, Items>& sh) {
  // Preconditions: p.n <= Threads * Items; one block.
  using S = segment_small_storage<Label, Threads, Items>;
  using K = typename S::K;
  using UK = typename S::UK;
  using W = typename S::W;
  using sort_t = typename S::sort_t;
  using scan_t = typename S::scan_t;
  auto& tmp = sh.tmp;
  auto& last_key = sh.last_key;
  auto& warp_lo = sh.warp_lo;
  auto& warp_hi = sh.warp_hi;
  K raw[Items];
  UK keys[Items];
  int vals[Items];
  const int t = threadIdx.x;
  // Blocked arrangement: item (t, j) is position t*Items + j, so the stable sort keeps equal
  // labels in ascending sequence order; padding (positions >= n) holds the largest key and
  // sorts after every real item.
  W lo = ::cuda::std::numeric_limits<W>::max(), hi = ::cuda::std::numeric_limits<W>::lowest();
#pragma unroll
  for (int j = 0; j < Items; ++j) {
    int q = t * Items + j;
    raw[j] = q < p.n ? static_cast<K>(p.labels[q * p.labels_stride]) : K(0);
    vals[j] = q < p.n ? q : INT_MAX;
    if (q < p.n) {
      lo = W(raw[j]) < lo ? W(raw[j]) : lo;
      hi = W(raw[j]) > hi ? W(raw[j]) : hi;
    }
  }
  // The labels' range: keys are sorted as label - min on only the bits that range needs (a
  // batch of G-groups numbered 0..B/G-1 sorts in 2-3 radix passes instead of 16).
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const W lo_o = __shfl_xor_sync(0xffffffffu, lo, o), hi_o = __shfl_xor_sync(0xffffffffu, hi, o);
    lo = lo_o < lo ? lo_o : lo;
    hi = hi_o > hi ? hi_o : hi;
  }
  if ((t & 31) == 0) {
    warp_lo[t >> 5] = lo;
    warp_hi[t >> 5] = hi;
  }
  __syncthreads();
#pragma unroll
  for (int w = 0; w < Threads / 32; ++w) {
    lo = warp_lo[w] < lo ? warp_lo[w] : lo;
    hi = warp_hi[w] > hi ? warp_hi[w] : hi;
  }
  const UK kmin = static_cast<UK>(static_cast<K>(lo));
  const UK range = static_cast<UK>(static_cast<UK>(static_cast<K>(hi)) - kmin);
  const int bits = range == 0 ? 1 : 64 - __clzll(static_cast<unsigned long long>(range));
#pragma unroll
  for (int j = 0; j < Items; ++j) {
    int q = t * Items + j;
    keys[j] = q < p.n ? static_cast<UK>(static_cast<UK>(raw[j]) - kmin) : static_cast<UK>(~UK(0));
  }
  sort_t(tmp.sort).Sort(keys, vals, 0, bits);
  last_key[t] = keys[Items - 1];
  __syncthreads();
  int flag[Items], seg[Items];
#pragma unroll
  for (int j = 0; j < Items; ++j) {
    int q = t * Items + j;
    UK prev = j > 0 ? keys[j - 1] : (t > 0 ? last_key[t - 1] : keys[0]);
    flag[j] = (q < p.n) && (q == 0 || keys[j] != prev) ? 1 : 0;
  }
  scan_t(tmp.scan).InclusiveSum(flag, seg);
#pragma unroll
  for (int j = 0; j < Items; ++j) {
    int q = t * Items + j;
    if (q < p.n) {
      p.order[q] = vals[j];
      p.seg[q] = seg[j];
      if (flag[j]) p.starts[seg[j] - 1] = q;
      if (q == p.n - 1) {
        *p.n_groups = seg[j];
        p.starts[seg[j]] = p.n;
      }
    }
  }
}

template <class Label, int Threads = segment_small_threads, int Items = segment_small_items>
__global__ void __launch_bounds__(Threads) segment_small_kernel(segment_labels_params<Label> p) {
  __shared__ segment_small_storage<Label, Threads, Items> sh;
  segment_small_block<Label, Threads, Items>(p, sh);
}

/// keys_in[i] = labels[i], idx_in[i] = i.
template <class Label>
__global__ void __launch_bounds__(256) label_keys_kernel(segment_labels_params<Label> p) {
  for (index_t i = index_t(blockIdx.x) * blockDim.x + threadIdx.x; i < p.n; i += index_t(gridDim.x) * blockDim.x) {
    p.keys_in[i] = static_cast<label_key_t<Label>>(p.labels[i * p.labels_stride]);
    p.idx_in[i] = static_cast<int>(i);
  }
}

/// flags[p] = 1 where a new label starts in the sorted keys.
template <class Label>
__global__ void __launch_bounds__(256) segment_heads_kernel(segment_labels_params<Label> p) {
  for (index_t q = index_t(blockIdx.x) * blockDim.x + threadIdx.x; q < p.n; q += index_t(gridDim.x) * blockDim.x)
    p.flags[q] = (q == 0 || p.keys_out[q] != p.keys_out[q - 1]) ? 1 : 0;
}

/// starts[g] from the inclusive scan of the head flags.
template <class Label>
__global__ void __launch_bounds__(256) segment_starts_kernel(segment_labels_params<Label> p) {
  for (index_t q = index_t(blockIdx.x) * blockDim.x + threadIdx.x; q < p.n; q += index_t(gridDim.x) * blockDim.x) {
    if (p.flags[q]) p.starts[p.seg[q] - 1] = static_cast<int>(q);
    if (q == p.n - 1) {
      *p.n_groups = p.seg[q];
      p.starts[p.seg[q]] = p.n;
    }
  }
}

/// Sorts (label, sequence index) pairs and writes order, seg, starts and n_groups. p.n >= 1.
template <class Label>
cudaError_t launch_segment_labels(const segment_labels_params<Label>& p, cudaStream_t stream) {
  if (p.n <= 0) return cudaSuccess;
  if (p.n <= segment_small_max) {
    segment_small_kernel<Label><<<1, segment_small_threads, 0, stream>>>(p);
    return cudaGetLastError();
  }
  const unsigned grid = detail::grid_for(p.n, 256, 4096);
  label_keys_kernel<Label><<<grid, 256, 0, stream>>>(p);
  POLO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  std::size_t bytes = p.temp_bytes;
  POLO_CUDA_RETURN_IF_ERROR(cub::DeviceRadixSort::SortPairs(p.temp, bytes, p.keys_in, p.keys_out, p.idx_in, p.order,
                                                            p.n, 0, int(sizeof(label_key_t<Label>) * 8), stream));
  segment_heads_kernel<Label><<<grid, 256, 0, stream>>>(p);
  POLO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  bytes = p.temp_bytes;
  POLO_CUDA_RETURN_IF_ERROR(cub::DeviceScan::InclusiveSum(p.temp, bytes, p.flags, p.seg, p.n, stream));
  segment_starts_kernel<Label><<<grid, 256, 0, stream>>>(p);
  return cudaGetLastError();
}

#endif  // __CUDACC__

// =============================================================================================
// Statistics pass
// =============================================================================================

inline constexpr int stats_threads = 256;                   ///< group_stats_kernel block
inline constexpr int stats_warps = stats_threads / 32;      ///< groups per block
inline constexpr int finalize_threads = 256;                ///< single-block finalizers
inline constexpr int advantage_threads = 256;               ///< advantage_kernel block

/// Params of launch_group_stats.
template <class T, class Map>
struct group_stats_params {
  const T* scores = nullptr;       ///< [B] at stride scores_stride
  index_t scores_stride = 1;
  Map groups{};                    ///< position -> group, sequence
  advantage_config cfg{};
  group_info* info = nullptr;      ///< [max_groups] out
  batch_partial* partials = nullptr;  ///< [stats_blocks(max_groups)] scratch
  advantages_status* status = nullptr;  ///< out: batch statistics
};

/// Blocks of group_stats_kernel for a bound on the number of groups.
inline index_t stats_blocks(index_t max_groups) {
  return detail::ceil_div<index_t>(max_groups > 0 ? max_groups : 1, stats_warps);
}

/// Blocks of advantage_kernel for B sequences.
inline index_t advantage_blocks(index_t n) { return detail::ceil_div<index_t>(n > 0 ? n : 1, advantage_threads); }

#if defined(__CUDACC__)

namespace warp {
template <class V>
__device__ __forceinline__ V down(V v, int d) {
  return __shfl_down_sync(0xffffffffu, v, d);
}
template <class V>
__device__ __forceinline__ V from0(V v) {
  return __shfl_sync(0xffffffffu, v, 0);
}
__device__ __forceinline__ detail::neumaier_sum down(const detail::neumaier_sum& s, int d) {
  detail::neumaier_sum o;
  o.sum = __shfl_down_sync(0xffffffffu, s.sum, d);
  o.comp = __shfl_down_sync(0xffffffffu, s.comp, d);
  return o;
}
}  // namespace warp

/// Statistics of group g by one warp (every lane calls it): its group_info and its batch
/// partial, valid in lane 0.
template <class T, class Map>
__device__ void warp_group_stats(const T* scores, index_t scores_stride, const Map& groups, const advantage_config& cfg,
                                 index_t g, int lane, group_info& gi, batch_partial& part) {
  {
    const index_t lo = groups.begin(g), hi = groups.end(g);
    // Pass 1: count, sum, min, max of the scoreable members; non-finite count and first index.
    index_t k = 0, bad = 0;
    long long first_bad = LLONG_MAX;
    detail::neumaier_sum acc;
    double mn = 0.0, mx = 0.0;
    for (index_t q = lo + lane; q < hi; q += 32) {
      const index_t i = groups.seq(q);
      const double x = double(scores[i * scores_stride]);
      if (detail::is_finite(x)) {
        acc.add(x);
        mn = k == 0 ? x : detail::min_of(mn, x);
        mx = k == 0 ? x : detail::max_of(mx, x);
        ++k;
      } else {
        ++bad;
        if (i < first_bad) first_bad = i;
      }
    }
    for (int d = 16; d > 0; d >>= 1) {
      const index_t k_o = warp::down(k, d);
      const double mn_o = warp::down(mn, d), mx_o = warp::down(mx, d);
      const detail::neumaier_sum acc_o = warp::down(acc, d);
      const index_t bad_o = warp::down(bad, d);
      const long long fb_o = warp::down(first_bad, d);
      if (lane < d) {  // lanes >= d only feed lower lanes; lane 0 ends with the fixed tree's result
        if (k_o > 0) {
          mn = k == 0 ? mn_o : detail::min_of(mn, mn_o);
          mx = k == 0 ? mx_o : detail::max_of(mx, mx_o);
        }
        k += k_o;
        acc = merge_sums(acc, acc_o);
        bad += bad_o;
        if (fb_o < first_bad) first_bad = fb_o;
      }
    }
    k = warp::from0(k);
    mn = warp::from0(mn);
    mx = warp::from0(mx);
    const double sum = warp::from0(acc.value());
    const bool constant = k >= 1 && mn == mx;
    const double mean = k > 0 ? (constant ? mn : sum / double(k)) : 0.0;
    // Pass 2: multiplicities of min and max, and M2 about the mean (two-pass variance).
    const bool need_m2 = k > 1 && !constant;
    index_t n_min = 0, n_max = 0;
    detail::neumaier_sum m2;
    for (index_t q = lo + lane; q < hi; q += 32) {
      const double x = double(scores[groups.seq(q) * scores_stride]);
      if (!detail::is_finite(x)) continue;
      if (x == mn) ++n_min;
      if (x == mx) ++n_max;
      if (need_m2) {
        const double d = x - mean;
        m2.add(d * d);
      }
    }
    for (int d = 16; d > 0; d >>= 1) {
      const index_t a = warp::down(n_min, d), b = warp::down(n_max, d);
      const detail::neumaier_sum m_o = warp::down(m2, d);
      if (lane < d) {
        n_min += a;
        n_max += b;
        m2 = merge_sums(m2, m_o);
      }
    }
    if (lane == 0) {
      gi.k = k;
      gi.sum = sum;
      gi.mean = mean;
      gi.m2 = need_m2 ? m2.value() : 0.0;
      gi.min = mn;
      gi.max = mx;
      gi.n_min = n_min;
      gi.n_max = n_max;
      part.groups = 1;
      part.nonfinite = bad;
      part.first_nonfinite = first_bad;
      if (k == 0) part.empty = 1;
      if (k == 1) {
        part.singleton = 1;
        part.first_singleton = g;
        part.first_singleton_seq = groups.seq(lo);
      }
      if (k > 0) {
        part.scores.count = k;
        part.scores.mean = mean;
        part.scores.m2 = gi.m2;
        part.min = mn;
        part.max = mx;
      }
      if (k >= 2) {
        bool defined = false;
        part.std_sum = constant ? 0.0 : std_from_m2(gi.m2, k, cfg.std, defined);
        part.std_count = 1;
        if (constant) part.zero_std = 1;
      }
    }
  }
}

/// One warp per group (see the file comment).
template <class T, class Map>
__global__ void __launch_bounds__(stats_threads) group_stats_kernel(group_stats_params<T, Map> p) {
  __shared__ detail::shared_array<batch_partial, stats_warps> warp_part;
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  const index_t g = index_t(blockIdx.x) * stats_warps + w;
  batch_partial part;
  if (g < p.groups.num_groups()) {  // warp-uniform
    group_info gi;
    warp_group_stats(p.scores, p.scores_stride, p.groups, p.cfg, g, lane, gi, part);
    if (lane == 0) p.info[g] = gi;
  }
  if (lane == 0) warp_part[w] = part;
  __syncthreads();
  if (threadIdx.x == 0) {
    batch_partial b = warp_part[0];
    for (int j = 1; j < stats_warps; ++j) merge(b, warp_part[j]);
    p.partials[blockIdx.x] = b;
  }
}

/// The batch statistics and the batch σ from the merged partial of every group.
template <class T>
__device__ advantages_status batch_status(const batch_partial& b, const T* scores, index_t scores_stride,
                                          const advantage_config& cfg) {
  advantages_status st;
  st.batch = b;
  st.first_nonfinite_value = b.nonfinite > 0 ? double(scores[b.first_nonfinite * scores_stride]) : 0.0;
  if (cfg.scale == scale_kind::batch_std) {
    const moments bm = cfg.batch.count > 0 ? cfg.batch : b.scores;
    const bool all_equal = cfg.batch.count > 0 ? bm.m2 == 0.0 : (b.scores.count == 0 || b.min == b.max);
    bool defined = false;
    st.batch_sigma = all_equal ? 0.0 : std_from_m2(bm.m2, bm.count, cfg.std, defined);
    st.batch_zero = (all_equal || !defined) ? 1 : 0;
  }
  return st;
}

/// One block: merges `n` block partials in a fixed tree (in group order), then the batch σ.
template <class T, int Threads = finalize_threads>
__global__ void __launch_bounds__(Threads)
    finalize_batch_kernel(const batch_partial* partials, index_t n, const T* scores, index_t scores_stride,
                          advantage_config cfg, advantages_status* out) {
  __shared__ detail::shared_array<batch_partial, Threads> sh;
  const int t = threadIdx.x;
  const index_t per = detail::ceil_div<index_t>(n, Threads);
  batch_partial acc;
  for (index_t q = t * per; q < (t + 1) * per && q < n; ++q) merge(acc, partials[q]);
  sh[t] = acc;
  __syncthreads();
  for (int s = 1; s < Threads; s <<= 1) {
    if (t % (2 * s) == 0) merge(sh[t], sh[t + s]);
    __syncthreads();
  }
  if (t == 0) *out = batch_status(sh[0], scores, scores_stride, cfg);
}

/// Enqueues group_stats_kernel and finalize_batch_kernel.
template <class T, class Map>
cudaError_t launch_group_stats(const group_stats_params<T, Map>& p, cudaStream_t stream) {
  const index_t blocks = stats_blocks(p.groups.max_groups());
  group_stats_kernel<T, Map><<<static_cast<unsigned>(blocks), stats_threads, 0, stream>>>(p);
  POLO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  finalize_batch_kernel<T><<<1, finalize_threads, 0, stream>>>(p.partials, blocks, p.scores, p.scores_stride, p.cfg,
                                                               p.status);
  return cudaGetLastError();
}

#endif  // __CUDACC__

// =============================================================================================
// Advantage pass
// =============================================================================================

/// σ_g of a group with k >= 2 scoreable members (0 when they are all equal), as the CPU
/// backend computes it; 0 for smaller groups.
POLO_HD_INLINE double group_sigma(const group_info& gi, const advantage_config& c) {
  bool defined = false;
  return gi.k >= 2 && !gi.constant() ? std_from_m2(gi.m2, gi.k, c.std, defined) : 0.0;
}

/// A_i of one scoreable-or-not score x of a group, exactly as the CPU backend's pass 2, up to
/// the batch σ: returns A_i itself, or (sets `batch`, scale_kind::batch_std only) the value v
/// with A_i = scaled_advantage(v, batch σ, batch σ is zero, c), so that a kernel can compute
/// everything but that division before the batch statistics exist.
///
/// `sg` is the group's σ as group_sigma gives it (used by scale_kind::group_std only).
POLO_HD_INLINE double advantage_pre(double x, bool ok, const group_info& gi, const advantage_config& c, double sg,
                                    bool& batch) {
  batch = false;
  double a = 0.0;
  if (ok && gi.k == 1) {
    if (c.singleton == singleton_rule::raw) {
      switch (c.scale) {
        case scale_kind::none: a = x; break;
        case scale_kind::batch_std:
          a = x;
          batch = true;
          break;
        default: a = x / scale_divisor(1.0, c); break;
      }
    }
  } else if (ok && gi.k >= 2) {
    const bool constant = gi.constant();
    double b = 0.0;
    if (c.baseline == baseline_kind::group_mean) {
      b = gi.mean;
    } else if (c.baseline == baseline_kind::leave_one_out) {
      b = constant ? gi.min : (gi.sum - x) / double(gi.k - 1);
    }
    const double centred = x - b;
    switch (c.scale) {
      case scale_kind::none: a = centred; break;
      case scale_kind::group_std: a = scaled_advantage(centred, sg, constant, c); break;
      case scale_kind::leave_one_out_std: {
        // The others are all equal when the group is constant, or x is the group's only copy
        // of one extreme and every other member sits at the other extreme.
        const index_t others = gi.k - 1;
        const bool others_equal = constant || (x == gi.min && gi.n_min == 1 && gi.n_max == others) ||
                                  (x == gi.max && gi.n_max == 1 && gi.n_min == others);
        double so = 0.0;
        bool defined = others >= 1;
        if (!others_equal) {
          const double mean_o = (gi.sum - x) / double(others);
          const double m2_o = gi.m2 - (x - gi.mean) * (x - mean_o);  // Welford downdate
          so = std_from_m2(m2_o, others, c.std, defined);
        } else if (c.std == std_kind::sample) {
          defined = others >= 2;
        }
        a = scaled_advantage(centred, so, others_equal || !defined, c);
        break;
      }
      case scale_kind::batch_std:
        a = centred;
        batch = true;
        break;
    }
  }
  return a;
}

/// A_i of one scoreable-or-not score x of a group, exactly as the CPU backend's pass 2
/// (advantage_pre, then the batch σ's division where it asks for one).
POLO_HD_INLINE double advantage_of(double x, bool ok, const group_info& gi, const advantage_config& c,
                                   double batch_sigma, bool batch_zero) {
  bool batch = false;
  const double a = advantage_pre(x, ok, gi, c, c.scale == scale_kind::group_std ? group_sigma(gi, c) : 0.0, batch);
  return batch ? scaled_advantage(a, batch_sigma, batch_zero, c) : a;
}

/// Params of launch_group_advantages.
template <class T, class Map>
struct advantage_params {
  const T* scores = nullptr;  ///< [B] at stride scores_stride
  index_t scores_stride = 1;
  index_t n = 0;              ///< B
  Map groups{};
  advantage_config cfg{};
  const group_info* info = nullptr;       ///< [groups] from launch_group_stats
  advantages_status* status = nullptr;    ///< in: batch σ; out: ΣA
  T* out = nullptr;                       ///< [B] at stride out_stride (scratch or the output)
  index_t out_stride = 1;
  detail::neumaier_sum* partials = nullptr;  ///< [advantage_blocks(B)] scratch
  const cuda::status* pre = nullptr;         ///< an earlier check whose error comes first, or null
  detail::result_target<group_stats> result{};  ///< where finalize_sum_kernel publishes
};

#if defined(__CUDACC__)

struct neumaier_merge_op {
  __device__ __forceinline__ detail::neumaier_sum operator()(const detail::neumaier_sum& a,
                                                             const detail::neumaier_sum& b) const {
    return merge_sums(a, b);
  }
};

/// One thread per position in group order.
template <class T, class Map>
__global__ void __launch_bounds__(advantage_threads) advantage_kernel(advantage_params<T, Map> p) {
  using reduce_t = cub::BlockReduce<detail::neumaier_sum, advantage_threads>;
  __shared__ typename reduce_t::TempStorage tmp;
  const index_t q = index_t(blockIdx.x) * advantage_threads + threadIdx.x;
  detail::neumaier_sum mine;
  if (q < p.n) {
    const index_t i = p.groups.seq(q);
    const group_info gi = p.info[p.groups.group_of(q)];
    const double x = double(p.scores[i * p.scores_stride]);
    const double a = advantage_of(x, detail::is_finite(x), gi, p.cfg, p.status->batch_sigma, p.status->batch_zero != 0);
    const T stored = static_cast<T>(a);
    p.out[i * p.out_stride] = stored;
    mine.sum = double(stored);
  }
  const detail::neumaier_sum total = reduce_t(tmp).Reduce(mine, neumaier_merge_op{});
  if (threadIdx.x == 0) p.partials[blockIdx.x] = total;
}

/// The first data error of group_advantages: pre's, a non-finite score under
/// nonfinite_policy::error, a group of one under singleton_rule::error (code 0: none).
__device__ inline cuda::status advantages_error(const cuda::status* pre, const advantage_config& cfg,
                                                const advantages_status& s) {
  const batch_partial& b = s.batch;
  cuda::status err;
  err.entry = detail::entry_group_advantages;
  if (pre != nullptr && pre->code != detail::status_ok) {
    err = *pre;
  } else if (cfg.nonfinite == nonfinite_policy::error && b.nonfinite > 0) {
    err.code = detail::status_nonfinite_arg;
    err.a = detail::arg_scores;
    err.index = b.first_nonfinite;
    err.value = s.first_nonfinite_value;
  } else if (cfg.singleton == singleton_rule::error && b.singleton > 0) {
    err.code = detail::status_singleton;
    err.a = b.first_singleton_seq;
    err.b = b.first_singleton;
  }
  return err;
}

/// The group_stats returned for n sequences from the batch partial and ΣA.
__device__ inline group_stats make_group_stats(const batch_partial& b, index_t n, double asum) {
  group_stats st;
  st.sequences = n;
  st.groups = b.groups;
  st.empty_groups = b.empty;
  st.singleton_groups = b.singleton;
  st.zero_std_groups = b.zero_std;
  st.nonfinite_scores = b.nonfinite;
  st.scores = b.scores;
  st.group_std.sum = b.std_sum;
  st.group_std.count = b.std_count;
  st.advantage.sum = asum;
  st.advantage.count = n;
  return st;
}

/// One block: Σ of the Neumaier partials of advantage_kernel in a fixed tree, then (thread 0)
/// the group_stats and the first data error (p.pre's, a non-finite score under
/// nonfinite_policy::error, a group of one under singleton_rule::error), published.
template <class T, class Map, int Threads = finalize_threads>
__global__ void __launch_bounds__(Threads) finalize_sum_kernel(advantage_params<T, Map> p, index_t n) {
  __shared__ detail::shared_array<detail::neumaier_sum, Threads> sh;
  const int t = threadIdx.x;
  const index_t per = detail::ceil_div<index_t>(n, Threads);
  detail::neumaier_sum acc;
  for (index_t q = t * per; q < (t + 1) * per && q < n; ++q) acc = merge_sums(acc, p.partials[q]);
  sh[t] = acc;
  __syncthreads();
  for (int s = 1; s < Threads; s <<= 1) {
    if (t % (2 * s) == 0) sh[t] = merge_sums(sh[t], sh[t + s]);
    __syncthreads();
  }
  if (t == 0) {
    const double asum = sh[0].value();
    p.status->advantage_sum = asum;
    const group_stats st = make_group_stats(p.status->batch, p.n, asum);
    detail::publish(p.result, advantages_error(p.pre, p.cfg, *p.status), st);
  }
}

/// Enqueues advantage_kernel and finalize_sum_kernel. p.n >= 1.
template <class T, class Map>
cudaError_t launch_group_advantages(const advantage_params<T, Map>& p, cudaStream_t stream) {
  const index_t blocks = advantage_blocks(p.n);
  advantage_kernel<T, Map><<<static_cast<unsigned>(blocks), advantage_threads, 0, stream>>>(p);
  POLO_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  finalize_sum_kernel<T, Map><<<1, finalize_threads, 0, stream>>>(p, blocks);
  return cudaGetLastError();
}

/// out[i * out_stride] = in[i] for i < n; nothing when gate->code != 0.
template <class T>
__global__ void __launch_bounds__(256)
    copy_strided_kernel(const T* in, index_t n, T* out, index_t out_stride, const cuda::status* gate) {
  if (gate != nullptr && gate->code != 0) return;
  for (index_t i = index_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += index_t(gridDim.x) * blockDim.x)
    out[i * out_stride] = in[i];
}

/// Enqueues copy_strided_kernel (the write pass of group_advantages after its checks).
template <class T>
cudaError_t launch_copy_strided(const T* in, index_t n, T* out, index_t out_stride, const cuda::status* gate,
                                cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  copy_strided_kernel<T><<<detail::grid_for(n, 256, 4096), 256, 0, stream>>>(in, n, out, out_stride, gate);
  return cudaGetLastError();
}

/// Scratch of packed_offsets_kernel.
struct offsets_precheck {
  offsets_check chk{};
  unsigned int blocks_done = 0;
  cuda::status status{};  ///< the resolved first offsets error (code 0: none)
};

/// Packed offsets only (start, first decrease, end), one thread per row; the last block
/// resolves the first error in the CPU's order for entry `entry` (also into `deferred`, when
/// not null). Padded layouts: no error.
template <class L>
__global__ void __launch_bounds__(256)
    packed_offsets_kernel(L layout, offsets_precheck* pc, int entry, cuda::status* deferred) {
  if constexpr (L::is_packed) {
    const index_t B = layout.num_seqs();
    const index_t i = index_t(blockIdx.x) * 256 + threadIdx.x;
    if (i == 0) {
      if (layout.offsets(0) != 0) atomicOr(&pc->chk.flags, 1u);
      if (static_cast<index_t>(layout.offsets(B)) != layout.tokens) atomicOr(&pc->chk.flags, 2u);
    }
    if (i < B && static_cast<index_t>(layout.offsets(i + 1)) < static_cast<index_t>(layout.offsets(i)))
      atomicMax(&pc->chk.decrease, ~static_cast<unsigned long long>(i + 1));
    __shared__ bool last;
    __syncthreads();
    if (threadIdx.x == 0) {
      __threadfence();
      last = atomicAdd(&pc->blocks_done, 1u) == gridDim.x - 1;
    }
    __syncthreads();
    if (last && threadIdx.x == 0) {
      __threadfence();
      offsets_check c;
      c.flags = atomicOr(&pc->chk.flags, 0u);
      c.decrease = atomicMax(&pc->chk.decrease, 0ull);
      pc->status = resolve_offsets(layout, c, entry);
      detail::record_status(deferred, pc->status);
    }
  }
}

/// Clears the scratch and enqueues packed_offsets_kernel.
template <class L>
cudaError_t launch_packed_offsets(const L& layout, offsets_precheck* pc, int entry, cuda::status* deferred,
                                  cudaStream_t stream) {
  POLO_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(pc, 0, sizeof(offsets_precheck), stream));
  packed_offsets_kernel<L><<<detail::grid_for(layout.num_seqs() + 1, 256), 256, 0, stream>>>(layout, pc, entry, deferred);
  return cudaGetLastError();
}

#endif  // __CUDACC__

// =============================================================================================
// broadcast_to_tokens
// =============================================================================================

/// Scratch of the broadcast check.
struct broadcast_check {
  unsigned int flags = 0;             ///< bit 0: offsets[0] != 0; bit 1: offsets[B] != N
  unsigned int blocks_done = 0;       ///< last-block-done counter
  unsigned long long decrease = 0;    ///< ~(i + 1) for the smallest i with offsets[i+1] < offsets[i]; 0: none
  unsigned long long nonfinite = 0;   ///< ~i for the smallest row i with a non-finite value and a valid token
  cuda::status status{};              ///< the resolved first error (code 0: none)
  unsigned int ready = 0;             ///< the one-block group_advantages' release of its values (broadcast_params::ready)
};

inline constexpr int check_threads = 256;              ///< broadcast_check_kernel block
inline constexpr int check_rows = check_threads / 32;  ///< rows per block (one warp each)
inline constexpr int broadcast_threads = 256;          ///< broadcast_kernel block
inline constexpr int broadcast_unroll = 4;             ///< vectors in flight per thread

/// Params of launch_broadcast_check and launch_broadcast.
template <class T, class L>
struct broadcast_params {
  const T* values = nullptr;  ///< [B] at stride values_stride
  index_t values_stride = 1;
  L layout{};                 ///< padded [B,T] (+ mask) or packed offsets [B+1] (+ mask [N])
  token_tensor<L, T> out{};   ///< [B,T] or [N]
  broadcast_check* check = nullptr;       ///< scratch of the check
  const cuda::status* gate = nullptr;     ///< broadcast_kernel writes nothing if gate->code != 0
  const cuda::status* gate2 = nullptr;    ///< likewise (an earlier step's error), or null
  cuda::status* deferred = nullptr;       ///< caller's deferred status, or null
  /// Set: the values and gates are final once *ready != 0 (the one-block group_advantages
  /// releases it before its statistics), and broadcast_kernel waits for that instead of the
  /// kernel's completion. Null: it waits for the kernel before it to complete.
  const unsigned* ready = nullptr;
};

/// Rows of the layout.
template <class T, class L>
POLO_HD_INLINE index_t rows_of(const broadcast_params<T, L>& p) {
  return p.layout.num_seqs();
}

#if defined(__CUDACC__)

/// One warp per row; the last block to finish resolves the first error (CPU precedence:
/// offsets[0], the first decrease, offsets[B], then the first non-finite value).
template <class T, class L>
__global__ void __launch_bounds__(check_threads) broadcast_check_kernel(broadcast_params<T, L> p) {
  using Mask = typename L::mask_type;
  allow_dependent_launch();  // the broadcast's blocks may load the mask meanwhile
  const int lane = threadIdx.x & 31;
  const index_t B = rows_of(p);
  const index_t i = index_t(blockIdx.x) * check_rows + (threadIdx.x >> 5);
  if constexpr (L::is_packed) {
    if (blockIdx.x == 0 && threadIdx.x == 0) {
      if (p.layout.offsets(0) != 0) atomicOr(&p.check->flags, 1u);
      if (static_cast<index_t>(p.layout.offsets(B)) != p.layout.tokens) atomicOr(&p.check->flags, 2u);
    }
  }
  if (i < B) {  // warp-uniform
    bool range_ok = true;
    if constexpr (L::is_packed) {
      const index_t o0 = static_cast<index_t>(p.layout.offsets(i)), o1 = static_cast<index_t>(p.layout.offsets(i + 1));
      if (o1 < o0) {
        range_ok = false;
        if (lane == 0) atomicMax(&p.check->decrease, ~static_cast<unsigned long long>(i + 1));
      }
      if (o0 < 0 || o1 > p.layout.tokens) range_ok = false;
    }
    const T v = p.values[i * p.values_stride];
    if (range_ok && !detail::is_finite(v)) {
      const index_t len = p.layout.row_len(i);
      const Mask* m = p.layout.mask_row(i);
      bool any = false;
      if (m == nullptr) {
        any = len > 0;
      } else {
        for (index_t j = lane; j < len && !any; j += 32) any = detail::is_valid(m[j]);
        any = __any_sync(0xffffffffu, any);
      }
      if (any && lane == 0) atomicMax(&p.check->nonfinite, ~static_cast<unsigned long long>(i));
    }
  }
  // Last block resolves.
  __shared__ bool last;
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();
    last = atomicAdd(&p.check->blocks_done, 1u) == gridDim.x - 1;
  }
  __syncthreads();
  if (last && threadIdx.x == 0) {
    __threadfence();
    const unsigned flags = atomicOr(&p.check->flags, 0u);
    const unsigned long long dec = atomicMax(&p.check->decrease, 0ull);
    const unsigned long long nf = atomicMax(&p.check->nonfinite, 0ull);
    cuda::status s;
    s.entry = detail::entry_broadcast_to_tokens;
    if constexpr (L::is_packed) {
      if (flags & 1u) {
        s.code = detail::status_offsets_start;
        s.a = static_cast<long long>(p.layout.offsets(0));
      } else if (dec != 0) {
        const index_t at = static_cast<index_t>(~dec);
        s.code = detail::status_offsets_decrease;
        s.index = at;
        s.a = static_cast<long long>(p.layout.offsets(at - 1));
        s.b = static_cast<long long>(p.layout.offsets(at));
      } else if (flags & 2u) {
        s.code = detail::status_offsets_end;
        s.a = static_cast<long long>(p.layout.offsets(B));
        s.b = p.layout.tokens;
      }
    }
    if (s.code == detail::status_ok && nf != 0) {
      const index_t at = static_cast<index_t>(~nf);
      s.code = detail::status_nonfinite_value;
      s.index = at;
      s.value = double(p.values[at * p.values_stride]);
    }
    p.check->status = s;
    detail::record_status(p.deferred, s);
  }
}

/// Clears the check scratch and enqueues broadcast_check_kernel.
template <class T, class L>
cudaError_t launch_broadcast_check(const broadcast_params<T, L>& p, cudaStream_t stream) {
  POLO_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(p.check, 0, sizeof(broadcast_check), stream));
  const index_t rows = rows_of(p);
  const unsigned grid = detail::grid_for(rows, check_rows);
  broadcast_check_kernel<T, L><<<grid, check_threads, 0, stream>>>(p);
  return cudaGetLastError();
}

template <class T>
struct alignas(16) vec16 {
  static constexpr int width = 16 / sizeof(T);
  T x[width];
};
template <class Mask, int V>
struct alignas(sizeof(Mask) * V) mask_vec {
  Mask m[V];
};

/// Loads a flag with acquire semantics at GPU scope.
__device__ __forceinline__ unsigned load_acquire(const unsigned* f) {
  unsigned v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(f) : "memory");
  return v;
}

/// broadcast_kernel's wait for its values and gates: *p.ready != 0 when set (thread 0 polls,
/// the block waits at a barrier), else the completion of the kernel before it.
template <class T, class L>
__device__ __forceinline__ void wait_for_values(const broadcast_params<T, L>& p) {
  if (p.ready != nullptr) {
    if (threadIdx.x == 0)
      while (load_acquire(p.ready) == 0u) __nanosleep(64);
    __syncthreads();
  } else {
    grid_dependency_wait();
  }
}

/// The body of broadcast_kernel (one block).
template <class T, class L>
__device__ __forceinline__ void broadcast_block(const broadcast_params<T, L>& p) {
  using Mask = typename L::mask_type;
  constexpr int V = vec16<T>::width;
  constexpr int U = broadcast_unroll;
  auto gates_closed = [&] {
    return (p.gate != nullptr && p.gate->code != 0) || (p.gate2 != nullptr && p.gate2->code != 0);
  };
  if constexpr (L::is_packed) {
    wait_for_values(p);
    if (gates_closed()) return;  // a check failed: write nothing
  }
  const index_t i = blockIdx.x;
  const index_t len = p.layout.row_len(i);
  T* __restrict__ o = p.layout.row_ptr(p.out, i);
  const Mask* __restrict__ m = p.layout.mask_row(i);
  // Head (up to the first 16-byte boundary of the output), body of V-vectors, tail.
  const index_t n = len > 0 ? len : 0;
  const index_t mis = static_cast<index_t>((reinterpret_cast<std::uintptr_t>(o) / sizeof(T)) % V);
  const index_t head = detail::min_of<index_t>(n, mis == 0 ? 0 : V - mis);
  const index_t nvec = (n - head) / V;
  const index_t tail = head + nvec * V;
  const int t = threadIdx.x;
  const index_t per = detail::ceil_div<index_t>(nvec, gridDim.y);
  const index_t vlo = index_t(blockIdx.y) * per;
  const index_t vhi = detail::min_of<index_t>(nvec, vlo + per);
  const Mask* mb = m == nullptr ? nullptr : m + head;
  const bool mask_vec_ok = mb != nullptr && detail::is_aligned(mb, sizeof(Mask) * V);
  Mask mk[U][V];
  auto load = [&](index_t k0) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const index_t k = k0 + index_t(u) * broadcast_threads;
      if (k < vhi) {
        if (mask_vec_ok) {
          const mask_vec<Mask, V> mv = reinterpret_cast<const mask_vec<Mask, V>*>(mb)[k];
#pragma unroll
          for (int e = 0; e < V; ++e) mk[u][e] = mv.m[e];
        } else {
#pragma unroll
          for (int e = 0; e < V; ++e) mk[u][e] = mb[k * V + e];
        }
      }
    }
  };
  index_t k0 = vlo + t;
  if (mb != nullptr && k0 < vhi) load(k0);
  if constexpr (!L::is_packed) {
    wait_for_values(p);
    if (gates_closed()) return;  // a check failed: write nothing
  }
  if (n == 0) return;
  const T v = p.values[i * p.values_stride];
  const T zero = T(0);
  if (blockIdx.y == 0) {
    for (index_t j = t; j < head; j += broadcast_threads) o[j] = (m == nullptr || detail::is_valid(m[j])) ? v : zero;
    for (index_t j = tail + t; j < n; j += broadcast_threads) o[j] = (m == nullptr || detail::is_valid(m[j])) ? v : zero;
  }
  vec16<T>* ov = reinterpret_cast<vec16<T>*>(o + head);
  if (m == nullptr) {
    vec16<T> all;
#pragma unroll
    for (int u = 0; u < V; ++u) all.x[u] = v;
    for (index_t k = vlo + t; k < vhi; k += broadcast_threads) ov[k] = all;
    return;
  }
  for (bool first = true; k0 < vhi; k0 += index_t(U) * broadcast_threads, first = false) {
    if (!first) load(k0);
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const index_t k = k0 + index_t(u) * broadcast_threads;
      if (k < vhi) {
        vec16<T> r;
#pragma unroll
        for (int e = 0; e < V; ++e) r.x[e] = detail::is_valid(mk[u][e]) ? v : zero;
        ov[k] = r;
      }
    }
  }
}

/// One block per (row, slice of the row): out = mask ? value : 0 with 16-byte stores.
/// Launched as a programmatic dependent of the kernel that checks (and, in the combined call,
/// computes) the values: for padded layouts the block's first mask vectors are loaded before
/// the wait for the values (wait_for_values: the kernel before it completes, or releases
/// p.ready); the values and the gates are read after it, and packed rows are only touched
/// after it (their offsets are checked before).
template <class T, class L>
__global__ void __launch_bounds__(broadcast_threads) broadcast_kernel(broadcast_params<T, L> p) {
  broadcast_block(p);
  // Released early by p.ready, the block still ends after the kernel before it (a later kernel
  // of the stream then finds both complete): by then it has, in practice, long finished.
  if (p.ready != nullptr) grid_dependency_wait();
}

/// Enqueues broadcast_kernel over every row, as a programmatic dependent of the kernel before
/// it (row_reduce.cuh: launch_dependent). Rows split into slices so that a block writes about
/// broadcast_threads * broadcast_unroll vectors.
template <class T, class L>
cudaError_t launch_broadcast(const broadcast_params<T, L>& p, cudaStream_t stream) {
  const index_t rows = rows_of(p);
  if (rows <= 0) return cudaSuccess;
  constexpr index_t per_block = index_t(broadcast_threads) * broadcast_unroll * vec16<T>::width;
  index_t avg_len;
  if constexpr (L::is_packed) {
    avg_len = detail::ceil_div<index_t>(p.layout.tokens, rows);
  } else {
    avg_len = p.layout.seq_len;
  }
  index_t slices = detail::ceil_div<index_t>(avg_len > 0 ? avg_len : 1, per_block);
  if (slices > 65535) slices = 65535;
  if (rows > 0x7fffffff) return cudaErrorInvalidConfiguration;
  const dim3 grid(static_cast<unsigned>(rows), static_cast<unsigned>(slices));
  return launch_dependent(broadcast_kernel<T, L>, grid, dim3(broadcast_threads), stream, p);
}

#endif  // __CUDACC__

// =============================================================================================
// group_advantages in one block (B <= fused_max)
// =============================================================================================

inline constexpr index_t fused_max = 2048;  ///< largest B of the one-block path
inline constexpr int block_threads = 512;   ///< the one block of group_advantages_block_kernel
static_assert(fused_max <= segment_small_max, "labelled groups of the one-block path are segmented in one block");
static_assert(fused_max % block_threads == 0, "fused_max: whole items per thread of the segmentation");

/// No label segmentation (contiguous groups) / no token check (group_advantages alone).
struct no_segment {};
struct no_token_check {};

/// Params of launch_group_advantages_block. Map: contiguous_map, or segmented_map with Seg =
/// segment_labels_params<Label> (labelled groups: `groups` points into its outputs, which the
/// kernel writes first); Seg no_segment otherwise. L: the token layout of the combined call,
/// whose broadcast check (a non-finite advantage on a row with a valid token) this kernel
/// makes, or no_token_check.
template <class T, class Map, class Seg, class L>
struct fused_advantages_params {
  const T* scores = nullptr;  ///< [B] at stride scores_stride
  index_t scores_stride = 1;
  index_t n = 0;              ///< B, 1 <= B <= fused_max
  Map groups{};
  advantage_config cfg{};
  T* out = nullptr;            ///< [B] at stride out_stride: the advantages (written only without error)
  index_t out_stride = 1;
  const cuda::status* pre = nullptr;             ///< an earlier check whose error comes first, or null
  detail::result_target<group_stats> result{};   ///< slot error: the first error (the gate of the broadcast)
  Seg seg{};
  L layout{};
  unsigned* ready = nullptr;  ///< 0 at the kernel's start, 1 once `out` and the gate are final (or null)
};

/// Shared memory of the segmentation in the one-block kernel (none for contiguous groups).
template <class Seg>
struct block_segment_storage {
  unsigned char unused;
};
template <class Label>
struct block_segment_storage<segment_labels_params<Label>> {
  segment_small_storage<Label, block_threads, static_cast<int>(fused_max / block_threads)> sort;
};

#if defined(__CUDACC__)

/// True when row i of the layout has a valid token (the broadcast check's condition).
template <class L>
__device__ bool row_has_valid(const L& layout, index_t i) {
  const index_t len = layout.row_len(i);
  const auto* m = layout.mask_row(i);
  if (m == nullptr) return len > 0;
  for (index_t j = 0; j < len; ++j)
    if (detail::is_valid(m[j])) return true;
  return false;
}

#endif  // __CUDACC__

// =============================================================================================
// group_advantages_block_kernel: the whole of group_advantages in one block (B <= fused_max)
// =============================================================================================

/// Lanes of a warp that take one group together, for groups of at most G members (of
/// `groups`): the smallest power of two >= G, at most 32, halved while the groups would not all
/// fit in the block at once (a warp takes 32 / lanes groups at once; lane l of a group takes
/// its members l, l + lanes, ...). H100, 1024 x 8192 in groups of 16: 8 lanes of 2 members
/// each took 10.9 us against 14.7 for 16 lanes of one member in 1,024 threads.
POLO_HD_INLINE int group_lanes(index_t G, index_t groups) {
  int s = 1;
  while (s < 32 && index_t(s) < G) s <<= 1;
  while (s > 1 && groups * s > block_threads) s >>= 1;
  return s;
}

/// The first fold of the one-block kernel: what the batch statistics take from the groups
/// before the batch mean is known. Counts are 32 bits (B <= fused_max). The first indices are
/// a lane's own (the kernel takes their minima over the block once, for the first error).
struct block_partial {
  detail::neumaier_sum sum{};  ///< Σ of the scoreable scores
  double min = 0.0, max = 0.0;  ///< of the scoreable scores (+inf / -inf before any)
  double std_sum = 0.0;         ///< Σσ_g over groups with k >= 2
  unsigned count = 0, empty = 0, singleton = 0, zero_std = 0, nonfinite = 0, std_count = 0;
  unsigned first_nonfinite = UINT_MAX;  ///< smallest sequence with a non-finite score
  unsigned first_singleton = UINT_MAX;  ///< smallest group with one scoreable member
};

/// The second fold: ΣA and the batch M2 about the batch mean.
struct block_sums {
  detail::neumaier_sum a{}, m2{};
};

#if defined(__CUDACC__)

/// Butterfly over aligned sets of S lanes (S a power of two <= 32, the same in the whole warp):
/// every lane returns merge of its set's values, pairs (l, l^1), then (l, l^2), ..., the lower
/// lanes' value always the first argument, so that every lane of a set holds the same bits.
/// Call from a whole warp.
template <class V, class Merge>
__device__ __forceinline__ V lanes_allreduce(V v, int S, Merge&& merge) {
  const int lane = int(threadIdx.x & 31);
#pragma unroll
  for (int d = 1; d < 32; d <<= 1) {
    if (d < S) {  // warp-uniform
      const V o = shfl_xor_value(v, d);
      v = (lane & d) ? merge(o, v) : merge(v, o);
    }
  }
  return v;
}

/// A warp's first-fold partial in lane 0 (other lanes: the counts only): the sum, σ sum and
/// extremes in warp_tree_fold's fixed tree, the counts by warp-wide integer sums (exact in any
/// order); the first indices are left as they are. Call from a whole warp.
__device__ __forceinline__ block_partial warp_partial(block_partial v) {
  struct doubles {
    detail::neumaier_sum sum;
    double min, max, std_sum;
  };
  const doubles d = warp_tree_fold(doubles{v.sum, v.min, v.max, v.std_sum}, [](doubles a, const doubles& b) {
    a.sum = merge_sums(a.sum, b.sum);
    a.min = detail::min_of(a.min, b.min);
    a.max = detail::max_of(a.max, b.max);
    a.std_sum += b.std_sum;
    return a;
  });
  v.sum = d.sum;
  v.min = d.min;
  v.max = d.max;
  v.std_sum = d.std_sum;
  v.count = __reduce_add_sync(0xffffffffu, v.count);
  v.empty = __reduce_add_sync(0xffffffffu, v.empty);
  v.singleton = __reduce_add_sync(0xffffffffu, v.singleton);
  v.zero_std = __reduce_add_sync(0xffffffffu, v.zero_std);
  v.nonfinite = __reduce_add_sync(0xffffffffu, v.nonfinite);
  v.std_count = __reduce_add_sync(0xffffffffu, v.std_count);
  return v;
}

/// A warp's second-fold sums in lane 0 (warp_tree_fold's fixed tree). Call from a whole warp.
__device__ __forceinline__ block_sums warp_sums(const block_sums& v) {
  return warp_tree_fold(v, [](block_sums a, const block_sums& b) {
    a.a = merge_sums(a.a, b.a);
    a.m2 = merge_sums(a.m2, b.m2);
    return a;
  });
}

/// group_advantages in one block, B <= fused_max, contiguous or labelled groups of any size.
///
///     segment     labelled groups only: the block sorts (label, sequence) pairs
///                 (segment_small_block; its shared memory then holds the scores) and finds the
///                 largest group
///     groups      each group is taken by group_lanes(largest, groups) lanes of one warp (a
///                 warp takes 32 / lanes groups at once): its count by ballots, its Neumaier
///                 sum, extremes, mean and M2 (two passes, x staged in shared memory) by
///                 butterflies, so that every lane holds the group's statistics; then A_i up to
///                 the batch σ (advantage_pre) in shared memory
///     first error the first non-finite score and the first group of one (warp minima, then a
///                 minimum over the warps in every thread): whether A may be written
///     write       A at positions t, t + threads, ... (only without an error), ΣA per thread,
///                 the broadcast's check; then the gate (the slot's error) and, when p.ready is
///                 set, the release of *p.ready: the broadcast's blocks start from there
///     statistics  after the release (before the write under scale_kind::batch_std without a
///                 given batch, whose σ it needs): the batch count, sum, extremes and σ sum
///                 (warp trees, then one warp over the warps) -> the batch mean; the batch M2 =
///                 Σ (x - mean)² over the scoreable scores (a two-pass variance) and ΣA in a
///                 second fold; the group_stats published
///
/// No global scratch but the segmentation's, no atomics but an integer minimum; bitwise the
/// same from run to run (every floating-point merge in a fixed order).
template <class T, class Map, class Seg, class L>
__global__ void __launch_bounds__(block_threads)
    group_advantages_block_kernel(fused_advantages_params<T, Map, Seg, L> p) {
  constexpr int W = block_threads / 32;
  constexpr bool labelled = !std::is_same_v<Seg, no_segment>;
  static_assert(W <= 32, "one warp folds the warps' partials, one per lane");
  __shared__ union {
    block_segment_storage<Seg> seg;  // the segmentation's, until it ends
    double xs[fused_max];            // then the scores, by position (group order)
  } u;
  double* const xs = u.xs;
  __shared__ double stage[fused_max];              // A_i before the batch σ, by position
  __shared__ unsigned char batch_flag[fused_max];  // stage[q] still takes the batch σ's division
  __shared__ detail::shared_array<block_partial, W> part;
  __shared__ detail::shared_array<block_sums, W> sums;
  __shared__ unsigned first_bad[W], first_one[W];  // per warp: first non-finite score, first group of one
  __shared__ double batch_mean, batch_sigma, batch_m2;
  __shared__ int pre_failed, batch_zero;
  __shared__ unsigned long long bad_row;
  __shared__ int largest[W];  // per warp: the largest group (labelled groups)
  const int t = threadIdx.x, lane = t & 31, w = t >> 5;
  if (t == 0) {
    // The block lets the broadcast launch at the first launch_dependents any of its threads
    // issues: only this thread issues it, after the flag of the previous call is cleared.
    if (p.ready != nullptr) {
      *p.ready = 0u;
      __threadfence();
    }
    allow_dependent_launch();  // the broadcast's blocks may load the mask on the other SMs meanwhile
    pre_failed = p.pre != nullptr && p.pre->code != detail::status_ok;
    bad_row = ULLONG_MAX;
  }
  // Positions, groups and counts in 32 bits: B <= fused_max.
  const int n = static_cast<int>(p.n);
  const advantage_config& c = p.cfg;
  int G = 0;  // the largest group
  if constexpr (labelled) {
    segment_small_block<typename Seg::label_type, block_threads, static_cast<int>(fused_max / block_threads)>(
        p.seg, u.seg.sort);
    __syncthreads();  // the segmentation (global scratch) is visible to the whole block
    const int ng = static_cast<int>(p.groups.num_groups());
    int big = 0;
    for (int g = t; g < ng; g += block_threads)
      big = detail::max_of(big, static_cast<int>(p.groups.end(g) - p.groups.begin(g)));
    big = __reduce_max_sync(0xffffffffu, big);
    if (lane == 0) largest[w] = big;
    __syncthreads();  // (also: the sort's shared memory is free for the scores)
#pragma unroll
    for (int v = 0; v < W; ++v) G = detail::max_of(G, largest[v]);
  } else {
    G = static_cast<int>(p.groups.size);
  }
  const int ngroups = static_cast<int>(p.groups.num_groups());
  const int S = group_lanes(G, ngroups), per_warp = 32 / S;
  const int l = lane & (S - 1), base = lane & ~(S - 1);
  const unsigned set = S == 32 ? 0xffffffffu : ((1u << S) - 1u) << base;  // this lane's set
  const int chunks = (G + S - 1) / S;
  block_partial acc;
  acc.min = INFINITY;
  acc.max = -INFINITY;
  for (int first = w * per_warp; first < ngroups; first += W * per_warp) {  // warp-uniform
    const int g = first + lane / S;
    const bool here = g < ngroups;
    const int lo = here ? static_cast<int>(p.groups.begin(g)) : 0;      // first position
    const int size = here ? static_cast<int>(p.groups.end(g)) - lo : 0;  // members
    // Pass 1: stage x; count, Neumaier sum, min, max of the scoreable members.
    detail::neumaier_sum sum;
    double mn = INFINITY, mx = -INFINITY;
    int k = 0;
    for (int m = 0; m < chunks; ++m) {
      const int j = m * S + l, q = lo + j;
      const bool member = j < size;
      double x = 0.0;
      int i = 0;  // the member's sequence
      if (member) {
        i = static_cast<int>(p.groups.seq(q));
        x = double(p.scores[index_t(i) * p.scores_stride]);
        xs[q] = x;
      }
      const bool ok = member && detail::is_finite(x);
      if (ok) {
        sum.add(x);
        mn = detail::min_of(mn, x);
        mx = detail::max_of(mx, x);
      } else if (member) {
        ++acc.nonfinite;
        if (static_cast<unsigned>(i) < acc.first_nonfinite) acc.first_nonfinite = static_cast<unsigned>(i);
      }
      k += __popc(__ballot_sync(0xffffffffu, ok) & set);
    }
    sum = lanes_allreduce(sum, S, neumaier_merge_op{});
    {
      struct extremes {
        double mn, mx;
      };
      const extremes e = lanes_allreduce(extremes{mn, mx}, S, [](extremes a, const extremes& b) {
        return extremes{detail::min_of(a.mn, b.mn), detail::max_of(a.mx, b.mx)};
      });
      mn = e.mn;
      mx = e.mx;
    }
    group_info gi;
    gi.k = k;
    gi.sum = sum.value();
    gi.min = k > 0 ? mn : 0.0;
    gi.max = k > 0 ? mx : 0.0;
    const bool constant = gi.constant();
    gi.mean = k > 0 ? (constant ? mn : gi.sum / double(k)) : 0.0;
    // Pass 2 (x from shared memory): multiplicities of min and max, M2 about the mean.
    const bool need_m2 = k > 1 && !constant;
    detail::neumaier_sum m2;
    int n_min = 0, n_max = 0;
    for (int m = 0; m < chunks; ++m) {
      const int j = m * S + l, q = lo + j;
      const bool member = j < size;
      const double x = member ? xs[q] : 0.0;
      const bool ok = member && detail::is_finite(x);
      if (ok && need_m2) {
        const double d = x - gi.mean;
        m2.add(d * d);
      }
      if (c.scale == scale_kind::leave_one_out_std) {  // block-uniform: only it reads them
        n_min += __popc(__ballot_sync(0xffffffffu, ok && x == gi.min) & set);
        n_max += __popc(__ballot_sync(0xffffffffu, ok && x == gi.max) & set);
      }
    }
    m2 = lanes_allreduce(m2, S, neumaier_merge_op{});
    gi.m2 = need_m2 ? m2.value() : 0.0;
    gi.n_min = n_min;
    gi.n_max = n_max;
    const double sg = group_sigma(gi, c);
    // Pass 3: A_i up to the batch σ.
    for (int m = 0; m < chunks; ++m) {
      const int j = m * S + l, q = lo + j;
      if (j < size) {
        const double x = xs[q];
        bool batch = false;
        stage[q] = advantage_pre(x, detail::is_finite(x), gi, c, sg, batch);
        batch_flag[q] = batch ? 1 : 0;
      }
    }
    if (here && l == 0) {  // the group's part of the batch statistics, in its first lane
      acc.count += static_cast<unsigned>(k);
      if (k == 0) ++acc.empty;
      if (k == 1) {
        ++acc.singleton;
        if (static_cast<unsigned>(g) < acc.first_singleton) acc.first_singleton = static_cast<unsigned>(g);
      }
      if (k > 0) {
        acc.sum = merge_sums(acc.sum, sum);
        acc.min = detail::min_of(acc.min, gi.min);
        acc.max = detail::max_of(acc.max, gi.max);
      }
      if (k >= 2) {
        acc.std_sum += sg;
        ++acc.std_count;
        if (constant) ++acc.zero_std;
      }
    }
  }
  {
    const unsigned fb = __reduce_min_sync(0xffffffffu, acc.first_nonfinite);
    const unsigned fs = __reduce_min_sync(0xffffffffu, acc.first_singleton);
    if (lane == 0) {
      first_bad[w] = fb;
      first_one[w] = fs;
    }
  }
  __syncthreads();
  unsigned fb = UINT_MAX, fs = UINT_MAX;
#pragma unroll
  for (int v = 0; v < W; ++v) {
    fb = detail::min_of(fb, first_bad[v]);
    fs = detail::min_of(fs, first_one[v]);
  }
  // The first error as advantages_error orders them (pre's, a non-finite score, a group of one).
  const bool ok = !pre_failed && !(c.nonfinite == nonfinite_policy::error && fb != UINT_MAX) &&
                  !(c.singleton == singleton_rule::error && fs != UINT_MAX);
  // The batch statistics: the first fold (-> the batch mean), then the scores' M2 about it.
  auto first_fold = [&] {
    const block_partial wp = warp_partial(acc);
    if (lane == 0) part[w] = wp;
    __syncthreads();
    if (w == 0) {
      block_partial mine;
      mine.min = INFINITY;
      mine.max = -INFINITY;
      if (lane < W) mine = part[lane];
      const block_partial b = warp_partial(mine);
      if (lane == 0) {
        // (exactly the common value when all are equal)
        batch_mean = b.count == 0 ? 0.0 : b.min == b.max ? b.min : b.sum.value() / double(b.count);
        part[0] = b;  // (read after the next barrier)
      }
    }
    __syncthreads();
  };
  auto scores_m2 = [&] {
    detail::neumaier_sum m2;
    const double mean = batch_mean;
    for (int q = t; q < n; q += block_threads) {
      const double x = xs[q];
      if (detail::is_finite(x)) {
        const double d = x - mean;
        m2.add(d * d);
      }
    }
    return m2;
  };
  auto make_partial = [&](const block_partial& b, double m2) {
    batch_partial bp;
    bp.groups = ngroups;
    bp.empty = b.empty;
    bp.singleton = b.singleton;
    bp.zero_std = b.zero_std;
    bp.nonfinite = b.nonfinite;
    if (fb != UINT_MAX) bp.first_nonfinite = fb;
    if (fs != UINT_MAX) {
      bp.first_singleton = fs;
      bp.first_singleton_seq = p.groups.seq(p.groups.begin(fs));
    }
    bp.scores.count = b.count;
    if (b.count > 0) {
      bp.min = b.min;
      bp.max = b.max;
      bp.scores.mean = batch_mean;
      bp.scores.m2 = m2;
    }
    bp.std_sum = b.std_sum;
    bp.std_count = b.std_count;
    return bp;
  };
  block_sums mine;
  const bool m2_first = c.scale == scale_kind::batch_std && c.batch.count == 0;  // block-uniform
  if (c.scale == scale_kind::batch_std) {  // the batch σ, before A
    if (m2_first) {
      first_fold();
      mine.m2 = scores_m2();
      const block_sums ws = warp_sums(mine);
      if (lane == 0) sums[w] = ws;
      __syncthreads();
      if (w == 0) {
        const block_sums b = warp_sums(lane < W ? sums[lane] : block_sums{});
        if (lane == 0) {
          batch_m2 = b.m2.value();
          const advantages_status st = batch_status(make_partial(part[0], batch_m2), p.scores, p.scores_stride, c);
          batch_sigma = st.batch_sigma;
          batch_zero = st.batch_zero;
        }
      }
    } else if (t == 0) {  // from the given batch moments
      const advantages_status st = batch_status(batch_partial{}, p.scores, p.scores_stride, c);
      batch_sigma = st.batch_sigma;
      batch_zero = st.batch_zero;
    }
    __syncthreads();
  }
  const double bsig = c.scale == scale_kind::batch_std ? batch_sigma : 0.0;
  const bool bzero = c.scale == scale_kind::batch_std ? batch_zero != 0 : true;
  for (int q = t; q < n; q += block_threads) {
    double v = stage[q];
    if (batch_flag[q]) v = scaled_advantage(v, bsig, bzero, c);
    const T a = static_cast<T>(v);
    mine.a.add(double(a));
    if (ok) {
      const index_t i = p.groups.seq(q);
      p.out[i * p.out_stride] = a;
      if constexpr (!std::is_same_v<L, no_token_check>) {
        if (!detail::is_finite(a) && row_has_valid(p.layout, i))
          atomicMin(&bad_row, static_cast<unsigned long long>(i));  // integer minimum: order-free
      }
    }
  }
  __syncthreads();  // every A written, bad_row final
  cuda::status e;  // the first error of both steps (thread 0)
  if (t == 0) {
    advantages_status st;  // what advantages_error reads: the first non-finite score and group of one
    st.batch = make_partial(block_partial{}, 0.0);
    st.batch.nonfinite = fb != UINT_MAX ? 1 : 0;
    st.batch.singleton = fs != UINT_MAX ? 1 : 0;
    st.first_nonfinite_value = fb != UINT_MAX ? double(p.scores[index_t(fb) * p.scores_stride]) : 0.0;
    e = advantages_error(p.pre, c, st);
    if (ok && bad_row != ULLONG_MAX) {  // the broadcast's check (group_advantages itself succeeded)
      const index_t at = static_cast<index_t>(bad_row);
      e = cuda::status{};
      e.entry = detail::entry_broadcast_to_tokens;
      e.code = detail::status_nonfinite_value;
      e.index = at;
      e.value = double(p.out[at * p.out_stride]);
    }
    p.result.slot->error = e;  // the broadcast's gate
    if (p.ready != nullptr) {
      __threadfence();  // A (written by the whole block before the barrier) and the gate, then the flag
      atomicExch(p.ready, 1u);
    }
  }
  // The statistics, while the broadcast writes.
  if (!m2_first) {
    first_fold();
    mine.m2 = scores_m2();
  }
  const block_sums ws = warp_sums(mine);
  if (lane == 0) sums[w] = ws;  // (after m2_first's fold: its reads ended before its barrier)
  __syncthreads();
  if (w == 0) {
    const block_sums total = warp_sums(lane < W ? sums[lane] : block_sums{});
    if (lane == 0) {
      const batch_partial bp = make_partial(part[0], m2_first ? batch_m2 : total.m2.value());
      const group_stats st = make_group_stats(bp, n, total.a.value());
      p.result.slot->value = st;
      if (p.result.result != nullptr && ok) *p.result.result = st;
      detail::record_status(p.result.deferred, e);
    }
  }
}

/// Enqueues group_advantages_block_kernel (one block). 1 <= p.n <= fused_max; contiguous
/// groups: p.n a multiple of the group size.
template <class T, class Map, class Seg, class L>
cudaError_t launch_group_advantages_block(const fused_advantages_params<T, Map, Seg, L>& p, cudaStream_t stream) {
  if (p.n < 1 || p.n > fused_max) return cudaErrorInvalidValue;
  group_advantages_block_kernel<T, Map, Seg, L><<<1, block_threads, 0, stream>>>(p);
  return cudaGetLastError();
}

#endif  // __CUDACC__

}  // namespace polo::kernels
