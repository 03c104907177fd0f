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


def test_client_methods_show_an_example() -> None:
    """Every public method of the client classes has a ``>>>`` example in its docstring."""
    classes = (
        rk.AsyncLLM,
        rk.LLM,
        rk.TokenStream,
        rk.SyncTokenStream,
        rk.ChatSession,
        rk.SyncChatSession,
    )
    missing = []
    for cls in classes:
        for attr, member in vars(cls).items():
            if attr.startswith("_"):
                continue
            func = member.__func__ if isinstance(member, classmethod) else member
            is_method = inspect.isfunction(func) or isinstance(func, property)
            if is_method and ">>>" not in (func.__doc__ or ""):
                missing.append(f"{cls.__name__}.{attr}")
    for name in rk.__all__:
        obj = getattr(rk, name)
        if inspect.isfunction(obj) and ">>>" not in (obj.__doc__ or ""):
            missing.append(name)
    assert missing == []
