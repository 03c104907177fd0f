"""Chat templates: a conversation rendered to the raw prompt text a model was trained on.

The OpenAI and Ollama faces send whole conversations; the server renders them itself (the
runtime's own template is switched off) the way Hugging Face's ``apply_chat_template``
does: Jinja2 in an :class:`~jinja2.sandbox.ImmutableSandboxedEnvironment` with
``trim_blocks`` and ``lstrip_blocks``, the default (lenient) ``Undefined``, and HF's
helpers: ``raise_exception(message)``, the ``tojson`` filter (``ensure_ascii=False``,
``indent``, ``separators``, ``sort_keys``) and ``strftime_now(format)``. The variables are
``messages``, ``tools`` (``None`` when there are none), ``add_generation_prompt``,
``bos_token``, ``eos_token``, ``enable_thinking`` (only when given, so ``is defined``
tests work as in HF) and any extra keyword (``date_string``, ...).

Built-in templates (:data:`BUILTIN_TEMPLATES`, their Jinja sources in
:mod:`~.template_sources`), written after the output of each family's published
``tokenizer_config.json`` template (stop strings in brackets):

- ``qwen2.5`` (Qwen2, Qwen2.5): ChatML with Qwen's default system prompt; tools as a
  ``# Tools`` section with ``<tools>`` JSON lines, calls as ``<tool_call>`` JSON, results as
  ``<tool_response>`` blocks in a user turn [``<|im_end|>``, ``<|endoftext|>``].
- ``qwen3``: as Qwen2.5 without a default system prompt; ``enable_thinking=False`` appends
  ``<think>\\n\\n</think>\\n\\n`` to the generation prompt; the reasoning of assistant
  turns before the last user query is dropped [same].
- ``llama3`` (Llama 3.1, 3.2): header ids and ``<|eot_id|>``; tools in the first user turn,
  calls as ``{"name": ..., "parameters": ...}`` JSON, results in ``ipython`` turns;
  ``date_string`` defaults to today [``<|eot_id|>``, ``<|eom_id|>``, ``<|end_of_text|>``].
- ``deepseek-r1`` (R1 distills): ``<｜User｜>`` / ``<｜Assistant｜>`` (full-width bars), the
  generation prompt opens ``<think>\\n`` [``<｜end▁of▁sentence｜>``].
- ``gemma`` (Gemma 2, 3): ``<start_of_turn>user`` / ``model``; no system role, the system
  text opens the first user turn [``<end_of_turn>``, ``<eos>``].
- ``phi3`` (Phi-3, 3.5): ``<|system|>`` / ``<|user|>`` / ``<|assistant|>`` turns ended by
  ``<|end|>`` [``<|end|>``, ``<|endoftext|>``].
- ``minicpm`` (MiniCPM 3, 4): ChatML without a default system prompt [``<|im_end|>``].

Families whose published template has no tool format (DeepSeek-R1 distills, Gemma, Phi,
MiniCPM) get Qwen's: the ``# Tools`` block in the system text (Gemma: the first user turn),
``<tool_call>`` JSON for calls (what :func:`rkllm_sdk.tools.parse_tool_calls` reads back)
and ``<tool_response>`` blocks in a user turn for results. Without tools their output is
the published one, with these deliberate differences: DeepSeek-R1 joins all system
messages (as DeepSeek's later templates do; the distills' keeps the last one) and closes
the think block when ``enable_thinking`` is ``False``; Llama renders several calls of one
turn one per line (Meta's template refuses them) and a string tool result bare (Meta's
JSON-quotes it); a role no template knows is a :class:`TemplateError` everywhere.

:meth:`ChatTemplate.starts_thinking` tells whether a rendered prompt left a think block
open (DeepSeek-R1), so the reply's first tokens are reasoning.

How :func:`load_template` chooses:

1. ``spec`` names a built-in (``qwen2.5``, ``qwen3``, ``llama3``, ``deepseek-r1``,
   ``gemma``, ``phi3``, ``minicpm``, or an alias such as ``qwen2``, ``llama3.2``,
   ``gemma3``, ``phi3.5``);
2. ``spec`` is a path: a ``tokenizer_config.json`` (its ``chat_template``, a string or HF's
   list of named templates, and its ``bos_token`` / ``eos_token``) or a Jinja file;
3. ``spec`` is ``None``: ``<model stem>.tokenizer_config.json`` or ``tokenizer_config.json``
   beside the model if present, else a guess from the model's file name (``qwen3``,
   ``qwen``, ``llama-3``, ``deepseek-r1`` / ``r1-distill``, ``gemma``, ``phi``,
   ``minicpm``), else ``qwen2.5`` (ChatML).

Errors: :class:`TemplateError` (a :class:`ValueError`) for a missing or malformed template
file, a template that does not compile, and a conversation the template refuses
(``raise_exception``) or cannot render; its message names the file or repeats the
template's own.
"""

# ruff: noqa: RUF001, RUF002  # DeepSeek's special tokens are spelt with full-width bars

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any, NoReturn

import attrs
import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from . import template_sources as sources

__all__ = [
    "BUILTIN_TEMPLATES",
    "ChatTemplate",
    "TemplateError",
    "load_template",
]

_THINK_TAGS = ("<think>", "</think>")
_MAX_FILE_BYTES = 16 * 1024 * 1024


class TemplateError(ValueError):
    """A chat template that cannot be loaded, or a conversation it cannot render."""


# ---- the Jinja environment, as Hugging Face sets it up ------------------------------------


def _raise_exception(message: str) -> NoReturn:
    raise TemplateError(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | str | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # HF's own filter: Jinja's built-in one escapes HTML and sorts keys, which models never saw.
    return json.dumps(
        value,
        ensure_ascii=ensure_ascii,
        indent=indent,
        separators=separators,
        sort_keys=sort_keys,
    )


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@functools.cache
def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


@functools.lru_cache(maxsize=64)
def _compile(source: str) -> jinja2.Template:
    return _environment().from_string(source)


def _check_compiles(source: str, origin: str) -> None:
    try:
        _compile(source)
    except jinja2.TemplateSyntaxError as e:
        raise TemplateError(
            f"{origin}: chat template syntax error at line {e.lineno}: {e.message}"
        ) from None


# ---- the template object ------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class ChatTemplate:
    """A chat template and the special strings that go with it.

    Attributes:
        name: ``"qwen2.5"``, ``"qwen3"``, ``"llama3"``, ``"deepseek-r1"``, ``"gemma"``,
            ``"phi3"``, ``"minicpm"``, or ``"file:<path>"`` for one loaded from a file.
        source: The Jinja2 source.
        bos_token: The beginning-of-sequence text the template may emit.
        eos_token: The end-of-sequence text the template may emit.
        stop: End-of-turn strings that end a reply (passed to the runtime as stop strings).
        think_tags: ``("<think>", "</think>")`` for families that reason, else ``None``.
        tool_source: A variant used when tools are given (HF's ``"tool_use"`` template).
    """

    name: str
    source: str
    bos_token: str = ""
    eos_token: str = ""
    stop: tuple[str, ...] = ()
    think_tags: tuple[str, str] | None = None
    tool_source: str | None = None

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        add_generation_prompt: bool = True,
        enable_thinking: bool | None = None,
        **extra: Any,
    ) -> str:
        """The conversation as prompt text.

        Args:
            messages: Normalised messages (``role``, ``content``, and ``tool_calls`` with
                ``arguments`` as dicts, ``tool_call_id``, ``name``, ``reasoning_content``).
            tools: OpenAI-style tools (``{"type": "function", "function": {...}}``).
            add_generation_prompt: End with the opening of the assistant's turn.
            enable_thinking: ``None`` leaves the template's default.
            **extra: More template variables (e.g. Llama's ``date_string``).

        Raises:
            TemplateError: The template refused the conversation or failed on it.
        """
        source = self.tool_source if tools and self.tool_source is not None else self.source
        context: dict[str, Any] = {
            **extra,
            "messages": [dict(m) for m in messages],
            "tools": [dict(t) for t in tools] if tools else None,
            "add_generation_prompt": add_generation_prompt,
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
        }
        if enable_thinking is not None:
            context["enable_thinking"] = enable_thinking
        try:
            return _compile(source).render(context)
        except TemplateError:
            raise
        except jinja2.TemplateSyntaxError as e:
            raise TemplateError(
                f"chat template {self.name}: syntax error at line {e.lineno}: {e.message}"
            ) from None
        except Exception as e:  # a template is code: any failure in it is the template's
            raise TemplateError(f"chat template {self.name} failed: {e}") from None

    def starts_thinking(self, prompt: str) -> bool:
        """Whether a reply to ``prompt`` begins inside a thinking block (the prompt opened it,
        as DeepSeek-R1's does), so its first tokens are reasoning."""
        if self.think_tags is None:
            return False
        opened = prompt.rfind(self.think_tags[0])
        return opened >= 0 and prompt.find(self.think_tags[1], opened) < 0


# ---- the built-in templates (their sources: template_sources) -----------------------------


def _builtin(
    name: str, source: str, bos: str, eos: str, stop: tuple[str, ...], think: bool = False
) -> ChatTemplate:
    return ChatTemplate(
        name=name,
        source=source.strip("\n"),
        bos_token=bos,
        eos_token=eos,
        stop=stop,
        think_tags=_THINK_TAGS if think else None,
    )


BUILTIN_TEMPLATES: Mapping[str, ChatTemplate] = MappingProxyType(
    {
        t.name: t
        for t in (
            _builtin("qwen2.5", sources.QWEN2_5, "", "<|im_end|>", ("<|im_end|>", "<|endoftext|>")),
            _builtin(
                "qwen3",
                sources.QWEN3,
                "",
                "<|im_end|>",
                ("<|im_end|>", "<|endoftext|>"),
                think=True,
            ),
            _builtin(
                "llama3",
                sources.LLAMA3,
                "<|begin_of_text|>",
                "<|eot_id|>",
                ("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>"),
            ),
            _builtin(
                "deepseek-r1",
                sources.DEEPSEEK_R1,
                "<｜begin▁of▁sentence｜>",
                "<｜end▁of▁sentence｜>",
                ("<｜end▁of▁sentence｜>",),
                think=True,
            ),
            _builtin("gemma", sources.GEMMA, "<bos>", "<eos>", ("<end_of_turn>", "<eos>")),
            _builtin("phi3", sources.PHI3, "<s>", "<|endoftext|>", ("<|end|>", "<|endoftext|>")),
            _builtin("minicpm", sources.MINICPM, "<s>", "<|im_end|>", ("<|im_end|>", "</s>")),
        )
    }
)
"""Built-in templates by name."""

_ALIASES = {
    "qwen": "qwen2.5",
    "qwen2": "qwen2.5",
    "chatml": "qwen2.5",
    "llama-3": "llama3",
    "llama3.1": "llama3",
    "llama3.2": "llama3",
    "llama-3.1": "llama3",
    "llama-3.2": "llama3",
    "deepseek": "deepseek-r1",
    "deepseek_r1": "deepseek-r1",
    "r1": "deepseek-r1",
    "gemma2": "gemma",
    "gemma3": "gemma",
    "phi": "phi3",
    "phi-3": "phi3",
    "phi3.5": "phi3",
    "phi-3.5": "phi3",
    "minicpm3": "minicpm",
    "minicpm4": "minicpm",
}

# Most specific first: R1 distills carry their base model's name ("...-Distill-Qwen-7B").
_GUESSES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), name)
    for pattern, name in (
        (r"deepseek[-_ ]?r1|r1[-_ ]?distill", "deepseek-r1"),
        (r"qwen[-_ ]?3(?![\db])", "qwen3"),  # not "qwen-3b" (a size)
        (r"qwen", "qwen2.5"),
        (r"llama[-_ ]?3", "llama3"),
        (r"gemma", "gemma"),
        (r"(?<![a-z])phi", "phi3"),
        (r"minicpm", "minicpm"),
    )
)

# Markers that identify a family in a template loaded from a file.
_FAMILY_MARKERS = (
    ("<｜Assistant｜>", "deepseek-r1"),
    ("<|start_header_id|>", "llama3"),
    ("<start_of_turn>", "gemma"),
    ("<|assistant|>", "phi3"),
    ("<|im_start|>", "qwen2.5"),
)
_KNOWN_STOPS = (
    "<|im_end|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<｜end▁of▁sentence｜>",
    "<end_of_turn>",
    "<|end|>",
    "<|endoftext|>",
)


def _guess(file_name: str) -> ChatTemplate:
    lowered = file_name.lower()
    for pattern, name in _GUESSES:
        if pattern.search(lowered):
            return BUILTIN_TEMPLATES[name]
    return BUILTIN_TEMPLATES["qwen2.5"]


def _builtin_named(spec: str) -> ChatTemplate | None:
    key = spec.strip().lower()
    return BUILTIN_TEMPLATES.get(_ALIASES.get(key, key))


# ---- templates from files -----------------------------------------------------------------


def _read_text(path: Path) -> str:
    try:
        if path.stat().st_size > _MAX_FILE_BYTES:
            raise TemplateError(f"{path}: too large for a chat template")
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TemplateError(f"chat template file not found: {path}") from None
    except UnicodeDecodeError:
        raise TemplateError(f"{path}: not UTF-8 text") from None
    except OSError as e:
        raise TemplateError(f"cannot read chat template {path}: {e.strerror or e}") from None


def _token(config: Mapping[str, Any], key: str, path: Path) -> str:
    value = config.get(key)
    if isinstance(value, Mapping):
        value = value.get("content")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise TemplateError(f'{path}: {key} must be a string or {{"content": ...}}')
    return value


def _pick_source(value: Any, path: Path) -> tuple[str, str | None]:
    """``(default source, tool_use source or None)`` from HF's ``chat_template`` value."""
    if isinstance(value, str):
        return value, None
    if isinstance(value, list):
        named: dict[str, str] = {}
        for item in value:
            if not (
                isinstance(item, Mapping)
                and isinstance(item.get("name"), str)
                and isinstance(item.get("template"), str)
            ):
                raise TemplateError(
                    f'{path}: chat_template entries must be {{"name": ..., "template": ...}}'
                )
            named[item["name"]] = item["template"]
        if "default" not in named:
            raise TemplateError(
                f"{path}: chat_template has no 'default' entry (has {', '.join(named) or 'none'})"
            )
        return named["default"], named.get("tool_use")
    raise TemplateError(f"{path}: chat_template must be a string or a list of named templates")


def _from_source(
    path: Path, source: str, bos: str, eos: str, tool_source: str | None = None
) -> ChatTemplate:
    origin = str(path)
    _check_compiles(source, origin)
    if tool_source is not None:
        _check_compiles(tool_source, origin)
    family = next((BUILTIN_TEMPLATES[n] for m, n in _FAMILY_MARKERS if m in source), None)
    if family is not None:
        bos = bos or family.bos_token
        eos = eos or family.eos_token
    stop = [s for s in _KNOWN_STOPS if s in source]
    if eos and eos not in stop:
        stop.append(eos)
    return ChatTemplate(
        name=f"file:{path}",
        source=source,
        bos_token=bos,
        eos_token=eos,
        stop=tuple(stop),
        think_tags=_THINK_TAGS if _THINK_TAGS[0] in source else None,
        tool_source=tool_source,
    )


def _from_tokenizer_config(path: Path) -> ChatTemplate:
    try:
        config = json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise TemplateError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(config, dict):
        raise TemplateError(f"{path}: not a JSON object")
    bos = _token(config, "bos_token", path)
    eos = _token(config, "eos_token", path)
    if "chat_template" in config and config["chat_template"] is not None:
        source, tool_source = _pick_source(config["chat_template"], path)
        return _from_source(path, source, bos, eos, tool_source)
    # Recent transformers keep the template beside the config, in chat_template.jinja.
    beside = path.with_name("chat_template.jinja")
    if beside.is_file():
        return _from_source(beside, _read_text(beside), bos, eos)
    raise TemplateError(f"{path}: has no chat_template")


def _from_file(path: Path) -> ChatTemplate:
    if path.suffix.lower() == ".json":
        return _from_tokenizer_config(path)
    return _from_source(path, _read_text(path), "", "")


def load_template(spec: str | None, model_path: Path) -> ChatTemplate:
    """The chat template for a model.

    Args:
        spec: A built-in name (or alias), a path to a ``tokenizer_config.json`` or a Jinja
            file (relative paths also tried beside the model), or ``None`` to use the
            model's own ``tokenizer_config.json`` or guess from its file name.
        model_path: The model file.

    Raises:
        TemplateError: An unknown name, a missing or malformed file, a template that does
            not compile.
    """
    if spec is None:
        for candidate in (
            model_path.with_name(model_path.stem + ".tokenizer_config.json"),
            model_path.with_name("tokenizer_config.json"),
        ):
            if candidate.is_file():
                return _from_file(candidate.resolve())
        return _guess(model_path.name)
    if not spec.strip():
        raise TemplateError("empty chat template name")
    builtin = _builtin_named(spec)
    if builtin is not None:
        return builtin
    path = Path(spec).expanduser()
    if not path.is_absolute() and not path.exists() and (model_path.parent / path).exists():
        path = model_path.parent / path
    if not path.exists():
        names = ", ".join(BUILTIN_TEMPLATES)
        raise TemplateError(
            f"unknown chat template {spec!r}: not a built-in ({names}) nor an existing file"
        )
    if path.is_dir():
        return _from_tokenizer_config(path.resolve() / "tokenizer_config.json")
    return _from_file(path.resolve())
