"""Fixtures for the fake runtime's own tests: a driver per ABI and model-file factories."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .driver import Driver

ABIS = ["1.2", "1.3"]


@pytest.fixture(params=ABIS, ids=lambda a: f"abi{a}")
def abi(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def drv(abi: str) -> Iterator[Driver]:
    """The fake of one ABI; every handle a test left open is destroyed, and nothing leaks."""
    d = Driver(abi)
    before = d.stats()
    yield d
    d.close_all()
    after = d.stats()
    assert after["live_handles"] == before["live_handles"]
    assert after["live_allocations"] == before["live_allocations"], "the fake leaked memory"


ModelFactory = Callable[..., Path]


@pytest.fixture
def model(tmp_path: Path) -> ModelFactory:
    """Writes a fake model file; fast by default (no sleeping)."""
    counter = iter(range(1_000_000))

    def make(**fields: Any) -> Path:
        body = {
            "format": "rkllm-fake/1",
            "name": "test-model",
            "vocab_size": 4096,
            "hidden_size": 16,
            "decode_ms": 0,
            "prefill_ms": 0,
        }
        body.update(fields)
        path = tmp_path / f"model-{next(counter)}.json"
        path.write_text(json.dumps(body), encoding="utf-8")
        return path

    return make
