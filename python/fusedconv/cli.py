"""Command line: `fusedconv demo` (fused vs mlx.nn on one VAE conv), `fusedconv decode`
(latents -> PNG through the MLX AutoencoderKL decoder) and `fusedconv doctor` (versions,
kernels, parity and timing, for bug reports)."""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

import mlx.core as mx
import numpy as np

from .config import PRESETS

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
        lambda: reference_conv3x3(x, weight, bias, group_norm=(gamma, beta, 32, 1e-6), silu=True)
    )
    print(f"  mlx.nn    : {t_r:8.3f} s  {flops / t_r / 1e9:7.1f} GFLOP/s  peak above inputs {p_r / MiB:9.1f} MiB")
    print(f"  fused is {t_r / t_f:.1f}x faster and peaks {p_r / max(p_f, 1):.1f}x lower")
    diff = mx.abs(fused.astype(mx.float32) - ref.astype(mx.float32)).max().item()
    print(f"  max |fused - mlx.nn| = {diff:.4g} (normalized {normalized_error(fused, ref):.3g})")
    return 0


def _read_latents(path: Path, latent_channels: int, layout: str) -> mx.array:
    """Latents in the given layout (never guessed: an NCHW latent whose width equals the
    channel count reads as NHWC just as well)."""
    if path.suffix == ".npy":
        z = mx.array(np.load(path))
    elif path.suffix == ".safetensors":
        tensors = mx.load(str(path))
        if len(tensors) != 1 and "latents" not in tensors:
            raise ValueError(f"latents: {path} holds {len(tensors)} tensors; name the latents 'latents'")
        z = tensors["latents"] if "latents" in tensors else next(iter(tensors.values()))
    else:
        raise ValueError(f"latents: expected a .npy or .safetensors file, got {path}")
    if z.ndim == 3:
        z = z[None]
    if z.ndim != 4:
        raise ValueError(f"latents: expected [N, C, h, w] or [N, h, w, C], got shape {z.shape}")
    axis = 1 if layout == "nchw" else 3
    if z.shape[axis] != latent_channels:
        other = "nhwc" if layout == "nchw" else "nchw"
        hint = f"; is it {other.upper()}? pass --layout {other}" if z.shape[4 - axis] == latent_channels else ""
        raise ValueError(f"latents: {layout.upper()} shape {tuple(z.shape)} does not have the {latent_channels} "
                         f"channels this config needs on axis {axis}{hint}")
    if layout == "nchw":
        z = z.transpose(0, 2, 3, 1)
    if not mx.isfinite(z).all().item():
        raise ValueError(f"latents: {path} holds NaN or infinite values")
    return z.astype(mx.float32)


def _save_images(images: mx.array, out: Path) -> list:
    from PIL import Image

    pixels = np.array((mx.clip(images.astype(mx.float32) / 2 + 0.5, 0, 1) * 255).round().astype(mx.uint8))
    paths = [out] if len(pixels) == 1 else [out.with_name(f"{out.stem}-{i}{out.suffix}") for i in range(len(pixels))]
    for p, img in zip(paths, pixels):
        Image.fromarray(img).save(p)
    return paths


def decode(args) -> int:
    from tqdm import tqdm

    from .vae import load_decoder

    for name, p in (("latents", args.latents), ("--weights", args.weights)):
        if not Path(p).exists():
            raise FileNotFoundError(f"{name}: {p} does not exist")
    if Path(args.latents).is_dir():
        raise ValueError(f"latents: {args.latents} is a folder; expected a .npy or .safetensors file")
    _check_writable(Path(args.output))
    decoder = load_decoder(args.weights, config=args.config, dtype=DTYPES[args.dtype]).set_fused(not args.reference)
    # decode_latents takes the pipeline's latents (FLUX.2: 2x2-patchified, 4x the channels)
    channels = decoder.latent_channels if args.no_scaling else decoder.pipeline_latent_channels
    z = _read_latents(Path(args.latents), channels, args.layout)
    with tqdm(total=len(decoder.stages()), desc="decode", unit="stage", disable=args.quiet) as bar:
        images, seconds, peak = _measure(
            lambda: (decoder.decode if args.no_scaling else decoder.decode_latents)(z, on_stage=lambda _: bar.update())
        )
    if not mx.isfinite(images).all().item():
        print("fusedconv decode: warning: the decoded image holds NaN or infinite values "
              "(weights or latents out of range?)", file=sys.stderr)
    paths = _save_images(images, Path(args.output))
    n, h, w, _ = images.shape
    path_name = "reference (mlx.nn)" if args.reference else "fused"
    print(f"decoded {n}x{h}x{w} ({path_name}, {args.dtype}) in {seconds:.2f} s, "
          f"peak {peak / MiB:.1f} MiB above weights+latents -> {', '.join(map(str, paths))}")
    return 0 if mx.isfinite(images).all().item() else 1


def _check_writable(out: Path) -> None:
    """Fails before the decode, not after it: the output's folder must exist and take a file
    (tried by creating it: permission bits do not stop root)."""
    if out.is_dir():
        raise ValueError(f"--output: {out} is a folder; give a file name ending in .png")
    existed = out.exists()
    try:
        with open(out, "ab"):
            pass
    except OSError as e:
        raise ValueError(f"--output: cannot write {out} ({e.strerror})") from None
    if not existed:
        out.unlink()


def doctor(args) -> int:
    from .doctor import main as run_doctor

    return run_doctor(args.json)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="fusedconv", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="fused vs mlx.nn GroupNorm+SiLU+conv3x3: peak memory, time, difference")
    p.add_argument("--size", type=int, default=512, help="image height and width (default 512)")
    p.add_argument("--channels", type=int, default=128, help="C = O (default 128)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16")
    p.add_argument("--skip-reference", action="store_true", help="run only the fused op")
    p.set_defaults(func=demo)

    p = sub.add_parser("decode", help="decode latents to a PNG")
    p.add_argument("latents", help="latents .npy or .safetensors, [N,C,h,w] (or [N,h,w,C] with --layout nhwc)")
    p.add_argument("--weights", required=True, help="diffusers VAE folder, pipeline folder, or .safetensors file")
    p.add_argument("--config", help=f"preset for single-file weights: {', '.join(PRESETS)}")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16")
    p.add_argument("--reference", action="store_true", help="use the unfused mlx.nn path")
    p.add_argument("--no-scaling", action="store_true", help="latents are already unscaled (skip scaling/shift)")
    p.add_argument("--layout", choices=["nchw", "nhwc"], default="nchw",
                   help="axis order of the latents file (default nchw, what pipelines save)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("-o", "--output", default="decoded.png", help="output PNG (index appended for batches)")
    p.set_defaults(func=decode)

    p = sub.add_parser("doctor", help="versions, devices, each kernel's parity and timing (paste into bug reports)")
    p.add_argument("--json", help="also write the report as JSON to this file")
    p.set_defaults(func=doctor)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError, TypeError) as e:
        print(f"fusedconv {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
