"""The whole probe: load the runtime, run the scenarios in order, stop at a hang."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from .. import _native as native
from ..errors import RKLLMError
from ..lowlevel import load_runtime
from ..models import ModelParams
from . import guard
from .cache import kv_probe, pause_probe
from .callbacks import callback_probes
from .report import Finding, ProbeReport
from .scenario import MAX_NEW_TOKENS
from .stopping import abort_probes, destroy_probe
from .version import version_line
from .waiting import waiting_probe


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
    """Probe the loaded runtime's behaviour with ``model``; see :mod:`rkllm_sdk._probe`.

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

    add(version_line(rt))
    try:
        add(callback_probes(rt, path))
        h = native.init(rt, path, ModelParams(max_new_tokens=MAX_NEW_TOKENS, max_context_len=512))
        try:
            fresh: list[int | None] = [None]  # the first KV run's prefill (an empty cache)

            def kv() -> Finding:
                found, fresh[0] = kv_probe(h)
                return found

            steps: list[tuple[str, Callable[[], Finding | list[Finding]]]] = [
                ("waiting_text", lambda: waiting_probe(h)),
                ("abort", lambda: abort_probes(h)),
                ("kv_cache", kv),
                ("pause_resume", lambda: pause_probe(h, fresh[0])),
            ]
            for key, step in steps:
                try:
                    add(step())
                except RKLLMError as exc:  # this step only; the others still run
                    add(_failed(key, exc))
            add(destroy_probe(h))  # last: it destroys the handle
        except guard.HungError:
            raise  # the handle is left alone: destroying it could hang too
        except BaseException:
            if not h.closed:
                guard.destroy_idle(h, "cleanup")
            raise
    except guard.HungError as exc:
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
