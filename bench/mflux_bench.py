"""fusedconv's patched decode against mflux 0.24's own decode modes, per covered mflux VAE.

    python -m bench.mflux_bench --vaes flux2 flux2-small flux --sizes 256 512 768x1152 [--out bench/results]

Methods: `fused` (fusedconv.integrations.mflux.patch()), mflux `low_memory` (its exact block
decoder: one block at a time, 128-row strips, full-image GroupNorm statistics; the default for
Z-Image and the FLUX.2 family) and mflux `legacy` (the whole decode as one graph). Weights:
seeded random, bf16, at the real widths. Each (vae, method, size) runs in a fresh process;
reports the median time after a warm-up, MLX's allocator peak above the weights and latents,
max RSS, and the analytic floor of the activations. On Linux, mflux's time is MLX's CPU
convolution (a few GFLOP/s), not what a Mac's GPU gives: compare memory across machines, time
only within one run. Writes JSON and a PNG plot.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench.common import (MiB, check_decodable, image_size, latent_hw, log_axes, machine_info, max_rss_bytes, reset_peak, run_child,
                          size_hw, size_side, time_runs, write_json)

METHODS = ("fused", "low_memory", "legacy")
# vae -> (module, class, constructor kwargs, latent channels, preset for the floor)
VAES = {
    "flux": ("mflux.models.flux.model.flux_vae.vae", "VAE", {}, 16, "flux"),
    "z-image": ("mflux.models.z_image.model.z_image_vae.vae", "VAE", {}, 16, "z-image"),
    "flux2": ("mflux.models.flux2.model.flux2_vae.vae", "Flux2VAE", {}, 32, "flux2"),
    "flux2-small": ("mflux.models.flux2.model.flux2_vae.vae", "Flux2VAE",
                    {"decoder_block_out_channels": (96, 192, 384, 384)}, 32, "flux2-small"),
    "qwen-image": ("mflux.models.qwen.model.qwen_vae.qwen_vae", "QwenVAE", {}, 16, "qwen-image"),
}


def child(vae_name: str, method: str, size, repeats: int, warmup: int, seed: int) -> dict:
    import importlib

    import mlx.core as mx
    import numpy as np
    from mlx.utils import tree_flatten, tree_unflatten

    from fusedconv.config import PRESETS
    from fusedconv.integrations import mflux as fused_mflux
    from fusedconv.memory import decoder_floor_bytes, decoder_parameter_count

    module, cls, kwargs, channels, preset = VAES[vae_name]
    vae = getattr(importlib.import_module(module), cls)(**kwargs)
    rng = np.random.default_rng(seed)
    params = [(k, mx.array((rng.standard_normal(v.shape) / np.sqrt(max(1, np.prod(v.shape[1:])))).astype(np.float32))
               .astype(mx.bfloat16)) for k, v in tree_flatten(vae.parameters()) if not k.startswith("encoder.")]
    vae.update(tree_unflatten(params))
    vae.encoder = None  # decode only
    mx.eval(vae.parameters())
    if method == "fused":
        fused_mflux.patch()
    elif hasattr(vae, "decode_mode"):
        vae.decode_mode = method
    elif method != "legacy":
        return {"vae": vae_name, "method": method, "size": size, "skipped": f"mflux's {cls} has no {method} mode"}
    cfg = PRESETS[preset]
    shape = (1, channels, *latent_hw(size, cfg.upsample_factor))
    latents = mx.array(rng.standard_normal(shape).astype(np.float32)).astype(mx.bfloat16)
    base = reset_peak()

    def run():
        mx.eval(vae.decode(latents))

    height, width = size_hw(size)
    result = {"vae": vae_name, "method": method, "size": size, "height": height, "width": width, "warmup": warmup,
              **time_runs(run, repeats, warmup)}
    result["peak_above_weights_bytes"] = mx.get_peak_memory() - base
    result["max_rss_bytes"] = max_rss_bytes()
    result["floor_bytes"] = decoder_floor_bytes(cfg, height, width, mx.bfloat16) - 2 * decoder_parameter_count(cfg)
    result["peak_over_floor"] = result["peak_above_weights_bytes"] / result["floor_bytes"]
    return result


def plot(results: list, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vaes = list(dict.fromkeys(r["vae"] for r in results))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for vae, marker in zip(vaes, "os^v"):
        for method, color in zip(METHODS, ("tab:blue", "tab:orange", "tab:red")):
            rows = sorted((r for r in results if r["vae"] == vae and r["method"] == method and "median_s" in r),
                          key=lambda r: size_side(r["size"]))
            if rows:
                sizes = [size_side(r["size"]) for r in rows]
                axes[0].plot(sizes, [r["peak_above_weights_bytes"] / MiB for r in rows], marker + "-", color=color,
                             label=f"{vae} {method}")
                axes[1].plot(sizes, [r["median_s"] for r in rows], marker + "-", color=color, label=f"{vae} {method}")
    log_axes(axes[0], "peak above weights (MLX allocator)", "MiB")
    log_axes(axes[1], "decode time", "s")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vaes", nargs="+", choices=list(VAES), default=["flux2", "flux2-small", "flux"])
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--sizes", type=image_size, nargs="+", default=[256, 512],
                   help="output sizes: N (square) or HxW, multiples of the VAE's upsample factor")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed runs first (0 is fair for mflux's minutes-long CPU decodes; the peak counts them)")
    p.add_argument("--out", type=Path, default=Path("bench/results"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--child", nargs=3, metavar=("VAE", "METHOD", "SIZE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        vae, method, size = args.child
        print(json.dumps(child(vae, method, image_size(size), args.repeats, args.warmup, args.seed)))
        return 0
    from fusedconv.config import PRESETS

    check_decodable(p, args.sizes, {PRESETS[VAES[vae][4]].upsample_factor for vae in args.vaes})
    results = []
    for vae in args.vaes:
        for size in args.sizes:
            for method in args.methods:
                r = run_child("bench.mflux_bench", ["--child", vae, method, str(size), "--repeats",
                                                    str(args.repeats), "--warmup", str(args.warmup),
                                                    "--seed", str(args.seed)])
                r.update(vae=vae, method=method, size=size)
                results.append(r)
                if "error" in r or "skipped" in r:
                    print(f"{vae:>12} {method:>10} {size:>5}: {r.get('error') or r['skipped']}", flush=True)
                else:
                    print(f"{vae:>12} {method:>10} {size:>5}: {r['median_s']:8.2f} s  peak above weights "
                          f"{r['peak_above_weights_bytes'] / MiB:8.1f} MiB ({r['peak_over_floor']:.2f}x floor)  "
                          f"max RSS {r['max_rss_bytes'] / MiB:8.1f} MiB", flush=True)
    stem = "mflux_" + "_".join(args.vaes)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / f"{stem}.json", {"machine": machine_info(), "args": {**vars(args), "out": str(args.out)},
                                           "results": results})
    plot(results, args.out / f"{stem}.png")
    print(f"wrote {args.out / stem}.json and .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
