"""Helpers every wrapper shares: strings to C, return-code checks, ABI and symbol checks."""

from __future__ import annotations

import os

import numpy as np
import numpy.typing as npt

from .._ffi.loader import Runtime
from .._ffi.protocols import CData
from ..errors import GenerationError, InvalidParamsError, NativeCallError, UnsupportedOnABIError


def encode(value: str | os.PathLike[str], what: str) -> bytes:
    """UTF-8 bytes of a str or path, refusing NUL characters and lone surrogates."""
    text = os.fspath(value)
    if not isinstance(text, str):
        raise InvalidParamsError(f"{what} must be a str, got {type(value).__name__}")
    if "\x00" in text:
        raise InvalidParamsError(f"{what} contains a NUL character")
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates
        raise InvalidParamsError(f"{what} is not valid Unicode text ({exc.reason})") from None


def cstr(rt: Runtime, keep: list[object], value: str | os.PathLike[str] | None, what: str) -> CData:
    """A ``char[]`` owned by ``keep`` (NULL for None)."""
    if value is None:
        return rt.ffi.NULL
    buf = rt.ffi.new("char[]", encode(value, what))
    keep.append(buf)
    return buf


def buffer(rt: Runtime, keep: list[object], arr: npt.NDArray[np.generic], ctype: str) -> CData:
    """A C view of a checked numpy array, no copy; ``keep`` owns the array and the view."""
    keep.append(arr)
    buf = rt.ffi.from_buffer(f"{ctype}[]", arr)
    keep.append(buf)
    return buf


def check(
    function: str, rc: int, error: type[NativeCallError | GenerationError] = NativeCallError
) -> None:
    """Raise ``error`` naming the function and its code when ``rc`` is not 0."""
    if rc != 0:
        raise error(f"{function} failed with return code {rc}", code=rc)


def only_on(rt: Runtime, abi: str, what: str) -> None:
    """Refuse ``what`` unless the runtime speaks ``abi``."""
    if rt.abi != abi:
        raise UnsupportedOnABIError(
            f"{what} exists only in runtime ABI {abi}; "
            f"this runtime ({rt.path.name}) is ABI {rt.abi}"
        )


def optional_symbol(rt: Runtime, name: str) -> CData:
    """An undocumented or fake-only function, or NativeCallError when the library lacks it."""
    if name not in rt.optional_symbols:
        raise NativeCallError(f"this runtime ({rt.path.name}) does not export {name}")
    return getattr(rt.lib, name)


def assign(c: CData, field: str, value: object, what: str) -> None:
    """``c.field = value``, refusing what does not fit the C field (the models' validators
    check ranges first; this is the backstop at the C boundary)."""
    try:
        setattr(c, field, value)
    except OverflowError:
        raise InvalidParamsError(
            f"{what} = {value!r} is out of range for the runtime's C field {field}"
        ) from None
    except TypeError:
        raise InvalidParamsError(
            f"{what} must be a number for the runtime's C field {field}, "
            f"got {type(value).__name__}: {value!r}"
        ) from None


def readable_file(path: str | os.PathLike[str], what: str) -> None:
    """Refuse a path that is not an existing, readable regular file (no confinement: only
    the check the runtime would fail on, with a clearer message)."""
    text = os.fspath(path)
    if not os.path.exists(text):
        raise InvalidParamsError(f"{what} {text!r} does not exist")
    if not os.path.isfile(text):
        raise InvalidParamsError(f"{what} {text!r} is not a regular file")
    if not os.access(text, os.R_OK):
        raise InvalidParamsError(f"{what} {text!r} is not readable")


def writable_file(path: str | os.PathLike[str], what: str) -> None:
    """Refuse a path the runtime could not create or overwrite (its directory is missing or
    not writable, or it is a directory)."""
    text = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(text))
    if os.path.isdir(text):
        raise InvalidParamsError(f"{what} {text!r} is a directory")
    if not os.path.isdir(directory):
        raise InvalidParamsError(f"{what} {text!r}: its directory {directory!r} does not exist")
    target = text if os.path.exists(text) else directory
    if not os.access(target, os.W_OK):
        raise InvalidParamsError(f"{what} {text!r} is not writable")
