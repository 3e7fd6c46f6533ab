// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
// Group-normalized advantages on a small GRPO batch: 2 prompts x G = 4 answers, scored by a
// rule (1 = correct, 0 = wrong), broadcast onto a padded [B,T] batch with left padding and a
// masked tool span, under polo's default and under each peer's preset.
#include <cstdio>
#include <utility>
#include <vector>

#include <polo/polo.hpp>

int main() {
  const polo::index_t B = 8, T = 6, G = 4;
  // Prompt 0: two of four answers correct. Prompt 1: all four correct (no signal).
  std::vector<float> scores = {1, 0, 0, 1, 1, 1, 1, 1};
  std::vector<std::uint8_t> mask = {
      1, 1, 1, 1, 0, 0,  //
      0, 0, 1, 1, 1, 1,  // left padding
      1, 1, 0, 0, 1, 1,  // an interior masked span (tool output)
      1, 0, 0, 0, 0, 0,  //
      1, 1, 1, 1, 1, 1,  //
      1, 1, 1, 0, 0, 0,  //
      0, 0, 0, 0, 0, 0,  // an empty row
      1, 1, 0, 0, 0, 0};
  std::vector<float> adv(B), tok(B * T, -1.0f);

  polo::padded<> layout(polo::matrix_view_of(std::as_const(mask), B, T));
  polo::group_stats st = polo::group_advantages(polo::cpu{}, polo::view_of(scores), polo::contiguous_groups{G},
                                                layout, polo::view_of(adv), polo::matrix_view_of(tok, B, T));
  std::printf("polo default (GRPO, sample std, eps 1e-6 on std, constant groups -> 0)\n");
  for (polo::index_t i = 0; i < B; ++i) {
    std::printf("  seq %lld  score %.1f  A % .6f  tokens:", static_cast<long long>(i), scores[i], adv[i]);
    for (polo::index_t t = 0; t < T; ++t) std::printf(" % .3f", tok[i * T + t]);
    std::printf("\n");
  }
  std::printf("  groups %lld, zero-std fraction %.2f, mean score %.3f, mean group std %.4f\n",
              static_cast<long long>(st.groups), st.frac_zero_std(), st.mean_score(), st.mean_group_std());

  struct named {
    const char* name;
    polo::advantage_config cfg;
  };
  const named presets[] = {{"verl grpo", polo::presets::verl::grpo},
                           {"TRL grpo", polo::presets::trl::grpo},
                           {"OpenRLHF group_norm", polo::presets::openrlhf::group_norm},
                           {"OpenRLHF rloo", polo::presets::openrlhf::rloo},
                           {"NeMo-RL grpo", polo::presets::nemo::grpo},
                           {"Dr. GRPO (TRL none)", polo::presets::trl::grpo_no_scale}};
  std::printf("\nper-sequence advantages of prompt 0 under each preset\n");
  for (const auto& p : presets) {
    polo::group_advantages(polo::cpu{}, polo::view_of(scores), polo::contiguous_groups{G}, polo::view_of(adv), p.cfg);
    std::printf("  %-22s % .6f % .6f % .6f % .6f\n", p.name, adv[0], adv[1], adv[2], adv[3]);
  }
  return 0;
}
