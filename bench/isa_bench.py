"""CPU kernel benchmark: the fused conv3x3 under each instruction-set build this machine
runs, side by side with PyTorch's conv2d (oneDNN) on the same threads, at the VAE shapes.

    python -m bench.isa_bench --decode-size 512 [--dtype bfloat16] [--torch-dtype bfloat16 float32]

For each distinct 3x3 conv of a --decode-size^2 Flux/SD decode (bench.op_bench.VAE_CONVS)
it times the fused op (GroupNorm+SiLU / upsample / residual as in the decoder) once per
ISA (FUSEDCONV_CPU_ISA, read when the op is planned) and torch.nn.functional.conv2d on
channels-last tensors of each --torch-dtype (the conv alone: torch's GroupNorm and SiLU
are extra ops this leaves out, which favours torch). Threads: FUSEDCONV_NUM_THREADS and
torch.set_num_threads both get --threads (default: all cores). Reports medians, GFLOP/s
and the ratio to the fastest torch dtype; writes JSON and a PNG plot.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import mlx.core as mx

from bench.common import machine_info, time_runs, write_json
from bench.op_bench import VAE_CONVS, fused_fn, make_inputs


def torch_conv_fn(x, w, b, up, torch_dtype: str):
    import numpy as np
    import torch

    dt = getattr(torch, torch_dtype)
    xt = torch.from_numpy(np.asarray(x.astype(mx.float32))).permute(0, 3, 1, 2).to(dt)
    xt = xt.contiguous(memory_format=torch.channels_last)
    wt = torch.from_numpy(np.asarray(w.astype(mx.float32))).permute(0, 3, 1, 2).to(dt)
    wt = wt.contiguous(memory_format=torch.channels_last)
    bt = torch.from_numpy(np.asarray(b.astype(mx.float32))).to(dt)

    def run():
        with torch.inference_mode():
            inp = torch.nn.functional.interpolate(xt, scale_factor=2.0, mode="nearest") if up == 2 else xt
            return torch.nn.functional.conv2d(inp, wt, bt, padding=1)

    return run


def main(argv=None) -> int:
    from fusedconv._abi import ext

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--decode-size", type=int, default=512)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--torch-dtype", nargs="*", default=["bfloat16", "float32"], choices=["bfloat16", "float32"])
    p.add_argument("--isa", nargs="*", default=ext.cpu_isas().split(","), help="default: every ISA this CPU runs")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path("bench/results"))
    args = p.parse_args(argv)
    os.environ["FUSEDCONV_NUM_THREADS"] = str(args.threads)
    if args.torch_dtype:
        import torch

        torch.set_num_threads(args.threads)
    dtype = getattr(mx, args.dtype)

    rows = []
    with mx.stream(mx.cpu):
        for name, c, o, div, option in VAE_CONVS:
            res = args.decode_size // div
            x, w, b, g, beta, r, up = make_inputs(c, o, res, option, dtype)
            gflop = 2 * (res * up) ** 2 * c * o * 9 / 1e9
            row = {"name": name, "C": c, "O": o, "input_res": res, "option": option, "gflop": gflop, "times": {}}
            for isa in args.isa:
                os.environ["FUSEDCONV_CPU_ISA"] = isa
                fn = fused_fn(x, w, b, g, beta, r, up, option)
                row["times"][f"fused {isa}"] = time_runs(lambda fn=fn: mx.eval(fn()), args.repeats)
            for tdt in args.torch_dtype:
                row["times"][f"torch {tdt}"] = time_runs(torch_conv_fn(x, w, b, up, tdt), args.repeats)
            rows.append(row)
            print_row(row)
    os.environ.pop("FUSEDCONV_CPU_ISA", None)
    summary = totals(rows)
    for method, secs in summary.items():
        print(f"{'total ' + method:<40} {secs:8.3f} s")
    stem = f"isa_{args.decode_size}_{args.dtype}_{args.threads}t"
    write_json(args.out / f"{stem}.json",
               {"machine": machine_info(), "args": {**vars(args), "out": str(args.out)}, "results": rows,
                "total_median_s": summary})
    plot(rows, args.out / f"{stem}.png", args)
    return 0


def totals(rows: list) -> dict:
    return {m: sum(r["times"][m]["median_s"] for r in rows) for m in rows[0]["times"]}


def print_row(row: dict) -> None:
    times = {m: t["median_s"] for m, t in row["times"].items()}
    torch_best = min((t for m, t in times.items() if m.startswith("torch")), default=None)
    parts = [f"{row['name']:<40} {row['input_res']:>4}px"]
    for m, t in times.items():
        part = f"{m} {t:7.3f} s {row['gflop'] / t:6.1f} GFLOP/s"
        if torch_best and m.startswith("fused"):
            part += f" ({t / torch_best:4.2f}x torch best)"
        parts.append(part)
    print(" | ".join(parts))


def plot(rows: list, path: Path, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(rows[0]["times"])
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(12, 5))
    for k, m in enumerate(methods):
        xs = [i + (k - (len(methods) - 1) / 2) * width for i in range(len(rows))]
        ax.bar(xs, [r["gflop"] / r["times"][m]["median_s"] for r in rows], width, label=m)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([f"{r['C']}->{r['O']} @{r['input_res']}\n{r['option']}" for r in rows], fontsize=7)
    ax.set_ylabel("GFLOP/s (median)")
    ax.set_title(f"3x3 convs of a {args.decode_size}^2 decode, {args.dtype}, {args.threads} threads")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    raise SystemExit(main())
