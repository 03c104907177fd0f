"""Runtime 1.3 tokenizer and embedding callbacks given as Python callables."""

from __future__ import annotations

import numpy as np
import pytest

import rkllm_sdk as rk
from rkllm_sdk import AsyncLLM

from ..conftest import ModelFactory
from ..fake_runtime.driver import fnv1a

pytestmark = pytest.mark.anyio


def char_tokenizer(text: str) -> list[int]:
    return [ord(c) % 100 for c in text][:40]


async def test_python_tokenizer_and_embedder(abi: str, model: ModelFactory, no_leaks: None) -> None:
    """1.3: the runtime tokenizes and embeds through our callables; 1.2 refuses them."""
    calls: list[int] = []

    def embedder(ids: np.ndarray) -> np.ndarray:
        calls.append(len(ids))
        return np.repeat(ids.astype(np.float32)[:, None], 8, axis=1)

    path = model(
        internal_tokenizer=False, internal_embedding=False, hidden_size=8, natural_end=False
    )
    if abi == "1.2":
        with pytest.raises(rk.UnsupportedOnABIError, match="tokenizer callbacks"):
            await AsyncLLM.load(model(), runtime="fake", abi=abi, tokenizer=char_tokenizer)
        return
    async with await AsyncLLM.load(
        path, runtime="fake", abi=abi, tokenizer=char_tokenizer, embedder=embedder
    ) as llm:
        gen = await llm.generate("hi", max_new_tokens=30)
    templated = (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
    templated_ids = np.array(char_tokenizer(templated), dtype=np.int32)
    assert gen.text.startswith(f"[tokenizer n=40 fnv={fnv1a(templated_ids)}] ")
    assert calls[0] == 40  # the prefill, then one call per generated token
    assert calls[1:] == [1] * (len(calls) - 1)
    assert len(calls) - 1 == len(gen.token_ids)


async def test_callback_exceptions_fail_the_run_with_their_cause(
    abi: str, model: ModelFactory, no_leaks: None
) -> None:
    """An exception in the tokenizer ends the run with GenerationError caused by it."""
    if abi == "1.2":
        pytest.skip("tokenizer callbacks are runtime 1.3")

    def broken(text: str) -> list[int]:
        raise KeyError("no vocabulary")

    async with await AsyncLLM.load(
        model(internal_tokenizer=False), runtime="fake", abi=abi, tokenizer=broken
    ) as llm:
        with pytest.raises(rk.GenerationError) as info:
            await llm.generate("x")
    assert isinstance(info.value.__cause__, KeyError)
