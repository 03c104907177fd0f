"""Fixtures for the native layer: the fake runtime per ABI and a channel that records runs."""

from __future__ import annotations

import select
import time
from collections.abc import Iterator, Sequence
from typing import ClassVar

import numpy as np
import pytest

import rkllm_sdk as rk
from rkllm_sdk import _native, models
from rkllm_sdk._ffi.loader import Runtime, load_runtime


@pytest.fixture
def rt(abi: str) -> Iterator[Runtime]:
    """The bundled fake runtime of one ABI; asserts the test leaked no handle or memory."""
    runtime = load_runtime("fake", abi=abi)
    before = _native.fake_stats(runtime)
    bridge_before = _native.bridge_live_objects(runtime)
    yield runtime
    Recorder.close_all()
    after = _native.fake_stats(runtime)
    assert after["live_handles"] == before["live_handles"], "a handle was left open"
    assert after["live_allocations"] == before["live_allocations"], "the fake leaked memory"
    assert _native.bridge_live_objects(runtime) == bridge_before, "the bridge leaked memory"


class Recorder:
    """A bridge channel (every array row copied) and what its runs delivered, as columns.

    Freed by the ``rt`` fixture at the end of the test.
    """

    live: ClassVar[list[Recorder]] = []

    def __init__(self, rt: Runtime, n_batch: int = 1) -> None:
        self.channel = _native.Channel(rt, n_batch, array_rows=2)
        self.n_batch = n_batch
        self.states: list[models.CallState] = []
        self.batches: list[int] = []
        self.texts: list[bytes | None] = []
        self.arrays: list[np.ndarray | None] = []
        self.perf: list[rk.PerfStats] = []
        self.finished = False
        Recorder.live.append(self)

    def run(
        self,
        h: _native.NativeHandle,
        inputs: rk.Input | Sequence[rk.Input],
        options: models.InferOptions | None = None,
    ) -> None:
        """Clear, run through the channel (blocking), and collect everything delivered."""
        self.clear()
        _native.run(h, inputs, options, channel=self.channel)
        self.wait(0)

    def wait(self, timeout: float) -> bool:
        """Collect events until the terminal one (True) or the deadline (False)."""
        deadline = time.monotonic() + timeout
        while not self.finished:
            d = self.channel.drain()
            for i, state in enumerate(d.states):
                self.states.append(models.CallState(state))
                self.batches.append(d.batches[i])
                self.texts.append(d.texts[i])
                self.arrays.append(d.arrays.get(i))
            if d.finished:
                self.finished, self.perf = True, d.perf
            elif not d.states:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                select.select([self.channel.fd], [], [], remaining)
                self.channel.ack()
        return True

    def text(self, batch: int = 0) -> str:
        """The decoded text of one batch entry."""
        return b"".join(
            t or b"" for t, b in zip(self.texts, self.batches, strict=True) if b == batch
        ).decode()

    def clear(self) -> None:
        """Forget what was collected and ready the channel for another run."""
        self.channel.reset(array_rows=2)
        self.states.clear()
        self.batches.clear()
        self.texts.clear()
        self.arrays.clear()
        self.perf = []
        self.finished = False

    @classmethod
    def close_all(cls) -> None:
        """Free every channel (their runs have returned by the end of a test)."""
        while cls.live:
            rec = cls.live.pop()
            rec.arrays.clear()  # the bridge's copies: freed with their last reference
            rec.channel.free()
