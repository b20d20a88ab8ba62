"""fusedconv.nn modules accept mlx.nn parameter trees unchanged and match mlx.nn."""

import fusedconv.nn as fnn
import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten
from reference import normalized_error


def test_conv3x3_has_conv2d_parameters_and_matches_it():
    ref = nn.Conv2d(16, 24, 3, padding=1)
    fused = fnn.Conv3x3(16, 24)
    assert {k: v.shape for k, v in tree_flatten(ref.parameters())} == {
        k: v.shape for k, v in tree_flatten(fused.parameters())
    }
    fused.load_weights(list(tree_flatten(ref.parameters())))
    x = mx.random.normal((2, 9, 7, 16))
    assert normalized_error(fused(x), ref(x)) <= 1e-5


def test_group_norm_silu_conv_matches_composition_and_loads_mlx_tree():
    groups, c, o = 8, 32, 12
    norm = nn.GroupNorm(groups, c, eps=1e-6, pytorch_compatible=True)
    conv = nn.Conv2d(c, o, 3, padding=1)
    norm.weight = mx.random.normal((c,))
    norm.bias = mx.random.normal((c,))
    block = fnn.GroupNormSiLUConv3x3(c, o, groups=groups)
    block.load_weights(
        [(f"norm.{k}", v) for k, v in tree_flatten(norm.parameters())]
        + [(f"conv.{k}", v) for k, v in tree_flatten(conv.parameters())]
    )
    x = mx.random.normal((1, 10, 11, c)) * 3 + 1
    res = mx.random.normal((1, 20, 22, o))
    got = block(x, upsample=2, residual=res)
    want = conv(nn.Upsample(2, "nearest")(nn.silu(norm(x)))) + res
    assert normalized_error(got, want) <= 1e-5


def test_group_norm_module_is_pytorch_grouping_and_exposes_norm_args():
    gn = fnn.GroupNorm(4, 8)
    assert gn.pytorch_compatible
    x = mx.random.normal((1, 3, 3, 8))
    stats, gamma, beta = gn.norm_args(x)
    assert stats.shape == (1, 4, 2) and gamma.shape == (8,) and beta.shape == (8,)
