"""Wire formats: arrays as JSON (nested lists or typed base64), results as JSON values.

An array arrives as nested JSON lists (``[[0.1, 0.2], [0.3, 0.4]]``) or in the typed form::

    {"dtype": "float32", "shape": [2, 2], "data": "<base64 of the little-endian bytes>"}

The typed form is decoded with one ``base64`` call and one ``numpy.frombuffer`` (no loop
per element); nested lists go through ``numpy.asarray``. Either way a wrong rank, a ragged
list, a value of the wrong kind (a NaN or a string where ids are expected), or an integer
beyond the C type raises :class:`ParamsError` naming the field, and the element when it can
be found (``rkllm_input.embed_input.embed[3]``). Arrays the runtime produces (logits,
hidden states) always leave in the typed form.
"""

from __future__ import annotations

import base64
import binascii
import math
from typing import Any

import numpy as np
import numpy.typing as npt

from ..results import PerfStats

__all__ = [
    "TYPED_ARRAY_SCHEMA",
    "ParamsError",
    "decode_array",
    "encode_array",
    "perf_json",
]

#: dtypes the typed form takes (read little-endian).
DTYPES = (
    "float16",
    "float32",
    "float64",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
)
_MAX_DIMS = 8

TYPED_ARRAY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "dtype": {"type": "string", "enum": list(DTYPES)},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "data": {"type": "string", "contentEncoding": "base64"},
    },
    "required": ["dtype", "shape", "data"],
    "additionalProperties": False,
}

_INT32 = np.iinfo(np.int32)


class ParamsError(Exception):
    """A parameter that does not fit its schema (JSON-RPC -32602), with its path."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path


def decode_array(value: Any, path: str, dtype: str, ndim: int) -> npt.NDArray[Any]:
    """An array of ``ndim`` dimensions for a field of C type ``dtype`` (``"float32"`` or
    ``"int32"``), C-contiguous in that dtype.

    Raises:
        ParamsError: naming the field (and element) at fault.
    """
    if isinstance(value, dict):
        arr = _typed(value, path)
    elif isinstance(value, list):
        arr = _nested(value, path, ndim)
    else:
        raise ParamsError(path, "expected an array: nested lists or {dtype, shape, data}")
    if arr.ndim != ndim:
        raise ParamsError(path, f"expected {ndim} dimensions, got shape {list(arr.shape)}")
    if arr.size == 0:
        raise ParamsError(path, f"empty array of shape {list(arr.shape)}")
    if dtype == "int32":
        if arr.dtype.kind not in "iu":
            raise ParamsError(_first_bad(value, path, ndim, ints=True), "expected integers")
        lo, hi = int(arr.min()), int(arr.max())
        if lo < _INT32.min or hi > _INT32.max:
            raise ParamsError(path, f"values must fit int32, got {lo}..{hi}")
        return np.ascontiguousarray(arr, dtype=np.int32)
    if arr.dtype.kind not in "fiu":
        raise ParamsError(_first_bad(value, path, ndim, ints=False), "expected numbers")
    if arr.dtype.kind in "iu" and isinstance(value, dict):
        raise ParamsError(f"{path}.dtype", f"expected a float dtype, got {arr.dtype}")
    with np.errstate(over="ignore"):
        out = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(out).all():
        raise ParamsError(path, "contains NaN or infinity (as float32)")
    return out


def _typed(value: dict[str, Any], path: str) -> npt.NDArray[Any]:
    if set(value) != {"dtype", "shape", "data"}:
        raise ParamsError(path, "a typed array has exactly the keys dtype, shape and data")
    dtype, shape, data = value["dtype"], value["shape"], value["data"]
    if dtype not in DTYPES:
        raise ParamsError(f"{path}.dtype", f"expected one of {', '.join(DTYPES)}")
    if (
        not isinstance(shape, list)
        or len(shape) > _MAX_DIMS
        or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)
    ):
        raise ParamsError(f"{path}.shape", f"expected up to {_MAX_DIMS} non-negative integers")
    if not isinstance(data, str):
        raise ParamsError(f"{path}.data", "expected a base64 string")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ParamsError(f"{path}.data", "not valid base64") from None
    dt = np.dtype(dtype).newbyteorder("<")
    if len(raw) != math.prod(shape) * dt.itemsize:
        raise ParamsError(
            f"{path}.data",
            f"{len(raw)} bytes do not hold shape {shape} of {dtype} ({dt.itemsize} bytes each)",
        )
    # bytearray: one copy into memory the SDK may hand to C (frombuffer over bytes is
    # read-only).
    return np.frombuffer(bytearray(raw), dtype=dt).reshape(shape)


def _nested(value: list[Any], path: str, ndim: int) -> npt.NDArray[Any]:
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError, OverflowError, RecursionError):
        bad = _first_bad(value, path, ndim, ints=False)
        raise ParamsError(bad, "not a rectangular array") from None
    if arr.dtype == object or arr.dtype.kind not in "biuf":
        raise ParamsError(_first_bad(value, path, ndim, ints=False), "not a numeric array")
    if arr.dtype.kind == "b":
        raise ParamsError(path, "booleans are not numbers here")
    return arr


def _first_bad(value: Any, path: str, ndim: int, *, ints: bool) -> str:
    """The path of the first element that breaks the shape or kind (on the error path only,
    so a loop over elements is fine here); ``path`` itself when none is found."""
    if not isinstance(value, list):
        return path

    def walk(v: Any, p: str, depth: int, expected_len: list[int | None]) -> str | None:
        if depth == ndim:
            ok = isinstance(v, int) and not isinstance(v, bool)
            if not ints:
                ok = ok or isinstance(v, float)
            return None if ok else p
        if not isinstance(v, list):
            return p
        if expected_len[depth] is None:
            expected_len[depth] = len(v)
        elif len(v) != expected_len[depth]:
            return p
        for i, item in enumerate(v):
            bad = walk(item, f"{p}[{i}]", depth + 1, expected_len)
            if bad is not None:
                return bad
        return None

    try:
        return walk(value, path, 0, [None] * (ndim + 1)) or path
    except RecursionError:
        return path


def encode_array(arr: npt.NDArray[Any]) -> dict[str, Any]:
    """An array in the typed form (float32 / int32, little-endian)."""
    out = np.ascontiguousarray(arr)
    if out.dtype.byteorder == ">":
        out = out.astype(out.dtype.newbyteorder("<"))
    return {
        "dtype": str(out.dtype.name),
        "shape": list(out.shape),
        "data": base64.b64encode(out.tobytes()).decode("ascii"),
    }


def perf_json(perf: PerfStats | None) -> dict[str, float | int] | None:
    """``RKLLMPerfStat`` as a JSON object with the C field names."""
    if perf is None:
        return None
    return {
        "prefill_time_ms": perf.prefill_time_ms,
        "prefill_tokens": perf.prefill_tokens,
        "generate_time_ms": perf.generate_time_ms,
        "generate_tokens": perf.generate_tokens,
        "memory_usage_mb": perf.memory_usage_mb,
    }
