"""Stopping a run from outside: ``rkllm_abort`` on an idle handle and during a run (A12, S6), and
``rkllm_destroy`` during a run."""

from __future__ import annotations

import threading
import time
from typing import Any

from .. import _native as native
from ..errors import NativeCallError
from ..models import CallState
from . import guard
from .channel import finish, raw_is_running, start
from .report import Finding
from .scenario import LONG_PROMPT, TOKEN_STATES

#: A ``rkllm_abort`` call taking longer than this is not "quick" (S6).
QUICK_CALL_MS = 100.0


def abort_probes(h: native.NativeHandle) -> list[Finding]:
    """An abort on an idle handle (kept or lost?), then the latency of an abort in a run."""
    idle_rc = guard.abort_quietly(h)
    run = start(h, LONG_PROMPT)
    first = run.wait_tokens(guard.RUN_TIMEOUT_S)
    t0 = time.monotonic_ns()
    abort_rc = guard.abort_quietly(h)
    call_ms = (time.monotonic_ns() - t0) / 1e6
    finish(h, run, "abort_latency", "how long after rkllm_abort does rkllm_run return?")
    before = [s for s, ns in zip(run.states, run.stamps, strict=True) if ns < t0]
    tokens_before = sum(s in TOKEN_STATES for s in before)
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


def destroy_probe(h: native.NativeHandle) -> Finding:
    """rkllm_destroy from another thread while a run is going, guarded by a timeout."""
    key, question = "destroy_while_running", "does rkllm_destroy return while a run is going?"
    run = start(h, LONG_PROMPT, max_pending=1)
    # One event queued and the next callback held back: the run is certainly still going.
    started = run.wait_tokens(guard.RUN_TIMEOUT_S)
    running = raw_is_running(h)
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
    deadline = time.monotonic() + guard.GRACE_S
    done = False
    while t.is_alive() or not done:
        done = done or run.pump(0.02)  # keeps the bridge's callbacks flowing
        if time.monotonic() > deadline:
            what = "rkllm_destroy did not return" if t.is_alive() else "rkllm_run did not return"
            run.channel.close()  # never block the runtime thread in the bridge's callback again
            raise guard.HungError(key, question, f"{what} within {guard.GRACE_S:g} s")
    run.release()
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
