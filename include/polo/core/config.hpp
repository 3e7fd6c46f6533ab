// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
#pragma once
/// \file
/// Version, the index type and the two macros polo uses: `POLO_HAS_CUDA` (detects nvcc)
/// and `POLO_HD` (marks the scalar math shared by the CPU backend, the CUDA kernels and
/// the test oracles). This is the only file under include/ that spells a CUDA keyword,
/// and only inside `#if defined(__CUDACC__)`; nothing under include/ includes a CUDA header.

#include <cstdint>

#define POLO_VERSION_MAJOR 0
#define POLO_VERSION_MINOR 1
#define POLO_VERSION_PATCH 0

#if defined(__CUDACC__)
#define POLO_HAS_CUDA 1
#define POLO_HD __host__ __device__
#define POLO_HD_INLINE __host__ __device__ __forceinline__
#else
#define POLO_HD
#define POLO_HD_INLINE inline
#endif

namespace polo {

/// Signed 64-bit index used for every extent, stride and count (8M-token batches
/// overflow 32-bit products such as B*T*V).
using index_t = std::int64_t;

}  // namespace polo
