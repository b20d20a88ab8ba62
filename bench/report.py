"""Markdown tables from benchmark JSON (the README's results section is made with this).

    python -m bench.report bench/reports/decoder_flux_bfloat16.json [bench/reports/ops_512_bfloat16.json]
                           [bench/reports/xeon_emr_2t/isa_512_bfloat16_2t.json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bench.common import MiB, size_side


def decoder_table(data: dict) -> str:
    m = data["machine"]
    lines = [
        f"Decoder, `{data['args']['config']}` config, MLX path in {data['args']['dtype']}, diffusers in "
        f"{', '.join(t) if isinstance(t := data['args']['torch_dtype'], list) else t} - {m['cpu']}, {m['cores']} cores, {m['platform']}, MLX {m['mlx']}, "
        f"fusedconv CPU kernels: {m['fusedconv_cpu_isa']}; {m['date']}.",
        "",
        "| size | method | time (median) | GFLOP/s | MLX peak | peak / floor | max RSS | floor |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in data["results"]:
        if "skipped" in r or "error" in r:
            lines.append(f"| {r['size']} | {r.get('label', r['method'])} | {r.get('skipped') or r.get('error')} | | | | | |")
            continue
        runs = len(r["runs"])
        note = f" ({runs} run{'s' if runs > 1 else ''}{'' if r.get('warmup_excluded', True) else ', no warm-up'})"
        peak = f"{r['peak_alloc_bytes'] / MiB:,.0f} MiB" if "peak_alloc_bytes" in r else "-"
        ratio = f"{r['peak_over_floor']:.2f}x" if "peak_over_floor" in r else "-"
        lines.append(
            f"| {r['size']} | {r.get('label', r['method'])} | {r['median_s']:.2f} s{note} | {r['gflops']:.1f} | {peak} | {ratio} | "
            f"{r['max_rss_bytes'] / MiB:,.0f} MiB | {r['floor_bytes'] / MiB:,.0f} MiB |"
        )
    ok = {(r.get("label", r["method"]), r["size"]): r for r in data["results"] if "median_s" in r}
    ratios = []
    for size in sorted({s for _, s in ok}, key=size_side):
        f = ok.get(("fused", size))
        for (other, s), o in ok.items():
            if f and s == size and other != "fused":
                ratios.append(f"{size}: fused takes {f['median_s'] / o['median_s']:.2f}x the time of {other}, "
                              f"{f['max_rss_bytes'] / o['max_rss_bytes']:.2f}x its max RSS")
    return "\n".join(lines + [""] + [f"- {r}" for r in ratios])


def ops_table(data: dict) -> str:
    lines = [
        f"Each 3x3 conv of a {data['args']['decode_size']}x{data['args']['decode_size']} Flux/SD decode, "
        f"{data['args']['dtype']}; peak = MLX allocator peak above the inputs, minus the output.",
        "",
        "| conv | input px | fused | fused GFLOP/s | fused peak - out | mlx.nn | mlx.nn peak - out | speed-up |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in data["results"]:
        f, r = row["fused"], row["reference"]
        fused_extra = (f["peak_above_inputs_bytes"] - f["output_bytes"]) / MiB
        cells = [row["name"], str(row["input_res"]), f"{f['median_s']:.3f} s", f"{row['gflop'] / f['median_s']:.1f}",
                 f"{fused_extra:.1f} MiB"]
        if "median_s" in r:
            cells += [f"{r['median_s']:.2f} s", f"{(r['peak_above_inputs_bytes'] - r['output_bytes']) / MiB:,.1f} MiB",
                      f"{r['median_s'] / f['median_s']:.0f}x"]
        else:
            cells += ["skipped", "", ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def isa_table(data: dict) -> str:
    a, m = data["args"], data["machine"]
    methods = list(data["results"][0]["times"])
    lines = [
        (f"Each 3x3 conv of a {a['decode_size']}x{a['decode_size']} decode, fused in {a['dtype']} per CPU build vs "
         f"torch conv2d (channels-last, conv alone), {a['threads']} threads, GFLOP/s of the median - {m['cpu']}, "
         f"{m['platform']}; {m['date']}."),
        "",
        "| conv | input px | " + " | ".join(methods) + " |",
        "|---|---:|" + "---:|" * len(methods),
    ]
    for row in data["results"]:
        cells = [f"{row['gflop'] / row['times'][k]['median_s']:.1f}" for k in methods]
        lines.append(f"| {row['name']} | {row['input_res']} | " + " | ".join(cells) + " |")
    totals = data["total_median_s"]
    lines.append("| **sum of medians** | | " + " | ".join(f"**{totals[k]:.2f} s**" for k in methods) + " |")
    return "\n".join(lines)


def mflux_table(data: dict) -> str:
    m = data["machine"]
    lines = [
        f"mflux 0.24 VAE decodes, bf16, random weights - {m['cpu']}, {m['cores']} cores, {m['platform']}, "
        f"MLX {m['mlx']}, fusedconv CPU kernels: {m['fusedconv_cpu_isa']}; {m['date']}. Peak = MLX allocator "
        "peak above weights and latents; floor = the activations that must coexist.",
        "",
        "| VAE | size | method | time | peak | peak / floor | max RSS |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for r in data["results"]:
        if "error" in r or "skipped" in r:
            lines.append(f"| {r['vae']} | {r['size']} | {r['method']} | {r.get('error') or r['skipped']} | | | |")
            continue
        lines.append(f"| {r['vae']} | {r['size']} | {r['method']} | {r['median_s']:.2f} s | "
                     f"{r['peak_above_weights_bytes'] / MiB:,.1f} MiB | {r['peak_over_floor']:.2f}x | "
                     f"{r['max_rss_bytes'] / MiB:,.0f} MiB |")
    ok = {(r["vae"], r["size"], r["method"]): r for r in data["results"] if "median_s" in r}
    notes = []
    for (vae, size, method), f in ok.items():
        if method != "fused":
            continue
        for other in ("low_memory", "legacy"):
            o = ok.get((vae, size, other))
            if o:
                notes.append(f"{vae} {size}: fused takes {f['median_s'] / o['median_s']:.3f}x the time of mflux "
                             f"{other} and {f['peak_above_weights_bytes'] / o['peak_above_weights_bytes']:.2f}x "
                             "its peak above weights")
    return "\n".join(lines + [""] + [f"- {n}" for n in notes])


def main(argv=None) -> int:
    for path in argv if argv is not None else sys.argv[1:]:
        data = json.loads(Path(path).read_text())
        if data["results"] and "vae" in data["results"][0]:
            print(mflux_table(data))
        elif "total_median_s" in data:
            print(isa_table(data))
        elif "decode_size" in data["args"]:
            print(ops_table(data))
        else:
            print(decoder_table(data))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
