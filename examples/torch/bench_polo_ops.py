# SPDX-FileCopyrightText: 2026 The polo authors
# SPDX-License-Identifier: Apache-2.0
"""polo's PyTorch operators against the eager PyTorch code the peers run, side by side in one
process on the CPU (float32, ~10% right padding): median wall time of each, and the ratio.

    python examples/torch/bench_polo_ops.py [--B 256] [--T 2048] [--repeats 7]

The eager code is test_polo_ops.py's references (OpenRLHF's GAE loop, verl's losses and
masked_whiten, view(-1, G) group statistics), so both sides compute the same numbers.
"""
import argparse
import statistics
import time

import torch

import polo_torch as polo
from test_polo_ops import gae_through_reference, verl_masked_whiten, verl_policy_loss, verl_value_loss


def median_seconds(f, repeats):
    f()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--B", type=int, default=256)
    ap.add_argument("--T", type=int, default=2048)
    ap.add_argument("--G", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=7)
    a = ap.parse_args()
    B, T, G = a.B, a.T, a.G
    torch.manual_seed(0)
    lengths = (T * (0.8 + 0.2 * torch.rand(B))).long()
    mask = torch.arange(T)[None, :] < lengths[:, None]
    f32 = dict(dtype=torch.float32)
    r, v = torch.randn(B, T, **f32), torch.randn(B, T, **f32)
    logp = torch.randn(B, T, **f32) * 0.5 - 1.0
    old = logp + 0.2 * torch.randn(B, T, **f32)
    ref = logp + 0.3 * torch.randn(B, T, **f32)
    adv = torch.randn(B, 1, **f32).expand(B, T).contiguous()
    scores = torch.randn(B * G, **f32)

    def polo_loss():
        x = logp.clone().requires_grad_()
        loss, _ = polo.policy_loss(x, old, ref, adv, mask, "verl.grpo")
        loss.backward()

    def eager_loss():
        x = logp.clone().requires_grad_()
        verl_policy_loss(x, old, ref, adv, mask, 0.001).backward()

    def polo_value():
        x = v.clone().requires_grad_()
        loss, _ = polo.value_loss(x, old, r, mask, "verl.critic")
        loss.backward()

    def eager_value():
        x = v.clone().requires_grad_()
        verl_value_loss(x, old, r, mask, 0.5).backward()

    def eager_group():
        g = scores.view(-1, G)
        return ((g - g.mean(-1, keepdim=True)) / (g.std(-1, keepdim=True) + 1e-6)).flatten()

    rows = [
        ("GAE (OpenRLHF, through)", lambda: polo.gae(r, v, mask, 1.0, 0.95, "openrlhf.gae"),
         lambda: gae_through_reference(r, v, mask.float(), 1.0, 0.95), "Python loop over T"),
        ("group advantages (verl GRPO)", lambda: polo.group_advantages(scores, G, "verl.grpo"), eager_group,
         "view(-1, G) mean/std"),
        ("policy loss + k3 KL, fwd + bwd (verl GRPO)", polo_loss, eager_loss, "eager + autograd"),
        ("value loss, fwd + bwd (verl)", polo_value, eager_value, "eager + autograd"),
        ("masked whitening (verl)", lambda: polo.whiten(r, mask, "verl.whitening"), lambda: verl_masked_whiten(r, mask),
         "eager"),
    ]
    print(f"CPU, torch {torch.__version__}, {torch.get_num_threads()} threads, B x T = {B} x {T}, G = {G}, float32, "
          f"median of {a.repeats}")
    print(f"| primitive | polo | PyTorch | PyTorch code | PyTorch / polo |")
    print(f"|---|---|---|---|---|")
    for name, fp, fe, what in rows:
        tp = median_seconds(fp, a.repeats)
        te = median_seconds(fe, a.repeats)
        print(f"| {name} | {tp * 1e3:.2f} ms | {te * 1e3:.2f} ms | {what} | {te / tp:.1f}x |")


if __name__ == "__main__":
    main()
