"""The CUDA backend's sources, built without a GPU (CI has nvcc, never an NVIDIA GPU; the
kernels run in tests/test_gpu.py on an H200 through the device machine):
1. every .cu file compiles with nvcc for each architecture the build defaults to (and to PTX
   for the first), the tensor-core kernels keep their accumulators in registers (no stack
   frame, no spills), and the installed images are compressed fatbins;
2. every kernel the dispatch plans (csrc/cuda/plan.h) can name is in its module's cubin, and
   its dynamic shared memory fits each architecture's per-block limit;
3. the host glue (csrc/cuda/primitives_cuda.cpp) compiles against MLX 0.32.4's CUDA headers
   (the mlx-cuda-13 wheel, downloaded once) and needs only symbols that wheel's libmlx exports.
What this cannot: run a kernel, or MLX's CMake package with cuDNN (the device build does)."""

import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from wheels import mlx_wheel

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"
# conv3x3.cu and group_norm_stats.cu are built once per kernel they list; the other .cu
# files (the per-pixel norm's statistics, the wgmma kernel's weight packing) a module each
# (CMakeLists.txt).
SPLIT = {src: (CSRC / "cuda" / f"{src}_kernels.txt").read_text().split() for src in ("conv3x3", "group_norm_stats")}
CONV_KERNELS = SPLIT["conv3x3"]
SOURCE = {**{k: src for src, kernels in SPLIT.items() for k in kernels},
          "pixel_norm_stats": "pixel_norm_stats", "pack_conv3x3_weights": "pack_conv3x3_weights"}
MODULES = {m: (["-DFC_ONE_KERNEL=1", f"-DFC_KERNEL_{m}=1", "-diag-suppress=177"] if m != src else [])
           for m, src in SOURCE.items()}
NVCC = shutil.which("nvcc")
# The most dynamic shared memory a block may opt into, per compute capability.
SHARED_LIMIT = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024, 100: 227 * 1024,
                120: 99 * 1024}

pytestmark = pytest.mark.skipif(NVCC is None, reason="needs nvcc (CUDA toolkit)")


def default_architectures() -> list:
    """As CMake spells them: "90", or "90a" for a cubin with the arch-specific features."""
    text = (ROOT / "CMakeLists.txt").read_text()
    return re.search(r'set\(FUSEDCONV_CUDA_ARCHITECTURES "([0-9a;]+)"', text).group(1).split(";")


def capability(arch: str) -> int:
    return int(arch.rstrip("a"))


def nvcc(args: list) -> subprocess.CompletedProcess:
    return subprocess.run([NVCC, "-std=c++17", "-O3", f"-I{CSRC}", *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def cubins(tmp_path_factory) -> dict:
    """(module, arch) -> (cubin path, ptxas report); (module, 'ptx') -> PTX path."""
    out = tmp_path_factory.mktemp("cuda")
    archs = default_architectures()
    source = lambda m: str(CSRC / "cuda" / f"{SOURCE[m]}.cu")  # noqa: E731
    # The wgmma kernels only for sm_90a, as CMake builds them.
    jobs = {(m, a): [*flags, "-arch", f"sm_{a}", "-cubin", "-Xptxas", "-v", "-o", str(out / f"{m}.sm_{a}.cubin"),
                     source(m)] for m, flags in MODULES.items() for a in archs if "_wgmma_" not in m or a == "90a"}
    jobs.update({(m, "ptx"): [*flags, "-arch", f"compute_{archs[0]}", "-ptx", "-o", str(out / f"{m}.ptx"), source(m)]
                 for m, flags in MODULES.items() if "_wgmma_" not in m})
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        results = dict(zip(jobs, pool.map(nvcc, jobs.values())))
    for key, res in results.items():
        assert res.returncode == 0, f"{key}: {res.stderr}"
    return {key: (Path(jobs[key][jobs[key].index("-o") + 1]), results[key].stderr) for key in jobs}


def test_every_source_compiles_for_every_default_architecture(cubins):
    for (module, arch), (path, _) in cubins.items():
        assert path.stat().st_size > 0, (module, arch)


def test_each_split_module_holds_its_one_kernel(cubins):
    # MLX copies and hashes a module's image at every launch: one kernel a module.
    for kernels in SPLIT.values():
        for kernel in kernels:
            for (module, arch), (path, _) in cubins.items():
                if module == kernel and arch != "ptx":
                    image = path.read_bytes()
                    assert kernel.encode() + b"\0" in image
                    assert sum(other.encode() + b"\0" in image for other in kernels) == 1, (kernel, arch)


def test_installed_images_are_compressed_fatbins(tmp_path):
    """CMake installs each module's machine code as a compressed fatbin (MLX hashes the image at
    every launch; the driver loads a fatbin as it does a cubin): built with CMake's flags, the
    wgmma conv's image is a fatbin (its magic number) well under its cubin's size."""
    flags = re.search(r"set\(FC_FATBIN ([^)]*)\)", (ROOT / "CMakeLists.txt").read_text()).group(1).split()
    kernel = "fc_conv3x3_wgmma_bfloat16_act"
    image, cubin = tmp_path / "k.fatbin", tmp_path / "k.cubin"
    for out, kind in ((image, flags), (cubin, ["-cubin"])):
        res = nvcc([*MODULES[kernel], "-gencode", "arch=compute_90a,code=sm_90a", *kind, "-o", str(out),
                    str(CSRC / "cuda" / "conv3x3.cu")])
        assert res.returncode == 0, res.stderr
    assert image.read_bytes()[:4] == (0xBA55ED50).to_bytes(4, "little")
    assert image.stat().st_size < 0.4 * cubin.stat().st_size, (image.stat().st_size, cubin.stat().st_size)


def test_tensor_core_kernels_keep_their_accumulators_in_registers(cubins, plan_printer):
    # On the architectures that run them (the others' blocks cannot have their shared
    # memory; the wgmma kernels are only in the sm_90a cubin).
    mma_bytes = int(subprocess.run([str(plan_printer), "0", "0"], capture_output=True, text=True,
                                   check=True).stdout.split("\n")[0].split()[1])
    for arch in (a for a in default_architectures() if SHARED_LIMIT[capability(a)] >= mma_bytes):
        kinds = ("mma", "narrow", "wgmma") if arch == "90a" else ("mma", "narrow")
        for kernel in (f"fc_conv3x3_{kind}_{dt}_{prologue}" for kind in kinds for dt in ("bfloat16", "float16")
                       for prologue in ("act", "copy")):
            report = cubins[(kernel, arch)][1]
            block = report.split(f"Compiling entry function '{kernel}'")[1].split("Compiling entry")[0]
            assert "0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads" in block, (arch, block)


def test_wgmma_kernels_keep_each_chunk_one_commit_group(cubins):
    """ptxas injects no warpgroup.arrive between a chunk's wgmmas (C7519: it does so around
    control flow there, and each injected fence started a new group of the scoreboard that
    wgmma.wait_group counts, so waiting on the previous chunk waited out nearly all of this one)."""
    for dt in ("bfloat16", "float16"):
        for prologue in ("act", "copy"):
            report = cubins[(f"fc_conv3x3_wgmma_{dt}_{prologue}", "90a")][1]
            assert "C7519" not in report and "Compiling entry function" in report, report


PLAN_PRINTER = r"""
#include <cstdio>
#include <cstdlib>
#include "cuda/plan.h"
using namespace fusedconv;
using namespace fusedconv::cuda_plan;
int main(int argc, char** argv) {
  const unsigned limit = unsigned(atoi(argv[1]));
  const bool sm90a = atoi(argv[2]) != 0;
  printf("mma_shared_bytes %u\n", mma_shared_bytes());
  printf("wgmma_shared_bytes %u\n", wgmma_shared_bytes());
  const KernelDType dtypes[] = {KernelDType::float32, KernelDType::float16, KernelDType::bfloat16};
  for (KernelDType dt : dtypes) {
    for (int o : {1, 3, 8, 9, 128, 512}) {
      for (int c : {3, 12, 128, 1024, 1025}) {
        for (int silu : {0, 1}) {
          for (bool aligned : {false, true}) {
            Conv3x3Params p{2, 17, 45, c, 34, 90, o, silu, 0, 2, silu, 1, 0, 0, 0};
            KernelPlan k = plan_conv3x3(p, dt, limit, aligned, sm90a);
            printf("%s %s %u %u %u %u conv c=%d o=%d silu=%d aligned=%d\n", k.module.c_str(), k.name.c_str(),
                   k.blocks_x, k.blocks_y, k.threads, k.shared_bytes, c, o, silu, int(aligned));
          }
        }
      }
    }
    GroupNormStatsParams g{2, 96, 32, 1e-6f, 1000000};
    const Conv3x3Params wide{1, 512, 512, 1024, 512, 512, 1000, 32, 0, 1, 1, 1, 1, 0, 0};
    for (const KernelPlan& k : {plan_group_norm_partial(g, group_norm_slices(g, false), dt, false),
                                plan_group_norm_partial(g, group_norm_slices(g, true), dt, true),
                                plan_group_norm_merge(g, dt),
                                plan_pixel_norm_stats(PixelNormStatsParams{3000000, 96, 1e-6f}, dt),
                                plan_pack_conv3x3_weights(wide)}) {
      printf("%s %s %u %u %u %u\n", k.module.c_str(), k.name.c_str(), k.blocks_x, k.blocks_y, k.threads,
             k.shared_bytes);
    }
  }
}
"""


@pytest.fixture(scope="module")
def plan_printer(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("plan")
    (d / "main.cpp").write_text(PLAN_PRINTER)
    subprocess.run(["g++", "-std=c++20", f"-I{CSRC}", str(d / "main.cpp"), "-o", str(d / "plan")], check=True)
    return d / "plan"


@pytest.mark.parametrize("arch", sorted(SHARED_LIMIT))
def test_every_planned_kernel_exists_and_fits_the_architecture(cubins, plan_printer, arch):
    built = default_architectures()
    # The cubin a device of this compute capability loads (primitives_cuda.cpp): the
    # arch-specific one of exactly its capability, else the newest built of its major
    # version, else the PTX.
    same_major = [a for a in built if not a.endswith("a") and int(a) // 10 == arch // 10 and int(a) <= arch]
    specific = f"{arch}a" in built
    chosen = f"{arch}a" if specific else (max(same_major, key=int) if same_major else "ptx")
    lines = subprocess.run([str(plan_printer), str(SHARED_LIMIT[arch]), str(int(arch == 90 and specific))],
                           capture_output=True, text=True, check=True).stdout.split("\n")
    mma_bytes, wgmma_bytes = int(lines[0].split()[1]), int(lines[1].split()[1])
    planned = {tuple(line.split()[:6]) for line in lines[2:] if line}
    names = set()
    for module, name, bx, by, threads, shared in planned:
        image = cubins[(module, chosen)][0].read_bytes()
        assert name.encode() + b"\0" in image, (arch, module, name)
        assert int(shared) <= SHARED_LIMIT[arch], (arch, name, shared)
        assert int(bx) * int(threads) < 2**31 and int(by) <= 65535
        names.add(name)
    # The tensor-core kernels (with and without an activated input) where they fit: wgmma on
    # Hopper given the sm_90a cubin, else mma.sync; the CUDA-core kernel where neither fits.
    tensor = {n for n in names if "mma_" in n}
    kind = "_wgmma_" if arch == 90 and specific else "_mma_"
    fits = SHARED_LIMIT[arch] >= (wgmma_bytes if kind == "_wgmma_" else mma_bytes)
    assert len(tensor) == (4 if fits else 0) and all(kind in n for n in tensor), (arch, sorted(names))
    # They copy 8-channel vectors: C % 8 != 0 or a misaligned x / w takes the CUDA-core kernel;
    # without a norm or SiLU they copy the input as it is.
    # Few output channels (O <= 8) of such inputs take the narrow tensor-core kernel, on
    # every architecture (its static shared memory fits them all).
    assert len({n for n in names if "_narrow_" in n}) == 4, (arch, sorted(names))
    for line in (line for line in lines[2:] if " conv " in line):
        name, conv = line.split()[1], dict(kv.split("=") for kv in line.split(" conv ")[1].split())
        vectors = "float32" not in name and int(conv["c"]) % 8 == 0 and conv["aligned"] == "1" and int(conv["c"]) <= 1024
        assert ("_narrow_" in name) == (vectors and int(conv["o"]) <= 8), line
        if "mma_" in name or "_narrow_" in name:
            assert vectors, line
            assert name.endswith("_act" if conv["silu"] == "1" else "_copy"), line


STATS_PLAN_PRINTER = r"""
#include <cstdio>
#include <cstdlib>
#include "cuda/plan.h"
using namespace fusedconv;
using namespace fusedconv::cuda_plan;
int main(int argc, char** argv) {
  const GroupNormStatsParams p{atoi(argv[1]), atoi(argv[2]), atoi(argv[3]), 1e-6f, atoll(argv[4])};
  const KernelDType dt = atoi(argv[5]) == 4 ? KernelDType::float32 : KernelDType::bfloat16;
  const bool rows = group_norm_rows(p, dt, atoi(argv[6]) != 0);
  const StatsSlices s = group_norm_slices(p, rows);
  const KernelPlan k = plan_group_norm_partial(p, s, dt, rows);
  printf("%s %d %d %lld\n", k.name.c_str(), s.count, s.pixels, (long long)k.blocks_x * k.blocks_y);
}
"""


@pytest.mark.parametrize("n, c, groups, hw, itemsize, aligned, kernel", [
    (1, 128, 32, 1024 * 1024, 2, 1, "rows"),   # the decode's 128 channels: 4 a group
    (2, 512, 32, 128 * 128, 2, 1, "rows"),
    (1, 48, 16, 300 * 301, 2, 1, "rows"),      # 3 channels a group: a vector spans groups
    (1, 2048, 32, 64, 2, 1, "rows"),           # 256 vectors a pixel: one pixel a step
    (1, 2056, 8, 64, 2, 1, "element"),         # more vectors a pixel than threads
    (1, 1028, 4, 64, 4, 1, "element"),         # float32: 4 channels a vector
    (1, 30, 5, 35, 2, 1, "element"),           # C not a whole number of vectors
    (1, 128, 32, 4096, 2, 0, "element"),       # x not on 16 bytes
])
def test_statistics_plan(tmp_path, n, c, groups, hw, itemsize, aligned, kernel):
    (tmp_path / "main.cpp").write_text(STATS_PLAN_PRINTER)
    subprocess.run(["g++", "-std=c++20", f"-I{CSRC}", str(tmp_path / "main.cpp"), "-o", str(tmp_path / "plan")],
                   check=True)
    name, count, pixels, blocks = subprocess.run(
        [str(tmp_path / "plan"), *map(str, (n, c, groups, hw, itemsize, aligned))],
        capture_output=True, text=True, check=True).stdout.split()
    count, pixels, blocks = int(count), int(pixels), int(blocks)
    rows = kernel == "rows"
    assert name == ("fc_group_norm_partial_rows_" if rows else "fc_group_norm_partial_") + (
        "float32" if itemsize == 4 else "bfloat16")
    # Slices of whole pixels that cover the image, none empty, at most 256 (bounded scratch),
    # about 64K elements each; a block per slice of an image (rows) or of an (image, group).
    assert 1 <= count <= 256 and (count - 1) * pixels < hw <= count * pixels
    per_pixel = c if rows else c // groups
    assert count == 256 or pixels * per_pixel <= 2 * 65536
    assert blocks == n * count * (1 if rows else groups)


def mlx_cuda_package() -> Path:
    """MLX's CUDA 13 wheel: its headers and libmlx.so."""
    return mlx_wheel("mlx-cuda-13", "manylinux_2_35_x86_64",
                     lambda m: m.startswith("mlx/include/mlx/") or m == "mlx/lib/libmlx.so")


def fmt_flags() -> list:
    """{fmt}'s headers (MLX's CUDA headers include them): the system's (libfmt-dev), or
    PyTorch's copy."""
    if Path("/usr/include/fmt/format.h").exists():
        return []
    return [f"-isystem{Path(p) / 'torch' / 'include'}" for p in sys.path
            if (Path(p) / "torch" / "include" / "fmt" / "format.h").exists()][:1]


@pytest.fixture(scope="module")
def host_glue_object(tmp_path_factory) -> Path:
    mlx = mlx_cuda_package()
    cuda_include = Path(os.path.realpath(NVCC)).parents[1] / "include"
    if not (cuda_include / "cuda.h").exists():
        cuda_include = Path("/usr/local/cuda/include")
    obj = tmp_path_factory.mktemp("glue") / "primitives_cuda.o"
    res = subprocess.run(["g++", "-std=c++20", "-O1", "-fPIC", "-Wall", "-Wextra", "-Wno-unused-parameter",
                          "-DFMT_HEADER_ONLY", f"-I{CSRC}", f"-I{mlx / 'include'}", f"-isystem{cuda_include}",
                          *fmt_flags(), "-c", str(CSRC / "cuda" / "primitives_cuda.cpp"),
                          "-o", str(obj)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "primitives_cuda.cpp" not in res.stderr, res.stderr  # no warnings from our source
    return obj


def _symbols(path: Path, *flags) -> set:
    """Mangled symbol names (no spaces) that nm lists with these flags."""
    out = subprocess.run(["nm", *flags, str(path)], capture_output=True, text=True, check=True).stdout
    return {line.split()[-1] for line in out.split("\n") if line.strip()}


def test_host_glue_needs_only_what_libmlx_exports(host_glue_object):
    """libmlx hides most of its CUDA backend (its allocator, its JIT module cache): a glue
    that called those would build and fail at import. Every mlx:: symbol the glue leaves
    undefined must be a dynamic export of the wheel's libmlx.so."""
    needed = {s for s in _symbols(host_glue_object, "-u") if "N3mlx" in s and "fusedconv" not in s}
    exported = _symbols(mlx_cuda_package() / "lib" / "libmlx.so", "-D", "--defined-only")
    assert {s for s in needed if "precompiled_cuda_kernel" in s or "get_command_encoder" in s}, sorted(needed)
    assert sorted(needed - exported) == []
