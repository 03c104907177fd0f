"""Counters and timings per handle and for the process, as snapshots or Prometheus text.

Every :class:`~rkllm_sdk.AsyncLLM` records each run: outcome (ok, or failed by error type),
duration, time to first token, the runtime's prefill / decode token counts and times, its
peak memory; and live values: callers queued for the handle, runs in progress.

>>> llm.metrics().calls_ok                       # doctest: +SKIP
>>> print(render_prometheus())                   # doctest: +SKIP
"""

from __future__ import annotations

import html
import threading
import weakref
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import attrs

from .models import PerfStats

if TYPE_CHECKING:
    from .llm import AsyncLLM

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


class Recorder:
    """The mutable counters of one handle (internal; read them with ``llm.metrics()``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.ok = 0
        self.failures: Counter[str] = Counter()
        self.run_seconds = 0.0
        self.run_seconds_max = 0.0
        self.ttft_seconds = 0.0
        self.ttft_count = 0
        self.prefill_tokens = 0
        self.prefill_seconds = 0.0
        self.generate_tokens = 0
        self.generate_seconds = 0.0
        self.memory_mb = 0.0
        self.queued = 0
        self.active = 0

    def finished(
        self, *, seconds: float, ttft_ms: float | None, perf: PerfStats | None, error: str | None
    ) -> None:
        """Record a finished call (``error`` is the error type's name when it failed)."""
        with self._lock:
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
                self.memory_mb = perf.memory_usage_mb

    def refused(self, error: BaseException) -> None:
        """Record a call refused before any run started (it counts as failed)."""
        self.finished(seconds=0.0, ttft_ms=None, perf=None, error=type(error).__name__)

    def snapshot(self) -> MetricsSnapshot:
        with self._lock:
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


# Every handle's recorder, including closed handles' (their counts stay in the totals).
_handles: weakref.WeakKeyDictionary[AsyncLLM, tuple[str, str, Recorder]] = (
    weakref.WeakKeyDictionary()
)
_retired: list[tuple[str, str, Recorder]] = []
_lock = threading.Lock()


def register(llm: AsyncLLM, recorder: Recorder) -> None:
    """Internal: a new handle's recorder joins the process-wide view."""
    with _lock:
        _handles[llm] = (Path(llm.model_path).name, llm.runtime.abi, recorder)
        weakref.finalize(llm, _retire, (Path(llm.model_path).name, llm.runtime.abi, recorder))


def _retire(entry: tuple[str, str, Recorder]) -> None:
    with _lock:
        _retired.append(entry)


def _entries() -> list[tuple[str, str, Recorder]]:
    with _lock:
        return [*_handles.values(), *_retired]


def process_metrics() -> MetricsSnapshot:
    """Every handle of the process, summed (closed handles included)."""
    total = Recorder()
    for _, _, rec in _entries():
        snap = rec.snapshot()
        total.ok += snap.calls_ok
        total.failures.update(snap.failures)
        total.run_seconds += snap.run_seconds_total
        total.run_seconds_max = max(total.run_seconds_max, snap.run_seconds_max)
        total.ttft_seconds += snap.ttft_seconds_total
        total.ttft_count += snap.ttft_count
        total.prefill_tokens += snap.prefill_tokens
        total.prefill_seconds += snap.prefill_seconds
        total.generate_tokens += snap.generate_tokens
        total.generate_seconds += snap.generate_seconds
        total.memory_mb = max(total.memory_mb, snap.runtime_memory_mb)
        total.queued += snap.queue_depth
        total.active += snap.active_runs
    return total.snapshot()


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_prometheus() -> str:
    """Every handle's metrics in the Prometheus text exposition format (version 0.0.4)."""
    series: dict[str, tuple[str, str, list[str]]] = {}

    def add(name: str, kind: str, help_text: str, labels: str, value: float) -> None:
        series.setdefault(name, (kind, help_text, []))[2].append(f"{name}{{{labels}}} {value:g}")

    for model, abi, rec in _entries():
        s = rec.snapshot()
        base = f'model="{_label(model)}",abi="{abi}"'
        add(
            "rkllm_calls_total",
            "counter",
            "Finished calls by result.",
            base + ',result="ok"',
            s.calls_ok,
        )
        for error, count in sorted(s.failures.items()):
            add(
                "rkllm_calls_total",
                "counter",
                "Finished calls by result.",
                base + f',result="{_label(error)}"',
                count,
            )
        add("rkllm_run_seconds_sum", "counter", "Wall time of runs.", base, s.run_seconds_total)
        add("rkllm_run_seconds_count", "counter", "Runs timed.", base, s.calls_total)
        add(
            "rkllm_ttft_seconds_sum",
            "counter",
            "Time to first token, summed.",
            base,
            s.ttft_seconds_total,
        )
        add("rkllm_ttft_seconds_count", "counter", "Runs with a first token.", base, s.ttft_count)
        add(
            "rkllm_prefill_tokens_total",
            "counter",
            "Prefill tokens computed.",
            base,
            s.prefill_tokens,
        )
        add("rkllm_generated_tokens_total", "counter", "Tokens generated.", base, s.generate_tokens)
        add(
            "rkllm_generate_seconds_total",
            "counter",
            "Runtime decode time.",
            base,
            s.generate_seconds,
        )
        add(
            "rkllm_runtime_memory_megabytes",
            "gauge",
            "Runtime peak memory (VmHWM).",
            base,
            s.runtime_memory_mb,
        )
        add("rkllm_queue_depth", "gauge", "Callers waiting for the handle.", base, s.queue_depth)
        add("rkllm_active_runs", "gauge", "Runs in progress.", base, s.active_runs)
    lines = []
    for name, (kind, help_text, samples) in series.items():
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *samples]
    lines += [
        "# HELP rkllm_process_resident_megabytes Resident memory of this process.",
        "# TYPE rkllm_process_resident_megabytes gauge",
        f"rkllm_process_resident_megabytes {_rss_mb():g}",
    ]
    return "\n".join(lines) + "\n"
