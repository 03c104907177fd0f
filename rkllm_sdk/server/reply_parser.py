"""One chat run's chunks as the reply's pieces: reasoning, content, tool calls, where it stops.

:class:`ReplyParser` is fed the runtime's :class:`~rkllm_sdk.Chunk` s as they come and gives
:class:`~.chat_types.ChatDelta` s: text inside the template's think tags as ``reasoning``
(tags stripped), ``<tool_call>`` blocks as parsed :class:`~rkllm_sdk.ToolCall` s when a block
closes, the rest as ``content``. It finds stop strings across chunks (holding back text that
could start one) and a generated-token limit, and sets :attr:`ReplyParser.finish` there so
the engine pauses the run. While tools are shown, content that starts like JSON is held back
and, when the run ends, becomes tool calls if it is bare JSON naming a shown tool (Llama 3's
format), else content. One chunk (or the end) gives at most one delta of each kind in a row:
held-back text comes together with the chunk's own, the last delta counting the tokens
(:attr:`~.chat_types.ChatDelta.tokens`). ``raw`` keeps every chunk's text, shown or not:
what the KV cache holds.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any, Literal

import attrs

from ..results import Chunk, ToolCall
from .chat_types import ChatDelta

__all__ = ["ReplyParser"]


class ReplyParser:
    """One run's chunks -> deltas: think blocks, tool blocks, stop strings, a token limit.

    Attributes:
        content / reasoning / tool_calls: the reply so far (reasoning even when not shown).
        tokens: tokens generated; shown_tokens: those up to where the reply ended.
        finish: ``"stop"`` (a stop string) or ``"length"`` (the limit) once the reply has
            ended there (the engine then pauses the run; ``pause_requested`` says it did).
        complete: every generated token's text was delivered (none left pending at the end).
        raw: every chunk's text, shown or not (what the KV cache holds).
    """

    def __init__(
        self,
        *,
        think_tags: tuple[str, str] | None,
        in_think: bool,
        stops: Sequence[str],
        limit: int | None,
        show_reasoning: bool,
        tools: bool,
        tool_names: frozenset[str] = frozenset(),
    ) -> None:
        self._tags = think_tags
        self._in_think = in_think
        self._stops = tuple(s for s in stops if s)
        self._hold = max((len(s) for s in self._stops), default=1) - 1
        self._held: list[tuple[str, str]] = []  # (kind, text) that could start a stop string
        self._limit = limit
        self._show_reasoning = show_reasoning
        self._tools = tools
        self._lead = False  # strip the whitespace that starts content after a think block
        self._reasoning_lead = True  # ... and that starts reasoning
        # Content that starts like a bare JSON tool call (Llama 3's format), while tools are
        # shown: held back and parsed at the end.
        self._tool_names = tool_names
        self._json: list[str] | None = None
        self.raw_parts: list[str] = []
        self.content: list[str] = []
        self.reasoning: list[str] = []
        self.tool_calls: list[ToolCall] = []
        self.tokens = 0
        self.shown_tokens = 0
        self._untold = 0  # tokens shown but not yet counted by a delta (ChatDelta.tokens)
        self.finish: Literal["stop", "length"] | None = None
        self.pause_requested = False
        self.complete = True

    @property
    def raw(self) -> str:
        """Every chunk's text so far, shown or not."""
        return "".join(self.raw_parts)

    def feed(self, chunk: Chunk) -> list[ChatDelta]:
        """The deltas ``chunk`` gives (none once the reply has ended)."""
        self.raw_parts.append(chunk.text)
        self.tokens += len(chunk.token_ids)
        if chunk.finish_reason is not None and chunk.token_ids:
            self.complete = False  # tokens whose text never came: the cache holds more
        if self.finish is not None:
            return []
        self.shown_tokens = self.tokens
        self._untold += len(chunk.token_ids)
        out: list[ChatDelta] = []
        if self._tools and (chunk.in_tool_call or chunk.tool_calls):
            out += self._flush()
            if chunk.tool_calls:
                self.tool_calls.extend(chunk.tool_calls)
                out.append(ChatDelta(tool_calls=tuple(chunk.tool_calls)))
        elif chunk.text:
            for kind, text in self._split(chunk.text):
                out += self._scan(kind, text)
                if self.finish is not None:
                    break
        if self.finish is None and self._limit is not None and self.tokens >= self._limit:
            out += self._flush()
            self.finish = "length"
        return self._deliver(out)

    def end(self) -> list[ChatDelta]:
        """The run has ended: what was held back (it did not start a stop string), and a
        held-back JSON reply as tool calls, or as content when it is not one."""
        out = [] if self.finish == "stop" else self._flush()
        if self._json is not None:
            text, self._json = "".join(self._json), None
            calls = _bare_tool_calls(text, self._tool_names, first_index=len(self.tool_calls))
            if calls:
                self.tool_calls.extend(calls)
                out.append(ChatDelta(tool_calls=tuple(calls)))
            else:
                self.content.append(text)
                out.append(ChatDelta(content=text))
        return self._deliver(out)

    def _deliver(self, deltas: Sequence[ChatDelta]) -> list[ChatDelta]:
        """``deltas`` (one chunk's, or the end's) with consecutive text of one kind merged,
        the last counting the tokens not yet counted: all of them, but for the newest while
        text is held back (the delta that releases it counts that one)."""
        out: list[ChatDelta] = []
        for d in deltas:
            last = out[-1] if out else None
            if last is not None and _kind(last) == _kind(d) != "tool_calls":
                out[-1] = attrs.evolve(
                    last, content=last.content + d.content, reasoning=last.reasoning + d.reasoning
                )
            else:
                out.append(d)
        if out:
            held_back = bool(self._held) or self._json is not None
            told = max(self._untold - (1 if held_back else 0), 0)
            self._untold -= told
            out[-1] = attrs.evolve(out[-1], tokens=told)
        return out

    def _split(self, text: str) -> list[tuple[str, str]]:
        """(kind, text) pieces, think tags removed: "reasoning" inside a block, else "content"."""
        if self._tags is None:
            return [("content", text)]
        opened, closed = self._tags
        out = []
        while text:
            # Inside a block the closing tag ends it, outside the opening tag starts one.
            kind, tag = ("reasoning", closed) if self._in_think else ("content", opened)
            i = text.find(tag)
            if i < 0:
                out.append((kind, text))
                break
            out.append((kind, text[:i]))
            text = text[i + len(tag) :]
            self._in_think = not self._in_think
            if self._in_think:
                self._reasoning_lead = True
            else:
                self._lead = True
        return [(k, t) for k, t in out if t]

    def _scan(self, kind: str, text: str) -> list[ChatDelta]:
        if not self._stops:
            return self._emit([(kind, text)])
        self._held.append((kind, text))
        joined = "".join(t for _, t in self._held)
        cuts = [i for i in (joined.find(s) for s in self._stops) if i >= 0]
        if cuts:
            out = self._emit(self._take(min(cuts)))
            self._held = []
            self.finish = "stop"
            return out
        keep = len(joined) - self._hold
        return self._emit(self._take(keep)) if keep > 0 else []

    def _take(self, n: int) -> list[tuple[str, str]]:
        """The first ``n`` held characters, as (kind, text) pieces."""
        out = []
        while n > 0 and self._held:
            kind, text = self._held[0]
            if len(text) <= n:
                out.append(self._held.pop(0))
                n -= len(text)
            else:
                out.append((kind, text[:n]))
                self._held[0] = (kind, text[n:])
                n = 0
        return out

    def _flush(self) -> list[ChatDelta]:
        held, self._held = self._held, []
        return self._emit(held)

    def _emit(self, pieces: Sequence[tuple[str, str]]) -> list[ChatDelta]:
        out = []
        for kind, piece in pieces:
            if kind == "reasoning":
                text = piece.lstrip() if self._reasoning_lead else piece
                if text:
                    self._reasoning_lead = False
                    self.reasoning.append(text)
                    if self._show_reasoning:
                        out.append(ChatDelta(reasoning=text))
            else:
                text = piece.lstrip() if self._lead else piece
                if (
                    self._json is None
                    and self._tool_names
                    and not self.content
                    and text.lstrip().startswith(("{", "["))
                ):
                    self._json = []
                if text and self._json is not None:
                    self._json.append(text)
                elif text:
                    self._lead = False
                    self.content.append(text)
                    out.append(ChatDelta(content=text))
        return out


def _kind(delta: ChatDelta) -> str:
    return "tool_calls" if delta.tool_calls else "reasoning" if delta.reasoning else "content"


def _bare_tool_calls(text: str, names: frozenset[str], *, first_index: int) -> list[ToolCall]:
    """Tool calls written as bare JSON (``{"name": ..., "parameters": {...}}``, Llama 3's
    format; several separated by ``;`` or new lines, or a list), or [] when ``text`` is
    anything else."""
    decoder = json.JSONDecoder()
    items: list[Any] = []
    pos, text = 0, text.strip()
    while pos < len(text):
        try:
            value, pos = decoder.raw_decode(text, pos)
        except ValueError:
            return []
        items.extend(value if isinstance(value, list) else [value])
        while pos < len(text) and text[pos] in " \t\r\n;":
            pos += 1
    calls = []
    for n, item in enumerate(items, start=first_index):
        if not isinstance(item, dict) or item.get("name") not in names:
            return []
        args = item.get("parameters", item.get("arguments", {}))
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except ValueError:
                return []
        if not isinstance(args, dict):
            return []
        digest = hashlib.sha1(json.dumps(item, sort_keys=True).encode()).hexdigest()[:8]
        calls.append(ToolCall(name=item["name"], arguments=args, id=f"call_{n}_{digest}"))
    return calls
