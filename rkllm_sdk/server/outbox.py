"""One connection's outgoing messages: a bounded queue that coalesces run results.

Responses wait for room (the requests producing them are bounded too). Result
notifications of a run never wait: when the queue is full and its last message is a result
of the same run (same batch entry), the new chunk is merged into it (text appended, token
ids extended). A slow client thus gets fewer, larger notifications, the runtime is never
held up, and memory stays bounded by the queue size and the runs' own text.

With ``coalesce`` (the HTTP faces: SSE and WebSocket), when the writer takes a result off
the queue, the results of the same run and batch entry queued right behind it go out in
it too: there every message costs a pass through Starlette / uvicorn (an SSE event, a
WebSocket frame), so a backlog leaves as one notification instead of one per token, while
a client that keeps up still gets each token as it comes. Measured in one session
(``python -m benchmarks.server``, ABI 1.3): SSE 0.07 -> 0.20 and WebSocket 0.045 -> 0.19 of
the in-process rate with it; TCP / Unix lines 0.34 -> 0.20 with it (not understood yet),
so the newline transports send one notification per token.

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
    __slots__ = ("params", "run", "texts")

    def __init__(self, run: object, params: dict[str, Any]) -> None:
        self.run = run
        self.params = params
        # Joined once when sent: appending piece by piece would copy the text each time.
        self.texts = [params["text"]]

    def follows(self, run: object, params: dict[str, Any]) -> bool:
        """Whether ``params`` is a later chunk of the same run and batch entry."""
        return self.run is run and self.params.get("batch") == params.get("batch")

    def absorb(self, params: dict[str, Any]) -> None:
        """Append a later chunk of the same run and batch entry."""
        self.texts.append(params["text"])
        self.params["token_ids"].extend(params["token_ids"])
        self.params["token_id"] = params["token_id"]


class Outbox:
    """A bounded FIFO of outgoing messages (serialized responses, result notifications)."""

    def __init__(self, size: int, *, coalesce: bool = False) -> None:
        self._size = max(1, size)
        self._coalesce = coalesce
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
                if isinstance(item, _Result) and item.follows(run, params):
                    item.absorb(params)
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
        items = self._items
        while self._coalesce and items:  # what queued up behind it goes out with it
            nxt = items[0]
            if not isinstance(nxt, _Result) or not nxt.follows(item.run, item.params):
                break
            items.popleft()
            item.absorb(nxt.params)
            self.merged += 1
        seq = self._seq.get(item.run, 0)
        self._seq[item.run] = seq + 1
        params = {**item.params, "text": "".join(item.texts), "seq": seq}
        return dumps({"jsonrpc": "2.0", "method": "rkllm_result", "params": params})
