// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
#pragma once
// A small autoregressive policy and value model for the examples, on the CPU with Eigen: the
// "user model code" polo's concepts (<polo/policy.hpp>) describe. polo never sees these
// parameters, activations or optimizer states; the trainers hand it log-probs and values and
// get back dL/dlogp and dL/dvalues, which the models' hand-written backward passes turn into
// parameter gradients for Adam.
//
// The network (an MLP language model in the style of Bengio et al. 2003):
//
//   context  = the last C tokens of (real prompt tokens ++ completion tokens before t), or the
//              whole prefix followed by `pad` tokens when it is shorter than C (left-aligned,
//              so a token keeps its slot while the completion grows)
//   n        = the length of that prefix, capped at C (where the next token goes)
//   x        = concat(E[context_0], ..., E[context_{C-1}], E[V + n])        [(C+1)*D]
//   h_l      = relu(W_l h_{l-1} + b_l)         for each hidden layer l       [H_l]
//   out      = W_o h_L + b_o                                                  [O]
//
// The embedding table has V token rows and C+1 position rows: E[V + n] tells the network which
// slot of the window it is filling, so it need not infer it from the pattern of pad tokens.
// The policy reads `out` as next-token logits (O = V); the critic reads it as a value (O = 1).
// Parameters live in one flat vector (so Adam, copies of the reference model and finite
// differences are one-liners); each matrix is a row-major Eigen::Map into it.
//
// Everything is single-threaded and fixed-order: the same seed gives the same bits.

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <polo/policy.hpp>

namespace r1zero {

using polo::index_t;
using polo::token_t;

template <class Scalar>
using matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class Scalar>
using vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;
template <class Scalar>
using matrix_map = Eigen::Map<matrix<Scalar>>;
template <class Scalar>
using row_vector_map = Eigen::Map<Eigen::Matrix<Scalar, 1, Eigen::Dynamic>>;
template <class Scalar>
using const_row_vector_map = Eigen::Map<const Eigen::Matrix<Scalar, 1, Eigen::Dynamic>>;

// ---------------------------------------------------------------------------------------------
// Deterministic, portable random numbers (splitmix64): the same bits on every platform, unlike
// std::normal_distribution, and counter-based where sampling must not depend on batch order.
// ---------------------------------------------------------------------------------------------

inline std::uint64_t splitmix64(std::uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}
/// A uniform double in [0, 1) from a 64-bit hash.
inline double unit_double(std::uint64_t h) { return double(h >> 11) * 0x1.0p-53; }
/// The counter-based uniform of (seed, a, b): the same for the same triple, whatever the batch.
inline double uniform_at(std::uint64_t seed, std::uint64_t a, std::uint64_t b) {
  return unit_double(splitmix64(splitmix64(splitmix64(seed) ^ a) ^ (b * 0xD1B54A32D192ED03ULL)));
}

/// A small sequential generator (splitmix64 stream) with uniform and normal draws.
class rng {
 public:
  explicit rng(std::uint64_t seed) : state_(seed) {}
  std::uint64_t next() { return splitmix64(state_++); }
  double uniform() { return unit_double(next()); }
  /// Uniform integer in [0, n).
  std::int64_t below(std::int64_t n) { return std::int64_t(uniform() * double(n)); }
  /// Standard normal (Box-Muller).
  double normal() {
    double u1 = uniform(), u2 = uniform();
    return std::sqrt(-2.0 * std::log1p(-u1)) * std::cos(6.283185307179586 * u2);
  }

 private:
  std::uint64_t state_;
};

// ---------------------------------------------------------------------------------------------
// The MLP trunk shared by the policy and the critic
// ---------------------------------------------------------------------------------------------

struct mlp_shape {
  int vocab = 15;               ///< V: token ids are 0..V-1
  int context = 16;             ///< C: tokens in the context window
  int embed = 8;                ///< D: embedding width
  std::vector<int> hidden{256}; ///< H_l: width of each hidden layer
  int outputs = 15;             ///< O: V for a policy, 1 for a critic
};

template <class Scalar>
class mlp {
 public:
  mlp() = default;
  explicit mlp(const mlp_shape& s) : shape_(s) {
    if (s.vocab < 2 || s.context < 1 || s.embed < 1 || s.outputs < 1)
      throw std::invalid_argument("r1zero::mlp: vocab >= 2, context >= 1, embed >= 1 and outputs >= 1 are required");
    index_t n = index_t(embed_rows()) * s.embed;
    int in = slots() * s.embed;
    for (int h : s.hidden) {
      if (h < 1) throw std::invalid_argument("r1zero::mlp: hidden widths must be >= 1");
      n += index_t(in) * h + h;
      in = h;
    }
    n += index_t(in) * s.outputs + s.outputs;
    params_ = vector<Scalar>::Zero(n);
    grads_ = vector<Scalar>::Zero(n);
  }

  [[nodiscard]] const mlp_shape& shape() const { return shape_; }
  /// Rows of the embedding table: V tokens, then C+1 positions.
  [[nodiscard]] int embed_rows() const { return shape_.vocab + shape_.context + 1; }
  /// Input slots per context: C tokens and one position.
  [[nodiscard]] int slots() const { return shape_.context + 1; }
  [[nodiscard]] index_t num_params() const { return params_.size(); }
  vector<Scalar>& params() { return params_; }
  [[nodiscard]] const vector<Scalar>& params() const { return params_; }
  vector<Scalar>& grads() { return grads_; }
  void zero_grad() { grads_.setZero(); }

  /// He-normal hidden layers, unit-normal embeddings, output layer scaled by `out_scale`.
  void init(std::uint64_t seed, double out_scale) {
    rng g(seed);
    for (index_t k = 0; k < params_.size(); ++k) params_[k] = 0;
    auto fill = [&](Scalar* p, index_t n, double sd) {
      for (index_t k = 0; k < n; ++k) p[k] = Scalar(sd * g.normal());
    };
    Scalar* p = params_.data();
    fill(p, index_t(embed_rows()) * shape_.embed, 1.0);
    p += index_t(embed_rows()) * shape_.embed;
    int in = slots() * shape_.embed;
    for (int h : shape_.hidden) {
      fill(p, index_t(in) * h, std::sqrt(2.0 / in));
      p += index_t(in) * h + h;
      in = h;
    }
    fill(p, index_t(in) * shape_.outputs, out_scale / std::sqrt(double(in)));
  }

  /// out [R, O] for R contexts `ctx [R, C+1]` (C tokens, then V + position); caches the
  /// activations for backward.
  const matrix<Scalar>& forward(const std::vector<token_t>& ctx, index_t R) {
    const int C = slots(), D = shape_.embed;
    const Scalar* p = params_.data();
    Eigen::Map<const matrix<Scalar>> E(p, embed_rows(), D);
    p += index_t(embed_rows()) * D;
    ctx_ = ctx;
    rows_ = R;
    x_.resize(R, index_t(C) * D);
    for (index_t r = 0; r < R; ++r)
      for (int c = 0; c < C; ++c) x_.row(r).segment(index_t(c) * D, D) = E.row(ctx[r * C + c]);
    acts_.resize(shape_.hidden.size());
    const matrix<Scalar>* in = &x_;
    for (std::size_t l = 0; l < shape_.hidden.size(); ++l) {
      const index_t rows_in = in->cols(), h = shape_.hidden[l];
      Eigen::Map<const matrix<Scalar>> W(p, rows_in, h);
      const_row_vector_map<Scalar> b(p + rows_in * h, h);
      p += rows_in * h + h;
      matrix<Scalar>& a = acts_[l];
      a.resize(R, h);
      a.noalias() = (*in) * W;
      a.rowwise() += b;
      a = a.cwiseMax(Scalar(0));
      in = &a;
    }
    const index_t rows_in = in->cols();
    Eigen::Map<const matrix<Scalar>> W(p, rows_in, shape_.outputs);
    const_row_vector_map<Scalar> b(p + rows_in * shape_.outputs, shape_.outputs);
    out_.resize(R, shape_.outputs);
    out_.noalias() = (*in) * W;
    out_.rowwise() += b;
    return out_;
  }

  /// Adds d(Σ dout ⊙ out)/dθ to the gradients, for the contexts of the last forward.
  void backward(const matrix<Scalar>& dout) {
    if (dout.rows() != rows_ || dout.cols() != shape_.outputs)
      throw std::logic_error("r1zero::mlp::backward: dout does not match the last forward");
    const int C = slots(), D = shape_.embed;
    const std::size_t L = shape_.hidden.size();
    // Offsets of each block of the flat vector.
    std::vector<index_t> w_off(L + 1);
    index_t off = index_t(embed_rows()) * D;
    index_t in = index_t(C) * D;
    for (std::size_t l = 0; l <= L; ++l) {
      w_off[l] = off;
      index_t out = l < L ? shape_.hidden[l] : shape_.outputs;
      off += in * out + out;
      in = out;
    }
    matrix<Scalar> delta = dout;  // dL/d(pre-activation) of the current layer
    for (std::size_t l = L + 1; l-- > 0;) {
      const matrix<Scalar>& a_in = l == 0 ? x_ : acts_[l - 1];
      const index_t rows_in = a_in.cols(), n_out = delta.cols();
      matrix_map<Scalar> dW(grads_.data() + w_off[l], rows_in, n_out);
      row_vector_map<Scalar> db(grads_.data() + w_off[l] + rows_in * n_out, n_out);
      dW.noalias() += a_in.transpose() * delta;
      db += delta.colwise().sum();
      Eigen::Map<const matrix<Scalar>> W(params_.data() + w_off[l], rows_in, n_out);
      matrix<Scalar> d_in(rows_, rows_in);
      d_in.noalias() = delta * W.transpose();
      if (l > 0) d_in.array() *= (acts_[l - 1].array() > Scalar(0)).template cast<Scalar>();
      delta.swap(d_in);
    }
    matrix_map<Scalar> dE(grads_.data(), embed_rows(), D);
    for (index_t r = 0; r < rows_; ++r)
      for (int c = 0; c < C; ++c) dE.row(ctx_[r * C + c]) += delta.row(r).segment(index_t(c) * D, D);
  }

 private:
  mlp_shape shape_{};
  vector<Scalar> params_, grads_;
  std::vector<token_t> ctx_;
  index_t rows_ = 0;
  matrix<Scalar> x_, out_;
  std::vector<matrix<Scalar>> acts_;
};

// ---------------------------------------------------------------------------------------------
// Contexts of the valid tokens of a batch
// ---------------------------------------------------------------------------------------------

/// The (row, position) of each valid completion token of a batch, in row-major order, and the
/// context window each is predicted from.
struct token_contexts {
  std::vector<index_t> row, pos;
  std::vector<token_t> ctx;  // [R, C+1]
  [[nodiscard]] index_t size() const { return index_t(row.size()); }
};

/// Context of completion token t of row i: the last C tokens of the prefix, or the whole prefix
/// left-aligned and followed by `pad` when it is shorter; then the position slot V + min(n, C).
inline void append_context(std::vector<token_t>& ctx, const polo::token_batch<>& b, index_t i, index_t t, int C,
                           token_t pad, int V) {
  token_t buf[512];
  std::vector<token_t> big;
  token_t* pre = buf;
  index_t cap = b.prompt_len() + t;
  if (cap > 512) {
    big.resize(std::size_t(cap));
    pre = big.data();
  }
  index_t n = 0;
  for (index_t p = 0; p < b.prompt_len(); ++p)
    if (b.prompt_mask.is_null() || b.prompt_mask(i, p)) pre[n++] = b.prompts(i, p);
  for (index_t s = 0; s < t; ++s) pre[n++] = b.completions(i, s);
  index_t start = n > C ? n - C : 0;
  for (int c = 0; c < C; ++c) ctx.push_back(start + c < n ? pre[start + c] : pad);
  ctx.push_back(token_t(V + std::min<index_t>(n, C)));
}

inline token_contexts contexts_of(const polo::token_batch<>& b, int C, token_t pad, int V) {
  token_contexts tc;
  for (index_t i = 0; i < b.size(); ++i)
    for (index_t t = 0; t < b.completion_len(); ++t)
      if (b.mask.is_null() || b.mask(i, t)) {
        tc.row.push_back(i);
        tc.pos.push_back(t);
        append_context(tc.ctx, b, i, t, C, pad, V);
      }
  return tc;
}

// ---------------------------------------------------------------------------------------------
// The policy: a polo::SamplingPolicy and polo::TokenEntropyModel
// ---------------------------------------------------------------------------------------------

struct policy_config {
  mlp_shape shape{};
  token_t pad = 14;   ///< fills the context window after a short prefix
  token_t stop = 13;  ///< generation of a row ends after this token (a stop string)
};

template <class Scalar>
class mlp_policy {
 public:
  using backend_type = polo::cpu;
  using value_type = Scalar;

  mlp_policy() = default;
  explicit mlp_policy(const policy_config& c) : cfg_(c), net_(c.shape) {
    if (c.shape.outputs != c.shape.vocab)
      throw std::invalid_argument("r1zero::mlp_policy: outputs must equal vocab (next-token logits)");
  }
  void init(std::uint64_t seed) { net_.init(seed, 0.5); }

  [[nodiscard]] const policy_config& config() const { return cfg_; }
  mlp<Scalar>& net() { return net_; }
  [[nodiscard]] const mlp<Scalar>& net() const { return net_; }

  /// LogprobModel: logp(i, t) at valid tokens, 0 at masked ones.
  void token_logprobs(const polo::token_batch<>& b, polo::view<Scalar, 2> out) { run(b, out, nullptr); }
  /// TokenEntropyModel: also the entropy of each next-token distribution.
  void token_logprobs(const polo::token_batch<>& b, polo::view<Scalar, 2> out, polo::view<Scalar, 2> entropy) {
    run(b, out, &entropy);
  }

  /// Policy: grads += Σ g(i,t) ∂logp(i,t)/∂θ, through log-softmax: dlogits = g (onehot - p).
  void backward(const polo::token_batch<>& b, polo::view<const Scalar, 2> g) {
    if (b.completions.data != cached_.completions.data || b.size() != cached_.size() ||
        b.completion_len() != cached_.completion_len())
      throw std::logic_error("r1zero::mlp_policy::backward: call token_logprobs on the same batch first");
    const index_t R = tc_.size(), V = cfg_.shape.vocab;
    matrix<Scalar> dlogits(R, V);
    for (index_t r = 0; r < R; ++r) {
      Scalar gr = g(tc_.row[r], tc_.pos[r]);
      dlogits.row(r) = -gr * probs_.row(r);
      dlogits(r, b.completions(tc_.row[r], tc_.pos[r])) += gr;
    }
    net_.backward(dlogits);
  }

  /// SamplingPolicy: G completions per prompt, sampled token by token for every row at once;
  /// a row stops after `stop` or at T tokens. The uniform of row r, token t is a hash of
  /// (seed, r, t), so a row's completion does not depend on the other rows.
  void generate(const polo::prompt_batch<>& prompts, const polo::sampling_params& sp,
                polo::view<token_t, 2> completions, polo::view<std::uint8_t, 2> mask) {
    const index_t rows = completions.rows, T = completions.cols, V = cfg_.shape.vocab;
    const int C = cfg_.shape.context;
    for (index_t r = 0; r < rows; ++r)
      for (index_t t = 0; t < T; ++t) {
        completions(r, t) = cfg_.pad;
        mask(r, t) = 0;
      }
    // Each row's prompt, repeated G times, as a batch of its own.
    std::vector<token_t> prompt_rows(std::size_t(rows * prompts.tokens.cols));
    std::vector<std::uint8_t> prompt_mask(prompt_rows.size(), 1);
    for (index_t r = 0; r < rows; ++r)
      for (index_t p = 0; p < prompts.tokens.cols; ++p) {
        prompt_rows[r * prompts.tokens.cols + p] = prompts.tokens(r / sp.group_size, p);
        if (!prompts.mask.is_null()) prompt_mask[r * prompts.tokens.cols + p] = prompts.mask(r / sp.group_size, p);
      }
    polo::token_batch<> b{polo::view<const token_t, 2>{prompt_rows.data(), rows, prompts.tokens.cols, prompts.tokens.cols},
                          polo::view<const std::uint8_t, 2>{prompt_mask.data(), rows, prompts.tokens.cols,
                                                            prompts.tokens.cols},
                          polo::view<const token_t, 2>{completions.data, rows, T, completions.row_stride},
                          {}};
    std::vector<index_t> active(static_cast<std::size_t>(rows));
    for (index_t r = 0; r < rows; ++r) active[r] = r;
    std::vector<token_t> ctx;
    const double inv_temp = 1.0 / sp.temperature;
    std::vector<double> p(static_cast<std::size_t>(V));
    for (index_t t = 0; t < T && !active.empty(); ++t) {
      ctx.clear();
      for (index_t r : active) append_context(ctx, b, r, t, C, cfg_.pad, cfg_.shape.vocab);
      const matrix<Scalar>& logits = net_.forward(ctx, index_t(active.size()));
      std::vector<index_t> still;
      for (std::size_t k = 0; k < active.size(); ++k) {
        const index_t r = active[k];
        double mx = -INFINITY;
        for (index_t v = 0; v < V; ++v) mx = std::max(mx, double(logits(index_t(k), v)) * inv_temp);
        double z = 0;
        for (index_t v = 0; v < V; ++v) z += (p[v] = std::exp(double(logits(index_t(k), v)) * inv_temp - mx));
        double u = uniform_at(sp.seed, std::uint64_t(r), std::uint64_t(t)) * z, acc = 0;
        token_t tok = token_t(V - 1);
        for (index_t v = 0; v < V; ++v) {
          acc += p[v];
          if (u < acc) {
            tok = token_t(v);
            break;
          }
        }
        completions(r, t) = tok;
        mask(r, t) = 1;
        if (tok != cfg_.stop) still.push_back(r);
      }
      active.swap(still);
    }
  }

 private:
  void run(const polo::token_batch<>& b, polo::view<Scalar, 2> out, polo::view<Scalar, 2>* entropy) {
    const index_t V = cfg_.shape.vocab;
    tc_ = contexts_of(b, cfg_.shape.context, cfg_.pad, cfg_.shape.vocab);
    const index_t R = tc_.size();
    const matrix<Scalar>& logits = net_.forward(tc_.ctx, R);
    probs_.resize(R, V);
    for (index_t i = 0; i < b.size(); ++i)
      for (index_t t = 0; t < b.completion_len(); ++t) {
        out(i, t) = Scalar(0);
        if (entropy) (*entropy)(i, t) = Scalar(0);
      }
    for (index_t r = 0; r < R; ++r) {
      Scalar mx = logits.row(r).maxCoeff();
      probs_.row(r) = (logits.row(r).array() - mx).exp().matrix();
      Scalar z = probs_.row(r).sum();
      probs_.row(r) /= z;
      Scalar lse = mx + std::log(z);
      const index_t i = tc_.row[r], t = tc_.pos[r];
      out(i, t) = logits(r, b.completions(i, t)) - lse;
      if (entropy) {
        Scalar h = 0;
        for (index_t v = 0; v < V; ++v) h -= probs_(r, v) * (logits(r, v) - lse);
        (*entropy)(i, t) = h;
      }
    }
    cached_ = b;
  }

  policy_config cfg_{};
  mlp<Scalar> net_{};
  token_contexts tc_;
  matrix<Scalar> probs_;
  polo::token_batch<> cached_{};
};

// ---------------------------------------------------------------------------------------------
// The critic: a polo::Critic with the same trunk and a scalar head
// ---------------------------------------------------------------------------------------------

template <class Scalar>
class mlp_critic {
 public:
  using backend_type = polo::cpu;
  using value_type = Scalar;

  mlp_critic() = default;
  explicit mlp_critic(const policy_config& c) : cfg_(c) {
    cfg_.shape.outputs = 1;
    net_ = mlp<Scalar>(cfg_.shape);
  }
  void init(std::uint64_t seed) { net_.init(seed, 0.1); }
  mlp<Scalar>& net() { return net_; }

  /// Critic: values(i, t) = V(prefix before token t) at valid tokens, 0 at masked ones.
  void token_values(const polo::token_batch<>& b, polo::view<Scalar, 2> out) {
    tc_ = contexts_of(b, cfg_.shape.context, cfg_.pad, cfg_.shape.vocab);
    const matrix<Scalar>& v = net_.forward(tc_.ctx, tc_.size());
    for (index_t i = 0; i < b.size(); ++i)
      for (index_t t = 0; t < b.completion_len(); ++t) out(i, t) = Scalar(0);
    for (index_t r = 0; r < tc_.size(); ++r) out(tc_.row[r], tc_.pos[r]) = v(r, 0);
    cached_ = b;
  }
  /// Critic: grads += Σ g(i,t) ∂values(i,t)/∂φ.
  void value_backward(const polo::token_batch<>& b, polo::view<const Scalar, 2> g) {
    if (b.completions.data != cached_.completions.data || b.size() != cached_.size())
      throw std::logic_error("r1zero::mlp_critic::value_backward: call token_values on the same batch first");
    matrix<Scalar> dout(tc_.size(), 1);
    for (index_t r = 0; r < tc_.size(); ++r) dout(r, 0) = g(tc_.row[r], tc_.pos[r]);
    net_.backward(dout);
  }

 private:
  policy_config cfg_{};
  mlp<Scalar> net_{};
  token_contexts tc_;
  polo::token_batch<> cached_{};
};

// ---------------------------------------------------------------------------------------------
// Adam (Kingma and Ba), with optional global-norm gradient clipping and decoupled weight decay
// ---------------------------------------------------------------------------------------------

struct adam_config {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;  ///< decoupled (AdamW)
  double max_grad_norm = 0.0; ///< clip the global gradient norm to this; 0 = no clipping
};

template <class Scalar>
class adam {
 public:
  adam() = default;
  adam(index_t n, const adam_config& c) : cfg_(c), m_(vector<Scalar>::Zero(n)), v_(vector<Scalar>::Zero(n)) {}
  adam_config& config() { return cfg_; }

  /// One step on `params` from `grads`; returns the gradient norm before clipping.
  double step(vector<Scalar>& params, const vector<Scalar>& grads) {
    ++t_;
    double norm2 = 0;
    for (index_t k = 0; k < grads.size(); ++k) norm2 += double(grads[k]) * double(grads[k]);
    const double norm = std::sqrt(norm2);
    const double scale = cfg_.max_grad_norm > 0 && norm > cfg_.max_grad_norm ? cfg_.max_grad_norm / norm : 1.0;
    const double b1 = cfg_.beta1, b2 = cfg_.beta2;
    const double c1 = 1.0 - std::pow(b1, double(t_)), c2 = 1.0 - std::pow(b2, double(t_));
    const double lr = cfg_.lr, eps = cfg_.eps, wd = cfg_.weight_decay;
    for (index_t k = 0; k < params.size(); ++k) {
      const double g = double(grads[k]) * scale;
      const double m = b1 * double(m_[k]) + (1 - b1) * g;
      const double v = b2 * double(v_[k]) + (1 - b2) * g * g;
      m_[k] = Scalar(m);
      v_[k] = Scalar(v);
      double p = double(params[k]);
      p -= lr * ((m / c1) / (std::sqrt(v / c2) + eps) + wd * p);
      params[k] = Scalar(p);
    }
    return norm;
  }

 private:
  adam_config cfg_{};
  vector<Scalar> m_, v_;
  std::int64_t t_ = 0;
};

static_assert(polo::SamplingPolicy<mlp_policy<float>> && polo::TokenEntropyModel<mlp_policy<float>>,
              "r1zero::mlp_policy must model polo::SamplingPolicy and polo::TokenEntropyModel");
static_assert(polo::SamplingPolicy<mlp_policy<double>>, "r1zero::mlp_policy<double> must model polo::SamplingPolicy");
static_assert(polo::Critic<mlp_critic<float>>, "r1zero::mlp_critic must model polo::Critic");

}  // namespace r1zero
