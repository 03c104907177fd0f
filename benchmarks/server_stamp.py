"""``rkllm serve`` whose ``rkllm_result`` notifications carry ``t_ns``: for the latency figures.

    python -m benchmarks.server_stamp serve --tcp 127.0.0.1:8765 ...   # the arguments of rkllm

The server has no timestamp field yet, so this launcher (benchmark code, not the library)
wraps ``Call.notify_result`` in its own process to add ``t_ns = time.monotonic_ns()``: the
moment the handler got the chunk from the SDK's ``async for`` and queued it. CLOCK_MONOTONIC
is one clock for every process on Linux, so a client subtracts it from its own
``time.monotonic_ns()`` at parse time. The wrapper costs one clock read and one dict entry
per notification; everything after it (outbox, serialization, transport) is the server's.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from rkllm_sdk.cli import main
from rkllm_sdk.server.registry import Call

_notify = Call.notify_result


def _stamped(self: Call, params: dict[str, Any]) -> None:
    _notify(self, {**params, "t_ns": time.monotonic_ns()})


if __name__ == "__main__":
    Call.notify_result = _stamped  # type: ignore[method-assign]
    sys.exit(main(sys.argv[1:]))
