"""``RKLLMParam``: the runtime's defaults read out, overrides merged, the struct filled in."""

from __future__ import annotations

import os
from typing import Any

import attrs
import numpy as np

from .._ffi.loader import Runtime
from .._ffi.protocols import CData
from ..errors import UnsupportedOnABIError
from ..models import ExtendParams, ModelParams
from ._util import assign, cstr, only_on

__all__ = ["SAMPLING_FIELDS", "default_params", "merge_params", "param_struct"]

#: ``RKLLMSamplingParam``'s fields, named as in ``ModelParams`` and ``Sampling``.
SAMPLING_FIELDS = (
    "top_k",
    "top_p",
    "temperature",
    "repeat_penalty",
    "frequency_penalty",
    "presence_penalty",
    "mirostat",
    "mirostat_tau",
    "mirostat_eta",
)
_PARAM_SCALARS = (
    "max_context_len",
    "max_new_tokens",
    "n_keep",
    *SAMPLING_FIELDS,
    "skip_special_token",
    "is_async",
)
_FLOATS = (
    "top_p",
    "temperature",
    "repeat_penalty",
    "frequency_penalty",
    "presence_penalty",
    "mirostat_tau",
    "mirostat_eta",
)
_IMG_MARKERS = ("img_start", "img_end", "img_content")


def default_params(rt: Runtime) -> ModelParams:
    """``rkllm_createDefaultParam``, read into a fully filled :class:`ModelParams`."""
    p = rt.lib.rkllm_createDefaultParam()
    # Any: the values are C scalars of several types, checked by ModelParams' validators.
    values: dict[str, Any] = {name: getattr(p, name) for name in _PARAM_SCALARS}
    for name in ("skip_special_token", "is_async"):
        values[name] = bool(values[name])
    for name in _FLOATS:
        # The shortest decimal that is the same C float (0.9, not 0.8999999761581421).
        values[name] = float(str(np.float32(values[name])))
    if rt.abi == "1.3":
        values["ignore_eos_token"] = bool(p.ignore_eos_token)
    else:
        for name in _IMG_MARKERS:
            ptr = getattr(p, name)
            values[name] = (
                None if ptr == rt.ffi.NULL else rt.ffi.string(ptr).decode("utf-8", "replace")
            )
    e = p.extend_param
    values["extend"] = ExtendParams(
        base_domain_id=int(e.base_domain_id),
        embed_flash=bool(e.embed_flash),
        enabled_cpus=int(e.enabled_cpus_mask) or None,
        n_batch=int(e.n_batch) or 1,
        use_cross_attn=bool(e.use_cross_attn),
    )
    return ModelParams(**values)


def merge_params(base: ModelParams, override: ModelParams) -> ModelParams:
    """``base`` with every field that ``override`` sets (not None) replaced."""
    changes = {
        f.name: getattr(override, f.name)
        for f in attrs.fields(ModelParams)
        if f.name != "extend" and getattr(override, f.name) is not None
    }
    ext = {
        f.name: getattr(override.extend, f.name)
        for f in attrs.fields(ExtendParams)
        if getattr(override.extend, f.name) is not None
    }
    return attrs.evolve(base, **changes, extend=attrs.evolve(base.extend, **ext))


def _fill_extend(e: CData, ext: ExtendParams) -> None:  # an RKLLMExtendParam
    if ext.base_domain_id is not None:
        assign(e, "base_domain_id", ext.base_domain_id, "ExtendParams.base_domain_id")
    if ext.embed_flash is not None:
        e.embed_flash = int(ext.embed_flash)
    if ext.enabled_cpus is not None:
        e.enabled_cpus_mask = ext.enabled_cpus_mask
        e.enabled_cpus_num = len(ext.enabled_cpus)
    if ext.n_batch is not None:
        assign(e, "n_batch", ext.n_batch, "ExtendParams.n_batch")
    if ext.use_cross_attn is not None:
        e.use_cross_attn = int(ext.use_cross_attn)


def param_struct(
    rt: Runtime, model_path: str | os.PathLike[str], params: ModelParams, keep: list[object]
) -> CData:
    """An ``RKLLMParam*``: the runtime's defaults with ``params`` applied; ``keep`` owns it.

    Raises:
        InvalidParamsError / UnsupportedOnABIError: bad or other-ABI parameters.
    """
    if rt.abi == "1.2" and params.ignore_eos_token is not None:
        only_on(rt, "1.3", "ModelParams.ignore_eos_token")
    if rt.abi == "1.3":
        for name in _IMG_MARKERS:
            if getattr(params, name) is not None:
                raise UnsupportedOnABIError(
                    f"ModelParams.{name} exists only in runtime ABI 1.2; on 1.3 give the markers "
                    f"per input (ImageInput.start / end / content)"
                )
    p = rt.ffi.new("RKLLMParam*", rt.lib.rkllm_createDefaultParam())
    keep.append(p)
    p.model_path = cstr(rt, keep, model_path, "model_path")
    for name in _PARAM_SCALARS:
        value = getattr(params, name)
        if value is not None:
            assign(p, name, value, f"ModelParams.{name}")
    if rt.abi == "1.3":
        if params.ignore_eos_token is not None:
            p.ignore_eos_token = params.ignore_eos_token
    else:
        for name in _IMG_MARKERS:
            if getattr(params, name) is not None:
                setattr(p, name, cstr(rt, keep, getattr(params, name), f"ModelParams.{name}"))
    _fill_extend(p.extend_param, params.extend)
    return p
