// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
// The model concepts of <polo/policy.hpp>: a toy bigram model satisfies each of them, models
// missing one requirement do not, and the checked entry points validate shapes before calling
// the model.
#include <cmath>
#include <cstdint>
#include <vector>

#include "support/polo_test.hpp"

#include "polo/policy.hpp"

namespace {

using polo::index_t;
using polo::token_t;

// A bigram policy over V tokens: π(v | previous token u) = softmax(w[u, ·])[v]. Parameters
// and gradients are plain vectors; it satisfies every model concept (a value head included).
struct toy_bigram {
  using backend_type = polo::cpu;
  using value_type = double;
  index_t vocab = 4;
  std::vector<double> w = std::vector<double>(16, 0.0);     // [V, V] logits
  std::vector<double> grad = std::vector<double>(16, 0.0);  // [V, V]
  std::vector<double> head = std::vector<double>(4, 0.0);   // value of the previous token
  std::vector<double> head_grad = std::vector<double>(4, 0.0);

  [[nodiscard]] token_t previous(const polo::token_batch<polo::host_space>& b, index_t i, index_t t) const {
    if (t > 0) return b.completions(i, t - 1);
    for (index_t p = b.prompts.cols - 1; p >= 0; --p)
      if (b.prompt_mask.is_null() || b.prompt_mask(i, p)) return b.prompts(i, p);
    return 0;
  }
  [[nodiscard]] double log_norm(token_t u) const {
    double z = 0;
    for (index_t v = 0; v < vocab; ++v) z += std::exp(w[u * vocab + v]);
    return std::log(z);
  }
  void token_logprobs(const polo::token_batch<polo::host_space>& b, polo::view<double, 2> out) {
    for (index_t i = 0; i < b.size(); ++i)
      for (index_t t = 0; t < b.completion_len(); ++t) {
        token_t u = previous(b, i, t);
        out(i, t) = b.mask(i, t) ? w[u * vocab + b.completions(i, t)] - log_norm(u) : 0.0;
      }
  }
  void token_logprobs(const polo::token_batch<polo::host_space>& b, polo::view<double, 2> out,
                      polo::view<double, 2> entropy) {
    token_logprobs(b, out);
    for (index_t i = 0; i < b.size(); ++i)
      for (index_t t = 0; t < b.completion_len(); ++t) {
        token_t u = previous(b, i, t);
        double h = 0, lz = log_norm(u);
        for (index_t v = 0; v < vocab; ++v) h -= std::exp(w[u * vocab + v] - lz) * (w[u * vocab + v] - lz);
        entropy(i, t) = b.mask(i, t) ? h : 0.0;
      }
  }
  void backward(const polo::token_batch<polo::host_space>& b, polo::view<const double, 2> g) {
    for (index_t i = 0; i < b.size(); ++i)
      for (index_t t = 0; t < b.completion_len(); ++t) {
        if (!b.mask(i, t)) continue;
        token_t u = previous(b, i, t);
        double lz = log_norm(u);
        for (index_t v = 0; v < vocab; ++v)
          grad[u * vocab + v] += g(i, t) * ((v == b.completions(i, t)) - std::exp(w[u * vocab + v] - lz));
      }
  }
  void generate(const polo::prompt_batch<polo::host_space>& prompts, const polo::sampling_params& params,
                polo::view<token_t, 2> completions, polo::view<std::uint8_t, 2> mask) {
    std::mt19937_64 rng(params.seed);
    std::uniform_real_distribution<double> uni(0.0, 1.0);
    for (index_t r = 0; r < completions.rows; ++r) {
      token_t u = prompts.tokens(r / params.group_size, prompts.tokens.cols - 1);
      for (index_t t = 0; t < completions.cols; ++t) {
        double x = uni(rng), lz = log_norm(u), acc = 0;
        token_t v = 0;
        for (; v + 1 < vocab; ++v) {
          acc += std::exp((w[u * vocab + v] - lz) / params.temperature);
          if (x < acc) break;
        }
        completions(r, t) = v;
        mask(r, t) = 1;
        u = v;
      }
    }
  }
  void token_values(const polo::token_batch<polo::host_space>& b, polo::view<double, 2> out) {
    for (index_t i = 0; i < b.size(); ++i)
      for (index_t t = 0; t < b.completion_len(); ++t) out(i, t) = head[previous(b, i, t)];
  }
  void value_backward(const polo::token_batch<polo::host_space>& b, polo::view<const double, 2> g) {
    for (index_t i = 0; i < b.size(); ++i)
      for (index_t t = 0; t < b.completion_len(); ++t)
        if (b.mask(i, t)) head_grad[previous(b, i, t)] += g(i, t);
  }
};

// Scores only: no backward, so a LogprobModel (a reference policy) but not a Policy.
struct scorer_only {
  using backend_type = polo::cpu;
  using value_type = float;
  void token_logprobs(const polo::token_batch<polo::host_space>&, polo::view<float, 2>) {}
};
// Everything but the backend tag.
struct no_backend {
  using value_type = float;
  void token_logprobs(const polo::token_batch<polo::host_space>&, polo::view<float, 2>) {}
  void backward(const polo::token_batch<polo::host_space>&, polo::view<const float, 2>) {}
};
// A backend_type that is not a polo backend.
struct not_a_backend_tag {};
struct wrong_backend {
  using backend_type = not_a_backend_tag;
  using value_type = float;
  void token_logprobs(const polo::token_batch<polo::host_space>&, polo::view<float, 2>) {}
};
// Integer log-probs.
struct int_logprobs {
  using backend_type = polo::cpu;
  using value_type = int;
  void token_logprobs(const polo::token_batch<polo::host_space>&, polo::view<int, 2>) {}
};
// Host views under a CUDA backend tag: the signature names the wrong memory space.
struct space_mismatch {
  using backend_type = polo::cuda;
  using value_type = float;
  void token_logprobs(const polo::token_batch<polo::host_space>&, polo::view<float, 2>) {}
};
// backward that returns something: the concept requires void (a silently ignored status is a bug).
struct backward_returns_loss {
  using backend_type = polo::cpu;
  using value_type = float;
  void token_logprobs(const polo::token_batch<polo::host_space>&, polo::view<float, 2>) {}
  float backward(const polo::token_batch<polo::host_space>&, polo::view<const float, 2>) { return 0; }
};
// A device-side model: the concepts are backend-neutral.
struct device_model {
  using backend_type = polo::cuda;
  using value_type = float;
  void token_logprobs(const polo::token_batch<polo::device_space>&, polo::view<float, 2, polo::device_space>) {}
  void backward(const polo::token_batch<polo::device_space>&, polo::view<const float, 2, polo::device_space>) {}
};

}  // namespace

TEST_CASE("policy concepts: a toy model satisfies each concept", "[policy][concepts]") {
  STATIC_REQUIRE(polo::LogprobModel<toy_bigram>);
  STATIC_REQUIRE(polo::TokenEntropyModel<toy_bigram>);
  STATIC_REQUIRE(polo::Policy<toy_bigram>);
  STATIC_REQUIRE(polo::SamplingPolicy<toy_bigram>);
  STATIC_REQUIRE(polo::Critic<toy_bigram>);
  STATIC_REQUIRE(polo::Policy<device_model>);
  STATIC_REQUIRE(std::is_same_v<polo::model_space_t<device_model>, polo::device_space>);
}

TEST_CASE("policy concepts: models missing a requirement do not satisfy them", "[policy][concepts]") {
  STATIC_REQUIRE(polo::LogprobModel<scorer_only>);
  STATIC_REQUIRE_FALSE(polo::Policy<scorer_only>);
  STATIC_REQUIRE_FALSE(polo::SamplingPolicy<scorer_only>);
  STATIC_REQUIRE_FALSE(polo::TokenEntropyModel<scorer_only>);
  STATIC_REQUIRE_FALSE(polo::Critic<scorer_only>);
  STATIC_REQUIRE_FALSE(polo::LogprobModel<no_backend>);
  STATIC_REQUIRE_FALSE(polo::Policy<no_backend>);
  STATIC_REQUIRE_FALSE(polo::LogprobModel<wrong_backend>);
  STATIC_REQUIRE_FALSE(polo::LogprobModel<int_logprobs>);
  STATIC_REQUIRE_FALSE(polo::LogprobModel<space_mismatch>);
  STATIC_REQUIRE(polo::LogprobModel<backward_returns_loss>);
  STATIC_REQUIRE_FALSE(polo::Policy<backward_returns_loss>);
  STATIC_REQUIRE_FALSE(polo::Policy<device_model*>);
  // Backend tags are backends, not policies.
  STATIC_REQUIRE_FALSE(polo::LogprobModel<polo::cpu>);
  STATIC_REQUIRE_FALSE(polo::Policy<polo::cuda>);
}

#if !defined(__CUDACC__)
TEST_CASE("policy entry points: shapes are checked before the model is called", "[policy]") {
  toy_bigram m;
  const index_t B = 3, P = 2, T = 4;
  std::vector<token_t> prompts = {1, 2, 0, 3, 2, 1};
  std::vector<token_t> comps = {0, 1, 2, 3, 3, 2, 1, 0, 1, 1, 1, 1};
  std::vector<std::uint8_t> mask = {1, 1, 1, 1, 1, 1, 0, 0, 1, 0, 0, 0};
  polo::token_batch<> b{polo::matrix_view_of(std::as_const(prompts), B, P), {},
                        polo::matrix_view_of(std::as_const(comps), B, T), polo::matrix_view_of(std::as_const(mask), B, T)};
  std::vector<double> logp(B * T, 7.0), ent(B * T, 7.0), g(B * T, 1.0);

  polo::token_logprobs(m, b, polo::matrix_view_of(logp, B, T), polo::matrix_view_of(ent, B, T));
  for (index_t k = 0; k < B * T; ++k) {
    CHECK(logp[k] == (mask[k] ? Approx(std::log(0.25)) : Approx(0.0)));
    CHECK(ent[k] == (mask[k] ? Approx(std::log(4.0)) : Approx(0.0)));
  }

  std::vector<double> short_out(B * (T - 1), 7.0);
  CHECK_THROWS_AS(polo::token_logprobs(m, b, polo::matrix_view_of(short_out, B, T - 1)), polo::shape_error);
  CHECK_THROWS_WITH(polo::token_logprobs(m, b, polo::matrix_view_of(short_out, B, T - 1)),
                    Catch::Contains("polo::token_logprobs: argument 'logp' has shape [3,3]; expected [3,4]"));
  for (double x : short_out) CHECK(x == 7.0);  // the model was never called

  polo::token_batch<> bad = b;
  bad.prompts = polo::matrix_view_of(std::as_const(prompts), B * P, 1);
  CHECK_THROWS_AS(polo::token_logprobs(m, bad, polo::matrix_view_of(logp, B, T)), polo::shape_error);
  CHECK_THROWS_AS(polo::policy_backward(m, b, polo::matrix_view_of(short_out, B, T - 1)), polo::shape_error);
  CHECK_THROWS_AS(polo::token_values(m, b, polo::matrix_view_of(short_out, B, T - 1)), polo::shape_error);

  // backward accumulates: twice the same gradient is twice the gradient.
  polo::token_logprobs(m, b, polo::matrix_view_of(logp, B, T));
  polo::policy_backward(m, b, polo::matrix_view_of(std::as_const(g), B, T));
  std::vector<double> once = m.grad;
  polo::policy_backward(m, b, polo::matrix_view_of(std::as_const(g), B, T));
  for (std::size_t k = 0; k < once.size(); ++k) CHECK(m.grad[k] == Approx(2 * once[k]));
  // Masked entries of dlogp are ignored.
  std::vector<double> g_masked = g;
  for (index_t k = 0; k < B * T; ++k)
    if (!mask[k]) g_masked[k] = 1e30;
  std::fill(m.grad.begin(), m.grad.end(), 0.0);
  polo::policy_backward(m, b, polo::matrix_view_of(std::as_const(g_masked), B, T));
  for (std::size_t k = 0; k < once.size(); ++k) CHECK(m.grad[k] == Approx(once[k]));
}

TEST_CASE("policy entry points: generate checks its options and shapes", "[policy]") {
  toy_bigram m;
  const index_t N = 2, P = 2, G = 3, T = 5;
  std::vector<token_t> prompts = {1, 2, 0, 3};
  polo::prompt_batch<> pb{polo::matrix_view_of(std::as_const(prompts), N, P), {}};
  std::vector<token_t> comps(N * G * T, -1), comps2(N * G * T, -1);
  std::vector<std::uint8_t> mask(N * G * T, 9);

  polo::generate(m, pb, {.group_size = G, .seed = 5}, polo::matrix_view_of(comps, N * G, T),
                 polo::matrix_view_of(mask, N * G, T));
  polo::generate(m, pb, {.group_size = G, .seed = 5}, polo::matrix_view_of(comps2, N * G, T),
                 polo::matrix_view_of(mask, N * G, T));
  CHECK(comps == comps2);
  for (token_t c : comps) CHECK((c >= 0 && c < 4));

  CHECK_THROWS_AS(polo::generate(m, pb, {.group_size = 0}, polo::matrix_view_of(comps, N * G, T),
                                 polo::matrix_view_of(mask, N * G, T)),
                  polo::config_error);
  CHECK_THROWS_AS(polo::generate(m, pb, {.group_size = G, .temperature = 0.0}, polo::matrix_view_of(comps, N * G, T),
                                 polo::matrix_view_of(mask, N * G, T)),
                  polo::config_error);
  CHECK_THROWS_WITH(polo::generate(m, pb, {.group_size = 2}, polo::matrix_view_of(comps, N * G, T),
                                   polo::matrix_view_of(mask, N * G, T)),
                    Catch::Contains("argument 'completions' has shape [6,5]; expected [4,5]"));
}
#endif
