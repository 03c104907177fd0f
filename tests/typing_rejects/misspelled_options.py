"""Misspelled run options, one per entry point: mypy must reject each marked line.

Not type-checked by CI's mypy run (it is not in ``[tool.mypy] files``); ``test_typing.py``
runs mypy on it and checks that exactly the lines marked ``# E`` are errors.
"""

from __future__ import annotations

import rkllm_sdk as rk


async def async_api(llm: rk.AsyncLLM, chat: rk.ChatSession) -> None:
    llm.stream("x", max_new_token=5)  # E
    await llm.generate("x", max_new_token=5)  # E
    await llm.generate_batch([rk.Prompt(text="x")], keep_histroy=True)  # E
    chat.stream("x", stops=["\n"])  # E
    await chat.send("x", max_new_token=5)  # E
    await chat.send_tool_results([1], sampling_params=None)  # E
    await chat.send("x", keep_history=True)  # E (a chat turn always keeps its history)
    await llm.generate("x", max_new_tokens="5")  # E (wrong type)


def sync_api(llm: rk.LLM, chat: rk.SyncChatSession) -> None:
    llm.stream("x", max_new_token=5)  # E
    llm.generate("x", max_new_token=5)  # E
    llm.generate_batch([rk.Prompt(text="x")], keep_histroy=True)  # E
    chat.stream("x", stops=["\n"])  # E
    chat.send("x", max_new_token=5)  # E
    chat.send_tool_results([1], sampling_params=None)  # E


async def correct(llm: rk.AsyncLLM, chat: rk.ChatSession) -> None:
    options: rk.RunOptions = {"max_new_tokens": 5, "stop": "User:", "keep_history": True}
    await llm.generate("x", **options)
    await chat.send("x", max_new_tokens=5, stop=["\n"], wait=False)
