# SPDX-FileCopyrightText: 2026 The polo authors
# SPDX-License-Identifier: Apache-2.0
"""polo's primitives as PyTorch operators (CPU), built from polo_ops.cpp on first import.

    import polo_torch as polo
    adv = polo.group_advantages(scores, group_size=16, preset="verl.grpo")
    A, R = polo.gae(rewards, values, mask, gamma=1.0, lam=0.95, preset="verl.gae")
    loss, stats = polo.policy_loss(logp, logp_old, logp_ref, advantages, mask, preset="verl.grpo")
    loss.backward()   # dloss/dlogp is polo's analytic gradient
    vloss, vstats = polo.value_loss(values, old_values, returns, mask, preset="verl.critic")
    adv = polo.whiten(A, mask, preset="verl.whitening")
    shaped = polo.kl_penalized_rewards(rewards, logp_old, logp_ref, mask, beta=0.001, kl="verl.kl_k1")
    R, A = polo.reinforce_plus_plus(rewards, mask, gamma=1.0, preset="verl.reinforce_pp")

The operators are torch.ops.polo.{group_advantages, group_advantages_by_label, gae, policy_loss, value_loss, whiten,
kl_penalized_rewards, reinforce_plus_plus}; this module registers their shape functions (so
torch.compile can trace them) and the autograd of the two losses.
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

VALUE_STATS = ("tokens", "sequences", "clip_fraction", "squared_error")
"""Names of value_loss's statistics, in the order of its stats tensor."""

STATS = ("tokens", "sequences", "clip_upper", "clip_lower", "clip_dual", "approx_kl_k1", "approx_kl_k3",
         "kl_ref", "ratio_mean", "ratio_min", "ratio_max", "policy_loss", "kl_loss")
"""Names of policy_loss's statistics, in the order of the stats tensor."""


CUDA = (torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
        and os.environ.get("POLO_TORCH_CUDA", "1") != "0")
"""Whether the CUDA kernels (polo_ops_cuda.cu) are built: a CUDA build of PyTorch, nvcc
(CUDA_HOME), and POLO_TORCH_CUDA not 0. TORCH_CUDA_ARCH_LIST picks the GPUs (default 9.0)."""


def _build():
    sources = [str(_HERE / "polo_ops.cpp")]
    if CUDA:
        sources.append(str(_HERE / "polo_ops_cuda.cu"))
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")
    cpp_extension.load(
        name="polo_ops_cuda" if CUDA else "polo_ops",
        sources=sources,
        extra_include_paths=[str(_INCLUDE), str(_INCLUDE.parent / "cuda"), _EIGEN],
        extra_cflags=["-O2", "-std=c++20"],
        extra_cuda_cflags=["-O2", "-std=c++20", "--expt-relaxed-constexpr"],
        is_python_module=False,
        verbose=bool(os.environ.get("POLO_TORCH_VERBOSE")),
    )


_build()


@torch.library.register_fake("polo::group_advantages")
def _(scores, group_size, preset="polo"):
    return torch.empty_like(scores)


@torch.library.register_fake("polo::group_advantages_by_label")
def _(scores, labels, preset="polo"):
    return torch.empty_like(scores)


@torch.library.register_fake("polo::gae")
def _(rewards, values, mask, gamma, lam, preset="verl.gae"):
    return torch.empty_like(rewards), torch.empty_like(rewards)


@torch.library.register_fake("polo::policy_loss")
def _(logp, logp_old, logp_ref, advantages, mask, preset="polo", tokens=-1.0, sequences=-1.0):
    return (logp.new_empty(()), torch.empty_like(logp),
            torch.empty(len(STATS), dtype=torch.float64, device=logp.device))


@torch.library.register_fake("polo::value_loss")
def _(values, old_values, returns, mask, preset="verl.critic", tokens=-1.0, sequences=-1.0):
    return (values.new_empty(()), torch.empty_like(values),
            torch.empty(len(VALUE_STATS), dtype=torch.float64, device=values.device))


@torch.library.register_fake("polo::whiten")
def _(x, mask, preset="verl.whitening"):
    return torch.empty_like(x)


@torch.library.register_fake("polo::kl_penalized_rewards")
def _(rewards, logp_old, logp_ref, mask, beta, kl="verl.kl_k1"):
    return torch.empty_like(rewards)


@torch.library.register_fake("polo::reinforce_plus_plus")
def _(rewards, mask, gamma, preset="verl.reinforce_pp"):
    return torch.empty_like(rewards), torch.empty_like(rewards)


def group_advantages(scores, group_size, preset="polo"):
    """Group-normalized advantages of contiguous groups of `group_size` scores ([B])."""
    return torch.ops.polo.group_advantages(scores, group_size, preset)


def group_advantages_by_label(scores, labels, preset="polo"):
    """Group-normalized advantages of groups given by int64 labels ([B], any order: verl's uid)."""
    return torch.ops.polo.group_advantages_by_label(scores, labels, preset)


def gae(rewards, values, mask, gamma, lam, preset="verl.gae"):
    """(advantages, returns) [B,T]; `preset` picks the mask convention and fill."""
    return torch.ops.polo.gae(rewards, values, mask, gamma, lam, preset)


def _loss_setup(ctx, inputs, output):
    ctx.save_for_backward(output[1])


def _policy_loss_backward(ctx, grad_loss, grad_g, grad_stats):
    (g,) = ctx.saved_tensors
    return grad_loss * g, None, None, None, None, None, None, None


def _value_loss_backward(ctx, grad_loss, grad_g, grad_stats):
    (g,) = ctx.saved_tensors
    return grad_loss * g, None, None, None, None, None, None


torch.library.register_autograd("polo::policy_loss", _policy_loss_backward, setup_context=_loss_setup)
torch.library.register_autograd("polo::value_loss", _value_loss_backward, setup_context=_loss_setup)


def policy_loss(logp, logp_old, logp_ref, advantages, mask, preset="polo", tokens=-1.0, sequences=-1.0):
    """The clipped objective + KL of `preset`: (loss, stats dict). `loss` is differentiable in
    `logp`; `tokens` / `sequences` are the global normalizers (-1: this call's own counts)."""
    loss, _, stats = torch.ops.polo.policy_loss(logp, logp_old, logp_ref, advantages, mask, preset, tokens, sequences)
    return loss, dict(zip(STATS, stats.tolist()))


def value_loss(values, old_values, returns, mask, preset="verl.critic", tokens=-1.0, sequences=-1.0):
    """The clipped value loss of `preset`: (loss, stats dict); `loss` is differentiable in `values`."""
    loss, _, stats = torch.ops.polo.value_loss(values, old_values, returns, mask, preset, tokens, sequences)
    return loss, dict(zip(VALUE_STATS, stats.tolist()))


def whiten(x, mask, preset="verl.whitening"):
    """x whitened over its valid tokens ([B,T])."""
    return torch.ops.polo.whiten(x, mask, preset)


def kl_penalized_rewards(rewards, logp_old, logp_ref, mask, beta, kl="verl.kl_k1"):
    """rewards - beta * KL(logp_old, logp_ref) at valid tokens, 0 elsewhere ([B,T])."""
    return torch.ops.polo.kl_penalized_rewards(rewards, logp_old, logp_ref, mask, beta, kl)


def reinforce_plus_plus(rewards, mask, gamma, preset="verl.reinforce_pp"):
    """(returns, whitened advantages) of REINFORCE++ ([B,T])."""
    return torch.ops.polo.reinforce_plus_plus(rewards, mask, gamma, preset)
