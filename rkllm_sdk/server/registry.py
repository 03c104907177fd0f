"""The method registry: one entry per JSON-RPC method, with its schemas and its handler.

Each runtime function is registered under its C name with a params schema keyed by the C
parameter and field names, a result schema, and the coroutine that serves it through the
SDK's public API. The same entries validate what clients send (:func:`.schema.validate`),
dispatch it, and produce the OpenRPC document ``rpc.discover`` returns: nothing about a
method is written twice.

Methods are registered next to their handlers with the decorator::

    @REGISTRY.method("rkllm_abort", "Abort the run in progress.", params={...})
    async def rkllm_abort(call: Call, params: dict[str, Any]) -> dict[str, Any]: ...
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import anyio.abc
import attrs

from .outbox import Outbox
from .schema import Schema, obj
from .sessions import Sessions

__all__ = ["REGISTRY", "Call", "Handler", "Method", "Peer", "Registry"]


class Peer(Protocol):
    """What a handler sees of the connection a request came on."""

    outbox: Outbox
    sessions: Sessions

    @property
    def tasks(self) -> anyio.abc.TaskGroup | None:
        """Where the peer's async runs are driven (None: it cannot start any)."""


@attrs.define(eq=False)
class Call:
    """One request being served: its connection, id and method (for handlers)."""

    connection: Peer
    request_id: Any
    method: str
    silent: bool = False  # a notification: no response, no results either

    def notify_result(self, params: dict[str, Any]) -> None:
        """Send a ``rkllm_result`` notification of this call: ``params`` start with its
        ``"id"`` (built so, not copied here once per token); ``seq`` is added on sending."""
        if not self.silent:
            self.connection.outbox.put_result(self, params)


Handler = Callable[[Call, dict[str, Any]], Awaitable[Any]]
H = TypeVar("H", bound=Handler)


@attrs.frozen(kw_only=True)
class Method:
    """One JSON-RPC method: name, description, schemas and handler."""

    name: str
    summary: str
    params: Schema
    result: Schema
    handler: Handler
    c_function: bool  # one of the runtime's functions (else a proxy method)
    notifications: bool = False  # streams rkllm_result notifications before its response


class Registry:
    """Methods by name, in registration order."""

    def __init__(self) -> None:
        self.methods: dict[str, Method] = {}

    def method(
        self,
        name: str,
        summary: str,
        *,
        params: Schema | None = None,
        result: Schema | None = None,
        c_function: bool = True,
        notifications: bool = False,
    ) -> Callable[[H], H]:
        """Register the decorated coroutine as method ``name``."""

        def register(handler: H) -> H:
            self.methods[name] = Method(
                name=name,
                summary=summary,
                params=params if params is not None else obj({}),
                result=result if result is not None else {"type": "object"},
                handler=handler,
                c_function=c_function,
                notifications=notifications,
            )
            return handler

        return register

    def openrpc(self, version: str) -> dict[str, Any]:
        """The OpenRPC 1.2.6 document of every method (by-name params)."""
        methods = []
        for m in self.methods.values():
            props = m.params.get("properties", {})
            required = set(m.params.get("required", []))
            entry: dict[str, Any] = {
                "name": m.name,
                "summary": m.summary,
                "paramStructure": "by-name",
                "params": [
                    {"name": k, "required": k in required, "schema": v} for k, v in props.items()
                ],
                "result": {"name": "result", "schema": m.result},
            }
            if m.notifications:
                entry["x-notifications"] = ["rkllm_result"]
            methods.append(entry)
        return {
            "openrpc": "1.2.6",
            "info": {
                "title": "rkllm proxy",
                "version": version,
                "description": "The RKLLM runtime's functions as JSON-RPC 2.0 methods "
                "(named and keyed as in rkllm.h); runs stream rkllm_result notifications "
                "before their response.",
            },
            "methods": methods,
        }


#: The process-wide registry (filled when the method modules are imported).
REGISTRY = Registry()
