"""One connection's outgoing messages: a bounded queue that coalesces run results.

Responses wait for room (the requests producing them are bounded too). Result
notifications of a run never wait. With ``coalesce`` (every transport's connection and HTTP
request), a chunk whose run and batch entry still has a result waiting in the queue is
merged into it (text appended, token ids extended) instead of queued after it: what piles
up while the writer is busy leaves as one notification, and a client that keeps up still
gets each chunk as it comes. Without it, chunks merge only when the queue is full. Either
way a slow client gets fewer, larger notifications, the runtime is never held up, and
memory stays bounded by the queue size and the runs' own text.

Why coalescing is on for every transport (``python -m benchmarks.server`` and an A/B of
the variants in one sitting, ABI 1.3, tokens/s as a fraction of the in-process rate):
the cost that matters is per token, not per message. An earlier version merged at the
writer, so with ``coalesce`` the queue never filled and every token became a queued item
and woke the writer through a fresh ``anyio.Event`` (about a fifth of the server's time);
without it the queue filled within the SDK's burst of chunks and later tokens merged for
free. That is why coalescing then cut TCP / Unix from 0.34 to 0.23. Merging on the way in,
and waking only a writer that waits, took TCP / Unix to 0.36-0.40 and SSE / WebSocket from
0.23 to 0.33.

Sequence numbers are given when a notification leaves the queue, so they stay contiguous
from 0 whatever was merged.
"""

from __future__ import annotations

import json
import weakref
from collections import deque
from typing import Any

import anyio

__all__ = ["Outbox", "dumps"]


def dumps(message: Any) -> str:
    """A message as one line of JSON (no NaN, no raw newlines)."""
    return json.dumps(message, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


class _Result:
    __slots__ = ("key", "params", "run", "texts", "token_ids")

    def __init__(self, run: object, key: object, params: dict[str, Any]) -> None:
        self.run = run
        self.key = key  # run, or (run, batch entry) in a batch
        self.params = params
        # Joined once when sent: appending piece by piece would copy the text each time.
        self.texts = [params["text"]]
        self.token_ids: list[int] = params["token_ids"]


class Outbox:
    """A bounded FIFO of outgoing messages (serialized responses, result notifications)."""

    def __init__(self, size: int, *, coalesce: bool = True) -> None:
        self._size = max(1, size)
        self._coalesce = coalesce
        self._items: deque[str | _Result] = deque()
        # Each (run, batch entry)'s latest queued result: where a later chunk merges.
        self._latest: dict[object, _Result] = {}
        self._seq: weakref.WeakKeyDictionary[object, int] = weakref.WeakKeyDictionary()
        # Made by a waiter, set and dropped by the next change: a put or get that nobody
        # waits for creates no event.
        self._waiter: anyio.Event | None = None
        self.merged = 0  # notifications coalesced into an earlier one, for stats
        self._closed = False

    def close(self) -> None:
        """No more messages: :meth:`get` raises ``EndOfStream`` once the queue is empty."""
        self._closed = True
        self._wake()

    def __len__(self) -> int:
        return len(self._items)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            waiter.set()

    async def _changed(self) -> None:
        if self._waiter is None:
            self._waiter = anyio.Event()
        await self._waiter.wait()

    async def put(self, text: str) -> None:
        """Queue a serialized message, waiting while the queue is full."""
        while len(self._items) >= self._size:
            await self._changed()
        self._items.append(text)
        self._wake()

    def put_result(self, run: object, params: dict[str, Any]) -> None:
        """Queue a ``rkllm_result`` notification of ``run`` (the queue takes ``params`` over);
        merge it when the queue is full (with ``coalesce``: whenever a result of the same run
        and batch entry is queued)."""
        batch = params.get("batch")
        key = run if batch is None else (run, batch)
        latest = self._latest.get(key)
        # Order within the run is kept: its response is queued only after its last result.
        if latest is not None and (self._coalesce or len(self._items) >= self._size):
            # Inline (once per token): append the text, extend the token ids.
            latest.texts.append(params["text"])
            latest.token_ids += params["token_ids"]
            latest.params["token_id"] = params["token_id"]
            self.merged += 1
            return
        # Never waits: at most one extra item per run beyond the size (the run then merges).
        item = _Result(run, key, params)
        self._items.append(item)
        self._latest[key] = item
        self._wake()

    async def get(self) -> str:
        """The next message, serialized (a result gets its ``seq`` here).

        Raises:
            anyio.EndOfStream: closed and empty.
        """
        while not self._items:
            if self._closed:
                raise anyio.EndOfStream
            await self._changed()
        item = self._items.popleft()
        self._wake()
        if isinstance(item, str):
            return item
        if self._latest.get(item.key) is item:
            del self._latest[item.key]
        run = item.run
        seq = self._seq.get(run, 0)
        self._seq[run] = seq + 1
        # The queue owns params (merging already changed them): finished in place, not copied.
        params = item.params
        params["text"] = "".join(item.texts)
        params["seq"] = seq
        return dumps({"jsonrpc": "2.0", "method": "rkllm_result", "params": params})
