"""The runtime's functions as JSON-RPC methods, each served through the SDK's public API.

``rkllm_run`` streams while other requests (``rkllm_abort``, ``rkllm_is_running``) are
served on the same connection. ``rkllm_run_async`` answers at once; its results wait in a
bounded buffer (:mod:`.polling`) that ``rkllm_get_run_results`` reads with a cursor.
"""

from __future__ import annotations

import functools
from typing import Any

import anyio
import anyio.to_thread
import attrs

from .. import Chunk, TokenStream, _native
from ..arrays import FloatArray
from ..errors import BusyError
from ..llm import AsyncLLM
from ..lowlevel import load_runtime
from ..models import InferMode, Input
from ..options import RunOptions
from .params import (
    HANDLE,
    INFER_PARAM,
    INPUT,
    RKLLM_PARAM,
    input_models,
    param_json,
    param_model,
    sampling_model,
)
from .polling import Run
from .registry import REGISTRY, Call
from .schema import boolean, integer, nullable, obj, string
from .sessions import Entry, confine
from .wire import ParamsError, encode_array, perf_json

__all__: list[str] = []

HANDLE_ONLY = obj({"handle": HANDLE}, "handle")
EMPTY: dict[str, Any] = {"type": "object", "properties": {}}

#: rkllm_get_run_results: most results per reply, longest wait.
MAX_FETCH, MAX_WAIT_MS = 1024, 30_000


def owned_entry(call: Call, params: dict[str, Any]) -> Entry:
    """The handle named in ``params``, if this peer owns it (else -32602)."""
    return call.connection.sessions.get(call.connection, params["handle"])


@REGISTRY.method(
    "rkllm_createDefaultParam",
    "The runtime's default RKLLMParam (model_path null).",
    params=obj({}),
    result=obj({"param": RKLLM_PARAM}),
)
async def create_default_param(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    config = call.connection.sessions.config
    rt = await anyio.to_thread.run_sync(
        functools.partial(load_runtime, config.runtime, abi=config.abi)
    )
    return {"param": param_json(_native.default_params(rt))}


@REGISTRY.method(
    "rkllm_init",
    "Load a model (param.model_path inside --models-dir); returns an opaque handle owned "
    "by this connection.",
    params=obj({"param": RKLLM_PARAM}, "param"),
    result=obj({"handle": HANDLE, "abi": string(), "is_fake": boolean()}),
)
async def rkllm_init(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    sessions = call.connection.sessions
    param = params["param"]
    if "model_path" not in param:
        raise ParamsError("param.model_path", "required field missing")
    path = confine(param["model_path"], sessions.config.models_dir, "param.model_path")
    model_params = param_model(param, "param")
    sessions.check_room(call.connection)
    llm = await AsyncLLM.load(
        path, runtime=sessions.config.runtime, abi=sessions.config.abi, params=model_params
    )
    handle = sessions.add(call.connection, llm)
    return {"handle": handle, "abi": llm.runtime.abi, "is_fake": llm.runtime.is_fake}


@REGISTRY.method(
    "rkllm_destroy", "Abort what runs, destroy the handle.", params=HANDLE_ONLY, result=EMPTY
)
async def rkllm_destroy(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    await call.connection.sessions.destroy(owned_entry(call, params))
    return {}


def _run_options(infer: dict[str, Any], cache_dir: Any) -> RunOptions:
    options: RunOptions = {"keep_history": infer.get("keep_history", False)}
    if infer.get("lora_params"):
        options["lora"] = infer["lora_params"]["lora_adapter_name"]
    cache = infer.get("prompt_cache_params")
    if cache and cache.get("save_prompt_cache", True):
        options["prompt_cache"] = confine(
            cache["prompt_cache_path"],
            cache_dir,
            "rkllm_infer_params.prompt_cache_params.prompt_cache_path",
        )
    if infer.get("sampling_params"):
        options["sampling"] = sampling_model(
            infer["sampling_params"], "rkllm_infer_params.sampling_params"
        )
    if infer.get("max_new_tokens"):
        options["max_new_tokens"] = infer["max_new_tokens"]
    return options


def _array_bytes(inputs: list[Input]) -> int:
    total = 0
    for item in inputs:
        for name in ("ids", "embeddings"):
            arr = getattr(item, name, None)
            total += arr.nbytes if arr is not None else 0
        for part in (getattr(item, "image", None), getattr(item, "video", None)):
            total += part.embeddings.nbytes if part is not None else 0
    return total


_RUN_PARAMS = obj(
    {
        "handle": HANDLE,
        "rkllm_input": {"oneOf": [INPUT, {"type": "array", "items": INPUT, "maxItems": 8}]},
        "rkllm_infer_params": INFER_PARAM,
    },
    "handle",
    "rkllm_input",
)


@attrs.frozen
class _Prepared:
    """One run's inputs and options, checked."""

    entry: Entry
    prompt: Input | list[Input]
    mode: InferMode
    options: RunOptions
    array_bytes: int

    @property
    def batched(self) -> bool:
        return isinstance(self.prompt, list)


def _prepare(call: Call, params: dict[str, Any]) -> _Prepared:
    sessions = call.connection.sessions
    entry = owned_entry(call, params)
    inputs = input_models(params["rkllm_input"], "rkllm_input")
    infer = params.get("rkllm_infer_params", {})
    options = _run_options(infer, sessions.config.prompt_cache_dir)
    return _Prepared(
        entry=entry,
        prompt=inputs[0] if isinstance(params["rkllm_input"], dict) else inputs,
        mode=InferMode(infer.get("mode", 0)),
        options=options,
        array_bytes=_array_bytes(inputs),
    )


def _note(chunk: Chunk, batched: bool, note: dict[str, Any]) -> dict[str, Any] | None:
    """A chunk as a result (a notification's params) filled into ``note`` (empty, or a fresh
    ``{"id": ...}`` for a notification: no copy per token to add it), or None when the chunk
    holds nothing."""
    if not chunk.text and not chunk.token_ids:
        return None
    note["state"] = "RKLLM_RUN_NORMAL"
    note["text"] = chunk.text
    note["token_id"] = chunk.token_ids[-1] if chunk.token_ids else None
    note["token_ids"] = list(chunk.token_ids)
    if batched:
        note["batch"] = chunk.batch
    return note


def _final(call: Call, s: TokenStream, batched: bool) -> dict[str, Any]:
    """The response of a finished generation (every batch entry's in ``results``)."""
    results = [
        {
            "state": "RKLLM_RUN_FINISH",
            "finish_reason": g.finish_reason,
            "text": g.text,
            "token_ids": list(g.token_ids),
            "perf": perf_json(g.perf),
        }
        for g in s.results()
    ]
    for g in s.results():
        call.connection.sessions.metrics.run_finished(g.perf)
    return {**results[0], "results": results} if batched else results[0]


@REGISTRY.method(
    "rkllm_run",
    "Run one input (or one per batch entry). Mode RKLLM_INFER_GENERATE streams rkllm_result "
    "notifications {id, seq, state, text, token_id, token_ids} and answers with the finish "
    "state, text, finish_reason and perf; GET_LOGITS / GET_LAST_HIDDEN_LAYER answer with "
    "the array in the typed form.",
    params=_RUN_PARAMS,
    result={"type": "object"},
    notifications=True,
)
async def rkllm_run(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    run = _prepare(call, params)
    async with call.connection.sessions.run_slot(run.entry, run.array_bytes):
        if run.mode is not InferMode.GENERATE:
            return await _arrays(run.entry.llm, run.prompt, run.mode, run.options)
        async with run.entry.llm.stream(run.prompt, **run.options) as s:
            async for chunk in s:
                note = _note(chunk, run.batched, {"id": call.request_id})
                if note is not None:
                    call.notify_result(note)
    return _final(call, s, run.batched)


@REGISTRY.method(
    "rkllm_run_async",
    "Start a run (params as rkllm_run) and answer at once with its opaque id; it queues on "
    "the handle like any run. Fetch its results with rkllm_get_run_results.",
    params=_RUN_PARAMS,
    result=obj({"run": string()}, "run"),
)
async def rkllm_run_async(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    sessions = call.connection.sessions
    tasks = call.connection.tasks
    if tasks is None:
        raise BusyError("this connection is not being served: it cannot start async runs")
    run = _prepare(call, params)
    sessions.polled.check_room(call.connection)
    release = sessions.reserve(run.entry, run.array_bytes)
    # FIFO among the handle's async runs whatever order their tasks start in: each enters
    # the handle's queue once the one before has taken the handle (or ended).
    before, turn = run.entry.async_turn, anyio.Event()
    run.entry.async_turn = turn

    async def drive(buffer: Run) -> dict[str, Any]:
        try:
            if before is not None:
                await before.wait()
            if run.mode is not InferMode.GENERATE:
                return await _arrays(run.entry.llm, run.prompt, run.mode, run.options)
            async with run.entry.llm.stream(run.prompt, **run.options) as s:
                turn.set()
                if not await _pump(s, buffer, run.batched):
                    return buffer.aborted_final()  # aborted while paused or queued
            return _final(call, s, run.batched)
        finally:
            turn.set()
            release()

    started = sessions.polled.start(call.connection, run.entry.id, tasks, drive)
    return {"run": started.id}


async def _pump(s: TokenStream, buffer: Run, batched: bool) -> bool:
    """Iterate ``s`` into ``buffer``; False when the buffer was aborted first."""
    if buffer.aborted:
        return False
    async for chunk in s:
        note = _note(chunk, batched, {})
        if note is not None and not await buffer.put(note):
            return False
    return True


_RESULT = obj(
    {
        "seq": integer(0),
        "state": string(),
        "text": string(),
        "token_id": nullable(integer()),
        "token_ids": {"type": "array", "items": integer()},
        "batch": integer(0),
    }
)


@REGISTRY.method(
    "rkllm_get_run_results",
    "The results of an rkllm_run_async run from `cursor` on (at most `max`; those below "
    "`cursor` are dropped), waiting up to `wait_ms` when none is new. `done` once the run "
    "is over and every result fetched, with `final` (state, finish_reason, text, perf, or "
    "error). A full buffer pauses the run until fetched.",
    params=obj(
        {
            "run": string(max_length=64),
            "cursor": integer(0),
            "max": integer(1, MAX_FETCH),
            "wait_ms": integer(0, MAX_WAIT_MS),
        },
        "run",
    ),
    result=obj(
        {
            "run": string(),
            "results": {"type": "array", "items": _RESULT},
            "cursor": integer(0),
            "done": boolean(),
            "paused": boolean(),
            "final": {"type": "object"},
        },
        "run",
        "results",
        "cursor",
        "done",
        "paused",
    ),
    c_function=False,
)
async def rkllm_get_run_results(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    polled = call.connection.sessions.polled
    buffer = polled.get(call.connection, params["run"])
    cursor, most = params.get("cursor", 0), params.get("max", MAX_FETCH)
    reply = buffer.fetch(cursor, most)
    wait_ms = params.get("wait_ms", 0)
    if not reply["results"] and not reply["done"] and wait_ms:
        with anyio.move_on_after(wait_ms / 1e3):
            await buffer.wait_beyond(cursor)
        reply = buffer.fetch(cursor, most)
    polled.get(call.connection, params["run"])  # fetched now (or unknown if it was closed)
    return reply


async def _arrays(
    llm: AsyncLLM, prompt: Input | list[Input], mode: InferMode, options: RunOptions
) -> dict[str, Any]:
    extra = set(options) - {"keep_history"}
    if extra:
        raise ParamsError("rkllm_infer_params", f"{sorted(extra)} apply to GENERATE runs only")
    keep = bool(options.get("keep_history", False))
    if mode is InferMode.GET_LOGITS:
        arr = await llm.logits(prompt, keep_history=keep)
        return _array_answer("logits", "logits", "vocab_size", arr)
    arr = await llm.hidden_states(prompt, keep_history=keep)
    return _array_answer("last_hidden_layer", "hidden_states", "embd_size", arr)


def _array_answer(field: str, name: str, width: str, arr: FloatArray) -> dict[str, Any]:
    """A finished array run's response: ``arr`` (tokens x width) under ``field`` as the C
    struct has it (``name`` typed, ``width`` and ``num_tokens`` from its shape)."""
    return {
        "state": "RKLLM_RUN_FINISH",
        field: {name: encode_array(arr), width: int(arr.shape[1]), "num_tokens": int(arr.shape[0])},
    }


@REGISTRY.method(
    "rkllm_abort",
    "Abort the run in progress on the handle (its rkllm_run answers finish_reason abort), "
    "and the handle's rkllm_run_async runs (queued ones too).",
    params=HANDLE_ONLY,
    result=EMPTY,
)
async def rkllm_abort(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    entry = owned_entry(call, params)
    call.connection.sessions.polled.abort_handle(entry.id)
    entry.llm.abort()
    return {}


@REGISTRY.method(
    "rkllm_is_running",
    "Whether the runtime reports a task in progress on the handle.",
    params=HANDLE_ONLY,
    result=obj({"is_running": boolean()}),
)
async def rkllm_is_running(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    return {"is_running": owned_entry(call, params).llm.is_running()}
