"""Builds the Metal emulator runner (tests/metal_emu/runner.cpp, clang + ASan/UBSan) and
runs the project's .metal kernels on it with inputs from MLX arrays."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import mlx.core as mx
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
METAL_DIR = ROOT / "csrc" / "metal"
INCLUDE = Path(__file__).resolve().parent / "include"
DTYPE_CODE = {mx.float32: 0, mx.float16: 1, mx.bfloat16: 2}
# Buffer indices: csrc/metal/plan.h (Conv3x3Buffer).
CONV_BUFFERS = ("x", "weight", "stats", "gamma", "beta", "bias", "residual", "shortcut_x", "shortcut_w",
                "shortcut_bias")


def clang() -> str:
    for name in ("clang++-16", "clang++"):
        if shutil.which(name):
            return name
    raise RuntimeError("clang++-16 is needed for the Metal emulator tests (apt-get install clang-16)")


def compile_runner(out: Path, conv_source: Path = None, stats_source: Path = None) -> Path:
    cmd = [clang(), "-std=c++20", "-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
           "-fno-omit-frame-pointer", "-Wall", "-Werror", "-Wno-unknown-attributes",
           f"-I{INCLUDE}", f"-I{ROOT / 'csrc'}", str(INCLUDE.parent / "runner.cpp"), "-o", str(out)]
    if conv_source:
        cmd.insert(1, f'-DFC_CONV_SOURCE="{conv_source}"')
    if stats_source:
        cmd.insert(1, f'-DFC_STATS_SOURCE="{stats_source}"')
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return out


# The C++ dialects the Metal Shading Language is based on: MSL 3.x is C++14, MSL 4
# C++17; C++20 is what the rest of the project uses.
METAL_DIALECTS = ("c++14", "c++17", "c++20")


def typecheck_command(source: Path, std: str = "c++14", *extra: str, csrc: Path = ROOT / "csrc") -> list:
    """clang -fsyntax-only as Apple's compiler sees the source on the points clang can model:
    __METAL_VERSION__ defined, no C++ standard library (-nostdinc), device/constant/threadgroup
    as distinct address spaces. `csrc`: the include root of the project's headers."""
    return [clang(), "-x", "c++", f"-std={std}", "-fsyntax-only", "-nostdinc", "-D__METAL_VERSION__=310",
            "-DFC_METAL_TYPECHECK", "-Wall", "-Werror", "-Wno-unknown-attributes", f"-I{INCLUDE}",
            f"-I{csrc}", *extra, str(source)]


def typecheck(source: Path, std: str = "c++14") -> subprocess.CompletedProcess:
    return subprocess.run(typecheck_command(source, std), capture_output=True, text=True)


def _raw(a: mx.array) -> bytes:
    if a.dtype == mx.bfloat16:
        a = a.view(mx.uint16)
    return np.array(a).tobytes()


def _from_raw(data: bytes, shape, dtype) -> mx.array:
    if dtype == mx.bfloat16:
        return mx.array(np.frombuffer(data, np.uint16).reshape(shape)).view(mx.bfloat16)
    np_dtype = {mx.float32: np.float32, mx.float16: np.float16}[dtype]
    return mx.array(np.frombuffer(data, np_dtype).reshape(shape))


class RunnerError(RuntimeError):
    def __init__(self, returncode, stderr):
        super().__init__(f"runner exited {returncode}: {stderr[-3000:]}")
        self.returncode = returncode
        self.stderr = stderr


def _run(runner: Path, op: str, job: Path) -> None:
    env = {**os.environ, "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=0", "UBSAN_OPTIONS": "print_stacktrace=1"}
    res = subprocess.run([str(runner), op, str(job)], capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise RunnerError(res.returncode, res.stderr)


def run_conv3x3(runner: Path, job: Path, x, weight, *, bias=None, stats=None, gamma=None, beta=None, silu=False,
                upsample=1, residual=None, shortcut=None, pixel_norm=False) -> mx.array:
    """stats: group_norm_stats' [N, G, 2], or with pixel_norm pixel_norm_stats' [N, H, W]."""
    job.mkdir(parents=True, exist_ok=True)
    n, h, w, c = x.shape
    o = weight.shape[0]
    sx, sw, sb = shortcut if shortcut is not None else (None, None, None)
    groups = stats.shape[1] if stats is not None and not pixel_norm else 0
    params = [n, h, w, c, h * upsample, w * upsample, o, groups, int(pixel_norm), upsample, int(silu),
              int(bias is not None), int(residual is not None), sx.shape[-1] if sx is not None else 0, int(sb is not None),
              DTYPE_CODE[x.dtype]]
    (job / "params.txt").write_text(" ".join(map(str, params)))
    arrays = dict(x=x, weight=weight, stats=stats, gamma=gamma, beta=beta, bias=bias, residual=residual,
                  shortcut_x=sx, shortcut_w=sw, shortcut_bias=sb)
    for i, name in enumerate(CONV_BUFFERS):
        path = job / f"b{i}.bin"
        if path.exists():
            path.unlink()
        if arrays[name] is not None:
            path.write_bytes(_raw(arrays[name]))
    _run(runner, "conv3x3", job)
    return _from_raw((job / "out.bin").read_bytes(), (n, h * upsample, w * upsample, o), x.dtype)


def run_pixel_stats(runner: Path, job: Path, x, eps: float) -> mx.array:
    job.mkdir(parents=True, exist_ok=True)
    n, h, w, c = x.shape
    (job / "params.txt").write_text(" ".join(map(str, [n * h * w, c, eps, DTYPE_CODE[x.dtype]])))
    (job / "b0.bin").write_bytes(_raw(x))
    _run(runner, "pixel_stats", job)
    return mx.array(np.frombuffer((job / "out.bin").read_bytes(), np.float32).reshape(n, h, w))


def run_stats(runner: Path, job: Path, x, groups: int, eps: float) -> mx.array:
    job.mkdir(parents=True, exist_ok=True)
    n, h, w, c = x.shape
    (job / "params.txt").write_text(" ".join(map(str, [n, h * w, c, groups, eps, DTYPE_CODE[x.dtype]])))
    (job / "b0.bin").write_bytes(_raw(x))
    _run(runner, "stats", job)
    return mx.array(np.frombuffer((job / "out.bin").read_bytes(), np.float32).reshape(n, groups, 2))
