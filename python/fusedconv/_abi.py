"""Loads the C++ extension after checking it matches the installed MLX.

The extension links libmlx and shares MLX's nanobind types, so it is only
valid against the exact MLX release it was compiled with.
"""

from __future__ import annotations

import mlx.core as mx

from . import _build_info


def _mismatch(detail: str) -> ImportError:
    return ImportError(
        f"fusedconv was built against MLX {_build_info.MLX_VERSION} but MLX {mx.__version__} "
        f"is installed ({detail}). Reinstall one to match the other: "
        f"pip install 'mlx=={_build_info.MLX_VERSION}' or rebuild fusedconv with "
        "pip install --force-reinstall --no-cache-dir ."
    )


if mx.__version__ != _build_info.MLX_VERSION:
    raise _mismatch("version check")

try:
    from . import _ext  # noqa: E402
except ImportError as e:  # a libmlx with other symbols
    raise _mismatch(str(e)) from e

if _ext.linked_mlx_version() != _build_info.MLX_VERSION:
    raise _mismatch(f"linked libmlx reports {_ext.linked_mlx_version()}")

ext = _ext
