# SPDX-FileCopyrightText: 2026 The polo authors
# SPDX-License-Identifier: Apache-2.0
"""Tests of the PyTorch adapter (polo_torch.py), CPU: each operator against the eager PyTorch
code the peers run (verl's and OpenRLHF's loops, losses, whitening, KL shaping and REINFORCE++,
written out here), gradients against autograd through that code, torch.library.opcheck on
every operator (schema, fake tensors, autograd registration, AOT dispatch), the operators
inside torch.compile(fullgraph=True), and errors raised as RuntimeError with polo's message.
Run: python examples/torch/test_polo_ops.py (scripts/torch_example.sh sets it up).
"""
import math
import sys

import torch

import polo_torch as polo

torch.manual_seed(20261123)
B, T, G = 32, 300, 8


def random_mask(b, t, left_pad=True):
    """Right padding of random length, some left padding, an interior masked span, one empty row."""
    m = torch.zeros(b, t, dtype=torch.bool)
    for i in range(b):
        n = int(torch.randint(1, t + 1, ()))
        lo = int(torch.randint(0, 10, ())) if left_pad and i % 3 == 0 else 0
        m[i, lo:max(lo, n)] = True
        if i % 5 == 1 and n > 40:
            m[i, 20:30] = False
    m[b - 1] = False
    return m


def gae_through_reference(r, v, mask, gamma, lam):
    """OpenRLHF's get_advantages_and_returns: v, r times the mask, the recursion runs through."""
    v = v * mask
    r = r * mask
    last = torch.zeros(r.shape[0], dtype=r.dtype)
    adv = torch.empty_like(r)
    for t in reversed(range(r.shape[1])):
        nv = v[:, t + 1] if t + 1 < r.shape[1] else torch.zeros_like(last)
        delta = r[:, t] + gamma * nv - v[:, t]
        last = delta + gamma * lam * last
        adv[:, t] = last
    return adv, adv + v


def gae_skip_reference(r, v, mask, gamma, lam):
    """Masked positions skipped (verl, NeMo-RL): each row's valid tokens form the sequence;
    zero at masked positions (NeMo-RL's fill)."""
    A = torch.zeros_like(r)
    R = torch.zeros_like(r)
    for i in range(r.shape[0]):
        idx = mask[i].nonzero().flatten().tolist()
        last, nv = 0.0, 0.0
        for t in reversed(idx):
            delta = float(r[i, t]) + gamma * nv - float(v[i, t])
            last = delta + gamma * lam * last
            A[i, t] = last
            R[i, t] = last + float(v[i, t])
            nv = float(v[i, t])
    return A, R


def verl_policy_loss(logp, old, ref, adv, mask, kl_coef):
    """verl's vanilla loss (clamp 20, eps 0.2, dual clip 3, token-mean) + low_var_kl."""
    m = mask.to(logp.dtype)
    neg_kl = torch.clamp(logp - old, -20.0, 20.0)
    ratio = torch.exp(neg_kl)
    pg1 = -adv * ratio
    pg2 = -adv * torch.clamp(ratio, 0.8, 1.2)
    clip1 = torch.maximum(pg1, pg2)
    clip2 = torch.minimum(-adv * 3.0, clip1)
    pg = torch.where(adv < 0, clip2, clip1)
    loss = (pg * m).sum() / m.sum()
    if kl_coef:
        kl = torch.clamp(ref - logp, -20.0, 20.0)
        k3 = torch.clamp(torch.exp(kl) - kl - 1, -10.0, 10.0)
        loss = loss + kl_coef * (k3 * m).sum() / m.sum()
    return loss


def close(a, b, rtol, atol, what):
    if not torch.allclose(a, b, rtol=rtol, atol=atol):
        err = (a - b).abs().max().item()
        raise AssertionError(f"{what}: max abs error {err:.3e} (rtol {rtol}, atol {atol})")


class On:
    """polo_torch's functions on device `dev`: tensor arguments moved there (differentiably),
    tensor results moved back to the CPU, where the references run."""

    def __init__(self, dev):
        self.dev = dev

    def __getattr__(self, name):
        f = getattr(polo, name)

        def back(x):
            if isinstance(x, torch.Tensor):
                return x.cpu()
            if isinstance(x, tuple):
                return tuple(back(y) for y in x)
            return x

        def call(*args, **kw):
            return back(f(*[a.to(self.dev) if isinstance(a, torch.Tensor) else a for a in args], **kw))

        return call


def test_gae(P, dev):
    mask = random_mask(B, T)
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-4)):
        r = torch.randn(B, T, dtype=dtype)
        v = torch.randn(B, T, dtype=dtype)
        A, R = P.gae(r, v, mask, 1.0, 0.95, "openrlhf.gae")
        Ae, Re = gae_through_reference(r.double(), v.double(), mask.double(), 1.0, 0.95)
        close(A.double(), Ae, tol, tol, f"gae through {dtype} advantages")
        close(R.double(), Re, tol, tol, f"gae through {dtype} returns")
        A, R = P.gae(r, v, mask.to(torch.uint8), 0.99, 0.9, "nemo.gae")
        Ae, Re = gae_skip_reference(r.double(), v.double(), mask, 0.99, 0.9)
        close(A.double(), Ae, tol, tol, f"gae skip {dtype} advantages")
        close(R.double(), Re, tol, tol, f"gae skip {dtype} returns")
    # a [B,T] slice of a wider buffer (row stride > T) is read in place
    wide = torch.randn(B, T + 7, dtype=torch.float64)
    A1, _ = P.gae(wide[:, :T], v.double(), mask, 1.0, 0.95, "verl.gae")
    A2, _ = P.gae(wide[:, :T].contiguous(), v.double(), mask, 1.0, 0.95, "verl.gae")
    assert torch.equal(A1, A2), "strided rewards"


def test_group_advantages(P, dev):
    s = torch.randn(B * G, dtype=torch.float64)
    s[:G] = 0.5  # a constant group
    a = P.group_advantages(s, G, "verl.grpo")
    g = s.view(-1, G)
    ref = ((g - g.mean(-1, keepdim=True)) / (g.std(-1, keepdim=True) + 1e-6)).flatten()
    close(a, ref, 1e-10, 1e-12, "group_advantages verl.grpo")
    assert torch.all(a[:G] == 0), "constant group"
    # labelled groups in any order (verl's uid): a permutation of the contiguous batch
    perm = torch.randperm(B * G)
    labels = (torch.arange(B * G) // G)[perm] * 7 + 3
    al = P.group_advantages_by_label(s[perm], labels, "verl.grpo")
    close(al, ref[perm], 1e-10, 1e-12, "group_advantages_by_label verl.grpo")


def test_policy_loss(P, dev):
    mask = random_mask(B, T)
    for preset, kl in (("verl.ppo", 0.0), ("verl.grpo", 0.001)):
        logp = (torch.randn(B, T, dtype=torch.float64) * 0.5 - 1.0).requires_grad_()
        old = logp.detach() + torch.randn(B, T, dtype=torch.float64) * 0.2
        ref = logp.detach() + torch.randn(B, T, dtype=torch.float64) * 0.3
        adv = torch.randn(B, 1, dtype=torch.float64).expand(B, T).contiguous()
        loss, stats = P.policy_loss(logp, old, ref, adv, mask, preset)
        loss.backward()
        g = logp.grad.clone()
        logp.grad = None
        le = verl_policy_loss(logp, old, ref, adv, mask, kl)
        le.backward()
        close(loss.detach(), le.detach(), 1e-10, 1e-12, f"{preset} loss")
        close(g, logp.grad, 1e-9, 1e-12, f"{preset} gradient")
        assert stats["tokens"] == int(mask.sum()), stats
        assert 0.0 <= stats["clip_upper"] <= 1.0 and stats["approx_kl_k3"] >= 0.0, stats
        # global normalizers: twice the tokens halves the loss and its gradient
        half, _ = P.policy_loss(logp.detach(), old, ref, adv, mask, preset, tokens=2.0 * stats["tokens"])
        close(half, loss.detach() / 2, 1e-12, 1e-14, f"{preset} global normalizer")


def verl_value_loss(vpreds, values, returns, mask, cliprange):
    """verl's compute_value_loss: 0.5 * masked_mean(max((v - R)^2, (clip(v, v_old +- c) - R)^2))."""
    clipped = torch.clamp(vpreds, values - cliprange, values + cliprange)
    losses = torch.maximum((vpreds - returns) ** 2, (clipped - returns) ** 2)
    m = mask.to(vpreds.dtype)
    return 0.5 * (losses * m).sum() / m.sum()


def verl_masked_whiten(x, mask):
    """verl's masked_whiten: masked mean, unbiased masked variance, (x - mean) * rsqrt(var + 1e-8)."""
    m = mask.to(x.dtype)
    mean = (x * m).sum() / m.sum()
    var = (((x - mean) ** 2) * m).sum() / m.sum() * (m.sum() / (m.sum() - 1))
    return (x - mean) * torch.rsqrt(var + 1e-8)


def verl_reinforce_pp(rewards, mask, gamma):
    """verl's compute_reinforce_plus_plus_outcome_advantage: returns reset after every masked
    position, then masked_whiten(returns) * mask."""
    returns = torch.zeros_like(rewards)
    running = torch.zeros(rewards.shape[0], dtype=rewards.dtype)
    m = mask.to(rewards.dtype)
    for t in reversed(range(rewards.shape[1])):
        running = rewards[:, t] + gamma * running
        returns[:, t] = running
        running = running * m[:, t]
    return returns, verl_masked_whiten(returns, mask) * m


def test_ppo_pieces(P, dev):
    mask = random_mask(B, T)
    m = mask.double()
    v = torch.randn(B, T, dtype=torch.float64).requires_grad_()
    vo = v.detach() + 0.5 * torch.randn(B, T, dtype=torch.float64)
    R = torch.randn(B, T, dtype=torch.float64)
    loss, st = P.value_loss(v, vo, R, mask, "verl.critic")
    loss.backward()
    g = v.grad.clone()
    v.grad = None
    le = verl_value_loss(v, vo, R, mask, 0.5)
    le.backward()
    close(loss.detach(), le.detach(), 1e-12, 1e-14, "value_loss")
    close(g, v.grad, 1e-12, 1e-14, "value_loss gradient")
    assert 0.0 < st["clip_fraction"] < 1.0 and st["tokens"] == int(mask.sum()), st

    x = torch.randn(B, T, dtype=torch.float64) * 3 + 1
    close(P.whiten(x, mask, "verl.whitening"), verl_masked_whiten(x, mask), 1e-10, 1e-12, "whiten")

    r = torch.randn(B, T, dtype=torch.float64)
    lo = torch.randn(B, T, dtype=torch.float64) - 1
    lr = lo + 0.3 * torch.randn(B, T, dtype=torch.float64)
    shaped = P.kl_penalized_rewards(r, lo, lr, mask, 0.05, "verl.kl_k1")
    close(shaped, (r - 0.05 * (lo - lr)) * m, 1e-12, 1e-14, "kl_penalized_rewards k1")

    Rp, Ap = P.reinforce_plus_plus(r, mask, 0.99, "verl.reinforce_pp")
    Re, Ae = verl_reinforce_pp(r, mask, 0.99)
    close(Rp * m, Re * m, 1e-10, 1e-12, "reinforce++ returns at valid tokens")
    close(Ap, Ae, 1e-10, 1e-12, "reinforce++ advantages")


def test_errors(P, dev):
    mask = random_mask(B, T)
    r = torch.randn(B, T, dtype=torch.float64)
    v = torch.randn(B, T, dtype=torch.float64)
    i, t = 4, int(mask[4].nonzero()[0])
    r[i, t] = math.nan
    A = None
    try:
        A = P.gae(r, v, mask, 1.0, 1.0, "verl.gae")
    except RuntimeError as e:
        msg = str(e)
        assert "rewards" in msg and str(i * T + t) in msg, msg
    assert A is None, "a NaN reward at a valid token must raise"
    for bad, needle in ((lambda: P.gae(r, v.float(), mask, 1.0, 1.0), "one dtype"),
                        (lambda: P.gae(r, v, mask, 1.0, 1.0, "verl.nope"), "known:"),
                        (lambda: P.gae(r, v[:, :-1], mask, 1.0, 1.0), "values"),
                        (lambda: P.group_advantages(torch.randn(10, dtype=torch.float64), 4, "verl.grpo"), "")):
        try:
            bad()
        except RuntimeError as e:
            assert needle in str(e), str(e)
        else:
            raise AssertionError(f"no error ({needle})")


def test_opcheck(P, dev):
    mask = random_mask(8, 64).to(dev)
    r = torch.randn(8, 64, device=dev)
    v = torch.randn(8, 64, device=dev)
    torch.library.opcheck(torch.ops.polo.gae.default, (r, v, mask, 1.0, 0.95, "verl.gae"))
    torch.library.opcheck(torch.ops.polo.group_advantages.default, (torch.randn(32, device=dev), 8, "trl.grpo"))
    torch.library.opcheck(torch.ops.polo.group_advantages_by_label.default,
                          (torch.randn(32, device=dev), torch.arange(32, device=dev) % 5, "openrlhf.rloo"))
    logp = (torch.randn(8, 64, device=dev) - 1.0).requires_grad_()
    old = logp.detach() + 0.1 * torch.randn(8, 64, device=dev)
    adv = torch.randn(8, 64, device=dev)
    torch.library.opcheck(torch.ops.polo.policy_loss.default, (logp, old, None, adv, mask, "verl.ppo", -1.0, -1.0))
    v = torch.randn(8, 64, device=dev).requires_grad_()
    torch.library.opcheck(torch.ops.polo.value_loss.default, (v, v.detach() + 0.3, torch.randn(8, 64, device=dev), mask,
                                                              "verl.critic", -1.0, -1.0))
    torch.library.opcheck(torch.ops.polo.whiten.default, (r, mask, "openrlhf.whitening"))
    torch.library.opcheck(torch.ops.polo.kl_penalized_rewards.default, (r, v.detach(), r - 1.0, mask, 0.1, "openrlhf.kl_k3"))
    torch.library.opcheck(torch.ops.polo.reinforce_plus_plus.default, (r, mask, 1.0, "openrlhf.reinforce_pp"))


def test_compile(P, dev):
    """The operators inside torch.compile(fullgraph=True): traced through their fake functions,
    same numbers, and the loss's backward through the compiled graph."""
    mask = random_mask(16, 64)
    r = torch.randn(16, 64, dtype=torch.float64)
    v = torch.randn(16, 64, dtype=torch.float64)
    md, rd, vd = mask.to(dev), r.to(dev), v.to(dev)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def f(r, v, m):
        A, R = torch.ops.polo.gae(r, v, m, 1.0, 0.95, "openrlhf.gae")
        return 2.0 * A, R

    A, R = (x.cpu() for x in f(rd, vd, md))
    Ae, Re = gae_through_reference(r, v, mask.double(), 1.0, 0.95)
    close(A, 2.0 * Ae, 1e-12, 1e-12, "compiled gae advantages")
    close(R, Re, 1e-12, 1e-12, "compiled gae returns")

    logp = (torch.randn(16, 64, dtype=torch.float64) - 1.0).requires_grad_()
    old = logp.detach() + 0.1 * torch.randn(16, 64, dtype=torch.float64)
    adv = torch.randn(16, 64, dtype=torch.float64)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def g(logp, old, adv, m):
        loss, _, _ = torch.ops.polo.policy_loss(logp, old, None, adv, m, "verl.ppo", -1.0, -1.0)
        return 3.0 * loss

    g(logp.to(dev), old.to(dev), adv.to(dev), md).backward()
    got = logp.grad.clone()
    logp.grad = None
    (3.0 * verl_policy_loss(logp, old, None, adv, mask, 0.0)).backward()
    close(got, logp.grad, 1e-9, 1e-12, "compiled policy_loss gradient")


def main():
    tests = [test_gae, test_group_advantages, test_policy_loss, test_ppo_pieces, test_errors, test_opcheck, test_compile]
    devices = ["cpu"] + (["cuda"] if polo.CUDA and torch.cuda.is_available() else [])
    failed = ran = 0
    for dev in devices:
        for t in tests:
            ran += 1
            try:
                t(On(dev), dev)
                print(f"ok   {t.__name__} [{dev}]")
            except Exception as e:  # report every test, then fail
                failed += 1
                print(f"FAIL {t.__name__} [{dev}]: {type(e).__name__}: {e}")
    gpu = torch.cuda.get_device_name() if "cuda" in devices else "no GPU: CUDA kernels " + (
        "built, not run" if polo.CUDA else "not built")
    print(f"{ran - failed} of {ran} passed (torch {torch.__version__}, {torch.get_num_threads()} threads; {gpu})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
