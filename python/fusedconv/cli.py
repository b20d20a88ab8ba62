"""Command line: `fusedconv demo` (fused vs mlx.nn on one VAE conv)."""

from __future__ import annotations

import argparse
import gc
import sys
import time

import mlx.core as mx

DTYPES = {"bfloat16": mx.bfloat16, "float16": mx.float16, "float32": mx.float32}
MiB = 2**20


def _measure(fn):
    """Runs fn once; returns (output, seconds, peak allocator bytes above what was live)."""
    gc.collect()
    mx.clear_cache()
    mx.reset_peak_memory()
    base = mx.get_active_memory()
    t0 = time.perf_counter()
    out = fn()
    mx.eval(out)
    return out, time.perf_counter() - t0, mx.get_peak_memory() - base


def demo(args) -> int:
    from .ops import gn_silu_conv3x3
    from .reference import normalized_error, reference_conv3x3

    dtype = DTYPES[args.dtype]
    h = w = args.size
    c, o = args.channels, args.channels
    x = mx.random.normal((1, h, w, c), key=mx.random.key(0)).astype(dtype)
    weight = (mx.random.normal((o, 3, 3, c), key=mx.random.key(1)) / (3 * c**0.5)).astype(dtype)
    gamma = (1 + 0.1 * mx.random.normal((c,), key=mx.random.key(2))).astype(dtype)
    beta = (0.1 * mx.random.normal((c,), key=mx.random.key(3))).astype(dtype)
    bias = (0.1 * mx.random.normal((o,), key=mx.random.key(4))).astype(dtype)
    mx.eval(x, weight, gamma, beta, bias)
    out_mib = h * w * o * x.itemsize / MiB
    flops = 2 * h * w * c * o * 9
    print(f"GroupNorm(32)+SiLU+conv3x3, {h}x{w}, C=O={c}, {args.dtype}, device {mx.default_device()}")
    print(f"  inputs {x.nbytes / MiB:.1f} MiB, output {out_mib:.1f} MiB")

    fused, t_f, p_f = _measure(lambda: gn_silu_conv3x3(x, gamma, beta, weight, bias, groups=32))
    print(f"  fused     : {t_f:8.3f} s  {flops / t_f / 1e9:7.1f} GFLOP/s  peak above inputs {p_f / MiB:9.1f} MiB")
    if args.skip_reference:
        return 0
    ref, t_r, p_r = _measure(
        lambda: reference_conv3x3(x, weight, bias, norm=(gamma, beta, 32, 1e-6), silu=True)
    )
    print(f"  mlx.nn    : {t_r:8.3f} s  {flops / t_r / 1e9:7.1f} GFLOP/s  peak above inputs {p_r / MiB:9.1f} MiB")
    print(f"  fused is {t_r / t_f:.1f}x faster and peaks {p_r / max(p_f, 1):.1f}x lower")
    diff = mx.abs(fused.astype(mx.float32) - ref.astype(mx.float32)).max().item()
    print(f"  max |fused - mlx.nn| = {diff:.4g} (normalized {normalized_error(fused, ref):.3g})")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="fusedconv", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="fused vs mlx.nn GroupNorm+SiLU+conv3x3: peak memory, time, difference")
    p.add_argument("--size", type=int, default=512, help="image height and width (default 512)")
    p.add_argument("--channels", type=int, default=128, help="C = O (default 128)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16")
    p.add_argument("--skip-reference", action="store_true", help="run only the fused op")
    p.set_defaults(func=demo)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
