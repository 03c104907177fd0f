"""rkllm-sdk: an async Python SDK for Rockchip's RKLLM NPU runtime (librkllmrt).

The package currently ships the fake runtime (a C emulator of librkllmrt for both runtime
ABIs, built by the package build) and the C declarations of the runtime API; the async
client API lands on top of them.
"""

from importlib.metadata import PackageNotFoundError as _PackageNotFoundError
from importlib.metadata import version as _version

try:
    __version__: str = _version("rkllm-sdk")
except _PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
