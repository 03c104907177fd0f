"""Every runtime function through _native, on the fake, both ABIs: valid and invalid input."""

from __future__ import annotations

import gc
import json
import re
import select
from pathlib import Path

import numpy as np
import pytest

import rkllm_sdk as rk
from rkllm_sdk import _native as native
from rkllm_sdk import models
from rkllm_sdk._ffi.loader import Runtime

from ..conftest import ModelFactory
from ..fake_runtime.driver import fnv1a, logits_formula
from .conftest import Recorder


def open_handle(
    rt: Runtime, model: Path, params: rk.ModelParams | None = None, rec: Recorder | None = None
) -> tuple[native.NativeHandle, Recorder]:
    """A handle with the given parameters and a recorder of its batch size."""
    n_batch = (params.extend.n_batch if params else None) or 1
    return native.init(rt, model, params or rk.ModelParams()), rec or Recorder(rt, n_batch)


@pytest.fixture
def handle(rt: Runtime, model: ModelFactory):  # type: ignore[no-untyped-def]
    """An open handle on a default fake model and a recorder; destroyed afterwards."""
    h, rec = open_handle(rt, model())
    yield h, rec
    native.destroy(h)


# ---- init / destroy ----------------------------------------------------------------------


def test_init_applies_params_and_records_effective_ones(rt: Runtime, model: ModelFactory) -> None:
    """Overrides reach the runtime; the handle knows the parameters in force."""
    params = rk.ModelParams(
        temperature=0.25, top_k=7, max_new_tokens=3, extend=rk.ExtendParams(enabled_cpus={0, 1})
    )
    h, _ = open_handle(rt, model(natural_end=False), params)
    try:
        assert h.params.temperature == 0.25
        assert h.params.max_context_len == 512  # the runtime's default
        assert h.params.extend.enabled_cpus == {0, 1}
        native.run(h, rk.Prompt(text="x"))
        info = native.fake_last_input(h)
        assert info["sampling"]["temperature"] == pytest.approx(0.25)
        assert info["sampling"]["top_k"] == 7
        assert info["max_new_tokens"] == 3
    finally:
        native.destroy(h)


def test_init_failure_is_a_model_load_error(rt: Runtime, tmp_path: Path) -> None:
    """A file the runtime refuses: ModelLoadError carrying the return code and the path."""
    bad = tmp_path / "model.rkllm"
    bad.write_bytes(b"\x00binary")
    with pytest.raises(rk.ModelLoadError, match=re.escape(repr(str(bad)))) as info:
        native.init(rt, bad, rk.ModelParams())
    assert info.value.code == -1


def test_strings_are_checked_before_the_call(rt: Runtime, model: ModelFactory) -> None:
    """NUL bytes and lone surrogates are refused before anything reaches C."""
    with pytest.raises(rk.InvalidParamsError, match="model_path contains a NUL"):
        native.init(rt, "model\x00.rkllm", rk.ModelParams())
    h, rec = open_handle(rt, model())
    try:
        with pytest.raises(rk.InvalidParamsError, match="prompt is not valid Unicode"):
            rec.run(h, rk.Prompt(text="bad \udc80 text"))
        with pytest.raises(rk.InvalidParamsError, match="NUL"):
            native.set_chat_template(h, "sys\x00", "", "")
        assert rec.states == []
    finally:
        native.destroy(h)


def test_abi_only_params_are_refused_on_the_other_abi(rt: Runtime, model: ModelFactory) -> None:
    """ignore_eos_token is 1.3-only, img_* are 1.2-only: refused, never dropped."""
    wrong = (
        rk.ModelParams(img_start="<i>")
        if rt.abi == "1.3"
        else rk.ModelParams(ignore_eos_token=True)
    )
    with pytest.raises(rk.UnsupportedOnABIError, match="exists only in runtime ABI"):
        native.init(rt, model(), wrong)
    right = (
        rk.ModelParams(ignore_eos_token=True)
        if rt.abi == "1.3"
        else rk.ModelParams(img_start="<i>")
    )
    h, _ = open_handle(rt, model(), right)
    native.destroy(h)


def test_destroy_is_idempotent_and_closes(rt: Runtime, model: ModelFactory) -> None:
    """After destroy every call raises ClosedError; destroying again does nothing."""
    h, _ = open_handle(rt, model())
    native.destroy(h)
    native.destroy(h)
    assert h.closed
    assert "closed" in repr(h)
    for call in (
        lambda: native.run(h, rk.Prompt(text="x")),
        lambda: native.abort(h),
        lambda: native.is_running(h),
        lambda: native.kv_cache_size(h),
        lambda: native.release_prompt_cache(h),
    ):
        with pytest.raises(rk.ClosedError):
            call()


# ---- runs --------------------------------------------------------------------------------


def test_prompt_run_streams_and_finishes(handle: tuple[native.NativeHandle, Recorder]) -> None:
    """A run delivers token results then FINISH with PerfStats."""
    h, rec = handle
    rec.run(h, rk.Prompt(text="hello", role="user"))
    assert rec.states[-1] == models.CallState.FINISH
    (perf,) = rec.perf
    assert isinstance(perf, rk.PerfStats)
    assert perf.generate_tokens == len(rec.states) - 1
    assert rec.text()


def test_token_and_embedding_inputs_arrive_intact(
    handle: tuple[native.NativeHandle, Recorder],
) -> None:
    """Arrays reach C unchanged: the fake names their checksums."""
    h, rec = handle
    ids = rk.TokenInput(ids=[3, 1, 4, 1, 5])
    rec.run(h, ids)
    assert rec.text().startswith(f"[tokens n=5 fnv={fnv1a(ids.ids)}] ")
    rows = np.linspace(-1, 1, 3 * 16).reshape(3, 16)  # float64: converted to float32
    emb = rk.EmbedInput(embeddings=rows)
    rec.run(h, emb)
    assert rec.text().startswith(f"[embed n=3x16 fnv={fnv1a(rows.astype(np.float32))}] ")


def test_multimodal_image_both_abis(handle: tuple[native.NativeHandle, Recorder]) -> None:
    """Image embeddings go in the ABI's own layout; 1.3 per-image markers reach the template."""
    h, rec = handle
    image = np.arange(2 * 3 * 16, dtype=np.float32).reshape(2, 3, 16)
    markers = {"start": "<I>", "end": "</I>"} if h.runtime.abi == "1.3" else {}
    rec.run(
        h,
        rk.MultimodalInput(prompt="see <image>", image=rk.ImageInput(embeddings=image, **markers)),
    )
    assert f"[image n=2x3x16 fnv={fnv1a(image)}] " in rec.text()
    if h.runtime.abi == "1.3":
        assert "see <I></I>" in native.fake_last_input(h)["inputs"][0]["templated"]


def test_video_and_image_markers_are_abi_checked(
    handle: tuple[native.NativeHandle, Recorder],
) -> None:
    """Video (1.3 only) and per-image markers (1.3 only) are refused on 1.2; work on 1.3."""
    h, rec = handle
    video = rk.VideoInput(embeddings=np.ones((1, 2, 3, 16), np.float32))
    marked = rk.ImageInput(embeddings=np.ones((1, 2, 16), np.float32), start="<I>")
    if h.runtime.abi == "1.2":
        with pytest.raises(rk.UnsupportedOnABIError, match="video input"):
            rec.run(h, rk.MultimodalInput(prompt="x", video=video))
        with pytest.raises(rk.UnsupportedOnABIError, match="img_start"):
            rec.run(h, rk.MultimodalInput(prompt="x", image=marked))
        assert rec.states == []
    else:
        rec.run(h, rk.MultimodalInput(prompt="x <video>", video=video))
        assert f"[video n=1x2x3x16 fnv={fnv1a(video.embeddings)}] " in rec.text()


def test_per_run_options_are_abi_checked(handle: tuple[native.NativeHandle, Recorder]) -> None:
    """Sampling and max_new_tokens per run exist on 1.3; missing sampling fields come from init."""
    h, _ = handle
    opts = models.InferOptions(sampling=rk.Sampling(temperature=0.3), max_new_tokens=2)
    if h.runtime.abi == "1.2":
        with pytest.raises(rk.UnsupportedOnABIError, match="per-run sampling"):
            native.run(h, rk.Prompt(text="x"), opts)
        with pytest.raises(rk.UnsupportedOnABIError, match="per-run max_new_tokens"):
            native.run(h, rk.Prompt(text="x"), models.InferOptions(max_new_tokens=2))
        return
    native.run(h, rk.Prompt(text="x"), opts)
    info = native.fake_last_input(h)
    assert info["max_new_tokens"] == 2
    assert info["sampling"]["temperature"] == pytest.approx(0.3)
    assert info["sampling"]["top_p"] == pytest.approx(h.params.top_p)


def test_modes_return_copied_arrays(handle: tuple[native.NativeHandle, Recorder]) -> None:
    """Logits come back as float32 numpy copies, intact after the fake poisons its buffer."""
    h, rec = handle
    rec.run(h, rk.TokenInput(ids=[1, 2, 3]), models.InferOptions(mode=models.InferMode.GET_LOGITS))
    logits = rec.arrays[0]
    assert logits is not None
    assert logits.dtype == np.float32
    np.testing.assert_array_equal(logits, logits_formula(0, 3, 4096))
    rec.run(
        h,
        rk.TokenInput(ids=[1, 2]),
        models.InferOptions(mode=models.InferMode.GET_LAST_HIDDEN_LAYER),
    )
    hidden = rec.arrays[0]
    assert hidden is not None
    assert hidden.shape == (2, 16)


def test_run_failure_raises_generation_error(rt: Runtime, model: ModelFactory) -> None:
    """A non-zero rkllm_run is a GenerationError naming the function and code."""
    h, _ = open_handle(rt, model(faults="run_fail=-3"))
    try:
        with pytest.raises(
            rk.GenerationError, match="rkllm_run failed with return code -3"
        ) as info:
            native.run(h, rk.Prompt(text="x"))
        assert info.value.code == -3
    finally:
        native.destroy(h)


def test_batches_need_one_input_per_batch(rt: Runtime, model: ModelFactory) -> None:
    """A handle with n_batch=2 takes exactly two inputs and reports two KV sizes."""
    params = rk.ModelParams(extend=rk.ExtendParams(n_batch=2))
    h, rec = open_handle(
        rt, model(script=[{"match": "a", "reply": "A"}, {"match": "b", "reply": "BB"}]), params
    )
    try:
        with pytest.raises(rk.InvalidParamsError, match="batches of 2 inputs, got 1"):
            native.run(h, rk.Prompt(text="a"))
        rec.run(
            h, [rk.Prompt(text="a"), rk.Prompt(text="b")], models.InferOptions(keep_history=True)
        )
        assert (rec.text(0), rec.text(1)) == ("A", "BB")
        assert len(native.kv_cache_size(h)) == 2
    finally:
        native.destroy(h)


def test_run_async_keepalive_and_abort(rt: Runtime, model: ModelFactory) -> None:
    """run_async returns at once; the keepalive holds the inputs; abort ends the run."""
    h, rec = open_handle(rt, model(faults="hang_after=1"))
    try:
        keep = native.run_async(
            h, rk.TokenInput(ids=np.arange(50, dtype=np.int32)), channel=rec.channel
        )
        gc.collect()
        assert native.is_running(h)
        native.abort(h)
        assert rec.wait(10)
        assert rec.states[-1] == models.CallState.FINISH
        del keep
        while native.is_running(h):
            pass
        assert not native.is_running(h)
    finally:
        native.destroy(h)


# ---- KV cache, adapters, templates, tools, cross attention --------------------------------


def test_kv_cache_size_and_clear(handle: tuple[native.NativeHandle, Recorder]) -> None:
    """Sizes come back as a list; full clears work; ranges are validated first."""
    h, _ = handle
    native.run(h, rk.Prompt(text="hello"), models.InferOptions(keep_history=True))
    (n,) = native.kv_cache_size(h)
    assert n > 0
    with pytest.raises(rk.InvalidParamsError, match="0 <= start <= end"):
        native.clear_kv_cache(h, ranges=[(-1, 2)])
    with pytest.raises(rk.InvalidParamsError, match="one \\(start, end\\) range per batch"):
        native.clear_kv_cache(h, ranges=[(0, 1), (0, 1)])
    with pytest.raises(rk.NativeCallError, match="rkllm_clear_kv_cache failed"):
        native.clear_kv_cache(h, ranges=[(0, 1)])  # not a paused single-turn run
    native.clear_kv_cache(h, keep_system_prompt=True)
    assert 0 < native.kv_cache_size(h)[0] < n
    native.clear_kv_cache(h)
    assert native.kv_cache_size(h) == [0]


def test_lora_adapters(handle: tuple[native.NativeHandle, Recorder], tmp_path: Path) -> None:
    """Loading needs an existing file (checked first); a run selects the adapter by name."""
    h, _ = handle
    with pytest.raises(rk.InvalidParamsError, match=r"LoRA adapter file .*missing' does not exist"):
        native.load_lora(h, rk.LoraAdapter(path=tmp_path / "missing", name="x"))
    (tmp_path / "a.rkllm").write_bytes(b"lora")
    native.load_lora(h, rk.LoraAdapter(path=tmp_path / "a.rkllm", name="style", scale=0.5))
    native.run(h, rk.Prompt(text="x"), models.InferOptions(lora="style"))
    assert native.fake_last_input(h)["lora"] == {"name": "style", "scale": 0.5}
    with pytest.raises(rk.InvalidParamsError, match=r"'unknown' is not loaded.*loaded: 'style'"):
        native.run(h, rk.Prompt(text="x"), models.InferOptions(lora="unknown"))


def test_prompt_cache_round_trip(
    handle: tuple[native.NativeHandle, Recorder], tmp_path: Path
) -> None:
    """Save on a run, load, fewer prefill tokens computed, release."""
    h, rec = handle
    path = tmp_path / "p.cache"
    text = "a long shared system preamble for every request " * 4
    rec.run(
        h,
        rk.Prompt(text=text + "one"),
        models.InferOptions(prompt_cache=models.PromptCache(path=path)),
    )
    (full,) = rec.perf
    native.load_prompt_cache(h, path)
    rec.run(h, rk.Prompt(text=text + "two"))
    (reused,) = rec.perf
    assert reused.prefill_tokens < full.prefill_tokens / 4
    native.release_prompt_cache(h)
    with pytest.raises(rk.InvalidParamsError, match=r"prompt cache file .* does not exist"):
        native.load_prompt_cache(h, tmp_path / "missing.cache")
    (tmp_path / "junk.cache").write_bytes(b"not a cache")
    with pytest.raises(rk.NativeCallError, match="rkllm_load_prompt_cache"):
        native.load_prompt_cache(h, tmp_path / "junk.cache")  # exists: the runtime refuses


def test_chat_template_and_function_tools(handle: tuple[native.NativeHandle, Recorder]) -> None:
    """Templates and tools (dicts or JSON text) reach the runtime; bad tools are refused."""
    h, rec = handle
    native.set_chat_template(h, "S:", "U:", "|A:")
    native.run(h, rk.Prompt(text="hi"))
    assert native.fake_last_input(h)["inputs"][0]["templated"].startswith("S:U:hi|A:")
    tools = [
        {
            "type": "function",
            "function": {
                "name": "lights_on",
                "parameters": {
                    "type": "object",
                    "properties": {"room": {"type": "string", "enum": ["hall"]}},
                    "required": ["room"],
                },
            },
        }
    ]
    native.set_function_tools(h, "You control a home.", tools)
    rec.run(h, rk.Prompt(text="lights_on please"))
    call = re.search(r"<tool_call>\n(.*)\n</tool_call>", rec.text())
    assert call is not None
    assert json.loads(call.group(1)) == {"name": "lights_on", "arguments": {"room": "hall"}}
    native.set_function_tools(h, "", json.dumps(tools))
    with pytest.raises(rk.InvalidParamsError, match="not JSON-serialisable"):
        native.set_function_tools(h, "", [{"f": object()}])
    with pytest.raises(rk.NativeCallError, match="rkllm_set_function_tools"):
        native.set_function_tools(h, "", "[{")


def test_cross_attention_arrays_stay_alive(rt: Runtime, model: ModelFactory) -> None:
    """The handle keeps the arrays the runtime reads at every run; None clears them."""
    params = rk.ModelParams(extend=rk.ExtendParams(use_cross_attn=True))
    h, rec = open_handle(rt, model(num_layers=2, num_kv_heads=1, head_dim=4), params)
    try:
        rng = np.random.default_rng(3)
        k = rng.standard_normal((2, 3, 1, 4)).astype(np.float32)
        v = rng.standard_normal((2, 1, 4, 3)).astype(np.float32)
        expected = fnv1a(k, v, np.zeros(3, np.float32), np.arange(3, dtype=np.int32))
        native.set_cross_attention(
            h,
            rk.CrossAttention(
                k_cache=k.copy(), v_cache=v.copy(), mask=np.zeros(3), positions=[0, 1, 2]
            ),
        )
        gc.collect()  # the caller dropped its CrossAttention: the handle still holds the arrays
        rec.run(h, rk.Prompt(text="x"))
        assert rec.text().startswith(f"[cross n=3 fnv={expected}] ")
        native.set_cross_attention(h, None)
        rec.run(h, rk.Prompt(text="x"))
        assert "[cross" not in rec.text()
    finally:
        native.destroy(h)


def test_cross_attention_needs_use_cross_attn(handle: tuple[native.NativeHandle, Recorder]) -> None:
    """Without use_cross_attn at init the runtime refuses; the error names the function."""
    h, _ = handle
    ca = rk.CrossAttention(
        k_cache=np.zeros((1, 1, 1, 1)), v_cache=np.zeros((1, 1, 1, 1)), mask=[0.0], positions=[0]
    )
    with pytest.raises(rk.NativeCallError, match="rkllm_set_cross_attn_params"):
        native.set_cross_attention(h, ca)


def test_optional_symbols_are_probed_not_required(
    handle: tuple[native.NativeHandle, Recorder],
) -> None:
    """The fake exports no undocumented vendor symbols: the wrappers say so instead of crashing."""
    h, _ = handle
    assert "rkllm_print_timings" not in h.runtime.optional_symbols
    with pytest.raises(rk.NativeCallError, match="does not export rkllm_print_timings"):
        native.print_timings(h)
    with pytest.raises(rk.NativeCallError, match="does not export rkllm_print_memorys"):
        native.print_memorys(h)


# ---- runtime 1.3 tokenizer / embedder callables ------------------------------------------


def test_tokenizer_and_embedder_callables_on_13(rt: Runtime, model: ModelFactory) -> None:
    """init() turns Python callables into 1.3 callbacks the runtime uses; 1.2 refuses them."""
    if rt.abi == "1.2":  # 1.2 has no such callback type: refused before any C is touched
        with pytest.raises(rk.UnsupportedOnABIError, match="tokenizer callbacks"):
            native.init(rt, model(), rk.ModelParams(), tokenizer=lambda text: [7])
        with pytest.raises(rk.UnsupportedOnABIError, match="embedding callbacks"):
            native.init(rt, model(), rk.ModelParams(), embedder=lambda ids: ids)
        return
    texts: list[str] = []
    embedded: list[int] = []

    def tokenize(text: str) -> list[int]:
        texts.append(text)
        return [7, 8]

    def embed(ids: np.ndarray) -> np.ndarray:
        embedded.append(len(ids))
        return np.repeat(ids.astype(np.float32)[:, None], 8, axis=1)

    path = model(internal_tokenizer=False, internal_embedding=False, hidden_size=8)
    h = native.init(rt, path, rk.ModelParams(), tokenizer=tokenize, embedder=embed)
    rec = Recorder(rt)
    try:
        gc.collect()  # the handle, not the caller, keeps the cffi callbacks alive
        rec.run(h, rk.Prompt(text="hello"))
        assert any("hello" in t for t in texts)
        assert embedded[0] == 2
        assert rec.text().startswith(f"[tokenizer n=2 fnv={fnv1a(np.array([7, 8], np.int32))}] ")
        assert h.callback_errors == []
    finally:
        native.destroy(h)


def test_callable_exceptions_land_in_callback_errors(rt: Runtime, model: ModelFactory) -> None:
    """An exception in the tokenizer fails the run and is kept, in order, on the handle."""
    if rt.abi == "1.2":
        pytest.skip("tokenizer callbacks are runtime 1.3")

    def broken(text: str) -> list[int]:
        raise KeyError("no vocabulary")

    h = native.init(rt, model(internal_tokenizer=False), rk.ModelParams(), tokenizer=broken)
    rec = Recorder(rt)
    try:
        with pytest.raises(rk.GenerationError):
            rec.run(h, rk.Prompt(text="x"))
        assert rec.wait(0) and rec.states[-1] == models.CallState.ERROR
        (error,) = h.callback_errors
        assert isinstance(error, KeyError)
    finally:
        native.destroy(h)


def test_tokenizer_giving_too_many_tokens_is_an_error(rt: Runtime, model: ModelFactory) -> None:
    """A tokenizer returning more ids than the runtime's buffer holds fails the run, not C."""
    if rt.abi == "1.2":
        pytest.skip("tokenizer callbacks are runtime 1.3")
    h = native.init(
        rt,
        model(internal_tokenizer=False),
        rk.ModelParams(),
        tokenizer=lambda text: list(range(100_000)),
    )
    try:
        with pytest.raises(rk.GenerationError):
            native.run(h, rk.Prompt(text="x"))
        (error,) = h.callback_errors
        assert isinstance(error, rk.InvalidParamsError)
    finally:
        native.destroy(h)


# ---- runs through a channel --------------------------------------------------------------


def test_run_prepared_delivers_into_the_channel(
    handle: tuple[native.NativeHandle, Recorder],
) -> None:
    """prepare_run then run_prepared(h, prepared, channel): the channel gets the whole run."""
    h, rec = handle
    prepared = native.prepare_run(h, rk.TokenInput(ids=[3, 1, 4]), models.InferOptions())
    native.run_prepared(h, prepared, rec.channel)
    rec.channel.set_done(0)
    assert rec.wait(0)
    assert rec.text().startswith(f"[tokens n=3 fnv={fnv1a(np.array([3, 1, 4], np.int32))}] ")
    assert rec.states[-1] == models.CallState.FINISH


def test_run_prepared_checks_the_channel(
    rt: Runtime, handle: tuple[native.NativeHandle, Recorder]
) -> None:
    """A channel of another batch size, or a freed one, is refused before rkllm_run."""
    h, _ = handle
    started = native.fake_stats(rt)["runs_started"]
    prepared = native.prepare_run(h, rk.Prompt(text="x"), models.InferOptions())
    wide = Recorder(rt, n_batch=2)
    with pytest.raises(rk.InvalidParamsError, match="batches of 2"):
        native.run_prepared(h, prepared, wide.channel)
    gone = native.Channel(rt, 1)
    gone.free()
    with pytest.raises(rk.ClosedError, match="channel is freed"):
        native.run_prepared(h, prepared, gone)
    assert native.fake_stats(rt)["runs_started"] == started


def test_run_without_a_channel_drops_results(
    rt: Runtime, handle: tuple[native.NativeHandle, Recorder]
) -> None:
    """Without a channel the bridge callback gets NULL userdata and the run still completes."""
    h, _ = handle
    before = native.fake_stats(rt)["runs_finished"]
    native.run(h, rk.Prompt(text="x"))
    assert native.fake_stats(rt)["runs_finished"] == before + 1


def test_read_results_copies_inside_a_python_callback(rt: Runtime, model: ModelFactory) -> None:
    """Hazmat: read_results copies text, ids, arrays and perf out of a raw RKLLMResult*."""
    ffi, lib = rt.ffi, rt.lib
    seen: list[tuple[models.CallState, list[models.Result]]] = []

    def on_result(result: object, _ud: object, state: int) -> int:
        st = models.CallState(state)
        seen.append((st, native.read_results(rt, result, 1, st)))
        return 0

    callback = ffi.callback("LLMResultCallback", on_result)
    p = ffi.new("RKLLMParam*", lib.rkllm_createDefaultParam())
    path = ffi.new("char[]", str(model()).encode())
    p.model_path = path
    handle = ffi.new("LLMHandle*")
    if rt.abi == "1.2":
        assert lib.rkllm_init(handle, p, callback) == 0
    else:
        cb = ffi.new("RKLLMCallback*")
        cb.result_callback = callback
        assert lib.rkllm_init(handle, p, cb) == 0
    try:
        ids = ffi.new("int32_t[]", [1, 2, 3])
        inp = ffi.new("RKLLMInput*")
        inp.input_type = models.InputType.TOKEN
        inp.token_input.input_ids = ids
        inp.token_input.n_tokens = 3
        infer = ffi.new("RKLLMInferParam*")
        infer.mode = models.InferMode.GET_LOGITS
        assert lib.rkllm_run(handle[0], inp, infer, ffi.NULL) == 0
    finally:
        assert lib.rkllm_destroy(handle[0]) == 0
    (first,) = seen[0][1]
    assert first.logits is not None
    np.testing.assert_array_equal(first.logits, logits_formula(0, 3, 4096))
    assert seen[-1][0] == models.CallState.FINISH and seen[-1][1][0].perf is not None


def test_closing_a_channel_wakes_a_consumer_waiting_on_its_fd(rt: Runtime) -> None:
    """rkb_channel_close signals the fd of a consumer that drained nothing and now waits:
    the events that would have woken it are dropped from then on, and the run may make none
    (a hung run the first abort missed), so without the signal the consumer (and the task
    closing the stream, which waits for it) would wait forever."""
    channel = native.Channel(rt, 1)
    try:
        assert not channel.drain().states  # empty: the consumer now waits on fd
        assert select.select([channel.fd], [], [], 0)[0] == []
        channel.close()
        assert select.select([channel.fd], [], [], 5)[0] == [channel.fd]
        channel.ack()
        assert select.select([channel.fd], [], [], 0)[0] == []
    finally:
        channel.free()
