"""The hazmat module: cffi objects per ABI, for what the typed API does not cover."""

from __future__ import annotations

import pytest

from rkllm_sdk import lowlevel


def test_ffi_for_each_abi() -> None:
    """ffi_for gives one cached FFI per ABI with that ABI's layouts."""
    assert lowlevel.ffi_for("1.2").sizeof("RKLLMParam") == 208
    assert lowlevel.ffi_for("1.3").sizeof("RKLLMParam") == 184
    assert lowlevel.ffi_for("1.3") is lowlevel.ffi_for("1.3")
    with pytest.raises(ValueError, match=r"supported: 1\.2, 1\.3"):
        lowlevel.ffi_for("1.1")


def test_runtime_exposes_its_lib(abi: str) -> None:
    """A loaded Runtime hands out the raw library for direct calls."""
    rt = lowlevel.load_runtime("fake", abi=abi)
    assert rt.ffi is lowlevel.ffi_for(abi)
    assert rt.lib.rkllm_createDefaultParam().max_context_len == 512


def test_lowlevel_exports() -> None:
    """__all__ lists exactly what the module offers."""
    # (pytest rewrites the asserts of a plugin's distribution: skip its "@py_..." names)
    public = {
        n
        for n in vars(lowlevel)
        if n.isidentifier() and not n.startswith("_") and n not in {"annotations", "TYPE_CHECKING"}
    }
    assert set(lowlevel.__all__) == public
