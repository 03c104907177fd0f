"""The error tree and its single table of wire codes."""

from __future__ import annotations

import asyncio

import rkllm_sdk as rk
from rkllm_sdk import errors


def test_every_error_class_has_codes() -> None:
    """Each exported error class is in ERROR_CODES; domain errors sit in -32003..-32019,
    clear of the codes MCP uses (-32000, -32001) or retired (-32002)."""
    classes = {getattr(errors, n) for n in errors.__all__ if n.endswith("Error")}
    assert classes == set(errors.ERROR_CODES)
    for cls, codes in errors.ERROR_CODES.items():
        if issubclass(cls, rk.InvalidParamsError):
            assert codes.jsonrpc == -32602
            assert codes.http == 400
        else:
            assert -32019 <= codes.jsonrpc <= -32003, cls
    domain = [c.jsonrpc for cls, c in errors.ERROR_CODES.items() if c.jsonrpc != -32602]
    assert len(domain) == len(set(domain)), "two error classes share a JSON-RPC code"


def test_stdlib_mixins() -> None:
    """Invalid arguments are ValueErrors (and wrong array dtypes TypeErrors) too."""
    assert issubclass(rk.InvalidParamsError, ValueError)
    assert issubclass(rk.ArrayTypeError, TypeError)
    assert issubclass(rk.ArrayTypeError, rk.InvalidParamsError)
    assert issubclass(rk.UnsupportedOnABIError, rk.InvalidParamsError)
    assert all(issubclass(c, rk.RKLLMError) for c in errors.ERROR_CODES)


def test_code_lookup_uses_the_nearest_class() -> None:
    """A subclass without an entry of its own maps like its parent; foreign errors are -32603."""

    class MyBusy(rk.BusyError):
        pass

    assert rk.jsonrpc_code(MyBusy("x")) == -32004
    assert rk.http_status(MyBusy("x")) == 429
    assert rk.jsonrpc_code(rk.UnsupportedOnABIError("x")) == -32602
    assert rk.jsonrpc_code(KeyError("x")) == -32603
    assert rk.http_status(KeyError("x")) == 500


def test_native_code_is_kept() -> None:
    """RKLLMError carries the runtime's return code."""
    err = rk.GenerationError("rkllm_run failed", code=-1)
    assert err.code == -1
    assert str(err) == "rkllm_run failed"
    assert rk.RKLLMError("x").code is None


def test_cancellation_is_not_an_sdk_error() -> None:
    """Cancellation stays outside the tree (it is never wrapped)."""
    assert not issubclass(asyncio.CancelledError, rk.RKLLMError)
    assert rk.jsonrpc_code(asyncio.CancelledError()) == -32603
