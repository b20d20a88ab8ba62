"""The unfused mlx.nn composition that conv3x3 replaces (docs/design.md's reference
semantics). The tests check parity against it and the demo/benchmarks compare
memory and time with it."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn


def reference_conv3x3(x, weight, bias=None, *, group_norm=None, silu=False, upsample=1, residual=None):
    """GroupNorm(pytorch_compatible) -> SiLU -> Upsample(nearest) -> Conv2d(3x3, pad 1) -> + residual.

    group_norm = (gamma, beta, groups, eps) or None: the module's parameters, where the fused
    op's norm= takes (stats, gamma, beta).
    """
    h = reference_activation(x, group_norm=group_norm, silu=silu, upsample=upsample)
    conv = nn.Conv2d(x.shape[-1], weight.shape[0], 3, padding=1, bias=bias is not None)
    conv.weight = weight
    if bias is not None:
        conv.bias = bias
    y = conv(h)
    if residual is not None:
        y = y + residual
    return y


def reference_activation(x, *, group_norm=None, silu=False, upsample=1):
    """The conv's input as the composition materialises it: GroupNorm -> SiLU -> Upsample."""
    h = x
    if group_norm is not None:
        gamma, beta, groups, eps = group_norm
        gn = nn.GroupNorm(groups, x.shape[-1], eps=eps, pytorch_compatible=True)
        gn.weight, gn.bias = gamma, beta
        h = gn(h)
    if silu:
        h = nn.silu(h)
    if upsample == 2:
        h = nn.Upsample(scale_factor=2, mode="nearest")(h)
    return h


def normalized_error(got: mx.array, want: mx.array) -> float:
    """max |got - want| / max |want|, in float32. Each side is evaluated on its own first: the
    two may come from different devices, and an evaluation that waits across devices is where
    MLX's CUDA build has hung (README, the CUDA record of 2026-12-04)."""
    mx.eval(got)
    mx.eval(want)
    got32, want32 = got.astype(mx.float32), want.astype(mx.float32)
    scale = max(mx.abs(want32).max().item(), 1e-6)
    return mx.abs(got32 - want32).max().item() / scale
