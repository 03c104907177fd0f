"""A test-only cffi driver for the fake runtime: C structs in, recorded callbacks out.

It speaks the raw C API (both ABIs) so the emulator's behaviour is tested on its own,
below the SDK. Every callback copies what it needs before returning, as the vendor
requires; ``retain=True`` also keeps the raw pointers so poisoning can be observed.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cffi
import numpy as np

from rkllm_sdk._fake import library_path
from rkllm_sdk._ffi import cdef_source
from rkllm_sdk.testing import checksum

fnv1a = checksum  # the fake's checksum (64-bit FNV-1a over raw bytes)

NORMAL, WAITING, FINISH, ERROR = 0, 1, 2, 3
GENERATE, HIDDEN, LOGITS = 0, 1, 2

_cache: dict[str, tuple[cffi.FFI, Any]] = {}


def load(abi: str) -> tuple[cffi.FFI, Any]:
    """The FFI and library of the fake for ``abi``, loaded once per process."""
    if abi not in _cache:
        ffi = cffi.FFI()
        ffi.cdef(cdef_source(abi, fake=True))
        _cache[abi] = (ffi, ffi.dlopen(str(library_path(abi))))
    return _cache[abi]


def logits_formula(first_pos: int, n_tokens: int, vocab: int) -> np.ndarray:
    pos = np.arange(first_pos, first_pos + n_tokens, dtype=np.uint64)[:, None]
    i = np.arange(vocab, dtype=np.uint64)[None, :]
    return (((pos * 131 + i * 7) % 1021).astype(np.float32) / np.float32(32)) - np.float32(16)


def hidden_formula(first_pos: int, n_tokens: int, width: int) -> np.ndarray:
    pos = np.arange(first_pos, first_pos + n_tokens, dtype=np.uint64)[:, None]
    i = np.arange(width, dtype=np.uint64)[None, :]
    return (((pos * 17 + i * 29) % 509).astype(np.float32) / np.float32(64)) - np.float32(4)


SPECIALS = [
    b"<|im_start|>",
    b"<|im_end|>",
    b"<tool_call>",
    b"</tool_call>",
    b"<think>",
    b"</think>",
]
#: Their ids (Qwen's) where the vocabulary has room for them.
SPECIAL_IDS = dict(zip(SPECIALS, (151644, 151645, 151657, 151658, 151667, 151668), strict=True))
_NONASCII_LEN = [3, 2, 4, 3, 5, 1, 3]


def reference_pieces(text: str | bytes) -> list[bytes]:
    """The fake's tokenizer rules (fake_runtime/README.md), re-implemented independently."""
    data = text.encode() if isinstance(text, str) else text
    out, pos = [], 0
    while pos < len(data):
        special = next((s for s in SPECIALS if data.startswith(s, pos)), None)
        if special:
            n = len(special)
        else:
            i = pos
            if data[i : i + 1] == b" " and data[i + 1 : i + 2].isalnum() and data[i + 1] < 0x80:
                i += 1
            if data[i] < 0x80 and data[i : i + 1].isalnum():
                while (
                    i < len(data) and data[i] < 0x80 and data[i : i + 1].isalnum() and i - pos < 8
                ):
                    i += 1
                n = i - pos
            elif data[pos] < 0x80:
                n = 1
            else:
                run = 0
                while pos + run < len(data) and data[pos + run] >= 0x80:
                    run += 1
                n = min(run, _NONASCII_LEN[pos % len(_NONASCII_LEN)])
        out.append(data[pos : pos + n])
        pos += n
    return out


def reference_token_id(piece: bytes, vocab: int) -> int:
    """The fake's id of one tokenizer piece (fake_runtime/README.md), re-implemented
    independently: a special piece's own id, else the piece's FNV-1a within the vocabulary
    (above the 1000 ids reserved when it has more than 2000)."""
    special = SPECIAL_IDS.get(piece)
    if special is not None and special < vocab:
        return special
    base = 1000 if vocab > 2000 else 0
    return base + int(fnv1a(np.frombuffer(piece, np.uint8)), 16) % (vocab - base)


@dataclass
class Item:
    """One batch entry of one callback, copied inside the callback."""

    text: bytes | None
    token_id: int
    logits: np.ndarray | None = None
    hidden: np.ndarray | None = None
    perf: dict[str, float] | None = None


@dataclass
class Event:
    state: int
    items: list[Item]
    thread: int
    userdata: int
    raw: Any = None  # the RKLLMResult* itself, kept only with retain=True


@dataclass
class Run:
    """What one run delivered."""

    rc: int
    events: list[Event]

    @property
    def tokens(self) -> list[Event]:
        return [e for e in self.events if e.state in (NORMAL, WAITING)]

    @property
    def terminal(self) -> Event:
        return self.events[-1]

    def text(self, batch: int = 0) -> str:
        return self.raw_bytes(batch).decode("utf-8")

    def raw_bytes(self, batch: int = 0) -> bytes:
        return b"".join(e.items[batch].text or b"" for e in self.tokens)

    def token_ids(self, batch: int = 0) -> list[int]:
        return [e.items[batch].token_id for e in self.tokens if e.items[batch].token_id >= 0]


@dataclass
class Recorder:
    n_batch: int
    ffi: cffi.FFI
    events: list[Event] = field(default_factory=list)
    reply: Callable[[int, Event], int] | None = None
    retain: bool = False
    errors: list[BaseException] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)

    def __call__(self, result: Any, userdata: Any, state: int) -> int:
        try:
            items = []
            for b in range(self.n_batch):
                r = result[b]
                text = self.ffi.string(r.text) if r.text != self.ffi.NULL else None
                item = Item(text=text, token_id=r.token_id)
                lg, hd = r.logits, r.last_hidden_layer
                if lg.logits != self.ffi.NULL:
                    n = lg.num_tokens * lg.vocab_size
                    arr = np.frombuffer(self.ffi.buffer(lg.logits, 4 * n), dtype=np.float32)
                    item.logits = arr.copy().reshape(lg.num_tokens, lg.vocab_size)
                if hd.hidden_states != self.ffi.NULL:
                    n = hd.num_tokens * hd.embd_size
                    arr = np.frombuffer(self.ffi.buffer(hd.hidden_states, 4 * n), dtype=np.float32)
                    item.hidden = arr.copy().reshape(hd.num_tokens, hd.embd_size)
                if state in (FINISH, ERROR):
                    p = r.perf
                    item.perf = {
                        "prefill_time_ms": p.prefill_time_ms,
                        "prefill_tokens": p.prefill_tokens,
                        "generate_time_ms": p.generate_time_ms,
                        "generate_tokens": p.generate_tokens,
                        "memory_usage_mb": p.memory_usage_mb,
                    }
                items.append(item)
            event = Event(
                state=int(state),
                items=items,
                thread=threading.get_ident(),
                userdata=int(self.ffi.cast("intptr_t", userdata)),
                raw=result if self.retain else None,
            )
            self.events.append(event)
            ret = self.reply(len(self.events) - 1, event) if self.reply else 0
            if state in (FINISH, ERROR):
                self.done.set()
            return ret
        except BaseException as exc:  # surfaced by the test, never lost on the C thread
            self.errors.append(exc)
            return 0


class Handle:
    """One rkllm_init handle with its recorder and helpers to build inputs."""

    def __init__(self, drv: Driver, ptr: Any, recorder: Recorder, keep: list[Any]) -> None:
        self.drv, self.ptr, self.rec, self._keep = drv, ptr, recorder, keep
        self.ffi, self.lib = drv.ffi, drv.lib

    # -- inputs ---------------------------------------------------------------------------
    def _input(self, keep: list[Any], role: str | None, thinking: bool) -> Any:
        inp = self.ffi.new("RKLLMInput*")
        if role is not None:
            role_c = self.ffi.new("char[]", role.encode())
            keep.append(role_c)
            inp.role = role_c
        inp.enable_thinking = thinking
        return inp

    def prompt(
        self,
        text: str | None,
        keep: list[Any],
        *,
        role: str | None = "user",
        thinking: bool = False,
    ) -> Any:
        inp = self._input(keep, role, thinking)
        inp.input_type = 0
        if text is not None:
            c = self.ffi.new("char[]", text.encode())
            keep.append(c)
            inp.prompt_input = c
        return inp

    def tokens(self, ids: np.ndarray, keep: list[Any]) -> Any:
        inp = self._input(keep, "user", False)
        inp.input_type = 1
        keep.append(ids)
        inp.token_input.input_ids = self.ffi.cast("int32_t*", self.ffi.from_buffer(ids))
        inp.token_input.n_tokens = len(ids)
        return inp

    def embed(self, rows: np.ndarray, keep: list[Any]) -> Any:
        inp = self._input(keep, "user", False)
        inp.input_type = 2
        keep.append(rows)
        inp.embed_input.embed = self.ffi.cast("float*", self.ffi.from_buffer(rows))
        inp.embed_input.n_tokens = rows.shape[0]
        return inp

    def multimodal(
        self,
        text: str,
        keep: list[Any],
        *,
        image: np.ndarray | None = None,
        video: np.ndarray | None = None,
    ) -> Any:
        inp = self._input(keep, "user", False)
        inp.input_type = 3
        mm = inp.multimodal_input
        c = self.ffi.new("char[]", text.encode())
        keep.append(c)
        mm.prompt = c
        if self.drv.abi == "1.2":
            if image is not None:
                keep.append(image)
                mm.image_embed = self.ffi.cast("float*", self.ffi.from_buffer(image))
                mm.n_image, mm.n_image_tokens = image.shape[0], image.shape[1]
            assert video is None, "ABI 1.2 has no video input"
        else:
            if image is not None:
                keep.append(image)
                mm.image.image_embed = self.ffi.cast("float*", self.ffi.from_buffer(image))
                mm.image.n_image, mm.image.n_image_tokens = image.shape[0], image.shape[1]
            if video is not None:
                keep.append(video)
                mm.video.video_embed = self.ffi.cast("float*", self.ffi.from_buffer(video))
                mm.video.n_video, mm.video.n_frame_per_video = video.shape[0], video.shape[1]
                mm.video.n_frame_tokens = video.shape[2]
        return inp

    def infer(
        self,
        keep: list[Any],
        *,
        mode: int = GENERATE,
        keep_history: int = 0,
        lora: str | None = None,
        save_cache: str | None = None,
        max_new_tokens: int = 0,
        sampling: dict[str, float] | None = None,
    ) -> Any:
        p = self.ffi.new("RKLLMInferParam*")
        p.mode = mode
        p.keep_history = keep_history
        if lora is not None:
            lp = self.ffi.new("RKLLMLoraParam*")
            name = self.ffi.new("char[]", lora.encode())
            lp.lora_adapter_name = name
            keep += [lp, name]
            p.lora_params = lp
        if save_cache is not None:
            pc = self.ffi.new("RKLLMPromptCacheParam*")
            path = self.ffi.new("char[]", save_cache.encode())
            pc.save_prompt_cache = 1
            pc.prompt_cache_path = path
            keep += [pc, path]
            p.prompt_cache_params = pc
        if self.drv.abi == "1.3":
            p.max_new_tokens = max_new_tokens
            if sampling is not None:
                sp = self.ffi.new("RKLLMSamplingParam*")
                for k, v in sampling.items():
                    setattr(sp, k, v)
                keep.append(sp)
                p.sampling_params = sp
        else:
            assert not max_new_tokens and sampling is None, "1.3-only per-run options"
        return p

    # -- runs -----------------------------------------------------------------------------
    def run_input(
        self, inputs: Any, infer: Any, *, userdata: int = 0, asynchronous: bool = False
    ) -> int:
        ud = self.ffi.cast("void*", userdata)
        fn = self.lib.rkllm_run_async if asynchronous else self.lib.rkllm_run
        return int(fn(self.ptr, inputs, infer, ud))

    def run(
        self,
        text: str | None = "hi",
        *,
        role: str | None = "user",
        thinking: bool = False,
        userdata: int = 0,
        **infer: Any,
    ) -> Run:
        keep: list[Any] = []
        inp = self.prompt(text, keep, role=role, thinking=thinking)
        return self.collect(inp, self.infer(keep, **infer), userdata=userdata)

    def collect(self, inputs: Any, infer: Any, *, userdata: int = 0) -> Run:
        """Run synchronously and return the events of this run only."""
        start = len(self.rec.events)
        self.rec.done.clear()
        rc = self.run_input(inputs, infer, userdata=userdata)
        self.raise_errors()
        return Run(rc, self.rec.events[start:])

    def batch(self, inputs: Sequence[Any], infer: Any) -> Run:
        arr = self.ffi.new("RKLLMInput[]", len(inputs))
        for k, inp in enumerate(inputs):
            arr[k] = inp[0]
        return self.collect(arr, infer)

    def raise_errors(self) -> None:
        if self.rec.errors:
            raise self.rec.errors[0]

    def last_input(self) -> dict[str, Any]:
        n = self.lib.rkllm_fake_last_input(self.ptr, self.ffi.NULL, 0)
        assert n >= 0, "no run recorded"
        buf = self.ffi.new("char[]", n + 1)
        assert self.lib.rkllm_fake_last_input(self.ptr, buf, n + 1) == n
        return json.loads(self.ffi.string(buf).decode())

    def kv_text(self, batch: int = 0) -> bytes:
        """rkllm_fake_kv_text: the bytes the batch's KV cache stands for."""
        n = int(self.lib.rkllm_fake_kv_text(self.ptr, batch, self.ffi.NULL, 0))
        assert n >= 0, "rkllm_fake_kv_text refused"
        buf = self.ffi.new("char[]", n + 1)
        assert self.lib.rkllm_fake_kv_text(self.ptr, batch, buf, n + 1) == n
        return bytes(self.ffi.buffer(buf, n))

    def set_template(self, system: str, prefix: str, postfix: str) -> int:
        args = [self.ffi.new("char[]", part.encode()) for part in (system, prefix, postfix)]
        return int(self.lib.rkllm_set_chat_template(self.ptr, *args))

    def kv_sizes(self) -> list[int]:
        sizes = self.ffi.new("int[]", 8)
        assert self.lib.rkllm_get_kv_cache_size(self.ptr, sizes) == 0
        return list(sizes)[: self.rec.n_batch]

    def is_running(self) -> bool:
        rc = int(self.lib.rkllm_is_running(self.ptr))
        return rc == 0 if self.drv.abi == "1.2" else rc == 1

    def destroy(self) -> int:
        rc = int(self.lib.rkllm_destroy(self.ptr))
        if rc == 0:
            self.drv.handles.discard(self)
        return rc


class Driver:
    """The fake runtime of one ABI, with the handles a test created (destroyed at teardown)."""

    def __init__(self, abi: str) -> None:
        self.abi = abi
        self.ffi, self.lib = load(abi)
        self.handles: set[Handle] = set()

    def stats(self) -> dict[str, int]:
        s = self.ffi.new("RKLLMFakeStats*")
        self.lib.rkllm_fake_stats(s)
        return {k: int(getattr(s, k)) for k, _ in self.ffi.typeof("RKLLMFakeStats").fields}

    def params(self, model: str | Path | None, **fields: Any) -> tuple[Any, list[Any]]:
        keep: list[Any] = []
        p = self.ffi.new("RKLLMParam*", self.lib.rkllm_createDefaultParam())
        if model is not None:
            path = self.ffi.new("char[]", str(model).encode())
            keep.append(path)
            p.model_path = path
        extend = fields.pop("extend", {})
        for k, v in fields.items():
            value = v
            if isinstance(v, str):
                value = self.ffi.new("char[]", v.encode())
                keep.append(value)
            setattr(p, k, value)
        for k, v in extend.items():
            setattr(p.extend_param, k, v)
        return p, keep

    def init_raw(self, param: Any, callbacks: Any) -> tuple[int, Any]:
        handle = self.ffi.new("LLMHandle*")
        rc = int(self.lib.rkllm_init(handle, param, callbacks))
        return rc, handle[0]

    def init(
        self,
        model: str | Path,
        *,
        reply: Callable[[int, Event], int] | None = None,
        retain: bool = False,
        result_userdata: int = 0,
        tokenizer: Callable[..., int] | None = None,
        embed: Callable[..., int] | None = None,
        **fields: Any,
    ) -> Handle:
        p, keep = self.params(model, **fields)
        n_batch = max(1, int(p.extend_param.n_batch))
        rec = Recorder(n_batch=n_batch, ffi=self.ffi, reply=reply, retain=retain)
        cb = self.ffi.callback("LLMResultCallback", rec)
        keep += [cb, rec]
        if self.abi == "1.2":
            cbs = cb
        else:
            cbs = self.ffi.new("RKLLMCallback*")
            cbs.result_callback = cb
            cbs.result_userdata = self.ffi.cast("void*", result_userdata)
            if tokenizer is not None:
                tk = self.ffi.callback("LLMTokenizerCallback", tokenizer)
                keep.append(tk)
                cbs.tokenizer_callback = tk
            if embed is not None:
                em = self.ffi.callback("LLMGetEmbedCallback", embed)
                keep.append(em)
                cbs.embed_callback = em
            keep.append(cbs)
        rc, ptr = self.init_raw(p, cbs)
        assert rc == 0, f"rkllm_init failed with {rc}"
        h = Handle(self, ptr, rec, keep)
        self.handles.add(h)
        return h

    def close_all(self) -> None:
        for h in list(self.handles):
            assert h.destroy() == 0
