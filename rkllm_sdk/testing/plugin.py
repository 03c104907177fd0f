"""The pytest plugin: fixtures over the bundled fake runtime, for your application's tests.

Registered through the ``pytest11`` entry point, so installing ``rkllm-sdk`` is enough.
Every fixture name starts with ``rkllm_``. Tests that take any of them run once per
runtime ABI (1.2 and 1.3); ``--rkllm-abi 1.3`` (or the ini option ``rkllm_abi``) narrows
that. Async fixtures run under anyio's pytest plugin: mark the tests ``@pytest.mark.anyio``.

Fixtures:

- ``rkllm_abi``: the ABI of this run of the test ("1.2" or "1.3").
- ``rkllm_fake``: a :class:`FakeRuntime` (write models, load them, read what the runtime
  received and what its KV cache holds, counters); at teardown it fails the test if handles
  were left open.
- ``rkllm_model``: the path of a default fast :class:`~rkllm_sdk.testing.FakeModel`.
- ``rkllm_llm``: an :class:`~rkllm_sdk.AsyncLLM` on that model (closed afterwards).
- ``rkllm_sync_llm``: an :class:`~rkllm_sdk.LLM` on that model (closed afterwards).

Example::

    @pytest.mark.anyio
    async def test_turns_on_the_light(rkllm_fake):
        llm = await rkllm_fake.load(replies={"kitchen": tool_call_reply("set_light", {})})
        async with llm:
            reply = await llm.chat(tools=[set_light]).send("kitchen light on")
        assert reply.tool_calls[0].name == "set_light"
        assert rkllm_fake.last_input(llm).input.role == "user"
"""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from .. import _native as native
from .._ffi.loader import load_runtime
from ..llm import AsyncLLM, open_handles
from ..models import ModelParams
from ..sync import LLM
from . import FakeModel, RunInput, kv_text, last_input

__all__ = ["FakeRuntime"]

ABIS = ("1.2", "1.3")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("rkllm", "rkllm-sdk fake runtime")
    group.addoption(
        "--rkllm-abi",
        action="append",
        choices=ABIS,
        help="run rkllm_* fixtures on this runtime ABI only (repeatable; default: both)",
    )
    parser.addini("rkllm_abi", "runtime ABIs the rkllm_* fixtures run on", type="args")


_ABIS_KEY = pytest.StashKey[list[str]]()


def pytest_configure(config: pytest.Config) -> None:
    chosen = config.getoption("rkllm_abi") or config.getini("rkllm_abi") or list(ABIS)
    bad = sorted(set(chosen) - set(ABIS))
    if bad:
        raise pytest.UsageError(f"rkllm_abi: unknown ABI {', '.join(bad)} (use 1.2 or 1.3)")
    config.stash[_ABIS_KEY] = list(dict.fromkeys(chosen))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "rkllm_abi" in metafunc.fixturenames:
        abis = metafunc.config.stash[_ABIS_KEY]
        metafunc.parametrize("rkllm_abi", abis, ids=[f"rkllm{a}" for a in abis])


class FakeRuntime:
    """The fake runtime for one test: models, loading, and what the runtime saw.

    Attributes:
        abi: the runtime ABI of this test run.
        directory: where model files are written (the test's ``tmp_path``).
    """

    def __init__(self, abi: str, directory: Path) -> None:
        self.abi = abi
        self.directory = directory
        self._names = itertools.count()
        self._runtime = load_runtime("fake", abi=abi)
        self._handles_before = self.stats()["live_handles"]

    def model(self, model: FakeModel | None = None, **fields: Any) -> Path:
        """Write a model file (a :class:`FakeModel`, or its fields) and return its path.

        >>> path = rkllm_fake.model(replies={"Hello": "Hi!"}, decode_ms=5)  # doctest: +SKIP
        """
        spec = model if model is not None else FakeModel(**fields)
        return spec.write(self.directory / f"fake-model-{next(self._names)}.json")

    async def load(
        self,
        model: FakeModel | str | os.PathLike[str] | None = None,
        *,
        params: ModelParams | None = None,
        **fields: Any,
    ) -> AsyncLLM:
        """Load a model on the fake runtime: a model file, a :class:`FakeModel`, or its fields.

        Close it (``async with``) in the test; teardown fails if it is left open.

        >>> async with await rkllm_fake.load(replies={"Hi": "Hello"}) as llm: ...  # doctest: +SKIP
        """
        path = self._path(model, fields)
        return await AsyncLLM.load(path, runtime="fake", abi=self.abi, params=params)

    def load_sync(
        self,
        model: FakeModel | str | os.PathLike[str] | None = None,
        *,
        params: ModelParams | None = None,
        **fields: Any,
    ) -> LLM:
        """The blocking twin of :meth:`load`.

        >>> with rkllm_fake.load_sync(replies={"Hi": "Hello"}) as llm: ...  # doctest: +SKIP
        """
        path = self._path(model, fields)
        return LLM.load(path, runtime="fake", abi=self.abi, params=params)

    def _path(self, model: FakeModel | str | os.PathLike[str] | None, fields: Any) -> Path:
        if isinstance(model, (str, os.PathLike)):
            if fields:
                raise TypeError("give a model file path or FakeModel fields, not both")
            return Path(model)
        return self.model(model, **fields)

    def last_input(self, llm: AsyncLLM | LLM) -> RunInput:
        """What the runtime received in ``llm``'s last run (see :func:`last_input`).

        >>> rkllm_fake.last_input(llm).input.role  # doctest: +SKIP
        'user'
        """
        return last_input(llm)

    def kv_text(self, llm: AsyncLLM | LLM, batch: int = 0) -> str:
        """The text ``llm``'s KV cache holds (see :func:`~rkllm_sdk.testing.kv_text`).

        >>> rkllm_fake.kv_text(llm).endswith(reply.text)  # doctest: +SKIP
        True
        """
        return kv_text(llm, batch)

    def stats(self) -> dict[str, int]:
        """The fake's process-wide counters (``live_handles``, ``runs_started``, ...).

        >>> rkllm_fake.stats()["runs_finished"]  # doctest: +SKIP
        3
        """
        return native.fake_stats(self._runtime)

    def check_closed(self) -> None:
        """Fail when handles opened since the fixture started are still open.

        >>> rkllm_fake.check_closed()  # doctest: +SKIP
        """
        left = self.stats()["live_handles"] - self._handles_before
        if left > 0:
            listing = "; ".join(
                f"{h.model_path} ({h.state}, {h.age_s:.1f} s old)" for h in open_handles()
            )
            pytest.fail(
                f"{left} fake runtime handle(s) left open by the test: {listing}. "
                "Close them with `async with` or aclose() / close().",
                pytrace=False,
            )


@pytest.fixture
def rkllm_fake(rkllm_abi: str, tmp_path: Path) -> Iterator[FakeRuntime]:
    """The fake runtime for this test (see :class:`FakeRuntime`)."""
    fake = FakeRuntime(rkllm_abi, tmp_path)
    yield fake
    fake.check_closed()


@pytest.fixture
def rkllm_model(rkllm_fake: FakeRuntime) -> Path:
    """A default fake model file: fast, small, deterministic generated text."""
    return rkllm_fake.model()


@pytest.fixture
async def rkllm_llm(
    rkllm_fake: FakeRuntime, rkllm_model: Path, anyio_backend: Any
) -> AsyncIterator[AsyncLLM]:
    """An :class:`~rkllm_sdk.AsyncLLM` on ``rkllm_model``, closed after the test."""
    async with await rkllm_fake.load(rkllm_model) as llm:
        yield llm


@pytest.fixture
def rkllm_sync_llm(rkllm_fake: FakeRuntime, rkllm_model: Path) -> Iterator[LLM]:
    """An :class:`~rkllm_sdk.LLM` (blocking) on ``rkllm_model``, closed after the test."""
    with rkllm_fake.load_sync(rkllm_model) as llm:
        yield llm
