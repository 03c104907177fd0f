"""Polling: the bounded result buffers of ``rkllm_run_async`` runs, read with a cursor.

``rkllm_run_async`` answers at once with an opaque run id; the run is driven by a task of
the connection (or HTTP server) that started it, and its chunks accumulate in that run's
:class:`Run` buffer, numbered ``seq`` 0, 1, ... ``rkllm_get_run_results`` hands out the
chunks from the client's cursor on; the chunks below the cursor a client sends are dropped
(it has them).

Never silent loss: when a run's buffer holds ``buffer_size`` unfetched chunks, the run
*pauses* (the SDK stream is not iterated, so the runtime waits on its own backpressure)
until the client fetches. Nothing is merged or discarded; a client that stops fetching
holds its handle until the run expires.

Expiry: a run whose results nobody fetched for ``expiry_s`` seconds (finished or not) is
aborted and forgotten; fetching it then names it as expired. A run belongs to the owner
(connection or HTTP session) that started it: anyone else gets ``unknown run``.
``rkllm_abort`` / ``rkllm_destroy`` on the handle abort its async runs (a paused or queued
one ends at once with ``finish_reason`` ``abort``); an owner that leaves has its runs
cancelled and forgotten.
"""

from __future__ import annotations

import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable
from itertools import islice
from typing import Any

import anyio
import anyio.abc
import attrs

from ..errors import BusyError, RKLLMError, jsonrpc_code
from .wire import ParamsError

__all__ = ["Drive", "Run", "Runs"]

#: Expired run ids remembered, to tell "expired" from "unknown".
_EXPIRED_KEPT = 1024


@attrs.define(eq=False)
class Run:
    """One async run: its buffered chunks from ``first`` on, and its final state once over."""

    id: str
    owner: object
    handle: str
    buffer_size: int
    chunks: deque[dict[str, Any]] = attrs.field(factory=deque)
    first: int = 0  # seq of chunks[0]
    text: list[str] = attrs.field(factory=list)  # every chunk's text (the final text)
    aborted: bool = False
    final: dict[str, Any] | None = None
    last_fetch: float = attrs.field(factory=time.monotonic)
    scope: anyio.CancelScope = attrs.field(factory=anyio.CancelScope)
    _changed: anyio.Event = attrs.field(factory=anyio.Event)

    @property
    def end(self) -> int:
        """The seq the next chunk will get."""
        return self.first + len(self.chunks)

    @property
    def paused(self) -> bool:
        """Whether the buffer is full and the run waits for the client."""
        return self.final is None and len(self.chunks) >= self.buffer_size

    def _wake(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def put(self, chunk: dict[str, Any]) -> bool:
        """Buffer ``chunk`` (waiting while the buffer is full); False once aborted."""
        while len(self.chunks) >= self.buffer_size and not self.aborted:
            await self._changed.wait()
        if self.aborted:
            return False
        self.chunks.append({**chunk, "seq": self.end})
        self.text.append(chunk["text"])
        self._wake()
        return True

    def abort(self) -> None:
        """End the run at its next chunk (at once if it is paused or still queued)."""
        self.aborted = True
        self._wake()

    def finish(self, final: dict[str, Any]) -> None:
        """Record the run's final state (the client sees it after the last chunk)."""
        self.final = final
        self._wake()

    def fetch(self, cursor: int, most: int) -> dict[str, Any]:
        """Up to ``most`` chunks from ``cursor`` on; the chunks below it are dropped.

        Raises:
            ParamsError: ``cursor`` below what is kept, or beyond what was produced.
        """
        if cursor < self.first:
            raise ParamsError(
                "cursor",
                f"run {self.id}: results below {self.first} were dropped (an earlier fetch "
                "sent a cursor past them)",
            )
        if cursor > self.end:
            raise ParamsError("cursor", f"run {self.id} has produced {self.end} results so far")
        if cursor > self.first:
            for _ in range(cursor - self.first):
                self.chunks.popleft()
            self.first = cursor
            self._wake()  # room for a paused run
        results = list(islice(self.chunks, most))
        after = cursor + len(results)
        done = self.final is not None and after == self.end
        reply: dict[str, Any] = {
            "run": self.id,
            "results": results,
            "cursor": after,
            "done": done,
            "paused": self.paused,
        }
        if done:
            reply["final"] = self.final
        return reply

    async def wait_beyond(self, cursor: int) -> None:
        """Return once a chunk at or past ``cursor`` exists or the run is over."""
        while self.end <= cursor and self.final is None:
            await self._changed.wait()

    def aborted_final(self) -> dict[str, Any]:
        """The final state of a run this buffer stopped (aborted while paused or queued)."""
        return {
            "state": "RKLLM_RUN_FINISH",
            "finish_reason": "abort",
            "text": "".join(self.text),
            "perf": None,
        }


#: What drives one run: iterates its stream into :meth:`Run.put`; returns the final state.
Drive = Callable[[Run], Awaitable[dict[str, Any]]]


class Runs:
    """Every async run of a server, by id, with its owner."""

    def __init__(self, *, expiry_s: float, buffer_size: int, max_per_owner: int) -> None:
        self.expiry_s = expiry_s
        self.buffer_size = max(1, buffer_size)
        self.max_per_owner = max_per_owner
        self.runs: dict[str, Run] = {}
        self.expired: deque[str] = deque(maxlen=_EXPIRED_KEPT)

    def owned(self, owner: object) -> list[Run]:
        """The runs ``owner`` started and that are not forgotten."""
        return [r for r in self.runs.values() if r.owner is owner]

    @property
    def buffered(self) -> int:
        """Chunks held for clients, over every run."""
        return sum(len(r.chunks) for r in self.runs.values())

    def check_room(self, owner: object) -> None:
        """Raise BusyError when ``owner`` holds as many async runs as allowed."""
        if len(self.owned(owner)) >= self.max_per_owner:
            raise BusyError(
                f"this connection holds {self.max_per_owner} async runs, the limit: fetch "
                "them to the end (or let them expire) first"
            )

    def start(self, owner: object, handle: str, tasks: anyio.abc.TaskGroup, drive: Drive) -> Run:
        """Register a run of ``owner`` on ``handle`` and start ``drive`` in ``tasks``."""
        run = Run(
            id=f"r_{secrets.token_hex(8)}",
            owner=owner,
            handle=handle,
            buffer_size=self.buffer_size,
        )
        self.runs[run.id] = run
        tasks.start_soon(self._life, run, drive)
        return run

    def get(self, owner: object, run_id: str) -> Run:
        """The run ``run_id`` of ``owner``; marks it fetched now.

        Raises:
            ParamsError: an unknown run (also another owner's), or one that expired.
        """
        run = self.runs.get(run_id)
        if run is None or run.owner is not owner:
            if run is None and run_id in self.expired:
                raise ParamsError(
                    "run",
                    f"run {run_id} expired: its results were not fetched for "
                    f"{self.expiry_s:g} s (it was aborted and forgotten)",
                )
            raise ParamsError("run", f"unknown run {run_id}")
        run.last_fetch = time.monotonic()
        return run

    def abort_handle(self, handle: str) -> None:
        """Abort every unfinished async run on ``handle``."""
        for run in self.runs.values():
            if run.handle == handle and run.final is None:
                run.abort()

    def close_owner(self, owner: object) -> None:
        """Cancel and forget every run of ``owner`` (it has gone)."""
        for run in self.owned(owner):
            self.runs.pop(run.id, None)
            run.abort()
            run.scope.cancel()

    async def _life(self, run: Run, drive: Drive) -> None:
        try:
            with run.scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._drive, run, drive)
                    await self._expire(run)
                    tg.cancel_scope.cancel()
        finally:
            if self.runs.get(run.id) is run:  # expired (not closed by its owner)
                del self.runs[run.id]
                self.expired.append(run.id)

    async def _expire(self, run: Run) -> None:
        # A deadline each fetch moves; sleeping until it and checking again is enough.
        while (left := run.last_fetch + self.expiry_s - time.monotonic()) > 0:  # noqa: ASYNC110
            await anyio.sleep(left)
        run.abort()

    @staticmethod
    async def _drive(run: Run, drive: Drive) -> None:
        try:
            final = await drive(run)
        except RKLLMError as exc:
            final = _error(type(exc).__name__, jsonrpc_code(exc), str(exc))
        except ParamsError as exc:
            final = _error("InvalidParamsError", -32602, f"Invalid params: {exc}")
        except Exception as exc:  # a bug of ours: the client still learns the run failed
            final = _error(type(exc).__name__, -32603, "Internal error")
        run.finish(final)


def _error(kind: str, code: int, message: str) -> dict[str, Any]:
    """The final state of a run that failed: ``RKLLM_RUN_ERROR`` and the error."""
    return {"state": "RKLLM_RUN_ERROR", "error": {"type": kind, "code": code, "message": message}}
