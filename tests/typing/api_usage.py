"""Typing test: the public API used the way the docs show, checked by ``mypy --strict``.

Never run (CI type-checks it); if a public signature changes incompatibly, mypy fails here.
"""

from __future__ import annotations

import numpy as np

import rkllm_sdk as rk


async def async_api(path: str) -> None:
    llm: rk.AsyncLLM = await rk.AsyncLLM.load(
        path, runtime="fake", abi="1.3", params=rk.ModelParams(max_context_len=4096)
    )
    async with llm:
        stream: rk.TokenStream = llm.stream("Hello", max_new_tokens=32, stop=["\n"])
        async with stream as s:
            async for chunk in s:
                text: str = chunk.text
                ids: tuple[int, ...] = chunk.token_ids
                delta: dict[str, object] = chunk.to_ha_delta()
                openai: dict[str, object] = chunk.to_openai(model="m")
                del text, ids, delta, openai
        gen: rk.Generation = s.result()
        reason: str = gen.finish_reason
        rate: float = gen.tokens_per_s
        gen = await llm.generate(rk.TokenInput(ids=[1, 2, 3]), keep_history=True)
        gens: list[rk.Generation] = await llm.generate_batch([rk.Prompt(text="a")])
        logits: np.ndarray = await llm.logits("x", all_tokens=True)
        hidden: np.ndarray = await llm.hidden_states(rk.EmbedInput(embeddings=np.zeros((2, 8))))
        sizes: list[int] = await llm.kv_cache_size()
        await llm.clear_kv_cache(keep_system_prompt=True)
        await llm.load_lora(rk.LoraAdapter(path="a.bin", name="style", scale=0.5))
        await llm.set_chat_template("", "<u>", "</u>")
        await llm.set_function_tools("", [{"type": "function", "function": {"name": "f"}}])
        await llm.set_cross_attention(None)
        chat: rk.ChatSession = llm.chat(system="sys", tools=[], thinking=True)
        reply: rk.ChatReply = await chat.send("hi")
        calls: tuple[rk.ToolCall, ...] = reply.tool_calls
        reply = await chat.send_tool_results({"call_0": {"ok": True}})
        snap: rk.MetricsSnapshot = llm.metrics()
        last: rk.Generation | None = llm.timings()
        running: bool = llm.is_running()
        handles: list[rk.HandleInfo] = rk.open_handles()
        del reason, rate, gens, logits, hidden, sizes, calls, snap, last, running, handles, reply


def sync_api(path: str) -> None:
    with rk.LLM.load(path, runtime="fake") as llm:
        gen: rk.Generation = llm.generate("Hello")
        with llm.stream("Hello") as s:
            for chunk in s:
                piece: str = chunk.text
                del piece
        final: rk.Generation = s.result()
        del gen, final
    report: rk.DoctorReport = rk.doctor(runtime="fake")
    problems: tuple[rk.Problem, ...] = report.problems
    code: int = rk.jsonrpc_code(rk.BusyError("busy"))
    status: int = rk.http_status(rk.ClosedError("closed"))
    schema: dict[str, object] = rk.tool_schema(sync_api)
    thinking, answer = rk.split_thinking("<think>x</think>y")
    rest, found = rk.parse_tool_calls("<tool_call>{}</tool_call>")
    del problems, code, status, schema, thinking, answer, rest, found
