"""Full-decoder benchmark: fused vs reference MLX path vs diffusers/PyTorch, same weights.

    python -m bench.decoder_bench --sizes 256 512 1024 1536x2304 [--config flux] [--out bench/results]

A size is N (N x N) or HxW (height x width, in output pixels).

Weights: a seeded random diffusers AutoencoderKL of the preset, saved once under --out.
Each (method, size) runs in a fresh process so that its max RSS is its own. Reports the
median time of --repeats runs after one warm-up, peak memory from MLX's allocator (MLX
methods) and the process max RSS (all), the analytic floor and peak/floor, GFLOP/s
against the decoder's FLOP count. Writes JSON and a PNG plot.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench.common import (MiB, check_decodable, image_size, latent_hw, log_axes, machine_info, max_rss_bytes, reset_peak, run_child,
                          size_hw, size_side, time_runs, write_json)

METHODS = ("fused", "reference", "diffusers")


def current_rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            import os

            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def child(method: str, size, weights: Path, dtype_name: str, repeats: int, seed: int,
          torch_device: str = "cpu", mlx_device: str = "default") -> dict:
    """One measurement, inside its own process."""
    import mlx.core as mx
    import numpy as np

    if mlx_device != "default":
        mx.set_default_device(getattr(mx, mlx_device))

    from fusedconv.config import VAEConfig
    from fusedconv.memory import decoder_floor_bytes, decoder_flops

    cfg = VAEConfig.from_dict(json.loads((weights / "config.json").read_text()))
    height, width = size_hw(size)
    z = np.random.default_rng(seed).standard_normal((1, *latent_hw(size, cfg.upsample_factor), cfg.latent_channels))
    z = z.astype(np.float32)
    result = {"method": method, "size": size, "height": height, "width": width, "dtype": dtype_name,
              "repeats": repeats, "floor_bytes": decoder_floor_bytes(cfg, height, width, getattr(mx, dtype_name)),
              "gflop": decoder_flops(cfg, height, width) / 1e9}
    if method == "diffusers":
        import torch
        from diffusers import AutoencoderKL

        model = AutoencoderKL.from_pretrained(weights, torch_dtype=getattr(torch, dtype_name)).eval()
        model.encoder = None  # decode only, as the MLX decoder loads only decoder tensors
        model.to(torch_device)
        zt = torch.from_numpy(z.transpose(0, 3, 1, 2).copy()).to(torch_device, getattr(torch, dtype_name))
        cuda = torch_device.startswith("cuda")

        def run():
            with torch.no_grad():
                model.decode(zt)
            if cuda:
                torch.cuda.synchronize()

        result["torch"] = torch.__version__
        result["torch_device"] = torch_device
        result["torch_threads"] = torch.get_num_threads()
        warmup = 1
        if cuda:
            # PyTorch's caching allocator: its peak above the weights and latents.
            run()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            run()
            result["peak_above_inputs_bytes"] = torch.cuda.max_memory_allocated() - base
            result["inputs_bytes"] = base
            result["peak_alloc_bytes"] = torch.cuda.max_memory_allocated()
            result["peak_over_floor"] = result["peak_alloc_bytes"] / result["floor_bytes"]
            result["gpu"] = torch.cuda.get_device_name()
    else:
        from fusedconv.vae import load_decoder

        dec = load_decoder(weights, dtype=getattr(mx, dtype_name)).set_fused(method == "fused")
        zm = mx.array(z).astype(getattr(mx, dtype_name))
        mx.eval(zm)
        if method == "fused":  # the stages run through mlx.nn's composition (MLX's CUDA backend)
            result["composed_stages"] = [name for name, fn in dec.stages(zm) if fn.__name__ == "reference"]

        def run():
            mx.eval(dec(zm))

        base = reset_peak()
        result["rss_before_decode_bytes"] = current_rss_bytes()
        first = time_runs(run, 1, warmup=0)  # the warm-up doubles as the allocator-peak measurement
        result["peak_alloc_bytes"] = mx.get_peak_memory()
        result["peak_above_inputs_bytes"] = mx.get_peak_memory() - base
        result["inputs_bytes"] = base
        result["peak_over_floor"] = result["peak_alloc_bytes"] / result["floor_bytes"]
        from fusedconv._abi import ext  # the build this process calibrated (each process measures its own)

        result["fusedconv_cpu_isa"] = ext.cpu_isa()
        result["fusedconv_cpu_isa_calibration_s"] = ext.cpu_isa_timings()
        warmup = 0
        if method == "reference" and repeats <= 1:
            # Minutes per run on Linux CPU: the peak run is also the one timed run.
            result.update(first, warmup_excluded=False)
    if "median_s" not in result:
        result["warmup_excluded"] = True
        result.setdefault("rss_before_decode_bytes", current_rss_bytes())
        result.update(time_runs(run, repeats, warmup=warmup))
    result["max_rss_bytes"] = max_rss_bytes()
    result["gflops"] = result["gflop"] / result["median_s"]
    return result


def plot(results: list, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_mem, ax_time) = plt.subplots(1, 2, figsize=(11, 4.2))
    labels = list(dict.fromkeys(r["label"] for r in results))
    colors = dict(zip(labels, ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")))
    for label in labels:
        rows = sorted((r for r in results if r["label"] == label and "error" not in r and "skipped" not in r),
                      key=lambda r: size_side(r["size"]))
        if not rows:
            continue
        sizes = [size_side(r["size"]) for r in rows]
        c = colors[label]
        ax_mem.plot(sizes, [r["max_rss_bytes"] / MiB for r in rows], "o-", color=c, label=f"{label} (max RSS)")
        if rows[0]["method"] != "diffusers":
            ax_mem.plot(sizes, [r["peak_alloc_bytes"] / MiB for r in rows], "s--", color=c,
                        label=f"{label} (MLX allocator peak)")
        ax_time.plot(sizes, [r["median_s"] for r in rows], "o-", color=c, label=f"{label} ({rows[0]['dtype']})")
    # The floor of the MLX dtype (the diffusers rows may run in another dtype).
    floors = sorted({(size_side(r["size"]), r["floor_bytes"]) for r in results
                     if "floor_bytes" in r and r["method"] != "diffusers"})
    ax_mem.plot([s for s, _ in floors], [b / MiB for _, b in floors], "k:", label="analytic floor")
    log_axes(ax_mem, "peak memory", "MiB")
    log_axes(ax_time, "decode time (median)", "s")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=image_size, nargs="+", default=[256, 512, 1024],
                   help="output sizes: N (square) or HxW, multiples of the VAE's upsample factor")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--config", default="flux")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"],
                   help="dtype of the MLX decoder")
    p.add_argument("--torch-dtype", nargs="+", default=["float32"], choices=["bfloat16", "float16", "float32"],
                   help="dtype(s) of diffusers/PyTorch, each a row (float32 by default: PyTorch's bf16 convs are "
                        "fast only on CPUs with AVX-512 BF16 / AMX)")
    p.add_argument("--torch-device", default="cpu", help="device of diffusers/PyTorch (cpu, cuda)")
    p.add_argument("--mlx-device", default="default", choices=["default", "cpu", "gpu"],
                   help="device of the MLX decodes (the CPU backend on MLX's CUDA build: cpu)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--reference-repeats", type=int, default=1,
                   help="timed runs of the unfused MLX path (tens of times slower on Linux CPU)")
    p.add_argument("--reference-max-size", type=int, default=256,
                   help="largest side for the unfused MLX path (on Linux CPU its convs run at ~2 GFLOP/s)")
    p.add_argument("--out", type=Path, default=Path("bench/results"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--child", nargs=3, metavar=("METHOD", "SIZE", "WEIGHTS"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        method, size, weights = args.child
        print(json.dumps(child(method, image_size(size), Path(weights), args.dtype, args.repeats, args.seed,
                               args.torch_device, args.mlx_device)))
        return 0
    if args.mlx_device != "default":  # so that the JSON's machine info names it
        import mlx.core as mx

        mx.set_default_device(getattr(mx, args.mlx_device))

    from bench.weights import ensure_weights
    from fusedconv.config import PRESETS

    if args.config not in PRESETS:
        p.error(f"--config {args.config!r}: one of {', '.join(PRESETS)}")
    check_decodable(p, args.sizes, [PRESETS[args.config].upsample_factor])
    weights = ensure_weights(args.config, args.seed, args.out)
    results = []
    runs = [(m, d) for m in args.methods for d in (args.torch_dtype if m == "diffusers" else [args.dtype])]
    for size in args.sizes:
        for method, dtype in runs:
            label = f"diffusers {dtype}" if method == "diffusers" else method
            if method == "reference" and max(size_hw(size)) > args.reference_max_size:
                results.append({"method": method, "label": label, "size": size,
                                "skipped": f"above --reference-max-size {args.reference_max_size}"})
                continue
            repeats = args.reference_repeats if method == "reference" else args.repeats
            r = run_child("bench.decoder_bench", ["--child", method, str(size), str(weights), "--dtype", dtype,
                                                  "--repeats", str(repeats), "--seed", str(args.seed),
                                                  "--torch-device", args.torch_device,
                                                  "--mlx-device", args.mlx_device])
            r.setdefault("method", method)
            r.setdefault("size", size)
            r["label"] = label
            results.append(r)
            print_row(r)
    print_ratios(results)
    stem = f"decoder_{args.config}_{args.dtype}"
    args.out = str(args.out)
    write_json(Path(args.out) / f"{stem}.json", {"machine": machine_info(), "args": vars(args),
                                           "results": results})
    plot(results, Path(args.out) / f"{stem}.png")
    return 0


def print_row(r: dict) -> None:
    if "error" in r or "skipped" in r:
        print(f"{r['label']:>18} {r['size']:>5}: {r.get('error') or 'skipped: ' + r['skipped']}")
        return
    alloc = f"alloc peak {r['peak_alloc_bytes'] / MiB:8.1f} MiB ({r['peak_over_floor']:.2f}x floor)" \
        if "peak_alloc_bytes" in r else " " * 35
    print(f"{r['label']:>18} {r['size']:>5}: {r['median_s']:8.2f} s [{r['min_s']:.2f}-{r['max_s']:.2f}] "
          f"{r['gflops']:6.1f} GFLOP/s  {alloc}  max RSS {r['max_rss_bytes'] / MiB:8.1f} MiB  "
          f"floor {r['floor_bytes'] / MiB:7.1f} MiB")


def print_ratios(results: list) -> None:
    ok = {(r["label"], r["size"]): r for r in results if "median_s" in r}
    for size in sorted({s for _, s in ok}, key=size_side):
        fused = ok.get(("fused", size))
        if not fused:
            continue
        for (other, s), o in ok.items():
            if s == size and other != "fused":
                print(f"{size}: fused/{other}: time {fused['median_s'] / o['median_s']:.2f}x, "
                      f"max RSS {fused['max_rss_bytes'] / o['max_rss_bytes']:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
