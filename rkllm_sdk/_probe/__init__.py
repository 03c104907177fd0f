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

Modules: ``report`` (:class:`Finding`, :class:`ProbeReport` and its JSON), ``scenario``
(prompts and limits the scenarios share), ``guard`` (timeouts: ``GRACE_S``, the "hung"
finding), ``version`` (S1, no handle), ``callbacks`` (the raw-callback handle and its four
findings), ``channel`` (runs on the bridge's channel), ``waiting`` (A11, ``rkllm_is_running``
polarity), ``stopping`` (abort and destroy during a run), ``cache`` (KV cache, pause and
resume), ``runner`` (:func:`run_probe`: the scenarios in order).
"""

from __future__ import annotations

# __all__ below makes these the package's re-exports (mypy's implicit re-export rule).
from .report import REPORT_HINT, Finding, ProbeReport
from .runner import run_probe
from .scenario import LONG_PROMPT, PROBE_PROMPT, SHORT_PROMPT

__all__ = [
    "LONG_PROMPT",
    "PROBE_PROMPT",
    "REPORT_HINT",
    "SHORT_PROMPT",
    "Finding",
    "ProbeReport",
    "run_probe",
]
