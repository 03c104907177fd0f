"""The KV cache across runs: its size after keep-history and single-turn runs (A14), and a pause
(a callback returning 1) that keeps it for the next run (A12)."""

from __future__ import annotations

from .. import _native as native
from . import guard
from .channel import finish, start
from .report import Finding
from .scenario import SHORT_NEW_TOKENS, SHORT_PROMPT


def kv_probe(h: native.NativeHandle) -> tuple[Finding, int | None]:
    """KV cache sizes after keep-history runs and a single-turn run (A14); and the first run's
    prefill tokens (on an empty cache), which :func:`pause_probe` compares with."""
    native.clear_kv_cache(h)
    sizes: list[int] = []
    counts: list[int] = []
    first_prefill: int | None = None
    for keep in (True, True, False):
        run = finish(
            h,
            start(h, SHORT_PROMPT, keep_history=keep, max_new_tokens=SHORT_NEW_TOKENS),
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


def pause_probe(h: native.NativeHandle, fresh_prefill: int | None) -> Finding:
    """A callback returning 1 (pause), then a new run on the kept cache."""
    run = start(h, SHORT_PROMPT, max_new_tokens=SHORT_NEW_TOKENS, max_pending=1)
    before = 0
    if run.wait_tokens(guard.RUN_TIMEOUT_S):
        before = run.tokens
        run.channel.pause()  # the next callback to read the flag returns 1
    finish(h, run, "pause_resume", "what does a callback returning 1 do?")
    paused_kv = native.kv_cache_size(h)[0]
    resumed = finish(
        h,
        start(h, SHORT_PROMPT, max_new_tokens=SHORT_NEW_TOKENS),
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
