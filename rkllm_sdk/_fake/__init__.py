"""Where the bundled fake runtime lives.

The package build compiles ``fake_runtime/`` once per ABI into this directory
(``librkllmrt-fake-1.2.so``, ``librkllmrt-fake-1.3.so``) next to a demo model file.
``RKLLM_FAKE_LIBDIR`` points at another build of the same libraries (CI's
ASan/UBSan build uses it).

This package imports nothing else of ``rkllm_sdk`` (and no cffi): the loader in ``_ffi``
depends on it, never the reverse.
"""

from __future__ import annotations

import os
from pathlib import Path

#: The ABIs the package build compiles the fake for (``fake_runtime/build_fake.py``); the same
#: as ``rkllm_sdk._ffi.ABIS``, which a test checks.
ABIS: tuple[str, ...] = ("1.2", "1.3")

_HERE = Path(__file__).resolve().parent

#: Environment variable naming a directory with other builds of the fake libraries.
LIBDIR_ENV = "RKLLM_FAKE_LIBDIR"


def library_path(abi: str) -> Path:
    """Path of the fake runtime library for ``abi`` ("1.2" or "1.3").

    Raises:
        ValueError: unknown ABI.
        FileNotFoundError: the library was not built (install the package to build it).
    """
    if abi not in ABIS:
        raise ValueError(f"unsupported runtime ABI {abi!r}; supported: {', '.join(ABIS)}")
    directory = Path(os.environ.get(LIBDIR_ENV) or _HERE)
    path = directory / f"librkllmrt-fake-{abi}.so"
    if not path.is_file():
        raise FileNotFoundError(
            f"the fake runtime {path} is missing: reinstall rkllm-sdk "
            f"(pip install -e .) so the build compiles it"
        )
    return path


def demo_model_path() -> Path:
    """Path of the demo model description shipped with the package."""
    return _HERE / "demo-model.json"
