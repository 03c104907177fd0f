"""Metrics: the Recorder, per-handle snapshots, process totals, Prometheus text."""

from __future__ import annotations

import ast
import gc
import re
import subprocess
import sys
import threading
import uuid
from collections import Counter
from pathlib import Path

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

import rkllm_sdk as rk
from rkllm_sdk import metrics
from rkllm_sdk.metrics import Recorder

from ..conftest import ModelFactory
from .conftest import LoadLLM

Series = dict[tuple[str, str | None], float]  # (sample name, result label) -> value

PERF = rk.PerfStats(
    prefill_time_ms=40.0,
    prefill_tokens=8,
    generate_time_ms=250.0,
    generate_tokens=5,
    memory_usage_mb=512.0,
)


def unique_labels() -> tuple[str, str]:
    """A (model, abi) label set no other test uses (the process-wide view outlives tests)."""
    return f"unit-{uuid.uuid4().hex}.rkllm", "1.3"


def unique_model(model: ModelFactory, **fields: object) -> Path:
    """A fake model file whose name (the model label) no other test uses."""
    path = model(**fields)
    return path.rename(path.with_name(f"metrics-{uuid.uuid4().hex}.json"))


def exposition() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of render_prometheus(), after checking that none appears twice."""
    seen: Counter[tuple[str, tuple[tuple[str, str], ...]]] = Counter()
    values = {}
    for family in text_string_to_metric_families(metrics.render_prometheus()):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            seen[key] += 1
            values[key] = sample.value
    assert [key for key, n in seen.items() if n > 1] == []
    return values


def series(model: str, abi: str) -> Series:
    """The samples of one label set, keyed by name and result label."""
    found: Series = {}
    for (name, labels), value in exposition().items():
        d = dict(labels)
        if d.get("model") == model and d.get("abi") == abi:
            assert set(d) - {"model", "abi", "result"} == set()
            found[name, d.get("result")] = value
    return found


def expected(
    *,
    ok: int,
    failures: dict[str, int] | None = None,
    run_seconds: float = 0.0,
    ttft: tuple[int, float] = (0, 0.0),
    perf: tuple[int, float, int, float] = (0, 0.0, 0, 0.0),
    memory: float = 0.0,
    queued: int = 0,
    active: int = 0,
) -> Series:
    """The full series set of one label set, as render_prometheus() should give it."""
    failures = failures or {}
    return {
        ("rkllm_calls_total", "ok"): ok,
        **{("rkllm_calls_total", e): n for e, n in failures.items()},
        ("rkllm_run_seconds_count", None): ok + sum(failures.values()),
        ("rkllm_run_seconds_sum", None): run_seconds,
        ("rkllm_ttft_seconds_count", None): ttft[0],
        ("rkllm_ttft_seconds_sum", None): ttft[1],
        ("rkllm_prefill_tokens_total", None): perf[0],
        ("rkllm_prefill_seconds_total", None): perf[1],
        ("rkllm_generated_tokens_total", None): perf[2],
        ("rkllm_generate_seconds_total", None): perf[3],
        ("rkllm_runtime_memory_megabytes", None): memory,
        ("rkllm_queue_depth", None): queued,
        ("rkllm_active_runs", None): active,
    }


# ---- the Recorder alone (no runtime, no event loop) ----------------------------------------


def test_recorder_counts_each_outcome_exactly() -> None:
    """A success with perf, a failed run and a refusal give exact counters, timings and gauges."""
    rec = Recorder(*unique_labels())
    rec.run_started()
    assert rec.snapshot().active_runs == 1
    rec.run_finished(seconds=0.5, ttft_ms=20.0, perf=PERF, error=None)
    rec.run_started()
    rec.run_finished(seconds=0.25, ttft_ms=None, perf=None, error="GenerationError")
    rec.refused(rk.BusyError("busy"))
    snap = rec.snapshot()
    assert (snap.calls_total, snap.calls_ok, snap.calls_failed) == (3, 1, 2)
    assert snap.failures == {"GenerationError": 1, "BusyError": 1}
    assert (snap.run_seconds_total, snap.run_seconds_max) == (0.75, 0.5)
    assert (snap.ttft_count, snap.ttft_seconds_total) == (1, 0.02)
    assert (snap.prefill_tokens, snap.prefill_seconds) == (8, 0.04)
    assert (snap.generate_tokens, snap.generate_seconds) == (5, 0.25)
    assert (snap.prefill_tokens_per_s, snap.generate_tokens_per_s) == (200.0, 20.0)
    assert snap.runtime_memory_mb == 512.0
    assert (snap.queue_depth, snap.active_runs) == (0, 0)
    rec.retire()


def test_queue_and_run_gauges_move_one_step_each() -> None:
    """queue_entered / queue_left and run_started / run_finished move the live values by one."""
    rec = Recorder(*unique_labels())
    rec.queue_entered()
    rec.queue_entered()
    rec.run_started()
    snap = rec.snapshot()
    assert (snap.queue_depth, snap.active_runs, snap.calls_total) == (2, 1, 0)
    rec.queue_left()
    rec.run_finished(seconds=0.0, ttft_ms=None, perf=None, error=None)
    snap = rec.snapshot()
    assert (snap.queue_depth, snap.active_runs, snap.calls_ok) == (1, 0, 1)
    rec.queue_left()
    rec.retire()


def test_refusal_leaves_active_runs_alone() -> None:
    """refused() counts a failure by error type name without touching the active runs."""
    rec = Recorder(*unique_labels())
    rec.run_started()
    rec.refused(rk.ClosedError("closed"))
    snap = rec.snapshot()
    assert (snap.active_runs, snap.calls_failed, snap.failures) == (1, 1, {"ClosedError": 1})
    assert snap.run_seconds_total == 0.0
    rec.run_finished(seconds=0.0, ttft_ms=None, perf=None, error=None)
    rec.retire()


def test_concurrent_threads_leave_the_gauges_at_zero() -> None:
    """N threads entering and leaving the queue and running in parallel leave 0 queued, 0 active."""
    rec = Recorder(*unique_labels())
    threads, rounds = 8, 5000
    start = threading.Barrier(threads)

    def work() -> None:
        start.wait()
        for _ in range(rounds):
            rec.queue_entered()
            rec.queue_left()
            rec.run_started()
            rec.run_finished(seconds=0.0, ttft_ms=None, perf=None, error=None)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    snap = rec.snapshot()
    assert (snap.queue_depth, snap.active_runs) == (0, 0)
    assert snap.calls_ok == threads * rounds
    rec.retire()


def test_a_new_recorder_joins_the_process_view() -> None:
    """Creating a recorder makes its label set appear, all zero, and its runs count in totals."""
    model, abi = unique_labels()
    before = metrics.process_metrics()
    rec = Recorder(model, abi)
    assert rec.labels == (model, abi)
    assert series(model, abi) == expected(ok=0)
    rec.queue_entered()
    rec.run_started()
    after = metrics.process_metrics()
    assert (after.queue_depth, after.active_runs) == (
        before.queue_depth + 1,
        before.active_runs + 1,
    )
    rec.queue_left()
    rec.run_finished(seconds=1.0, ttft_ms=None, perf=None, error=None)
    assert metrics.process_metrics().calls_ok == before.calls_ok + 1
    rec.retire()


def test_retired_recorders_fold_into_one_series_per_label_set() -> None:
    """Three retired recorders and a live one of the same labels are one series, totals summed."""
    model, abi = unique_labels()
    before = metrics.process_metrics()
    for _ in range(3):
        rec = Recorder(model, abi)
        rec.run_started()
        rec.run_finished(seconds=0.5, ttft_ms=100.0, perf=PERF, error=None)
        rec.retire()
    live = Recorder(model, abi)
    live.queue_entered()
    live.refused(rk.BusyError("busy"))
    assert series(model, abi) == expected(
        ok=3,
        failures={"BusyError": 1},
        run_seconds=1.5,
        ttft=(3, 0.30000000000000004),
        perf=(24, 0.12, 15, 0.75),
        memory=512.0,
        queued=1,
    )
    after = metrics.process_metrics()
    assert (after.calls_ok, after.calls_failed) == (before.calls_ok + 3, before.calls_failed + 1)
    assert after.generate_tokens == before.generate_tokens + 15
    assert after.queue_depth == before.queue_depth + 1
    live.queue_left()
    live.retire()
    assert series(model, abi)["rkllm_queue_depth", None] == 0


def test_retire_is_idempotent() -> None:
    """Retiring twice (and then being collected) counts the recorder's calls once."""
    model, abi = unique_labels()
    rec = Recorder(model, abi)
    rec.refused(rk.BusyError("busy"))
    rec.retire()
    rec.retire()
    del rec
    gc.collect()
    assert series(model, abi)["rkllm_calls_total", "BusyError"] == 1


def test_a_dropped_recorder_is_retired_by_the_garbage_collector() -> None:
    """A recorder dropped without retire() leaves the live view; its counts stay in the totals."""
    model, abi = unique_labels()
    rec = Recorder(model, abi)
    rec.run_started()
    rec.run_finished(seconds=0.0, ttft_ms=None, perf=None, error=None)
    del rec
    gc.collect()
    assert series(model, abi)["rkllm_calls_total", "ok"] == 1
    assert [s for s in metrics._live if s.labels == (model, abi)] == []


def test_outcomes_recorded_after_retire_still_count_once() -> None:
    """A caller refused after its handle retired (closed while queued) is in the totals once."""
    model, abi = unique_labels()
    rec = Recorder(model, abi)
    rec.queue_entered()
    rec.retire()
    rec.queue_left()
    rec.refused(rk.ClosedError("closed"))
    assert rec.snapshot().failures == {"ClosedError": 1}
    assert series(model, abi) == expected(ok=0, failures={"ClosedError": 1})


def test_label_values_are_escaped_by_the_exposition() -> None:
    """A model name with quotes, a backslash and a newline comes back intact from the parser."""
    model, abi = 'we"ird\\name\n' + uuid.uuid4().hex, "1.2"
    rec = Recorder(model, abi)
    rec.refused(rk.BusyError("busy"))
    assert series(model, abi)["rkllm_calls_total", "BusyError"] == 1
    rec.retire()


def test_exposition_names_and_types() -> None:
    """The exposition declares exactly these metric names and types, each once."""
    text = metrics.render_prometheus()
    types = re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M)
    assert types == [
        ("rkllm_calls_total", "counter"),
        ("rkllm_run_seconds", "summary"),
        ("rkllm_ttft_seconds", "summary"),
        ("rkllm_prefill_tokens_total", "counter"),
        ("rkllm_prefill_seconds_total", "counter"),
        ("rkllm_generated_tokens_total", "counter"),
        ("rkllm_generate_seconds_total", "counter"),
        ("rkllm_runtime_memory_megabytes", "gauge"),
        ("rkllm_queue_depth", "gauge"),
        ("rkllm_active_runs", "gauge"),
        ("rkllm_process_resident_megabytes", "gauge"),
    ]
    assert text.endswith("\n")
    (rss,) = [v for (name, _), v in exposition().items() if name.startswith("rkllm_process")]
    assert rss > 1


def test_metrics_imports_no_client_module() -> None:
    """metrics imports nothing from llm, stream, chat or sync, not even for type checking."""
    tree = ast.parse(Path(metrics.__file__).read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
            imported |= {f"{node.module or ''}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            imported |= {a.name for a in node.names}
    clients = {"llm", "stream", "chat", "sync"}
    assert {m for m in imported if clients & set(m.split("."))} == set()


def test_importing_the_package_does_not_import_prometheus_client() -> None:
    """prometheus_client is imported by render_prometheus(), not by import rkllm_sdk."""
    code = "import sys, rkllm_sdk; assert 'prometheus_client' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- through AsyncLLM on the fake runtime ---------------------------------------------------


@pytest.mark.anyio
async def test_runs_are_counted_by_outcome(load: LoadLLM, model: ModelFactory) -> None:
    """Successful runs, runtime failures, refusals and early closes are counted by type."""
    path = unique_model(
        model, decode_ms=1, natural_end=False, script=[{"match": "ok", "reply": "fine"}]
    )
    llm = await load(path=path)
    assert llm.metrics().calls_total == 0
    gen = await llm.generate("ok")
    async with llm.stream("long") as s:
        async for _ in s:
            break
    with pytest.raises(rk.InvalidParamsError):
        await llm.generate(rk.Prompt(text="x"), max_new_tokens=0)
    snap = llm.metrics()
    assert (snap.calls_total, snap.calls_ok, snap.calls_failed) == (3, 1, 2)
    assert snap.failures == {"AbortedError": 1, "InvalidParamsError": 1}
    assert gen.perf is not None  # only the finished run reports the runtime's numbers
    assert (snap.generate_tokens, snap.prefill_tokens) == (
        gen.perf.generate_tokens,
        gen.perf.prefill_tokens,
    )
    assert snap.generate_seconds == gen.perf.generate_time_ms / 1e3
    assert snap.runtime_memory_mb == gen.perf.memory_usage_mb
    assert snap.ttft_count == 2
    assert 0 < snap.ttft_seconds_mean <= snap.run_seconds_max
    assert snap.generate_tokens_per_s > 0
    assert snap.process_rss_mb > 1
    assert (snap.queue_depth, snap.active_runs) == (0, 0)
    rows = dict(re.findall(r"<th[^>]*>([^<]*)</th><td>([^<]*)</td>", snap._repr_html_()))
    assert rows["calls"] == "1 ok, 2 failed"
    assert rows["queued / active"] == "0 / 0"
    assert (rows["failed: AbortedError"], rows["failed: InvalidParamsError"]) == ("1", "1")


@pytest.mark.anyio
async def test_queue_depth_and_active_runs_while_busy(load: LoadLLM) -> None:
    """While a run holds the handle, a second caller is queued and one run is active."""
    llm = await load(faults="hang_after=1")
    async with llm.stream("first") as s:
        async for _ in s:
            break
        seen: list[tuple[int, int]] = []
        async with anyio.create_task_group() as tg:

            async def second() -> None:
                with pytest.raises(rk.ClosedError):
                    await llm.generate("second")

            tg.start_soon(second)
            await anyio.sleep(0.05)
            snap = llm.metrics()
            seen.append((snap.queue_depth, snap.active_runs))
            await llm.aclose()
    assert seen == [(1, 1)]
    assert llm.metrics().failures["ClosedError"] == 1


@pytest.mark.anyio
async def test_failed_runs_in_the_prometheus_text(
    load: LoadLLM, model: ModelFactory, abi: str
) -> None:
    """A runtime error is one GenerationError series with value 1, next to ok 0."""
    path = unique_model(model, faults="error_after=2", natural_end=False)
    before = metrics.process_metrics()
    llm = await load(path=path)
    with pytest.raises(rk.GenerationError):
        await llm.generate("x")
    assert llm.metrics().failures == {"GenerationError": 1}
    got = series(path.name, abi)
    assert (got["rkllm_calls_total", "ok"], got["rkllm_calls_total", "GenerationError"]) == (0, 1)
    assert got["rkllm_run_seconds_count", None] == 1
    assert (got["rkllm_queue_depth", None], got["rkllm_active_runs", None]) == (0, 0)
    assert sorted(k for k in got if k[0] == "rkllm_calls_total") == [
        ("rkllm_calls_total", "GenerationError"),
        ("rkllm_calls_total", "ok"),
    ]
    total = metrics.process_metrics()
    assert total.calls_failed == before.calls_failed + 1
    assert total.failures.get("GenerationError", 0) == before.failures.get("GenerationError", 0) + 1


@pytest.mark.anyio
async def test_load_close_cycles_give_one_series_each(
    load: LoadLLM, model: ModelFactory, abi: str
) -> None:
    """Three load / run / close cycles of one model: every series once, calls_total ok exactly 3."""
    path = unique_model(model, script=[{"match": "hi", "reply": "hello there"}])
    before = metrics.process_metrics()
    tokens = 0
    for _ in range(3):
        llm = await load(path=path)
        gen = await llm.generate("hi")
        assert gen.perf is not None
        tokens += gen.perf.generate_tokens
        await llm.aclose()
    del llm
    gc.collect()  # closed handles' recorders retire at the latest when collected
    got = series(path.name, abi)
    assert got["rkllm_calls_total", "ok"] == 3
    assert [k for k in got if k[0] == "rkllm_calls_total"] == [("rkllm_calls_total", "ok")]
    assert got["rkllm_run_seconds_count", None] == 3
    assert got["rkllm_ttft_seconds_count", None] == 3
    assert got["rkllm_generated_tokens_total", None] == tokens
    assert (got["rkllm_queue_depth", None], got["rkllm_active_runs", None]) == (0, 0)
    total = metrics.process_metrics()
    assert (total.calls_ok, total.calls_failed) == (before.calls_ok + 3, before.calls_failed)
    assert total.generate_tokens == before.generate_tokens + tokens
