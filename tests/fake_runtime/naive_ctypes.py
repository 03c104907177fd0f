"""A consumer of the fake written the way rkllama's ctypes wrapper reads the real runtime.

Plain ctypes (no cffi), the structs spelled out per ABI as such wrappers do, and a result
callback that takes text from ``RKLLM_RUN_NORMAL`` only and decodes each callback's text on
its own as strict UTF-8. A text that does not decode is lost (rkllama's callback would raise
inside ctypes, which prints the error and goes on); this consumer counts it instead.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field
from pathlib import Path

from rkllm_sdk._fake import library_path

RKLLM_RUN_NORMAL = 0
_MULTIMODAL_SIZE = {"1.2": 48, "1.3": 144}


class RKLLMExtendParam(ctypes.Structure):
    _fields_ = [
        ("base_domain_id", ctypes.c_int32),
        ("embed_flash", ctypes.c_int8),
        ("enabled_cpus_num", ctypes.c_int8),
        ("enabled_cpus_mask", ctypes.c_uint32),
        ("n_batch", ctypes.c_uint8),
        ("use_cross_attn", ctypes.c_int8),
        ("reserved", ctypes.c_uint8 * 104),
    ]


class RKLLMResultLastHiddenLayer(ctypes.Structure):
    _fields_ = [
        ("hidden_states", ctypes.POINTER(ctypes.c_float)),
        ("embd_size", ctypes.c_int),
        ("num_tokens", ctypes.c_int),
    ]


class RKLLMResultLogits(ctypes.Structure):
    _fields_ = [
        ("logits", ctypes.POINTER(ctypes.c_float)),
        ("vocab_size", ctypes.c_int),
        ("num_tokens", ctypes.c_int),
    ]


class RKLLMPerfStat(ctypes.Structure):
    _fields_ = [
        ("prefill_time_ms", ctypes.c_float),
        ("prefill_tokens", ctypes.c_int),
        ("generate_time_ms", ctypes.c_float),
        ("generate_tokens", ctypes.c_int),
        ("memory_usage_mb", ctypes.c_float),
    ]


class RKLLMResult(ctypes.Structure):
    _fields_ = [
        ("text", ctypes.c_char_p),
        ("token_id", ctypes.c_int32),
        ("last_hidden_layer", RKLLMResultLastHiddenLayer),
        ("logits", RKLLMResultLogits),
        ("perf", RKLLMPerfStat),
    ]


Callback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(RKLLMResult), ctypes.c_void_p, ctypes.c_int
)


def _param_struct(abi: str) -> type[ctypes.Structure]:
    head = [
        ("model_path", ctypes.c_char_p),
        ("max_context_len", ctypes.c_int32),
        ("max_new_tokens", ctypes.c_int32),
        ("top_k", ctypes.c_int32),
        ("n_keep", ctypes.c_int32),
        ("top_p", ctypes.c_float),
        ("temperature", ctypes.c_float),
        ("repeat_penalty", ctypes.c_float),
        ("frequency_penalty", ctypes.c_float),
        ("presence_penalty", ctypes.c_float),
        ("mirostat", ctypes.c_int32),
        ("mirostat_tau", ctypes.c_float),
        ("mirostat_eta", ctypes.c_float),
        ("skip_special_token", ctypes.c_bool),
    ]
    if abi == "1.2":
        tail = [
            ("is_async", ctypes.c_bool),
            ("img_start", ctypes.c_char_p),
            ("img_end", ctypes.c_char_p),
            ("img_content", ctypes.c_char_p),
        ]
    else:
        tail = [("ignore_eos_token", ctypes.c_bool), ("is_async", ctypes.c_bool)]
    fields = [*head, *tail, ("extend_param", RKLLMExtendParam)]
    return type("RKLLMParam", (ctypes.Structure,), {"_fields_": fields})


def _input_struct(abi: str) -> type[ctypes.Structure]:
    union = type(
        "RKLLMInputUnion",
        (ctypes.Union,),
        {
            "_fields_": [
                ("prompt_input", ctypes.c_char_p),
                ("multimodal_bytes", ctypes.c_uint8 * _MULTIMODAL_SIZE[abi]),
            ]
        },
    )
    fields = [
        ("role", ctypes.c_char_p),
        ("enable_thinking", ctypes.c_bool),
        ("input_type", ctypes.c_int),
        ("u", union),
    ]
    return type("RKLLMInput", (ctypes.Structure,), {"_fields_": fields, "_anonymous_": ["u"]})


def _infer_struct(abi: str) -> type[ctypes.Structure]:
    fields = [
        ("mode", ctypes.c_int),
        ("lora_params", ctypes.c_void_p),
        ("prompt_cache_params", ctypes.c_void_p),
    ]
    if abi == "1.3":
        fields.append(("sampling_params", ctypes.c_void_p))
    fields.append(("keep_history", ctypes.c_int))
    if abi == "1.3":
        fields.append(("max_new_tokens", ctypes.c_int32))
    return type("RKLLMInferParam", (ctypes.Structure,), {"_fields_": fields})


class RKLLMCallback(ctypes.Structure):
    _fields_ = [
        ("result_callback", Callback),
        ("result_userdata", ctypes.c_void_p),
        ("tokenizer_callback", ctypes.c_void_p),
        ("tokenizer_userdata", ctypes.c_void_p),
        ("embed_callback", ctypes.c_void_p),
        ("embed_userdata", ctypes.c_void_p),
    ]


SIZES = {"1.2": (208, 64, 32), "1.3": (184, 160, 40)}  # RKLLMParam, RKLLMInput, RKLLMInferParam


@dataclass
class NaiveReading:
    """What the naive consumer kept: NORMAL texts that decoded, and how many did not."""

    texts: list[str] = field(default_factory=list)
    rejected: int = 0

    @property
    def text(self) -> str:
        return "".join(self.texts)


def read_reply(abi: str, model: Path, prompt: str) -> NaiveReading:
    """Init, run ``prompt`` once and destroy, reading text the naive way."""
    param_t, input_t, infer_t = _param_struct(abi), _input_struct(abi), _infer_struct(abi)
    assert (ctypes.sizeof(param_t), ctypes.sizeof(input_t), ctypes.sizeof(infer_t)) == SIZES[abi]
    assert ctypes.sizeof(RKLLMResult) == 72
    lib = ctypes.CDLL(str(library_path(abi)))
    lib.rkllm_createDefaultParam.restype = param_t
    lib.rkllm_init.restype = ctypes.c_int
    lib.rkllm_run.argtypes = [
        ctypes.c_void_p,
        ctypes.POINTER(input_t),
        ctypes.POINTER(infer_t),
        ctypes.c_void_p,
    ]
    lib.rkllm_destroy.argtypes = [ctypes.c_void_p]

    reading = NaiveReading()

    def on_result(result: ctypes._Pointer[RKLLMResult], userdata: int, state: int) -> int:
        if state == RKLLM_RUN_NORMAL:
            try:
                reading.texts.append(result.contents.text.decode("utf-8"))
            except UnicodeDecodeError:
                reading.rejected += 1
        return 0

    callback = Callback(on_result)
    param = lib.rkllm_createDefaultParam()
    param.model_path = str(model).encode()
    param.max_context_len = 4096
    param.max_new_tokens = 4096
    handle = ctypes.c_void_p()
    if abi == "1.2":
        lib.rkllm_init.argtypes = [
            ctypes.POINTER(ctypes.c_void_p),
            ctypes.POINTER(param_t),
            Callback,
        ]
        rc = lib.rkllm_init(ctypes.byref(handle), ctypes.byref(param), callback)
    else:
        lib.rkllm_init.argtypes = [
            ctypes.POINTER(ctypes.c_void_p),
            ctypes.POINTER(param_t),
            ctypes.POINTER(RKLLMCallback),
        ]
        cb = RKLLMCallback(result_callback=callback)
        rc = lib.rkllm_init(ctypes.byref(handle), ctypes.byref(param), ctypes.byref(cb))
    assert rc == 0, "rkllm init failed"
    try:
        inp = input_t(role=b"user", enable_thinking=False, input_type=0)
        inp.prompt_input = prompt.encode()
        infer = infer_t(mode=0)
        assert lib.rkllm_run(handle, ctypes.byref(inp), ctypes.byref(infer), None) == 0
    finally:
        assert lib.rkllm_destroy(handle) == 0
    return reading
