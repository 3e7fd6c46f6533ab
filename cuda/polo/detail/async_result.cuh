// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
#pragma once
/// \file
/// Statistics without a host synchronization: the one way every CUDA entry that returns host
/// statistics (group_advantages, masked_moments, whiten, value_loss; policy_loss may adopt it)
/// hands them back (docs/cuda.md, "Statistics without a host synchronization").
///
/// The entry's last statistics kernel (one thread) builds the value it returns, of type S (the
/// public statistics struct), and the first data error as a `polo::cuda::status`, and writes
/// both into a `result_slot<S>` in scratch (`publish`). The write kernels that follow read the
/// slot's error on the device and write nothing when it is set. Then:
/// - synchronous mode (`be.result` null, the default): the host reads the slot back with one
///   stream synchronization and throws the error or returns the value (`finish`), as before;
/// - asynchronous mode (`be.result` and `be.deferred_errors` set): `publish` also writes the
///   value to `be.result` (only when there is no error) and records the error in
///   `be.deferred_errors`; the call never synchronizes and returns `S{}`. The caller reads
///   `*result` once the stream has reached it (a copy on the same stream, or an event), and
///   `polo::cuda_check(be)` throws the error the call would have thrown.

#include <cuda_runtime.h>

#include <cstdint>

#include "polo/core/backend.hpp"
#include "polo/core/error.hpp"
#include "polo/detail/launch.cuh"
#include "polo/detail/status.cuh"
#include "polo/detail/workspace.cuh"

namespace polo::detail {

/// Scratch slot of a statistics-returning entry: its first data error and the value it returns.
template <class S>
struct result_slot {
  cuda::status error{};  ///< code 0: none
  S value{};
};

/// Where `publish` writes: the slot in scratch, and in asynchronous mode the caller's result
/// and deferred status. Plain data, passed to the kernel by value.
template <class S>
struct result_target {
  result_slot<S>* slot = nullptr;
  S* result = nullptr;               ///< be.result, or null (synchronous)
  cuda::status* deferred = nullptr;  ///< be.deferred_errors in asynchronous mode, else null
  [[nodiscard]] POLO_HD_INLINE const cuda::status* gate() const { return &slot->error; }
};

/// True when the entry runs asynchronously (`be.result` set). Throws config_error when
/// `be.result` is set without `be.deferred_errors` (the call could not report a data error)
/// or is not 8-byte aligned. Host.
inline bool async_result_mode(const cuda& be, const char* fn) {
  if (be.result == nullptr) return false;
  if (be.deferred_errors == nullptr)
    throw_config(fn, "cuda::result", "set with deferred_errors null",
                 "deferred_errors set too (an asynchronous call reports data errors there)");
  if (reinterpret_cast<std::uintptr_t>(be.result) % 8 != 0)
    throw_config(fn, "cuda::result", "not 8-byte aligned", "device memory aligned to 8 bytes");
  return true;
}

/// The target for a slot taken from scratch, under the tag's mode.
template <class S>
result_target<S> make_result_target(const cuda& be, result_slot<S>* slot, bool async) {
  result_target<S> t;
  t.slot = slot;
  if (async) {
    t.result = static_cast<S*>(be.result);
    t.deferred = be.deferred_errors;
  }
  return t;
}

/// Synchronous mode: one synchronization, then throws the slot's error or returns its value.
/// Asynchronous mode: returns S{} at once.
template <class S>
S finish(const cuda& be, const result_target<S>& t) {
  if (t.result != nullptr) return S{};
  result_slot<S> h;
  read_back(be, &h, t.slot, sizeof h);
  throw_status(h.error);
  return h.value;
}

/// Synchronous mode only: reads the slot's error back (one synchronization) and throws it.
template <class S>
void throw_if_error(const cuda& be, const result_target<S>& t) {
  if (t.result != nullptr) return;
  cuda::status s;
  read_back(be, &s, &t.slot->error, sizeof s);
  throw_status(s);
}

#if defined(__CUDACC__)
/// Device, one thread: stores the error and the value in the slot; in asynchronous mode also
/// the value into the caller's result (no error only) and the error into the deferred status.
template <class S>
__device__ void publish(const result_target<S>& t, const cuda::status& err, const S& value) {
  t.slot->error = err;
  t.slot->value = value;
  if (t.result != nullptr && err.code == status_ok) *t.result = value;
  record_status(t.deferred, err);
}
#endif

}  // namespace polo::detail
