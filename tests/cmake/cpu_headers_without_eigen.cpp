// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
// Compiled with only include/ on the path (no Eigen): the CPU headers that the CUDA twins of
// the tests include next to the CUDA backend, where Eigen is not on the include path, must not
// need it (ctest "layout:cpu_headers_without_eigen").
#include "polo/cpu/kl.hpp"
#include "polo/cpu/parallel.hpp"
#include "polo/cpu/policy_loss.hpp"
#include "polo/cpu/rows.hpp"

int main() { return 0; }
