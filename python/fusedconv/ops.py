"""The fused ops (NHWC, as MLX). See docs/design.md for the contract.

Reference semantics, which the tests check:
    GroupNorm(pytorch_compatible=True) -> SiLU -> Upsample(2, nearest) -> Conv2d(3x3, padding=1)
    -> + bias -> + residual
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

import mlx.core as mx

from ._abi import ext

StreamOrDevice = Union[None, mx.Stream, mx.Device]


def _require_array(name: str, value, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, mx.array):
        raise TypeError(f"{name}: expected an mlx.core.array, got {type(value).__name__}")


def _int_arg(name: str, value, what: str) -> int:
    """An int argument that the extension takes as a 32-bit int: out of range is a ValueError
    naming it (not nanobind's signature dump)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int{what}, got {type(value).__name__}")
    if not -(2**31) <= value < 2**31:
        raise ValueError(f"{name}: {value} is out of range{what}")
    return value


def _float_arg(name: str, value) -> float:
    """A float argument; a Python int too large for a float is a ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a float, got {type(value).__name__}")
    try:
        return float(value)
    except OverflowError:
        raise ValueError(f"{name}: {value} is too large for a float") from None


def group_norm_stats(x: mx.array, groups: int, eps: float = 1e-6, *, stream: StreamOrDevice = None) -> mx.array:
    """Per-(image, group) mean and reciprocal std of ``x`` [N, H, W, C].

    Groups follow PyTorch: group g holds channels [g*C/G, (g+1)*C/G). Returns float32
    [N, G, 2] with (mean, 1/sqrt(var + eps)), var the biased variance. No full-size temporary.
    """
    _require_array("x", x)
    groups = _int_arg("groups", groups, " (a divisor of the channels of x)")
    return ext.group_norm_stats(x, groups, _float_arg("eps", eps), stream=stream)


def pixel_norm_stats(x: mx.array, eps: float = 1e-12, *, stream: StreamOrDevice = None) -> mx.array:
    """sqrt(C) / max(||x[n, y, x, :]||_2, eps) for every pixel of ``x`` [N, H, W, C]: float32
    [N, H, W], the scale of ``F.normalize(x, dim=channels) * sqrt(C)`` (the RMS norm of the
    Wan 2.1 / Qwen-Image VAE), which ``conv3x3(pixel_norm=(stats, gamma, beta))`` applies on load."""
    _require_array("x", x)
    return ext.pixel_norm_stats(x, _float_arg("eps", eps), stream=stream)


def conv3x3(
    x: mx.array,
    weight: mx.array,
    bias: Optional[mx.array] = None,
    *,
    norm: Optional[Tuple[mx.array, mx.array, mx.array]] = None,
    pixel_norm: Optional[Tuple[mx.array, mx.array, mx.array]] = None,
    silu: bool = False,
    upsample: int = 1,
    residual: Optional[mx.array] = None,
    shortcut: Optional[Tuple[mx.array, mx.array, Optional[mx.array]]] = None,
    stream: StreamOrDevice = None,
) -> mx.array:
    """3x3 convolution, stride 1, padding 1, with its input transform fused.

    x [N,H,W,C]; weight [O,3,3,C] (mlx.nn.Conv2d layout); bias [O].
    norm=(stats, gamma, beta): normalise x with ``group_norm_stats`` output and the affine
    gamma/beta [C] on load; or pixel_norm=(stats, gamma, beta): x * stats[n, y, x] * gamma + beta
    with ``pixel_norm_stats`` output (the RMS norm of the Wan / Qwen-Image VAE); silu: apply
    SiLU after it; upsample=2: nearest 2x upsample on load;
    residual [N,Ho,Wo,O] added after the bias. shortcut=(xs, ws, bs): instead of a residual
    array, add the 1x1 conv of xs [N,Ho,Wo,Cs] with ws [O,1,1,Cs] and bias bs [O] (or None), as
    a resnet's channel-changing shortcut, without materialising it. Zero padding applies to the
    activated input.
    Accumulates in float32; the output has x's dtype.
    """
    _require_array("x", x)
    _require_array("weight", weight)
    _require_array("bias", bias, optional=True)
    _require_array("residual", residual, optional=True)
    stats = gamma = beta = None
    if norm is not None and pixel_norm is not None:
        raise ValueError("norm: give either norm (group statistics) or pixel_norm, not both")
    given = norm if norm is not None else pixel_norm
    if given is not None:
        if not isinstance(given, (tuple, list)) or len(given) != 3:
            raise TypeError("norm: expected a tuple (stats, gamma, beta)")
        stats, gamma, beta = given
        for name, value in (("norm stats", stats), ("norm gamma", gamma), ("norm beta", beta)):
            _require_array(name, value)
    sx = sw = sb = None
    if shortcut is not None:
        if not isinstance(shortcut, (tuple, list)) or len(shortcut) not in (2, 3):
            raise TypeError("shortcut: expected a tuple (x, weight, bias) or (x, weight)")
        sx, sw, sb = (tuple(shortcut) + (None,))[:3]
        _require_array("shortcut x", sx)
        _require_array("shortcut weight", sw)
        _require_array("shortcut bias", sb, optional=True)
    if not isinstance(silu, bool):
        raise TypeError(f"silu: expected a bool, got {type(silu).__name__}")
    upsample = _int_arg("upsample", upsample, " (1 or 2)")
    return ext.conv3x3(x, weight, bias, stats, gamma, beta, pixel_norm is not None, silu, upsample, residual, sx, sw,
                       sb, stream=stream)


def gn_silu_conv3x3(
    x: mx.array,
    gamma: mx.array,
    beta: mx.array,
    weight: mx.array,
    bias: Optional[mx.array] = None,
    *,
    groups: int = 32,
    eps: float = 1e-6,
    upsample: int = 1,
    residual: Optional[mx.array] = None,
    stream: StreamOrDevice = None,
) -> mx.array:
    """GroupNorm(groups, eps, affine gamma/beta) -> SiLU -> [upsample] -> conv3x3 [+ residual]."""
    stats = group_norm_stats(x, groups, eps, stream=stream)
    return conv3x3(
        x, weight, bias, norm=(stats, gamma, beta), silu=True, upsample=upsample, residual=residual, stream=stream
    )


def linear(x: mx.array, weight: mx.array, bias: Optional[mx.array] = None, *, stream: StreamOrDevice = None) -> mx.array:
    """x @ weight.T + bias over the last axis (weight [N, K], the mlx.nn.Linear layout); f32 accumulation."""
    _require_array("x", x)
    _require_array("weight", weight)
    _require_array("bias", bias, optional=True)
    return ext.linear(x, weight, bias, stream=stream)


def composition_is_faster(in_channels: int, *, stream: StreamOrDevice = None) -> bool:
    """Whether mlx.nn's composition (GroupNorm, SiLU, upsample, mx.conv2d) runs a 3x3 conv stage
    of ``in_channels`` input channels faster than conv3x3 on the stream's backend. Only where
    MLX's CUDA backend runs conv3x3 on the mma.sync kernel (GPUs other than Hopper), from 512
    channels: mx.conv2d is cuDNN there, 2.5-3.5x that kernel on an H200, and at 512 channels the
    composition's extra GroupNorm / SiLU / upsample passes cost less than that (its times
    0.6-0.8x the fused op's at 128^2-512^2 inputs), at 128-256 channels and high resolution more
    (1.1-2.4x; bench/reports/h200/2026-12-03/ops_1024_bfloat16.json). Not with Hopper's wgmma
    kernel: the fused op ran 1.3-2.0x faster than the composition at 512 channels too
    (bench/reports/h200/2026-12-03-direct/ops_1024_bfloat16_with_composition.json). Never on the
    CPU (MLX's Linux conv runs at a few GFLOP/s); Metal is unmeasured."""
    device = stream.device if isinstance(stream, mx.Stream) else (stream or mx.default_device())
    kind = device if isinstance(device, mx.DeviceType) else device.type
    if kind != mx.gpu or not mx.cuda.is_available() or in_channels < 512:
        return False
    return ext.conv3x3_kernel_family(stream) == "mma"


# Default bound on the attention scores (and softmax) that attention_bounded holds at once.
ATTENTION_SCORES_BUDGET = ext.ATTENTION_SCORES_BUDGET


def attention_bounded(q: mx.array, k: mx.array, v: mx.array, scale: float,
                      scores_budget: int = ATTENTION_SCORES_BUDGET, *, stream: StreamOrDevice = None) -> mx.array:
    """``attention`` for eager callers with the scores bounded on every backend: the flash-style
    kernel where the stream's backend has one (the CPU); elsewhere the composition a chunk of
    queries at a time (``scores_budget`` bytes of scores each), evaluated chunk by chunk: left
    lazy, MLX allocates later chunks' scores before earlier ones are freed."""
    if ext.has_kernel("attention", stream):
        return attention(q, k, v, scale, stream=stream)
    rows = min(q.shape[1], ext.attention_query_rows(q.shape[0], k.shape[1], q.itemsize, scores_budget))
    chunks = []
    for r0 in range(0, q.shape[1], rows):
        chunks.append(attention(q[:, r0 : r0 + rows], k, v, scale, stream=stream))
        mx.eval(chunks[-1])
    return chunks[0] if len(chunks) == 1 else mx.concatenate(chunks, axis=1)


def attention(q: mx.array, k: mx.array, v: mx.array, scale: float, *, stream: StreamOrDevice = None) -> mx.array:
    """softmax(q @ k^T * scale) @ v for q [B, Tq, C], k and v [B, Tk, C] (one head), computed a
    block of queries at a time with an online softmax: the Tq x Tk scores are never allocated."""
    for name, a in (("q", q), ("k", k), ("v", v)):
        _require_array(name, a)
    return ext.attention(q, k, v, _float_arg("scale", scale), stream=stream)
