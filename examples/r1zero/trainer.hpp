// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
#pragma once
// R1-Zero in miniature: a short supervised warm-up gives a base policy, then GRPO
// (group advantages, clipped objective, KL to a reference refreshed every N steps) or PPO
// (critic, per-token KL shaping, GAE, whitening, clipped value loss) trains it on the
// rule-rewarded addition task of task.hpp.
//
// The model code (model.hpp) runs on the CPU; the RL math runs through polo on the backend `B`
// the trainer is instantiated with. Three pieces are backend-specific:
//   - rl_math<B, Scalar> (rl_math.hpp): the polo calls themselves. The trainers never call
//     polo's entry points directly, so this file compiles without polo's CUDA headers: for
//     polo::cuda those calls are defined in a .cu file (rl_math.hpp says why);
//   - mirror<B, T>: a host buffer and a view of it in B's memory space (the same memory for
//     polo::cpu; a device copy, see cuda_mirror.hpp, for polo::cuda), uploaded before a
//     primitive reads it and downloaded after it writes;
//   - workspace<B>: the calls' scratch memory, allocated once per run (none for polo::cpu).

#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <map>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <polo/policy.hpp>

#include "model.hpp"
#include "plot.hpp"
#include "rl_math.hpp"
#include "task.hpp"

namespace r1zero {

using real = float;

// ---------------------------------------------------------------------------------------------
// Options: every knob of the trainers, with its command-line flag
// ---------------------------------------------------------------------------------------------

struct options {
  // run
  std::uint64_t seed = 1;
  std::string out_dir = "r1zero_out";
  std::string backend = "cpu";
  bool quiet = false;
  // task
  int digits = 3;
  int max_completion = 8;
  double format_weight = 0.1;
  // model
  int context = 16;
  int embed = 8;
  std::string hidden = "256";
  // warm-up (supervised maximum likelihood on task completions)
  int warmup_steps = 1000;
  int warmup_batch = 64;
  double warmup_lr = 3e-3;
  double digit_noise = 0.0;
  double format_noise = 0.0;
  // RL, both algorithms
  int steps = 2500;
  int prompts = 16;      // N prompts per step (GRPO); PPO samples N*G prompts once each
  int group = 16;        // G
  int epochs = 2;        // policy updates per rollout batch
  double lr = 1e-3;
  double temperature = 1.0;
  double eps_low = 0.2, eps_high = 0.2;
  double max_grad_norm = 1.0;
  // GRPO
  double kl_coef = 0.01;  // beta of the k3 KL term in the loss
  int ref_refresh = 50;   // steps between reference refreshes; 0 = never
  // PPO
  double ppo_kl_coef = 0.01;  // beta of the per-token k1 reward shaping
  double gamma = 1.0, lambda = 0.95;
  double critic_lr = 3e-3;
  double vf_clip = 0.2;
  // evaluation
  int eval_prompts = 500;
  int eval_k = 8;
  int eval_every = 100;
};

struct flag {
  std::string name, help;
  std::function<void(const std::string&)> set;
  std::function<std::string()> get;
};

inline std::vector<flag> flags_of(options& o) {
  std::vector<flag> f;
  auto num = [&](const char* n, auto* p, const char* h) {
    f.push_back({n, h,
                 [p, n](const std::string& s) {
                   std::size_t used = 0;
                   double v = 0;
                   try {
                     v = std::stod(s, &used);
                   } catch (...) {
                     used = 0;
                   }
                   if (used != s.size() || s.empty())
                     throw std::invalid_argument(std::string("--") + n + ": expected a number, got '" + s + "'");
                   *p = static_cast<std::remove_pointer_t<decltype(p)>>(v);
                 },
                 [p] {
                   char b[64];
                   std::snprintf(b, sizeof b, "%g", double(*p));
                   return std::string(b);
                 }});
  };
  auto str = [&](const char* n, std::string* p, const char* h) {
    f.push_back({n, h, [p](const std::string& s) { *p = s; }, [p] { return *p; }});
  };
  num("seed", &o.seed, "random seed: model init, data, sampling (same seed -> same curves)");
  str("out", &o.out_dir, "directory for the CSV and PNG files");
  str("backend", &o.backend, "backend of polo's RL math: cpu (or cuda in the CUDA build)");
  num("quiet", &o.quiet, "1 = no per-step log lines");
  num("digits", &o.digits, "digits of each operand (answers have digits or digits+1 digits)");
  num("max-completion", &o.max_completion, "longest completion sampled, tags included");
  num("format-weight", &o.format_weight, "reward of a well-formatted answer (accuracy adds 1)");
  num("context", &o.context, "tokens in the model's context window");
  num("embed", &o.embed, "token embedding width");
  str("hidden", &o.hidden, "hidden layer widths, comma-separated (e.g. 256 or 256,128)");
  num("warmup-steps", &o.warmup_steps, "supervised warm-up steps (maximum likelihood on task completions)");
  num("warmup-batch", &o.warmup_batch, "problems per warm-up step");
  num("warmup-lr", &o.warmup_lr, "Adam learning rate of the warm-up");
  num("digit-noise", &o.digit_noise, "corpus: probability that an answer digit is replaced by a random digit");
  num("format-noise", &o.format_noise, "corpus: probability that a completion's format is broken");
  num("steps", &o.steps, "RL steps");
  num("prompts", &o.prompts, "prompts per GRPO step (PPO samples prompts*group prompts once each)");
  num("group", &o.group, "G: completions per prompt (GRPO)");
  num("epochs", &o.epochs, "policy updates per rollout batch");
  num("lr", &o.lr, "Adam learning rate of the policy during RL");
  num("temperature", &o.temperature, "sampling temperature (training and evaluation)");
  num("eps-low", &o.eps_low, "lower clip: ratio >= 1 - eps_low");
  num("eps-high", &o.eps_high, "upper clip: ratio <= 1 + eps_high");
  num("max-grad-norm", &o.max_grad_norm, "clip the global gradient norm (0 = off)");
  num("kl-coef", &o.kl_coef, "GRPO: beta of the k3 KL-to-reference term of the loss");
  num("ref-refresh", &o.ref_refresh, "GRPO: steps between reference-model refreshes (0 = never)");
  num("ppo-kl-coef", &o.ppo_kl_coef, "PPO: beta of the per-token k1 KL reward shaping");
  num("gamma", &o.gamma, "PPO: discount of GAE");
  num("lambda", &o.lambda, "PPO: lambda of GAE");
  num("critic-lr", &o.critic_lr, "PPO: Adam learning rate of the critic");
  num("vf-clip", &o.vf_clip, "PPO: value clip range");
  num("eval-prompts", &o.eval_prompts, "held-out problems (never trained on)");
  num("eval-k", &o.eval_k, "samples per held-out problem: pass@1 is their mean, cons@k their majority");
  num("eval-every", &o.eval_every, "steps between held-out evaluations");
  return f;
}

/// Parses `--name value` / `--name=value` into `o`; returns false (after printing usage) on
/// --help. Throws std::invalid_argument on an unknown flag or a bad value.
inline bool parse_flags(options& o, int argc, char** argv, int first, const char* usage_head) {
  std::vector<flag> fs = flags_of(o);
  for (int i = first; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      std::printf("%s\n\nflags (default in brackets):\n", usage_head);
      for (const flag& f : fs) std::printf("  --%-16s %s [%s]\n", f.name.c_str(), f.help.c_str(), f.get().c_str());
      return false;
    }
    if (a.rfind("--", 0) != 0) throw std::invalid_argument("unexpected argument '" + a + "' (try --help)");
    std::string name = a.substr(2), value;
    const std::size_t eq = name.find('=');
    if (eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    } else {
      if (i + 1 >= argc) throw std::invalid_argument("--" + name + " needs a value");
      value = argv[++i];
    }
    auto it = std::find_if(fs.begin(), fs.end(), [&](const flag& f) { return f.name == name; });
    if (it == fs.end()) throw std::invalid_argument("unknown flag --" + name + " (try --help)");
    it->set(value);
  }
  if (o.digits < 1 || o.digits > 8) throw std::invalid_argument("--digits must be in [1, 8]");
  if (o.max_completion < o.digits + 3) throw std::invalid_argument("--max-completion must be >= digits + 3");
  if (o.group < 2) throw std::invalid_argument("--group must be >= 2 (group advantages need a group)");
  if (o.prompts < 1 || o.steps < 0 || o.epochs < 1 || o.eval_k < 1 || o.eval_prompts < 1 || o.eval_every < 1)
    throw std::invalid_argument("--prompts, --epochs, --eval-k, --eval-prompts, --eval-every must be >= 1");
  return true;
}

inline std::vector<int> parse_widths(const std::string& s) {
  std::vector<int> w;
  std::size_t pos = 0;
  while (pos <= s.size()) {
    std::size_t c = s.find(',', pos);
    std::string part = s.substr(pos, c == std::string::npos ? std::string::npos : c - pos);
    if (!part.empty()) w.push_back(std::stoi(part));
    if (c == std::string::npos) break;
    pos = c + 1;
  }
  if (w.empty()) throw std::invalid_argument("--hidden: expected widths such as 256 or 256,128");
  return w;
}

inline task_config task_of(const options& o) {
  task_config t;
  t.digits = o.digits;
  t.max_completion = o.max_completion;
  t.format_weight = o.format_weight;
  return t;
}

inline policy_config policy_config_of(const options& o) {
  policy_config c;
  c.shape.vocab = tok::vocab;
  c.shape.outputs = tok::vocab;
  c.shape.context = o.context;
  c.shape.embed = o.embed;
  c.shape.hidden = parse_widths(o.hidden);
  c.pad = tok::pad;
  c.stop = tok::close;
  return c;
}

/// Seeds derived from the run seed, one stream per purpose.
inline std::uint64_t derive_seed(std::uint64_t seed, std::uint64_t purpose, std::uint64_t k = 0) {
  return splitmix64(splitmix64(seed * 0x100000001B3ULL + purpose) ^ (k * 0x9E3779B97F4A7C15ULL));
}
enum : std::uint64_t {
  seed_init = 1,
  seed_critic = 2,
  seed_corpus = 3,
  seed_heldout = 4,
  seed_train = 5,
  seed_sample = 6,
  seed_eval = 7
};

inline double peak_rss_mb() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return double(u.ru_maxrss) / 1024.0;  // ru_maxrss is in KiB on Linux
}

// ---------------------------------------------------------------------------------------------
// Host <-> backend buffers
// ---------------------------------------------------------------------------------------------

/// A host buffer of `rows x cols` and its view in backend B's memory space.
template <class B, class T>
class mirror;

/// On the CPU the view is the host buffer itself: upload and download do nothing.
template <class T>
class mirror<polo::cpu, T> {
 public:
  void resize(index_t rows, index_t cols) {
    rows_ = rows;
    cols_ = cols;
    host_.assign(std::size_t(rows * cols), T{});
  }
  std::vector<T>& host() { return host_; }
  polo::view<T, 2> view2() { return {host_.data(), rows_, cols_, cols_}; }
  polo::view<const T, 2> cview2() { return {host_.data(), rows_, cols_, cols_}; }
  polo::view<T, 1> view1() { return {host_.data(), rows_ * cols_, 1}; }
  void upload() {}
  void download() {}

 private:
  std::vector<T> host_;
  index_t rows_ = 0, cols_ = 0;
};

/// Scratch memory of backend B's polo calls, allocated once per run: `attach(be)` returns the
/// backend tag that uses it.
template <class B>
class workspace;

/// The CPU backend needs no scratch.
template <>
class workspace<polo::cpu> {
 public:
  explicit workspace(std::size_t) {}
  polo::cpu attach(polo::cpu be) const { return be; }
};

// ---------------------------------------------------------------------------------------------
// Rollouts and evaluation
// ---------------------------------------------------------------------------------------------

/// Completions of N*G rows and what the rules say about each.
struct rollout {
  index_t rows = 0, T = 0, P = 0;
  std::vector<problem> problems;   // one per row
  std::vector<token_t> prompts;    // [rows, P]
  std::vector<token_t> completions;  // [rows, T]
  std::vector<std::uint8_t> mask;  // [rows, T]
  std::vector<verdict> verdicts;   // one per row
  [[nodiscard]] polo::token_batch<> batch() const {
    return {polo::view<const token_t, 2>{prompts.data(), rows, P, P},
            {},
            polo::view<const token_t, 2>{completions.data(), rows, T, T},
            polo::view<const std::uint8_t, 2>{mask.data(), rows, T, T}};
  }
};

/// Samples G completions for each problem and judges them.
template <class Scalar>
rollout sample(mlp_policy<Scalar>& pol, const std::vector<problem>& ps, int G, const task_config& task,
               std::uint64_t seed, double temperature) {
  rollout r;
  const index_t N = index_t(ps.size());
  r.rows = N * G;
  r.T = task.max_completion;
  r.P = prompt_len(task);
  std::vector<token_t> pm = prompt_matrix(ps, task.digits);
  r.completions.assign(std::size_t(r.rows * r.T), 0);
  r.mask.assign(std::size_t(r.rows * r.T), 0);
  polo::prompt_batch<> pb{polo::view<const token_t, 2>{pm.data(), N, r.P, r.P}, {}};
  polo::generate(pol, pb, polo::sampling_params{.group_size = G, .seed = seed, .temperature = temperature},
                 polo::view<token_t, 2>{r.completions.data(), r.rows, r.T, r.T},
                 polo::view<std::uint8_t, 2>{r.mask.data(), r.rows, r.T, r.T});
  r.prompts.resize(std::size_t(r.rows * r.P));
  r.problems.resize(std::size_t(r.rows));
  r.verdicts.resize(std::size_t(r.rows));
  for (index_t i = 0; i < r.rows; ++i) {
    r.problems[i] = ps[std::size_t(i / G)];
    std::copy_n(pm.begin() + (i / G) * r.P, r.P, r.prompts.begin() + i * r.P);
    int len = 0;
    while (len < r.T && r.mask[std::size_t(i * r.T + len)]) ++len;
    r.verdicts[i] = judge(r.problems[i], r.completions.data() + i * r.T, len, task);
  }
  return r;
}

struct eval_result {
  double pass1 = 0;   ///< mean accuracy over k samples per problem
  double consk = 0;   ///< fraction of problems whose majority answer is right
  double format = 0;  ///< fraction of samples well formatted
};

/// Held-out evaluation: k samples per problem at the sampling temperature.
template <class Scalar>
eval_result evaluate(mlp_policy<Scalar>& pol, const problem_set& held, const task_config& task, int k,
                     std::uint64_t seed, double temperature) {
  eval_result e;
  const std::size_t chunk = 256;
  std::size_t samples = 0;
  for (std::size_t s = 0; s < held.items.size(); s += chunk) {
    std::vector<problem> ps(held.items.begin() + std::ptrdiff_t(s),
                            held.items.begin() + std::ptrdiff_t(std::min(held.items.size(), s + chunk)));
    rollout r = sample(pol, ps, k, task, derive_seed(seed, s), temperature);
    for (std::size_t n = 0; n < ps.size(); ++n) {
      std::vector<verdict> vs(r.verdicts.begin() + std::ptrdiff_t(n * k), r.verdicts.begin() + std::ptrdiff_t((n + 1) * k));
      for (const verdict& v : vs) {
        e.pass1 += v.correct;
        e.format += v.formatted;
        ++samples;
      }
      e.consk += majority_answer(vs) == ps[n].sum();
    }
  }
  e.pass1 /= double(samples);
  e.format /= double(samples);
  e.consk /= double(held.items.size());
  return e;
}

// ---------------------------------------------------------------------------------------------
// Supervised warm-up: the base policy
// ---------------------------------------------------------------------------------------------

/// Maximum-likelihood training on task completions (canonical ones, or the noisy corpus when
/// --digit-noise / --format-noise are set), through the same Policy interface the RL phase
/// uses: dL/dlogp = -1/N_tok at every valid token, with a cosine learning-rate decay.
template <class Scalar>
void warmup(mlp_policy<Scalar>& pol, const options& o, const problem_set& held, const task_config& task) {
  if (o.warmup_steps <= 0) return;
  adam<Scalar> opt(pol.net().num_params(), adam_config{.lr = o.warmup_lr, .max_grad_norm = o.max_grad_norm});
  problem_stream stream(derive_seed(o.seed, seed_corpus), o.digits, &held);
  rng noise(derive_seed(o.seed, seed_corpus, 1));
  const index_t B = o.warmup_batch, T = task.max_completion, P = prompt_len(task);
  std::vector<token_t> prompts(std::size_t(B * P)), comp(std::size_t(B * T));
  std::vector<std::uint8_t> mask(std::size_t(B * T));
  std::vector<Scalar> logp(std::size_t(B * T)), g(std::size_t(B * T));
  for (int s = 0; s < o.warmup_steps; ++s) {
    // Cosine decay of the learning rate over the warm-up.
    opt.config().lr = o.warmup_lr * 0.5 * (1.0 + std::cos(3.141592653589793 * s / o.warmup_steps));
    index_t ntok = 0;
    for (index_t i = 0; i < B; ++i) {
      problem p = stream.next();
      write_prompt(p, o.digits, prompts.data() + i * P);
      std::vector<token_t> c = corpus_completion(p, noise, o.digit_noise, o.format_noise);
      for (index_t t = 0; t < T; ++t) {
        const bool valid = t < index_t(c.size());
        comp[std::size_t(i * T + t)] = valid ? c[std::size_t(t)] : tok::pad;
        mask[std::size_t(i * T + t)] = valid;
        ntok += valid;
      }
    }
    polo::token_batch<> b{polo::view<const token_t, 2>{prompts.data(), B, P, P},
                          {},
                          polo::view<const token_t, 2>{comp.data(), B, T, T},
                          polo::view<const std::uint8_t, 2>{mask.data(), B, T, T}};
    polo::token_logprobs(pol, b, polo::view<Scalar, 2>{logp.data(), B, T, T});
    for (std::size_t k = 0; k < g.size(); ++k) g[k] = mask[k] ? Scalar(-1.0 / double(ntok)) : Scalar(0);
    pol.net().zero_grad();
    polo::policy_backward(pol, b, polo::view<Scalar, 2>{g.data(), B, T, T});
    opt.step(pol.net().params(), pol.net().grads());
  }
}

// ---------------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------------

struct step_row {
  int step = 0;
  double reward = 0, accuracy = 0, format = 0, length = 0, kl = 0, clip = 0, entropy = 0, loss = 0;
  double value_loss = NAN;
  double ms = 0, peak_mb = 0;
  double eval_pass1 = NAN, eval_consk = NAN;
};

struct run_log {
  std::string algo;
  eval_result base{};
  eval_result final_eval{};
  double warmup_seconds = 0, rl_seconds = 0;
  std::vector<step_row> rows;
};

inline std::string csv_num(double v) {
  if (std::isnan(v)) return "";
  char b[40];
  std::snprintf(b, sizeof b, "%.6g", v);
  return b;
}

/// The per-step CSV. Every column but ms and peak_mb is a deterministic function of the seed.
inline void write_csv(const std::string& path, const run_log& log) {
  std::FILE* f = std::fopen(path.c_str(), "w");
  if (!f) throw std::runtime_error("cannot write " + path);
  std::fprintf(f, "step,reward,accuracy,format,response_length,kl,clip_fraction,entropy,loss,value_loss,"
                  "eval_pass1,eval_consk,ms,peak_mb\n");
  for (const step_row& r : log.rows) {
    const double v[] = {r.reward, r.accuracy, r.format, r.length, r.kl, r.clip, r.entropy, r.loss,
                        r.value_loss, r.eval_pass1, r.eval_consk, r.ms, r.peak_mb};
    std::fprintf(f, "%d", r.step);
    for (double x : v) std::fprintf(f, ",%s", csv_num(x).c_str());
    std::fprintf(f, "\n");
  }
  std::fclose(f);
}

inline std::vector<plot::panel> panels_of(const std::vector<const run_log*>& logs) {
  static const plot::rgb colors[] = {{31, 119, 180}, {214, 39, 40}, {44, 160, 44}, {148, 103, 189}};
  struct metric {
    const char* title;
    double step_row::*field;
  };
  const metric ms[] = {{"held-out pass@1", &step_row::eval_pass1}, {"held-out cons@k", &step_row::eval_consk},
                       {"train reward", &step_row::reward},        {"train accuracy", &step_row::accuracy},
                       {"response length (tokens)", &step_row::length}, {"KL to reference", &step_row::kl},
                       {"clip fraction", &step_row::clip},          {"entropy (nats/token)", &step_row::entropy},
                       {"ms per step", &step_row::ms}};
  std::vector<plot::panel> ps;
  for (const metric& m : ms) {
    plot::panel p{m.title, {}};
    for (std::size_t k = 0; k < logs.size(); ++k) {
      plot::series s{logs[k]->algo, colors[k % 4], {}, {}};
      for (const step_row& r : logs[k]->rows) {
        s.x.push_back(r.step);
        s.y.push_back(r.*(m.field));
      }
      p.curves.push_back(std::move(s));
    }
    ps.push_back(std::move(p));
  }
  return ps;
}

// ---------------------------------------------------------------------------------------------
// The trainers
// ---------------------------------------------------------------------------------------------

template <class Scalar>
struct models {
  mlp_policy<Scalar> policy, reference;
};

/// The base policy: initialized from the seed and warmed up; identical for GRPO and PPO.
template <class Scalar>
mlp_policy<Scalar> base_policy(const options& o, const problem_set& held, double* seconds = nullptr) {
  const auto t0 = std::chrono::steady_clock::now();
  mlp_policy<Scalar> pol(policy_config_of(o));
  pol.init(derive_seed(o.seed, seed_init));
  warmup(pol, o, held, task_of(o));
  if (seconds) *seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return pol;
}

inline problem_set held_out_set(const options& o) {
  return make_problem_set(derive_seed(o.seed, seed_heldout), o.eval_prompts, o.digits);
}

template <class Scalar>
void log_line(const options& o, const char* algo, const step_row& r) {
  if (o.quiet) return;
  std::printf("%s step %4d  reward %.3f  acc %.3f  len %.2f  kl %.4f  clip %.3f  ent %.3f  %6.1f ms", algo, r.step,
              r.reward, r.accuracy, r.length, r.kl, r.clip, r.entropy, r.ms);
  if (!std::isnan(r.eval_pass1)) std::printf("  | held-out pass@1 %.3f cons@%d %.3f", r.eval_pass1, o.eval_k, r.eval_consk);
  std::printf("\n");
  std::fflush(stdout);
}

/// Fills the rollout statistics of a step row.
inline void rollout_stats(const rollout& r, step_row& row) {
  double rew = 0, acc = 0, fmt = 0, len = 0;
  for (const verdict& v : r.verdicts) rew += v.reward, acc += v.correct, fmt += v.formatted, len += v.length;
  const double n = double(r.verdicts.size());
  row.reward = rew / n;
  row.accuracy = acc / n;
  row.format = fmt / n;
  row.length = len / n;
}

/// GRPO from `pol` (the base policy): returns the per-step log.
template <class B, class Scalar>
run_log train_grpo(mlp_policy<Scalar>& pol, const options& o, const problem_set& held, B be = B{}) {
  const task_config task = task_of(o);
  run_log log;
  log.algo = "GRPO";
  mlp_policy<Scalar> ref = pol;  // the reference starts as the base policy
  adam<Scalar> opt(pol.net().num_params(), adam_config{.lr = o.lr, .max_grad_norm = o.max_grad_norm});
  problem_stream stream(derive_seed(o.seed, seed_train), o.digits, &held);
  const index_t N = o.prompts, G = o.group, rows = N * G, T = task.max_completion;
  using math = rl_math<B, Scalar>;

  mirror<B, Scalar> scores, adv, token_adv, logp, logp_old, logp_ref, grad;
  mirror<B, std::uint8_t> mask;
  scores.resize(rows, 1);
  adv.resize(rows, 1);
  for (auto* m : {&token_adv, &logp, &logp_old, &logp_ref, &grad}) m->resize(rows, T);
  mask.resize(rows, T);
  std::vector<Scalar> entropy(std::size_t(rows * T)), host_logp(std::size_t(rows * T)), host_old(std::size_t(rows * T));

  polo::policy_loss_config cfg;
  cfg.eps_low = o.eps_low;
  cfg.eps_high = o.eps_high;
  cfg.kl_coef = o.kl_coef;
  cfg.kl = polo::kl_config{.estimator = polo::kl_estimator::k3};
  const workspace<B> ws(math::workspace_bytes(be, rows, T, G, cfg));
  be = ws.attach(be);

  for (int step = 1; step <= o.steps; ++step) {
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<problem> ps(static_cast<std::size_t>(N));
    for (problem& p : ps) p = stream.next();
    rollout r = sample(pol, ps, int(G), task, derive_seed(o.seed, seed_sample, std::uint64_t(step)), o.temperature);
    step_row row;
    row.step = step;
    rollout_stats(r, row);
    const polo::token_batch<> b = r.batch();

    // Rewards -> group advantages, broadcast over each completion's tokens.
    for (index_t i = 0; i < rows; ++i) scores.host()[std::size_t(i)] = Scalar(r.verdicts[std::size_t(i)].reward);
    mask.host() = r.mask;
    scores.upload();
    mask.upload();
    const typename math::layout layout(mask.cview2());
    math::group_advantages(be, scores.view1(), G, layout, adv.view1(), token_adv.view2());

    // Log-probs of the sampling policy and of the reference, before any update.
    polo::token_logprobs(pol, b, polo::view<Scalar, 2>{host_old.data(), rows, T, T});
    logp_old.host() = host_old;
    polo::token_logprobs(ref, b, polo::view<Scalar, 2>{logp_ref.host().data(), rows, T, T});
    logp_old.upload();
    logp_ref.upload();

    for (int e = 0; e < o.epochs; ++e) {
      polo::token_logprobs(pol, b, polo::view<Scalar, 2>{host_logp.data(), rows, T, T},
                           polo::view<Scalar, 2>{entropy.data(), rows, T, T});
      logp.host() = host_logp;
      logp.upload();
      const polo::policy_loss_result res = math::policy_loss(be, layout, logp.cview2(), logp_old.cview2(),
                                                             logp_ref.cview2(), token_adv.cview2(), grad.view2(), cfg);
      grad.download();
      pol.net().zero_grad();
      polo::policy_backward(pol, b, polo::view<Scalar, 2>{grad.host().data(), rows, T, T});
      opt.step(pol.net().params(), pol.net().grads());
      if (e == 0) {
        row.loss = res.loss;
        row.kl = res.stats.kl_ref.mean();
        double ent = 0, n = 0;
        for (std::size_t k = 0; k < entropy.size(); ++k)
          if (r.mask[k]) ent += entropy[k], n += 1;
        row.entropy = n > 0 ? ent / n : 0.0;
      }
      if (e == o.epochs - 1) row.clip = res.stats.clip_upper.mean() + res.stats.clip_lower.mean();
    }
    if (o.ref_refresh > 0 && step % o.ref_refresh == 0) ref.net().params() = pol.net().params();
    row.ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    log.rl_seconds += row.ms / 1000.0;
    row.peak_mb = peak_rss_mb();
    if (step % o.eval_every == 0 || step == o.steps) {
      eval_result ev = evaluate(pol, held, task, o.eval_k, derive_seed(o.seed, seed_eval), o.temperature);
      row.eval_pass1 = ev.pass1;
      row.eval_consk = ev.consk;
      log.final_eval = ev;
    }
    log.rows.push_back(row);
    log_line<Scalar>(o, "grpo", row);
  }
  return log;
}

/// PPO from `pol` with a fresh critic, on the same compute per step as GRPO: N*G completions,
/// one per prompt (N*G distinct prompts), the same epochs.
template <class B, class Scalar>
run_log train_ppo(mlp_policy<Scalar>& pol, const options& o, const problem_set& held, B be = B{}) {
  const task_config task = task_of(o);
  run_log log;
  log.algo = "PPO";
  mlp_policy<Scalar> ref_model = pol;  // PPO's reference stays the base policy
  mlp_critic<Scalar> critic(policy_config_of(o));
  critic.init(derive_seed(o.seed, seed_critic));
  adam<Scalar> opt(pol.net().num_params(), adam_config{.lr = o.lr, .max_grad_norm = o.max_grad_norm});
  adam<Scalar> copt(critic.net().num_params(), adam_config{.lr = o.critic_lr, .max_grad_norm = o.max_grad_norm});
  problem_stream stream(derive_seed(o.seed, seed_train), o.digits, &held);
  const index_t rows = index_t(o.prompts) * o.group, T = task.max_completion;
  using math = rl_math<B, Scalar>;

  mirror<B, Scalar> rewards, shaped, values_old, values, adv, adv_w, returns, logp, logp_old, logp_ref, grad, gvalues;
  mirror<B, std::uint8_t> mask;
  for (auto* m : {&rewards, &shaped, &values_old, &values, &adv, &adv_w, &returns, &logp, &logp_old, &logp_ref, &grad,
                  &gvalues})
    m->resize(rows, T);
  mask.resize(rows, T);
  std::vector<Scalar> entropy(std::size_t(rows * T));

  polo::policy_loss_config cfg;
  cfg.eps_low = o.eps_low;
  cfg.eps_high = o.eps_high;
  cfg.kl_coef = 0.0;  // PPO puts the KL into the rewards instead
  polo::value_loss_config vcfg;
  vcfg.clip_range = o.vf_clip;
  polo::gae_config gcfg;
  gcfg.gamma = o.gamma;
  gcfg.lambda = o.lambda;
  const workspace<B> ws(math::workspace_bytes(be, rows, T, o.group, cfg));
  be = ws.attach(be);

  for (int step = 1; step <= o.steps; ++step) {
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<problem> ps(static_cast<std::size_t>(rows));
    for (problem& p : ps) p = stream.next();
    rollout r = sample(pol, ps, 1, task, derive_seed(o.seed, seed_sample, std::uint64_t(step)), o.temperature);
    step_row row;
    row.step = step;
    rollout_stats(r, row);
    const polo::token_batch<> b = r.batch();

    // The sequence reward sits on the last valid token.
    std::fill(rewards.host().begin(), rewards.host().end(), Scalar(0));
    for (index_t i = 0; i < rows; ++i) {
      const int len = r.verdicts[std::size_t(i)].length;
      if (len > 0) rewards.host()[std::size_t(i * T + len - 1)] = Scalar(r.verdicts[std::size_t(i)].reward);
    }
    mask.host() = r.mask;
    polo::token_logprobs(pol, b, polo::view<Scalar, 2>{logp_old.host().data(), rows, T, T});
    polo::token_logprobs(ref_model, b, polo::view<Scalar, 2>{logp_ref.host().data(), rows, T, T});
    polo::token_values(critic, b, polo::view<Scalar, 2>{values_old.host().data(), rows, T, T});
    for (auto* m : {&rewards, &logp_old, &logp_ref, &values_old}) m->upload();
    mask.upload();
    const typename math::layout layout(mask.cview2());

    // Per-token KL shaping, GAE, whitening.
    const polo::kl_reward_stats ks =
        math::kl_penalized_rewards(be, layout, rewards.cview2(), logp_old.cview2(), logp_ref.cview2(), shaped.view2(),
                                   o.ppo_kl_coef, polo::kl_config{.estimator = polo::kl_estimator::k1});
    math::gae(be, layout, shaped.cview2(), values_old.cview2(), adv.view2(), returns.view2(), gcfg);
    math::whiten(be, layout, adv.cview2(), adv_w.view2());
    row.kl = ks.kl.mean();

    for (int e = 0; e < o.epochs; ++e) {
      polo::token_logprobs(pol, b, polo::view<Scalar, 2>{logp.host().data(), rows, T, T},
                           polo::view<Scalar, 2>{entropy.data(), rows, T, T});
      logp.upload();
      const polo::policy_loss_result res = math::policy_loss(be, layout, logp.cview2(), logp_old.cview2(),
                                                             typename math::ctokens{}, adv_w.cview2(), grad.view2(), cfg);
      grad.download();
      pol.net().zero_grad();
      polo::policy_backward(pol, b, polo::view<Scalar, 2>{grad.host().data(), rows, T, T});
      opt.step(pol.net().params(), pol.net().grads());

      polo::token_values(critic, b, polo::view<Scalar, 2>{values.host().data(), rows, T, T});
      values.upload();
      const polo::value_loss_stats vs = math::value_loss(be, layout, values.cview2(), values_old.cview2(),
                                                         returns.cview2(), gvalues.view2(), vcfg);
      gvalues.download();
      critic.net().zero_grad();
      polo::value_backward(critic, b, polo::view<Scalar, 2>{gvalues.host().data(), rows, T, T});
      copt.step(critic.net().params(), critic.net().grads());
      if (e == 0) {
        row.loss = res.loss;
        row.value_loss = vs.loss;
        double ent = 0, n = 0;
        for (std::size_t k = 0; k < entropy.size(); ++k)
          if (r.mask[k]) ent += entropy[k], n += 1;
        row.entropy = n > 0 ? ent / n : 0.0;
      }
      if (e == o.epochs - 1) row.clip = res.stats.clip_upper.mean() + res.stats.clip_lower.mean();
    }
    row.ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    log.rl_seconds += row.ms / 1000.0;
    row.peak_mb = peak_rss_mb();
    if (step % o.eval_every == 0 || step == o.steps) {
      eval_result ev = evaluate(pol, held, task, o.eval_k, derive_seed(o.seed, seed_eval), o.temperature);
      row.eval_pass1 = ev.pass1;
      row.eval_consk = ev.consk;
      log.final_eval = ev;
    }
    log.rows.push_back(row);
    log_line<Scalar>(o, "ppo ", row);
  }
  return log;
}

/// Step 0 of a log: the base policy's held-out numbers, so curves start where RL starts.
inline void prepend_base(run_log& log, const eval_result& base) {
  step_row r0;
  r0.step = 0;
  r0.eval_pass1 = base.pass1;
  r0.eval_consk = base.consk;
  r0.reward = r0.accuracy = r0.format = r0.length = r0.kl = r0.clip = r0.entropy = r0.loss = r0.ms = NAN;
  r0.peak_mb = peak_rss_mb();
  log.base = base;
  log.rows.insert(log.rows.begin(), r0);
}

}  // namespace r1zero
