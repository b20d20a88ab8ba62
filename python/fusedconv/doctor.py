"""`fusedconv doctor`: what a user pastes into a bug report. Versions, the CPU kernel
build, the Metal device and metallib or the CUDA kernels (the CUDA side has not run on a GPU
through this command yet), each kernel variant run once per dtype with parity
against a trusted result (GPU kernels against the CPU backend; the CPU backend against
the mlx.nn composition), and the fused conv timed against mx.conv2d alone."""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import mlx.core as mx

from . import __version__, _build_info, ops
from ._abi import ext
from .reference import normalized_error, reference_conv3x3

DTYPES = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}
UNIT_ROUNDOFF = {"float32": 2.0**-24, "float16": 2.0**-11, "bfloat16": 2.0**-8}
# Conv cases covering each GPU tile: (h, w, c, o, groups, upsample, tail); O <= 8 takes
# the narrow tile, the rest the wide one (csrc/metal/plan.h).
CONV_CASES = {"wide tile, residual": (9, 37, 40, 40, 8, 1, "residual"),
              "wide tile, upsample, shortcut": (5, 9, 24, 48, 4, 2, "shortcut"),
              "narrow tile (O=3)": (8, 20, 32, 3, 8, 1, "none")}


def _conv_inputs(case, dtype):
    h, w, c, o, groups, up, tail = case
    key = iter(mx.random.split(mx.random.key(7), 8))
    rand = lambda shape, scale=1.0: (scale * mx.random.normal(shape, key=next(key))).astype(dtype)  # noqa: E731
    x = rand((1, h, w, c))
    kw = dict(weight=rand((o, 3, 3, c), 1 / (3 * c**0.5)), bias=rand((o,), 0.1),
              gamma=(1 + rand((c,), 0.1)).astype(dtype), beta=rand((c,), 0.1), groups=groups, upsample=up)
    if tail == "residual":
        kw["residual"] = rand((1, h * up, w * up, o))
    if tail == "shortcut":
        kw["shortcut"] = (rand((1, h * up, w * up, 16)), rand((o, 1, 1, 16), 0.25), rand((o,), 0.1))
    return x, kw


def _fused(x, kw, stream):
    stats = ops.group_norm_stats(x, kw["groups"], 1e-6, stream=stream)
    return ops.conv3x3(x, kw["weight"], kw["bias"], norm=(stats, kw["gamma"], kw["beta"]), silu=True,
                       upsample=kw["upsample"], residual=kw.get("residual"), shortcut=kw.get("shortcut"),
                       stream=stream)


def _reference(x, kw):
    y = reference_conv3x3(x.astype(mx.float32), kw["weight"].astype(mx.float32), kw["bias"].astype(mx.float32),
                          group_norm=(kw["gamma"].astype(mx.float32), kw["beta"].astype(mx.float32), kw["groups"],
                                      1e-6),
                          silu=True, upsample=kw["upsample"],
                          residual=None if "residual" not in kw else kw["residual"].astype(mx.float32))
    if "shortcut" in kw:
        xs, ws, bs = (a.astype(mx.float32) for a in kw["shortcut"])
        y = y + xs @ ws.reshape(ws.shape[0], -1).T + bs
    return y


def _check(name, fn, tol):
    try:
        err = fn()
        return {"check": name, "ok": bool(err <= tol), "error": err, "tolerance": tol}
    except Exception as e:  # a kernel that fails to load or run is what the report is for
        return {"check": name, "ok": False, "error": f"{type(e).__name__}: {e}", "tolerance": tol}


def _checks(gpu: bool) -> list:
    results = []
    for dname, dtype in DTYPES.items():
        u = UNIT_ROUNDOFF[dname]
        for cname, case in CONV_CASES.items():
            x, kw = _conv_inputs(case, dtype)
            mx.eval(x, kw)  # read by both devices: evaluated first (normalized_error says why)
            # CPU backend vs the f32 mlx.nn composition: 8u of the output scale (tests/reference.py).
            results.append(_check(f"cpu conv3x3 {dname} {cname}",
                                  lambda: normalized_error(_fused(x, kw, mx.cpu), _reference(x, kw)),
                                  max(8 * u, 1e-5)))
            if gpu:  # both accumulate in f32 in other orders: 2u (1e-5 in f32)
                results.append(_check(f"gpu conv3x3 {dname} {cname}",
                                      lambda: normalized_error(_fused(x, kw, mx.gpu), _fused(x, kw, mx.cpu)),
                                      max(2 * u, 1e-5)))
        if gpu:  # 96x96 pixels: three slices of the partial-statistics kernel, merged
            x = (3 + mx.random.normal((2, 96, 96, 32), key=mx.random.key(3))).astype(dtype)
            mx.eval(x)
            results.append(_check(f"gpu group_norm_stats {dname} (3 slices)",
                                  lambda: normalized_error(ops.group_norm_stats(x, 8, 1e-6, stream=mx.gpu),
                                                           ops.group_norm_stats(x, 8, 1e-6, stream=mx.cpu)), 1e-5))
    return results


def _timing(device) -> dict:
    """GroupNorm+SiLU+conv3x3 fused vs mx.conv2d alone, 128x128, C=O=128, bf16, median of 3."""
    x, kw = _conv_inputs((128, 128, 128, 128, 32, 1, "none"), mx.bfloat16)
    stream = mx.default_stream(device)

    def median(fn):
        mx.eval(fn())
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            mx.eval(fn())
            times.append(time.perf_counter() - t0)
        return sorted(times)[1]

    fused = median(lambda: _fused(x, kw, stream))
    conv = median(lambda: mx.conv2d(x, kw["weight"], padding=1, stream=stream))
    return {"device": str(mx.Device(device)), "shape": "1x128x128x128 -> 128, bfloat16", "fused_gn_silu_conv3x3_s": fused,
            "mx_conv2d_alone_s": conv}


def report() -> dict:
    built_with_cuda = bool(getattr(_build_info, "MLX_CUDA", False))
    cuda = built_with_cuda and mx.cuda.is_available()
    gpu = bool(_build_info.MLX_METAL and mx.metal.is_available()) or cuda
    metallib = Path(ext.__file__).with_name("fusedconv.metallib")
    cuda_dir = Path(ext.__file__).with_name("cuda")
    info = {
        "fusedconv": __version__, "mlx": mx.__version__, "python": sys.version.split()[0],
        "platform": platform.platform(), "machine": platform.machine(),
        "built_with_metal": bool(_build_info.MLX_METAL), "metal_available": mx.metal.is_available(),
        "metal_device": mx.metal.device_info() if mx.metal.is_available() else None,
        "metallib": str(metallib) if metallib.exists() else None,
        "built_with_cuda": built_with_cuda, "cuda_available": cuda,
        "cuda_kernels": sorted(p.name for p in cuda_dir.iterdir()) if cuda_dir.is_dir() else None,
        "cpu_build": ext.cpu_isa(), "cpu_builds_available": ext.cpu_isas().split(","),
        "cpu_build_calibration_s": ext.cpu_isa_timings(),
        "default_device": str(mx.default_device()),
    }
    info["checks"] = _checks(gpu)
    info["timing"] = _timing(mx.gpu if gpu else mx.cpu)
    return info


def main(json_path: str | None = None) -> int:
    info = report()
    print(f"fusedconv {info['fusedconv']}, MLX {info['mlx']}, Python {info['python']}, {info['platform']}")
    timings = ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in info["cpu_build_calibration_s"].items())
    print(f"  CPU kernel build: {info['cpu_build']} (available: {', '.join(info['cpu_builds_available'])}; "
          f"calibration conv: {timings})")
    if info["built_with_cuda"]:
        print(f"  CUDA: available={info['cuda_available']} kernels={info['cuda_kernels']}")
    elif not info["built_with_metal"]:
        print("  GPU: not in this build (MLX without Metal or CUDA); GPU checks skipped")
    else:
        print(f"  Metal: available={info['metal_available']} metallib={info['metallib']}")
        if info["metal_device"]:
            print(f"  device: {info['metal_device']}")
    for c in info["checks"]:
        err = c["error"] if isinstance(c["error"], str) else f"{c['error']:.2e}"
        print(f"  [{'ok' if c['ok'] else 'FAIL'}] {c['check']}: error {err} (tolerance {c['tolerance']:.1e})")
    t = info["timing"]
    print(f"  timing on {t['device']} ({t['shape']}): fused GroupNorm+SiLU+conv3x3 "
          f"{t['fused_gn_silu_conv3x3_s'] * 1e3:.1f} ms, mx.conv2d alone {t['mx_conv2d_alone_s'] * 1e3:.1f} ms")
    if json_path:
        Path(json_path).write_text(json.dumps(info, indent=2, default=str))
        print(f"  wrote {json_path}")
    failed = [c for c in info["checks"] if not c["ok"]]
    if failed:
        print(f"{len(failed)} check(s) failed: please report this output", file=sys.stderr)
    return 1 if failed else 0
