"""KV-cache reuse of the chat engine (OpenAI / Ollama faces) against a full re-prefill.

    python -m benchmarks.server_reuse            # a table
    python -m benchmarks.server_reuse --json     # one JSON object

A Home Assistant-shaped exchange on the fake runtime with a realistic prefill speed
(``--prefill-ms`` per prompt token, 4 by default: 250 tokens/s, an RK3588 with a 1.5B
model; decoding at full speed): a system prompt of about 1,500 tokens that starts, as Home
Assistant's does, with the current time (a new time for every request, 7 s apart), then
the instructions, the exposed devices and Home Assistant's intent tools; five user turns
of one conversation (the second answered by a tool call, followed by its tool-result
request), then, 7 s later too, a new conversation with the same system prompt. The
replies are scripted, so every engine sees the same conversation.

The exchange runs three times per ABI, side by side on separate handles (the fake's
prefill sleeps, so they do not compete for the CPU; both ABIs run at once too):

- ``reuse``: :class:`ChatEngine` as ``rkllm serve`` runs it (KV continuation, a prompt
  cache of the system turn, Home Assistant's time line moved into the newest user turn);
- ``time_in_place_``: the same without moving the time line (``volatile_patterns=()``);
- the baseline: an engine that clears the cache and prefills the whole conversation, as
  sent, on every request (``reuse=False``), what peers do.

Per request after the first, for ``reuse`` and ``time_in_place_``:

- ``prefill_tokens``: tokens the runtime computed (``prompt_tokens - cached_tokens``), and
  the baseline's; ``prefill_ratio`` = ours / baseline's.
- ``ttft_ms``: from the request to its first delta, and the baseline's; ``ttft_ratio``.

``max_prefill_ratio`` and ``max_ttft_ratio`` over those requests: target <= 0.2.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Mapping
from contextlib import aclosing
from pathlib import Path
from typing import Any

import anyio

from rkllm_sdk import ModelParams
from rkllm_sdk._ffi import ABIS
from rkllm_sdk.server.catalog import ModelCatalog
from rkllm_sdk.server.chat_engine import ChatEngine
from rkllm_sdk.server.chat_types import ChatDelta, ChatDone, ChatRequest
from rkllm_sdk.server.model_specs import ModelSpec
from rkllm_sdk.testing import FakeModel, tool_call_reply

TARGET = 0.2
CONTEXT = 4096

#: Home Assistant starts every system prompt with this line, rendered for each request.
TIME_LINE = "Current time is {}. Today's date is 2026-11-30.\n"
INSTRUCTIONS = (
    "You are a voice assistant for Home Assistant.\n"
    "Answer questions about the world truthfully.\n"
    "Answer in plain text. Keep it simple and to the point.\n"
    "When controlling Home Assistant always call the intent tools. Use HassTurnOn to lock "
    "and HassTurnOff to unlock a lock. When controlling a device, prefer passing just name "
    "and domain. When controlling an area, prefer passing just area name and domain.\n"
    "When a user asks to turn on all devices of a specific type, ask user to specify an area, "
    "unless there is only one device of that type.\n"
    "This device is not able to start timers.\n"
    "You ARE equipped to answer questions about the current state of\n"
    "the home using the `GetLiveContext` tool. This is a primary function. Do not state you "
    "lack the functionality if the question requires live data.\n"
    "Static Context: An overview of the areas and the devices in this smart home:\n"
)
AREAS = ("Kitchen", "Living Room", "Bedroom", "Office")
DEVICES = (
    ("light", "Ceiling Light", "off"),
    ("switch", "Socket", "off"),
    ("sensor", "Temperature", "21.5 °C"),
    ("cover", "Blinds", "open"),
)
INTENTS = (
    ("HassTurnOn", "Turns on/opens/presses a device or entity"),
    ("HassTurnOff", "Turns off/closes a device or entity"),
    ("HassLightSet", "Sets the brightness percentage or color of a light"),
    ("GetLiveContext", "Provides real-time information about the CURRENT state of devices"),
)

TURNS = (
    ("what is the temperature in the kitchen?", "It is 21.5 °C in the kitchen right now."),
    ("turn on the kitchen ceiling light", None),  # a tool call, then its result
    ("and dim it to forty percent please", "Done, the kitchen light is at forty percent."),
    ("are any blinds still open?", "Yes: the blinds in the living room and the office."),
    ("close them", "Closing the living room and office blinds."),
)
TOOL_RESULT_REPLY = "The kitchen ceiling light is on."
NEW_CONVERSATION = ("is the garage socket on?", "No, the garage socket is off.")


def system_prompt(seconds: int) -> str:
    """The time (``seconds`` after 18:42:00), the instructions and every area's devices, in
    Home Assistant's YAML-like overview."""
    clock = f"18:{42 + seconds // 60:02d}:{seconds % 60:02d}"
    lines = [TIME_LINE.format(clock), INSTRUCTIONS]
    for area in AREAS:
        for domain, name, state in DEVICES:
            lines.append(
                f"- names: {area} {name}\n  domain: {domain}\n  state: '{state}'\n  areas: {area}\n"
            )
    return "".join(lines)


def tools() -> tuple[dict[str, Any], ...]:
    """Home Assistant's intent tools (OpenAI style)."""
    params = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "area": {"type": "string"},
            "floor": {"type": "string"},
            "domain": {"type": "array", "items": {"type": "string"}},
            "device_class": {"type": "array", "items": {"type": "string"}},
        },
    }
    return tuple(
        {
            "type": "function",
            "function": {"name": name, "description": text, "parameters": params},
        }
        for name, text in INTENTS
    )


def fake_model(prefill_ms: float) -> FakeModel:
    """Scripted replies, latest turn first: the baseline's prompt holds every earlier turn,
    and the first rule whose text occurs in the prompt answers."""
    call = tool_call_reply("HassTurnOn", {"name": "Kitchen Ceiling Light", "domain": ["light"]})
    replies: dict[str, str] = {NEW_CONVERSATION[0]: NEW_CONVERSATION[1]}
    for question, answer in reversed(TURNS):
        if answer is None:
            replies["<tool_response>"] = TOOL_RESULT_REPLY
        replies[question] = answer if answer is not None else call
    fields: dict[str, Any] = {"replies": replies, "name": "ha", "prefill_ms": prefill_ms}
    return FakeModel(**fields, vocab_size=151936, hidden_size=64)


async def exchange(engine: ChatEngine) -> list[dict[str, Any]]:
    """The whole exchange through ``engine``: one row per request. Each request comes 7 s
    after the previous one (Home Assistant renders the system prompt anew for each)."""
    rows: list[dict[str, Any]] = []

    async def ask(label: str, messages: list[Mapping[str, Any]]) -> ChatDone:
        system = {"role": "system", "content": system_prompt(7 * len(rows))}
        req = ChatRequest(model="ha", messages=(system, *messages[1:]), tools=tools())
        t0 = time.perf_counter()
        ttft: float | None = None
        async with aclosing(engine.chat(req)) as it:
            async for item in it:
                if isinstance(item, ChatDelta) and ttft is None:
                    ttft = (time.perf_counter() - t0) * 1e3
                if isinstance(item, ChatDone):
                    rows.append(
                        {
                            "request": label,
                            "prompt_tokens": item.prompt_tokens,
                            "prefill_tokens": item.prompt_tokens - item.cached_tokens,
                            "ttft_ms": round(ttft if ttft is not None else item.total_ms, 2),
                            "reply": item.content,
                        }
                    )
                    return item
        raise RuntimeError("the chat ended without ChatDone")

    system: Mapping[str, Any] = {"role": "system", "content": ""}  # replaced by ask
    messages: list[Mapping[str, Any]] = [system]
    for n, (question, _) in enumerate(TURNS, start=1):
        messages.append({"role": "user", "content": question})
        done = await ask(f"turn {n}", messages)
        reply: dict[str, Any] = {"role": "assistant", "content": done.content}
        if done.tool_calls:
            call = done.tool_calls[0]
            reply["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                }
                for c in done.tool_calls
            ]
            messages.append(reply)
            result = '{"success": true, "targets": ["light.kitchen_ceiling_light"]}'
            messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
            done = await ask(f"turn {n} tool result", messages)
            reply = {"role": "assistant", "content": done.content}
        messages.append(reply)
    await ask("new conversation", [system, {"role": "user", "content": NEW_CONVERSATION[0]}])
    return rows


#: The engines compared: ours, ours without moving the time line, the baseline.
ENGINES: dict[str, dict[str, Any]] = {
    "reuse": {},
    "reuse_time_in_place": {"volatile_patterns": ()},
    "baseline": {"reuse": False, "volatile_patterns": ()},
}


async def _run_engine(model: Path, abi: str, cache_dir: Path, kind: str) -> list[dict[str, Any]]:
    params = ModelParams(max_context_len=CONTEXT)
    spec = ModelSpec(name="ha:latest", path=model, params=params, template="qwen2.5")
    catalog = ModelCatalog([spec], runtime="fake", abi=abi, cache_dir=cache_dir)
    async with catalog.lifespan():
        return await exchange(ChatEngine(catalog, **ENGINES[kind]))


async def bench_abi(abi: str, model: Path, tmp: Path) -> dict[str, Any]:
    """The engines on one ABI (side by side: the fake's prefill sleeps, it takes no CPU);
    the per-request rows and the worst ratios."""
    runs: dict[str, list[dict[str, Any]]] = {}

    async def one(kind: str) -> None:
        runs[kind] = await _run_engine(model, abi, tmp / f"cache-{abi}-{kind}", kind)

    async with anyio.create_task_group() as tg:
        for kind in ENGINES:
            tg.start_soon(one, kind)
    base = runs["baseline"]
    if any([r["reply"] for r in rows] != [r["reply"] for r in base] for rows in runs.values()):
        raise RuntimeError("the engines did not see the same conversation")
    result: dict[str, Any] = {
        "first_prompt_tokens": base[0]["prompt_tokens"],
        "first_turn_ttft_ms": base[0]["ttft_ms"],
    }
    for kind, prefix in (("reuse", ""), ("reuse_time_in_place", "time_in_place_")):
        rows = [
            {
                "request": o["request"],
                "prompt_tokens": o["prompt_tokens"],
                "prefill_tokens": o["prefill_tokens"],
                "baseline_prefill_tokens": b["prefill_tokens"],
                "prefill_ratio": round(o["prefill_tokens"] / b["prefill_tokens"], 4),
                "ttft_ms": o["ttft_ms"],
                "baseline_ttft_ms": b["ttft_ms"],
                "ttft_ratio": round(o["ttft_ms"] / b["ttft_ms"], 4),
            }
            for o, b in zip(runs[kind][1:], base[1:], strict=True)
        ]
        result[f"{prefix}requests"] = rows
        result[f"{prefix}max_prefill_ratio"] = max(r["prefill_ratio"] for r in rows)
        result[f"{prefix}max_ttft_ratio"] = max(r["ttft_ratio"] for r in rows)
    result["target"] = TARGET
    return result


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every figure of the module docstring, per ABI (the ABIs side by side too)."""
    result: dict[str, Any] = {"prefill_ms": args.prefill_ms}
    with tempfile.TemporaryDirectory() as tmp:
        path = fake_model(args.prefill_ms).write(Path(tmp) / "ha.json")

        async def one(abi: str) -> None:
            result[abi] = await bench_abi(abi, path, Path(tmp))

        async with anyio.create_task_group() as tg:
            for abi in args.abi or list(ABIS):
                tg.start_soon(one, abi)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--prefill-ms", type=float, default=4.0, help="per prompt token")
    parser.add_argument("--abi", choices=ABIS, action="append", help="default: both")
    args = parser.parse_args()
    os.environ.setdefault("RKLLM_FAKE_QUIET", "1")
    result = anyio.run(run, args)
    if args.json:
        print(json.dumps(result))
        return
    for abi in args.abi or ABIS:
        r = result[abi]
        print(
            f"ABI {abi}: first prompt {r['first_prompt_tokens']} tokens, "
            f"prefill {args.prefill_ms} ms/token"
        )
        for prefix, title in (("", "reuse"), ("time_in_place_", "reuse, time line left in place")):
            print(f"  {title}")
            head = ("request", "prefill", "baseline", "ratio", "TTFT ms", "baseline", "ratio")
            print("    {:<22} {:>8} {:>9} {:>6} {:>9} {:>9} {:>6}".format(*head))
            for row in r[f"{prefix}requests"]:
                print(
                    f"    {row['request']:<22} {row['prefill_tokens']:>8} "
                    f"{row['baseline_prefill_tokens']:>9} {row['prefill_ratio']:>6.3f} "
                    f"{row['ttft_ms']:>9.1f} {row['baseline_ttft_ms']:>9.1f} "
                    f"{row['ttft_ratio']:>6.3f}"
                )
            print(
                f"    worst: prefill {r[f'{prefix}max_prefill_ratio']:.3f}, "
                f"TTFT {r[f'{prefix}max_ttft_ratio']:.3f} (target <= {TARGET})"
            )


if __name__ == "__main__":
    main()
