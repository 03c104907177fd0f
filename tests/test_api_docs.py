"""Every public class, function and method has a docstring."""

from __future__ import annotations

import inspect

import rkllm_sdk as rk


def test_public_api_is_documented() -> None:
    """Names in __all__, and the public methods and properties of public classes, are documented."""
    missing = []
    for name in rk.__all__:
        obj = getattr(rk, name)
        if name.startswith("__") or not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        if not inspect.getdoc(obj):
            missing.append(name)
        if inspect.isclass(obj):
            for attr, member in vars(obj).items():
                if attr.startswith("_") or not (
                    inspect.isfunction(member) or isinstance(member, property)
                ):
                    continue
                if not (member.__doc__ or "").strip():
                    missing.append(f"{name}.{attr}")
    assert missing == []
