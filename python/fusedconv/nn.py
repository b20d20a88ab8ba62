"""mlx.nn modules whose parameters are named as mlx.nn's, so a parameter tree
made for mlx.nn.Conv2d / mlx.nn.GroupNorm loads unchanged, and whose calls run
the fused ops.
"""

from __future__ import annotations

from typing import Optional, Tuple

import mlx.core as mx
import mlx.nn as nn

from .ops import conv3x3, group_norm_stats


class GroupNorm(nn.GroupNorm):
    """mlx.nn.GroupNorm with PyTorch grouping (as torch.nn.GroupNorm and diffusers).

    Calling it materialises the normalised tensor like mlx.nn; ``norm_args(x)``
    instead returns the (stats, gamma, beta) that conv3x3 applies on load.
    """

    def __init__(self, num_groups: int, dims: int, eps: float = 1e-6, affine: bool = True):
        super().__init__(num_groups, dims, eps=eps, affine=affine, pytorch_compatible=True)

    def stats(self, x: mx.array) -> mx.array:
        return group_norm_stats(x, self.num_groups, self.eps)

    def norm_args(self, x: mx.array) -> Tuple[mx.array, mx.array, mx.array]:
        if "weight" in self:
            gamma, beta = self.weight, self.bias
        else:
            gamma = mx.ones((self.dims,), dtype=x.dtype)
            beta = mx.zeros((self.dims,), dtype=x.dtype)
        return self.stats(x), gamma, beta


class Conv3x3(nn.Conv2d):
    """mlx.nn.Conv2d(in, out, 3, padding=1) whose call is the fused conv3x3.

    ``conv(x)`` equals mlx.nn.Conv2d's output; the keyword options fuse the
    input transform (norm/SiLU/upsample) and the residual add.
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True):
        super().__init__(in_channels, out_channels, 3, stride=1, padding=1, bias=bias)

    def __call__(
        self,
        x: mx.array,
        *,
        norm: Optional[Tuple[mx.array, mx.array, mx.array]] = None,
        pixel_norm: Optional[Tuple[mx.array, mx.array, mx.array]] = None,
        silu: bool = False,
        upsample: int = 1,
        residual: Optional[mx.array] = None,
        shortcut: Optional[Tuple[mx.array, mx.array, Optional[mx.array]]] = None,
    ) -> mx.array:
        bias = self.bias if "bias" in self else None
        return conv3x3(x, self.weight, bias, norm=norm, pixel_norm=pixel_norm, silu=silu, upsample=upsample,
                       residual=residual, shortcut=shortcut)


    def unfused(self, x: mx.array) -> mx.array:
        """mlx.nn.Conv2d's own call (the reference path)."""
        return nn.Conv2d.__call__(self, x)


class GroupNormSiLUConv3x3(nn.Module):
    """GroupNorm -> SiLU -> [nearest 2x] -> conv3x3 [+ residual], as one fused op.

    Parameters live under ``norm`` (weight, bias) and ``conv`` (weight, bias).
    """

    def __init__(self, in_channels: int, out_channels: int, groups: int = 32, eps: float = 1e-6, bias: bool = True):
        super().__init__()
        self.norm = GroupNorm(groups, in_channels, eps=eps)
        self.conv = Conv3x3(in_channels, out_channels, bias=bias)

    def __call__(self, x: mx.array, *, upsample: int = 1, residual: Optional[mx.array] = None) -> mx.array:
        return self.conv(x, norm=self.norm.norm_args(x), silu=True, upsample=upsample, residual=residual)
