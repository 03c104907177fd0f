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

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import attrs

from ..errors import BusyError
from ..llm import AsyncLLM
from .wire import ParamsError

__all__ = ["Entry", "ServerConfig", "Sessions", "confine"]

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
        outbox_size: messages queued for a slow client before run results coalesce.
        drain_timeout_s: how long SIGTERM waits for runs to finish.
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
        with anyio.CancelScope(shield=True):
            await entry.llm.aclose()

    async def close_connection(self, owner: object) -> None:
        """Abort the runs of ``owner``'s handles and destroy them."""
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
        if self.draining:
            raise BusyError("the server is shutting down")
        if entry.queued >= self.config.max_queued_runs:
            raise BusyError(f"{entry.queued} runs are queued or running on this handle, the limit")
        entry.queued += 1
        self.runs += 1
        self.run_array_bytes += array_bytes
        try:
            yield
        finally:
            entry.queued -= 1
            self.runs -= 1
            self.run_array_bytes -= array_bytes

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no run is queued or running (True), or ``timeout_s`` passes (False)."""
        with anyio.move_on_after(timeout_s):
            while self.runs:  # noqa: ASYNC110  # a counter many tasks change; 20 ms is fine
                await anyio.sleep(0.02)
            return True
        return False

    def stats(self) -> dict[str, Any]:
        """The ``stats`` method's result."""
        return {
            "connections": self.connections,
            "handles": len(self.handles),
            "runs": self.runs,
            "array_bytes": self.run_array_bytes + sum(e.array_bytes for e in self.handles.values()),
            "requests": self.requests,
            "draining": self.draining,
        }
