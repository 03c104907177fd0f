"""What the OpenAI and Ollama faces (:mod:`.openai_api`, :mod:`.ollama_api`) do alike at
the HTTP level: read a bounded request body, notice a client that disconnects, and answer
JSON with non-ASCII escaped. Each face keeps its own error shape: the errors here are made
by the ``error`` factory it passes (``OpenAIError`` / ``OllamaError``, status then message).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import anyio
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.types import Receive

__all__ = ["AsciiJSON", "read_body", "watch_disconnect"]


class AsciiJSON(JSONResponse):
    """JSON with non-ASCII escaped: an error's message may quote what the client sent,
    lone surrogates (``"\\ud800"`` in its JSON) included, which UTF-8 cannot encode."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, separators=(",", ":")).encode("ascii")


async def read_body(
    request: Request, max_bytes: int, error: Callable[[int, str], Exception]
) -> bytearray:
    """The request's body, at most ``max_bytes``.

    Raises:
        Exception: ``error(413, ...)``, the body (declared or read) is larger than
            ``max_bytes``; ``error(499, ...)``, the client went before its body was whole
            (nobody reads the answer: the status is for the log).
    """
    too_large = f"request body larger than {max_bytes} bytes"
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise error(413, too_large)
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_bytes:
                raise error(413, too_large)
    except ClientDisconnect:
        raise error(499, "the client closed the request") from None
    return body


async def watch_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
    """Cancel ``scope`` once the client disconnects (its request body already read)."""
    while (await receive())["type"] != "http.disconnect":
        pass
    scope.cancel()
