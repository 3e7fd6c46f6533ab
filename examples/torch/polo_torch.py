# SPDX-FileCopyrightText: 2026 The polo authors
# SPDX-License-Identifier: Apache-2.0
"""polo's primitives as PyTorch operators (CPU), built from polo_ops.cpp on first import.

    import polo_torch as polo
    adv = polo.group_advantages(scores, group_size=16, preset="verl.grpo")
    A, R = polo.gae(rewards, values, mask, gamma=1.0, lam=0.95, preset="verl.gae")
    loss, stats = polo.policy_loss(logp, logp_old, logp_ref, advantages, mask, preset="verl.grpo")
    loss.backward()   # dloss/dlogp is polo's analytic gradient

The operators are torch.ops.polo.{group_advantages, gae, policy_loss}; this module registers
their shape functions (so torch.compile can trace them) and the autograd of policy_loss.
Building needs a C++20 compiler, ninja, Eigen 3.4 (POLO_EIGEN_INCLUDE, default
/usr/include/eigen3) and polo's headers (found relative to this file).
"""
import os
from pathlib import Path

import torch
from torch.utils import cpp_extension

_HERE = Path(__file__).resolve().parent
_INCLUDE = _HERE.parent.parent / "include"
_EIGEN = os.environ.get("POLO_EIGEN_INCLUDE", "/usr/include/eigen3")

STATS = ("tokens", "sequences", "clip_upper", "clip_lower", "clip_dual", "approx_kl_k1", "approx_kl_k3",
         "kl_ref", "ratio_mean", "ratio_min", "ratio_max", "policy_loss", "kl_loss")
"""Names of policy_loss's statistics, in the order of the stats tensor."""


def _build():
    cpp_extension.load(
        name="polo_ops",
        sources=[str(_HERE / "polo_ops.cpp")],
        extra_include_paths=[str(_INCLUDE), _EIGEN],
        extra_cflags=["-O2", "-std=c++20"],
        is_python_module=False,
        verbose=bool(os.environ.get("POLO_TORCH_VERBOSE")),
    )


_build()


@torch.library.register_fake("polo::group_advantages")
def _(scores, group_size, preset="polo"):
    return torch.empty_like(scores)


@torch.library.register_fake("polo::gae")
def _(rewards, values, mask, gamma, lam, preset="verl.gae"):
    return torch.empty_like(rewards), torch.empty_like(rewards)


@torch.library.register_fake("polo::policy_loss")
def _(logp, logp_old, logp_ref, advantages, mask, preset="polo", tokens=-1.0, sequences=-1.0):
    return (logp.new_empty(()), torch.empty_like(logp),
            torch.empty(len(STATS), dtype=torch.float64, device=logp.device))


def group_advantages(scores, group_size, preset="polo"):
    """Group-normalized advantages of contiguous groups of `group_size` scores ([B])."""
    return torch.ops.polo.group_advantages(scores, group_size, preset)


def gae(rewards, values, mask, gamma, lam, preset="verl.gae"):
    """(advantages, returns) [B,T]; `preset` picks the mask convention and fill."""
    return torch.ops.polo.gae(rewards, values, mask, gamma, lam, preset)


def _loss_setup(ctx, inputs, output):
    ctx.save_for_backward(output[1])


def _loss_backward(ctx, grad_loss, grad_g, grad_stats):
    (g,) = ctx.saved_tensors
    return grad_loss * g, None, None, None, None, None, None, None


torch.library.register_autograd("polo::policy_loss", _loss_backward, setup_context=_loss_setup)


def policy_loss(logp, logp_old, logp_ref, advantages, mask, preset="polo", tokens=-1.0, sequences=-1.0):
    """The clipped objective + KL of `preset`: (loss, stats dict). `loss` is differentiable in
    `logp`; `tokens` / `sequences` are the global normalizers (-1: this call's own counts)."""
    loss, _, stats = torch.ops.polo.policy_loss(logp, logp_old, logp_ref, advantages, mask, preset, tokens, sequences)
    return loss, dict(zip(STATS, stats.tolist()))
