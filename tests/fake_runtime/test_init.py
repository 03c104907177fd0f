"""rkllm_createDefaultParam, rkllm_init and rkllm_destroy: defaults, model files, failures."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from .conftest import ModelFactory
from .driver import Driver


def test_default_params_are_the_documented_values(drv: Driver) -> None:
    """createDefaultParam returns the defaults listed in fake_runtime/README.md."""
    p = drv.lib.rkllm_createDefaultParam()
    assert p.model_path == drv.ffi.NULL
    assert (p.max_context_len, p.max_new_tokens, p.top_k, p.n_keep) == (512, -1, 1, 0)
    assert math.isclose(p.top_p, 0.9, rel_tol=1e-6)
    assert math.isclose(p.temperature, 0.8, rel_tol=1e-6)
    assert math.isclose(p.repeat_penalty, 1.1, rel_tol=1e-6)
    assert (p.frequency_penalty, p.presence_penalty, p.mirostat) == (0.0, 0.0, 0)
    assert math.isclose(p.mirostat_tau, 5.0) and math.isclose(p.mirostat_eta, 0.1, rel_tol=1e-6)
    assert not p.skip_special_token and not p.is_async
    e = p.extend_param
    assert (e.base_domain_id, e.embed_flash, e.enabled_cpus_num) == (0, 0, 4)
    assert (e.enabled_cpus_mask, e.n_batch, e.use_cross_attn) == (0xF0, 1, 0)
    if drv.abi == "1.2":
        assert p.img_start == p.img_end == p.img_content == drv.ffi.NULL
    else:
        assert not p.ignore_eos_token


def test_init_prints_the_vendor_banner(
    drv: Driver, model: ModelFactory, capfd: pytest.CaptureFixture[str]
) -> None:
    """A successful init prints the runtime version line the way the vendor does."""
    drv.init(model())
    version = "1.2.3" if drv.abi == "1.2" else "1.3.0"
    assert f"rkllm-runtime version: {version}, rknpu driver version:" in capfd.readouterr().err


def test_init_and_destroy_track_live_handles(drv: Driver, model: ModelFactory) -> None:
    """Each init adds a live handle with its own memory; destroy returns both."""
    base = drv.stats()
    h = drv.init(model())
    assert drv.stats()["live_handles"] == base["live_handles"] + 1
    assert drv.stats()["live_allocations"] > base["live_allocations"]
    assert h.destroy() == 0
    assert drv.stats()["live_handles"] == base["live_handles"]
    assert drv.stats()["live_allocations"] == base["live_allocations"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "failed to open model file"),
        (b"RKLLM\x00\x01\x02binary-weights", "invalid rknn llm model magic"),
        (b"", "invalid rknn llm model magic"),
        (b'{"format": "rkllm-fake/1", ', "bad JSON"),
        (b'{"format": "rkllm-fake/2"}', '"format" must be "rkllm-fake/1"'),
        (b'{"format": "rkllm-fake/1", "vocab": 10}', "unknown key 'vocab'"),
        (b'{"format": "rkllm-fake/1", "vocab_size": 12.5}', "'vocab_size' must be an integer"),
        (b'{"format": "rkllm-fake/1", "decode_ms": -1}', "'decode_ms' must be a number"),
        (b'{"format": "rkllm-fake/1", "thinking": 1}', "'thinking' must be true or false"),
        (b'{"format": "rkllm-fake/1", "script": [{"match": "a"}]}', "script rule 0"),
        (b'{"format": "rkllm-fake/1", "faults": "explode=1"}', "unknown or incomplete fault"),
        (b'{"format": "rkllm-fake/1", "waiting_text": "drop"}', "'waiting_text' must be"),
        (b'{"format": "rkllm-fake/1", "waiting_text": true}', "'waiting_text' must be"),
        (b"[1, 2]", "invalid rknn llm model magic"),
    ],
)
def test_bad_model_files_fail_init_with_a_message(
    drv: Driver,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    content: bytes | None,
    message: str,
) -> None:
    """Anything but a valid rkllm-fake/1 file: rkllm_init returns -1 and prints why."""
    path = tmp_path / "model.rkllm"
    if content is not None:
        path.write_bytes(content)
    p, _keep = drv.params(path)
    base = drv.stats()
    cb = drv.ffi.callback("LLMResultCallback", lambda *a: 0)
    if drv.abi == "1.2":
        rc, handle = drv.init_raw(p, cb)
    else:
        cbs = drv.ffi.new("RKLLMCallback*", {"result_callback": cb})
        rc, handle = drv.init_raw(p, cbs)
    assert rc == -1
    assert handle == drv.ffi.NULL
    assert message in capfd.readouterr().err
    assert drv.stats()["live_allocations"] == base["live_allocations"]


def _init_with(drv: Driver, p: object, with_callback: bool = True) -> int:
    cb = drv.ffi.callback("LLMResultCallback", lambda *a: 0)
    if drv.abi == "1.2":
        return drv.init_raw(p, cb if with_callback else drv.ffi.NULL)[0]
    cbs = drv.ffi.new("RKLLMCallback*", {"result_callback": cb if with_callback else drv.ffi.NULL})
    return drv.init_raw(p, cbs)[0]


@pytest.mark.parametrize(
    ("fields", "with_callback"),
    [
        ({"max_context_len": 0}, True),
        ({"max_context_len": -5}, True),
        ({"extend": {"n_batch": 9}}, True),
        ({}, False),
    ],
)
def test_invalid_params_fail_init(
    drv: Driver, model: ModelFactory, fields: dict[str, object], with_callback: bool
) -> None:
    """Out-of-range params or a missing result callback: -1, no handle."""
    p, _keep = drv.params(model(), **fields)
    assert _init_with(drv, p, with_callback) == -1


def test_null_arguments_fail_init(drv: Driver, model: ModelFactory) -> None:
    """NULL handle pointer, NULL params or NULL model path: -1 without crashing."""
    p, _keep = drv.params(model())
    cb = drv.ffi.callback("LLMResultCallback", lambda *a: 0)
    cbs = cb if drv.abi == "1.2" else drv.ffi.new("RKLLMCallback*", {"result_callback": cb})
    assert drv.lib.rkllm_init(drv.ffi.NULL, p, cbs) == -1
    assert drv.lib.rkllm_init(drv.ffi.new("LLMHandle*"), drv.ffi.NULL, cbs) == -1
    no_path, _k = drv.params(None)
    assert drv.lib.rkllm_init(drv.ffi.new("LLMHandle*"), no_path, cbs) == -1
    if drv.abi == "1.3":
        assert drv.lib.rkllm_init(drv.ffi.new("LLMHandle*"), p, drv.ffi.NULL) == -1


def test_n_batch_zero_means_one(drv: Driver, model: ModelFactory) -> None:
    """Callers that leave extend_param zeroed get a single batch."""
    h = drv.init(model(), extend={"n_batch": 0})
    assert len(h.kv_sizes()) == 1
    assert h.run("hello").rc == 0


def test_injected_init_failure_returns_the_code(
    drv: Driver, model: ModelFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """init_fail from the model file or RKLLM_FAKE_FAULTS makes rkllm_init return that code."""
    p, _keep = drv.params(model(faults="init_fail=-7"))
    assert _init_with(drv, p) == -7
    monkeypatch.setenv("RKLLM_FAKE_FAULTS", "init_fail")
    p2, _keep2 = drv.params(model())
    assert _init_with(drv, p2) == -1
    monkeypatch.setenv("RKLLM_FAKE_FAULTS", "init_fail=oops")
    assert _init_with(drv, p2) == -1


def test_models_without_tokenizer_need_runtime_13_callbacks(
    drv: Driver, model: ModelFactory
) -> None:
    """internal_tokenizer/embedding false: refused on 1.2; on 1.3 the callback is required."""
    for key in ("internal_tokenizer", "internal_embedding"):
        p, _keep = drv.params(model(**{key: False}))
        assert _init_with(drv, p) == -1


def test_destroy_rejects_null_and_destroyed_handles(drv: Driver, model: ModelFactory) -> None:
    """Destroying NULL or twice returns -1 instead of crashing."""
    h = drv.init(model())
    ptr = h.ptr
    assert h.destroy() == 0
    assert drv.lib.rkllm_destroy(ptr) == -1
    assert drv.lib.rkllm_destroy(drv.ffi.NULL) == -1
