// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
// R1-Zero in miniature on the CPU: `r1zero grpo|ppo|compare --help`.
#include "app.hpp"

int main(int argc, char** argv) {
  static const char* const names[] = {"cpu"};
  return r1zero::app_main<polo::cpu>(argc, argv, names);
}
