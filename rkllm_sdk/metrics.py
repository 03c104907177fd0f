"""Counters and timings per handle and for the process, as snapshots or Prometheus text.

Every :class:`~rkllm_sdk.AsyncLLM` records each run through its :class:`Recorder`: outcome
(ok, or failed by error type), duration, time to first token, the runtime's prefill / decode
token counts and times, its peak memory; and live values: callers queued for the handle, runs
in progress.

A recorder joins the process-wide view when it is created. When its handle closes
(:meth:`Recorder.retire`, or the recorder is garbage-collected) its counts fold into one
aggregate per ``(model, abi)`` label set, so the process totals keep them and
:func:`render_prometheus` prints one series per label set however many handles came and went.

This module imports nothing from the client modules (``llm``, ``stream``, ``chat``, ``sync``):
they depend on it, never the other way round.

>>> llm.metrics().calls_ok                       # doctest: +SKIP
>>> print(render_prometheus())                   # doctest: +SKIP
"""

from __future__ import annotations

import html
import threading
import weakref
from collections import Counter, deque
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import attrs

from .models import PerfStats

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

__all__ = ["MetricsSnapshot", "Recorder", "process_metrics", "render_prometheus"]


@attrs.frozen(kw_only=True)
class MetricsSnapshot:
    """Counters and timings at one moment (one handle, or the whole process).

    Attributes:
        calls_total / calls_ok / calls_failed: finished calls (runs), by outcome.
        failures: failed calls by error type name.
        run_seconds_total / run_seconds_max: SDK-measured wall time of runs.
        ttft_seconds_total / ttft_count: time to first token, summed (mean = total / count).
        prefill_tokens / prefill_seconds, generate_tokens / generate_seconds: the runtime's
            own counts and times, summed over runs.
        runtime_memory_mb: the runtime's last reported peak memory (VmHWM).
        process_rss_mb: the process's resident memory now.
        queue_depth: callers waiting for a handle; active_runs: runs in progress.
    """

    calls_total: int
    calls_ok: int
    calls_failed: int
    failures: dict[str, int]
    run_seconds_total: float
    run_seconds_max: float
    ttft_seconds_total: float
    ttft_count: int
    prefill_tokens: int
    prefill_seconds: float
    generate_tokens: int
    generate_seconds: float
    runtime_memory_mb: float
    process_rss_mb: float
    queue_depth: int
    active_runs: int

    @property
    def prefill_tokens_per_s(self) -> float:
        """Prefill tokens per second of runtime prefill time."""
        return self.prefill_tokens / self.prefill_seconds if self.prefill_seconds > 0 else 0.0

    @property
    def generate_tokens_per_s(self) -> float:
        """Generated tokens per second of runtime decode time."""
        return self.generate_tokens / self.generate_seconds if self.generate_seconds > 0 else 0.0

    @property
    def ttft_seconds_mean(self) -> float:
        """Mean time to first token."""
        return self.ttft_seconds_total / self.ttft_count if self.ttft_count else 0.0

    def _repr_html_(self) -> str:
        rows = [
            ("calls", f"{self.calls_ok} ok, {self.calls_failed} failed"),
            ("time to first token (mean)", f"{self.ttft_seconds_mean * 1e3:.1f} ms"),
            ("prefill", f"{self.prefill_tokens_per_s:.1f} tok/s"),
            ("decode", f"{self.generate_tokens_per_s:.1f} tok/s"),
            ("runtime memory", f"{self.runtime_memory_mb:.1f} MB"),
            ("process RSS", f"{self.process_rss_mb:.1f} MB"),
            ("queued / active", f"{self.queue_depth} / {self.active_runs}"),
        ]
        rows += [(f"failed: {html.escape(k)}", str(v)) for k, v in sorted(self.failures.items())]
        body = "".join(
            f"<tr><th style='text-align:left'>{k}</th><td>{v}</td></tr>" for k, v in rows
        )
        return f"<table>{body}</table>"


def _rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


@attrs.define
class _Counts:
    """The plain numbers behind a snapshot (no lock: whoever holds one guards it)."""

    ok: int = 0
    failures: Counter[str] = attrs.field(factory=Counter)
    run_seconds: float = 0.0
    run_seconds_max: float = 0.0
    ttft_seconds: float = 0.0
    ttft_count: int = 0
    prefill_tokens: int = 0
    prefill_seconds: float = 0.0
    generate_tokens: int = 0
    generate_seconds: float = 0.0
    memory_mb: float = 0.0
    queued: int = 0
    active: int = 0

    def record(
        self,
        *,
        seconds: float,
        ttft_ms: float | None,
        perf: PerfStats | None,
        error: str | None,
        peak_memory: bool = False,
    ) -> None:
        """Add one call's outcome; memory is the last reported, or the peak for aggregates."""
        if error is None:
            self.ok += 1
        else:
            self.failures[error] += 1
        self.run_seconds += seconds
        self.run_seconds_max = max(self.run_seconds_max, seconds)
        if ttft_ms is not None:
            self.ttft_seconds += ttft_ms / 1e3
            self.ttft_count += 1
        if perf is not None:
            self.prefill_tokens += perf.prefill_tokens
            self.prefill_seconds += perf.prefill_time_ms / 1e3
            self.generate_tokens += perf.generate_tokens
            self.generate_seconds += perf.generate_time_ms / 1e3
            mb = perf.memory_usage_mb
            self.memory_mb = max(self.memory_mb, mb) if peak_memory else mb

    def fold(self, other: _Counts, *, gauges: bool) -> None:
        """Add another's counters (and its queued / active gauges when ``gauges``)."""
        self.ok += other.ok
        self.failures.update(other.failures)
        self.run_seconds += other.run_seconds
        self.run_seconds_max = max(self.run_seconds_max, other.run_seconds_max)
        self.ttft_seconds += other.ttft_seconds
        self.ttft_count += other.ttft_count
        self.prefill_tokens += other.prefill_tokens
        self.prefill_seconds += other.prefill_seconds
        self.generate_tokens += other.generate_tokens
        self.generate_seconds += other.generate_seconds
        self.memory_mb = max(self.memory_mb, other.memory_mb)
        if gauges:
            self.queued += other.queued
            self.active += other.active

    def snapshot(self) -> MetricsSnapshot:
        failed = sum(self.failures.values())
        return MetricsSnapshot(
            calls_total=self.ok + failed,
            calls_ok=self.ok,
            calls_failed=failed,
            failures=dict(self.failures),
            run_seconds_total=self.run_seconds,
            run_seconds_max=self.run_seconds_max,
            ttft_seconds_total=self.ttft_seconds,
            ttft_count=self.ttft_count,
            prefill_tokens=self.prefill_tokens,
            prefill_seconds=self.prefill_seconds,
            generate_tokens=self.generate_tokens,
            generate_seconds=self.generate_seconds,
            runtime_memory_mb=self.memory_mb,
            process_rss_mb=_rss_mb(),
            queue_depth=self.queued,
            active_runs=self.active,
        )


_Labels = tuple[str, str]  # (model file name, ABI)


@attrs.define(eq=False)  # hashed by identity: it lives in a set
class _State:
    """One recorder's counts with their lock; also the form of a retired aggregate."""

    labels: _Labels
    lock: threading.Lock = attrs.field(factory=threading.Lock)
    counts: _Counts = attrs.field(factory=_Counts)
    # Set once the counts are folded into the label set's retired aggregate: outcomes recorded
    # after that (a queued caller refused by the close) go to the aggregate too.
    retired_into: _State | None = None

    def copy(self) -> _Counts:
        with self.lock:
            return attrs.evolve(self.counts, failures=Counter(self.counts.failures))


# The process-wide view. Lock order: _lock, then a recorder's lock, then an aggregate's lock;
# a recorder never takes _lock, so recording is never held up by readers of other handles.
_lock = threading.Lock()
_live: set[_State] = set()
_retired: dict[_Labels, _State] = {}
# Retirements waiting to be folded. weakref.finalize may run in any thread at any allocation,
# even while this thread holds _lock, so the finalizer only appends here (no lock); whoever
# takes _lock next folds them.
_pending: deque[_State] = deque()


def _drain() -> None:
    """Fold pending retirements into their label set's aggregate (caller holds ``_lock``)."""
    while _pending:
        state = _pending.popleft()
        if state not in _live:  # already folded
            continue
        _live.discard(state)
        aggregate = _retired.setdefault(state.labels, _State(state.labels))
        with state.lock, aggregate.lock:
            aggregate.counts.fold(state.counts, gauges=False)
            state.retired_into = aggregate


class Recorder:
    """The counters of one handle; the client records into it, ``llm.metrics()`` reads it.

    ``Recorder(model, abi)`` joins the process-wide view under those labels (``model`` is the
    model file's name). Every method is thread-safe (one lock per recorder).

    >>> rec = Recorder("demo.rkllm", "1.3")
    >>> rec.queue_entered(); rec.queue_left(); rec.run_started()
    >>> rec.run_finished(seconds=0.5, ttft_ms=20.0, perf=None, error=None)
    >>> rec.snapshot().calls_ok, rec.snapshot().active_runs
    (1, 0)
    >>> rec.retire()
    """

    def __init__(self, model: str, abi: str) -> None:
        self._state = _State((model, abi))
        # Dropped without retire(): retire anyway (the callback must not hold the recorder).
        self._finalizer = weakref.finalize(self, _pending.append, self._state)
        self._finalizer.atexit = False
        with _lock:
            _drain()
            _live.add(self._state)

    @property
    def labels(self) -> tuple[str, str]:
        """``(model, abi)``: the label set this recorder reports under."""
        return self._state.labels

    # ---- live values -----------------------------------------------------------------------

    def queue_entered(self) -> None:
        """A caller started waiting for the handle."""
        with self._state.lock:
            self._state.counts.queued += 1

    def queue_left(self) -> None:
        """A caller stopped waiting (it got the handle, or gave up)."""
        with self._state.lock:
            self._state.counts.queued -= 1

    def run_started(self) -> None:
        """A run began on the handle."""
        with self._state.lock:
            self._state.counts.active += 1

    # ---- outcomes --------------------------------------------------------------------------

    def run_finished(
        self, *, seconds: float, ttft_ms: float | None, perf: PerfStats | None, error: str | None
    ) -> None:
        """A run ended: one fewer active, and its outcome recorded.

        Args:
            seconds: wall time of the run.
            ttft_ms: time to first token, None when no token came.
            perf: the runtime's own statistics, when it gave them.
            error: the error type's name when the run failed, None when it succeeded.
        """
        self._record(seconds=seconds, ttft_ms=ttft_ms, perf=perf, error=error, started=True)

    def refused(self, error: BaseException) -> None:
        """A call refused before any run started (it counts as failed; no run was active)."""
        self._record(
            seconds=0.0, ttft_ms=None, perf=None, error=type(error).__name__, started=False
        )

    def _record(
        self,
        *,
        seconds: float,
        ttft_ms: float | None,
        perf: PerfStats | None,
        error: str | None,
        started: bool,
    ) -> None:
        state = self._state
        with state.lock:
            if started:
                state.counts.active -= 1
            state.counts.record(seconds=seconds, ttft_ms=ttft_ms, perf=perf, error=error)
            aggregate = state.retired_into
        if aggregate is not None:  # retired already: keep the process totals whole
            with aggregate.lock:
                aggregate.counts.record(
                    seconds=seconds, ttft_ms=ttft_ms, perf=perf, error=error, peak_memory=True
                )

    # ---- reading and lifetime --------------------------------------------------------------

    def snapshot(self) -> MetricsSnapshot:
        """This recorder's counters and live values now."""
        with self._state.lock:
            return self._state.counts.snapshot()

    def retire(self) -> None:
        """The handle closed: fold the counts into the label set's retired aggregate.

        The process totals keep them, as one series per label set. Idempotent; also done
        when the recorder is garbage-collected. This recorder's own snapshot stays readable.
        """
        self._finalizer()
        with _lock:
            _drain()


# ---- the process-wide view -----------------------------------------------------------------


def _groups() -> dict[_Labels, _Counts]:
    """Per label set: its live handles' counts and gauges plus its retired aggregate."""
    groups: dict[_Labels, _Counts] = {}
    with _lock:
        _drain()
        for state in _live:
            groups.setdefault(state.labels, _Counts()).fold(state.copy(), gauges=True)
        for labels, aggregate in _retired.items():
            groups.setdefault(labels, _Counts()).fold(aggregate.copy(), gauges=False)
    return groups


def process_metrics() -> MetricsSnapshot:
    """Every handle of the process, summed (closed handles included)."""
    total = _Counts()
    for counts in _groups().values():
        total.fold(counts, gauges=True)
    return total.snapshot()


class _Collector:
    """A prometheus-client collector over every label set (see :func:`render_prometheus`)."""

    def collect(self) -> Iterator[Metric]:
        # Imported here so that importing rkllm_sdk does not import prometheus_client.
        from prometheus_client.core import (  # noqa: PLC0415
            CounterMetricFamily,
            GaugeMetricFamily,
            SummaryMetricFamily,
        )

        labels = ["model", "abi"]
        calls = CounterMetricFamily(
            "rkllm_calls", "Finished calls by result.", labels=[*labels, "result"]
        )
        run = SummaryMetricFamily("rkllm_run_seconds", "Wall time of runs.", labels=labels)
        ttft = SummaryMetricFamily(
            "rkllm_ttft_seconds", "Time to first token of runs with a token.", labels=labels
        )
        # One value per label set: (family, name, help, the _Counts field it reads).
        simple = [
            (family(name, help_text, labels=labels), field)
            for family, name, help_text, field in (
                (CounterMetricFamily, "rkllm_prefill_tokens", "Prefill tokens computed.",
                 "prefill_tokens"),
                (CounterMetricFamily, "rkllm_prefill_seconds", "Runtime prefill time.",
                 "prefill_seconds"),
                (CounterMetricFamily, "rkllm_generated_tokens", "Tokens generated.",
                 "generate_tokens"),
                (CounterMetricFamily, "rkllm_generate_seconds", "Runtime decode time.",
                 "generate_seconds"),
                (GaugeMetricFamily, "rkllm_runtime_memory_megabytes",
                 "Runtime peak memory (VmHWM).", "memory_mb"),
                (GaugeMetricFamily, "rkllm_queue_depth", "Callers waiting for a handle.",
                 "queued"),
                (GaugeMetricFamily, "rkllm_active_runs", "Runs in progress.", "active"),
            )
        ]  # fmt: skip
        for (model, abi), c in sorted(_groups().items()):
            values = [model, abi]
            calls.add_metric([*values, "ok"], c.ok)
            for error, count in sorted(c.failures.items()):
                calls.add_metric([*values, error], count)
            run.add_metric(values, c.ok + sum(c.failures.values()), c.run_seconds)
            ttft.add_metric(values, c.ttft_count, c.ttft_seconds)
            for metric, field in simple:
                metric.add_metric(values, getattr(c, field))
        yield from (calls, run, ttft)
        yield from (metric for metric, _ in simple)
        yield GaugeMetricFamily(
            "rkllm_process_resident_megabytes", "Resident memory of this process.", _rss_mb()
        )


def render_prometheus() -> str:
    """Every handle's metrics in the Prometheus text exposition format (version 0.0.4).

    One series per ``(model, abi)`` label set, live and closed handles of that set summed;
    written by prometheus-client from a private registry (the global one is left alone).

    | metric                                  | type    | labels                       |
    |-----------------------------------------|---------|------------------------------|
    | `rkllm_calls_total`                     | counter | model, abi, result (ok/error)|
    | `rkllm_run_seconds_sum` / `_count`      | summary | model, abi                   |
    | `rkllm_ttft_seconds_sum` / `_count`     | summary | model, abi                   |
    | `rkllm_prefill_tokens_total`            | counter | model, abi                   |
    | `rkllm_prefill_seconds_total`           | counter | model, abi                   |
    | `rkllm_generated_tokens_total`          | counter | model, abi                   |
    | `rkllm_generate_seconds_total`          | counter | model, abi                   |
    | `rkllm_runtime_memory_megabytes`        | gauge   | model, abi                   |
    | `rkllm_queue_depth`                     | gauge   | model, abi                   |
    | `rkllm_active_runs`                     | gauge   | model, abi                   |
    | `rkllm_process_resident_megabytes`      | gauge   |                              |
    """
    # Imported here so that importing rkllm_sdk does not import prometheus_client.
    from prometheus_client import CollectorRegistry, generate_latest  # noqa: PLC0415

    registry = CollectorRegistry()
    registry.register(_Collector())
    return generate_latest(registry).decode("utf-8")
