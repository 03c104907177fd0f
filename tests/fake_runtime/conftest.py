"""Fixtures for the fake runtime's own tests: a driver per ABI that checks for leaks."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ..conftest import ModelFactory
from .driver import Driver

__all__ = ["ModelFactory"]


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
