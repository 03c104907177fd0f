"""Tool calls and thinking in model output, and tool schemas from Python functions.

The runtime's function calling makes models answer with blocks
``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``; thinking models (Qwen3) start
with ``<think>...</think>``. These helpers take such text apart, repair the JSON small models
get slightly wrong, and check calls against the tools' schemas.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .errors import InvalidParamsError
from .results import ToolCall

__all__ = [
    "ToolCall",
    "ToolLike",
    "parse_tool_calls",
    "split_thinking",
    "tool_dicts",
    "tool_schema",
]

_TOOL_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.S)
_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
    "null": (type(None),),
}


# ---- thinking and tool calls --------------------------------------------------------------


def split_thinking(text: str) -> tuple[str, str]:
    """``(thinking, rest)``: the ``<think>`` block at the start of a reply, and what follows.

    An unterminated block (the run stopped while thinking) is all thinking.

    >>> split_thinking("<think>\\nhmm\\n</think>\\n\\nYes.")
    ('hmm', 'Yes.')
    """
    stripped = text.lstrip()
    if not stripped.startswith("<think>"):
        return "", text
    body = stripped[len("<think>") :]
    end = body.find("</think>")
    if end < 0:
        return body.strip(), ""
    return body[:end].strip(), body[end + len("</think>") :].lstrip()


def _repair_json(raw: str) -> Any:
    """Parse a tool call's JSON, fixing what small models commonly get wrong."""
    text = raw.strip()
    text = re.sub(r"^```(?:json)?\s*|\s*```$", "", text)
    try:
        return json.loads(text)
    except ValueError:
        pass
    fixed = re.sub(r",\s*([}\]])", r"\1", text)  # trailing commas
    fixed = re.sub(r"\bTrue\b", "true", fixed)
    fixed = re.sub(r"\bFalse\b", "false", fixed)
    fixed = re.sub(r"\bNone\b", "null", fixed)
    if '"' not in fixed:
        fixed = fixed.replace("'", '"')
    # Close what was left open, innermost first (strings are assumed closed).
    stack: list[str] = []
    for ch in fixed:
        if ch in "{[":
            stack.append("}" if ch == "{" else "]")
        elif ch in "}]" and stack:
            stack.pop()
    fixed += "".join(reversed(stack))
    return json.loads(fixed)


def _check_value(value: Any, schema: Mapping[str, Any], path: str) -> str | None:
    kind = schema.get("type")
    if isinstance(kind, str) and kind in _JSON_TYPES:
        ok = isinstance(value, _JSON_TYPES[kind]) and not (
            kind in ("integer", "number") and isinstance(value, bool)
        )
        if not ok:
            return f"{path} should be {kind}, got {json.dumps(value)}"
    if "enum" in schema and value not in schema["enum"]:
        return f"{path} should be one of {json.dumps(schema['enum'])}, got {json.dumps(value)}"
    return None


def _validate(
    name: str, arguments: dict[str, Any], tools: Mapping[str, Mapping[str, Any]]
) -> str | None:
    if name not in tools:
        return f"unknown tool {name!r} (known: {', '.join(sorted(tools)) or 'none'})"
    params = tools[name].get("parameters") or {}
    props: Mapping[str, Any] = params.get("properties") or {}
    missing = [p for p in params.get("required") or [] if p not in arguments]
    if missing:
        return f"{name}: missing required argument(s) {', '.join(missing)}"
    for key, value in arguments.items():
        if key in props:
            problem = _check_value(value, props[key], f"{name}.{key}")
            if problem:
                return problem
        elif params.get("additionalProperties") is False:
            return f"{name}: unexpected argument {key!r}"
    return None


def _functions(tools: Sequence[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    out: dict[str, Mapping[str, Any]] = {}
    for tool in tools:
        fn = tool.get("function", tool)
        out[str(fn["name"])] = fn
    return out


def parse_tool_calls(
    text: str, tools: Sequence[Mapping[str, Any]] | None = None, *, first_index: int = 0
) -> tuple[str, list[ToolCall]]:
    """Find ``<tool_call>`` blocks: ``(text without them, the calls)``.

    JSON is repaired where it can be (code fences, trailing commas, Python literals, single
    quotes, unclosed brackets, arguments given as a JSON string). With ``tools`` (OpenAI
    format), each call is checked against its schema; problems go to ``ToolCall.error``.
    Ids are ``call_<n>_<hash of the block>``, ``n`` counting from ``first_index``.

    >>> text = '<tool_call>{"name": "f", "arguments": {"x": 1,}}</tool_call>'
    >>> parse_tool_calls(text)[1][0].arguments
    {'x': 1}
    """
    known = _functions(tools) if tools is not None else None
    calls: list[ToolCall] = []
    for index, match in enumerate(_TOOL_BLOCK.finditer(text), start=first_index):
        raw = match.group(1)
        call_id = f"call_{index}_{hashlib.sha1(raw.encode()).hexdigest()[:8]}"
        try:
            data = _repair_json(raw)
        except ValueError as exc:
            calls.append(
                ToolCall(
                    name="", arguments={}, id=call_id, error=f"unreadable tool call JSON: {exc}"
                )
            )
            continue
        if not isinstance(data, dict):
            calls.append(
                ToolCall(name="", arguments={}, id=call_id, error="tool call is not a JSON object")
            )
            continue
        name = str(data.get("name", ""))
        args = data.get("arguments", data.get("parameters", {}))
        if isinstance(args, str):  # some models send the arguments as a JSON string
            try:
                args = _repair_json(args)
            except ValueError:
                args = {}
        if not isinstance(args, dict):
            calls.append(
                ToolCall(
                    name=name, arguments={}, id=call_id, error="arguments are not a JSON object"
                )
            )
            continue
        error = _validate(name, args, known) if known is not None else None
        calls.append(ToolCall(name=name, arguments=args, id=call_id, error=error))
    rest = _TOOL_BLOCK.sub("", text).strip()
    return rest, calls


# ---- tools from Python functions ----------------------------------------------------------


def _json_schema(annotation: Any) -> dict[str, Any]:  # noqa: PLR0911  # one case per type
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is str:
        return {"type": "string"}
    if annotation is bool:
        return {"type": "boolean"}
    if annotation is int:
        return {"type": "integer"}
    if annotation is float:
        return {"type": "number"}
    if origin is typing.Literal:
        return {
            "type": "string" if all(isinstance(a, str) for a in args) else "number",
            "enum": list(args),
        }
    if origin in (list, tuple, Sequence) or annotation in (list, tuple):
        return {"type": "array", "items": _json_schema(args[0])} if args else {"type": "array"}
    if origin in (dict, Mapping) or annotation is dict:
        return {"type": "object"}
    if origin in (types.UnionType, typing.Union):
        others = [a for a in args if a is not type(None)]
        if len(others) == 1:
            return _json_schema(others[0])
    raise InvalidParamsError(f"cannot describe the type {annotation!r} as a JSON schema")


def tool_schema(fn: Callable[..., Any]) -> dict[str, Any]:
    """An OpenAI-format tool from a typed Python function (name, docstring, parameters).

    Parameters without a default are required; ``Optional[X]`` / ``X | None`` are not.

    >>> def set_light(entity_id: str, brightness: int = 255) -> None:
    ...     '''Switch a light on.'''
    >>> tool_schema(set_light)["function"]["parameters"]["required"]
    ['entity_id']
    """
    hints = typing.get_type_hints(fn)
    props: dict[str, Any] = {}
    required: list[str] = []
    for name, param in inspect.signature(fn).parameters.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if name not in hints:
            raise InvalidParamsError(f"{fn.__name__}: parameter {name!r} needs a type annotation")
        props[name] = _json_schema(hints[name])
        optional = type(None) in typing.get_args(hints[name])
        if param.default is inspect.Parameter.empty and not optional:
            required.append(name)
        elif param.default is not inspect.Parameter.empty:
            props[name]["default"] = param.default
    doc = inspect.getdoc(fn) or ""
    return {
        "type": "function",
        "function": {
            "name": fn.__name__,
            "description": doc.split("\n\n")[0].strip(),
            "parameters": {"type": "object", "properties": props, "required": required},
        },
    }


#: A tool: an OpenAI-format dict, or a typed Python function (see :func:`tool_schema`).
ToolLike = Mapping[str, Any] | Callable[..., Any]


def tool_dicts(tools: Sequence[ToolLike]) -> list[dict[str, Any]]:
    """OpenAI-format dicts for a mix of dicts and typed functions."""
    return [dict(t) if isinstance(t, Mapping) else tool_schema(t) for t in tools]
