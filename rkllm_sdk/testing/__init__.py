"""Test your application without a board: fake model files and what the runtime received.

The pytest plugin (:mod:`rkllm_sdk.testing.plugin`, registered automatically when the SDK is
installed) gives fixtures over the bundled fake runtime; this module holds what they are
built from, usable from any test framework:

- :class:`FakeModel` writes a model file for the fake runtime: scripted replies (plain,
  thinking, tool calls via :func:`tool_call_reply`), speeds, vocabulary, faults.
- :func:`last_input` reads back what the runtime received in a handle's last run (prompts
  as templated, roles, sampling, arrays by checksum) as a :class:`RunInput`.
- :func:`kv_text` reads the text a handle's KV cache holds (every prompt as templated and
  every generated token, as the cache keeps them), to prove what the model saw.
- :func:`checksum` computes the fake's checksum of arrays you sent, for comparison.
- :func:`demo_model_path` is the bundled demo model (what ``rkllm run`` uses without a board).

>>> from rkllm_sdk.testing import FakeModel, tool_call_reply
>>> model = FakeModel(replies={"kitchen": tool_call_reply("set_light", {"on": True})})
>>> model.to_dict()["script"][0]["match"]
'kitchen'
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import numpy as np

from .. import _native as native
from .._fake import demo_model_path
from ..lowlevel import native_handle

if TYPE_CHECKING:
    from ..llm import AsyncLLM
    from ..sync import LLM

__all__ = [
    "FakeModel",
    "Faults",
    "ReceivedArray",
    "ReceivedInput",
    "RunInput",
    "assert_array_received",
    "checksum",
    "demo_model_path",
    "kv_text",
    "last_input",
    "tool_call_reply",
]


# ---- model files -------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Faults:
    """Failures the fake runtime injects (its ``faults`` spec).

    Attributes:
        init_fail: ``rkllm_init`` returns this code (the load fails).
        run_fail: ``rkllm_run`` returns this code before any token (the call fails).
        error_after: after N tokens the run ends with ``RKLLM_RUN_ERROR``.
        hang_after: after N tokens nothing more comes until an abort (a wedged NPU).
        crash_after: after N tokens the process aborts (SIGABRT): use in a subprocess only.
        slow_prefill_ms: extra time added to every prefill.
        start_delay_ms: a run waits this long before it counts as running (an abort
            meanwhile finds the handle idle and is lost, as one racing a run's start can be).

    >>> Faults(error_after=3, slow_prefill_ms=50).spec()
    'error_after=3,slow_prefill_ms=50'
    """

    init_fail: int | None = None
    run_fail: int | None = None
    error_after: int | None = None
    hang_after: int | None = None
    crash_after: int | None = None
    slow_prefill_ms: float | None = None
    start_delay_ms: float | None = None

    def spec(self) -> str:
        """The fault spec string (``RKLLM_FAKE_FAULTS`` syntax)."""
        return ",".join(
            f"{name}={value:g}" if isinstance(value, float) else f"{name}={value}"
            for name, value in attrs.asdict(self).items()
            if value is not None
        )


def tool_call_reply(
    name: str, arguments: Mapping[str, Any], *, text: str = "", thinking: str | None = None
) -> str:
    """A reply text in which the model calls a tool (the ``<tool_call>`` format).

    ``text`` comes after the call; ``thinking`` before it, in a ``<think>`` block. Several
    calls: join the results with ``"\\n"``.

    >>> tool_call_reply("set_light", {"on": True})
    '<tool_call>\\n{"name": "set_light", "arguments": {"on": true}}\\n</tool_call>'
    """
    call = json.dumps({"name": name, "arguments": dict(arguments)}, ensure_ascii=False)
    head = f"<think>\n{thinking}\n</think>\n\n" if thinking is not None else ""
    return f"{head}<tool_call>\n{call}\n</tool_call>{text}"


@attrs.frozen(kw_only=True)
class FakeModel:
    """A model file for the fake runtime (its ``rkllm-fake/1`` JSON format).

    Attributes:
        replies: ``{substring of the prompt: reply}``, first match wins (in order); other
            prompts get deterministic generated sentences (or tool calls, when tools are set
            and the prompt names one).
        name: part of the generation seed.
        vocab_size / hidden_size: logits and hidden-state widths.
        decode_ms / prefill_ms: time per generated / prefilled token (0: as fast as possible).
        thinking: a thinking model (Qwen3 style ``<think>`` blocks).
        natural_end: False never stops before ``max_new_tokens``.
        internal_tokenizer / internal_embedding: False needs the runtime 1.3 callbacks.
        faults: injected failures.
        waiting_text: what a ``RKLLM_RUN_WAITING`` callback carries: ``"held"`` (the
            default: empty text, the split character comes whole in the next NORMAL
            callback) or ``"partial"`` (the character's first bytes, as before).

    >>> model = FakeModel(replies={"Hello": "Hi!"}, decode_ms=5)
    >>> path = model.write(tmp_path / "model.json")  # doctest: +SKIP
    """

    replies: Mapping[str, str] = attrs.field(factory=dict, converter=dict)
    name: str = "fake-model"
    vocab_size: int = 4096
    hidden_size: int = 64
    decode_ms: float = 0.0
    prefill_ms: float = 0.0
    thinking: bool = False
    natural_end: bool = True
    internal_tokenizer: bool = True
    internal_embedding: bool = True
    faults: Faults | str | None = None
    waiting_text: str = attrs.field(
        default="held", validator=attrs.validators.in_(("held", "partial"))
    )

    def to_dict(self) -> dict[str, Any]:
        """The model file's JSON object."""
        body: dict[str, Any] = {
            "format": "rkllm-fake/1",
            "name": self.name,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "decode_ms": self.decode_ms,
            "prefill_ms": self.prefill_ms,
            "thinking": self.thinking,
            "natural_end": self.natural_end,
            "internal_tokenizer": self.internal_tokenizer,
            "internal_embedding": self.internal_embedding,
            "script": [{"match": m, "reply": r} for m, r in self.replies.items()],
        }
        faults = self.faults.spec() if isinstance(self.faults, Faults) else self.faults
        if faults:
            body["faults"] = faults
        if self.waiting_text != "held":
            body["waiting_text"] = self.waiting_text
        return body

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Write the model file to ``path`` and return it.

        >>> FakeModel().write(tmp_path / "model.json")  # doctest: +SKIP
        """
        out = Path(path)
        out.write_text(json.dumps(self.to_dict(), ensure_ascii=False), encoding="utf-8")
        return out


# ---- what the runtime received -----------------------------------------------------------


def checksum(*arrays: Any) -> str:
    """The fake runtime's checksum of arrays: 64-bit FNV-1a over their raw bytes, in hex.

    Continued across several arrays (cross-attention sends four). Give each array in the
    dtype the runtime received (int32 token ids, float32 embeddings). Runs in Python at
    about 10 MB/s: fine for test-sized arrays.

    >>> checksum(np.array([1, 2, 3], dtype=np.int32))
    'fd1f0f4381eb0395'
    """
    h = 0xCBF29CE484222325
    for a in arrays:
        for byte in np.ascontiguousarray(a).tobytes():
            h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


_TAG = re.compile(r"\[(\w+) n=([\dx]+) fnv=([0-9a-f]{16})\]")
_DTYPES = {"tokens": np.int32, "tokenizer": np.int32}


@attrs.frozen(kw_only=True)
class ReceivedArray:
    """An array as the fake runtime saw it.

    Attributes:
        kind: "tokens", "embed", "image", "video", "tokenizer", "embed_callback" or "cross".
        shape: its dimensions.
        fnv: :func:`checksum` of its bytes.
    """

    kind: str
    shape: tuple[int, ...]
    fnv: str

    def matches(self, *arrays: Any) -> bool:
        """Whether ``arrays`` are what arrived (same bytes, in order; dtype as the kind's).

        >>> last_input(llm).input.arrays[0].matches(ids)  # doctest: +SKIP
        True
        """
        if self.kind == "cross":  # K, V, mask (float32) and positions (int32): as given
            converted = [np.asarray(a) for a in arrays]
        else:
            dtype = _DTYPES.get(self.kind, np.float32)
            converted = [np.asarray(a, dtype=dtype) for a in arrays]
            if sum(a.size for a in converted) != math.prod(self.shape):
                return False
        return checksum(*converted) == self.fnv


@attrs.frozen(kw_only=True)
class ReceivedInput:
    """One input of a run, as the fake runtime received it.

    Attributes:
        type: "prompt", "token", "embed" or "multimodal".
        role: "user" or "tool".
        enable_thinking: the input's thinking flag.
        text: the prompt text ("" for token / embedding inputs).
        templated: the text after the chat template (system prompt, tools, role wrapping).
        arrays: the arrays it carried.
        prefill_tokens / computed_prefill_tokens: prompt tokens, and those actually
            computed (fewer with a prompt cache).
    """

    type: str
    role: str
    enable_thinking: bool
    text: str
    templated: str
    arrays: tuple[ReceivedArray, ...]
    prefill_tokens: int
    computed_prefill_tokens: int


@attrs.frozen(kw_only=True)
class RunInput:
    """What the fake runtime received in a handle's last run (see :func:`last_input`).

    Attributes:
        n_batch: inputs in the run.
        mode: 0 generate, 1 last hidden layer, 2 logits.
        keep_history: whether the turn stays in the KV cache.
        max_new_tokens: the run's limit (runtime 1.3; -1 when unset).
        sampling: the sampling values in force (runtime 1.3 per run, else the init ones).
        lora: ``{"name": ..., "scale": ...}`` or None.
        prompt_cache_save: the path the prefill was saved to, or None.
        inputs: one :class:`ReceivedInput` per batch entry.
        raw: the fake's JSON, as is.
    """

    n_batch: int
    mode: int
    keep_history: bool
    max_new_tokens: int
    sampling: dict[str, float]
    lora: dict[str, Any] | None
    prompt_cache_save: str | None
    inputs: tuple[ReceivedInput, ...]
    raw: dict[str, Any] = attrs.field(repr=False)

    @property
    def input(self) -> ReceivedInput:
        """The first (usually only) input."""
        return self.inputs[0]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunInput:
        """Parse the fake's ``rkllm_fake_last_input`` JSON."""
        inputs = tuple(
            ReceivedInput(
                type=i["type"],
                role=i["role"],
                enable_thinking=bool(i["enable_thinking"]),
                text=i["text"],
                templated=i["templated"],
                arrays=tuple(
                    ReceivedArray(kind=kind, shape=tuple(int(d) for d in dims.split("x")), fnv=fnv)
                    for kind, dims, fnv in _TAG.findall(i["tags"])
                ),
                prefill_tokens=int(i["prefill_tokens"]),
                computed_prefill_tokens=int(i["computed_prefill_tokens"]),
            )
            for i in data["inputs"]
        )
        return cls(
            n_batch=int(data["n_batch"]),
            mode=int(data["mode"]),
            keep_history=bool(data["keep_history"]),
            max_new_tokens=int(data["max_new_tokens"]),
            sampling=dict(data["sampling"]),
            lora=data["lora"],
            prompt_cache_save=data["prompt_cache_save"],
            inputs=inputs,
            raw=dict(data),
        )


def last_input(llm: AsyncLLM | LLM) -> RunInput:
    """What the fake runtime received in ``llm``'s last run.

    Raises:
        NativeCallError: not the fake runtime, or no run yet.

    >>> await llm.generate("Turn on the kitchen light")  # doctest: +SKIP
    >>> last_input(llm).input.text  # doctest: +SKIP
    'Turn on the kitchen light'
    """
    return RunInput.from_json(native.fake_last_input(native_handle(llm)))


def kv_text(llm: AsyncLLM | LLM, batch: int = 0) -> str:
    """The text ``llm``'s KV cache holds for ``batch``, position by position, on the fake runtime.

    Each prompt as the runtime templated it (its own chat template, or the raw text after
    ``set_chat_template("", "", "")``), then each generated token's bytes, exactly as the
    cache keeps them: a turn without ``keep_history`` leaves it empty, a clear or a context
    shift removes positions, a loaded prompt cache supplies the reused prefix. The
    end-of-generation token of a finished reply is not in it. Token and embedding inputs have
    no text: each token id shows as ``<token:ID>``, each embedding row as ``<embed>`` (image
    and video rows as ``<image>`` / ``<video>``). Bytes that are not UTF-8 (a cut through a
    character) come back as lone surrogates (``surrogateescape``), so nothing is lost.

    Call it while no run is in progress.

    Raises:
        NativeCallError: not the fake runtime, no such batch, or a run in progress.

    >>> await llm.generate("Hello", keep_history=True)  # doctest: +SKIP
    >>> kv_text(llm)  # doctest: +SKIP
    '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n<|im_start|>user\\nHello...'
    """
    return native.fake_kv_text(native_handle(llm), batch).decode("utf-8", "surrogateescape")


def assert_array_received(llm: AsyncLLM | LLM, *arrays: Any, kind: str | None = None) -> None:
    """Assert that the last run carried ``arrays`` (byte for byte), optionally of ``kind``.

    Raises:
        AssertionError: listing what did arrive.

    >>> assert_array_received(llm, ids, kind="tokens")  # doctest: +SKIP
    """
    run = last_input(llm)
    received = [a for i in run.inputs for a in i.arrays if kind is None or a.kind == kind]
    if not any(a.matches(*arrays) for a in received):
        got = ", ".join(f"{a.kind} {'x'.join(map(str, a.shape))} fnv={a.fnv}" for a in received)
        raise AssertionError(
            f"the runtime did not receive that array (checksum {checksum(*arrays)}); "
            f"it received: {got or 'no arrays'}"
        )
