"""The model catalog: options and scans, first-use loads, FIFO turns, bounded queues,
LRU swaps, keep-alives, failures, cancellation, metrics, draining and shutdown (fake runtime)."""

from __future__ import annotations

import functools
import json
import math
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from prometheus_client.parser import text_string_to_metric_families

from rkllm_sdk import AsyncLLM, ExtendParams, ModelParams, _native
from rkllm_sdk.errors import ClosedError, ModelLoadError
from rkllm_sdk.server.catalog import (
    DrainingError,
    Loaded,
    ModelCatalog,
    ModelNotFoundError,
    QueueFullError,
)
from rkllm_sdk.server.model_specs import ModelSpec, parse_model_option, scan_models_dir
from rkllm_sdk.server.templates import ChatTemplate
from rkllm_sdk.testing import FakeModel, Faults, last_input

from .conftest import live_handles

pytestmark = pytest.mark.anyio

DEADLINE_S = 10.0


# ---- helpers ------------------------------------------------------------------------------


@pytest.fixture
def specs(tmp_path: Path) -> dict[str, ModelSpec]:
    """Three fast fake models (a, b, c), one that fails to load (bad) and a slow one."""
    out = {}
    for stem in ("a", "b", "c"):
        path = FakeModel(name=stem, replies={"Hello": f"Hi from {stem}!"}).write(
            tmp_path / f"{stem}.json"
        )
        out[stem] = ModelSpec(name=f"{stem}:latest", path=path)
    bad = FakeModel(faults=Faults(init_fail=-1)).write(tmp_path / "bad.json")
    out["bad"] = ModelSpec(name="bad:latest", path=bad)
    slow = FakeModel(decode_ms=20, natural_end=False).write(tmp_path / "slow.json")
    out["slow"] = ModelSpec(name="slow:latest", path=slow)
    return out


def catalog_of(specs: dict[str, ModelSpec], abi: str, **options: Any) -> ModelCatalog:
    """A catalog of every spec on the fake runtime of ``abi``."""
    options.setdefault("keep_alive_s", -1)
    return ModelCatalog(specs.values(), runtime="fake", abi=abi, **options)


def loaded_names(catalog: ModelCatalog) -> list[str]:
    """The names of the models loaded now."""
    return [m.name for m in catalog.models() if m.loaded]


async def wait_for(condition: Callable[[], bool]) -> None:
    """Wait (bounded) until ``condition()`` holds, letting other tasks run."""
    with anyio.fail_after(DEADLINE_S):
        while not condition():  # noqa: ASYNC110  # state many tasks change; 2 ms is fine
            await anyio.sleep(0.002)


async def settle() -> None:
    """Let every runnable task run a few times (nothing here waits on a thread)."""
    for _ in range(20):
        await anyio.lowlevel.checkpoint()


async def hold(
    catalog: ModelCatalog,
    name: str,
    label: str,
    order: list[str],
    release: anyio.Event,
    **options: Any,
) -> None:
    """Hold ``name`` until ``release``: record ``label`` in ``order`` on entry."""
    async with catalog.use(name, **options):
        order.append(label)
        await release.wait()


async def hold_in(
    scope: anyio.CancelScope,
    catalog: ModelCatalog,
    name: str,
    label: str,
    order: list[str],
    release: anyio.Event,
) -> None:
    """hold() inside ``scope``, so the test can cancel this one request."""
    with scope:
        await hold(catalog, name, label, order, release)


async def use_until_closed(
    catalog: ModelCatalog, name: str, label: str, order: list[str], errors: list[BaseException]
) -> None:
    """Use ``name``, recording ``label`` in ``order`` on entry; a ClosedError goes to
    ``errors``."""
    try:
        async with catalog.use(name):
            order.append(label)
    except ClosedError as exc:
        errors.append(exc)


# ---- parse_model_option -------------------------------------------------------------------


def test_parse_model_option_names_paths_and_options() -> None:
    """NAME=PATH gets ':latest' when untagged, keeps Ollama-style tags and namespaces, and
    maps options onto ModelParams (extend fields included) and the template."""
    spec = parse_model_option("qwen3=/models/q.rkllm")
    assert spec == ModelSpec(name="qwen3:latest", path=Path("/models/q.rkllm"))
    assert parse_model_option("qwen3:4b=/m/q.rkllm").name == "qwen3:4b"
    assert parse_model_option("library/qwen3:4b-q8=/m/q.rkllm").name == "library/qwen3:4b-q8"
    spec = parse_model_option(
        "q=/m/q.rkllm, max_context_len=4096,max_new_tokens=-1,n_keep=64,top_p=0.5,"
        "skip_special_token=true,n_batch=2,enabled_cpus=4+5,template=qwen3"
    )
    assert spec.params == ModelParams(
        max_context_len=4096,
        max_new_tokens=-1,
        n_keep=64,
        top_p=0.5,
        skip_special_token=True,
        extend=ExtendParams(n_batch=2, enabled_cpus={4, 5}),
    )
    assert spec.template == "qwen3"
    assert parse_model_option("q=/m/q.rkllm,enabled_cpus=0xF0").params == ModelParams(
        extend=ExtendParams(enabled_cpus=0xF0)
    )
    assert parse_model_option("q=~/q.rkllm").path == Path.home() / "q.rkllm"


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("qwen3", "expected NAME=PATH"),
        ("qwen3=", "path is empty"),
        ("=/m/q.rkllm", "bad model name ''"),
        ("has space=/m/q.rkllm", "bad model name 'has space'"),
        ("ns/=/m/q.rkllm", "bad model name 'ns/'"),
        ("q:=/m/q.rkllm", "bad model name 'q:'"),
        ("q:a:b=/m/q.rkllm", "bad model name 'q:a:b'"),
        ("q=/m/q.rkllm,context=4096", "unknown option 'context'"),
        ("q=/m/q.rkllm,n_keep", "expected option=value, got 'n_keep'"),
        ("q=/m/q.rkllm,n_keep=1,n_keep=2", "option 'n_keep' given twice"),
        ("q=/m/q.rkllm,max_context_len=big", "max_context_len='big': expected an integer"),
        ("q=/m/q.rkllm,max_context_len=0", "max_context_len must be > 0"),
        ("q=/m/q.rkllm,top_p=2", "top_p must be in (0, 1]"),
        ("q=/m/q.rkllm,temperature=warm", "temperature='warm': expected a number"),
        ("q=/m/q.rkllm,is_async=maybe", "is_async='maybe': expected true or false"),
        ("q=/m/q.rkllm,n_batch=9", "n_batch must be in 1..8"),
        ("q=/m/q.rkllm,enabled_cpus=x", "enabled_cpus='x': expected a CPU mask"),
        ("q=/m/q.rkllm,template=", "template= needs a name or a file"),
    ],
)
def test_parse_model_option_refuses_what_it_cannot_take(text: str, names: str) -> None:
    """A malformed option is a ValueError whose message names the bad part."""
    with pytest.raises(ValueError, match="--model") as info:
        parse_model_option(text)
    assert names in str(info.value)


# ---- scan_models_dir ----------------------------------------------------------------------


def test_scan_finds_rkllm_files_and_fake_models_only(tmp_path: Path) -> None:
    """Every *.rkllm file and every fake model (format rkllm-fake/1) is found, named by stem
    plus ':latest', sorted; other JSON, other files and subdirectories are not; a .rkllm
    file wins over a fake model of the same stem."""
    (tmp_path / "Qwen3-4B.rkllm").write_bytes(b"RKLLM\x00")
    FakeModel().write(tmp_path / "fake.json")
    FakeModel().write(tmp_path / "twin.json")
    (tmp_path / "twin.rkllm").write_bytes(b"RKLLM")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "x"}))
    (tmp_path / "other.json").write_text(json.dumps({"format": "rkllm-fake/2"}))
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "sub").mkdir()
    FakeModel().write(tmp_path / "sub" / "deep.json")
    (tmp_path / "dir.rkllm").mkdir()
    found = scan_models_dir(tmp_path)
    assert [(s.name, s.path.name) for s in found] == [
        ("Qwen3-4B:latest", "Qwen3-4B.rkllm"),
        ("fake:latest", "fake.json"),
        ("twin:latest", "twin.rkllm"),
    ]
    assert all(s.params is None and s.template is None for s in found)


def test_scan_of_an_empty_or_missing_directory(tmp_path: Path) -> None:
    """An empty directory has no models; a missing one is an OSError."""
    assert scan_models_dir(tmp_path) == []
    with pytest.raises(OSError):  # noqa: PT011  # FileNotFoundError, whatever the OS says
        scan_models_dir(tmp_path / "missing")


# ---- the catalog: lookups -----------------------------------------------------------------


def test_resolve_with_and_without_a_tag(specs: dict[str, ModelSpec]) -> None:
    """'a' and 'a:latest' resolve to the same spec; other tags, paths and unknown names are
    ModelNotFoundError (a client's name is only looked up)."""
    catalog = ModelCatalog(specs.values(), runtime="fake", abi=None)
    assert catalog.resolve("a") is catalog.resolve("a:latest") is specs["a"]
    for name in ("a:4b", "missing", str(specs["a"].path), "../a.json", ""):
        with pytest.raises(ModelNotFoundError) as info:
            catalog.resolve(name)
        assert info.value.name == name
    with pytest.raises(ModelNotFoundError):
        catalog.counters("missing")


def test_catalog_refuses_duplicate_names_and_bad_limits(specs: dict[str, ModelSpec]) -> None:
    """Two specs of one name, max_loaded < 1, max_queue < 0, a reap interval of 0 or a NaN
    keep-alive are ValueError."""
    with pytest.raises(ValueError, match="configured twice"):
        ModelCatalog([specs["a"], specs["a"]], runtime="fake", abi=None)
    bad_options: list[dict[str, Any]] = [
        {"max_loaded": 0},
        {"max_queue": -1},
        {"reap_interval_s": 0.0},
        {"keep_alive_s": math.nan},
    ]
    for bad in bad_options:
        with pytest.raises(ValueError, match="must be"):
            ModelCatalog([], runtime="fake", abi=None, **bad)


def test_models_lists_files_and_state(specs: dict[str, ModelSpec], tmp_path: Path) -> None:
    """models() gives each model sorted by name with its file's size and time, params and
    template; a missing file reads as size 0 at the epoch."""
    missing = ModelSpec(
        name="gone:latest",
        path=tmp_path / "gone.rkllm",
        params=ModelParams(max_context_len=64),
        template="qwen3",
    )
    catalog = ModelCatalog([specs["b"], specs["a"], missing], runtime="fake", abi=None)
    infos = catalog.models()
    assert [m.name for m in infos] == ["a:latest", "b:latest", "gone:latest"]
    a = infos[0]
    stat = specs["a"].path.stat()
    assert (a.path, a.size_bytes) == (specs["a"].path, stat.st_size)
    assert a.modified == datetime.fromtimestamp(stat.st_mtime, UTC)
    assert (a.loaded, a.loading, a.expires_at, a.params, a.template) == (
        False,
        False,
        None,
        None,
        None,
    )
    gone = infos[2]
    assert (gone.size_bytes, gone.modified) == (0, datetime.fromtimestamp(0, UTC))
    assert (gone.params, gone.template) == (ModelParams(max_context_len=64), "qwen3")
    assert catalog.ready and not catalog.loading


# ---- loading ------------------------------------------------------------------------------


async def test_a_model_loads_on_first_use_and_is_reused(
    specs: dict[str, ModelSpec], abi: str
) -> None:
    """Nothing loads before a request; the first use loads the model (its template chosen,
    the runtime's own template off: the runtime receives the text exactly); later uses get
    the same handle."""
    baseline = live_handles(abi)
    lines: list[str] = []
    catalog = catalog_of(specs, abi, log=lines.append)
    with anyio.fail_after(DEADLINE_S):
        async with catalog.lifespan():
            assert loaded_names(catalog) == [] and live_handles(abi) == baseline
            async with catalog.use("a") as first:
                assert isinstance(first, Loaded) and isinstance(first.template, ChatTemplate)
                assert first.spec is specs["a"] and first.uses == 1 and first.load_ms > 0
                assert first.engine_state is None and not first.llm.closed
                assert first.llm.runtime.abi == abi
                prompt = "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"
                assert (await first.llm.generate(prompt)).text == "Hi from a!"
                assert last_input(first.llm).input.templated == prompt
                assert catalog.counters("a").running == 1
            assert loaded_names(catalog) == ["a:latest"]
            assert live_handles(abi) == baseline + 1
            async with catalog.use("a:latest") as second:
                assert second is first and second.uses == 2
            counters = catalog.counters("a")
            assert (counters.loads, counters.requests, counters.running) == (1, 2, 0)
        assert live_handles(abi) == baseline
    assert [line.split(" in ")[0] for line in lines] == [
        "loaded a:latest",
        "unloaded a:latest (closing)",
    ]


async def test_a_failed_load_then_a_good_one(specs: dict[str, ModelSpec], abi: str) -> None:
    """A load that fails raises the SDK's error to its request and leaves the catalog
    usable: the next request for it tries again, other models load."""
    baseline = live_handles(abi)
    missing = ModelSpec(name="missing:latest", path=specs["a"].path.with_name("none.json"))
    lines: list[str] = []
    catalog = ModelCatalog([*specs.values(), missing], runtime="fake", abi=abi, log=lines.append)
    with anyio.fail_after(DEADLINE_S):
        async with catalog.lifespan():
            for name in ("bad", "bad", "missing"):
                with pytest.raises(ModelLoadError):
                    async with catalog.use(name):
                        pytest.fail("a failed load yields nothing")
            assert catalog.counters("bad").load_failures == 2
            assert catalog.counters("bad").running == 0 and not catalog.loading
            async with catalog.use("a") as loaded:
                assert (await loaded.llm.generate("Hello")).text == "Hi from a!"
            assert loaded_names(catalog) == ["a:latest"]
        assert live_handles(abi) == baseline
    assert lines[0].startswith("loading bad:latest failed: ModelLoadError: ")


# ---- turns and queues ---------------------------------------------------------------------


async def test_requests_are_served_first_come_first_served(
    specs: dict[str, ModelSpec], abi: str
) -> None:
    """Requests for one model take it one at a time, in the order they arrived."""
    catalog = catalog_of(specs, abi)
    order: list[str] = []
    release = anyio.Event()
    with anyio.fail_after(DEADLINE_S):
        async with catalog.lifespan(), anyio.create_task_group() as tg:
            tg.start_soon(hold, catalog, "a", "r0", order, release)
            await wait_for(lambda: order == ["r0"])
            for i in range(1, 6):
                tg.start_soon(hold, catalog, "a", f"r{i}", order, release)
                await wait_for(lambda i=i: catalog.counters("a").queued == i)  # type: ignore[misc]
            assert catalog.counters("a").running == 1 and order == ["r0"]
            release.set()
        assert order == [f"r{i}" for i in range(6)]
        assert catalog.counters("a").requests == 6


async def test_a_full_queue_answers_at_once(specs: dict[str, ModelSpec], abi: str) -> None:
    """With max_queue requests waiting, one more gets QueueFullError immediately (with a
    retry estimate of at least a second); other models are unaffected."""
    catalog = catalog_of(specs, abi, max_queue=2, max_loaded=2)
    order: list[str] = []
    release = anyio.Event()
    with anyio.fail_after(DEADLINE_S):
        async with catalog.lifespan(), anyio.create_task_group() as tg:
            tg.start_soon(hold, catalog, "a", "held", order, release)
            await wait_for(lambda: order == ["held"])
            for i in range(2):
                tg.start_soon(hold, catalog, "a", f"w{i}", order, release)
                await wait_for(lambda i=i: catalog.counters("a").queued == i + 1)  # type: ignore[misc]
            started = time.monotonic()
            with pytest.raises(QueueFullError) as info:
                async with catalog.use("a"):
                    pytest.fail("a full queue lets nobody in")
            assert time.monotonic() - started < 1.0
            assert info.value.retry_after_s >= 1.0 and math.isfinite(info.value.retry_after_s)
            assert info.value.model == "a:latest" and "2 requests are waiting" in str(info.value)
            async with catalog.use("b"):
                order.append("b")
            release.set()
        assert order == ["held", "b", "w0", "w1"]
        counters = catalog.counters("a")
        assert (counters.rejected, counters.requests, counters.queued) == (1, 3, 0)


async def test_max_queue_zero_refuses_any_wait(specs: dict[str, ModelSpec], abi: str) -> None:
    """max_queue=0: a request for a model in use is refused; a free model is served."""
    catalog = catalog_of(specs, abi, max_queue=0, max_loaded=2)
    order: list[str] = []
    release = anyio.Event()
    with anyio.fail_after(DEADLINE_S):
        async with catalog.lifespan():
            async with anyio.create_task_group() as tg:
                tg.start_soon(hold, catalog, "a", "held", order, release)
                await wait_for(lambda: order == ["held"])
                with pytest.raises(QueueFullError):
                    async with catalog.use("a"):
                        pass
                async with catalog.use("b"):
                    order.append("b")
                release.set()
            async with catalog.use("a"):
                order.append("a")
        assert order == ["held", "b", "a"]


async def test_a_request_cancelled_while_waiting_leaves_the_queue(
    specs: dict[str, ModelSpec], abi: str
) -> None:
    """A waiting request that is cancelled leaves the queue (the count drops, its place goes
    to the next) and never gets the model."""
    catalog = catalog_of(specs, abi, max_queue=1)
    order: list[str] = []
    release = anyio.Event()

    with anyio.fail_after(DEADLINE_S):
        async with catalog.lifespan(), anyio.create_task_group() as tg:
            tg.start_soon(hold, catalog, "a", "held", order, release)
            await wait_for(lambda: order == ["held"])
            scope = anyio.CancelScope()
            tg.start_soon(hold_in, scope, catalog, "a", "cancelled", order, release)
            await wait_for(lambda: catalog.counters("a").queued == 1)
            scope.cancel()
            await wait_for(lambda: catalog.counters("a").queued == 0)
            tg.start_soon(hold, catalog, "a", "next", order, release)  # the place is free
            await wait_for(lambda: catalog.counters("a").queued == 1)
            release.set()
        assert order == ["held", "next"]
        counters = catalog.counters("a")
        assert (counters.requests, counters.queued, counters.running) == (2, 0, 0)


async def test_a_cancellation_racing_the_hand_over_passes_the_turn_on(
    specs: dict[str, ModelSpec], abi: str
) -> None:
    """A waiter cancelled in the same instant the model is handed to it does not keep it:
    the request after it is served and every count returns to zero."""
    catalog = catalog_of(specs, abi)
    order: list[str] = []
    release, later = anyio.Event(), anyio.Event()

    with anyio.fail_after(DEADLINE_S):
        async with catalog.lifespan(), anyio.create_task_group() as tg:
            tg.start_soon(hold, catalog, "a", "held", order, release)
            await wait_for(lambda: order == ["held"])
            scope = anyio.CancelScope()
            tg.start_soon(hold_in, scope, catalog, "a", "cancelled", order, later)
            await wait_for(lambda: catalog.counters("a").queued == 1)
            tg.start_soon(hold, catalog, "a", "next", order, later)
            await wait_for(lambda: catalog.counters("a").queued == 2)
            release.set()
            scope.cancel()
            await wait_for(lambda: order[-1] == "next")
            later.set()
        assert order == ["held", "next"]
        counters = catalog.counters("a")
        assert (counters.queued, counters.running) == (0, 0)


async def test_a_load_cancelled_midway_leaves_no_handle(
    specs: dict[str, ModelSpec], abi: str
) -> None:
    """A request cancelled while its model loads leaves no handle behind: the fake's live
    handles match what the catalog holds, and the next request loads and runs."""
    baseline = live_handles(abi)
    catalog = catalog_of(specs, abi)
    with anyio.fail_after(DEADLINE_S):
        async with catalog.lifespan():
            for _ in range(3):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_use_once, catalog, "a")
                    await wait_for(lambda: catalog.loading or bool(loaded_names(catalog)))
                    tg.cancel_scope.cancel()
                assert not catalog.loading
                assert live_handles(abi) == baseline + len(loaded_names(catalog))
                await catalog.unload("a")
                assert live_handles(abi) == baseline
            async with catalog.use("a") as loaded:
                assert (await loaded.llm.generate("Hello")).text == "Hi from a!"
            assert catalog.counters("a").running == 0
        assert live_handles(abi) == baseline


@pytest.fixture
def load_gate(monkeypatch: pytest.MonkeyPatch) -> anyio.Event:
    """Loads pause after the handle is made, before the runtime's template is switched
    off, until the returned event is set."""
    gate = anyio.Event()
    original = AsyncLLM.set_chat_template

    async def gated(self: AsyncLLM, system_prompt: str, prefix: str, postfix: str) -> None:
        await gate.wait()
        await original(self, system_prompt, prefix, postfix)

    monkeypatch.setattr(AsyncLLM, "set_chat_template", gated)
    return gate


async def test_loading_is_visible_and_happens_once(
    specs: dict[str, ModelSpec], abi: str, load_gate: anyio.Event
) -> None:
    """While a model loads, loading is true and ready false (models() says which); a second
    request for it waits instead of loading it again."""
    baseline = live_handles(abi)
    catalog = catalog_of(specs, abi)
    order: list[str] = []
    release = anyio.Event()
    release.set()
    with anyio.fail_after(DEADLINE_S):
        async with catalog.lifespan():
            assert catalog.ready and not catalog.loading
            async with anyio.create_task_group() as tg:
                tg.start_soon(hold, catalog, "a", "first", order, release)
                await wait_for(lambda: live_handles(abi) == baseline + 1)
                tg.start_soon(hold, catalog, "a", "second", order, release)
                await wait_for(lambda: catalog.counters("a").queued == 1)
                assert catalog.loading and not catalog.ready
                # other models could still serve: ready for /health
                assert catalog.health() == (
                    True,
                    {"models": {"loaded": [], "loading": ["a:latest"]}},
                )
                first = catalog.models()[0]
                assert (first.name, first.loading, first.loaded) == ("a:latest", True, False)
                load_gate.set()
            assert order == ["first", "second"] and catalog.ready
            assert catalog.health() == (True, {"models": {"loaded": ["a:latest"], "loading": []}})
            assert catalog.counters("a").loads == 1 and live_handles(abi) == baseline + 1
        assert live_handles(abi) == baseline


async def test_health_is_not_ready_while_the_only_model_loads(
    specs: dict[str, ModelSpec], abi: str, load_gate: anyio.Event
) -> None:
    """With one named model, /health's part is not ready while it loads (nothing else can
    answer), ready once loaded."""
    catalog = catalog_of({"a": specs["a"]}, abi)
    release = anyio.Event()
    release.set()
    with anyio.fail_after(DEADLINE_S):
        async with catalog.lifespan():
            assert catalog.health() == (True, {"models": {"loaded": [], "loading": []}})
            async with anyio.create_task_group() as tg:
                tg.start_soon(hold, catalog, "a", "first", [], release)
                await wait_for(lambda: catalog.loading)
                assert catalog.health() == (
                    False,
                    {"models": {"loaded": [], "loading": ["a:latest"]}},
                )
                load_gate.set()
            assert catalog.health() == (True, {"models": {"loaded": ["a:latest"], "loading": []}})


async def test_a_request_cancelled_after_the_handle_is_made_destroys_it(
    specs: dict[str, ModelSpec], abi: str, load_gate: anyio.Event
) -> None:
    """Cancelled between making the handle and finishing the load, the request destroys
    the handle: the fake counts none, and the next request loads afresh."""
    baseline = live_handles(abi)
    catalog = catalog_of(specs, abi)
    with anyio.fail_after(DEADLINE_S):
        async with catalog.lifespan():
            async with anyio.create_task_group() as tg:
                tg.start_soon(_use_once, catalog, "a")
                await wait_for(lambda: live_handles(abi) == baseline + 1 and catalog.loading)
                tg.cancel_scope.cancel()
            assert live_handles(abi) == baseline and not catalog.loading
            assert loaded_names(catalog) == []
            counters = catalog.counters("a")
            assert (counters.loads, counters.load_failures, counters.running) == (0, 0, 0)
            load_gate.set()
            async with catalog.use("a") as loaded:
                assert (await loaded.llm.generate("Hello")).text == "Hi from a!"
        assert live_handles(abi) == baseline


async def test_a_request_cancelled_during_the_runtime_init_leaves_no_handle(
    specs: dict[str, ModelSpec], abi: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelled while rkllm_init runs (held in its worker thread), the request waits for
    the init and the handle it made is destroyed: the fake counts none, nothing is loaded,
    and the next request loads."""
    baseline = live_handles(abi)
    catalog = catalog_of(specs, abi)
    started, proceed = threading.Event(), threading.Event()
    real_init = _native.init

    def held_init(*args: Any, **kwargs: Any) -> Any:
        started.set()
        proceed.wait(DEADLINE_S)
        return real_init(*args, **kwargs)

    monkeypatch.setattr(_native, "init", held_init)
    with anyio.fail_after(DEADLINE_S):
        async with catalog.lifespan():
            async with anyio.create_task_group() as tg:
                tg.start_soon(_use_once, catalog, "a")
                await wait_for(started.is_set)
                assert catalog.loading
                tg.cancel_scope.cancel()
                proceed.set()
            assert live_handles(abi) == baseline and loaded_names(catalog) == []
            assert not catalog.loading and catalog.counters("a").running == 0
            async with catalog.use("a") as loaded:
                assert (await loaded.llm.generate("Hello")).text == "Hi from a!"
        assert live_handles(abi) == baseline


async def _use_once(catalog: ModelCatalog, name: str) -> None:
    async with catalog.use(name):
        await anyio.sleep_forever()


# ---- swapping -----------------------------------------------------------------------------


async def test_swap_waits_for_the_busy_model_and_goes_before_later_requests(
    specs: dict[str, ModelSpec], abi: str
) -> None:
    """max_loaded=1: a request for b waits while a is in use (a is never unloaded under its
    request), then a is unloaded and b loaded; a request for a that came after b's waits
    for b's turn (no starvation). Never more than one handle at a time."""
    baseline = live_handles(abi)
    catalog = catalog_of(specs, abi, max_loaded=1)
    order: list[str] = []
    handles: list[int] = []
    release_a, release_b = anyio.Event(), anyio.Event()

    async def hold_counting(name: str, label: str, release: anyio.Event) -> None:
        async with catalog.use(name):
            handles.append(live_handles(abi) - baseline)
            order.append(label)
            await release.wait()

    with anyio.fail_after(DEADLINE_S):
        async with catalog.lifespan():
            async with anyio.create_task_group() as tg:
                tg.start_soon(hold_counting, "a", "a1", release_a)
                await wait_for(lambda: order == ["a1"])
                tg.start_soon(hold_counting, "b", "b", release_b)
                await wait_for(lambda: catalog.counters("b").running == 1)
                tg.start_soon(hold_counting, "a", "a2", release_a)
                await wait_for(lambda: catalog.counters("a").queued == 1)
                await settle()
                assert order == ["a1"] and loaded_names(catalog) == ["a:latest"]
                release_a.set()
                await wait_for(lambda: order == ["a1", "b"])
                assert loaded_names(catalog) == ["b:latest"]
                await settle()
                assert order == ["a1", "b"]  # a2 waits for b: it came later
                release_b.set()
            assert order == ["a1", "b", "a2"] and handles == [1, 1, 1]
            assert loaded_names(catalog) == ["a:latest"]
            assert [catalog.counters(n).loads for n in ("a", "b")] == [2, 1]
            assert [catalog.counters(n).unloads for n in ("a", "b")] == [1, 1]
        assert live_handles(abi) == baseline


async def test_swap_unloads_the_least_recently_used_idle_model(
    specs: dict[str, ModelSpec], abi: str
) -> None:
    """max_loaded=2: loading a third model unloads the idle model used least recently."""
    baseline = live_handles(abi)
    catalog = catalog_of(specs, abi, max_loaded=2)
    with anyio.fail_after(DEADLINE_S):
        async with catalog.lifespan():
            for name in ("a", "b", "a", "c"):
                async with catalog.use(name):
                    pass
            assert loaded_names(catalog) == ["a:latest", "c:latest"]
            for name in ("b",):
                async with catalog.use(name):
                    pass
            assert loaded_names(catalog) == ["b:latest", "c:latest"]
            assert live_handles(abi) == baseline + 2
        assert live_handles(abi) == baseline


async def test_swap_never_unloads_a_model_in_use(specs: dict[str, ModelSpec], abi: str) -> None:
    """max_loaded=2 with a busy and an idle model: the idle one is unloaded, even when it
    was used more recently than the busy one."""
    catalog = catalog_of(specs, abi, max_loaded=2)
    order: list[str] = []
    release = anyio.Event()
    with anyio.fail_after(DEADLINE_S):
        async with catalog.lifespan(), anyio.create_task_group() as tg:
            tg.start_soon(hold, catalog, "a", "a", order, release)
            await wait_for(lambda: order == ["a"])
            async with catalog.use("b"):
                pass
            async with catalog.use("c"):
                assert loaded_names(catalog) == ["a:latest", "c:latest"]
            release.set()


# ---- keep-alive ---------------------------------------------------------------------------


async def test_keep_alive_zero_unloads_when_the_request_ends(
    specs: dict[str, ModelSpec], abi: str
) -> None:
    """keep_alive 0 unloads as the request ends; with another request waiting the model
    stays loaded for it (and follows that request's keep-alive)."""
    baseline = live_handles(abi)
    catalog = catalog_of(specs, abi)
    order: list[str] = []
    release = anyio.Event()
    with anyio.fail_after(DEADLINE_S):
        async with catalog.lifespan():
            async with catalog.use("a", keep_alive_s=0):
                assert live_handles(abi) == baseline + 1
            assert loaded_names(catalog) == [] and live_handles(abi) == baseline
            async with anyio.create_task_group() as tg:
                tg.start_soon(
                    functools.partial(hold, keep_alive_s=0), catalog, "a", "first", order, release
                )
                await wait_for(lambda: order == ["first"])
                tg.start_soon(hold, catalog, "a", "second", order, release)
                await wait_for(lambda: catalog.counters("a").queued == 1)
                release.set()
            assert loaded_names(catalog) == ["a:latest"]
            assert catalog.counters("a").loads == 2


async def test_keep_alive_forever_survives_the_reaper(
    specs: dict[str, ModelSpec], abi: str
) -> None:
    """keep_alive -1 keeps the model loaded through many reaper passes; no expiry shown."""
    catalog = catalog_of(specs, abi, keep_alive_s=0.0, reap_interval_s=0.005)
    with anyio.fail_after(DEADLINE_S):
        async with catalog.lifespan():
            async with catalog.use("a", keep_alive_s=-1):
                pass
            await anyio.sleep(0.1)
            info = catalog.models()[0]
            assert info.loaded and info.expires_at is None


async def test_keep_alive_seconds_expire_through_the_reaper(
    specs: dict[str, ModelSpec], abi: str
) -> None:
    """keep_alive N: the model stays loaded N seconds after its last use, expires_at shows
    the deadline, then the reaper unloads it. The catalog's default applies when a
    request gives none."""
    baseline = live_handles(abi)
    catalog = catalog_of(specs, abi, keep_alive_s=0.3, reap_interval_s=0.01)
    with anyio.fail_after(DEADLINE_S):
        async with catalog.lifespan():
            for options in ({"keep_alive_s": 0.4}, {}):
                async with catalog.use("a", **options):
                    busy = catalog.models()[0].expires_at
                ended = time.monotonic()
                now = datetime.now(UTC)
                info = catalog.models()[0]
                keep = options.get("keep_alive_s", 0.3)
                assert info.loaded and info.expires_at is not None and busy is not None
                assert now < info.expires_at <= now + timedelta(seconds=keep + 0.001)
                await wait_for(lambda: not catalog.models()[0].loaded)
                assert time.monotonic() - ended >= keep - 0.01
                assert live_handles(abi) == baseline
                assert catalog.models()[0].expires_at is None
            assert catalog.counters("a").unloads == 2


async def test_a_keep_alive_beyond_the_calendar_is_forever(
    specs: dict[str, ModelSpec], abi: str
) -> None:
    """An infinite or astronomically long keep-alive keeps the model loaded with no expiry
    shown; NaN is refused before the request waits."""
    catalog = catalog_of(specs, abi, reap_interval_s=0.005)
    with anyio.fail_after(DEADLINE_S):
        async with catalog.lifespan():
            for keep in (math.inf, 1e15):
                async with catalog.use("a", keep_alive_s=keep):
                    assert catalog.models()[0].expires_at is None
                await anyio.sleep(0.02)
                info = catalog.models()[0]
                assert info.loaded and info.expires_at is None
            with pytest.raises(ValueError, match="nan"):
                async with catalog.use("a", keep_alive_s=math.nan):
                    pass
            assert catalog.counters("a").requests == 2


async def test_unload_now_or_when_the_request_ends(specs: dict[str, ModelSpec], abi: str) -> None:
    """unload() of an idle model destroys its handle now; of a model in use, when its
    request ends; of a model not loaded, nothing."""
    baseline = live_handles(abi)
    catalog = catalog_of(specs, abi)
    with anyio.fail_after(DEADLINE_S):
        async with catalog.lifespan():
            await catalog.unload("a")
            async with catalog.use("a"):
                pass
            await catalog.unload("a:latest")
            assert loaded_names(catalog) == [] and live_handles(abi) == baseline
            async with catalog.use("a"):
                await catalog.unload("a")
                assert loaded_names(catalog) == ["a:latest"]
            assert loaded_names(catalog) == [] and live_handles(abi) == baseline
            with pytest.raises(ModelNotFoundError):
                await catalog.unload("nope")


# ---- metrics and shutdown -----------------------------------------------------------------


def _samples(text: str) -> Iterator[tuple[str, str | None, float]]:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            yield sample.name, sample.labels.get("model"), sample.value


async def test_metrics_text_counts_exactly(specs: dict[str, ModelSpec], abi: str) -> None:
    """metrics_text() parses as Prometheus text with the exact per-model counts: requests,
    rejections, queued/running, loads, failures, unloads, and the engine's token counts."""
    catalog = ModelCatalog(
        [specs["a"], specs["b"], specs["bad"]],
        runtime="fake",
        abi=abi,
        max_queue=0,
        max_loaded=3,
        keep_alive_s=-1,
    )
    order: list[str] = []
    release = anyio.Event()
    with anyio.fail_after(DEADLINE_S):
        async with catalog.lifespan():
            for _ in range(2):
                async with catalog.use("a"):
                    counters = catalog.counters("a")
                    counters.prompt_tokens += 10
                    counters.generated_tokens += 4
                    counters.prefill_tokens_saved += 3
            with pytest.raises(ModelLoadError):
                async with catalog.use("bad"):
                    pass
            async with anyio.create_task_group() as tg:
                tg.start_soon(hold, catalog, "a", "held", order, release)
                await wait_for(lambda: order == ["held"])
                with pytest.raises(QueueFullError):
                    async with catalog.use("a"):
                        pass
                during = {(n, m): v for n, m, v in _samples(catalog.metrics_text())}
                release.set()
            async with catalog.use("b", keep_alive_s=0):
                pass
            after = {(n, m): v for n, m, v in _samples(catalog.metrics_text())}
    assert during[("rkllm_api_running_requests", "a:latest")] == 1
    assert during[("rkllm_api_queued_requests", "a:latest")] == 0
    expected = {
        "rkllm_api_queued_requests": (0, 0, 0),
        "rkllm_api_running_requests": (0, 0, 0),
        "rkllm_api_model_loaded": (1, 0, 0),
        "rkllm_api_requests_total": (3, 1, 1),
        "rkllm_api_rejected_requests_total": (1, 0, 0),
        "rkllm_api_prompt_tokens_total": (20, 0, 0),
        "rkllm_api_generated_tokens_total": (8, 0, 0),
        "rkllm_api_prefill_tokens_saved_total": (6, 0, 0),
        "rkllm_api_model_loads_total": (1, 1, 0),
        "rkllm_api_model_load_failures_total": (0, 0, 1),
        "rkllm_api_model_unloads_total": (0, 1, 0),
    }
    for name, values in expected.items():
        got = tuple(after[(name, m)] for m in ("a:latest", "b:latest", "bad:latest"))
        assert got == values, name
    assert after[("rkllm_api_loaded_models", None)] == 1


async def test_closing_fails_a_swap_waiting_for_a_busy_model(
    specs: dict[str, ModelSpec], abi: str
) -> None:
    """A request waiting to swap its model in when the catalog closes gets ClosedError and
    loads nothing; the busy model's handle is destroyed under its request."""
    baseline = live_handles(abi)
    catalog = catalog_of(specs, abi, max_loaded=1)
    order: list[str] = []
    errors: list[BaseException] = []
    release = anyio.Event()

    with anyio.fail_after(DEADLINE_S):
        async with anyio.create_task_group() as tg:
            async with catalog.lifespan():
                tg.start_soon(hold, catalog, "a", "a", order, release)
                await wait_for(lambda: order == ["a"])
                tg.start_soon(use_until_closed, catalog, "b", "b", order, errors)
                await wait_for(lambda: catalog.counters("b").running == 1)
                await settle()
            await wait_for(lambda: len(errors) == 1)
            assert live_handles(abi) == baseline and not catalog.loading
            release.set()
        assert order == ["a"]
        assert [catalog.counters(n).loads for n in ("a", "b")] == [1, 0]
        assert live_handles(abi) == baseline


async def test_lifespan_exit_unloads_everything(specs: dict[str, ModelSpec], abi: str) -> None:
    """Leaving lifespan() destroys every handle (the fake counts none left), fails waiting
    requests with ClosedError, and refuses later ones."""
    baseline = live_handles(abi)
    catalog = catalog_of(specs, abi, max_loaded=2)
    order: list[str] = []
    errors: list[BaseException] = []
    release = anyio.Event()

    with anyio.fail_after(DEADLINE_S):
        async with anyio.create_task_group() as tg:
            async with catalog.lifespan():
                async with catalog.use("b"):
                    pass
                tg.start_soon(hold, catalog, "a", "held", order, release)
                await wait_for(lambda: order == ["held"])
                tg.start_soon(use_until_closed, catalog, "a", "waiter", order, errors)
                await wait_for(lambda: catalog.counters("a").queued == 1)
                assert live_handles(abi) == baseline + 2
            assert live_handles(abi) == baseline
            assert loaded_names(catalog) == [] and not catalog.ready
            await wait_for(lambda: len(errors) == 1)
            release.set()
        assert order == ["held"]
        with pytest.raises(ClosedError):
            async with catalog.use("a"):
                pass
        assert live_handles(abi) == baseline


# ---- draining -----------------------------------------------------------------------------


async def test_draining_refuses_new_requests_and_serves_the_accepted_ones(
    specs: dict[str, ModelSpec], abi: str
) -> None:
    """Once draining, a new request gets DrainingError at once (a QueueFullError, so every
    face answers it as busy, with a retry hint), for a free model too; the request running
    and the one already waiting are served to the end, and wait_idle then says True."""
    catalog = catalog_of(specs, abi, max_loaded=2)
    order: list[str] = []
    idle: list[bool] = []
    release = anyio.Event()
    with anyio.fail_after(DEADLINE_S):
        async with catalog.lifespan(), anyio.create_task_group() as tg:
            assert await catalog.wait_idle(0.0) and catalog.idle
            tg.start_soon(hold, catalog, "a", "running", order, release)
            await wait_for(lambda: order == ["running"])
            tg.start_soon(hold, catalog, "a", "waiting", order, release)
            await wait_for(lambda: catalog.counters("a").queued == 1)
            catalog.draining = True
            for name in ("a", "b"):
                started = time.monotonic()
                with pytest.raises(DrainingError) as info:
                    async with catalog.use(name):
                        pytest.fail("a draining catalog takes no new request")
                assert time.monotonic() - started < 1.0
                assert isinstance(info.value, QueueFullError)
                assert info.value.model == f"{name}:latest" and info.value.retry_after_s >= 1
                assert "shutting down" in str(info.value)
            assert not catalog.idle

            async def drain() -> None:
                idle.append(await catalog.wait_idle(DEADLINE_S))

            tg.start_soon(drain)
            await settle()
            assert idle == []
            release.set()
            await wait_for(lambda: idle == [True])
        assert order == ["running", "waiting"] and catalog.idle
        assert [catalog.counters(n).rejected for n in ("a", "b")] == [1, 1]
        assert catalog.counters("a").requests == 2 and catalog.counters("b").loads == 0


async def test_wait_idle_times_out_and_sees_a_waiter_leave(
    specs: dict[str, ModelSpec], abi: str
) -> None:
    """wait_idle returns False when its timeout passes with a request running; a waiting
    request cancelled (its client gone) counts as gone, the running one as it ends."""
    catalog = catalog_of(specs, abi)
    order: list[str] = []
    release = anyio.Event()

    with anyio.fail_after(DEADLINE_S):
        async with catalog.lifespan(), anyio.create_task_group() as tg:
            tg.start_soon(hold, catalog, "a", "held", order, release)
            await wait_for(lambda: order == ["held"])
            scope = anyio.CancelScope()
            tg.start_soon(hold_in, scope, catalog, "a", "cancelled", order, release)
            await wait_for(lambda: catalog.counters("a").queued == 1)
            catalog.draining = True
            started = time.monotonic()
            assert not await catalog.wait_idle(0.05)
            assert time.monotonic() - started >= 0.04
            scope.cancel()
            await wait_for(lambda: catalog.counters("a").queued == 0)
            assert not catalog.idle  # "held" still runs
            release.set()
            assert await catalog.wait_idle(DEADLINE_S)
        assert order == ["held"]
        counters = catalog.counters("a")
        assert (counters.queued, counters.running, counters.rejected) == (0, 0, 0)
