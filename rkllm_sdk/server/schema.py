"""JSON Schema for the proxy's methods: builders, and the one validator that reads them.

The registry describes every method's params and result with the builders below; the same
dicts are published in the OpenRPC document (``rpc.discover``) and interpreted here to check
and convert what a client sent. The validator understands the subset the builders emit
(``type``, ``properties``, ``required``, ``additionalProperties``, ``enum``, ``oneOf``,
``minimum`` / ``maximum``, ``items``, ``maxLength``) plus two extensions:

- ``x-enum``: a C enum, given by name or number; converted to its number.
- ``x-ndarray``: an array, as nested JSON lists or the typed form
  ``{"dtype", "shape", "data": base64}`` (see :mod:`.wire`); converted to a numpy array.

Failures raise :class:`ParamsError` carrying the path of the bad field
(``rkllm_input.embed_input.embed[3]``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ..models import CallState, InferMode, InputType
from . import wire
from .wire import ParamsError

__all__ = [
    "ENUMS",
    "INT32",
    "ParamsError",
    "boolean",
    "enum",
    "integer",
    "ndarray",
    "nullable",
    "number",
    "obj",
    "string",
    "validate",
]

Schema = dict[str, Any]

#: C enums by their C type name: member name -> value.
ENUMS: dict[str, dict[str, int]] = {
    "LLMCallState": {f"RKLLM_RUN_{m.name}": int(m) for m in CallState},
    "RKLLMInputType": {f"RKLLM_INPUT_{m.name}": int(m) for m in InputType},
    "RKLLMInferMode": {f"RKLLM_INFER_{m.name}": int(m) for m in InferMode},
}

INT32 = (-(2**31), 2**31 - 1)
_MAX_TEXT = 16 * 1024 * 1024


def obj(properties: Mapping[str, Schema], *required: str, description: str | None = None) -> Schema:
    """An object with these fields (no others)."""
    s: Schema = {
        "type": "object",
        "properties": dict(properties),
        "required": list(required),
        "additionalProperties": False,
    }
    if description:
        s["description"] = description
    return s


def string(description: str = "", *, max_length: int = _MAX_TEXT) -> Schema:
    """A string."""
    return {"type": "string", "maxLength": max_length, "description": description}


def integer(lo: int = INT32[0], hi: int = INT32[1], description: str = "") -> Schema:
    """An integer within [lo, hi] (a C int32 by default)."""
    return {"type": "integer", "minimum": lo, "maximum": hi, "description": description}


def number(description: str = "") -> Schema:
    """A finite number (a C float)."""
    return {"type": "number", "description": description}


def boolean(description: str = "") -> Schema:
    """A boolean (0 and 1 are accepted too, as C ints)."""
    return {"type": "boolean", "description": description}


def nullable(schema: Schema) -> Schema:
    """The schema, or null."""
    return {"oneOf": [schema, {"type": "null"}]}


def enum(c_name: str, description: str = "") -> Schema:
    """A C enum, by name or by number."""
    names = ENUMS[c_name]
    return {
        "x-enum": c_name,
        "description": description,
        "oneOf": [
            {"type": "string", "enum": list(names)},
            {"type": "integer", "enum": list(names.values())},
        ],
    }


def ndarray(dtype: str, dims: list[str], description: str = "") -> Schema:
    """An array of ``dims`` (names of the dimensions), nested lists or the typed form."""
    return {
        "x-ndarray": {"dtype": dtype, "dims": dims},
        "description": f"{description} [{', '.join(dims)}] {dtype}".strip(),
        "oneOf": [{"type": "array"}, wire.TYPED_ARRAY_SCHEMA],
    }


def _type_name(value: object) -> str:  # noqa: PLR0911  # one answer per JSON type
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def validate(schema: Schema, value: Any, path: str) -> Any:  # noqa: PLR0911, PLR0912
    """Check ``value`` against ``schema`` and return it converted (enums to numbers, arrays
    to numpy).

    Raises:
        ParamsError: naming ``path`` (or the deeper field at fault).
    """
    if "x-enum" in schema:
        return _enum(schema["x-enum"], value, path)
    if "x-ndarray" in schema:
        spec = schema["x-ndarray"]
        return wire.decode_array(value, path, spec["dtype"], len(spec["dims"]))
    if "oneOf" in schema:  # branches of distinct JSON types: the value's type picks one
        got = _type_name(value)
        for branch in schema["oneOf"]:
            if branch.get("type") == got or (branch.get("type") == "number" and got == "integer"):
                return validate(branch, value, path)
        kinds = " or ".join(str(b.get("type")) for b in schema["oneOf"])
        raise ParamsError(path, f"expected {kinds}, got {got}")
    kind = schema.get("type")
    got = _type_name(value)
    if kind == "object":
        if got != "object":
            raise ParamsError(path, f"expected an object, got {got}")
        return _object(schema, value, path)
    if kind == "array":
        if got != "array":
            raise ParamsError(path, f"expected an array, got {got}")
        if len(value) > schema.get("maxItems", 1024):
            raise ParamsError(path, "too many items")
        return [validate(schema["items"], v, f"{path}[{i}]") for i, v in enumerate(value)]
    if kind == "string":
        if got != "string":
            raise ParamsError(path, f"expected a string, got {got}")
        if len(value) > schema.get("maxLength", _MAX_TEXT):
            raise ParamsError(path, "string too long")
        return value
    if kind == "boolean":
        if got == "boolean" or (got == "integer" and value in (0, 1)):
            return bool(value)
        raise ParamsError(path, f"expected a boolean, got {got}")
    if kind == "integer":
        if got != "integer" and not (got == "number" and float(value).is_integer()):
            raise ParamsError(path, f"expected an integer, got {got}")
        number_ = int(value)
        lo, hi = schema.get("minimum", INT32[0]), schema.get("maximum", INT32[1])
        if not lo <= number_ <= hi:
            raise ParamsError(path, f"must be in {lo}..{hi}")
        return number_
    if kind == "number":
        if got not in ("integer", "number"):
            raise ParamsError(path, f"expected a number, got {got}")
        try:
            as_float = float(value)
        except OverflowError:
            raise ParamsError(path, "number out of range") from None
        if not math.isfinite(as_float):
            raise ParamsError(path, "must be finite")
        return as_float
    return value  # an unconstrained schema ({}): any JSON value


def _enum(c_name: str, value: Any, path: str) -> int:
    names = ENUMS[c_name]
    if isinstance(value, str) and value in names:
        return names[value]
    if isinstance(value, int) and not isinstance(value, bool) and value in names.values():
        return value
    raise ParamsError(path, f"expected a {c_name} name or number: {', '.join(names)}")


def _object(schema: Schema, value: dict[str, Any], path: str) -> dict[str, Any]:
    if "properties" not in schema:  # any object (tools in the OpenAI format)
        return value
    props: dict[str, Schema] = schema["properties"]
    out: dict[str, Any] = {}
    for key in schema.get("required", []):
        if key not in value:
            raise ParamsError(_join(path, key), "required field missing")
    for key, item in value.items():
        if key not in props:
            if schema.get("additionalProperties", True) is False:
                raise ParamsError(_join(path, key), "unknown field")
            continue
        out[key] = validate(props[key], item, _join(path, key))
    return out


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key
