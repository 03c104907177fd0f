"""The proxy's own methods: ``rpc.discover``, ``rkllm_get_functions``,
``rkllm_get_constants``, ``health`` and ``stats``."""

from __future__ import annotations

import functools
from typing import Any

import anyio.to_thread

from ..errors import RKLLMError
from ..lowlevel import load_runtime
from .registry import REGISTRY, Call
from .schema import ENUMS, obj

__all__: list[str] = []

#: Runtime functions the proxy does not serve (yet), and why.
NOT_SERVED = {
    "rkllm_run_async": "not served yet: rkllm_run streams while other requests are served",
}


@REGISTRY.method(
    "rpc.discover", "The OpenRPC document of this service.", params=obj({}), c_function=False
)
async def discover(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    from .. import __version__  # noqa: PLC0415  # reads distribution metadata on first use

    return REGISTRY.openrpc(__version__)


@REGISTRY.method(
    "rkllm_get_functions",
    "The runtime functions served (name, summary, params and result schemas), and those not.",
    params=obj({}),
    c_function=False,
)
async def get_functions(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    return {
        "functions": [
            {"name": m.name, "summary": m.summary, "params": m.params, "result": m.result}
            for m in REGISTRY.methods.values()
            if m.c_function
        ],
        "not_served": NOT_SERVED,
    }


@REGISTRY.method(
    "rkllm_get_constants",
    "The C enums (name -> value) and CPU mask macros.",
    params=obj({}),
    c_function=False,
)
async def get_constants(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    return {**ENUMS, "CPU_MASK": {f"CPU{k}": 1 << k for k in range(8)}}


@REGISTRY.method(
    "health",
    "Whether the proxy is serving, and the runtime it would load.",
    params=obj({}),
    c_function=False,
)
async def health(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    sessions = call.connection.sessions
    config = sessions.config
    try:
        rt = await anyio.to_thread.run_sync(
            functools.partial(load_runtime, config.runtime, abi=config.abi)
        )
    except RKLLMError as exc:
        return {"status": "no_runtime", "error": f"{type(exc).__name__}: {exc}"}
    return {
        "status": "draining" if sessions.draining else "ok",
        "runtime": {
            "path": str(rt.path),
            "version": rt.version,
            "abi": rt.abi,
            "is_fake": rt.is_fake,
        },
    }


@REGISTRY.method(
    "stats",
    "Live connections, handles, runs (queued or running), referenced array bytes, requests.",
    params=obj({}),
    c_function=False,
)
async def stats(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    return call.connection.sessions.stats()
