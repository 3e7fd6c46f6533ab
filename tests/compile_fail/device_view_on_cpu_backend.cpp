// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
// Device memory handed to the CPU backend must not compile.
// expect: memory space the chosen backend cannot read
#include "polo/polo.hpp"

int main() {
  float* d = nullptr;
  polo::group_advantages(polo::cpu{}, polo::device_view_of(d, 8), polo::contiguous_groups{4}, polo::device_view_of(d, 8));
}
