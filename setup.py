"""Build hook: compile the fake librkllmrt once per ABI into rkllm_sdk/_fake/.

Everything else about the package is in pyproject.toml. The fake libraries are plain
shared libraries (not Python extensions); they ride on setuptools' build_ext so that
wheels, sdists and editable installs all build them.
"""

from __future__ import annotations

import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

sys.path.insert(0, str(Path(__file__).resolve().parent / "fake_runtime"))
import build_fake

_PREFIX = "librkllmrt_fake_"


class FakeRuntime(Extension):
    """One ABI's build of the fake runtime."""

    def __init__(self, abi: str) -> None:
        super().__init__(f"rkllm_sdk._fake.{_PREFIX}{abi.replace('.', '_')}", sources=[])
        self.abi = abi


class Bridge(Extension):
    """The SDK's C result callback (bridge/), one build for both ABIs."""

    def __init__(self) -> None:
        super().__init__("rkllm_sdk._ffi.librkllm_bridge", sources=[])


class BuildExt(build_ext):
    def get_ext_filename(self, fullname: str) -> str:
        parts = fullname.split(".")
        if parts[-1] == "librkllm_bridge":
            return str(Path(*parts[:-1], build_fake.BRIDGE_NAME))
        if parts[-1].startswith(_PREFIX):
            abi = parts[-1][len(_PREFIX) :].replace("_", ".")
            return str(Path(*parts[:-1], build_fake.library_name(abi)))
        return super().get_ext_filename(fullname)

    def build_extension(self, ext: Extension) -> None:
        if isinstance(ext, FakeRuntime):
            build_fake.build(ext.abi, Path(self.get_ext_fullpath(ext.name)))
        elif isinstance(ext, Bridge):
            build_fake.build_bridge(Path(self.get_ext_fullpath(ext.name)))
        else:
            super().build_extension(ext)


setup(
    ext_modules=[*(FakeRuntime(abi) for abi in build_fake.ABIS), Bridge()],
    cmdclass={"build_ext": BuildExt},
)
