// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
// Host memory handed to the CUDA backend must not compile.
// expect: memory space the chosen backend cannot read
#include <vector>
#include "polo/advantages.hpp"

int main() {
  std::vector<float> s(8), a(8);
  polo::group_advantages(polo::cuda{}, polo::view_of(s), polo::contiguous_groups{4}, polo::view_of(a));
}
