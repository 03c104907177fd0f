"""One connection's outgoing messages: a bounded queue that coalesces run results.

Responses wait for room (the requests producing them are bounded too). Result
notifications of a run never wait: when the queue is full and its last message is a result
of the same run (same batch entry), the new chunk is merged into it (text appended, token
ids extended). A slow client thus gets fewer, larger notifications, the runtime is never
held up, and memory stays bounded by the queue size and the runs' own text.

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
    __slots__ = ("params", "run")

    def __init__(self, run: object, params: dict[str, Any]) -> None:
        self.run = run
        self.params = params


class Outbox:
    """A bounded FIFO of outgoing messages (serialized responses, result notifications)."""

    def __init__(self, size: int) -> None:
        self._size = max(1, size)
        self._items: deque[str | _Result] = deque()
        self._seq: weakref.WeakKeyDictionary[object, int] = weakref.WeakKeyDictionary()
        self._changed = anyio.Event()
        self.merged = 0  # notifications coalesced into an earlier one, for stats
        self._closed = False

    def close(self) -> None:
        """No more messages: :meth:`get` raises ``EndOfStream`` once the queue is empty."""
        self._closed = True
        self._wake()

    def __len__(self) -> int:
        return len(self._items)

    def _wake(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def put(self, text: str) -> None:
        """Queue a serialized message, waiting while the queue is full."""
        while len(self._items) >= self._size:
            await self._changed.wait()
        self._items.append(text)
        self._wake()

    def put_result(self, run: object, params: dict[str, Any]) -> None:
        """Queue a ``rkllm_result`` notification of ``run``; merge it when the queue is full."""
        if len(self._items) >= self._size:
            # The run's latest queued result (order within the run is kept: its response
            # is queued only after its last result).
            for item in reversed(self._items):
                if (
                    isinstance(item, _Result)
                    and item.run is run
                    and item.params.get("batch") == params.get("batch")
                ):
                    item.params["text"] += params["text"]
                    item.params["token_ids"].extend(params["token_ids"])
                    item.params["token_id"] = params["token_id"]
                    self.merged += 1
                    return
        # Never waits: at most one extra item per run beyond the size (the run then merges).
        self._items.append(_Result(run, params))
        self._wake()

    async def get(self) -> str:
        """The next message, serialized (a result gets its ``seq`` here).

        Raises:
            anyio.EndOfStream: closed and empty.
        """
        while not self._items:
            if self._closed:
                raise anyio.EndOfStream
            await self._changed.wait()
        item = self._items.popleft()
        self._wake()
        if isinstance(item, str):
            return item
        seq = self._seq.get(item.run, 0)
        self._seq[item.run] = seq + 1
        return dumps(
            {"jsonrpc": "2.0", "method": "rkllm_result", "params": {**item.params, "seq": seq}}
        )
