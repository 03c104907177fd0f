"""Fixtures shared by every test package: the ABI parameter and fake model files."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from rkllm_sdk._ffi.loader import locate_runtime
from rkllm_sdk.errors import RuntimeNotFoundError

ABIS = ["1.2", "1.3"]

ModelFactory = Callable[..., Path]


def skip_if_runtime_installed() -> None:
    """Skip a test of the fallback to the bundled fake when a real runtime is installed."""
    try:
        locate_runtime(None)
    except RuntimeNotFoundError:
        return
    pytest.skip("a runtime is installed here: the command would use it")


@pytest.fixture(params=ABIS, ids=lambda a: f"abi{a}")
def abi(request: pytest.FixtureRequest) -> str:
    """Each test that takes it runs once per runtime ABI."""
    return str(request.param)


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
