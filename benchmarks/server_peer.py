"""The peer baseline: an HTTP endpoint in the style of the vendor's Flask demo.

    python -m benchmarks.server_peer --port PORT --model FILE --abi 1.2

The vendor's ``flask_server.py`` fills a global list from the runtime's callback while a
streaming endpoint loops: pop whatever is in the list, send each piece, sleep 5 ms. Here the
same shape on Starlette + the SDK (benchmark code, not the library): ``POST /generate``
starts a generation task that appends ``(text, t_ns, tokens)`` to a global buffer for each
chunk the SDK yields (``t_ns``: ``time.monotonic_ns()`` at that moment, as the stamped
``rkllm serve`` does), and streams Server-Sent Events, one per piece, polling the buffer
every 5 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from rkllm_sdk import AsyncLLM, ModelParams, TokenInput

BUFFER: list[tuple[str, int, int]] = []  # the demo's global_text (+ t_ns, tokens)
POLL_S = 0.005


def app(model: Path, abi: str) -> Starlette:
    llm: list[AsyncLLM] = []

    async def generate(request: Request) -> Response:
        tokens = int((await request.json())["tokens"])
        if not llm:
            params = ModelParams(max_new_tokens=tokens)
            llm.append(await AsyncLLM.load(model, runtime="fake", abi=abi, params=params))
        BUFFER.clear()
        done = asyncio.Event()

        async def fill() -> None:
            try:
                async with llm[0].stream(TokenInput(ids=[1, 2, 3])) as s:
                    async for chunk in s:
                        BUFFER.append((chunk.text, time.monotonic_ns(), len(chunk.token_ids)))
            finally:
                done.set()

        task = asyncio.create_task(fill())

        async def events() -> AsyncIterator[str]:
            while not done.is_set() or BUFFER:
                while BUFFER:
                    text, t_ns, n = BUFFER.pop(0)
                    yield f"data: {json.dumps({'text': text, 't_ns': t_ns, 'tokens': n})}\n\n"
                await asyncio.sleep(POLL_S)
            await task
            yield "event: end\ndata: {}\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return Starlette(routes=[Route("/generate", generate, methods=["POST"])])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--abi", required=True)
    args = parser.parse_args()
    uvicorn.run(app(args.model, args.abi), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
