"""The native boundary's import direction: checked on the source, without importing it."""

from __future__ import annotations

import ast
from pathlib import Path

import rkllm_sdk
from rkllm_sdk import _fake, _ffi

PACKAGE = Path(rkllm_sdk.__file__).parent


def sdk_imports(directory: Path) -> set[str]:
    """The ``rkllm_sdk`` modules that the files of one subpackage import, relative or not."""
    found: set[str] = set()
    for path in directory.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level >= 2 and node.module:  # from ..x import y
                found.add(node.module.split(".")[0])
            elif node.level >= 2:  # from .. import x
                found.update(alias.name for alias in node.names)
            elif node.level == 0 and (node.module or "").startswith("rkllm_sdk."):
                found.add((node.module or "").split(".")[1])
    return found


def test_native_imports_only_the_layers_below() -> None:
    """_native imports _ffi, arrays, errors and models: never the async layers above it."""
    assert sdk_imports(PACKAGE / "_native") <= {"_ffi", "arrays", "errors", "models"}


def test_ffi_and_fake_have_one_import_direction() -> None:
    """_ffi's loader uses _fake; _fake imports nothing of the SDK (and so no cffi)."""
    assert sdk_imports(PACKAGE / "_fake") == set()
    assert sdk_imports(PACKAGE / "_ffi") <= {"_fake", "errors"}


def test_fake_is_built_for_every_abi() -> None:
    """The fake's own ABI list is the one the SDK speaks."""
    assert _fake.ABIS == _ffi.ABIS
