"""MLX's wheels for other platforms, downloaded once (PyPI) into the test cache and unpacked:
the macOS build rehearsal builds against mlx-metal, the CUDA host-glue audit against
mlx-cuda-13."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

MLX_VERSION = "0.32.4"
CACHE = Path(os.environ.get("FUSEDCONV_TEST_CACHE", Path.home() / ".cache" / "fusedconv-tests"))


def mlx_wheel(package: str, platform: str, keep=lambda member: True) -> Path:
    """The `mlx` folder of `package`'s wheel for `platform`, with the members `keep` selects."""
    unpacked = CACHE / f"{package}-{MLX_VERSION}"
    done = unpacked / ".unpacked"
    if not done.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                        "--platform", platform, "--python-version", "3.12", "-d", str(CACHE),
                        f"{package}=={MLX_VERSION}"], check=True)
        wheel = next(CACHE.glob(f"{package.replace('-', '_')}-{MLX_VERSION}-*.whl"))
        shutil.rmtree(unpacked, ignore_errors=True)
        with zipfile.ZipFile(wheel) as z:
            z.extractall(unpacked, [m for m in z.namelist() if keep(m)])
        done.touch()
    return unpacked / "mlx"
