"""The CPU kernels under AddressSanitizer + UndefinedBehaviorSanitizer: every source of
csrc/cpu (except the MLX glue) compiled by clang with the extension's own per-file ISA flags
(read from CMakeLists.txt), driven by tests/sanitize/cpu_runner.cpp on exact-size buffers over
tail shapes of every op, and checked against a double-precision reference there; once per
instruction-set build this machine runs."""

import os
import re
import subprocess
from pathlib import Path

import pytest

from fusedconv._abi import ext

ROOT = Path(__file__).resolve().parents[1]
CMAKE = (ROOT / "CMakeLists.txt").read_text()


def isa_flags() -> dict:
    """{kernel source: its COMPILE_OPTIONS} as CMakeLists.txt sets them."""
    variables = {m[0]: m[1] for m in re.findall(r'set\((FC_\w+_FLAGS) "([^"]*)"\)', CMAKE)}
    expand = lambda v: re.sub(r"\$\{(\w+)\}", lambda m: expand(variables[m.group(1)]), v)  # noqa: E731
    out = {}
    for src, opts in re.findall(r"set_source_files_properties\((csrc/cpu/\S+\.cpp)\s+PROPERTIES COMPILE_OPTIONS "
                                r'"([^"]*)"\)', CMAKE):
        out[src] = [f for f in expand(opts).split(";") if f]
    return out


def build_runner(tmp: Path, emulate_amx: bool) -> Path:
    """The runner over every CPU source; with emulate_amx, the AMX build's tiles are emulated
    (cpu/amx_tiles.h) and kernels_amx.cpp gets the AVX2 flags, so that it runs on any x86-64."""
    flags = isa_flags()
    assert "csrc/cpu/kernels_avx2.cpp" in flags or os.uname().machine != "x86_64"
    common = ["clang++-16", "-std=c++20", "-g", "-O0", "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
              "-fno-omit-frame-pointer", f"-I{ROOT / 'csrc'}", "-Wall", "-Wno-unused-parameter"]
    if os.uname().machine == "x86_64":
        common.append("-DFUSEDCONV_X86_KERNELS=1")
    if emulate_amx:
        common.append("-DFUSEDCONV_AMX_EMULATION=1")
        flags["csrc/cpu/kernels_amx.cpp"] = flags["csrc/cpu/kernels_avx2.cpp"]
    sources = [p for p in sorted((ROOT / "csrc" / "cpu").glob("*.cpp")) if p.name != "primitives_cpu.cpp"]
    sources = [p for p in sources if not p.name.startswith("kernels_") or str(p.relative_to(ROOT)) in flags
               or p.name == "kernels_generic.cpp"]
    objects = []
    # -O0: clang 16 recurses without end optimising kernels_avx512bf16.cpp (an LLVM bug; GCC and
    # newer clang are fine), and the shapes are tiny.
    for src in sources + [ROOT / "tests" / "sanitize" / "cpu_runner.cpp"]:
        obj = tmp / (src.stem + ".o")
        extra = flags.get(str(src.relative_to(ROOT)), [])
        res = subprocess.run([*common, *extra, "-c", str(src), "-o", str(obj)], capture_output=True, text=True)
        assert res.returncode == 0, res.stderr[-4000:]
        objects.append(str(obj))
    exe = tmp / "cpu_runner"
    subprocess.run([*common, *objects, "-o", str(exe), "-lpthread"], check=True, capture_output=True, text=True)
    return exe


def run_clean(exe: Path, isa: str) -> None:
    env = {**os.environ, "FUSEDCONV_CPU_ISA": isa, "ASAN_OPTIONS": "detect_leaks=1",
           "UBSAN_OPTIONS": "print_stacktrace=1"}
    res = subprocess.run([str(exe)], capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-4000:]
    assert f"isa {isa}" in res.stdout and "0 failures" in res.stdout
    assert res.stdout.count("ok  ") == 3 * 19


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    return build_runner(tmp_path_factory.mktemp("cpu_sanitize"), emulate_amx=False)


@pytest.mark.parametrize("isa", ext.cpu_isas().split(","))
def test_cpu_kernels_are_clean_under_asan_and_ubsan(runner, isa):
    run_clean(runner, isa)


@pytest.mark.skipif(os.uname().machine != "x86_64" or "avx2" not in ext.cpu_isas(), reason="x86-64 AVX2 build")
def test_amx_conv_indexing_on_emulated_tiles(tmp_path):
    """The AMX conv's tiling, padding, tails and epilogue on emulated tiles, on CPUs without
    AMX (where the CPU has AMX, the runner above and the cpu_isa-parametrised tests run the
    real tiles too)."""
    run_clean(build_runner(tmp_path, emulate_amx=True), "amx")
