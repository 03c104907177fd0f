"""Validators and converters shared by the attrs models of :mod:`rkllm_sdk.models`.

Cheap checks only (types, ranges of the C types the values go to); they raise
:class:`~rkllm_sdk.errors.InvalidParamsError` naming the field.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from typing import Any

import attrs
import numpy as np

from .errors import InvalidParamsError

# ---- validators ---------------------------------------------------------------------------
# Typed with Any on purpose: attrs' validator protocol is generic in the field's type
# (Attribute[T] is invariant), so one helper serving int, float and bool fields cannot be
# typed precisely; each helper checks its value's type at run time instead.


INT_RANGES = {
    "int32": (-(2**31), 2**31 - 1),
    "uint8": (0, 2**8 - 1),
    "size_t": (0, 2**64 - 1),  # LP64, the only data model the runtime ships for
}
FLOAT32_MAX = float(np.finfo(np.float32).max)


def fail(inst: object, attr: attrs.Attribute[Any], what: str, value: object) -> None:
    raise InvalidParamsError(f"{type(inst).__name__}.{attr.name} must be {what}, got {value!r}")


def scalar(value: Any) -> Any:
    """numpy scalars as Python ones (``np.int64(3)`` -> 3, ``np.float32`` -> float,
    ``np.bool_`` -> bool); everything else unchanged, for the validator to judge."""
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


def opt(check: Any, what: str) -> Any:
    """A validator for an optional C ``float``: None passes, otherwise it must be an int or
    float within float32's range and check(value) must hold."""

    def validate(inst: object, attr: attrs.Attribute[Any], value: Any) -> None:
        if value is None:
            return
        if isinstance(value, bool) or not isinstance(value, int | float):
            fail(inst, attr, what, value)
        # Before check(): an int beyond float's range cannot even be converted.
        if not (isinstance(value, float) and math.isnan(value)) and abs(value) > FLOAT32_MAX:
            fail(inst, attr, f"{what}, within float32 (magnitude <= {FLOAT32_MAX:.7g})", value)
        if not check(value):
            fail(inst, attr, what, value)

    return validate


def opt_int(check: Any, what: str, ctype: str = "int32") -> Any:
    """A validator for an optional C integer of type ``ctype``: None passes, otherwise an int
    (never a bool) within the C type's range for which check(value) holds."""
    lo, hi = INT_RANGES[ctype]

    def validate(inst: object, attr: attrs.Attribute[Any], value: Any) -> None:
        if value is None:
            return
        if isinstance(value, bool) or not isinstance(value, int) or not check(value):
            fail(inst, attr, what, value)
        if not lo <= value <= hi:
            fail(inst, attr, f"{what} and within {ctype} ({lo}..{hi})", value)

    return validate


def opt_bool(inst: object, attr: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and not isinstance(value, bool):
        fail(inst, attr, "a bool", value)


def text(inst: object, attr: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, str):
        fail(inst, attr, "a str", value)


def opt_text(inst: object, attr: attrs.Attribute[Any], value: Any) -> None:
    if value is not None:
        text(inst, attr, value)


def role(inst: object, attr: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, str) or not value:
        fail(inst, attr, 'a non-empty role such as "user" or "tool"', value)


def path(value: Any) -> str:
    """A str or ``os.PathLike`` as a str (anything else: InvalidParamsError)."""
    try:
        text = os.fspath(value)
    except TypeError:
        raise InvalidParamsError(
            f"a path must be a str or os.PathLike, got {type(value).__name__}: {value!r}"
        ) from None
    if not isinstance(text, str):
        raise InvalidParamsError(f"a path must be text, got {type(text).__name__}: {text!r}")
    return text


def instance_of(cls: type, hint: str) -> Any:
    def validate(inst: object, attr: attrs.Attribute[Any], value: Any) -> None:
        if value is not None and not isinstance(value, cls):
            fail(inst, attr, f"None or a {cls.__name__} ({hint})", value)

    return validate


def finite(x: float) -> bool:
    return math.isfinite(x)


def cpus(value: Iterable[int] | int | None) -> frozenset[int] | None:
    """CPU cores as a set of numbers 0..7, from a set / list or a bit mask."""
    if value is None:
        return None
    value = scalar(value)
    if isinstance(value, bool):
        raise InvalidParamsError(f"enabled_cpus must be core numbers or a mask, got {value!r}")
    if isinstance(value, int):
        if not 0 < value <= 0xFF:
            raise InvalidParamsError(f"enabled_cpus mask must be in 0x01..0xFF, got {value:#x}")
        return frozenset(k for k in range(8) if value >> k & 1)
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise InvalidParamsError(f"enabled_cpus must be core numbers or a mask, got {value!r}")
    cores = frozenset(
        c if isinstance(c, np.bool_) else scalar(c)  # np.bool_ stays refused below
        for c in value
    )
    if not cores or not all(
        isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 7 for c in cores
    ):
        raise InvalidParamsError(
            f"enabled_cpus must be core numbers 0..7, got {sorted(cores, key=str)}"
        )
    return cores


# Validation rules shared by ModelParams, Sampling and the other models (defined once).
NON_NEGATIVE_INT = opt_int(lambda x: x >= 0, ">= 0")
NON_NEGATIVE_SIZE = opt_int(lambda x: x >= 0, ">= 0", "size_t")
TOP_P = opt(lambda x: 0 < x <= 1, "in (0, 1]")
NON_NEGATIVE = opt(lambda x: 0 <= x < math.inf, ">= 0")
POSITIVE = opt(lambda x: 0 < x < math.inf, "> 0")
FINITE = opt(finite, "finite")
MIROSTAT = opt_int(lambda x: x in (0, 1, 2), "0, 1 or 2")


def array_repr(value: object) -> str:
    if isinstance(value, np.ndarray):
        return f"<{value.dtype} array {value.shape}>"
    return repr(value)
