// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
#pragma once
/// \file
/// Rows of a CPU call spread over threads (`polo::cpu::threads`), without changing a bit of
/// the result. A primitive that uses this computes each row on its own (its outputs, and its
/// partial statistics into a per-row slot) in parallel, then folds the per-row slots on the
/// calling thread in row order, with the same operations in the same order as a
/// single-threaded loop would. The result is therefore bitwise the same for every thread
/// count, and equal to the single-threaded one; which thread computes which row does not
/// matter.
///
/// Threads are started for the call and joined before it returns (no pool lives between
/// calls); a batch with fewer than `cpu_tokens_per_thread` tokens per extra thread uses fewer
/// threads, down to the calling thread alone.

#include <algorithm>
#include <atomic>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include "polo/core/backend.hpp"
#include "polo/core/config.hpp"

namespace polo::detail {

/// Tokens each thread of a call must have, at least, before the call starts another thread:
/// starting and joining one costs tens of microseconds, a few thousand tokens' work.
inline constexpr double cpu_tokens_per_thread = 65536.0;

/// Threads a call on `be` uses for `rows` rows and `tokens` tokens of work: `be.threads`
/// (0 = std::thread::hardware_concurrency()), at most one per row and one per
/// `cpu_tokens_per_thread` tokens, and at least 1.
inline int cpu_workers(const cpu& be, index_t rows, double tokens) {
  long long t = be.threads;
  if (t <= 0) t = std::max(1u, std::thread::hardware_concurrency());
  t = std::min<long long>(t, rows);
  t = std::min<long long>(t, static_cast<long long>(tokens / cpu_tokens_per_thread));
  return static_cast<int>(std::max<long long>(t, 1));
}

/// Positions of a layout (valid or not): the work a call's passes touch.
template <class L>
double cpu_layout_positions(const L& layout) {
  double n = 0.0;
  for (index_t i = 0; i < layout.num_seqs(); ++i) n += double(layout.row_len(i));
  return n;
}

/// Calls `body(i, w)` once for every row i in [0, n), on `workers` threads: the calling thread
/// (w = 0) and `workers - 1` started ones (w = 1, 2, ...; a thread that cannot be started is
/// left out and its share done by the others). Rows go out in blocks of consecutive indices
/// from a shared counter. `w` indexes per-thread scratch. If bodies throw, the exception of
/// the lowest row that threw comes out: on one thread the first one ends the loop; on
/// several, every row still runs and it is rethrown once all threads are joined.
template <class F>
void cpu_parallel_rows(int workers, index_t n, F&& body) {
  if (workers <= 1 || n <= 1) {
    for (index_t i = 0; i < n; ++i) body(i, 0);
    return;
  }
  const index_t block = std::max<index_t>(1, n / (index_t(workers) * 8));
  std::atomic<index_t> next{0};
  std::mutex mu;
  std::exception_ptr err;
  index_t err_row = n;
  auto run = [&](int w) {
    for (;;) {
      const index_t b0 = next.fetch_add(block, std::memory_order_relaxed);
      if (b0 >= n) return;
      const index_t b1 = std::min(n, b0 + block);
      for (index_t i = b0; i < b1; ++i) {
        try {
          body(i, w);
        } catch (...) {
          std::lock_guard<std::mutex> lock(mu);
          if (i < err_row) {
            err_row = i;
            err = std::current_exception();
          }
        }
      }
    }
  };
  std::vector<std::thread> pool;
  pool.reserve(static_cast<std::size_t>(workers - 1));
  for (int w = 1; w < workers; ++w) {
    try {
      pool.emplace_back(run, w);
    } catch (...) {  // no more threads: the started ones and this one share the rows
      break;
    }
  }
  run(0);
  for (auto& t : pool) t.join();
  if (err) std::rethrow_exception(err);
}

/// The check pass of a CPU primitive, spread over threads with the single-threaded outcome:
/// `bad(i)` (may row i hold an error?) is evaluated for every row on `workers` threads, then
/// `check(i)`, which finds the row's first error and throws it (or records it), runs on the
/// calling thread for the flagged rows in row order. The first error in row order is thrown,
/// as by a loop that runs `check` on every row.
template <class Screen, class Check>
void cpu_screen_rows(int workers, index_t n, Screen&& bad, Check&& check) {
  std::vector<unsigned char> flag(static_cast<std::size_t>(n), 0);
  cpu_parallel_rows(workers, n, [&](index_t i, int) { flag[static_cast<std::size_t>(i)] = bad(i) ? 1 : 0; });
  for (index_t i = 0; i < n; ++i)
    if (flag[static_cast<std::size_t>(i)]) check(i);
}

}  // namespace polo::detail
