// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
#pragma once
/// \file
/// Backend tags. A backend is chosen at compile time by the type of the first argument of
/// every primitive: `polo::cpu{}` runs on the host (Eigen), `polo::cuda{stream}` runs on the
/// GPU on the given stream. Each tag names the memory space its data must live in, and the
/// views carry their memory space in their type, so handing host memory to the CUDA backend
/// (or device memory to the CPU backend) is a compile error, not a crash.
///
/// The tags are plain C++ (no CUDA header is needed to name `polo::cuda` or hold a stream);
/// the CUDA implementations live under cuda/polo/ and are only visible to nvcc TUs.

#include <concepts>
#include <cstddef>
#include <type_traits>

#include "polo/core/config.hpp"

struct CUstream_st;  // the CUDA driver's opaque stream; cudaStream_t is CUstream_st*

namespace polo {

/// Memory that the host can dereference (std::vector, Eigen, malloc, pinned memory).
struct host_space {
  static constexpr const char* name = "host";
};

/// Memory of the current CUDA device (cudaMalloc, cudaMallocAsync, torch CUDA tensors).
struct device_space {
  static constexpr const char* name = "cuda-device";
};

/// Same type as `cudaStream_t`, spelled without CUDA headers so .cpp code can hold one.
using stream_t = CUstream_st*;

/// How reproducible a reduction must be (after CUB's determinism levels).
enum class determinism : unsigned char {
  run_to_run,  ///< bitwise identical results for identical inputs on the same device (default)
  fast,        ///< may use floating-point atomics; results can differ in the last bits.
               ///< No primitive has such a variant yet: `fast` runs the deterministic kernels.
};

/// How the CUDA scans (`gae`, `discounted_returns`, `remax_advantages`, `reinforce_plus_plus`)
/// cut their rows into chunks, which sets their reduction trees and so the last bits of their
/// outputs (polo::cuda::scans; the CPU backend scans each row serially and ignores it).
enum class scan_chunking : unsigned char {
  /// The fastest chunk shape for the batch's typical row length (padded: T; packed: ⌈N/B⌉):
  /// chunks of 32 threads of 4 tokens up to 128 tokens, of 8 tokens from 129 to 256, 64
  /// threads from 257 to 512, 32 again from 513 to 2048, and 256 threads (each storing its
  /// partial scan between the passes) above. A batch and the same batch in the other layout
  /// give bitwise equal outputs when both typical lengths pick the same shape, and agree to
  /// rounding otherwise.
  adaptive,
  /// Chunks of one warp (256 tokens) for every batch: a padded batch and the same batch packed
  /// are cut and scanned identically, so their outputs and statistics are bitwise equal
  /// whatever their lengths. As fast at 1024 x 8192 on an H100, 2x slower on rows of a million
  /// tokens (docs/cuda.md, "Determinism").
  layout_invariant,
};

/// The CPU backend: fixed-order, deterministic loops over Eigen maps.
///
///     polo::cpu{}                  // the calling thread only
///     polo::cpu{.threads = 8}      // a batch's sequences spread over up to 8 threads
///     polo::cpu{.threads = 0}      // ... over std::thread::hardware_concurrency() threads
struct cpu {
  using memory_space = host_space;
  static constexpr const char* name = "cpu";
  /// Threads a call may use (the calling thread included): 1 (the default) runs on the calling
  /// thread; N > 1 lets `policy_loss`, `gae`, `discounted_returns`, `remax_advantages`,
  /// `reinforce_plus_plus`, `whiten`, `masked_moments`, `value_loss` and `kl_penalized_rewards`
  /// compute the sequences of a batch on up to N threads, started for the call and joined
  /// before it returns, at most one per 65,536 positions (small batches stay on the calling
  /// thread); 0 (or any negative value) means std::thread::hardware_concurrency(). The group
  /// estimators (`group_advantages`, `opo_advantages`, `reinforce_pp_baseline`'s group step)
  /// and `count_tokens` run on the calling thread. Results are bitwise the same for every
  /// value, errors included: each sequence is computed on its own and the statistics are
  /// folded on the calling thread in sequence order, exactly as with 1.
  int threads = 1;
};

/// The CUDA backend: kernels launched on `stream`, never synchronizing it except where an
/// entry point documents that it returns a host value or must throw before writing. Requires
/// including <polo/polo.cuh> from a .cu translation unit (docs/cuda.md).
///
///     polo::cuda be{stream};                          // scratch from cudaMallocAsync on `stream`
///     polo::cuda be{.stream = s, .workspace = p, .workspace_bytes = n};   // caller's scratch
///     polo::cuda be{.stream = s, .alloc = {my_alloc, my_free, ctx}};      // caller's allocator
///
/// Scratch memory is taken, in this order of preference, from `workspace` (never more than
/// `workspace_bytes`; size it with the primitive's `*_workspace_bytes` query), from `alloc`,
/// or, when both are unset, from `cudaMallocAsync`/`cudaFreeAsync` on `stream` (the device's
/// stream-ordered pool). Output buffers are always the caller's; polo never allocates them.
struct cuda {
  using memory_space = device_space;
  static constexpr const char* name = "cuda";

  /// Stream-ordered allocator callbacks for scratch memory (a PyTorch caching allocator, RMM,
  /// a bump arena, ...). `allocate` returns `bytes` of device memory, aligned to 256 bytes,
  /// usable by work enqueued on `stream` from now on, or null on failure (polo then throws
  /// `cuda_error`); `deallocate` gives a block back once the work enqueued on `stream` so far
  /// is done with it (it must not wait for that work itself). Both are called on the host.
  struct allocator {
    void* (*allocate)(void* context, std::size_t bytes, stream_t stream) = nullptr;
    void (*deallocate)(void* context, void* ptr, std::size_t bytes, stream_t stream) = nullptr;
    void* context = nullptr;  ///< passed back to both callbacks
  };

  /// First data-dependent error recorded on the device by an entry point that runs with
  /// `deferred_errors` set (plain data: allocate it in device memory, zero it, read it back
  /// with `polo::cuda_check(be)` from <polo/polo.cuh>). `code == 0` means no error.
  struct status {
    int code = 0;        ///< 0: none; otherwise which check failed (see cuda/polo/detail/status.cuh)
    int entry = 0;       ///< which entry point recorded it
    long long index = 0; ///< flat index of the offending element
    long long a = 0;     ///< offending integer values (packed offsets), when the check has them
    long long b = 0;
    double value = 0.0;  ///< offending floating-point value, when the check has one
  };

  stream_t stream = nullptr;                    ///< stream every kernel is launched on
  determinism level = determinism::run_to_run;  ///< reduction reproducibility
  void* workspace = nullptr;                    ///< caller-provided device scratch, or null
  std::size_t workspace_bytes = 0;              ///< size of `workspace` in bytes
  allocator alloc{};                            ///< scratch allocator used when `workspace` is null
  /// Device memory, or null (the default). When set, entry points that return nothing
  /// (broadcast_to_tokens) do not synchronize to report data-dependent errors: they write
  /// nothing, record the first error here, and `polo::cuda_check(be)` throws it later. When
  /// null, such errors are thrown by the call itself, after one stream synchronization.
  status* deferred_errors = nullptr;
  /// Device memory for the statistics of an entry that returns them, or null (the default).
  /// Set together with `deferred_errors`, such entries (group_advantages, masked_moments,
  /// whiten, value_loss) never synchronize: the statistics they would return are written here
  /// by the stream, as that entry's return type (group_stats, moments, whiten_stats,
  /// value_loss_stats; 8-byte aligned), and the call returns a default-constructed value.
  /// On a data error nothing is written here or to the outputs and the error waits in
  /// `deferred_errors`. See docs/cuda.md, "Statistics without a host synchronization".
  void* result = nullptr;
  /// Chunk width of the scans (see scan_chunking): `adaptive` (the default, fastest) or
  /// `layout_invariant` (packed == padded bitwise for every batch); any other value makes the
  /// scans throw config_error (option 'scans') before anything is enqueued.
  scan_chunking scans = scan_chunking::adaptive;
};

/// A backend tag: names its memory space and itself.
template <class B>
concept Backend = requires {
  typename B::memory_space;
  { B::name } -> std::convertible_to<const char*>;
};

/// True when data living in `Space` may be handed to backend `B`.
template <class B, class Space>
inline constexpr bool accepts_space_v = std::is_same_v<typename B::memory_space, Space>;

namespace detail {
/// Primary template of the per-backend implementations: `backend_impl<Backend, Primitive>`,
/// where Primitive is a tag type declared next to the primitive's public entry (for example
/// `detail::advantages_tag`). Each backend specializes it per primitive in its own folder
/// (include/polo/cpu/, cuda/polo/); reaching this primary template means the backend's
/// header was not included.
template <class B, class Primitive>
struct backend_impl {
  static_assert(sizeof(B) == 0,
                "polo: no implementation for this backend is visible here. For polo::cpu include "
                "<polo/polo.hpp>; for polo::cuda include <polo/polo.cuh> from a .cu file.");
};
}  // namespace detail

}  // namespace polo
