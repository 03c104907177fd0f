"""Fixtures for the native layer: the fake runtime per ABI and a callback that records."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from rkllm_sdk import _native
from rkllm_sdk._ffi.loader import Runtime, load_runtime
from rkllm_sdk.models import CallState, Result


@pytest.fixture
def rt(abi: str) -> Iterator[Runtime]:
    """The bundled fake runtime of one ABI; asserts the test leaked no handle or memory."""
    runtime = load_runtime("fake", abi=abi)
    before = _native.fake_stats(runtime)
    yield runtime
    after = _native.fake_stats(runtime)
    assert after["live_handles"] == before["live_handles"], "a handle was left open"
    assert after["live_allocations"] == before["live_allocations"], "the fake leaked memory"


class Recorder:
    """A result callback (cffi, test-only) that copies every callback through _native."""

    def __init__(self, rt: Runtime, n_batch: int = 1) -> None:
        self.rt = rt
        self.n_batch = n_batch
        self.events: list[tuple[CallState, list[Result]]] = []
        self.done = threading.Event()
        self.errors: list[BaseException] = []
        self.callback = rt.ffi.callback("LLMResultCallback", self._on_result)

    def _on_result(self, result: Any, _ud: Any, state: int) -> int:
        try:
            st = CallState(state)
            self.events.append((st, _native.read_results(self.rt, result, self.n_batch, st)))
            if st in (CallState.FINISH, CallState.ERROR):
                self.done.set()
        except BaseException as exc:  # surfaced by text() / the test
            self.errors.append(exc)
        return 0

    def text(self, batch: int = 0) -> str:
        assert not self.errors, self.errors
        return b"".join(
            r[batch].text or b""
            for s, r in self.events
            if s in (CallState.NORMAL, CallState.WAITING)
        ).decode()

    def clear(self) -> None:
        self.events.clear()
        self.done.clear()
