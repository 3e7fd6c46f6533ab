// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
#pragma once
// The verifiable task of the R1-Zero examples: multi-digit addition with rule-based rewards.
//
// Numbers are written least significant digit first (reversed), so the k-th answer digit sits
// next to the k-th digits of the operands and a carry flows left to right, the direction the
// model writes in. With d-digit operands (d = 3 by default):
//
//   prompt      a_0 .. a_{d-1}  +  b_0 .. b_{d-1}  =          (2d+2 tokens; 2d+2 = 8)
//   completion  <a>  s_0 s_1 .. s_k  </a>                     (generation stops at </a>)
//
// e.g. 472 + 385 = 857:  prompt "2 7 4 + 5 8 3 =", correct completion "<a> 7 5 8 </a>".
// Operands are uniform in [10^(d-1), 10^d), so every answer has d or d+1 digits: at least
// three tokens to get right, not a bandit.
//
// Rewards, in the spirit of DeepSeek-R1-Zero (rule-based, no reward model):
//   format    the completion is exactly  <a> digit+ </a>  (it ended at the stop token, within
//             the length limit, with nothing else inside the tags)
//   accuracy  the completion is well formatted and its digits, read least significant first,
//             equal a + b
//   reward    = accuracy_weight * accuracy + format_weight * format
//
// The base policy (trainer.hpp) comes from a short supervised warm-up on canonical completions:
// long enough to learn the format (format rate ~1), too short to learn the carries, so its
// held-out pass@1 is below 30% and RL has to teach the arithmetic from the rule rewards alone.
// The warm-up corpus can be made noisy (corpus_completion): each answer digit replaced by a
// random digit with probability `digit_noise`, and the format broken with probability
// `format_noise` (missing <a>, a stray operator inside the tags, or a doubled <a>); both are 0
// by default.

#include <algorithm>
#include <cstdint>
#include <map>
#include <set>
#include <stdexcept>
#include <vector>

#include "model.hpp"

namespace r1zero {

/// The vocabulary: digits 0-9 and five symbols.
namespace tok {
inline constexpr token_t plus = 10;
inline constexpr token_t equals = 11;
inline constexpr token_t open = 12;   // <a>
inline constexpr token_t close = 13;  // </a>, the stop token
inline constexpr token_t pad = 14;    // fills context windows; never correct in a completion
inline constexpr int vocab = 15;
}  // namespace tok

/// Printable form of a token.
inline const char* token_text(token_t t) {
  static const char* names[] = {"0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "+", "=", "<a>", "</a>", "_"};
  return t >= 0 && t < tok::vocab ? names[t] : "?";
}

struct task_config {
  int digits = 3;                ///< d: digits of each operand
  int max_completion = 8;        ///< T: the longest completion sampled (tokens, tags included)
  double accuracy_weight = 1.0;  ///< reward of a correct answer
  double format_weight = 0.1;    ///< reward of a well-formatted completion
};

struct problem {
  std::int64_t a = 0, b = 0;
  [[nodiscard]] std::int64_t sum() const { return a + b; }
  friend bool operator<(const problem& x, const problem& y) { return x.a != y.a ? x.a < y.a : x.b < y.b; }
};

inline std::int64_t pow10(int d) {
  std::int64_t p = 1;
  while (d-- > 0) p *= 10;
  return p;
}

/// A problem with operands uniform in [10^(d-1), 10^d).
inline problem sample_problem(rng& g, int digits) {
  const std::int64_t lo = pow10(digits - 1), span = pow10(digits) - lo;
  problem p;
  p.a = lo + g.below(span);
  p.b = lo + g.below(span);
  return p;
}

inline int prompt_len(const task_config& c) { return 2 * c.digits + 2; }

/// The prompt tokens of a problem (operands least significant digit first).
inline void write_prompt(const problem& p, int digits, token_t* out) {
  std::int64_t a = p.a, b = p.b;
  for (int k = 0; k < digits; ++k, a /= 10) out[k] = token_t(a % 10);
  out[digits] = tok::plus;
  for (int k = 0; k < digits; ++k, b /= 10) out[digits + 1 + k] = token_t(b % 10);
  out[2 * digits + 1] = tok::equals;
}

/// Digits of n, least significant first (n >= 0; "0" for 0).
inline std::vector<token_t> reversed_digits(std::int64_t n) {
  std::vector<token_t> d;
  do {
    d.push_back(token_t(n % 10));
    n /= 10;
  } while (n > 0);
  return d;
}

/// The canonical completion:  <a> s_0 .. s_k </a>.
inline std::vector<token_t> canonical_completion(const problem& p) {
  std::vector<token_t> c{tok::open};
  for (token_t d : reversed_digits(p.sum())) c.push_back(d);
  c.push_back(tok::close);
  return c;
}

/// What the rules say about one completion.
struct verdict {
  bool formatted = false;    ///< exactly <a> digit+ </a>
  bool correct = false;      ///< formatted and the digits equal a + b
  std::int64_t answer = -1;  ///< the number between the tags when formatted, else -1
  int length = 0;            ///< tokens generated (the valid tokens of the row)
  double reward = 0.0;
};

/// Applies the format and accuracy rules to a completion of `len` tokens.
inline verdict judge(const problem& p, const token_t* c, int len, const task_config& cfg) {
  verdict v;
  v.length = len;
  if (len >= 3 && c[0] == tok::open && c[len - 1] == tok::close) {
    bool digits_only = true;
    for (int k = 1; k < len - 1; ++k) digits_only = digits_only && c[k] >= 0 && c[k] <= 9;
    if (digits_only && len - 2 <= 18) {
      v.formatted = true;
      std::int64_t n = 0;
      for (int k = len - 2; k >= 1; --k) n = n * 10 + c[k];
      v.answer = n;
      v.correct = n == p.sum();
    }
  }
  v.reward = cfg.accuracy_weight * double(v.correct) + cfg.format_weight * double(v.formatted);
  return v;
}

/// A completion of the warm-up corpus: canonical, with optional digit and format noise (see the file comment).
inline std::vector<token_t> corpus_completion(const problem& p, rng& g, double digit_noise, double format_noise) {
  std::vector<token_t> c = canonical_completion(p);
  for (std::size_t k = 1; k + 1 < c.size(); ++k)
    if (g.uniform() < digit_noise) c[k] = token_t(g.below(10));
  if (g.uniform() < format_noise) {
    switch (g.below(3)) {
      case 0: c.erase(c.begin()); break;                                                     // no <a>
      case 1: c.insert(c.begin() + 1 + g.below(std::int64_t(c.size()) - 1), token_t(tok::plus + g.below(2))); break;
      default: c.insert(c.begin(), tok::open); break;                                      // <a> <a>
    }
  }
  return c;
}

/// A fixed set of problems (the held-out set), and membership for keeping it out of training.
struct problem_set {
  std::vector<problem> items;
  std::set<problem> members;
  [[nodiscard]] bool contains(const problem& p) const { return members.count(p) != 0; }
};

inline problem_set make_problem_set(std::uint64_t seed, int n, int digits) {
  problem_set s;
  rng g(seed);
  while (int(s.items.size()) < n) {
    problem p = sample_problem(g, digits);
    if (s.members.insert(p).second) s.items.push_back(p);
  }
  return s;
}

/// Draws training problems, never one of the held-out set.
class problem_stream {
 public:
  problem_stream(std::uint64_t seed, int digits, const problem_set* held_out)
      : g_(seed), digits_(digits), held_out_(held_out) {}
  problem next() {
    for (;;) {
      problem p = sample_problem(g_, digits_);
      if (!held_out_ || !held_out_->contains(p)) return p;
    }
  }

 private:
  rng g_;
  int digits_;
  const problem_set* held_out_;
};

/// Prompts of a list of problems as an [N, P] row-major token matrix.
inline std::vector<token_t> prompt_matrix(const std::vector<problem>& ps, int digits) {
  const int P = 2 * digits + 2;
  std::vector<token_t> m(ps.size() * std::size_t(P));
  for (std::size_t i = 0; i < ps.size(); ++i) write_prompt(ps[i], digits, m.data() + i * P);
  return m;
}

/// Majority vote over formatted answers (cons@k): the answer with the most votes, ties going to
/// the one that reached that count first; -1 when no sample is formatted.
inline std::int64_t majority_answer(const std::vector<verdict>& vs) {
  std::map<std::int64_t, int> votes;
  std::int64_t best = -1;
  int best_n = 0;
  for (const verdict& v : vs) {
    if (!v.formatted) continue;
    int n = ++votes[v.answer];
    if (n > best_n) {
      best_n = n;
      best = v.answer;
    }
  }
  return best;
}

}  // namespace r1zero
