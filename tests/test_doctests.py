"""The runnable ``>>>`` examples in the package's docstrings give what they show."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import rkllm_sdk

MODULES = sorted(
    m.name
    for m in pkgutil.walk_packages(rkllm_sdk.__path__, "rkllm_sdk.")
    # (not the command's __main__, nor the bridge library, which looks like a module)
    if all(part.isidentifier() for part in m.name.split(".")) and m.name.count("__main__") == 0
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    """Every runnable >>> example in a package module's docstrings gives the output it shows."""
    result = doctest.testmod(
        importlib.import_module(name), optionflags=doctest.ELLIPSIS, report=False
    )
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed"
