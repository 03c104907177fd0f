"""Model validation, enums, and the runtime's defaults read into ModelParams."""

from __future__ import annotations

import attrs
import numpy as np
import pytest

import rkllm_sdk as rk
from rkllm_sdk import _native as native
from rkllm_sdk import models
from rkllm_sdk._ffi import ffi_for
from rkllm_sdk._ffi.loader import Runtime


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"top_p": 0}, r"top_p must be in \(0, 1\]"),
        ({"top_p": 1.5}, "top_p"),
        ({"temperature": -0.1}, "temperature must be >= 0"),
        ({"temperature": float("nan")}, "temperature"),
        ({"max_context_len": 0}, "max_context_len must be > 0"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"max_new_tokens": True}, "max_new_tokens"),
        ({"top_k": -1}, "top_k"),
        ({"mirostat": 3}, "mirostat must be 0, 1 or 2"),
        ({"repeat_penalty": 0}, "repeat_penalty"),
        ({"skip_special_token": 1}, "a bool"),
        ({"img_start": 5}, "a str"),
    ],
)
def test_model_params_validation(kwargs: dict[str, object], message: str) -> None:
    """Cheap invariants are checked at construction with InvalidParamsError."""
    with pytest.raises(rk.InvalidParamsError, match=message):
        rk.ModelParams(**kwargs)


def test_model_params_accept_edges() -> None:
    """Boundary values that are valid pass; -1 means no max_new_tokens limit."""
    p = rk.ModelParams(top_p=1.0, temperature=0.0, max_new_tokens=-1, n_keep=-1, mirostat=2)
    assert (p.top_p, p.temperature, p.max_new_tokens) == (1.0, 0.0, -1)


def test_models_are_frozen_and_keyword_only() -> None:
    """Models cannot be changed in place or built positionally."""
    p = rk.ModelParams(top_k=5)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        p.top_k = 6  # type: ignore[misc]
    with pytest.raises(TypeError):
        rk.Prompt("hello")  # type: ignore[misc]
    assert attrs.evolve(p, top_k=6).top_k == 6


def test_cpu_cores_as_set_or_mask() -> None:
    """enabled_cpus takes core numbers or a mask; both give the same cores and mask."""
    a = rk.ExtendParams(enabled_cpus={4, 5, 6, 7})
    b = rk.ExtendParams(enabled_cpus=0xF0)
    assert a == b
    assert a.enabled_cpus_mask == 0xF0
    for bad in ({8}, {-1}, set(), 0, 0x100, True):
        with pytest.raises(rk.InvalidParamsError, match="enabled_cpus"):
            rk.ExtendParams(enabled_cpus=bad)  # type: ignore[arg-type]
    with pytest.raises(rk.InvalidParamsError, match=r"n_batch must be in 1\.\.8"):
        rk.ExtendParams(n_batch=9)


def test_input_models_convert_arrays() -> None:
    """Array fields go through arrays.py; bad ones are refused at construction."""
    t = rk.TokenInput(ids=[1, 2, 3])
    assert t.ids.dtype == np.int32
    assert "int32 array (3,)" in repr(t)
    with pytest.raises(rk.ArrayTypeError):
        rk.TokenInput(ids=[0.5])
    img = rk.ImageInput(embeddings=np.zeros((4, 8)))
    assert img.embeddings.shape == (1, 4, 8)
    with pytest.raises(rk.InvalidParamsError, match="role"):
        rk.Prompt(text="x", role="")
    with pytest.raises(rk.InvalidParamsError, match="width"):
        rk.ImageInput(embeddings=np.zeros((1, 4, 8)), width=-1)


def test_cross_attention_model_checks_all_four() -> None:
    """CrossAttention validates its arrays together at construction."""
    ca = rk.CrossAttention(
        k_cache=np.zeros((1, 2, 1, 4)),
        v_cache=np.zeros((1, 1, 4, 2)),
        mask=[0.0, 0.0],
        positions=[0, 1],
    )
    assert ca.num_tokens == 2
    assert ca.k_cache.dtype == np.float32
    assert ca.positions.dtype == np.int32
    with pytest.raises(rk.InvalidParamsError):
        rk.CrossAttention(
            k_cache=np.zeros((1, 2, 1, 4)),
            v_cache=np.zeros((1, 1, 4, 3)),
            mask=[0.0, 0.0],
            positions=[0, 1],
        )


def test_enums_match_the_c_declarations(abi: str) -> None:
    """IntEnum values equal the C enum constants of both ABIs."""
    ffi = ffi_for(abi)
    for enum, ctype, prefix in (
        (models.CallState, "LLMCallState", "RKLLM_RUN_"),
        (models.InputType, "RKLLMInputType", "RKLLM_INPUT_"),
        (models.InferMode, "RKLLMInferMode", "RKLLM_INFER_"),
    ):
        c = ffi.typeof(ctype).relements
        assert {prefix + m.name: m.value for m in enum} == c


def test_perf_rates() -> None:
    """PerfStats derives tokens per second, 0 when nothing was timed."""
    p = rk.PerfStats(
        prefill_time_ms=100.0,
        prefill_tokens=50,
        generate_time_ms=2000.0,
        generate_tokens=40,
        memory_usage_mb=1.0,
    )
    assert p.prefill_tokens_per_s == pytest.approx(500.0)
    assert p.generate_tokens_per_s == pytest.approx(20.0)
    assert attrs.evolve(p, generate_time_ms=0.0).generate_tokens_per_s == 0.0


def test_defaults_are_read_from_the_runtime(rt: Runtime) -> None:
    """default_params() returns what rkllm_createDefaultParam gives, every field set."""
    d = native.default_params(rt)
    assert (d.max_context_len, d.max_new_tokens, d.top_k, d.n_keep) == (512, -1, 1, 0)
    assert (d.top_p, d.temperature, d.repeat_penalty, d.mirostat_eta) == (0.9, 0.8, 1.1, 0.1)
    assert d.extend == rk.ExtendParams(
        base_domain_id=0,
        embed_flash=False,
        enabled_cpus={4, 5, 6, 7},
        n_batch=1,
        use_cross_attn=False,
    )
    if rt.abi == "1.3":
        assert d.ignore_eos_token is False
        assert d.img_start is None
    else:
        assert d.ignore_eos_token is None
    unset = [f.name for f in attrs.fields(rk.ModelParams) if getattr(d, f.name) is None]
    assert unset == (
        ["img_start", "img_end", "img_content"]
        if rt.abi == "1.3"
        else ["ignore_eos_token", "img_start", "img_end", "img_content"]
    )
