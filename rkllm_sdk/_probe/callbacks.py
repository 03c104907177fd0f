"""The raw-callback handle and its scenarios: every result callback exactly as the runtime makes it.

The handle's result callback is a Python function (``ffi.callback`` through
:mod:`rkllm_sdk.lowlevel`): it sees each callback's thread, whether ``text`` is NULL and
``perf``, and calls ``rkllm_is_running`` inside it. One short run, then four findings: the
callback thread, ``rkllm_is_running`` inside FINISH (A4), the terminal callback (A12), perf.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from .. import _native as native
from ..errors import ModelLoadError
from ..lowlevel import Runtime
from ..models import CallState, InferOptions, Prompt
from . import guard
from .report import Finding
from .scenario import SHORT_PROMPT, TERMINAL, TOKEN_STATES

_PERF_FIELDS = (
    "prefill_time_ms",
    "prefill_tokens",
    "generate_time_ms",
    "generate_tokens",
    "memory_usage_mb",
)


@attrs.define
class _Seen:
    """One result callback as a Python callback saw it."""

    thread: int
    state: int
    text_null: bool
    token_id: int
    perf_nonzero: bool
    is_running: int | None


def _raw_handle(
    rt: Runtime, model: Path, record: Callable[[native.NativeHandle, Any, int], int]
) -> native.NativeHandle:
    """A handle whose result callback is ``record`` (a Python function), at most 4 tokens."""
    ffi = rt.ffi
    keep: list[object] = []
    box: list[native.NativeHandle] = []

    def callback(result: Any, userdata: Any, state: int) -> int:  # Any: cdata
        del userdata
        return record(box[0], result, int(state)) if box else 0

    cb = ffi.callback("LLMResultCallback", callback)
    param = ffi.new("RKLLMParam*", rt.lib.rkllm_createDefaultParam())
    path = ffi.new("char[]", os.fsencode(model))
    param.model_path = path
    param.max_new_tokens = 4
    param.max_context_len = 512
    keep += [cb, param, path]
    handle = ffi.new("LLMHandle*")
    if rt.abi == "1.2":
        rc = rt.lib.rkllm_init(handle, param, cb)
    else:
        callbacks = ffi.new("RKLLMCallback*")
        callbacks.result_callback = cb
        keep.append(callbacks)
        rc = rt.lib.rkllm_init(handle, param, callbacks)
    if rc != 0:
        raise ModelLoadError(
            f"rkllm_init failed with return code {rc} for {str(model)!r} (runtime "
            f"{rt.version or 'unknown'}, ABI {rt.abi}); the runtime's log line above says why",
            code=rc,
        )
    h = native.NativeHandle(rt, handle[0], native.default_params(rt), keep, [])
    box.append(h)
    return h


def callback_probes(rt: Runtime, model: Path) -> list[Finding]:
    """The callback thread, rkllm_is_running inside FINISH (A4), terminal results (A12), perf."""
    seen: list[_Seen] = []
    perf_fields: dict[str, float] = {}

    def record(h: native.NativeHandle, result: Any, state: int) -> int:  # Any: cdata
        r = result[0]
        p = r.perf
        seen.append(
            _Seen(
                thread=threading.get_native_id(),
                state=state,
                text_null=r.text == rt.ffi.NULL,
                token_id=int(r.token_id),
                perf_nonzero=any(float(getattr(p, f)) != 0 for f in _PERF_FIELDS),
                is_running=int(rt.lib.rkllm_is_running(h.ptr())),
            )
        )
        if state in TERMINAL:
            perf_fields.update({f: float(getattr(p, f)) for f in _PERF_FIELDS})
        return 0

    h = _raw_handle(rt, model, record)
    caller: list[int] = []
    out: dict[str, int] = {}

    def work() -> None:
        caller.append(threading.get_native_id())
        prepared = native.prepare_run(h, Prompt(text=SHORT_PROMPT), InferOptions())
        out["rc"] = int(rt.lib.rkllm_run(h.ptr(), prepared.inputs, prepared.infer, rt.ffi.NULL))

    t = threading.Thread(target=work, name="rkllm-probe-raw", daemon=True)
    t.start()
    t.join(guard.RUN_TIMEOUT_S)
    if t.is_alive():
        guard.abort_quietly(h)
        t.join(guard.GRACE_S)
        if t.is_alive():
            raise guard.HungError(
                "callback_thread",
                "does rkllm_run return (with rkllm_is_running called inside its callback)?",
                "rkllm_run never returned; rkllm_is_running inside a callback may deadlock",
            )
    guard.destroy_idle(h, "callback_thread")
    return [
        _thread_finding(seen, caller[0], out.get("rc")),
        _finish_running_finding(seen, rt.abi),
        _terminal_finding(seen),
        _perf_finding(seen, perf_fields),
    ]


def _thread_finding(seen: list[_Seen], caller: int, rc: int | None) -> Finding:
    threads = {s.thread for s in seen}
    if not seen:
        observed, matches = "no callback came", None
    elif threads == {caller}:
        observed, matches = "the rkllm_run caller's thread", False
    elif caller in threads:
        observed, matches = "sometimes the caller's thread, sometimes another", False
    else:
        observed, matches = "another thread (not the rkllm_run caller)", True
    return Finding(
        key="callback_thread",
        assumption="-",
        ref="fake_runtime/README.md (Handles and threads)",
        question="on which thread does the result callback run during rkllm_run?",
        observed=observed,
        fake="the handle's own runtime thread, never the caller's",
        matches=matches,
        details={"callbacks": len(seen), "callback_threads": len(threads), "run_rc": rc},
    )


def _finish_running_finding(seen: list[_Seen], abi: str) -> Finding:
    during = [s.is_running for s in seen if s.state in TOKEN_STATES]
    inside = [s.is_running for s in seen if s.state in TERMINAL]
    fake_value = 1 if abi == "1.3" else 0
    if not during or not inside:
        observed, matches = "not seen (no token or no terminal callback)", None
    elif inside[-1] == during[-1]:
        observed, matches = f"still running ({inside[-1]}, as during the run)", True
    else:
        observed, matches = f"idle ({inside[-1]}; during the run: {during[-1]})", False
    return Finding(
        key="is_running_in_finish",
        assumption="A4",
        ref="fake_runtime/README.md (A4)",
        question="what does rkllm_is_running say inside the FINISH callback?",
        observed=observed,
        fake=f"still running ({fake_value} on ABI {abi}) until the terminal callback returns",
        matches=matches,
        details={"during_run": during[-1:] or None, "inside_finish": inside[-1:] or None},
    )


def _terminal_finding(seen: list[_Seen]) -> Finding:
    ends = [s for s in seen if s.state in TERMINAL]
    after = seen.index(ends[0]) + 1 if ends else len(seen)
    details = {
        "terminal_callbacks": len(ends),
        "terminal_state": CallState(ends[0].state).name if ends else None,
        "text_null": [s.text_null for s in ends],
        "token_id": [s.token_id for s in ends],
        "callbacks_after_terminal": len(seen) - after,
    }
    good = len(ends) == 1 and ends[0].text_null and after == len(seen)
    observed = (
        "one terminal callback, text NULL"
        if good
        else f"{len(ends)} terminal callback(s), text NULL: {details['text_null']}"
    )
    return Finding(
        key="terminal_callback",
        assumption="A12",
        ref="fake_runtime/README.md (A12)",
        question="how many terminal callbacks does a run make, and what text do they carry?",
        observed=observed,
        fake="exactly one terminal callback (FINISH / ERROR), text NULL, token_id -1",
        matches=good if ends else None,
        details=details,
    )


def _perf_finding(seen: list[_Seen], fields: dict[str, float]) -> Finding:
    zero = sorted(f for f, v in fields.items() if v == 0)
    early = sum(s.perf_nonzero for s in seen if s.state in TOKEN_STATES)
    if not fields:
        observed, matches = "no terminal callback", None
    else:
        observed = "filled at FINISH" if not zero else f"zero at FINISH: {', '.join(zero)}"
        observed += "; zero before" if not early else f"; non-zero in {early} token callbacks"
        matches = not zero and not early
    return Finding(
        key="perf_at_finish",
        assumption="-",
        ref="fake_runtime/README.md (Callbacks)",
        question="are the perf fields filled at FINISH (and zero in the other callbacks)?",
        observed=observed,
        fake="filled at FINISH (prefill / generate times and tokens, memory), zero before",
        matches=matches,
        details={"at_finish": fields, "token_callbacks_with_perf": early},
    )
