"""What the async client refuses before the runtime sees it (issue #11 items 6, 13, 14, 19)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import rkllm_sdk as rk

from .conftest import LoadLLM

pytestmark = pytest.mark.anyio


async def test_an_embedding_of_the_wrong_width_never_reaches_the_runtime(load: LoadLLM) -> None:
    """EmbedInput [2, 1] on a 16-wide model: InvalidParamsError naming both widths; a
    right-width one then runs (the width is learned once, by the SDK)."""
    llm = await load()  # hidden_size 16
    with pytest.raises(rk.InvalidParamsError, match=r"1 floats.*embedding width is 16"):
        await llm.generate(rk.EmbedInput(embeddings=np.ones((2, 1), dtype=np.float32)))
    gen = await llm.generate(rk.EmbedInput(embeddings=np.ones((2, 16), dtype=np.float32)))
    assert gen.text.startswith("[embed n=2x16 ")
    assert llm.metrics().failures == {"InvalidParamsError": 1}


@pytest.mark.parametrize(
    "prompt",
    [np.arange(3), None, {"text": "hi"}, ["a", "b"], 5, b"bytes"],
    ids=["ndarray", "None", "dict", "list-of-str", "int", "bytes"],
)
async def test_prompts_of_unsupported_types_are_invalid_params(
    load: LoadLLM, prompt: object
) -> None:
    """A prompt that is not text or input models raises InvalidParamsError naming the
    accepted types, on generate and on a chat turn."""
    llm = await load()
    with pytest.raises(rk.InvalidParamsError, match="str"):
        await llm.generate(prompt)  # type: ignore[arg-type]
    with pytest.raises((rk.InvalidParamsError, TypeError)):
        await llm.chat().send(prompt)  # type: ignore[arg-type]


async def test_integers_beyond_int32_are_invalid_params(load: LoadLLM, abi: str) -> None:
    """max_new_tokens=2**31 at load or per run raises InvalidParamsError naming the field."""
    with pytest.raises(rk.InvalidParamsError, match=r"max_new_tokens.*int32"):
        await load(params=rk.ModelParams(max_new_tokens=2**31))
    llm = await load()
    if abi == "1.3":
        with pytest.raises(rk.InvalidParamsError, match=r"max_new_tokens.*int32"):
            await llm.generate("x", max_new_tokens=2**31)
        gen = await llm.generate("x", max_new_tokens=np.int64(2))  # type: ignore[arg-type]
        assert len(gen.token_ids) == 2


async def test_an_unloaded_lora_and_missing_files_are_refused_before_the_run(
    load: LoadLLM, tmp_path: Path
) -> None:
    """A run naming an adapter never loaded, and a prompt cache or adapter file that does
    not exist, raise InvalidParamsError naming them; the runtime is never called."""
    llm = await load()
    with pytest.raises(rk.InvalidParamsError, match="style"):
        await llm.generate("x", lora="style")
    with pytest.raises(rk.InvalidParamsError, match=r"missing\.cache"):
        await llm.load_prompt_cache(tmp_path / "missing.cache")
    with pytest.raises(rk.InvalidParamsError, match=r"missing\.lora"):
        await llm.load_lora(rk.LoraAdapter(path=str(tmp_path / "missing.lora"), name="s"))
    assert (await llm.generate("x")).finish_reason == "stop"
