// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
#pragma once
// The command line of the r1zero example: `r1zero grpo|ppo|compare [--flag value ...]`.
// Instantiated for each backend the binary was built with (polo::cpu; polo::cuda in the CUDA
// build) and dispatched on --backend.

#include <cstdio>
#include <exception>
#include <filesystem>
#include <string>

#include "trainer.hpp"

namespace r1zero {

inline void print_summary(const run_log& log, const options& o, double warmup_s) {
  std::printf("%s: base held-out pass@1 %.3f cons@%d %.3f -> final pass@1 %.3f cons@%d %.3f "
              "(warm-up %.1f s, RL %.1f s, %d steps)\n",
              log.algo.c_str(), log.base.pass1, o.eval_k, log.base.consk, log.final_eval.pass1, o.eval_k,
              log.final_eval.consk, warmup_s, log.rl_seconds, o.steps);
}

template <class B>
int run_command(const std::string& cmd, const options& o) {
  namespace fs = std::filesystem;
  fs::create_directories(o.out_dir);
  const problem_set held = held_out_set(o);
  double warmup_s = 0;
  const auto t0 = std::chrono::steady_clock::now();
  mlp_policy<real> base = base_policy<real>(o, held, &warmup_s);
  const eval_result be = evaluate(base, held, task_of(o), o.eval_k, derive_seed(o.seed, seed_eval), o.temperature);
  std::printf("base policy after %d warm-up steps (%.1f s): held-out pass@1 %.3f  cons@%d %.3f  format %.3f  "
              "(%d held-out problems, %d samples each)\n",
              o.warmup_steps, warmup_s, be.pass1, o.eval_k, be.consk, be.format, o.eval_prompts, o.eval_k);
  std::fflush(stdout);
  std::vector<run_log> logs;
  if (cmd == "grpo" || cmd == "compare") {
    mlp_policy<real> pol = base;
    logs.push_back(train_grpo<B>(pol, o, held));
  }
  if (cmd == "ppo" || cmd == "compare") {
    mlp_policy<real> pol = base;
    logs.push_back(train_ppo<B>(pol, o, held));
  }
  const double total_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  for (run_log& log : logs) {
    prepend_base(log, be);
    std::string stem = o.out_dir + "/" + (log.algo == "GRPO" ? "grpo" : "ppo");
    write_csv(stem + ".csv", log);
    plot::draw_panels(stem + ".png", "r1zero " + log.algo + ", seed " + std::to_string(o.seed) + ", " +
                                         std::to_string(o.digits) + "-digit addition",
                      panels_of({&log}));
    print_summary(log, o, warmup_s);
    std::printf("  wrote %s.csv and %s.png\n", stem.c_str(), stem.c_str());
  }
  if (logs.size() == 2) {
    const std::string path = o.out_dir + "/compare.png";
    plot::draw_panels(path, "GRPO vs PPO, same compute per step (x = RL step)", panels_of({&logs[0], &logs[1]}));
    std::printf("  wrote %s\n", path.c_str());
  }
  std::printf("total wall time %.1f s\n", total_s);
  return 0;
}

/// main() of the example, for the backends `Bs...` (the first is the default).
template <class... Bs>
int app_main(int argc, char** argv, const char* const* backend_names) {
  const char* usage =
      "usage: r1zero grpo|ppo|compare [--flag value ...]\n"
      "  grpo     warm up a base policy, then train it with GRPO; writes grpo.csv and grpo.png\n"
      "  ppo      the same base policy trained with PPO (critic, GAE, KL shaping); ppo.csv, ppo.png\n"
      "  compare  both from the same base policy on the same compute; also compare.png";
  try {
    std::string cmd = argc > 1 ? argv[1] : "--help";
    options o;
    if (cmd == "--help" || cmd == "-h" || cmd == "help") {
      char help[] = "--help";
      char* args[] = {argv[0], help};
      parse_flags(o, 2, args, 1, usage);
      return 0;
    }
    if (cmd != "grpo" && cmd != "ppo" && cmd != "compare") {
      std::fprintf(stderr, "unknown command '%s'\n%s\n", cmd.c_str(), usage);
      return 2;
    }
    if (!parse_flags(o, argc, argv, 2, usage)) return 0;
    int rc = -1, k = 0;
    ((o.backend == backend_names[k++] ? (rc = run_command<Bs>(cmd, o), true) : false) || ...);
    if (rc < 0) {
      std::fprintf(stderr, "--backend %s is not built into this binary (built:", o.backend.c_str());
      for (std::size_t i = 0; i < sizeof...(Bs); ++i) std::fprintf(stderr, " %s", backend_names[i]);
      std::fprintf(stderr, ")\n");
      return 2;
    }
    return rc;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "r1zero: %s\n", e.what());
    return 1;
  }
}

}  // namespace r1zero
