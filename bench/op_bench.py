"""Per-op benchmark: fused conv3x3 (each option) vs the mlx.nn composition it replaces,
at the VAE shapes of a decode.

    python -m bench.op_bench --decode-size 512 1024 2048 [--dtype bfloat16] [--out bench/results]

For each decode of --decode-size^2 pixels it takes each distinct 3x3 conv of the Flux/SD
decoder (C, O in {128, 256, 512}, at the resolution where it occurs) and times the fused
op (median of --repeats after a warm-up) and the mlx.nn composition, and records the MLX
allocator's peak above the inputs against the op's floor (output, plus a materialised
shortcut-free residual if any). The composition is skipped above --reference-max-gflop
(MLX's Linux CPU conv runs at ~2 GFLOP/s). --conv2d adds mx.conv2d alone on the same
(upsampled) input - on MLX's CUDA build that is cuDNN - as the speed to compare the fused
kernel's FLOP/s with, and for the normalised convs the conv primitive given the GroupNorm
statistics (the fused op less its statistics pass, which reads the input once). --inner N
evaluates N calls per timed run (GPU ops of a millisecond or less; the time reported is per
call). Writes JSON and a PNG plot.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import mlx.core as mx

from bench.common import MiB, machine_info, reset_peak, time_runs, write_json

# (name, C, O, input resolution divisor of the decode size, option)
# option: what the fused op applies on top of the conv.
VAE_CONVS = [
    ("mid resnet conv (norm+silu+residual)", 512, 512, 8, "norm_silu_residual"),
    ("up0 upsampler (upsample)", 512, 512, 8, "upsample"),
    ("up1 resnet conv (norm+silu)", 512, 512, 4, "norm_silu"),
    ("up2 first conv (norm+silu, 512->256)", 512, 256, 2, "norm_silu"),
    ("up2 resnet conv (norm+silu+residual)", 256, 256, 2, "norm_silu_residual"),
    ("up2 upsampler (upsample)", 256, 256, 2, "upsample"),
    ("up3 first conv (norm+silu, 256->128)", 256, 128, 1, "norm_silu"),
    ("up3 resnet conv (norm+silu+residual)", 128, 128, 1, "norm_silu_residual"),
    ("conv_out (norm+silu, 128->3)", 128, 3, 1, "norm_silu"),
]


def make_inputs(c: int, o: int, res: int, option: str, dtype):
    key = mx.random.key(0)
    k = mx.random.split(key, 6)
    up = 2 if option == "upsample" else 1
    x = mx.random.normal((1, res, res, c), key=k[0]).astype(dtype)
    w = (mx.random.normal((o, 3, 3, c), key=k[1]) / (3 * c**0.5)).astype(dtype)
    b = (0.1 * mx.random.normal((o,), key=k[2])).astype(dtype)
    g = (1 + 0.1 * mx.random.normal((c,), key=k[3])).astype(dtype)
    beta = (0.1 * mx.random.normal((c,), key=k[4])).astype(dtype)
    r = mx.random.normal((1, res * up, res * up, o), key=k[5]).astype(dtype) if "residual" in option else None
    mx.eval(x, w, b, g, beta, *([r] if r is not None else []))
    return x, w, b, g, beta, r, up


def fused_fn(x, w, b, g, beta, r, up, option):
    import fusedconv

    if option.startswith("norm_silu"):
        return lambda: fusedconv.gn_silu_conv3x3(x, g, beta, w, b, groups=32, residual=r)
    return lambda: fusedconv.conv3x3(x, w, b, upsample=up)


def conv_given_stats_fn(x, w, b, g, beta, r):
    """The conv primitive alone, its GroupNorm statistics computed beforehand (as a decoder
    computes them once per norm): the fused op less its statistics pass."""
    import fusedconv

    stats = fusedconv.group_norm_stats(x, 32, 1e-6)
    mx.eval(stats)
    return lambda: fusedconv.conv3x3(x, w, b, norm=(stats, g, beta), silu=True, residual=r)


def reference_fn(x, w, b, g, beta, r, up, option):
    from fusedconv.reference import reference_conv3x3

    norm = (g, beta, 32, 1e-6) if option.startswith("norm_silu") else None
    return lambda: reference_conv3x3(x, w, b, group_norm=norm, silu=norm is not None, upsample=up, residual=r)


def conv2d_fn(x, w, up):
    """mx.conv2d alone (no norm, activation or bias) on the input the fused op convolves."""
    xin = mx.repeat(mx.repeat(x, up, axis=1), up, axis=2) if up > 1 else x
    mx.eval(xin)
    return lambda: mx.conv2d(xin, w, padding=1)


def measure(fn, repeats: int, inner: int = 1) -> dict:
    base = reset_peak()
    out = fn()
    mx.eval(out)
    peak = mx.get_peak_memory() - base
    out_bytes = out.nbytes
    del out
    timing = time_runs(lambda: mx.eval([fn() for _ in range(inner)]), repeats, warmup=1)
    per_call = {k: (v / inner if k != "runs" else [t / inner for t in v]) for k, v in timing.items()}
    return {"peak_above_inputs_bytes": peak, "output_bytes": out_bytes, "inner": inner, **per_call}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--decode-size", type=int, nargs="+", default=[512])
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--reference-max-gflop", type=float, default=60.0)
    p.add_argument("--conv2d", action="store_true",
                   help="also time mx.conv2d alone (cuDNN on MLX's CUDA build) and the conv primitive given the "
                        "GroupNorm statistics")
    p.add_argument("--inner", type=int, default=1, help="calls per timed run")
    p.add_argument("--out", type=Path, default=Path("bench/results"))
    args = p.parse_args(argv)
    dtype = getattr(mx, args.dtype)

    for size in args.decode_size:
        rows = []
        for name, c, o, div, option in VAE_CONVS:
            res = size // div
            x, w, b, g, beta, r, up = make_inputs(c, o, res, option, dtype)
            gflop = 2 * (res * up) ** 2 * c * o * 9 / 1e9
            row = {"name": name, "C": c, "O": o, "input_res": res, "option": option, "gflop": gflop}
            row["fused"] = measure(fused_fn(x, w, b, g, beta, r, up, option), args.repeats, args.inner)
            if args.conv2d:
                row["conv2d"] = measure(conv2d_fn(x, w, up), args.repeats, args.inner)
                if option.startswith("norm_silu"):
                    row["conv_given_stats"] = measure(conv_given_stats_fn(x, w, b, g, beta, r), args.repeats,
                                                      args.inner)
            if gflop <= args.reference_max_gflop:
                row["reference"] = measure(reference_fn(x, w, b, g, beta, r, up, option), 1, args.inner)
            else:
                row["reference"] = {"skipped": f"{gflop:.0f} GFLOP > --reference-max-gflop {args.reference_max_gflop}"}
            rows.append(row)
            print_row(row)
        stem = f"ops_{size}_{args.dtype}"
        run_args = {**vars(args), "decode_size": size, "out": str(args.out)}
        write_json(args.out / f"{stem}.json", {"machine": machine_info(), "args": run_args, "results": rows})
        plot(rows, args.out / f"{stem}.png", size)
    return 0


def print_row(row: dict) -> None:
    f, r = row["fused"], row["reference"]
    line = (f"{row['name']:<40} {row['input_res']:>4}px  fused {f['median_s']:7.3f} s "
            f"{row['gflop'] / f['median_s']:6.1f} GFLOP/s peak-out {(f['peak_above_inputs_bytes'] - f['output_bytes']) / MiB:7.1f} MiB")
    if "median_s" in r:
        line += (f" | mlx.nn {r['median_s']:7.2f} s peak-out {(r['peak_above_inputs_bytes'] - r['output_bytes']) / MiB:8.1f} MiB"
                 f" | {r['median_s'] / f['median_s']:5.1f}x faster, "
                 f"{r['peak_above_inputs_bytes'] / f['peak_above_inputs_bytes']:5.1f}x less peak")
    else:
        line += f" | mlx.nn skipped ({r['skipped']})"
    if "conv2d" in row:
        c = row["conv2d"]
        line += (f" | mx.conv2d {c['median_s'] * 1e3:8.3f} ms {row['gflop'] / c['median_s'] / 1e3:6.1f} TFLOP/s"
                 f" (fused at {c['median_s'] / f['median_s']:.0%} of its FLOP/s")
        if "conv_given_stats" in row:
            line += f"; the conv given the statistics at {c['median_s'] / row['conv_given_stats']['median_s']:.0%}"
        line += ")"
    print(line)


def plot(rows: list, path: Path, size: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['C']}->{r['O']} @{r['input_res']}\n{r['option']}" for r in rows]
    xs = range(len(rows))
    fig, (ax_m, ax_t) = plt.subplots(2, 1, figsize=(11, 7), sharex=True)
    ax_m.bar([i - 0.2 for i in xs], [r["fused"]["peak_above_inputs_bytes"] / MiB for r in rows], 0.4, label="fused")
    ax_m.bar([i + 0.2 for i in xs], [r["reference"].get("peak_above_inputs_bytes", 0) / MiB for r in rows], 0.4,
             label="mlx.nn (0 = skipped)")
    ax_m.plot(list(xs), [r["fused"]["output_bytes"] / MiB for r in rows], "k_", markersize=20, label="output (floor)")
    ax_m.set_ylabel("peak above inputs (MiB)")
    ax_m.set_yscale("log")
    ax_m.legend(fontsize=8)
    ax_t.bar([i - 0.2 for i in xs], [r["fused"]["median_s"] for r in rows], 0.4, label="fused")
    ax_t.bar([i + 0.2 for i in xs], [r["reference"].get("median_s", 0) for r in rows], 0.4, label="mlx.nn")
    ax_t.set_ylabel("time (s, median)")
    ax_t.set_yscale("log")
    ax_t.set_xticks(list(xs), labels, fontsize=7)
    ax_t.legend(fontsize=8)
    fig.suptitle(f"conv3x3 ops of a {size}x{size} decode")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
