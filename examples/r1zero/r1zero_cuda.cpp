// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
// R1-Zero in miniature with polo's RL math on the GPU (`--backend cuda`; `--backend cpu` runs the
// CPU backend from the same binary). The model stays on the CPU: log-probs, rewards and values
// are uploaded, and dL/dlogp and dL/dvalues downloaded, around each polo call.
//
// Compiled by the C++ compiler like r1zero.cpp, so the model runs the same vectorized Eigen code
// and `--backend cpu` writes the same CSV as `r1zero`. The polo::cuda calls are declared in
// rl_math_cuda.hpp and defined in rl_math_cuda.cu, the only file nvcc compiles.
#include "cuda_mirror.hpp"
#include "app.hpp"

int main(int argc, char** argv) {
  static const char* const names[] = {"cpu", "cuda"};
  return r1zero::app_main<polo::cpu, polo::cuda>(argc, argv, names);
}
