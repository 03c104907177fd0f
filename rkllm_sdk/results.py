"""The values a run produces: chunks, generations, the runtime's perf, tool calls.

A leaf module: it imports nothing else of ``rkllm_sdk``, so errors, streams, chat sessions,
metrics and the server's wire formats can all use these types without an import cycle.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Literal, NamedTuple

import attrs

__all__ = [
    "Chunk",
    "FinishReason",
    "Generation",
    "PerfStats",
    "RuntimeInfo",
    "ToolCall",
]

FinishReason = Literal["stop", "length", "tool_calls", "abort", "pause", "error"]
"""Why a run (or one input of a batched run) ended.

- ``"stop"``: the model ended its reply (end of sequence), or a stop string was met.
- ``"length"``: the ``max_new_tokens`` limit was reached.
- ``"tool_calls"``: the reply made tool calls (and ended normally).
- ``"abort"``: :meth:`AsyncLLM.abort` / :meth:`TokenStream.abort` stopped it.
- ``"pause"``: :meth:`TokenStream.pause` paused it (the KV cache is kept).
- ``"error"``: the runtime reported an error; the call raised :class:`GenerationError`,
  whose ``generation`` holds what was produced before it.
"""


@attrs.frozen(kw_only=True)
class PerfStats:
    """``RKLLMPerfStat``: what the runtime measured for one run."""

    prefill_time_ms: float
    prefill_tokens: int
    generate_time_ms: float
    generate_tokens: int
    memory_usage_mb: float

    @property
    def prefill_tokens_per_s(self) -> float:
        """Prefill throughput (0 when nothing was timed)."""
        return self.prefill_tokens / self.prefill_time_ms * 1e3 if self.prefill_time_ms > 0 else 0.0

    @property
    def generate_tokens_per_s(self) -> float:
        """Decode throughput (0 when nothing was timed)."""
        return (
            self.generate_tokens / self.generate_time_ms * 1e3 if self.generate_time_ms > 0 else 0.0
        )


@attrs.frozen(kw_only=True)
class ToolCall:
    """A tool call the model made.

    Attributes:
        name: the function's name.
        arguments: the arguments as a dict.
        id: a stable id for this call (pass it back with the result).
        error: why the call does not fit the tool's schema (unknown tool, missing or
            mistyped argument, JSON that could not be repaired), or None.
    """

    name: str
    arguments: dict[str, Any]
    id: str
    error: str | None = None


@attrs.frozen(kw_only=True)
class RuntimeInfo:
    """The runtime library a handle runs on (``AsyncLLM.runtime``).

    Attributes:
        path: the library file.
        version: the version embedded in the library, or None when it has none.
        abi: ``"1.2"`` or ``"1.3"``.
        is_fake: the bundled fake runtime.
        found_by: how it was found ("runtime= argument", "RKLLM_RUNTIME", "/usr/lib", ...).
    """

    path: Path
    version: str | None
    abi: str
    is_fake: bool
    found_by: str


class Chunk(NamedTuple):
    """One piece of streamed text, in order.

    A NamedTuple rather than an attrs class: one is built per token on the hot path, and a
    tuple is several times cheaper to create while being just as immutable and typed.

    Attributes:
        seq: position of this chunk in the stream (0, 1, 2, ...).
        text: complete UTF-8 characters (may be "" on the final chunk).
        token_ids: the tokens whose bytes this text completes.
        batch: which input of a batched run it belongs to.
        finish_reason: on each batch's last chunk (see :data:`FinishReason`).
        perf: on each batch's last chunk: the runtime's measurements.
        thinking: the text is part of the model's ``<think>...</think>`` block (tags included).
        in_tool_call: the text is part of a ``<tool_call>...</tool_call>`` block.
        tool_calls: on the chunk that closes a tool-call block, the calls parsed from it
            (JSON repaired, not checked against schemas: ``ChatSession.reply_from`` checks them).
    """

    seq: int
    text: str
    token_ids: tuple[int, ...]
    batch: int = 0
    finish_reason: FinishReason | None = None
    perf: PerfStats | None = None
    thinking: bool = False
    in_tool_call: bool = False
    tool_calls: tuple[ToolCall, ...] = ()

    def to_openai(
        self, *, model: str = "rkllm", completion_id: str = "chatcmpl-rkllm", created: int = 0
    ) -> dict[str, Any]:
        """This chunk as an OpenAI ``chat.completion.chunk`` dict (reasoning as
        ``reasoning_content``; "abort" / "pause" end as "stop", "error" as None)."""
        text = _strip_think_tags(self.text) if self.thinking else self.text
        delta: dict[str, Any] = {}
        if self.seq == 0:
            delta["role"] = "assistant"
        if text and not self.in_tool_call:
            delta["reasoning_content" if self.thinking else "content"] = text
        if self.tool_calls:
            delta["tool_calls"] = [
                {
                    "index": i,
                    "id": c.id,
                    "type": "function",
                    "function": {
                        "name": c.name,
                        "arguments": json.dumps(c.arguments, ensure_ascii=False),
                    },
                }
                for i, c in enumerate(self.tool_calls)
            ]
        reason = _OPENAI_REASONS.get(self.finish_reason) if self.finish_reason else None
        return {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": self.batch, "delta": delta, "finish_reason": reason}],
        }

    def to_ha_delta(self) -> dict[str, Any]:
        """This chunk as a Home Assistant conversation delta (``role`` on the first,
        ``content`` or ``thinking_content``)."""
        delta: dict[str, Any] = {"role": "assistant"} if self.seq == 0 else {}
        if self.thinking:
            text = _strip_think_tags(self.text)
            if text:
                delta["thinking_content"] = text
        elif self.text and not self.in_tool_call:
            delta["content"] = self.text
        if self.tool_calls:
            delta["tool_calls"] = [
                {"id": c.id, "tool_name": c.name, "tool_args": c.arguments} for c in self.tool_calls
            ]
        return delta


@attrs.frozen(kw_only=True)
class Generation:
    """The whole result of a run (one per input of a batched run).

    Attributes:
        text: everything generated (stop strings trimmed).
        token_ids: every generated token id.
        finish_reason: why the run ended (see :data:`FinishReason`).
        perf: the runtime's measurements (prefill / generate times and tokens, memory).
        ttft_ms: time from the start of the run to the first token, measured by the SDK.
        duration_ms: time from the start of the run to its end, measured by the SDK.
        chunks: how many text chunks were streamed.
        batch: index of the input in a batched run.
        tool_calls: the tool calls in the text, parsed (unchecked against schemas).
    """

    text: str
    token_ids: tuple[int, ...]
    finish_reason: FinishReason
    perf: PerfStats | None
    ttft_ms: float | None
    duration_ms: float
    chunks: int
    batch: int = 0
    tool_calls: tuple[ToolCall, ...] = ()

    @property
    def tokens_per_s(self) -> float:
        """Generated tokens per second after the first token, measured by the SDK."""
        if self.ttft_ms is None or len(self.token_ids) < 2 or self.duration_ms <= self.ttft_ms:
            return 0.0
        return (len(self.token_ids) - 1) / (self.duration_ms - self.ttft_ms) * 1e3

    def _repr_html_(self) -> str:
        """A compact table for notebooks."""
        rows = [
            ("text", html.escape(self.text)),
            ("finish", self.finish_reason),
            ("tokens", str(len(self.token_ids))),
            ("time to first token", f"{self.ttft_ms:.1f} ms" if self.ttft_ms is not None else "-"),
            ("decode", f"{self.tokens_per_s:.1f} tok/s"),
        ]
        if self.perf is not None:
            rows += [
                (
                    "prefill (runtime)",
                    f"{self.perf.prefill_tokens} tok, {self.perf.prefill_time_ms:.1f} ms",
                ),
                ("memory (runtime)", f"{self.perf.memory_usage_mb:.1f} MB"),
            ]
        body = "".join(
            f"<tr><th style='text-align:left'>{k}</th><td>{v}</td></tr>" for k, v in rows
        )
        return f"<table>{body}</table>"


_OPENAI_REASONS: dict[str, str | None] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "abort": "stop",
    "pause": "stop",
    "error": None,
}


def _strip_think_tags(text: str) -> str:
    return text.replace("<think>", "").replace("</think>", "")
