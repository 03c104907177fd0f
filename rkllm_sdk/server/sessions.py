"""Who owns which handle, what is running, the limits, and the directories paths may name.

One :class:`Sessions` per server process holds every handle the proxy loaded. A handle
belongs to the connection that created it: another connection naming it gets
``-32602 unknown handle`` (it cannot tell a foreign handle from a made-up one). When a
connection leaves, :meth:`Sessions.close_connection` aborts its runs on the NPU and
destroys its handles; ``stats`` then counts nothing for it.

Limits (:class:`ServerConfig`) answer at once, never hang: handles per connection,
runs queued or running per handle (:class:`~rkllm_sdk.errors.BusyError`), connections.
Model and LoRA paths resolve inside ``models_dir``, prompt-cache paths inside ``cache_dir``;
``..``, symlinks leading out and absolute paths elsewhere are refused without touching the
file.
"""

from __future__ import annotations

import math
import secrets
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import attrs

from ..errors import BusyError
from ..llm import AsyncLLM
from ..metrics import _rss_mb
from ..results import PerfStats
from .polling import Runs
from .wire import ParamsError

__all__ = ["Entry", "MethodStats", "Metrics", "ServerConfig", "Sessions", "confine"]

MiB = 1024 * 1024


@attrs.frozen(kw_only=True)
class ServerConfig:
    """What ``rkllm serve`` was told: runtime, directories and limits.

    Attributes:
        runtime: ``runtime=`` for every load (a library path, ``"fake"``, or None).
        abi: ``abi=`` for every load.
        models_dir: model files and LoRA adapters must lie inside it.
        cache_dir: prompt caches must lie inside it (default: ``models_dir``).
        max_message_bytes: the largest message (one line) a client may send.
        max_handles_per_connection: handles one connection may hold.
        max_queued_runs: runs waiting or running per handle; one more gets BusyError.
        max_connections: clients at once; one more is told so and closed.
        max_inflight: requests one connection may have in progress (reading pauses).
        outbox_size: messages a connection queues for its client; a run's results merge into
            its queued result meanwhile, so the queue stays bounded whatever the client reads.
        drain_timeout_s: how long SIGTERM waits for runs to finish.
        run_expiry_s: an async run whose results are not fetched this long is aborted
            and forgotten.
        run_buffer: chunks an async run buffers for its client before it pauses.
        max_async_runs: async runs one connection (or HTTP session) may hold.
    """

    runtime: str | None = None
    abi: str | None = None
    models_dir: Path = attrs.field(factory=Path.cwd, converter=Path)
    cache_dir: Path | None = attrs.field(default=None, converter=attrs.converters.optional(Path))
    max_message_bytes: int = 16 * MiB
    max_handles_per_connection: int = 8
    max_queued_runs: int = 4
    max_connections: int = 64
    max_inflight: int = 64
    outbox_size: int = 256
    drain_timeout_s: float = 30.0
    run_expiry_s: float = 300.0
    run_buffer: int = 256
    max_async_runs: int = 16

    @property
    def prompt_cache_dir(self) -> Path:
        """Where prompt caches live."""
        return self.cache_dir if self.cache_dir is not None else self.models_dir


def confine(path: str, base: Path, field: str) -> str:
    """``path`` (relative to ``base``, or absolute inside it) resolved, symlinks followed.

    Raises:
        ParamsError: a ``..`` component, an empty path, or a path resolving outside ``base``.
            The message names the field, never the file's contents.
    """
    if not path or "\x00" in path:
        raise ParamsError(field, "an empty path or one with a NUL byte")
    if ".." in Path(path).parts:
        raise ParamsError(field, "'..' is not allowed in paths")
    root = base.resolve()
    candidate = Path(path)
    full = (candidate if candidate.is_absolute() else root / candidate).resolve()
    if not full.is_relative_to(root):
        raise ParamsError(field, f"the path must stay inside the configured directory {root}")
    return str(full)


@attrs.define(eq=False)
class Entry:
    """One live handle: the client, its owner, and what it is doing."""

    id: str
    llm: AsyncLLM
    owner: object
    queued: int = 0
    array_bytes: int = 0  # arrays the runtime keeps reading (cross attention)
    async_turn: anyio.Event | None = None  # set once the last async run took the handle


#: Latencies kept per method for the percentiles (the most recent ones).
LATENCY_WINDOW = 1024


def _quantile(ordered: list[float], q: float) -> float:
    """Nearest-rank quantile of a sorted list (0.0 when empty)."""
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


@attrs.define(eq=False)
class MethodStats:
    """One method's requests: outcomes and latencies."""

    calls: int = 0
    ok: int = 0
    failures: Counter[int] = attrs.field(factory=Counter)  # by JSON-RPC error code
    seconds_total: float = 0.0
    window: deque[float] = attrs.field(factory=lambda: deque(maxlen=LATENCY_WINDOW))

    def latency(self) -> dict[str, float]:
        """Mean, median and 99th percentile of the latencies in the window, in seconds."""
        ordered = sorted(self.window)
        mean = sum(ordered) / len(ordered) if ordered else 0.0
        return {"mean": mean, "p50": _quantile(ordered, 0.5), "p99": _quantile(ordered, 0.99)}


#: The method label of requests that named no registered method, and of messages that
#: were not requests at all (parse errors, invalid requests): bounded label sets.
UNKNOWN_METHOD, INVALID_MESSAGE = "_unknown", "_invalid"


@attrs.define(eq=False)
class Metrics:
    """What the dispatcher and the runs recorded since the server started."""

    methods: dict[str, MethodStats] = attrs.field(factory=dict)
    runs_finished: int = 0
    prefill_tokens: int = 0
    prefill_seconds: float = 0.0
    generate_tokens: int = 0
    generate_seconds: float = 0.0
    memory_usage_mb: float = 0.0  # the runtime's report of the last run

    def record(self, method: str, error_code: int | None, seconds: float) -> None:
        """Count one request of ``method`` (ok when ``error_code`` is None)."""
        stats = self.methods.get(method)
        if stats is None:
            stats = self.methods[method] = MethodStats()
        stats.calls += 1
        if error_code is None:
            stats.ok += 1
        else:
            stats.failures[error_code] += 1
        stats.seconds_total += seconds
        stats.window.append(seconds)

    def run_finished(self, perf: PerfStats | None) -> None:
        """Count one finished generation and the runtime's timings of it."""
        self.runs_finished += 1
        if perf is None:
            return
        self.prefill_tokens += perf.prefill_tokens
        self.prefill_seconds += perf.prefill_time_ms / 1e3
        self.generate_tokens += perf.generate_tokens
        self.generate_seconds += perf.generate_time_ms / 1e3
        self.memory_usage_mb = perf.memory_usage_mb

    @property
    def generate_tokens_per_s(self) -> float:
        """Generated tokens per second of the runtime's decode time, over every run."""
        return self.generate_tokens / self.generate_seconds if self.generate_seconds > 0 else 0.0

    @property
    def prefill_tokens_per_s(self) -> float:
        """Prefill tokens per second of the runtime's prefill time, over every run."""
        return self.prefill_tokens / self.prefill_seconds if self.prefill_seconds > 0 else 0.0


class Sessions:
    """Every handle of the process, by opaque id, with its owner; counters for ``stats``."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.handles: dict[str, Entry] = {}
        self.runs = 0
        self.run_array_bytes = 0
        self.connections = 0
        self.requests = 0
        self.draining = False
        self.metrics = Metrics()
        self.polled = Runs(
            expiry_s=config.run_expiry_s,
            buffer_size=config.run_buffer,
            max_per_owner=config.max_async_runs,
        )

    def owned(self, owner: object) -> list[Entry]:
        """The handles ``owner`` holds."""
        return [e for e in self.handles.values() if e.owner is owner]

    def check_room(self, owner: object) -> None:
        """Raise BusyError when ``owner`` already holds as many handles as allowed."""
        if len(self.owned(owner)) >= self.config.max_handles_per_connection:
            raise BusyError(
                f"this connection holds {self.config.max_handles_per_connection} handles, "
                "the limit: rkllm_destroy one first"
            )

    def add(self, owner: object, llm: AsyncLLM) -> str:
        """Register a loaded handle; returns its opaque id."""
        handle_id = f"h_{secrets.token_hex(8)}"
        self.handles[handle_id] = Entry(id=handle_id, llm=llm, owner=owner)
        return handle_id

    def get(self, owner: object, handle_id: str) -> Entry:
        """The entry of ``handle_id`` if ``owner`` holds it.

        Raises:
            ParamsError: ``unknown handle`` (also for another connection's handle).
        """
        entry = self.handles.get(handle_id)
        if entry is None or entry.owner is not owner:
            raise ParamsError("handle", "unknown handle")
        return entry

    async def destroy(self, entry: Entry) -> None:
        """Abort what runs on the handle, destroy it, forget it (whatever cancels this)."""
        self.handles.pop(entry.id, None)
        self.polled.abort_handle(entry.id)
        with anyio.CancelScope(shield=True):
            await entry.llm.aclose()

    async def close_connection(self, owner: object) -> None:
        """Cancel ``owner``'s async runs, abort the runs of its handles, destroy them."""
        self.polled.close_owner(owner)
        entries = self.owned(owner)
        for entry in entries:
            entry.llm.abort()
        for entry in entries:
            await self.destroy(entry)

    @asynccontextmanager
    async def run_slot(self, entry: Entry, array_bytes: int) -> AsyncIterator[None]:
        """Count one run (queued or running) on ``entry`` for as long as the block lasts.

        Raises:
            BusyError: the handle's queue is full, or the server is shutting down.
        """
        release = self.reserve(entry, array_bytes)
        try:
            yield
        finally:
            release()

    def reserve(self, entry: Entry, array_bytes: int) -> Callable[[], None]:
        """Count one run on ``entry`` until the returned function is called (once).

        Raises:
            BusyError: the handle's queue is full, or the server is shutting down.
        """
        if self.draining:
            raise BusyError("the server is shutting down")
        if entry.queued >= self.config.max_queued_runs:
            raise BusyError(f"{entry.queued} runs are queued or running on this handle, the limit")
        entry.queued += 1
        self.runs += 1
        self.run_array_bytes += array_bytes
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                entry.queued -= 1
                self.runs -= 1
                self.run_array_bytes -= array_bytes

        return release

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no run is queued or running (True), or ``timeout_s`` passes (False)."""
        with anyio.move_on_after(timeout_s):
            while self.runs:  # noqa: ASYNC110  # a counter many tasks change; 20 ms is fine
                await anyio.sleep(0.02)
            return True
        return False

    @property
    def queued_runs(self) -> int:
        """Runs waiting for their handle (each handle runs one at a time)."""
        return sum(max(0, e.queued - 1) for e in self.handles.values())

    @property
    def array_bytes(self) -> int:
        """Bytes of client arrays the runtime may still read (runs, cross attention)."""
        return self.run_array_bytes + sum(e.array_bytes for e in self.handles.values())

    def stats(self) -> dict[str, Any]:
        """The ``stats`` method's result (latencies in milliseconds)."""
        m = self.metrics
        methods = {}
        for name, s in sorted(m.methods.items()):
            latency = s.latency()
            methods[name] = {
                "calls": s.calls,
                "ok": s.ok,
                "failed": s.calls - s.ok,
                "failures": {str(code): n for code, n in sorted(s.failures.items())},
                "latency_ms": {k: round(v * 1e3, 3) for k, v in latency.items()},
            }
        return {
            "connections": self.connections,
            "handles": len(self.handles),
            "runs": self.runs,
            "queued_runs": self.queued_runs,
            "array_bytes": self.array_bytes,
            "async_runs": len(self.polled.runs),
            "async_results": self.polled.buffered,
            "requests": self.requests,
            "draining": self.draining,
            "methods": methods,
            "generations": m.runs_finished,
            "generate_tokens_per_s": round(m.generate_tokens_per_s, 3),
            "prefill_tokens_per_s": round(m.prefill_tokens_per_s, 3),
            "memory_usage_mb": m.memory_usage_mb,
            "rss_mb": round(_rss_mb(), 3),
        }
