"""What the native layer checks before the runtime sees a run (issue #11 items 6, 13, 14, 19).

Each refusal here used to reach the runtime (a heap overflow for wrong-width arrays), or
escape as a raw ``OverflowError`` / ``AttributeError``, or come back as a bare
``rkllm_run returned -1``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import rkllm_sdk as rk
from rkllm_sdk import _native as native
from rkllm_sdk import models
from rkllm_sdk._ffi.loader import Runtime

from ..conftest import ModelFactory
from ..fake_runtime.driver import fnv1a
from .conftest import Recorder

HIDDEN = 64


@pytest.fixture
def wide(rt: Runtime, model: ModelFactory) -> Iterator[native.NativeHandle]:
    """A handle on a model whose embedding width is 64; destroyed afterwards."""
    h = native.init(rt, model(hidden_size=HIDDEN), rk.ModelParams())
    yield h
    native.destroy(h)


def runs_started(rt: Runtime) -> int:
    """How many runs the fake has started in this process."""
    return native.fake_stats(rt)["runs_started"]


# ---- item 6: embedding widths ------------------------------------------------------------


def test_wrong_width_embedding_never_reaches_the_runtime(
    rt: Runtime, wide: native.NativeHandle
) -> None:
    """An EmbedInput [2, 1] on a 64-wide model is refused naming both widths (no overflow)."""
    before = runs_started(rt)
    narrow = rk.EmbedInput(embeddings=np.ones((2, 1), np.float32))  # 8 bytes; 512 would be read
    with pytest.raises(rk.InvalidParamsError, match=r"has 1 floats, .* width is 64"):
        native.run(wide, narrow)
    assert runs_started(rt) == before + 1  # the one-token probe, never the narrow input
    assert native.fake_last_input(wide)["mode"] == models.InferMode.GET_LAST_HIDDEN_LAYER
    with pytest.raises(rk.InvalidParamsError, match="width is 64"):
        native.prepare_run(wide, narrow, models.InferOptions())


def test_embed_width_is_learned_once_and_leaves_the_cache_empty(
    rt: Runtime, wide: native.NativeHandle
) -> None:
    """embed_width runs one hidden-layer probe, caches 64 on the handle, and the KV stays empty."""
    assert wide.embed_width is None
    before = runs_started(rt)
    assert native.embed_width(wide) == HIDDEN
    assert native.embed_width(wide) == HIDDEN
    assert wide.embed_width == HIDDEN
    assert runs_started(rt) == before + 1
    assert native.kv_cache_size(wide) == [0]
    rec = Recorder(rt)
    rows = np.linspace(-1, 1, 3 * HIDDEN, dtype=np.float32).reshape(3, HIDDEN)
    rec.run(wide, rk.EmbedInput(embeddings=rows))
    assert rec.text().startswith(f"[embed n=3x{HIDDEN} fnv={fnv1a(rows)}] ")
    assert runs_started(rt) == before + 2  # no second probe


def test_image_and_video_widths_are_checked(rt: Runtime, wide: native.NativeHandle) -> None:
    """Image (both ABIs) and video (1.3) embeddings of the wrong width are refused too."""
    native.embed_width(wide)
    image = rk.ImageInput(embeddings=np.ones((1, 2, 16), np.float32))
    with pytest.raises(rk.InvalidParamsError, match=r"ImageInput.embeddings: .* has 16 floats"):
        native.prepare_run(
            wide, rk.MultimodalInput(prompt="<image>", image=image), models.InferOptions()
        )
    if rt.abi == "1.3":
        video = rk.VideoInput(embeddings=np.ones((1, 1, 2, 8), np.float32))
        with pytest.raises(rk.InvalidParamsError, match=r"VideoInput.embeddings: .* has 8 floats"):
            native.prepare_run(
                wide, rk.MultimodalInput(prompt="<video>", video=video), models.InferOptions()
            )
    good = rk.ImageInput(embeddings=np.ones((1, 2, HIDDEN), np.float32))
    native.run(wide, rk.MultimodalInput(prompt="<image>", image=good))


def test_embed_width_keeps_a_held_kv_cache(rt: Runtime, wide: native.NativeHandle) -> None:
    """With tokens in the KV cache the probe is refused unless the caller lets the cache go."""
    native.run(wide, rk.Prompt(text="hello"), models.InferOptions(keep_history=True))
    (held,) = native.kv_cache_size(wide)
    with pytest.raises(rk.InvalidParamsError, match=f"holds {held} tokens"):
        native.embed_width(wide)
    assert native.kv_cache_size(wide) == [held]
    assert native.embed_width(wide, cache_disposable=True) == HIDDEN


def test_needs_embed_width_names_embedding_inputs() -> None:
    """Embed, image and video inputs need the width; text, tokens and non-inputs do not."""
    emb = rk.EmbedInput(embeddings=np.ones((1, 4), np.float32))
    image = rk.MultimodalInput(
        prompt="<image>", image=rk.ImageInput(embeddings=np.ones((1, 1, 4), np.float32))
    )
    assert native.needs_embed_width(emb)
    assert native.needs_embed_width([rk.Prompt(text="a"), image])
    assert not native.needs_embed_width(rk.Prompt(text="a"))
    assert not native.needs_embed_width([rk.TokenInput(ids=[1])])
    assert not native.needs_embed_width(rk.MultimodalInput(prompt="no arrays"))
    assert not native.needs_embed_width("text")  # type: ignore[arg-type]


def test_failed_probe_keeps_the_embedders_error_off_the_handle(
    rt: Runtime, model: ModelFactory
) -> None:
    """A 1.3 embedder failing during the probe fails embed_width with it as the cause."""
    if rt.abi == "1.2":
        pytest.skip("embedding callbacks are runtime 1.3")

    def broken(ids: np.ndarray) -> np.ndarray:
        raise KeyError("no table")

    h = native.init(rt, model(internal_embedding=False), rk.ModelParams(), embedder=broken)
    try:
        with pytest.raises(rk.GenerationError, match="embedding width failed") as info:
            native.embed_width(h)
        assert isinstance(info.value.__cause__, KeyError)
        assert h.callback_errors == []
        assert h.embed_width is None
    finally:
        native.destroy(h)


# ---- item 13: integers beyond int32, numpy scalars ---------------------------------------


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: rk.ModelParams(max_new_tokens=2**31), "max_new_tokens"),
        (lambda: rk.ModelParams(max_context_len=2**31), "max_context_len"),
        (lambda: rk.ModelParams(top_k=2**40), "top_k"),
        (lambda: rk.ModelParams(n_keep=2**31), "n_keep"),
        (lambda: rk.Sampling(top_k=2**31), "top_k"),
        (lambda: models.InferOptions(max_new_tokens=2**31), "max_new_tokens"),
        (lambda: rk.ExtendParams(base_domain_id=2**31), "base_domain_id"),
        (lambda: rk.ImageInput(embeddings=np.ones((1, 1, 4)), width=2**64), "width"),
    ],
)
def test_integers_beyond_the_c_type_are_invalid_params(build: object, field: str) -> None:
    """Integers that do not fit their C field are InvalidParamsError naming field and range."""
    with pytest.raises(rk.InvalidParamsError, match=rf"\.{field} must be .* and within "):
        build()  # type: ignore[operator]


def test_floats_beyond_float32_are_invalid_params() -> None:
    """A float (or int) beyond float32's range would become infinity in C: refused by name."""
    with pytest.raises(rk.InvalidParamsError, match=r"temperature .* within float32"):
        rk.ModelParams(temperature=1e39)
    with pytest.raises(rk.InvalidParamsError, match=r"scale .* within float32"):
        rk.LoraAdapter(path="a", name="x", scale=10**400)


def test_numpy_scalars_are_accepted_and_bools_refused_as_ints() -> None:
    """np.int64 / np.float32 / np.bool_ convert to Python values; bools are not ints."""
    p = rk.ModelParams(top_k=np.int64(3), temperature=np.float32(0.5), is_async=np.bool_(False))
    assert (p.top_k, p.temperature, p.is_async) == (3, 0.5, False)
    assert type(p.top_k) is int and type(p.temperature) is float and type(p.is_async) is bool
    opts = models.InferOptions(max_new_tokens=np.int32(5), keep_history=np.bool_(True))
    assert (opts.max_new_tokens, opts.keep_history) == (5, True)
    assert rk.ExtendParams(enabled_cpus=np.int64(0xF0)).enabled_cpus == {4, 5, 6, 7}
    assert rk.ExtendParams(enabled_cpus=[np.int8(1)]).enabled_cpus == {1}
    for bad in (True, np.bool_(True)):
        with pytest.raises(rk.InvalidParamsError, match="top_k"):
            rk.ModelParams(top_k=bad)
    with pytest.raises(rk.InvalidParamsError, match="max_new_tokens"):
        models.InferOptions(max_new_tokens=3.0)  # type: ignore[arg-type]


def test_the_c_boundary_refuses_what_slipped_past_validation(
    rt: Runtime, model: ModelFactory, wide: native.NativeHandle
) -> None:
    """Out-of-range values that bypassed the models raise InvalidParamsError, not OverflowError."""
    params = rk.ModelParams()
    object.__setattr__(params, "max_new_tokens", 2**31)  # what a validator would have refused
    with pytest.raises(rk.InvalidParamsError, match=r"ModelParams.max_new_tokens .* out of range"):
        native.init(rt, model(), params)
    with pytest.raises(rk.InvalidParamsError, match="positions are C ints"):
        native.clear_kv_cache(wide, ranges=[(0, 2**31)])
    with pytest.raises(rk.InvalidParamsError, match="must be ints"):
        native.clear_kv_cache(wide, ranges=[(True, 1)])  # type: ignore[list-item]
    with pytest.raises(rk.NativeCallError, match="rkllm_clear_kv_cache"):  # np ints reach C
        native.clear_kv_cache(wide, ranges=[(np.int64(0), np.int64(1))])  # type: ignore[list-item]


# ---- item 14: prompts of unsupported types -----------------------------------------------


BAD_PROMPTS = [
    (np.array([1, 2, 3]), "rk.TokenInput"),
    (None, "NoneType"),
    ({"role": "user", "content": "hi"}, "chat message dict"),
    (["a", "b"], r"entry 0 of the batch is a str.*rk.Prompt\(text=...\)"),
    (5, "got int"),
    (b"hello", "decode bytes"),
    ([], "at least one input"),
]


@pytest.mark.parametrize(("prompt", "message"), BAD_PROMPTS)
def test_unsupported_prompts_are_invalid_params(prompt: object, message: str) -> None:
    """as_inputs refuses anything but text, an input model or a list of them, naming the types."""
    with pytest.raises(rk.InvalidParamsError, match=message) as info:
        models.as_inputs(prompt, "user", False)  # type: ignore[arg-type]
    if not isinstance(prompt, list) or prompt:
        assert "rk.Prompt" in str(info.value)


@pytest.mark.parametrize(("prompt", "message"), BAD_PROMPTS)
def test_prepare_run_refuses_unsupported_inputs(
    wide: native.NativeHandle, prompt: object, message: str
) -> None:
    """prepare_run gives the same InvalidParamsError (not AttributeError or a batch count)."""
    with pytest.raises(rk.InvalidParamsError, match=message):
        native.prepare_run(wide, prompt, models.InferOptions())  # type: ignore[arg-type]


def test_sampling_as_a_dict_is_refused() -> None:
    """sampling={"temperature": ...} is refused with the Sampling(**values) spelling."""
    with pytest.raises(rk.InvalidParamsError, match=r"sampling must be None or a Sampling"):
        models.InferOptions(sampling={"temperature": 0.3})  # type: ignore[arg-type]
    with pytest.raises(rk.InvalidParamsError, match="prompt_cache must be None or a PromptCache"):
        models.InferOptions(prompt_cache="p.cache")  # type: ignore[arg-type]
    with pytest.raises(rk.InvalidParamsError, match=r"path must be a str or os.PathLike"):
        models.PromptCache(path=5)  # type: ignore[arg-type]


# ---- item 19: what the runtime would refuse with a bare -1 -------------------------------


def test_token_and_embedding_inputs_longer_than_the_context_are_refused(
    rt: Runtime, model: ModelFactory
) -> None:
    """The SDK counts token and embedding inputs: beyond max_context_len they never run."""
    h = native.init(rt, model(hidden_size=8), rk.ModelParams(max_context_len=16))
    try:
        before = runs_started(rt)
        with pytest.raises(
            rk.InvalidParamsError, match=r"17 tokens, more than max_context_len \(16\)"
        ):
            native.run(h, rk.TokenInput(ids=np.arange(17)))
        native.embed_width(h)
        with pytest.raises(rk.InvalidParamsError, match="20 tokens, more than max_context_len"):
            native.run(h, rk.EmbedInput(embeddings=np.ones((20, 8), np.float32)))
        assert runs_started(rt) == before + 1  # the probe only
        native.run(
            h,
            rk.TokenInput(ids=np.arange(16)),
            models.InferOptions(mode=models.InferMode.GET_LOGITS),
        )
    finally:
        native.destroy(h)


def test_unwritable_prompt_cache_is_refused_before_the_run(
    rt: Runtime, wide: native.NativeHandle, tmp_path: Path
) -> None:
    """Saving a prompt cache into a missing directory is an InvalidParamsError naming the path."""
    before = runs_started(rt)
    missing = tmp_path / "no-such-dir" / "p.cache"
    with pytest.raises(rk.InvalidParamsError, match=r"no-such-dir.* does not exist"):
        native.run(
            wide,
            rk.Prompt(text="x"),
            models.InferOptions(prompt_cache=models.PromptCache(path=missing)),
        )
    with pytest.raises(rk.InvalidParamsError, match="is a directory"):
        native.run(
            wide,
            rk.Prompt(text="x"),
            models.InferOptions(prompt_cache=models.PromptCache(path=tmp_path)),
        )
    assert runs_started(rt) == before


def test_refused_run_names_what_the_sdk_could_not_check(
    rt: Runtime, wide: native.NativeHandle, capfd: pytest.CaptureFixture[str]
) -> None:
    """A role the runtime refuses: GenerationError naming the role and the runtime's log line."""
    with pytest.raises(rk.GenerationError, match=r"return code -1; the runtime's own log") as info:
        native.run(wide, rk.Prompt(text="x", role="system"))
    assert "the role 'system'" in str(info.value)
    assert "max_context_len (512 tokens" in str(info.value)
    assert "E rkllm: rkllm_run: unknown role 'system'" in capfd.readouterr().err
