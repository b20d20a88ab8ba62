"""The primitives under MLX's transforms: grad / vjp / jvp / vmap / compile, all derived
from each op's reference composition (csrc/reference.cpp), and graph export's refusal.

Tolerances: float32 throughout; the fused forward and the composition differ only in
accumulation order (~1e-6 relative), and the gradients go through the same composition on
both sides, so 1e-4 relative to each gradient's largest entry leaves ample room."""

import mlx.core as mx
import mlx.nn as nn
import pytest

import fusedconv
from reference import normalized_error

TOL = 1e-4


def rand(key, shape, scale=1.0):
    return scale * mx.random.normal(shape, key=mx.random.key(key))


def fused_block(x, w, b, gamma, beta, tail, upsample, groups=4):
    """GroupNorm -> SiLU -> upsample -> conv3x3 -> + residual / shortcut, through the fused ops."""
    stats = fusedconv.group_norm_stats(x, groups, 1e-6)
    kw = dict(residual=tail[0]) if len(tail) == 1 else dict(shortcut=tail)
    return fusedconv.conv3x3(x, w, b, norm=(stats, gamma, beta), silu=True, upsample=upsample, **kw)


def nn_block(x, w, b, gamma, beta, tail, upsample, groups=4):
    """The same block in mlx.nn ops."""
    gn = nn.GroupNorm(groups, x.shape[-1], eps=1e-6, pytorch_compatible=True)
    gn.weight, gn.bias = gamma, beta
    h = nn.silu(gn(x))
    if upsample == 2:
        h = nn.Upsample(scale_factor=2, mode="nearest")(h)
    y = mx.conv2d(h, w, padding=1) + b
    if len(tail) == 1:
        return y + tail[0]
    xs, ws, bs = tail
    return y + xs @ ws.reshape(ws.shape[0], -1).T + bs


def block_inputs(upsample, shortcut):
    n, h, w, c, o = 2, 5, 6, 8, 12
    ho, wo = h * upsample, w * upsample
    args = [rand(1, (n, h, w, c)), rand(2, (o, 3, 3, c), 0.2), rand(3, (o,), 0.1), 1 + rand(4, (c,), 0.2),
            rand(5, (c,), 0.2)]
    tail = (rand(6, (n, ho, wo, 5)), rand(7, (o, 1, 1, 5), 0.3), rand(8, (o,), 0.1)) if shortcut else \
        (rand(6, (n, ho, wo, o)),)
    return args, tail


@pytest.mark.parametrize("upsample", [1, 2])
@pytest.mark.parametrize("shortcut", [False, True], ids=["residual", "shortcut"])
def test_grad_of_fused_block_matches_mlx_nn_block_for_every_input(upsample, shortcut):
    args, tail = block_inputs(upsample, shortcut)
    count = len(args) + len(tail)

    def loss(block):
        def f(*a):
            y = block(*a[:5], tuple(a[5:]), upsample)
            return (y * mx.cos(y)).sum()  # a non-linear loss: cotangents differ per element
        return f

    got = mx.grad(loss(fused_block), argnums=tuple(range(count)))(*args, *tail)
    want = mx.grad(loss(nn_block), argnums=tuple(range(count)))(*args, *tail)
    for i, (g, w) in enumerate(zip(got, want)):
        assert g.shape == w.shape
        assert normalized_error(g, w) <= TOL, f"input {i}"


def conv_fn():
    args, tail = block_inputs(2, True)
    return lambda *a: fused_block(*a[:5], tuple(a[5:]), 2), list(args) + list(tail)


def linear_fn():
    return (lambda x, w, b: fusedconv.linear(x, w, b)), [rand(1, (2, 3, 16)), rand(2, (8, 16)), rand(3, (8,))]


def attention_fn():
    return (lambda q, k, v: fusedconv.attention(q, k, v, 0.3)), [rand(i, (2, 70, 8)) for i in (1, 2, 3)]


def stats_fn():
    return (lambda x: fusedconv.group_norm_stats(x, 4, 1e-5)), [2 + rand(1, (2, 5, 6, 8))]


OPS = {"conv3x3": conv_fn, "linear": linear_fn, "attention": attention_fn, "group_norm_stats": stats_fn}


@pytest.mark.parametrize("op", list(OPS))
def test_jvp_matches_finite_differences(op):
    fn, primals = OPS[op]()
    tangents = [rand(100 + i, p.shape) for i, p in enumerate(primals)]
    _, (jt,) = mx.jvp(lambda *a: [fn(*a)], primals, tangents)
    eps = 1e-3  # central differences of the float32 op: O(eps^2) truncation + ~1e-7 / eps rounding
    plus = fn(*[p + eps * t for p, t in zip(primals, tangents)])
    minus = fn(*[p - eps * t for p, t in zip(primals, tangents)])
    fd = (plus.astype(mx.float32) - minus.astype(mx.float32)) / (2 * eps)
    assert normalized_error(jt, fd) <= 2e-2


@pytest.mark.parametrize("op", list(OPS))
def test_vjp_is_the_adjoint_of_jvp(op):
    """<J t, u> == <t, J^T u> for random t, u: the two transforms agree."""
    fn, primals = OPS[op]()
    tangents = [rand(100 + i, p.shape) for i, p in enumerate(primals)]
    out = fn(*primals)
    u = rand(99, out.shape)
    _, (jt,) = mx.jvp(lambda *a: [fn(*a)], primals, tangents)
    _, vjps = mx.vjp(lambda *a: [fn(*a)], primals, [u])
    lhs = (jt * u).sum().item()
    rhs = sum((t * g).sum().item() for t, g in zip(tangents, vjps))
    assert lhs == pytest.approx(rhs, rel=1e-4, abs=1e-4)


@pytest.mark.parametrize("op", list(OPS))
def test_vmap_matches_a_loop(op):
    """vmap over a new leading axis of the first input (folded into the batch where the op
    allows, else the composition's vmap), and over every input for the conv."""
    fn, primals = OPS[op]()
    first = mx.stack([primals[0], 1.5 * primals[0], -primals[0]])
    got = mx.vmap(lambda a: fn(a, *primals[1:]))(first)
    want = mx.stack([fn(a, *primals[1:]) for a in (primals[0], 1.5 * primals[0], -primals[0])])
    assert normalized_error(got, want) <= 1e-5


def test_vmap_of_conv_over_weights_uses_the_composition():
    fn, primals = conv_fn()
    ws = mx.stack([primals[1], 0.5 * primals[1]])
    got = mx.vmap(lambda w: fn(primals[0], w, *primals[2:]))(ws)
    want = mx.stack([fn(primals[0], w, *primals[2:]) for w in (primals[1], 0.5 * primals[1])])
    assert normalized_error(got, want) <= 1e-5


@pytest.mark.parametrize("op", list(OPS))
def test_compile_matches_eager(op):
    fn, primals = OPS[op]()
    mx.eval(primals)
    assert normalized_error(mx.compile(fn)(*primals), fn(*primals)) <= 1e-6


def test_shapeless_compile_follows_new_shapes():
    """Linear takes N-D x itself (no reshape node), so a shapeless compile re-infers its shapes;
    likewise the conv and the statistics over a new batch / image size."""
    w, b = rand(2, (8, 16)), rand(3, (8,))
    mx.eval(w, b)
    lin = mx.compile(lambda x: fusedconv.linear(x, w, b), shapeless=True)
    for shape in [(2, 3, 16), (5, 7, 16)]:
        x = rand(1, shape)
        assert normalized_error(lin(x), x @ w.T + b) <= 1e-5
    wc = rand(4, (3, 3, 3, 8), 0.2)
    mx.eval(wc)
    conv = mx.compile(lambda x: fusedconv.conv3x3(x, wc, norm=(fusedconv.group_norm_stats(x, 2), mx.ones((8,)),
                                                                 mx.zeros((8,))), silu=True), shapeless=True)
    for shape in [(1, 4, 5, 8), (2, 6, 3, 8)]:
        x = rand(5, shape)
        want = fusedconv.conv3x3(x, wc, norm=(fusedconv.group_norm_stats(x, 2), mx.ones((8,)), mx.zeros((8,))),
                                 silu=True)
        assert conv(x).shape == want.shape and normalized_error(conv(x), want) <= 1e-6


def test_graph_export_is_refused_at_export_time(tmp_path):
    """Export would need to serialise the custom primitives; MLX refuses when it meets the first
    node it cannot serialise (the Contiguous node in front of the primitive's inputs)."""
    w = rand(2, (3, 3, 3, 8))
    x = rand(1, (1, 4, 4, 8))
    mx.eval(w, x)
    with pytest.raises(ValueError, match="Unable to serialize primitive"):
        mx.export_function(str(tmp_path / "f.mlxfn"), lambda x: fusedconv.conv3x3(x, w), x)


def test_decoder_forward_has_no_device_branch():
    """One fused path for every backend: the decoder code never asks which device runs."""
    import inspect

    from fusedconv import decoder

    src = inspect.getsource(decoder)
    assert "default_device" not in src and "mx.cpu" not in src and "mx.gpu" not in src
