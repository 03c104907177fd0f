"""Runtime 1.3's tokenizer and embedding callbacks, built from plain Python callables.

Unlike results (which stay in the C bridge), these call user Python code, so they take the
GIL on the runtime thread; they are rare (once per run's prefill) and must run Python anyway.
An exception in the callable is appended to ``errors`` (the handle's ``callback_errors``) and
the callback reports failure (-1 / 1), which ends the run with ``RKLLM_RUN_ERROR``; the async
layer then raises with the exception as the cause.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .._ffi.loader import Runtime
from .._ffi.protocols import CData
from ..arrays import IntArray, embeddings, token_ids
from ..errors import InvalidParamsError
from ._util import only_on

__all__ = ["Embedder", "Tokenizer", "make_embedder", "make_tokenizer"]

#: text -> token ids (anything :func:`rkllm_sdk.arrays.token_ids` takes).
Tokenizer = Callable[[str], object]
#: int32 token ids ``[n]`` -> float32 embeddings ``[n, hidden]`` (anything ``embeddings`` takes).
Embedder = Callable[[IntArray], object]


def make_tokenizer(rt: Runtime, fn: Tokenizer, errors: list[BaseException]) -> CData:
    """An ``LLMTokenizerCallback`` (cffi; keep it alive) that calls ``fn(text) -> token ids``."""
    only_on(rt, "1.3", "tokenizer callbacks")
    ffi = rt.ffi

    def callback(_ud: CData, text: CData, text_len: int, tokens: CData, n_max: int) -> int:
        try:
            ids = token_ids(fn(ffi.string(text, text_len).decode("utf-8", "replace")))
            if ids.shape[0] > n_max:
                raise InvalidParamsError(
                    f"the tokenizer gave {ids.shape[0]} tokens; the runtime takes {n_max}"
                )
            ffi.memmove(tokens, ids, ids.nbytes)
            return int(ids.shape[0])
        except BaseException as exc:  # reported to the caller of the run, never lost here
            errors.append(exc)
            return -1

    return ffi.callback("LLMTokenizerCallback", callback)


def make_embedder(rt: Runtime, fn: Embedder, errors: list[BaseException]) -> CData:
    """An ``LLMGetEmbedCallback`` (cffi; keep it alive) that calls ``fn(ids) -> embeddings``."""
    only_on(rt, "1.3", "embedding callbacks")
    ffi = rt.ffi

    def callback(_ud: CData, tokens: CData, num_tokens: int, embed: CData, length: int) -> int:
        try:
            ids = np.frombuffer(
                memoryview(ffi.buffer(tokens, 4 * num_tokens)), dtype=np.int32
            ).copy()
            rows = embeddings(fn(ids))
            if rows.shape[0] != num_tokens or rows.nbytes != length:
                raise InvalidParamsError(
                    f"the embedder gave {rows.shape} float32 for {num_tokens} tokens; "
                    f"the runtime wants {length} bytes"
                )
            ffi.memmove(embed, rows, length)
            return 0
        except BaseException as exc:  # reported to the caller of the run, never lost here
            errors.append(exc)
            return 1

    return ffi.callback("LLMGetEmbedCallback", callback)
