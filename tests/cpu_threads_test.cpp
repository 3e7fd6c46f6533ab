// SPDX-FileCopyrightText: 2026 The polo authors
// SPDX-License-Identifier: Apache-2.0
// polo::cpu::threads: policy_loss, gae, discounted_returns, remax_advantages,
// reinforce_plus_plus, whiten, masked_moments, value_loss and kl_penalized_rewards give bitwise
// the results of the single-threaded call (outputs and every statistic) for every thread
// count, on batches large enough to use several threads (padded with left padding, interior
// masked spans and empty rows, and packed); a data error is the single-threaded call's error
// and writes nothing; and the row scheduler runs every row exactly once and rethrows the
// exception of the lowest row. CPU only (no CUDA twin).

#include "support/polo_test.hpp"

#include "polo/gae.hpp"
#include "polo/kl.hpp"
#include "polo/policy_loss.hpp"
#include "polo/value_loss.hpp"
#include "polo/whiten.hpp"
#include "polo/cpu/gae.hpp"
#include "polo/cpu/kl.hpp"
#include "polo/cpu/parallel.hpp"
#include "polo/cpu/policy_loss.hpp"
#include "polo/cpu/value_loss.hpp"
#include "polo/cpu/whiten.hpp"

#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>

namespace {

using namespace polo;
using polo::test::mask_pattern;

/// Bitwise equality of a statistics struct made of 8-byte fields (no padding bytes).
template <class S>
bool same_bits(const S& a, const S& b) {
  static_assert(sizeof(S) % 8 == 0, "8-byte fields only");
  return std::memcmp(&a, &b, sizeof(S)) == 0;
}
bool same_bits(const whiten_stats& a, const whiten_stats& b) {
  return same_bits(a.local, b.local) && same_bits(a.used, b.used) &&
         std::memcmp(&a.mean, &b.mean, sizeof(double)) == 0 &&
         std::memcmp(&a.inv_scale, &b.inv_scale, sizeof(double)) == 0 && a.degenerate == b.degenerate;
}
bool same_bits(const policy_loss_result& a, const policy_loss_result& b) {
  return std::memcmp(&a.loss, &b.loss, sizeof(double)) == 0 &&
         std::memcmp(&a.policy_loss, &b.policy_loss, sizeof(double)) == 0 &&
         std::memcmp(&a.kl_loss, &b.kl_loss, sizeof(double)) == 0 && same_bits(a.policy_parts, b.policy_parts) &&
         same_bits(a.kl_parts, b.kl_parts) && same_bits(a.stats, b.stats);
}

// A batch of 96 rows x 4,096 positions: 393,216 positions, so up to 6 threads take part.
constexpr index_t B = 96, Tn = 4096;
constexpr int thread_counts[] = {2, 3, 4, 7, 0};

/// A mask mixing the patterns the layouts must get right: left padding, interior masked
/// spans, right padding, random holes and empty rows, row blocks of each.
std::vector<std::uint8_t> mixed_mask(std::mt19937_64& g) {
  std::vector<std::uint8_t> m(static_cast<std::size_t>(B * Tn));
  const mask_pattern ps[] = {mask_pattern::left_pad, mask_pattern::interior_spans, mask_pattern::right_pad,
                             mask_pattern::random, mask_pattern::with_empty_rows, mask_pattern::all_valid};
  const index_t per = B / 6;
  for (int k = 0; k < 6; ++k) {
    auto part = test::make_mask(g, per, Tn, ps[k]);
    std::copy(part.begin(), part.end(), m.begin() + k * per * Tn);
  }
  return m;
}

TEST_CASE("cpu threads: the row scheduler runs every row once and rethrows the lowest row's exception",
          "[cpu][threads]") {
  for (int workers : {1, 2, 3, 8}) {
    for (index_t n : {index_t(0), index_t(1), index_t(5), index_t(97), index_t(1000)}) {
      std::vector<std::atomic<int>> hits(static_cast<std::size_t>(n));
      std::atomic<int> bad_worker{0};
      detail::cpu_parallel_rows(workers, n, [&](index_t i, int w) {
        hits[static_cast<std::size_t>(i)].fetch_add(1);
        if (w < 0 || w >= workers) bad_worker.fetch_add(1);
      });
      int wrong = 0;
      for (auto& h : hits) wrong += h.load() != 1;
      INFO("workers " << workers << ", rows " << n);
      CHECK(wrong == 0);
      CHECK(bad_worker.load() == 0);
    }
    // Rows 40, 41 and 700 throw: row 40's exception comes out, whichever thread met it first.
    std::atomic<int> done{0};
    try {
      detail::cpu_parallel_rows(workers, 1000, [&](index_t i, int) {
        done.fetch_add(1);
        if (i == 700 || i == 41 || i == 40) throw std::runtime_error("row " + std::to_string(i));
      });
      FAIL("no exception");
    } catch (const std::runtime_error& e) {
      CHECK(std::string(e.what()) == "row 40");
    }
    CHECK(done.load() == (workers == 1 ? 41 : 1000));  // one thread stops at row 40; several run every row
  }
  // How many threads a call uses.
  CHECK(detail::cpu_workers(cpu{}, 1000, 1e9) == 1);
  CHECK(detail::cpu_workers(cpu{.threads = 8}, 1000, 1e9) == 8);
  CHECK(detail::cpu_workers(cpu{.threads = 8}, 3, 1e9) == 3);                     // one per row at most
  CHECK(detail::cpu_workers(cpu{.threads = 8}, 1000, 3 * 65536.0) == 3);          // one per 65,536 tokens
  CHECK(detail::cpu_workers(cpu{.threads = 8}, 1000, 1000.0) == 1);               // small batch: this thread
  CHECK(detail::cpu_workers(cpu{.threads = 0}, 1000, 1e9) >= 1);                  // hardware concurrency
  CHECK(detail::cpu_workers(cpu{.threads = -3}, 1000, 1e9) >= 1);
}

TEST_CASE("cpu threads: policy_loss gives the single-threaded bits for every thread count", "[cpu][threads]") {
  auto g = test::rng(7101);
  const auto m = mixed_mask(g);
  auto lp = test::cast<float>(test::normal(g, B * Tn, -1.0, 0.5));
  auto lo = test::cast<float>(test::normal(g, B * Tn, -1.0, 0.5));
  auto lr = test::cast<float>(test::normal(g, B * Tn, -1.0, 0.5));
  auto a = test::cast<float>(test::normal(g, B * Tn));
  // Non-finite inputs at the first valid token of rows 3, 50 and 90 (3 is left-padded).
  auto first_valid = [&](index_t i) {
    for (index_t t = 0; t < Tn; ++t)
      if (m[i * Tn + t]) return i * Tn + t;
    return index_t(-1);
  };
  auto lp_bad = lp;
  for (index_t i : {3, 50, 90}) lp_bad[first_valid(i)] = std::numeric_limits<float>::quiet_NaN();
  padded<std::uint8_t> L(matrix_view_of(m, B, Tn));
  auto pk = test::pack(m, B, Tn);
  const index_t N = pk.tokens();
  packed<std::uint8_t, std::int64_t> P(view<const std::int64_t, 1, host_space>{pk.offsets.data(), B + 1, 1}, N,
                                        view<const std::uint8_t, 1, host_space>{pk.mask.data(), N, 1});

  policy_loss_config tok{.eps_high = 0.28, .dual_clip = 3.0, .kl_coef = 0.01};
  policy_loss_config tok_skip = tok;
  tok_skip.nonfinite = token_nonfinite_policy::skip;
  policy_loss_config tok_seq = tok;
  tok_seq.agg = aggregation::seq_mean_token_mean;
  policy_loss_config gspo_skip = presets::trl::gspo_loss;
  gspo_skip.nonfinite = token_nonfinite_policy::skip;
  struct cfg {
    const char* name;
    policy_loss_config c;
    bool bad;
  };
  const cfg cfgs[] = {{"default", policy_loss_config{}, false},
                      {"verl grpo k3", presets::verl::grpo_loss, false},
                      {"dual clip + k3, seq-mean-token-mean", tok_seq, false},
                      {"trl gspo", presets::trl::gspo_loss, false},
                      {"verl gspo", presets::verl::gspo_loss, false},
                      {"token skip with NaNs", tok_skip, true},
                      {"gspo skip with NaNs", gspo_skip, true}};
  for (const cfg& k : cfgs) {
    const auto& lpx = k.bad ? lp_bad : lp;
    auto run = [&](int threads, std::vector<float>& grad) {
      grad.assign(static_cast<std::size_t>(B * Tn), -5.0f);
      return policy_loss(cpu{.threads = threads}, L, matrix_view_of(lpx, B, Tn), matrix_view_of(lo, B, Tn),
                         matrix_view_of(lr, B, Tn), matrix_view_of(a, B, Tn), matrix_view_of(grad, B, Tn), k.c);
    };
    auto run_packed = [&](int threads, std::vector<float>& grad) {
      const std::vector<float> plp = pk.take(lpx), plo = pk.take(lo), plr = pk.take(lr), pa = pk.take(a);
      grad.assign(static_cast<std::size_t>(N), -5.0f);
      auto v1 = [&](const std::vector<float>& x) { return view<const float, 1, host_space>{x.data(), N, 1}; };
      return policy_loss(cpu{.threads = threads}, P, v1(plp), v1(plo), v1(plr), v1(pa),
                         view<float, 1, host_space>{grad.data(), N, 1}, k.c);
    };
    std::vector<float> g1, gp1;
    const auto r1 = run(1, g1);
    const auto rp1 = run_packed(1, gp1);
    INFO(k.name);
    if (k.bad) CHECK(r1.stats.nonfinite_tokens == 3);
    CHECK(std::isfinite(r1.loss));
    for (int threads : thread_counts) {
      INFO("threads " << threads);
      std::vector<float> gt, gpt;
      const auto rt = run(threads, gt);
      CHECK(same_bits(r1, rt));
      CHECK(test::bitwise_equal(g1, gt));
      const auto rpt = run_packed(threads, gpt);
      CHECK(same_bits(rp1, rpt));
      CHECK(test::bitwise_equal(gp1, gpt));
    }
  }

  // Under the error policy: the same exception as one thread, and the gradient untouched.
  for (int threads : {1, 4}) {
    std::vector<float> grad(static_cast<std::size_t>(B * Tn), -5.0f);
    std::string what;
    try {
      (void)policy_loss(cpu{.threads = threads}, L, matrix_view_of(lp_bad, B, Tn), matrix_view_of(lo, B, Tn),
                        matrix_view_of(lr, B, Tn), matrix_view_of(a, B, Tn), matrix_view_of(grad, B, Tn), tok);
    } catch (const nonfinite_error& e) {
      what = e.what();
    }
    INFO("threads " << threads << ": " << what);
    CHECK(what.find("logp") != std::string::npos);
    CHECK(what.find(std::to_string(first_valid(3))) != std::string::npos);  // row 3 comes first
    bool untouched = true;
    for (float x : grad) untouched = untouched && x == -5.0f;
    CHECK(untouched);
  }
}

TEST_CASE("cpu threads: gae, discounted_returns and remax give the single-threaded bits for every thread count",
          "[cpu][threads]") {
  auto g = test::rng(7102);
  const auto m = mixed_mask(g);
  auto r = test::cast<float>(test::normal(g, B * Tn, 0.1, 1.0));
  auto v = test::cast<float>(test::normal(g, B * Tn, 0.3, 1.0));
  std::vector<int> trunc(static_cast<std::size_t>(B), 0);
  std::vector<float> boot(static_cast<std::size_t>(B), 0.0f);
  for (index_t i = 0; i < B; i += 5) trunc[static_cast<std::size_t>(i)] = 1, boot[static_cast<std::size_t>(i)] = 0.5f;
  std::vector<float> base = test::cast<float>(test::normal(g, B, 0.0, 1.0));
  padded<std::uint8_t> L(matrix_view_of(m, B, Tn));
  auto vB = [](const auto& x) { return view<const std::remove_cvref_t<decltype(x[0])>, 1, host_space>{x.data(), B, 1}; };

  const gae_config gaes[] = {gae_config{}, presets::openrlhf::gae, presets::nemo::gae_vapo,
                             gae_config{.gamma = 0.99, .lambda = 0.9, .fill = masked_fill::recursion},
                             gae_config{.gamma = 0.99, .mask = gae_mask_mode::through, .returns = gae_returns::value_lambda}};
  for (const gae_config& c : gaes) {
    for (bool with_boot : {false, true}) {
      auto run = [&](int threads, std::vector<float>& A, std::vector<float>& R) {
        A.assign(static_cast<std::size_t>(B * Tn), -7.0f);
        R.assign(static_cast<std::size_t>(B * Tn), -7.0f);
        if (with_boot)
          return gae(cpu{.threads = threads}, L, matrix_view_of(r, B, Tn), matrix_view_of(v, B, Tn), vB(trunc),
                     vB(boot), matrix_view_of(A, B, Tn), matrix_view_of(R, B, Tn), c);
        return gae(cpu{.threads = threads}, L, matrix_view_of(r, B, Tn), matrix_view_of(v, B, Tn),
                   matrix_view_of(A, B, Tn), matrix_view_of(R, B, Tn), c);
      };
      std::vector<float> A1, R1;
      const gae_stats s1 = run(1, A1, R1);
      CHECK(s1.tokens > 0);
      for (int threads : thread_counts) {
        INFO("threads " << threads << ", bootstrap " << with_boot);
        std::vector<float> At, Rt;
        const gae_stats st = run(threads, At, Rt);
        CHECK(same_bits(s1, st));
        CHECK(test::bitwise_equal(A1, At));
        CHECK(test::bitwise_equal(R1, Rt));
      }
    }
  }
  // discounted returns and ReMax
  for (int threads : thread_counts) {
    INFO("threads " << threads);
    std::vector<float> R1(static_cast<std::size_t>(B * Tn), -7.0f), Rt = R1, A1 = R1, At = R1;
    const returns_config rc{0.99};
    const auto s1 = discounted_returns(cpu{}, L, matrix_view_of(r, B, Tn), matrix_view_of(R1, B, Tn), rc);
    const auto st = discounted_returns(cpu{.threads = threads}, L, matrix_view_of(r, B, Tn), matrix_view_of(Rt, B, Tn), rc);
    CHECK(same_bits(s1, st));
    CHECK(test::bitwise_equal(R1, Rt));
    const auto x1 = remax_advantages(cpu{}, L, matrix_view_of(r, B, Tn), vB(base), matrix_view_of(A1, B, Tn),
                                     matrix_view_of(R1, B, Tn), rc);
    const auto xt = remax_advantages(cpu{.threads = threads}, L, matrix_view_of(r, B, Tn), vB(base),
                                     matrix_view_of(At, B, Tn), matrix_view_of(Rt, B, Tn), rc);
    CHECK(same_bits(x1, xt));
    CHECK(test::bitwise_equal(A1, At));
    CHECK(test::bitwise_equal(R1, Rt));
  }
  // A data error: the single-threaded call's message (first bad row in row order), nothing written.
  auto r_bad = r;
  auto v_bad = v;
  auto first_valid = [&](index_t i) {
    for (index_t t = 0; t < Tn; ++t)
      if (m[i * Tn + t]) return i * Tn + t;
    return index_t(-1);
  };
  v_bad[first_valid(20)] = std::numeric_limits<float>::infinity();  // row 20: values
  r_bad[first_valid(60)] = std::numeric_limits<float>::quiet_NaN();  // row 60: rewards
  std::string want;
  for (int threads : {1, 2, 4, 0}) {
    std::vector<float> A(static_cast<std::size_t>(B * Tn), -7.0f), R = A;
    std::string what;
    try {
      (void)gae(cpu{.threads = threads}, L, matrix_view_of(r_bad, B, Tn), matrix_view_of(v_bad, B, Tn),
                matrix_view_of(A, B, Tn), matrix_view_of(R, B, Tn), gae_config{});
    } catch (const nonfinite_error& e) {
      what = e.what();
    }
    if (threads == 1) want = what;
    INFO("threads " << threads << ": " << what);
    CHECK(!what.empty());
    CHECK(what == want);
    CHECK(what.find("values") != std::string::npos);
    bool untouched = true;
    for (std::size_t k = 0; k < A.size(); ++k) untouched = untouched && A[k] == -7.0f && R[k] == -7.0f;
    CHECK(untouched);
  }
}

TEST_CASE("cpu threads: whiten, masked_moments, value_loss and reinforce_plus_plus give the single-threaded bits",
          "[cpu][threads]") {
  auto g = test::rng(7103);
  const auto m = mixed_mask(g);
  auto x = test::cast<float>(test::normal(g, B * Tn, 3.0, 5.0));
  auto vo = test::cast<float>(test::normal(g, B * Tn));
  auto v = vo;
  const auto d = test::normal(g, B * Tn, 0.0, 0.3);
  for (std::size_t k = 0; k < v.size(); ++k) v[k] += float(d[k]);
  auto R = test::cast<float>(test::normal(g, B * Tn, 0.2, 1.0));
  padded<std::uint8_t> L(matrix_view_of(m, B, Tn));
  auto mat = [](const std::vector<float>& a) { return matrix_view_of(a, B, Tn); };

  const moments m1 = masked_moments(cpu{}, L, mat(x));
  std::vector<float> o1(static_cast<std::size_t>(B * Tn), -7.0f);
  const whiten_stats w1 = whiten(cpu{}, L, mat(x), matrix_view_of(o1, B, Tn));
  const value_loss_config vcs[] = {
      {.clip = value_clip::clamp_value, .clip_range = 0.2, .agg = aggregation::token_mean},
      {.clip = value_clip::none, .agg = aggregation::seq_mean_token_mean},
      {.clip = value_clip::clamp_delta, .clip_range = 0.5, .agg = aggregation::seq_mean_token_sum}};
  for (int threads : thread_counts) {
    INFO("threads " << threads);
    const cpu be{.threads = threads};
    CHECK(same_bits(m1, masked_moments(be, L, mat(x))));
    std::vector<float> ot(static_cast<std::size_t>(B * Tn), -7.0f);
    CHECK(same_bits(w1, whiten(be, L, mat(x), matrix_view_of(ot, B, Tn))));
    CHECK(test::bitwise_equal(o1, ot));
    for (const value_loss_config& c : vcs) {
      std::vector<float> g1(static_cast<std::size_t>(B * Tn), -7.0f), gt = g1;
      const value_loss_stats s1 = value_loss(cpu{}, L, mat(v), mat(vo), mat(R), matrix_view_of(g1, B, Tn), c);
      const value_loss_stats st = value_loss(be, L, mat(v), mat(vo), mat(R), matrix_view_of(gt, B, Tn), c);
      CHECK(same_bits(s1, st));
      CHECK(test::bitwise_equal(g1, gt));
    }
    std::vector<float> R1(static_cast<std::size_t>(B * Tn), -7.0f), A1 = R1, Rt = R1, At = R1;
    const auto p1 = reinforce_plus_plus(cpu{}, L, mat(x), matrix_view_of(R1, B, Tn), matrix_view_of(A1, B, Tn));
    const auto pt = reinforce_plus_plus(be, L, mat(x), matrix_view_of(Rt, B, Tn), matrix_view_of(At, B, Tn));
    CHECK(same_bits(p1.returns, pt.returns));
    CHECK(same_bits(p1.whiten, pt.whiten));
    CHECK(test::bitwise_equal(R1, Rt));
    CHECK(test::bitwise_equal(A1, At));
  }
  // value_loss: the single-threaded error (first bad row in row order), nothing written.
  auto first_valid = [&](index_t i) {
    for (index_t t = 0; t < Tn; ++t)
      if (m[static_cast<std::size_t>(i * Tn + t)]) return static_cast<std::size_t>(i * Tn + t);
    return std::size_t(0);
  };
  auto v_bad = v;
  auto R_bad = R;
  v_bad[first_valid(70)] = std::numeric_limits<float>::quiet_NaN();  // row 70: values
  R_bad[first_valid(30)] = std::numeric_limits<float>::infinity();   // row 30: returns, the first in row order
  std::string want;
  for (int threads : {1, 3}) {
    std::vector<float> gr(static_cast<std::size_t>(B * Tn), -7.0f);
    std::string what;
    try {
      (void)value_loss(cpu{.threads = threads}, L, mat(v_bad), mat(vo), mat(R_bad), matrix_view_of(gr, B, Tn),
                       vcs[0]);
    } catch (const nonfinite_error& e) {
      what = e.what();
    }
    if (threads == 1) want = what;
    INFO("threads " << threads << ": " << what);
    CHECK(what.find("returns") != std::string::npos);  // row 30 comes before row 70
    CHECK(what == want);
    bool untouched = true;
    for (float q : gr) untouched = untouched && q == -7.0f;
    CHECK(untouched);
  }
}

TEST_CASE("cpu threads: kl_penalized_rewards gives the single-threaded bits, in place too", "[cpu][threads]") {
  auto g = test::rng(7104);
  const auto m = mixed_mask(g);
  const auto r = test::cast<float>(test::normal(g, B * Tn, 0.1, 1.0));
  const auto lo = test::cast<float>(test::normal(g, B * Tn, -1.0, 0.5));
  auto lr = test::cast<float>(test::normal(g, B * Tn, -1.0, 0.5));
  lr[static_cast<std::size_t>(7 * Tn + 100)] = 40.0f;  // a clamp, wherever it lands
  padded<std::uint8_t> L(matrix_view_of(m, B, Tn));
  auto mat = [](const std::vector<float>& a) { return matrix_view_of(a, B, Tn); };
  const kl_config kls[] = {presets::verl::low_var_kl, presets::verl::kl_k1, presets::openrlhf::kl_k2};
  for (const kl_config& kl : kls) {
    std::vector<float> o1(static_cast<std::size_t>(B * Tn), -7.0f);
    const kl_reward_stats s1 = kl_penalized_rewards(cpu{}, L, mat(r), mat(lo), mat(lr), matrix_view_of(o1, B, Tn), 0.05, kl);
    CHECK(s1.tokens > 0);
    for (int threads : thread_counts) {
      INFO("threads " << threads);
      std::vector<float> ot(static_cast<std::size_t>(B * Tn), -7.0f);
      const kl_reward_stats st =
          kl_penalized_rewards(cpu{.threads = threads}, L, mat(r), mat(lo), mat(lr), matrix_view_of(ot, B, Tn), 0.05, kl);
      CHECK(same_bits(s1, st));
      CHECK(test::bitwise_equal(o1, ot));
      std::vector<float> inplace = r;  // out aliases rewards
      const kl_reward_stats si = kl_penalized_rewards(cpu{.threads = threads}, L, mat(inplace), mat(lo), mat(lr),
                                                      matrix_view_of(inplace, B, Tn), 0.05, kl);
      CHECK(same_bits(s1, si));
      CHECK(test::bitwise_equal(o1, inplace));
    }
  }
  // The first non-finite input in row order is the error, whatever the thread count.
  auto lo_bad = lo;
  auto r_bad = r;
  for (index_t t = 0; t < Tn; ++t)
    if (m[static_cast<std::size_t>(41 * Tn + t)]) {
      lo_bad[static_cast<std::size_t>(41 * Tn + t)] = std::numeric_limits<float>::quiet_NaN();
      break;
    }
  for (index_t t = 0; t < Tn; ++t)
    if (m[static_cast<std::size_t>(80 * Tn + t)]) {
      r_bad[static_cast<std::size_t>(80 * Tn + t)] = std::numeric_limits<float>::infinity();
      break;
    }
  for (int threads : {1, 4}) {
    std::vector<float> o(static_cast<std::size_t>(B * Tn), -7.0f);
    std::string what;
    try {
      (void)kl_penalized_rewards(cpu{.threads = threads}, L, mat(r_bad), mat(lo_bad), mat(lr), matrix_view_of(o, B, Tn),
                                 0.05, presets::verl::low_var_kl);
    } catch (const nonfinite_error& e) {
      what = e.what();
    }
    INFO("threads " << threads << ": " << what);
    CHECK(what.find("logp_old") != std::string::npos);  // row 41 before row 80
    bool untouched = true;
    for (float q : o) untouched = untouched && q == -7.0f;
    CHECK(untouched);
  }
}

}  // namespace
