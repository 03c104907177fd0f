"""Timeouts: a runtime call that never returns is reported as "hung" instead of hanging the probe.

Read the limits as ``guard.GRACE_S`` at call time (tests shorten it on this module).
"""

from __future__ import annotations

import threading

from .. import _native as native
from ..errors import NativeCallError
from .report import Finding

#: A run that has not returned after this long is aborted.
RUN_TIMEOUT_S = 60.0
#: After an abort or a destroy, how long the runtime gets before it counts as hung.
GRACE_S = 10.0


class HungError(Exception):
    """A runtime call that did not return in time; the probe stops at its finding.

    ``what`` says which call and for how long (``observed`` is ``"hung: " + what``).
    """

    def __init__(self, key: str, question: str, what: str) -> None:
        self.finding = Finding(
            key=key,
            assumption="-",
            ref="fake_runtime/README.md",
            question=question,
            observed=f"hung: {what}",
            fake="returns",
            matches=False,
        )
        super().__init__(self.finding.observed)


def abort_quietly(h: native.NativeHandle) -> int:
    """``rkllm_abort``, its failure returned as the return code instead of raised."""
    try:
        native.abort(h)
    except NativeCallError as exc:
        return exc.code if exc.code is not None else -1
    return 0


def destroy_idle(h: native.NativeHandle, key: str) -> None:
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
        raise HungError(
            key,
            "does rkllm_destroy of an idle handle return?",
            f"rkllm_destroy of an idle handle did not return within {GRACE_S:g} s",
        )
    if errors:
        raise errors[0]
