"""Scenario A11: what WAITING callbacks carry; and what ``rkllm_is_running`` returns during a run
and after it."""

from __future__ import annotations

from .. import _native as native
from ..models import CallState
from . import guard
from .channel import Run, finish, raw_is_running, start
from .report import Finding
from .scenario import PROBE_PROMPT, TOKEN_STATES


def waiting_probe(h: native.NativeHandle) -> list[Finding]:
    """What WAITING callbacks carry (A11), and rkllm_is_running during and after a run."""
    run = start(h, PROBE_PROMPT, max_pending=1)
    # One event queued and the next callback held back by the channel: the run is going.
    during = raw_is_running(h) if run.wait_tokens(guard.RUN_TIMEOUT_S) else None
    finish(h, run, "waiting_text", "what do WAITING callbacks carry?")
    after = raw_is_running(h)
    return [_waiting_finding(run), _polarity_finding(h.runtime.abi, during, after)]


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


def _waiting_finding(run: Run) -> Finding:
    tokens = [(s, t) for s, t in zip(run.states, run.texts, strict=True) if s in TOKEN_STATES]
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
        "normal_texts_decode_alone": all(_classify(t) != "partial bytes" for t in normal),
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
