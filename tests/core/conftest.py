"""Fixtures for the async core: every test runs on asyncio and trio, for both ABIs."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from rkllm_sdk import ModelParams, _native
from rkllm_sdk._ffi.loader import load_runtime
from rkllm_sdk.llm import AsyncLLM, open_handles

from ..conftest import ModelFactory

LoadLLM = Callable[..., Awaitable[AsyncLLM]]


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def no_leaks(abi: str) -> Any:
    """After the test: no handle open, nothing left in the fake runtime or the bridge."""
    rt = load_runtime("fake", abi=abi)
    before = (_native.fake_stats(rt), _native.bridge_live_objects(rt))
    yield
    gc.collect()  # arrays handed to the test hold bridge memory until collected
    stats, bridge = _native.fake_stats(rt), _native.bridge_live_objects(rt)
    assert open_handles() == []
    assert stats["live_handles"] == before[0]["live_handles"]
    assert stats["live_allocations"] == before[0]["live_allocations"]
    assert bridge == before[1], "the bridge leaked channels or arrays"


@pytest.fixture
def waiting_text() -> str:
    """What the fake's WAITING callbacks carry (its default, "held"); the streaming test
    modules override this fixture to run under both readings."""
    return "held"


@pytest.fixture
async def load(
    abi: str, model: ModelFactory, no_leaks: None, waiting_text: str
) -> AsyncIterator[LoadLLM]:
    """load(**model_fields, params=...) -> an AsyncLLM on the fake, closed after the test."""
    opened: list[AsyncLLM] = []

    async def make(
        params: ModelParams | None = None, path: Path | None = None, **fields: Any
    ) -> AsyncLLM:
        fields.setdefault("waiting_text", waiting_text)
        llm = await AsyncLLM.load(path or model(**fields), runtime="fake", abi=abi, params=params)
        opened.append(llm)
        return llm

    yield make
    for llm in opened:
        await llm.aclose()
