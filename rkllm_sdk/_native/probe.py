"""The model's embedding width, learned once per handle from a one-token hidden-layer run.

The runtime's API does not state how many floats one token's embedding has, yet an
embedding, image or video input hands the runtime a bare ``float*`` from which it reads
``n_tokens x width`` floats: a narrower array is a heap overflow inside the runtime. The
width is the ``embd_size`` of a ``RKLLM_INFER_GET_LAST_HIDDEN_LAYER`` run, so
:func:`embed_width` makes one such run (one token, id 0, per batch entry) the first time it
is asked and caches the answer on the :class:`NativeHandle`; :func:`prepare_run` then checks
every embedding-carrying input against it.

Cost: one prefill of one token (no decoding), once per handle, only on a handle that is
given an embedding-carrying input. It runs with ``keep_history=0``, which empties the KV
cache: so it runs only when the cache is already empty (it stays empty), or when the caller
says the cache may go (``cache_disposable=True``: its own run starts from an empty cache
anyway). Models without an internal embedding layer (runtime 1.3) call the handle's embedder
for that one token.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import GenerationError, InvalidParamsError, NativeCallError
from ..models import InferMode, InferOptions, Input, TokenInput
from ._util import check
from .channel import Channel, userdata_for
from .handle import NativeHandle
from .inputs import embedding_arrays, prepare_run

__all__ = ["embed_width", "kv_cache_size", "needs_embed_width"]


def needs_embed_width(inputs: Input | Sequence[Input]) -> bool:
    """True when a run's inputs carry embeddings (embed, image or video) that
    :func:`prepare_run` checks against the model's width (learn it first with
    :func:`embed_width`). Anything that is not an input model counts as False here
    (``prepare_run`` refuses it)."""
    if isinstance(inputs, Sequence) and not isinstance(inputs, str | bytes):
        return any(embedding_arrays(item) for item in inputs)
    return bool(embedding_arrays(inputs))


def kv_cache_size(h: NativeHandle) -> list[int]:
    """``rkllm_get_kv_cache_size``: tokens in the KV cache, one count per batch."""
    sizes = h.runtime.ffi.new("int[]", h.n_batch)
    check("rkllm_get_kv_cache_size", h.runtime.lib.rkllm_get_kv_cache_size(h.ptr(), sizes))
    return [int(n) for n in sizes]


def embed_width(h: NativeHandle, *, cache_disposable: bool = False) -> int:
    """The model's embedding width (floats per token), learned once and cached on ``h``.

    Blocking: the first call makes a one-token ``GET_LAST_HIDDEN_LAYER`` run (see the
    module docstring for its cost); later calls return :attr:`NativeHandle.embed_width`.
    Call it with the handle idle (the async layer: holding its slot).

    Args:
        h: the handle.
        cache_disposable: the KV cache may be emptied (the caller's next run starts from an
            empty cache anyway). Without it, a handle whose cache holds tokens is refused.

    Raises:
        InvalidParamsError: the width is unknown and the KV cache holds tokens that the
            probe run would drop.
        GenerationError: the probe run failed (its cause attached, e.g. a 1.3 embedder's
            exception).
        NativeCallError: the runtime delivered no hidden states.
    """
    if h.embed_width is not None:
        return h.embed_width
    held = kv_cache_size(h)
    if any(held) and not cache_disposable:
        raise InvalidParamsError(
            f"the model's embedding width is not known yet; the SDK learns it once per handle "
            f"with a one-token run that empties the KV cache, which now holds {sum(held)} "
            f"tokens. Give the handle its first embedding, image or video input on an empty "
            f"cache (a first turn, or after clear_kv_cache())"
        )
    rt = h.runtime
    inputs = [TokenInput(ids=[0]) for _ in range(h.n_batch)]
    prepared = prepare_run(h, inputs, InferOptions(mode=InferMode.GET_LAST_HIDDEN_LAYER))
    errors_before = len(h.callback_errors)
    channel = Channel(rt, h.n_batch, array_rows=1)
    try:
        rc = rt.lib.rkllm_run(h.ptr(), prepared.inputs, prepared.infer, userdata_for(rt, channel))
        channel.set_done(rc)
        widths = []
        while True:
            drained = channel.drain()
            widths += [rows.shape[1] for rows in drained.arrays.values()]
            if drained.finished or not drained.states:
                break
    finally:
        channel.free()
    if rc != 0:
        causes = h.callback_errors[errors_before:]
        del h.callback_errors[errors_before:]  # the probe's, not the caller's next run's
        error = GenerationError(
            f"learning the model's embedding width failed: the one-token hidden-layer run "
            f"returned {rc}",
            code=rc,
        )
        if causes:
            raise error from causes[0]
        raise error
    if not widths:
        raise NativeCallError(
            "learning the model's embedding width failed: the hidden-layer run delivered no "
            "hidden states"
        )
    h.embed_width = int(widths[0])
    return h.embed_width
