"""compat: removed once llm/stream switch -- the old call forms init() and run_prepared() took.

Delete this file together with the compat path in ``rkllm_sdk/_native``.
"""

from __future__ import annotations

import pytest

import rkllm_sdk as rk
from rkllm_sdk import _native as native
from rkllm_sdk import models
from rkllm_sdk._ffi.loader import Runtime

from ..conftest import ModelFactory
from .conftest import Recorder


def test_old_init_form_takes_the_bridge_callback(rt: Runtime, model: ModelFactory) -> None:
    """The bridge's callback as fourth argument is accepted (and is what init installs anyway)."""
    h = native.init(rt, model(), rk.ModelParams(), rt.bridge.rkb_result_callback)
    native.destroy(h)


def test_old_init_form_refuses_another_callback(rt: Runtime, model: ModelFactory) -> None:
    """Any other result callback is refused rather than silently replaced by the bridge's."""
    other = rt.ffi.callback("LLMResultCallback", lambda result, ud, state: 0)
    with pytest.raises(rk.InvalidParamsError, match="bridge's result callback"):
        native.init(rt, model(), rk.ModelParams(), other)


def test_old_callback_builders_and_run_prepared_userdata(rt: Runtime, model: ModelFactory) -> None:
    """python_tokenizer() / tokenizer_callback= and run_prepared(userdata=) still work."""
    if rt.abi == "1.2":
        pytest.skip("tokenizer callbacks are runtime 1.3")
    errors: list[BaseException] = []
    tok = native.python_tokenizer(rt, lambda text: [7], errors)
    h = native.init(
        rt,
        model(internal_tokenizer=False),
        rk.ModelParams(),
        rt.bridge.rkb_result_callback,
        tokenizer_callback=tok,
    )
    rec = Recorder(rt)
    try:
        prepared = native.prepare_run(h, rk.Prompt(text="x"), models.InferOptions())
        native.run_prepared(h, prepared, userdata=rec.channel.userdata)
        assert rec.wait(0)
        assert rec.text().startswith("[tokenizer n=1 ")
        assert errors == []
    finally:
        native.destroy(h)
