// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
// Calling the CUDA backend from a TU that did not include its implementation names the header.
// expect: include <polo/polo.cuh> from a .cu file
#include "polo/advantages.hpp"

int main() {
  float* d = nullptr;
  polo::group_advantages(polo::cuda{}, polo::device_view_of(d, 8), polo::contiguous_groups{4}, polo::device_view_of(d, 8));
}
