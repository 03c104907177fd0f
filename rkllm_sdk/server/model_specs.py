"""Named models as the operator configures them: ``--model`` options and ``--models-dir``.

The operator names models (``rkllm serve --model NAME=PATH[,option=value...]`` parsed by
:func:`parse_model_option`, or ``--models-dir`` scanned by :func:`scan_models_dir`); clients
name them in requests, which :class:`~.catalog.ModelCatalog` only ever looks up, never uses
as a path. ``qwen3`` and ``qwen3:latest`` are the same model (:func:`with_tag`).

>>> spec = parse_model_option("qwen3=/models/qwen3-4b.rkllm,max_context_len=4096")
>>> spec.name, spec.path.name, spec.params.max_context_len
('qwen3:latest', 'qwen3-4b.rkllm', 4096)
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import attrs

from ..models import ExtendParams, ModelParams

__all__ = ["ModelSpec", "parse_model_option", "scan_models_dir", "with_tag"]

#: The tag a model name without one gets (Ollama's convention).
DEFAULT_TAG = "latest"
#: What a fake-runtime model file declares (see fake_runtime/README.md).
FAKE_FORMAT = "rkllm-fake/1"
#: Fake model files larger than this are not read while scanning (the fake refuses them).
_FAKE_MAX_BYTES = 1024 * 1024
#: A name an operator may give: Ollama-style ``[namespace/]model[:tag]``.
_PART = r"[A-Za-z0-9][A-Za-z0-9._-]*"
_NAME = re.compile(rf"{_PART}(/{_PART})*(:{_PART})?")
#: Option keys of ``--model`` that are not init parameters.
_TEMPLATE_KEY = "template"


def with_tag(name: str) -> str:
    """``name`` with ``:latest`` appended when it has no tag (a ``:`` after the last ``/``).

    >>> with_tag("qwen3"), with_tag("qwen3:4b"), with_tag("localhost:5000/qwen3")
    ('qwen3:latest', 'qwen3:4b', 'localhost:5000/qwen3:latest')
    """
    return name if ":" in name.rpartition("/")[2] else f"{name}:{DEFAULT_TAG}"


@attrs.frozen(kw_only=True)
class ModelSpec:
    """A model the operator configured.

    Attributes:
        name: the name clients use, always with a tag (``qwen3:latest``).
        path: the model file.
        params: init parameters (``None``: the runtime's defaults).
        template: the chat template: a built-in name or a file
            (see :func:`~.templates.load_template`); ``None``: found beside the model or
            guessed from its name.
    """

    name: str
    path: Path = attrs.field(converter=Path)
    params: ModelParams | None = None
    template: str | None = None


def _init_fields() -> dict[str, tuple[str, bool]]:
    """Option key -> (its type name, whether it belongs to ExtendParams)."""
    fields: dict[str, tuple[str, bool]] = {}
    for cls, extend in ((ModelParams, False), (ExtendParams, True)):
        for field in attrs.fields(cls):
            if field.name == "extend":
                continue
            kind = str(field.type)
            fields[field.name] = (kind.split("|", maxsplit=1)[0].strip(), extend)
    return fields


_INIT_FIELDS = _init_fields()
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _convert(key: str, kind: str, text: str) -> object:
    """One option value as the init field's type. Raises ValueError naming the key."""
    try:
        if kind == "int":
            return int(text, 0)
        if kind == "float":
            return float(text)
        if kind == "bool":
            lowered = text.lower()
            if lowered in _TRUE + _FALSE:
                return lowered in _TRUE
            raise ValueError(text)
        if key == "enabled_cpus":  # a mask (0xF0) or cores joined by '+' (4+5+6+7)
            if "+" in text:
                return frozenset(int(c) for c in text.split("+"))
            return int(text, 0)
    except ValueError:
        raise ValueError(f"{key}={text!r}: expected {_kind_name(kind)}") from None
    return text


def _kind_name(kind: str) -> str:
    """How an option's type reads in an error message."""
    return {
        "int": "an integer",
        "float": "a number",
        "bool": "true or false",
        "frozenset[int]": "a CPU mask (0xF0) or cores joined by '+' (4+5+6+7)",
    }.get(kind, "a string")


def parse_model_option(text: str) -> ModelSpec:
    """Parse ``NAME=PATH[,key=value...]``, the value of ``rkllm serve --model``.

    ``NAME`` is Ollama-style (``qwen3``, ``qwen3:4b``, ``library/qwen3:4b``); without a tag it
    gets ``:latest``. ``PATH`` is the model file (``~`` expanded; a comma cannot appear in
    it). The options are init parameters (the fields of :class:`~rkllm_sdk.ModelParams` and
    of its ``extend``: ``max_context_len``, ``max_new_tokens``, ``n_keep``, ``top_k``,
    ``temperature``, ``base_domain_id``, ``enabled_cpus`` as a mask or ``4+5+6+7``, ...),
    plus ``template`` (a built-in chat template name or a template file).

    Raises:
        ValueError: naming what is wrong: no ``=``, a bad name, an empty path, an unknown
            key, a repeated key, or a value the parameter cannot take.

    >>> parse_model_option("qwen3:4b=/m/q.rkllm,n_keep=64,template=qwen3").template
    'qwen3'
    >>> parse_model_option("q=/m/q.rkllm,context=4096")
    Traceback (most recent call last):
    ...
    ValueError: --model 'q=/m/q.rkllm,context=4096': unknown option 'context' ...
    """
    where = f"--model {text!r}"
    name, eq, rest = text.partition("=")
    name = name.strip()
    if not eq:
        raise ValueError(f"{where}: expected NAME=PATH[,option=value...]")
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"{where}: bad model name {name!r} (letters, digits, '.', '_', '-', '/', "
            "and an optional ':tag')"
        )
    path_text, *items = rest.split(",")
    if not path_text.strip():
        raise ValueError(f"{where}: the model path is empty")
    values: dict[str, object] = {}
    extend: dict[str, object] = {}
    template: str | None = None
    seen: set[str] = set()
    for item in items:
        key, eq, value = (part.strip() for part in item.partition("="))
        if not eq or not key:
            raise ValueError(f"{where}: expected option=value, got {item!r}")
        if key in seen:
            raise ValueError(f"{where}: option {key!r} given twice")
        seen.add(key)
        if key == _TEMPLATE_KEY:
            if not value:
                raise ValueError(f"{where}: template= needs a name or a file")
            template = value
            continue
        if key not in _INIT_FIELDS:
            known = ", ".join(sorted([*_INIT_FIELDS, _TEMPLATE_KEY]))
            raise ValueError(f"{where}: unknown option {key!r} (known: {known})")
        kind, in_extend = _INIT_FIELDS[key]
        try:
            converted = _convert(key, kind, value)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        (extend if in_extend else values)[key] = converted
    params: ModelParams | None = None
    if values or extend:
        try:
            params = ModelParams(**values, extend=ExtendParams(**extend))  # type: ignore[arg-type]
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{where}: {exc}") from None
    return ModelSpec(
        name=with_tag(name),
        path=Path(path_text.strip()).expanduser(),
        params=params,
        template=template,
    )


def _is_fake_model(path: Path) -> bool:
    """Whether ``path`` is a fake-runtime model file (JSON with ``"format": "rkllm-fake/1"``)."""
    try:
        if path.stat().st_size > _FAKE_MAX_BYTES:
            return False
        body = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(body, dict) and body.get("format") == FAKE_FORMAT


def scan_models_dir(directory: str | Path) -> list[ModelSpec]:
    """The models in ``directory`` (not its subdirectories), sorted by name.

    Every ``*.rkllm`` file, and every ``*.json`` file that is a fake-runtime model
    (``"format": "rkllm-fake/1"``; other JSON such as ``tokenizer_config.json`` is skipped),
    named by its stem with ``:latest`` (``Qwen3-4B.rkllm`` -> ``Qwen3-4B:latest``). When two
    files share a stem the ``.rkllm`` one is kept.

    Raises:
        OSError: the directory cannot be read.

    >>> [s.name for s in scan_models_dir(models_dir)]  # doctest: +SKIP
    ['qwen3:latest']
    """
    base = Path(directory).expanduser()
    found: dict[str, ModelSpec] = {}
    for path in sorted(base.iterdir(), key=lambda p: (p.suffix != ".rkllm", p.name)):
        if not path.is_file():
            continue
        if path.suffix == ".rkllm" or (path.suffix == ".json" and _is_fake_model(path)):
            name = with_tag(path.stem)
            found.setdefault(name, ModelSpec(name=name, path=path))
    return [found[name] for name in sorted(found)]
