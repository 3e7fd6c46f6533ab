// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
//
// ktrace: the GPU timeline of any CUDA program, without Nsight Systems. Built as a shared
// library and loaded by the CUDA driver through CUDA_INJECTION64_PATH, it records every kernel,
// memset and memcpy with CUPTI's activity API and, at exit, writes the last KTRACE_LAST records
// (default 4000) as CSV to KTRACE_OUT (default stderr): start and end in ns from the first kept
// record, kind, stream, grid, block, registers and the demangled name.
//
//   g++ -std=c++17 -O2 -fPIC -shared bench/tools/ktrace.cpp -I$CUDA/include -L$CUDA/lib64 -lcupti -o libktrace.so
//   CUDA_INJECTION64_PATH=$PWD/libktrace.so KTRACE_OUT=trace.csv ./whiten_bench_cuda --benchmark_filter=...
//   python3 bench/tools/ktrace_summary.py trace.csv
//
// The gaps between kernels of one stream are what a kernel's own profile (Nsight Compute, which
// serializes and flushes) does not show: launch latency, programmatic-dependent overlap, the
// tail of one kernel under the head of the next.
#include <cupti.h>
#include <cxxabi.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <mutex>
#include <string>

namespace {

struct record {
  std::uint64_t start, end;
  const char* kind;
  std::uint32_t stream;
  std::uint32_t grid, block, regs;
  std::string name;
};

std::mutex g_mu;
std::deque<record> g_records;
std::size_t g_keep = 4000;

std::string demangle(const char* s) {
  if (s == nullptr) return "?";
  int st = 0;
  char* d = abi::__cxa_demangle(s, nullptr, nullptr, &st);
  std::string r = st == 0 && d != nullptr ? d : s;
  std::free(d);
  return r;
}

void keep(record&& r) {
  std::lock_guard<std::mutex> lk(g_mu);
  g_records.push_back(std::move(r));
  if (g_records.size() > g_keep) g_records.pop_front();
}

void CUPTIAPI buffer_requested(uint8_t** buf, size_t* size, size_t* max_records) {
  *size = 8u << 20;
  *buf = static_cast<uint8_t*>(std::aligned_alloc(8, *size));
  *max_records = 0;
}

void CUPTIAPI buffer_completed(CUcontext, uint32_t, uint8_t* buf, size_t, size_t valid) {
  CUpti_Activity* a = nullptr;
  while (cuptiActivityGetNextRecord(buf, valid, &a) == CUPTI_SUCCESS) {
    if (a->kind == CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL || a->kind == CUPTI_ACTIVITY_KIND_KERNEL) {
      const auto* k = reinterpret_cast<const CUpti_ActivityKernel10*>(a);
      keep({k->start, k->end, "kernel", k->streamId, std::uint32_t(k->gridX) * k->gridY * k->gridZ,
            std::uint32_t(k->blockX * k->blockY * k->blockZ), k->registersPerThread, demangle(k->name)});
    } else if (a->kind == CUPTI_ACTIVITY_KIND_MEMSET) {
      const auto* m = reinterpret_cast<const CUpti_ActivityMemset4*>(a);
      keep({m->start, m->end, "memset", m->streamId, 0, 0, 0, std::to_string(m->bytes) + " bytes"});
    } else if (a->kind == CUPTI_ACTIVITY_KIND_MEMCPY) {
      const auto* m = reinterpret_cast<const CUpti_ActivityMemcpy6*>(a);
      keep({m->start, m->end, "memcpy", m->streamId, 0, 0, 0, std::to_string(m->bytes) + " bytes"});
    }
  }
  std::free(buf);
}

void write_out() {
  cuptiActivityFlushAll(1);
  std::lock_guard<std::mutex> lk(g_mu);
  const char* path = std::getenv("KTRACE_OUT");
  std::FILE* f = path != nullptr ? std::fopen(path, "w") : stderr;
  if (f == nullptr) return;
  const std::uint64_t t0 = g_records.empty() ? 0 : g_records.front().start;
  std::fprintf(f, "start_ns,end_ns,kind,stream,grid,block,regs,name\n");
  for (const record& r : g_records) {
    std::string n = r.name;
    for (char& c : n)
      if (c == ',') c = ';';
    std::fprintf(f, "%llu,%llu,%s,%u,%u,%u,%u,%s\n", (unsigned long long)(r.start - t0),
                 (unsigned long long)(r.end - t0), r.kind, r.stream, r.grid, r.block, r.regs, n.c_str());
  }
  if (f != stderr) std::fclose(f);
}

}  // namespace

extern "C" int InitializeInjection() {
  if (const char* k = std::getenv("KTRACE_LAST")) g_keep = std::strtoull(k, nullptr, 10);
  cuptiActivityRegisterCallbacks(buffer_requested, buffer_completed);
  cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL);
  cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMSET);
  cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMCPY);
  std::atexit(write_out);
  return 1;
}
