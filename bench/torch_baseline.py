#!/usr/bin/env python3
# SPDX-FileCopyrightText: 2026 The polo authors
# SPDX-License-Identifier: Apache-2.0
"""The code users run today, timed on the same inputs and sizes as polo's CUDA benchmarks.

Each primitive is written the way the trainers write it (verl, TRL, OpenRLHF), in eager
PyTorch and through torch.compile, and timed with CUDA events after a warm-up; the median of
the repetitions is reported. Output: one JSON document (--out) with the device, the driver,
the PyTorch version, the copy bandwidth measured in this process, the numerical checks and one
record per (primitive, implementation, B, T).

Primitives (names shared with bench/sweep_bench.cu and bench/step_bench.cu):

  group_advantages  GRPO: scores [B] -> per-group mean/std (G = 16) -> advantages [B] ->
                    broadcast onto the valid tokens [B,T]. Vectorized view(-1, G) (TRL), and
                    the per-sample dict loop of verl's compute_grpo_outcome_advantage.
  policy_loss       clipped surrogate with clip-higher (0.2/0.28) and dual clip (3), plus the
                    k3 KL to a reference (verl low_var_kl: input clamp 20, output clamp 10,
                    coefficient 0.001), token-mean, forward AND backward (dloss/dlogp), with the
                    statistics trainers log (ppo_kl, clip fractions).
  gae               verl's reversed Python loop over T (mask-aware carry), advantages and
                    returns. torch.compile is not applied: compiling a T-step Python loop
                    unrolls T steps (minutes of compile time at T = 4096).
  whiten            verl masked_whiten (masked mean, unbiased masked variance, rsqrt(var+1e-8)).
  value_loss        verl compute_value_loss (clip 0.5, max of the two squared errors, 1/2
                    token-mean), forward and backward (dloss/dvalues), with vf_clipfrac.
  kl_rewards        verl apply_kl_penalty: rewards - beta * (logp_old - logp_ref) * mask.
  grpo_step         group_advantages + policy_loss (with its KL term): one GRPO step's RL math.
  ppo_step          kl_rewards + gae + whiten + policy_loss (no KL term: PPO puts the KL in the
                    reward) + value_loss + the critic's extra [B,T] pass, modelled as one
                    read and one write of a [B,T] fp32 value tensor (docs/benchmarks.md).

Inputs: fp32, a right-padded mask with about 10% of the tokens masked out (each row's length
uniform in [0.8 T, T], as bench/support/bench_support.hpp's right_padded_mask), G = 16.
Trainers keep the mask as a float tensor, and so does this script; the memory floor of every
record is nevertheless polo's (a uint8 mask), so that polo and PyTorch are measured against
the same floor: floor = bytes / copy bandwidth, bytes = each input read once and each output
written once (see BYTES_PER_TOKEN). The baselines run no host-synchronizing checks (verl's
masked_var raises on an empty mask after a .item(); this script leaves that out), which only
favours PyTorch.

Inputs are rotated among several copies when one set would fit in the L2 cache (50 MB on an
H100), so small sizes are not timed out of the cache.

Run: python3 bench/torch_baseline.py --out results.json            (headline sizes + sweeps)
     python3 bench/torch_baseline.py --quick --out smoke.json       (small sizes, seconds)
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import math
import os
import statistics
import subprocess
import sys
import time

import torch

# --------------------------------------------------------------------------------------------
# Sizes and bytes (the same as bench/sweep_bench.cu)
# --------------------------------------------------------------------------------------------

G = 16  # answers per prompt
HEADLINE = [(512, 4096), (1024, 8192)]
SWEEP_TOKENS_T = 4096  # token sweep: T fixed, B = tokens / T, tokens = 2^16 .. 2^24
SWEEP_TOKENS = [2**k for k in range(16, 25)]
SWEEP_SEQLEN_N = 2**22  # sequence-length sweep: tokens fixed, T = 2^8 .. 2^16
SWEEP_SEQLEN_T = [2**k for k in (8, 10, 12, 14, 16)]

# Bytes each primitive must move per token (fp32 tensors, uint8 mask), and per sequence.
# Every input read once, every output written once: the floor's numerator.
BYTES_PER_TOKEN = {
    "group_advantages": 4 + 1,       # token advantages out, mask in
    "policy_loss": 4 * 4 + 1 + 4,    # logp, logp_old, logp_ref, advantages, mask in; grad out
    "gae": 2 * 4 + 1 + 2 * 4,        # rewards, values, mask in; advantages, returns out
    "whiten": 4 + 1 + 4,             # x, mask in; out
    "value_loss": 3 * 4 + 1 + 4,     # values, old values, returns, mask in; grad out
    "kl_rewards": 3 * 4 + 1 + 4,     # rewards, logp_old, logp_ref, mask in; rewards out
    # Steps: the sum of their parts' floors (each part's tensors are read and written once
    # per part, as separate calls move them), plus the modelled critic pass for PPO.
    "grpo_step": (4 + 1) + (4 * 4 + 1 + 4),
    "ppo_step": (3 * 4 + 1 + 4) + (2 * 4 + 1 + 2 * 4) + (4 + 1 + 4) + (3 * 4 + 1 + 4)
    + (3 * 4 + 1 + 4) + (4 + 4),
}
BYTES_PER_SEQ = {"group_advantages": 8, "grpo_step": 8}


# Which tensors of an input set each primitive reads (for its memory: inputs + what the call
# allocates). Masks are float here, as trainers keep them.
INPUTS = {
    "group_advantages": ("scores", "mask"),
    "policy_loss": ("logp", "logp_old", "logp_ref", "adv", "mask"),
    "gae": ("rewards", "values", "mask"),
    "whiten": ("rewards", "mask"),
    "value_loss": ("values_new", "returns", "values", "mask"),
    "kl_rewards": ("rewards", "logp_old", "logp_ref", "mask"),
    "grpo_step": ("scores", "mask", "logp", "logp_old", "logp_ref"),
    "ppo_step": ("rewards", "mask", "logp", "logp_old", "logp_ref", "values", "values_new", "critic_out"),
}


def floor_bytes(prim: str, B: int, T: int) -> float:
    return float(BYTES_PER_TOKEN[prim]) * B * T + float(BYTES_PER_SEQ.get(prim, 0)) * B


# --------------------------------------------------------------------------------------------
# The code users run (verl / TRL / OpenRLHF style)
# --------------------------------------------------------------------------------------------


def masked_mean(values, mask, axis=None):
    """verl.utils.torch_functional.masked_mean."""
    s = (values * mask).sum() if axis is None else (values * mask).sum(axis=axis)
    n = mask.sum() if axis is None else mask.sum(axis=axis)
    return s / (n + 1e-8)


def masked_var(values, mask, unbiased=True):
    """verl masked_var, without its host-synchronizing empty-mask check."""
    mean = masked_mean(values, mask)
    centered = values - mean
    variance = masked_mean(centered**2, mask)
    if unbiased:
        mask_sum = mask.sum()
        variance = variance * (mask_sum / (mask_sum - 1))
    return variance


def masked_whiten(values, mask, shift_mean=True):
    """verl masked_whiten."""
    mean, var = masked_mean(values, mask), masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened


def grpo_advantages_vectorized(scores, mask, group_size=G, eps=1e-6):
    """TRL GRPOTrainer: view(-1, G) mean/std, repeat_interleave; then the token broadcast."""
    grouped = scores.view(-1, group_size)
    mean = grouped.mean(dim=1).repeat_interleave(group_size, dim=0)
    std = grouped.std(dim=1).repeat_interleave(group_size, dim=0)
    adv = (scores - mean) / (std + eps)
    return adv, adv.unsqueeze(-1) * mask


def grpo_advantages_dictloop(scores, mask, index, eps=1e-6):
    """verl compute_grpo_outcome_advantage (from the per-sequence scores on): a Python dict of
    per-group score lists, torch.mean/torch.std per group, one indexed update per sample."""
    scores = scores.clone()
    id2score = collections.defaultdict(list)
    id2mean, id2std = {}, {}
    with torch.no_grad():
        bsz = scores.shape[0]
        for i in range(bsz):
            id2score[index[i]].append(scores[i])
        for idx in id2score:
            if len(id2score[idx]) == 1:
                id2mean[idx] = torch.tensor(0.0, device=scores.device)
                id2std[idx] = torch.tensor(1.0, device=scores.device)
            else:
                t = torch.stack(id2score[idx])
                id2mean[idx] = torch.mean(t)
                id2std[idx] = torch.std(t)
        for i in range(bsz):
            scores[i] = (scores[i] - id2mean[index[i]]) / (id2std[index[i]] + eps)
        return scores, scores.unsqueeze(-1) * mask


def policy_loss_fn(logp, logp_old, logp_ref, adv, mask, eps_low=0.2, eps_high=0.28, clip_c=3.0,
                   kl_coef=0.001, use_kl=True):
    """verl compute_policy_loss_vanilla (dual clip) + kl_penalty('low_var_kl') + agg_loss
    ('token-mean'); returns the loss and the statistics verl logs."""
    negative_approx_kl = torch.clamp(logp - logp_old, min=-20.0, max=20.0)
    ratio = torch.exp(negative_approx_kl)
    ppo_kl = masked_mean(-negative_approx_kl, mask)
    pg_losses1 = -adv * ratio
    pg_losses2 = -adv * torch.clamp(ratio, 1 - eps_low, 1 + eps_high)
    clip_pg_losses1 = torch.maximum(pg_losses1, pg_losses2)
    pg_clipfrac = masked_mean(torch.gt(pg_losses2, pg_losses1).float(), mask)
    pg_losses3 = -adv * clip_c
    clip_pg_losses2 = torch.min(pg_losses3, clip_pg_losses1)
    pg_clipfrac_lower = masked_mean(torch.gt(clip_pg_losses1, pg_losses3) * (adv < 0).float(), mask)
    pg_losses = torch.where(adv < 0, clip_pg_losses2, clip_pg_losses1)
    pg_loss = masked_mean(pg_losses, mask)
    if not use_kl:
        return pg_loss, ppo_kl, pg_clipfrac, pg_clipfrac_lower
    kl = torch.clamp(logp_ref - logp, min=-20.0, max=20.0)
    kld = torch.clamp(torch.exp(kl) - kl - 1, min=-10.0, max=10.0)
    kl_loss = masked_mean(kld, mask)
    return pg_loss + kl_coef * kl_loss, ppo_kl, pg_clipfrac, pg_clipfrac_lower


def policy_loss_nokl_fn(logp, logp_old, adv, mask):
    return policy_loss_fn(logp, logp_old, None, adv, mask, use_kl=False)


def clip_by_value(x, tensor_min, tensor_max):
    """verl.utils.torch_functional.clip_by_value."""
    return torch.max(torch.min(x, tensor_max), tensor_min)


def value_loss_fn(vpreds, returns, values, mask, cliprange_value=0.5):
    """verl compute_value_loss (token-mean)."""
    vpredclipped = clip_by_value(vpreds, values - cliprange_value, values + cliprange_value)
    vf_losses1 = (vpreds - returns) ** 2
    vf_losses2 = (vpredclipped - returns) ** 2
    clipped_vf_losses = torch.max(vf_losses1, vf_losses2)
    vf_loss = 0.5 * masked_mean(clipped_vf_losses, mask)
    vf_clipfrac = masked_mean(torch.gt(vf_losses2, vf_losses1).float(), mask)
    return vf_loss, vf_clipfrac


def kl_rewards_fn(scores, logp_old, logp_ref, mask, beta=0.001):
    """verl apply_kl_penalty with kl_penalty='kl' (k1)."""
    kld = (logp_old - logp_ref) * mask
    rewards = scores - beta * kld
    current_kl = masked_mean(kld, mask, axis=-1).mean()
    return rewards, current_kl


def gae_loop(token_level_rewards, values, response_mask, gamma=1.0, lam=0.95):
    """verl compute_gae_advantage_return's recursion (masked positions carry the next value and
    the running advantage), without its final whitening (timed separately as `whiten`)."""
    with torch.no_grad():
        nextvalues = 0
        lastgaelam = 0
        advantages_reversed = []
        gen_len = token_level_rewards.shape[-1]
        for t in reversed(range(gen_len)):
            delta = token_level_rewards[:, t] + gamma * nextvalues - values[:, t]
            lastgaelam_ = delta + gamma * lam * lastgaelam
            nextvalues = values[:, t] * response_mask[:, t] + (1 - response_mask[:, t]) * nextvalues
            lastgaelam = lastgaelam_ * response_mask[:, t] + (1 - response_mask[:, t]) * lastgaelam
            advantages_reversed.append(lastgaelam)
        advantages = torch.stack(advantages_reversed[::-1], dim=1)
        returns = advantages + values
        return advantages, returns


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


def right_padded_mask(B, T, gen, device, valid=0.9):
    """Each row's valid length uniform in [(2*valid-1) T, T] (bench_support.hpp's mask)."""
    u = torch.rand(B, generator=gen, device=device) * (2 * (1 - valid)) + (2 * valid - 1)
    lengths = (u.clamp(0, 1) * T).long()
    return (torch.arange(T, device=device).unsqueeze(0) < lengths.unsqueeze(1)).float()


def make_inputs(B, T, seed, device, dtype=torch.float32):
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)

    def normal(*shape, mean=0.0, std=1.0):
        return torch.randn(*shape, generator=gen, device=device, dtype=dtype) * std + mean

    mask = right_padded_mask(B, T, gen, device).to(dtype)
    scores = normal(B)
    logp_old = -normal(B, T).abs() - 0.05
    logp = logp_old + normal(B, T, std=0.1)
    logp_ref = logp_old + normal(B, T, std=0.1)
    adv_seq = normal(B)
    adv = adv_seq.unsqueeze(-1) * mask
    rewards = normal(B, T)
    values = normal(B, T)
    values_new = values + normal(B, T, std=0.3)
    returns = values + normal(B, T)
    return dict(mask=mask, scores=scores, logp=logp, logp_old=logp_old, logp_ref=logp_ref,
                adv=adv, rewards=rewards, values=values, values_new=values_new, returns=returns,
                critic_out=torch.empty_like(values))


def input_sets(B, T, device, l2_bytes, seed=1234):
    """Enough copies of the inputs that cycling through them does not run out of L2."""
    one = floor_bytes("ppo_step", B, T)
    k = 1 if one > 4 * l2_bytes else min(16, max(2, math.ceil(4 * l2_bytes / max(one, 1.0))))
    return [make_inputs(B, T, seed + i, device) for i in range(k)]


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


def time_cuda(fn, warmup=5, reps=30, budget_s=3.0, min_reps=3):
    """CUDA-event time of fn(i) (i = repetition index): warm-up, then repetitions until `reps`
    or the time budget (at least `min_reps`). Returns (median, min, n) in seconds."""
    for i in range(warmup):
        fn(i)
    torch.cuda.synchronize()
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    times = []
    t0 = time.perf_counter()
    for i in range(reps):
        start.record()
        fn(i)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e-3)
        if len(times) >= min_reps and time.perf_counter() - t0 > budget_s:
            break
    return statistics.median(times), min(times), len(times)


def copy_bandwidth(device, nbytes=1 << 30):
    """Device-to-device copy: bytes read + bytes written per second (median of 20)."""
    n = nbytes // 4
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    med, _, _ = time_cuda(lambda i: dst.copy_(src), warmup=3, reps=20, budget_s=5.0)
    del src, dst
    torch.cuda.empty_cache()
    return 2.0 * n * 4 / med


def peak_bytes(fn):
    """Peak bytes allocated by PyTorch while fn() runs, above what was allocated before it (the
    inputs are counted separately by the caller)."""
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


# --------------------------------------------------------------------------------------------
# The timed cases
# --------------------------------------------------------------------------------------------


class Compiled:
    """torch.compile'd versions: static shapes for the headline sizes (one compile per shape,
    the fastest code), dynamic shapes for the sweeps (one compile reused across sizes, so a
    sweep does not spend minutes compiling)."""

    def __init__(self):
        self.static = {}
        self.dynamic = {}

    def get(self, fn, dynamic):
        table = self.dynamic if dynamic else self.static
        if fn not in table:
            table[fn] = torch.compile(fn, dynamic=dynamic)
        return table[fn]


def cases_for(B, T, sets, compiled, dynamic, kinds, index_labels):
    """(primitive, impl, callable(i)) for one size."""
    k = len(sets)
    cases = []

    def S(i):
        return sets[i % k]

    # group advantages
    def adv_eager(i, f=grpo_advantages_vectorized):
        s = S(i)
        return f(s["scores"], s["mask"])

    cases.append(("group_advantages", "torch_eager", adv_eager))
    if "compile" in kinds:
        cadv = compiled.get(grpo_advantages_vectorized, dynamic)
        cases.append(("group_advantages", "torch_compile", lambda i: adv_eager(i, cadv)))
    if "loop" in kinds:
        cases.append(("group_advantages", "torch_dictloop",
                      lambda i: grpo_advantages_dictloop(S(i)["scores"], S(i)["mask"], index_labels)))

    # policy loss forward + backward
    def pl(i, f=policy_loss_fn):
        s = S(i)
        s["logp"].grad = None
        out = f(s["logp"], s["logp_old"], s["logp_ref"], s["adv"], s["mask"])
        out[0].backward()

    cases.append(("policy_loss", "torch_eager", pl))
    if "compile" in kinds:
        cpl = compiled.get(policy_loss_fn, dynamic)
        cases.append(("policy_loss", "torch_compile", lambda i: pl(i, cpl)))

    # GAE: the Python loop only
    if "loop" in kinds:
        cases.append(("gae", "torch_loop", lambda i: gae_loop(S(i)["rewards"], S(i)["values"], S(i)["mask"])))

    # whitening
    def wh(i, f=masked_whiten):
        s = S(i)
        return f(s["rewards"], s["mask"])

    cases.append(("whiten", "torch_eager", wh))
    if "compile" in kinds:
        cwh = compiled.get(masked_whiten, dynamic)
        cases.append(("whiten", "torch_compile", lambda i: wh(i, cwh)))

    # value loss forward + backward
    def vl(i, f=value_loss_fn):
        s = S(i)
        s["values_new"].grad = None
        out = f(s["values_new"], s["returns"], s["values"], s["mask"])
        out[0].backward()

    cases.append(("value_loss", "torch_eager", vl))
    if "compile" in kinds:
        cvl = compiled.get(value_loss_fn, dynamic)
        cases.append(("value_loss", "torch_compile", lambda i: vl(i, cvl)))

    # KL reward shaping
    def klr(i, f=kl_rewards_fn):
        s = S(i)
        return f(s["rewards"], s["logp_old"], s["logp_ref"], s["mask"])

    cases.append(("kl_rewards", "torch_eager", klr))
    if "compile" in kinds:
        cklr = compiled.get(kl_rewards_fn, dynamic)
        cases.append(("kl_rewards", "torch_compile", lambda i: klr(i, cklr)))

    # whole steps
    def grpo_step(i, fadv=grpo_advantages_vectorized, fpl=policy_loss_fn):
        s = S(i)
        _, tok = fadv(s["scores"], s["mask"])
        s["logp"].grad = None
        out = fpl(s["logp"], s["logp_old"], s["logp_ref"], tok, s["mask"])
        out[0].backward()

    def ppo_step(i, fklr=kl_rewards_fn, fwh=masked_whiten, fpl=policy_loss_nokl_fn, fvl=value_loss_fn):
        s = S(i)
        rewards, _ = fklr(s["rewards"], s["logp_old"], s["logp_ref"], s["mask"])
        adv, ret = gae_loop(rewards, s["values"], s["mask"])
        adv = fwh(adv, s["mask"])
        s["logp"].grad = None
        out = fpl(s["logp"], s["logp_old"], adv, s["mask"])
        out[0].backward()
        # The critic's extra pass, modelled as one read and one write of a [B,T] value tensor
        # (the new values the critic's forward produces for the value loss).
        s["critic_out"].copy_(s["values"])
        s["values_new"].grad = None
        vout = fvl(s["values_new"], ret, s["values"], s["mask"])
        vout[0].backward()

    cases.append(("grpo_step", "torch_eager", grpo_step))
    if "loop" in kinds:
        cases.append(("ppo_step", "torch_eager", ppo_step))
    if "compile" in kinds:
        cg = (compiled.get(grpo_advantages_vectorized, dynamic), compiled.get(policy_loss_fn, dynamic))
        cases.append(("grpo_step", "torch_compile", lambda i: grpo_step(i, *cg)))
        if "loop" in kinds:
            cp = (compiled.get(kl_rewards_fn, dynamic), compiled.get(masked_whiten, dynamic),
                  compiled.get(policy_loss_nokl_fn, dynamic), compiled.get(value_loss_fn, dynamic))
            cases.append(("ppo_step", "torch_compile", lambda i: ppo_step(i, *cp)))
    return cases


def run_size(B, T, sweep, args, device, compiled, copy_bps, l2_bytes, records, log):
    dynamic = sweep != "headline"
    kinds = set(args.impls.split(","))
    slow_ok = T <= args.loop_max_T
    if not slow_ok:
        kinds.discard("loop")
    torch.cuda.empty_cache()
    sets = input_sets(B, T, device, l2_bytes)
    for s in sets:
        s["logp"].requires_grad_(True)
        s["values_new"].requires_grad_(True)
    index_labels = [str(i // G) for i in range(B)]  # verl's uid strings
    for prim, impl, fn in cases_for(B, T, sets, compiled, dynamic, kinds, index_labels):
        if args.only and prim not in args.only.split(","):
            continue
        slow = impl in ("torch_loop", "torch_dictloop") or prim == "ppo_step"
        try:
            if slow:
                med, mn, n = time_cuda(fn, warmup=1, reps=min(args.reps, 5), budget_s=args.slow_budget, min_reps=1)
            else:
                med, mn, n = time_cuda(fn, warmup=args.warmup, reps=args.reps, budget_s=args.budget)
            if args.memory:
                # Gradients left by the timing loop would be freed inside the call and make the
                # peak look smaller than it is: drop them first.
                for key in ("logp", "values_new"):
                    sets[0][key].grad = None
                pk = peak_bytes(lambda: fn(0))
            else:
                pk = None
        except Exception as e:  # a failed compile must not lose the rest of the run
            log(f"  {prim:17s} {impl:15s} B={B:6d} T={T:6d}  FAILED: {type(e).__name__}: {e}")
            records.append(dict(primitive=prim, impl=impl, B=B, T=T, tokens=B * T, sweep=sweep,
                                error=f"{type(e).__name__}: {e}"))
            continue
        fb = floor_bytes(prim, B, T)
        floor_s = fb / copy_bps
        rec = dict(primitive=prim, impl=impl, B=B, T=T, tokens=B * T, sweep=sweep, median_s=med,
                   min_s=mn, reps=n, floor_bytes=fb, floor_s=floor_s, x_floor=med / floor_s,
                   ns_per_token=med * 1e9 / (B * T), rotated_sets=len(sets))
        if pk is not None:
            # the primitive's inputs (INPUTS) + the peak of what the call allocates on top
            inb = sum(sets[0][k].numel() * sets[0][k].element_size() for k in INPUTS[prim])
            rec["input_bytes"] = int(inb)
            rec["peak_bytes_call"] = int(pk)
            rec["peak_bytes"] = int(inb + pk)
        records.append(rec)
        log(f"  {prim:17s} {impl:15s} B={B:6d} T={T:6d}  median {med * 1e6:12.1f} us  "
            f"x floor {med / floor_s:10.1f}  (n={n})")
    del sets
    torch.cuda.empty_cache()


# --------------------------------------------------------------------------------------------
# Numerical checks: fp32 eager and compiled against fp64, GAE against a scalar loop
# --------------------------------------------------------------------------------------------


def rel_err(a, b):
    a, b = a.double(), b.double()
    d = torch.linalg.vector_norm(a - b).item()
    n = torch.linalg.vector_norm(b).item()
    return d / n if n > 0 else d


def gae_scalar_reference(r, v, m, gamma=1.0, lam=0.95):
    """Independent per-sequence scalar loop in float64 (skip masked positions)."""
    B, T = len(r), len(r[0])
    A = [[0.0] * T for _ in range(B)]
    for i in range(B):
        nxt, run = 0.0, 0.0
        for t in reversed(range(T)):
            if m[i][t] != 0:
                delta = r[i][t] + gamma * nxt - v[i][t]
                run = delta + gamma * lam * run
                nxt = v[i][t]
            A[i][t] = run
    return torch.tensor(A, dtype=torch.float64)


def numerical_checks(device, kinds, log):
    checks = []

    def record(name, err, tol):
        ok = bool(err == err and err <= tol)
        checks.append(dict(check=name, rel_err=err, tol=tol, ok=ok))
        log(f"  check {name:45s} rel err {err:.3e}  (tol {tol:g})  {'ok' if ok else 'FAIL'}")

    B, T = 64, 256
    s32 = make_inputs(B, T, 99, device, torch.float32)
    s64 = {k: v.double() for k, v in s32.items()}
    fns = [("eager", lambda f: f)]
    if "compile" in kinds:
        fns.append(("compile", lambda f: torch.compile(f, dynamic=False)))
    for how, wrap in fns:
        # policy loss and gradient
        outs = []
        for s in (s32, s64):
            lp = s["logp"].detach().clone().requires_grad_(True)
            f = wrap(policy_loss_fn) if s is s32 else policy_loss_fn
            o = f(lp, s["logp_old"], s["logp_ref"], s["adv"], s["mask"])
            o[0].backward()
            outs.append((o[0].detach(), lp.grad.detach()))
        record(f"policy_loss {how} loss vs fp64", rel_err(outs[0][0], outs[1][0]), 1e-4)
        record(f"policy_loss {how} grad vs fp64", rel_err(outs[0][1], outs[1][1]), 1e-5)
        # value loss and gradient
        outs = []
        for s in (s32, s64):
            vn = s["values_new"].detach().clone().requires_grad_(True)
            f = wrap(value_loss_fn) if s is s32 else value_loss_fn
            o = f(vn, s["returns"], s["values"], s["mask"])
            o[0].backward()
            outs.append((o[0].detach(), vn.grad.detach()))
        record(f"value_loss {how} loss vs fp64", rel_err(outs[0][0], outs[1][0]), 1e-5)
        record(f"value_loss {how} grad vs fp64", rel_err(outs[0][1], outs[1][1]), 1e-5)
        f = wrap(masked_whiten)
        record(f"whiten {how} vs fp64", rel_err(f(s32["rewards"], s32["mask"]),
                                                masked_whiten(s64["rewards"], s64["mask"])), 1e-5)
        f = wrap(grpo_advantages_vectorized)
        record(f"group_advantages {how} vs fp64",
               rel_err(f(s32["scores"], s32["mask"])[1], grpo_advantages_vectorized(s64["scores"], s64["mask"])[1]),
               1e-5)
        f = wrap(kl_rewards_fn)
        record(f"kl_rewards {how} vs fp64",
               rel_err(f(s32["rewards"], s32["logp_old"], s32["logp_ref"], s32["mask"])[0],
                       kl_rewards_fn(s64["rewards"], s64["logp_old"], s64["logp_ref"], s64["mask"])[0]), 1e-6)
    labels = [str(i // G) for i in range(B)]
    record("group_advantages dictloop vs vectorized",
           rel_err(grpo_advantages_dictloop(s32["scores"], s32["mask"], labels)[1],
                   grpo_advantages_vectorized(s64["scores"], s64["mask"])[1]), 1e-5)
    # GAE loop against an independent scalar loop (small: the reference is pure Python)
    b, t = 6, 40
    r, v, m = s64["rewards"][:b, :t], s64["values"][:b, :t], s64["mask"][:b, :t].clone()
    m[1, 5:9] = 0  # an interior masked span
    m[2, :] = 0    # an empty row
    ref = gae_scalar_reference(r.tolist(), v.tolist(), m.tolist())
    a64, _ = gae_loop(r, v, m)
    record("gae loop fp64 vs scalar reference (valid tokens)", rel_err(a64.cpu() * m.cpu(), ref * m.cpu()), 1e-12)
    a32, _ = gae_loop(r.float(), v.float(), m.float())
    record("gae loop fp32 vs fp64", rel_err(a32, a64), 1e-5)
    return checks


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def device_meta(device):
    p = torch.cuda.get_device_properties(device)
    meta = dict(device=p.name, sm_count=p.multi_processor_count, total_memory=p.total_memory,
                torch=torch.__version__, cuda=torch.version.cuda,
                date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                python=sys.version.split()[0])
    l2 = getattr(p, "L2_cache_size", 0) or 50 * 2**20
    meta["l2_bytes"] = int(l2)
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
        meta["driver"] = out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        meta["driver"] = None
    # POLO_COMMIT: the commit being run, when this tree is a copy whose git metadata is not it
    # (bench/run_all.sh passes its own).
    meta["commit"] = os.environ.get("POLO_COMMIT") or None
    if meta["commit"] is None:
        try:
            out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=30,
                                 cwd=os.path.dirname(os.path.abspath(__file__)))
            meta["commit"] = out.stdout.strip() if out.returncode == 0 else None
        except (OSError, subprocess.SubprocessError):
            meta["commit"] = None
    return meta


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="torch_baseline.json", help="JSON output path")
    ap.add_argument("--quick", action="store_true", help="small sizes only (a smoke test: seconds)")
    ap.add_argument("--sweeps", default="headline,tokens,seqlen",
                    help="comma list of: headline, tokens (2^16..2^24 at T=4096), seqlen (2^22 tokens, T=2^8..2^16)")
    ap.add_argument("--impls", default="eager,compile,loop",
                    help="comma list of: eager, compile (torch.compile), loop (Python-loop GAE, dict-loop advantages, PPO step)")
    ap.add_argument("--only", default="", help="comma list of primitives to time (default: all)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--budget", type=float, default=1.0, help="seconds of repetitions per fast case")
    ap.add_argument("--slow-budget", type=float, default=2.0, help="seconds of repetitions per Python-loop case")
    ap.add_argument("--loop-max-T", type=int, default=16384,
                    help="skip the Python loops above this T (one GAE loop call at T=65536 takes ~8 s)")
    ap.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True,
                    help="record the peak bytes each call allocates")
    ap.add_argument("--no-checks", action="store_true", help="skip the numerical checks")
    args = ap.parse_args(argv)

    if not torch.cuda.is_available():
        print("torch_baseline.py: no CUDA device visible to PyTorch; nothing to time", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    # Several sizes and two compile modes per function: raise dynamo's per-function cache limit
    # (renamed recompile_limit in recent PyTorch; set whichever exists).
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(256, getattr(torch._dynamo.config, name)))

    def log(msg):
        print(msg, flush=True)

    meta = device_meta(device)
    copy_bps = copy_bandwidth(device)
    meta["copy_bytes_per_s"] = copy_bps
    log(f"torch_baseline: {meta['device']}, driver {meta['driver']}, torch {meta['torch']}, "
        f"copy {copy_bps * 1e-9:.0f} GB/s (read + write)")

    kinds = set(args.impls.split(","))
    checks = [] if args.no_checks else numerical_checks(device, kinds, log)

    sizes = []
    sweeps = args.sweeps.split(",")
    if args.quick:
        sizes = [(64, 1024, "headline"), (128, 2048, "headline")]
        if "tokens" in sweeps:
            sizes += [(2**k // 1024, 1024, "tokens") for k in (16, 18)]
    else:
        if "headline" in sweeps:
            sizes += [(B, T, "headline") for B, T in HEADLINE]
        if "tokens" in sweeps:
            sizes += [(n // SWEEP_TOKENS_T, SWEEP_TOKENS_T, "tokens") for n in SWEEP_TOKENS]
        if "seqlen" in sweeps:
            sizes += [(SWEEP_SEQLEN_N // T, T, "seqlen") for T in SWEEP_SEQLEN_T]

    compiled = Compiled()
    records = []
    t_start = time.perf_counter()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)

    def write(done):
        meta["wall_s"] = time.perf_counter() - t_start
        meta["complete"] = done
        doc = dict(meta=meta, bytes_per_token=BYTES_PER_TOKEN, bytes_per_seq=BYTES_PER_SEQ, group_size=G,
                   checks=checks, results=records)
        with open(args.out + ".tmp", "w") as f:
            json.dump(doc, f, indent=1)
        os.replace(args.out + ".tmp", args.out)

    write(False)
    for B, T, sweep in sizes:
        log(f"[{sweep}] B={B} T={T} ({B * T} tokens)")
        run_size(B, T, sweep, args, device, compiled, copy_bps, meta["l2_bytes"], records, log)
        write(False)  # after every size: a run cut short keeps what it measured
    write(True)
    failed = [c for c in checks if not c["ok"]]
    log(f"torch_baseline: {len(records)} records, {len(checks) - len(failed)}/{len(checks)} checks ok -> {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
