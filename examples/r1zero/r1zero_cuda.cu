// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
// R1-Zero in miniature with polo's RL math on the GPU (`--backend cuda`; `--backend cpu` runs the
// CPU backend from the same binary). The model stays on the CPU: log-probs, rewards and values
// are uploaded, and dL/dlogp and dL/dvalues downloaded, around each polo call.
#include <polo/polo.cuh>
#include <polo/advantages.cuh>
#include <polo/gae.cuh>
#include <polo/kl.cuh>
#include <polo/policy_loss.cuh>
#include <polo/value_loss.cuh>
#include <polo/whiten.cuh>

#include "cuda_mirror.cuh"
#include "app.hpp"

int main(int argc, char** argv) {
  static const char* const names[] = {"cpu", "cuda"};
  return r1zero::app_main<polo::cpu, polo::cuda>(argc, argv, names);
}
