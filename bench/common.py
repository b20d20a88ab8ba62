"""Shared by the benchmarks: timing, peak memory, machine metadata, JSON output."""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import mlx.core as mx

MiB = 2**20
ENV_KEYS = ("FUSEDCONV_CPU_ISA", "FUSEDCONV_NUM_THREADS", "OMP_NUM_THREADS", "ONEDNN_MAX_CPU_ISA")


def machine_info() -> dict:
    from fusedconv._abi import ext

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": sys.version.split()[0],
        "mlx": mx.__version__,
        "device": str(mx.default_device()),
        "metal": bool(mx.metal.is_available()),
        "fusedconv_cpu_isa": ext.cpu_isa(),
        "fusedconv_cpu_isa_calibration_s": ext.cpu_isa_timings(),
        "fusedconv_conv3x3_kernel": ext.conv3x3_kernel_family(),  # on the default device
        # settings that change what ran: thread counts, forced ISAs, oneDNN's ISA cap
        "env": {k: os.environ[k] for k in ENV_KEYS if k in os.environ},
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def reset_peak() -> int:
    """Clears the cache and peak counter; returns the live allocator bytes to measure above."""
    gc.collect()
    mx.clear_cache()
    mx.reset_peak_memory()
    return mx.get_active_memory()


def max_rss_bytes() -> int:
    """Peak resident set of this process. On Linux VmHWM of /proc/self/status: getrusage's
    ru_maxrss survives execve, so a benchmark child would report at least the RSS its parent
    had when it forked (the parent imports torch when it makes the weights)."""
    try:
        with open("/proc/self/status") as f:
            kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
        return kib * 1024
    except (OSError, StopIteration):
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss if sys.platform == "darwin" else rss * 1024


def time_runs(fn, repeats: int, warmup: int = 1) -> dict:
    """Median and spread of `repeats` timed runs of fn (which must evaluate its work), after warm-up."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "runs": times}


def run_child(module: str, args: list) -> dict:
    """Runs `python -m module args` in a fresh process and parses the JSON line it prints last."""
    res = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True)
    if res.returncode != 0:
        return {"error": res.stderr.strip().splitlines()[-1] if res.stderr.strip() else f"exit {res.returncode}"}
    return json.loads(res.stdout.strip().splitlines()[-1])


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2))
    print(f"wrote {path}")


def image_size(text: str):
    """An image size on the command line (argparse type): N for N x N, or HxW (height x
    width). Returns N, or "HxW" where the sides differ, which is how results name it."""
    h, sep, w = text.lower().partition("x")
    try:
        height, width = int(h), int(w if sep else h)
    except ValueError:
        raise argparse.ArgumentTypeError(f"image size {text!r}: expected N or HxW, e.g. 1024 or 1536x2304") from None
    if height < 1 or width < 1:
        raise argparse.ArgumentTypeError(f"image size {text!r}: sides must be positive")
    return height if height == width else f"{height}x{width}"


def size_hw(size) -> tuple:
    """(height, width) of a size as image_size returns it."""
    if isinstance(size, int):
        return size, size
    h, w = size.split("x")
    return int(h), int(w)


def size_side(size) -> float:
    """The side of the square with as many pixels: the plots' x axis."""
    h, w = size_hw(size)
    return math.sqrt(h * w)


def latent_hw(size, factor: int) -> tuple:
    """The latent's (height, width) that decodes to `size` at the VAE's upsample factor."""
    h, w = size_hw(size)
    if h % factor or w % factor:
        raise ValueError(f"image size {size}: both sides must be multiples of the VAE's upsample factor {factor}")
    return h // factor, w // factor


def check_decodable(parser: argparse.ArgumentParser, sizes: list, factors) -> None:
    """Stops with an error naming --sizes unless every size decodes at every upsample factor."""
    for size in sizes:
        for factor in factors:
            try:
                latent_hw(size, factor)
            except ValueError as e:
                parser.error(f"--sizes: {e}")


def log_axes(ax, title: str, unit: str) -> None:
    """The benchmarks' plot axes: log-log over output sizes (the side of a square with as many
    pixels), a grid and a legend."""
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("output size (px; sqrt(H x W) where not square)")
    ax.set_ylabel(unit)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
