"""A griffe extension for the docs build: ``>>>`` examples in docstrings become code blocks.

The SDK's docstrings carry doctest-style examples inline (the test suite checks they are
there); Markdown would render ``>>>`` as nested block quotes.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_FLAGS = re.compile(r"\s*# doctest:.*$")
_ROLE = re.compile(r":(?:meth|class|func|attr|mod|data|exc):`~?([^`]+)`")


def fence(text: str) -> str:
    """Fence each run of ``>>>`` / ``...`` lines (and their output) as pycon; Sphinx roles
    such as ``:meth:`x``` become plain code."""
    out: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.lstrip().startswith(">>>"):
            out.append(line)
            i += 1
            continue
        indent = line[: len(line) - len(line.lstrip())]
        out.append(f"{indent}```pycon")
        while i < len(lines) and lines[i].strip() and lines[i].startswith(indent):
            out.append(_FLAGS.sub("", lines[i]))
            i += 1
        out.append(f"{indent}```")
    return _ROLE.sub(r"`\1`", "\n".join(out))


class DoctestFences(griffe.Extension):
    """Fences doctest examples in every docstring griffe loads."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = fence(obj.docstring.value)
