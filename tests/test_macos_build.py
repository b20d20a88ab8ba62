"""Rehearsal of the macOS build on Linux: `pip wheel .` through scikit-build-core and the
real CMakeLists.txt, against MLX's macOS wheel (mlx-metal 0.32.4: MLXConfig with Metal,
the Metal backend headers, Apple's metal-cpp, libmlx.dylib), with the cross toolchain of
tests/macos (Zig's clang for arm64-apple-macos14, LLVM's ld64.lld, stand-in typedef
headers for three Apple frameworks, and a recording `xcrun metal` that type-checks and
rule-checks each .metal source with the flags CMake passed).

What this proves: the Apple branch of CMakeLists.txt configures, the host glue
(csrc/metal/primitives_metal.cpp) and the rest compile with FUSEDCONV_METAL against
MLX 0.32.4's real headers, the extension links as an arm64 Mach-O bundle against the
wheel's libmlx.dylib and needs only symbols that libmlx exports, and the metallib is
built with the deployment target and installed beside the extension. What it cannot:
Apple's Metal compiler, the frameworks' link, and any run on a Mac."""

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from wheels import MLX_VERSION, mlx_wheel

ROOT = Path(__file__).resolve().parents[1]
MACOS = ROOT / "tests" / "macos"


def mlx_metal_package() -> Path:
    """MLX's macOS arm64 wheel."""
    return mlx_wheel("mlx-metal", "macosx_14_0_arm64")


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    for tool in ("clang++-16", "/usr/bin/ld64.lld-16", "llvm-nm-16", "llvm-objdump-16", "llvm-ar-16"):
        assert shutil.which(tool), f"{tool} is needed for the macOS build rehearsal (see .ci/run)"
    mlx = mlx_metal_package()
    tmp = tmp_path_factory.mktemp("macos")
    env = {**os.environ, "FC_XCRUN_LOG": str(tmp / "xcrun.log"), "FC_CROSS_LOG": str(tmp / "cross.log"),
           "PATH": os.pathsep.join([str(MACOS / "bin"), str(Path(sys.executable).parent), os.environ["PATH"]])}
    res = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-build-isolation", "--no-deps", "-v",
         "-w", str(tmp / "wheel"), "-C", f"build-dir={tmp / 'build'}",
         "-C", f"cmake.define.CMAKE_TOOLCHAIN_FILE={MACOS / 'toolchain.cmake'}",
         "-C", f"cmake.define.MLX_DIR={mlx / 'share' / 'cmake' / 'MLX'}", "-C", "cmake.define.FUSEDCONV_LTO=OFF"],
        capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-6000:]
    wheel = next((tmp / "wheel").glob("fusedconv-*.whl"))
    unpacked = tmp / "unpacked"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(unpacked)
    return dict(mlx=mlx, log=res.stdout + res.stderr, pkg=unpacked / "fusedconv",
                xcrun=[json.loads(line) for line in (tmp / "xcrun.log").read_text().splitlines()],
                cxx=(tmp / "cross.log").read_text().splitlines())


def ext_path(build) -> Path:
    return next(build["pkg"].glob("_ext*.so"))


def test_wheel_holds_metallib_beside_the_extension(build):
    assert (build["pkg"] / "fusedconv.metallib").is_file()
    assert ext_path(build).is_file()
    info = (build["pkg"] / "_build_info.py").read_text()
    assert f'MLX_VERSION = "{MLX_VERSION}"' in info and "MLX_METAL = True" in info


def test_every_metal_source_is_compiled_and_linked_with_the_deployment_target(build):
    metal_calls = [c[3:] for c in build["xcrun"] if c[:3] == ["-sdk", "macosx", "metal"] and "-o" in c]
    compiled = sorted(Path(c[c.index("-c") + 1]).name for c in metal_calls if "-c" in c)
    assert compiled == sorted(p.name for p in (ROOT / "csrc" / "metal").glob("*.metal"))
    assert any(c[c.index("-o") + 1].endswith("fusedconv.metallib") for c in metal_calls)
    for call in metal_calls:
        assert "-mmacosx-version-min=14.0" in call, call


def test_host_glue_compiles_with_metal_against_the_wheel_headers(build):
    glue = [c for c in build["cxx"] if "primitives_metal.cpp" in c and " -c " in c]
    assert glue and "-DFUSEDCONV_METAL=1" in glue[0] and str(build["mlx"] / "include") in glue[0]
    for source in ("primitives.cpp", "ops.cpp", "bindings.cpp"):
        assert any(f"csrc/{source}" in c and "-DFUSEDCONV_METAL=1" in c for c in build["cxx"]), source


def test_no_compiler_warnings_in_project_sources(build):
    warnings = [line for line in build["log"].splitlines() if "warning:" in line and str(ROOT / "csrc") in line]
    assert warnings == []


def test_extension_is_an_arm64_bundle_loading_libmlx_beside_mlx(build):
    headers = subprocess.run(["llvm-objdump-16", "--macho", "--private-headers", str(ext_path(build))],
                             capture_output=True, text=True, check=True).stdout
    assert re.search(r"MH_MAGIC_64\s+ARM64\s+\S+\s+\S+\s+BUNDLE", headers), headers[:500]
    assert "name @rpath/libmlx.dylib" in headers
    assert "path @loader_path/../mlx/lib" in headers
    assert re.search(r"platform macos\s+sdk \S+\s+minos 14\.0", headers)


def _symbols(path: Path, *flags) -> set:
    out = subprocess.run(["llvm-nm-16", *flags, "--just-symbol-name", str(path)], capture_output=True, text=True,
                         check=True).stdout
    return set(out.split("\n")) - {""}


def test_every_mlx_and_metal_symbol_the_extension_needs_is_exported_by_libmlx(build):
    """The rehearsal links with `-undefined dynamic_lookup`, so a missing symbol would only
    show on a Mac at import time: check them here."""
    needed = {s for s in _symbols(ext_path(build), "-u") if re.search(r"N3mlx|N3MTL|N2NS|N2CA", s)}
    exported = _symbols(build["mlx"] / "lib" / "libmlx.dylib", "-gU")
    assert len(needed) > 20
    assert sorted(needed - exported) == []
