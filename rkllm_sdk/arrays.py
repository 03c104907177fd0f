"""Validation and conversion of every array the runtime takes.

One function per kind of array. Each accepts a numpy array or nested lists (the JSON path),
returns a C-contiguous array of the runtime's dtype, and raises before anything reaches C:

- :class:`~rkllm_sdk.errors.ArrayTypeError` (a ``TypeError``) for a dtype that cannot convert
  without loss (floats as token ids, integers as embeddings, booleans, objects);
- :class:`~rkllm_sdk.errors.InvalidParamsError` (a ``ValueError``) for a wrong shape, an
  empty array, ids outside ``int32`` / the vocabulary, or NaN / infinity in embeddings.

An array that already has the right dtype and is C-contiguous is returned as is (zero copy);
the caller keeps it alive while the runtime reads it. Conversions:

- token ids: any integer dtype whose values fit ``int32`` (and ``0 <= id < vocab_size``);
- float arrays: ``float32`` as is; ``float16`` exactly; ``float64`` rounded to ``float32`` (the
  runtime computes in ``float32`` or lower, so this rounding is the precision it has anyway).
"""

from __future__ import annotations

from typing import NamedTuple, TypeAlias

import numpy as np
import numpy.typing as npt

from .errors import ArrayTypeError, InvalidParamsError

__all__ = [
    "CrossAttentionArrays",
    "FloatArray",
    "IntArray",
    "cross_attention",
    "embeddings",
    "image_embeddings",
    "token_ids",
    "video_embeddings",
]

FloatArray: TypeAlias = npt.NDArray[np.float32]
IntArray: TypeAlias = npt.NDArray[np.int32]

_INT32 = np.iinfo(np.int32)


def _asarray(value: object, name: str) -> npt.NDArray[np.generic]:
    try:
        arr = np.asarray(value)
    except ValueError as exc:  # ragged nested lists
        raise InvalidParamsError(f"{name}: not a rectangular array ({exc})") from None
    if arr.dtype == object:
        raise ArrayTypeError(f"{name}: not a numeric array (got objects)")
    return arr


def _shape(arr: npt.NDArray[np.generic], name: str, dims: tuple[str, ...]) -> None:
    if arr.ndim != len(dims):
        raise InvalidParamsError(
            f"{name}: expected {len(dims)} dimensions [{', '.join(dims)}], got shape {arr.shape}"
        )
    if arr.size == 0:
        raise InvalidParamsError(f"{name}: empty array of shape {arr.shape}")


def _floats(value: object, name: str, dims: tuple[str, ...], width: int | None) -> FloatArray:
    arr = _asarray(value, name)
    if arr.dtype.kind != "f":
        raise ArrayTypeError(f"{name}: expected float32 (or float16 / float64), got {arr.dtype}")
    _shape(arr, name, dims)
    if width is not None and arr.shape[-1] != width:
        raise InvalidParamsError(f"{name}: last dimension is {arr.shape[-1]}, the model's {width}")
    with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf: refused below
        out = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(out).all():
        raise InvalidParamsError(f"{name}: contains NaN or infinity (after conversion to float32)")
    return out


def token_ids(value: object, *, vocab_size: int | None = None, name: str = "token_ids") -> IntArray:
    """Token ids as a 1-D ``int32`` array.

    >>> token_ids([1, 2, 3]).dtype
    dtype('int32')
    """
    arr = _asarray(value, name)
    if arr.dtype.kind not in "iu":
        raise ArrayTypeError(f"{name}: expected integers, got {arr.dtype}")
    _shape(arr, name, ("n_tokens",))
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi > _INT32.max:
        raise InvalidParamsError(f"{name}: ids must be in [0, {_INT32.max}], got {lo}..{hi}")
    if vocab_size is not None and hi >= vocab_size:
        raise InvalidParamsError(f"{name}: id {hi} is outside the vocabulary of {vocab_size}")
    return np.ascontiguousarray(arr, dtype=np.int32)


def embeddings(
    value: object, *, hidden_size: int | None = None, name: str = "embeddings"
) -> FloatArray:
    """Token embeddings ``[n_tokens, hidden]`` as ``float32``."""
    return _floats(value, name, ("n_tokens", "hidden"), hidden_size)


def image_embeddings(
    value: object, *, hidden_size: int | None = None, name: str = "image"
) -> FloatArray:
    """Image embeddings ``[n_image, n_image_tokens, hidden]``; a 2-D array is one image."""
    arr = _asarray(value, name)
    if arr.ndim == 2:
        arr = arr[np.newaxis]
    return _floats(arr, name, ("n_image", "n_image_tokens", "hidden"), hidden_size)


def video_embeddings(
    value: object, *, hidden_size: int | None = None, name: str = "video"
) -> FloatArray:
    """Video embeddings ``[n_video, n_frames, n_frame_tokens, hidden]``; 3-D is one video."""
    arr = _asarray(value, name)
    if arr.ndim == 3:
        arr = arr[np.newaxis]
    return _floats(arr, name, ("n_video", "n_frames", "n_frame_tokens", "hidden"), hidden_size)


class CrossAttentionArrays(NamedTuple):
    """The four encoder arrays of cross attention, validated together."""

    k_cache: FloatArray  # [num_layers, num_tokens, num_kv_heads, head_dim]
    v_cache: FloatArray  # [num_layers, num_kv_heads, head_dim, num_tokens]
    mask: FloatArray  # [num_tokens]
    positions: IntArray  # [num_tokens]

    @property
    def num_tokens(self) -> int:
        return int(self.mask.shape[0])


def cross_attention(
    k_cache: object, v_cache: object, mask: object, positions: object
) -> CrossAttentionArrays:
    """Validate the encoder K / V caches, mask and positions against each other."""
    k = _floats(k_cache, "k_cache", ("num_layers", "num_tokens", "num_kv_heads", "head_dim"), None)
    v = _floats(v_cache, "v_cache", ("num_layers", "num_kv_heads", "head_dim", "num_tokens"), None)
    layers, tokens, heads, dim = k.shape
    if v.shape != (layers, heads, dim, tokens):
        raise InvalidParamsError(
            f"v_cache: shape {v.shape} does not match k_cache {k.shape}: expected "
            f"[num_layers, num_kv_heads, head_dim, num_tokens] = {(layers, heads, dim, tokens)}"
        )
    m = _floats(mask, "mask", ("num_tokens",), None)
    pos = _asarray(positions, "positions")
    if pos.dtype.kind not in "iu":
        raise ArrayTypeError(f"positions: expected integers, got {pos.dtype}")
    _shape(pos, "positions", ("num_tokens",))
    if m.shape[0] != tokens or pos.shape[0] != tokens:
        raise InvalidParamsError(
            f"mask and positions need num_tokens = {tokens} entries, "
            f"got {m.shape[0]} and {pos.shape[0]}"
        )
    if int(pos.min()) < _INT32.min or int(pos.max()) > _INT32.max:
        raise InvalidParamsError("positions: values outside int32")
    return CrossAttentionArrays(k, v, m, np.ascontiguousarray(pos, dtype=np.int32))
