"""``rkllm doctor --probe``: observe, on whatever runtime is loaded, what the vendor leaves open.

The bundled fake runtime had to choose where Rockchip's documentation is silent; its choices
are the assumptions listed in ``fake_runtime/README.md`` (A1..A20) and ``docs/assumptions.md``
(S1..S7). The probe runs one short scenario per choice that can be seen from outside the
runtime and reports, for each, what this runtime did and whether it is what the fake does.
On the fake it reports the fake's own choices; on a board it settles them.

Two handles are used, one after the other (never both loaded at once):

1. a raw handle whose result callback is a Python function (``ffi.callback``): it sees every
   callback exactly as the runtime makes it (its thread, ``text`` NULL or not, ``perf``) and
   calls ``rkllm_is_running`` inside it;
2. a handle made by :func:`rkllm_sdk._native.init` with the SDK's C bridge, whose
   :class:`~rkllm_sdk._native.Channel` gives the states and texts of each callback as the
   runtime gave them, while the probe aborts, pauses, reads the KV cache and finally
   destroys the handle during a run.

Every ``rkllm_run`` runs in a worker thread and every wait has a timeout: a runtime that
never returns is reported as "hung" (and the probe stops) instead of hanging the probe.
Blocking throughout: call it from a worker thread in async code.
"""

from __future__ import annotations

import os
import re
import select
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from . import _native as native
from .errors import GenerationError, ModelLoadError, NativeCallError, RKLLMError
from .lowlevel import Runtime, detect_version, load_runtime
from .models import CallState, InferOptions, ModelParams, Prompt
from .results import PerfStats

__all__ = [
    "LONG_PROMPT",
    "PROBE_PROMPT",
    "REPORT_HINT",
    "SHORT_PROMPT",
    "Finding",
    "ProbeReport",
    "run_probe",
]

#: Asks for a reply with CJK characters and an emoji: their bytes are split across tokens,
#: which is what makes a runtime send WAITING callbacks. (The fake's demo model answers
#: prompts containing "Hello" with a reply ending in "你好 🙂".)
PROBE_PROMPT = (
    "Hello! Please greet me in Chinese characters, like 你好, and end with an emoji such as 🙂."
)
#: A prompt with a short answer (KV cache, pause and resume).
SHORT_PROMPT = "Reply with one word: OK."
#: A prompt with a long answer (abort latency, destroy while running).
LONG_PROMPT = "Count from 1 to 100, one number per line."
#: Where to send the output.
REPORT_HINT = (
    "Please report this output: open an issue at the rkllm-sdk repository with the output "
    "of `rkllm doctor --probe MODEL --json` (and your board, SoC and runtime version)."
)

#: Init limit on generated tokens (runtime 1.2 has no per-run limit).
MAX_NEW_TOKENS = 96
#: Per-run limit of the short runs on runtime 1.3.
SHORT_NEW_TOKENS = 8
#: A run that has not returned after this long is aborted.
RUN_TIMEOUT_S = 60.0
#: After an abort or a destroy, how long the runtime gets before it counts as hung.
GRACE_S = 10.0
#: A ``rkllm_abort`` call taking longer than this is not "quick" (S6).
QUICK_CALL_MS = 100.0

_VERSION_LINE = re.compile(rb"rkllm-runtime version[^\x00\n]{0,100}")
_TERMINAL = (CallState.FINISH, CallState.ERROR)
_TOKEN_STATES = (CallState.NORMAL, CallState.WAITING)
_PERF_FIELDS = (
    "prefill_time_ms",
    "prefill_tokens",
    "generate_time_ms",
    "generate_tokens",
    "memory_usage_mb",
)


@attrs.frozen(kw_only=True)
class Finding:
    """What the probe saw for one assumption.

    Attributes:
        key: a stable name (``waiting_text``, ``is_running_polarity``, ...).
        assumption: its id in ``fake_runtime/README.md`` (``A11``) or ``docs/assumptions.md``
            (``S1``), or ``-`` for behaviour the README states without numbering it.
        ref: where the fake's choice is written down.
        question: what was asked of the runtime.
        observed: what this runtime did, in a few words.
        fake: what the fake runtime does (its default choice).
        matches: whether ``observed`` is the fake's choice; None when the probe could not tell.
        details: the raw observations (JSON values).
        note: anything the reader should know (how to reproduce it on the fake, why unknown).
    """

    key: str
    assumption: str
    ref: str
    question: str
    observed: str
    fake: str
    matches: bool | None
    details: dict[str, Any] = attrs.field(factory=dict)  # Any: JSON values
    note: str = ""

    def to_dict(self) -> dict[str, Any]:  # Any: JSON values
        """The finding as JSON-ready data."""
        return attrs.asdict(self)


@attrs.frozen(kw_only=True)
class ProbeReport:
    """Every finding of :func:`run_probe`, and where they were observed."""

    runtime_path: str
    runtime_version: str | None
    abi: str
    is_fake: bool
    model: str
    findings: tuple[Finding, ...]
    hung: bool  # a call never returned: the probe stopped there
    duration_s: float

    @property
    def ok(self) -> bool:
        """True when every step ran and nothing hung (differences from the fake are fine)."""
        return not self.hung

    def to_dict(self) -> dict[str, Any]:  # Any: JSON values
        """The report as JSON-ready data, with counts and where to report it."""
        counts = {
            "match": sum(f.matches is True for f in self.findings),
            "differ": sum(f.matches is False for f in self.findings),
            "unknown": sum(f.matches is None for f in self.findings),
        }
        return {
            "runtime": {
                "path": self.runtime_path,
                "version": self.runtime_version,
                "abi": self.abi,
                "fake": self.is_fake,
            },
            "model": self.model,
            "findings": [f.to_dict() for f in self.findings],
            "counts": counts,
            "hung": self.hung,
            "ok": self.ok,
            "duration_s": round(self.duration_s, 3),
            "report": REPORT_HINT,
        }


class _HungError(Exception):
    """A runtime call that did not return in time; the probe stops at its finding."""

    def __init__(self, finding: Finding) -> None:
        super().__init__(finding.observed)
        self.finding = finding


# ---- running and observing ---------------------------------------------------------------


@attrs.define
class _Run:
    """One ``rkllm_run`` in a worker thread, delivering into a bridge channel."""

    channel: native.Channel
    thread: threading.Thread
    states: list[int] = attrs.field(factory=list)
    texts: list[bytes | None] = attrs.field(factory=list)
    stamps: list[int] = attrs.field(factory=list)  # CLOCK_MONOTONIC ns of each callback
    perf: list[PerfStats] = attrs.field(factory=list)  # per batch, at the end
    rc: int | None = None  # what rkllm_run returned (None: still running)
    returned_ns: int | None = None
    error: str | None = None  # anything else the call raised

    def pump(self, timeout: float) -> bool:
        """Take what is pending, or wait up to ``timeout`` for more; True once run_done."""
        drained = self.channel.drain()
        self.states += drained.states
        self.texts += drained.texts
        self.stamps += drained.callback_ns
        if drained.perf:
            self.perf = list(drained.perf)
        if drained.run_done:
            return True
        if not drained.states:  # an empty drain arms the fd: the next event wakes it
            select.select([self.channel.fd], [], [], timeout)
            self.channel.ack()
        return False

    def wait_tokens(self, timeout: float) -> bool:
        """Drain until a token callback has come: True, or False when the run ended first.

        With ``max_pending=1`` the runtime can then queue one more callback and blocks in
        the next one until the probe drains again: the run is certainly still going.
        """
        deadline = time.monotonic() + timeout
        while self.tokens == 0:
            if self.pump(0.05) or time.monotonic() > deadline:
                return False
        return True

    @property
    def tokens(self) -> int:
        """Token callbacks (NORMAL and WAITING) seen so far."""
        return sum(s in _TOKEN_STATES for s in self.states)

    @property
    def terminal(self) -> str | None:
        """The name of the terminal state seen, if any."""
        ends = [CallState(s).name for s in self.states if s in _TERMINAL]
        return ends[-1] if ends else None


def _start(
    h: native.NativeHandle,
    text: str,
    *,
    keep_history: bool = False,
    max_new_tokens: int | None = None,
    max_pending: int = 65536,
) -> _Run:
    """Start ``rkllm_run`` of one prompt on a worker thread (daemon: it may never return)."""
    options = InferOptions(
        keep_history=keep_history,
        max_new_tokens=max_new_tokens if h.runtime.abi == "1.3" else None,
    )
    prepared = native.prepare_run(h, Prompt(text=text), options)
    channel = native.Channel(h.runtime, h.n_batch, max_pending=max_pending)
    box: list[_Run] = []

    def work() -> None:
        run = box[0]
        rc = 0
        try:
            native.run_prepared(h, prepared, channel)
        except GenerationError as exc:
            rc = exc.code if exc.code is not None else -1
        except BaseException as exc:  # reported in the finding, never lost on this thread
            run.error = f"{type(exc).__name__}: {exc}"
            rc = -1
        finally:
            run.returned_ns = time.monotonic_ns()
            run.rc = rc
            channel.set_done(rc)

    run = _Run(channel, threading.Thread(target=work, name="rkllm-probe-run", daemon=True))
    box.append(run)
    run.thread.start()
    return run


def _finish(
    h: native.NativeHandle, run: _Run, key: str, question: str, *, timeout: float = RUN_TIMEOUT_S
) -> _Run:
    """Drain the run to its end; abort it after ``timeout``; raise :class:`_HungError` if stuck."""
    deadline = time.monotonic() + timeout
    while not run.pump(0.05):
        if time.monotonic() > deadline:
            _abort_quietly(h)
            grace = time.monotonic() + GRACE_S
            while not run.pump(0.05):
                if time.monotonic() > grace:
                    run.channel.close()  # release a runtime thread blocked in the callback
                    raise _HungError(
                        _hung_finding(
                            key,
                            question,
                            f"rkllm_run did not return "
                            f"within {timeout:g} s nor {GRACE_S:g} s after "
                            "rkllm_abort",
                        )
                    )
            break
    run.thread.join()
    run.channel.free()
    return run


def _abort_quietly(h: native.NativeHandle) -> int:
    try:
        native.abort(h)
    except NativeCallError as exc:
        return exc.code if exc.code is not None else -1
    return 0


def _hung_finding(key: str, question: str, what: str) -> Finding:
    return Finding(
        key=key,
        assumption="-",
        ref="fake_runtime/README.md",
        question=question,
        observed=f"hung: {what}",
        fake="returns",
        matches=False,
    )


def _destroy_idle(h: native.NativeHandle, key: str) -> None:
    """``rkllm_destroy`` of an idle handle, guarded: a call that never returns is a hang."""
    errors: list[BaseException] = []

    def destroy() -> None:
        try:
            native.destroy(h)
        except BaseException as exc:  # raised below, on the probe's thread
            errors.append(exc)

    t = threading.Thread(target=destroy, name="rkllm-probe-destroy", daemon=True)
    t.start()
    t.join(GRACE_S)
    if t.is_alive():
        raise _HungError(
            _hung_finding(
                key,
                "does rkllm_destroy of an idle handle return?",
                f"rkllm_destroy of an idle handle did not return within {GRACE_S:g} s",
            )
        )
    if errors:
        raise errors[0]


def _raw_is_running(h: native.NativeHandle) -> int:
    """``rkllm_is_running`` as the runtime returned it (its polarity differs by ABI)."""
    return int(h.runtime.lib.rkllm_is_running(h.ptr()))


# ---- the probes --------------------------------------------------------------------------


def _version_line(rt: Runtime) -> Finding:
    data = rt.path.read_bytes()
    lines = [m.group(0).decode("utf-8", "replace") for m in _VERSION_LINE.finditer(data)][:5]
    version = detect_version(rt.path)
    if version is not None:
        observed, matches = f"embedded whole: {version}", True
    elif lines:
        observed, matches = "only a format string (the version is stored apart)", False
    else:
        observed, matches = "no 'rkllm-runtime version' text in the library", False
    return Finding(
        key="version_line",
        assumption="S1",
        ref="docs/assumptions.md (S1); fake_runtime/README.md (Files and build)",
        question="does the library embed its version line as literal text?",
        observed=observed,
        fake="embeds 'rkllm-runtime version: X.Y.Z' whole",
        matches=matches,
        details={"strings": lines, "detected_version": version},
        note="" if matches else "ABI detection cannot tell this runtime's version: pass --abi",
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


def _callback_probes(rt: Runtime, model: Path) -> list[Finding]:
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
        if state in _TERMINAL:
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
    t.join(RUN_TIMEOUT_S)
    if t.is_alive():
        _abort_quietly(h)
        t.join(GRACE_S)
        if t.is_alive():
            raise _HungError(
                _hung_finding(
                    "callback_thread",
                    "does rkllm_run return (with rkllm_is_running called inside its callback)?",
                    "rkllm_run never returned; rkllm_is_running inside a callback may deadlock",
                )
            )
    _destroy_idle(h, "callback_thread")
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
    during = [s.is_running for s in seen if s.state in _TOKEN_STATES]
    inside = [s.is_running for s in seen if s.state in _TERMINAL]
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
    ends = [s for s in seen if s.state in _TERMINAL]
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
    early = sum(s.perf_nonzero for s in seen if s.state in _TOKEN_STATES)
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


def _classify(text: bytes | None) -> str:
    if text is None:
        return "NULL"
    if text == b"":
        return "empty"
    try:
        text.decode("utf-8")
    except UnicodeDecodeError:
        return "partial bytes"
    return "complete characters"


def _decodes_alone(text: bytes) -> bool:
    try:
        text.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _waiting_probe(h: native.NativeHandle) -> list[Finding]:
    """What WAITING callbacks carry (A11), and rkllm_is_running during and after a run."""
    run = _start(h, PROBE_PROMPT, max_pending=1)
    # One event queued and the next callback held back by the channel: the run is going.
    during = _raw_is_running(h) if run.wait_tokens(RUN_TIMEOUT_S) else None
    _finish(h, run, "waiting_text", "what do WAITING callbacks carry?")
    after = _raw_is_running(h)
    return [_waiting_finding(run), _polarity_finding(h.runtime.abi, during, after)]


def _waiting_finding(run: _Run) -> Finding:
    tokens = [(s, t) for s, t in zip(run.states, run.texts, strict=True) if s in _TOKEN_STATES]
    waiting = [_classify(t) for s, t in tokens if s == CallState.WAITING]
    whole = b"".join(t or b"" for _, t in tokens)
    normal = [t or b"" for s, t in tokens if s == CallState.NORMAL]
    multibyte = sum(ord(c) > 0x7F for c in whole.decode("utf-8", "replace"))
    details = {
        "token_callbacks": len(tokens),
        "waiting_callbacks": len(waiting),
        "waiting_texts": sorted(set(waiting)),
        "multibyte_characters": multibyte,
        "reply": whole.decode("utf-8", "replace"),
        "normal_texts_decode_alone": all(_decodes_alone(t) for t in normal),
    }
    kinds = sorted(set(waiting))
    note = ""
    if not waiting:
        matches: bool | None = None
        if multibyte:
            observed = "no WAITING callback (multi-byte characters came in NORMAL callbacks)"
        else:
            observed = "unknown: the reply had no multi-byte characters"
            note = "the probe needs a reply with CJK or emoji: try a model that answers in Chinese"
    elif len(kinds) > 1:
        observed, matches = f"mixed: {', '.join(kinds)}", False
    else:
        observed = {"empty": '"" (empty)'}.get(kinds[0], kinds[0])
        matches = kinds[0] == "empty"
        if kinds[0] == "partial bytes":
            note = 'the fake does this with "waiting_text": "partial" in the model file'
    return Finding(
        key="waiting_text",
        assumption="A11",
        ref="fake_runtime/README.md (A11, Callbacks)",
        question='what does a WAITING callback\'s text carry (NULL, "", partial bytes, '
        "complete characters)?",
        observed=observed,
        fake='"" (waiting_text "held": the split character comes whole in the next NORMAL)',
        matches=matches,
        details=details,
        note=note,
    )


def _polarity_finding(abi: str, during: int | None, after: int) -> Finding:
    fake_during, fake_idle = (1, 0) if abi == "1.3" else (0, -1)
    return Finding(
        key="is_running_polarity",
        assumption="-",
        ref="fake_runtime/README.md (Handles and threads); docs/assumptions.md (1.2 header)",
        question="what does rkllm_is_running return during a run and after it?",
        observed=f"during {during}, after {after}",
        fake=f"during {fake_during}, after {fake_idle} (ABI {abi})",
        matches=None if during is None else (during, after) == (fake_during, fake_idle),
        details={"during": during, "after": after},
    )


def _abort_probes(h: native.NativeHandle) -> list[Finding]:
    """An abort on an idle handle (kept or lost?), then the latency of an abort in a run."""
    idle_rc = _abort_quietly(h)
    run = _start(h, LONG_PROMPT)
    first = run.wait_tokens(RUN_TIMEOUT_S)
    t0 = time.monotonic_ns()
    abort_rc = _abort_quietly(h)
    call_ms = (time.monotonic_ns() - t0) / 1e6
    _finish(h, run, "abort_latency", "how long after rkllm_abort does rkllm_run return?")
    before = [s for s, ns in zip(run.states, run.stamps, strict=True) if ns < t0]
    tokens_before = sum(s in _TOKEN_STATES for s in before)
    tokens_after = run.tokens - tokens_before
    ended_before = CallState.FINISH in before or CallState.ERROR in before
    lost = tokens_before > 0 or not first
    idle = Finding(
        key="abort_before_run",
        assumption="-",
        ref="fake_runtime/README.md (Abort)",
        question="is an rkllm_abort on an idle handle lost, or does it stop the next run?",
        observed=f"lost (returned {idle_rc}; the next run went on)"
        if lost
        else f"kept (returned {idle_rc}; the next run stopped before its first token)",
        fake="lost: returns 0 and does nothing",
        matches=lost and idle_rc == 0,
        details={"rc": idle_rc, "next_run_tokens_before_abort": tokens_before},
    )
    latency_ms = (
        (run.returned_ns - t0) / 1e6 if run.returned_ns is not None and not ended_before else None
    )
    details = {
        "latency_ms": None if latency_ms is None else round(latency_ms, 2),
        "abort_call_ms": round(call_ms, 3),
        "abort_rc": abort_rc,
        "tokens_after_abort": tokens_after,
        "terminal_state": run.terminal,
        "run_rc": run.rc,
    }
    if latency_ms is None:
        observed, matches = "unknown: the run ended before the abort", None
    else:
        observed = (
            f"{latency_ms:.1f} ms to return ({tokens_after} token(s) after it, "
            f"then {run.terminal}); the call itself {call_ms:.2f} ms"
        )
        matches = run.terminal == "FINISH" and run.rc == 0 and call_ms < QUICK_CALL_MS
    latency = Finding(
        key="abort_latency",
        assumption="A12, S6",
        ref="fake_runtime/README.md (Abort, A12); docs/assumptions.md (S6)",
        question="how long from rkllm_abort to rkllm_run returning, and how does the run end?",
        observed=observed,
        fake="the call returns at once; the run stops before its next token, then FINISH, rc 0",
        matches=matches,
        details=details,
    )
    return [idle, latency]


def _kv_probe(h: native.NativeHandle) -> tuple[Finding, int | None]:
    """KV cache sizes after keep-history runs and a single-turn run (A14)."""
    native.clear_kv_cache(h)
    sizes: list[int] = []
    counts: list[int] = []
    first_prefill: int | None = None
    for keep in (True, True, False):
        run = _finish(
            h,
            _start(h, SHORT_PROMPT, keep_history=keep, max_new_tokens=SHORT_NEW_TOKENS),
            "kv_cache",
            "how big is the KV cache after each run?",
        )
        sizes.append(native.kv_cache_size(h)[0])
        perf = run.perf[0] if run.perf else None
        if first_prefill is None and perf is not None:
            first_prefill = perf.prefill_tokens
        counts.append(perf.prefill_tokens + perf.generate_tokens if perf else -1)
    kept, grew, emptied = sizes[0] > 0, sizes[1] > sizes[0], sizes[2] == 0
    return (
        Finding(
            key="kv_cache",
            assumption="A14",
            ref="fake_runtime/README.md (A14, KV cache)",
            question="how many tokens are in the KV cache after keep_history=1 runs, and after "
            "a keep_history=0 run?",
            observed=f"after keep_history=1: {sizes[0]}, after another: {sizes[1]}, "
            f"after keep_history=0: {sizes[2]}",
            fake="keep_history=1 keeps prompt + reply and grows; keep_history=0 empties it after",
            matches=kept and grew and emptied,
            details={
                "sizes": sizes,
                "prefill_plus_generated": counts,
                "first_equals_prefill_plus_generated": sizes[0] == counts[0],
            },
        ),
        first_prefill,
    )


def _pause_probe(h: native.NativeHandle, fresh_prefill: int | None) -> Finding:
    """A callback returning 1 (pause), then a new run on the kept cache."""
    run = _start(h, SHORT_PROMPT, max_new_tokens=SHORT_NEW_TOKENS, max_pending=1)
    before = 0
    if run.wait_tokens(RUN_TIMEOUT_S):
        before = run.tokens
        run.channel.pause()  # the next callback to read the flag returns 1
    _finish(h, run, "pause_resume", "what does a callback returning 1 do?")
    paused_kv = native.kv_cache_size(h)[0]
    resumed = _finish(
        h,
        _start(h, SHORT_PROMPT, max_new_tokens=SHORT_NEW_TOKENS),
        "pause_resume",
        "does a run after a pause continue?",
    )
    resumed_prefill = resumed.perf[0].prefill_tokens if resumed.perf else None
    after_kv = native.kv_cache_size(h)[0]
    # A callback already past its event but not yet back can be the one that returns 1.
    paused_after = run.tokens - before
    continued = (
        resumed_prefill is not None
        and fresh_prefill is not None
        and resumed_prefill < fresh_prefill
    )
    details = {
        "tokens_after_pause_request": paused_after,
        "paused_terminal_state": run.terminal,
        "kv_after_pause": paused_kv,
        "resumed_rc": resumed.rc,
        "resumed_tokens": resumed.tokens,
        "resumed_prefill_tokens": resumed_prefill,
        "fresh_prefill_tokens": fresh_prefill,
        "kv_after_resumed_run": after_kv,
    }
    matches = (
        run.terminal == "FINISH"
        and paused_after <= 2
        and paused_kv > 0
        and resumed.rc == 0
        and resumed.tokens > 0
        and continued
    )
    return Finding(
        key="pause_resume",
        assumption="A12",
        ref="fake_runtime/README.md (A12, Callbacks, KV cache)",
        question="does returning 1 from the callback pause (FINISH, cache kept) so that a new "
        "run continues?",
        observed=(
            f"stopped after {paused_after} more token(s), then {run.terminal}; "
            f"cache kept: {paused_kv} tokens; the next run "
            + ("continued it (no system prompt again)" if continued else "started afresh")
            + f", rc {resumed.rc}"
        ),
        fake="stops after that token, then FINISH; the cache is kept (even with keep_history=0) "
        "and the next run appends to it",
        matches=matches,
        details=details,
    )


def _destroy_probe(h: native.NativeHandle) -> Finding:
    """rkllm_destroy from another thread while a run is going, guarded by a timeout."""
    key, question = "destroy_while_running", "does rkllm_destroy return while a run is going?"
    run = _start(h, LONG_PROMPT, max_pending=1)
    # One event queued and the next callback held back: the run is certainly still going.
    started = run.wait_tokens(RUN_TIMEOUT_S)
    running = _raw_is_running(h)
    result: dict[str, Any] = {}  # Any: rc or error text

    def destroy() -> None:
        t0 = time.monotonic_ns()
        try:
            native.destroy(h)
            result["rc"] = 0
        except NativeCallError as exc:
            result["rc"] = exc.code
        except BaseException as exc:  # reported in the finding
            result["error"] = f"{type(exc).__name__}: {exc}"
        result["ms"] = (time.monotonic_ns() - t0) / 1e6

    t = threading.Thread(target=destroy, name="rkllm-probe-destroy", daemon=True)
    t.start()
    deadline = time.monotonic() + GRACE_S
    done = False
    while t.is_alive() or not done:
        done = done or run.pump(0.02)  # keeps the bridge's callbacks flowing
        if time.monotonic() > deadline:
            what = "rkllm_destroy did not return" if t.is_alive() else "rkllm_run did not return"
            run.channel.close()  # never block the runtime thread in the bridge's callback again
            raise _HungError(_hung_finding(key, question, f"{what} within {GRACE_S:g} s"))
    run.thread.join()
    run.channel.free()
    observed = (
        f"returned {result.get('rc')} in {result.get('ms', 0):.1f} ms; the run ended with "
        f"{run.terminal}, rkllm_run returned {run.rc}"
    )
    matches = result.get("rc") == 0 and run.terminal == "FINISH"
    return Finding(
        key=key,
        assumption="-",
        ref="fake_runtime/README.md (Handles and threads)",
        question=question,
        observed=observed if started else "unknown: the run made no callback",
        fake="aborts the run (FINISH is delivered), joins its thread and returns 0",
        matches=matches if started else None,
        details={
            "destroy_rc": result.get("rc"),
            "destroy_ms": round(float(result.get("ms", 0.0)), 2),
            "destroy_error": result.get("error"),
            "is_running_before": running,
            "terminal_state": run.terminal,
            "run_rc": run.rc,
            "tokens": run.tokens,
        },
    )


# ---- the whole probe ---------------------------------------------------------------------


def _failed(key: str, exc: BaseException) -> Finding:
    return Finding(
        key=key,
        assumption="-",
        ref="",
        question="",
        observed=f"the probe step failed: {type(exc).__name__}: {exc}",
        fake="",
        matches=None,
    )


def run_probe(
    model: str | os.PathLike[str],
    *,
    runtime: str | os.PathLike[str] | None = None,
    abi: str | None = None,
    on_finding: Callable[[Finding], None] | None = None,
) -> ProbeReport:
    """Probe the loaded runtime's behaviour with ``model``; see the module docstring.

    ``on_finding`` gets each finding as soon as it is known (a hang or crash later still
    leaves the earlier ones printed).

    Raises:
        RuntimeNotFoundError / RuntimeVersionError: no usable runtime.
        ModelLoadError: the runtime refused the model.

    >>> report = run_probe("model.json", runtime="fake")  # doctest: +SKIP
    >>> [f.key for f in report.findings][:2]  # doctest: +SKIP
    ['version_line', 'callback_thread']
    """
    started = time.monotonic()
    rt = load_runtime(runtime, abi=abi)
    path = Path(model)
    findings: list[Finding] = []
    hung = False

    def add(found: Finding | list[Finding]) -> None:
        for f in found if isinstance(found, list) else [found]:
            findings.append(f)
            if on_finding is not None:
                on_finding(f)

    add(_version_line(rt))
    try:
        add(_callback_probes(rt, path))
        h = native.init(rt, path, ModelParams(max_new_tokens=MAX_NEW_TOKENS, max_context_len=512))
        try:
            fresh: list[int | None] = [None]  # the first KV run's prefill (an empty cache)

            def kv() -> Finding:
                found, fresh[0] = _kv_probe(h)
                return found

            steps: list[tuple[str, Callable[[], Finding | list[Finding]]]] = [
                ("waiting_text", lambda: _waiting_probe(h)),
                ("abort", lambda: _abort_probes(h)),
                ("kv_cache", kv),
                ("pause_resume", lambda: _pause_probe(h, fresh[0])),
            ]
            for key, step in steps:
                try:
                    add(step())
                except RKLLMError as exc:  # this step only; the others still run
                    add(_failed(key, exc))
            add(_destroy_probe(h))  # last: it destroys the handle
        except _HungError:
            raise  # the handle is left alone: destroying it could hang too
        except BaseException:
            if not h.closed:
                _destroy_idle(h, "cleanup")
            raise
    except _HungError as exc:
        hung = True
        add(exc.finding)
    return ProbeReport(
        runtime_path=str(rt.path),
        runtime_version=rt.version,
        abi=rt.abi,
        is_fake=rt.is_fake,
        model=str(path),
        findings=tuple(findings),
        hung=hung,
        duration_s=time.monotonic() - started,
    )
