// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
#include <cstdio>
#include <vector>

#include <polo/polo.hpp>

int main() {
  std::vector<float> scores = {1, 0, 0, 1}, adv(4);
  polo::group_advantages(polo::cpu{}, polo::view_of(scores), polo::contiguous_groups{4}, polo::view_of(adv));
  if (!(adv[0] > 0.8f && adv[1] < -0.8f)) return 1;
  std::puts("polo consumer ok");
  return 0;
}
