"""``rkllm_init`` / ``rkllm_destroy`` and the handle that owns what the runtime keeps using."""

from __future__ import annotations

import os
import threading

from .._ffi.loader import Runtime
from .._ffi.protocols import CData
from ..errors import ClosedError, ModelLoadError
from ..models import ModelParams
from ._util import check
from .callbacks import Embedder, Tokenizer, make_embedder, make_tokenizer
from .params import default_params, merge_params, param_struct

__all__ = ["NativeHandle", "destroy", "init"]


class NativeHandle:
    """An initialised runtime handle (opaque), with what must outlive the runtime's use.

    Attributes:
        runtime: the runtime it belongs to.
        params: the parameters in force (the runtime's defaults with the caller's overrides).
        n_batch: inputs per run.
        callback_errors: exceptions raised by the 1.3 tokenizer / embedder callables, in
            order (appended on the runtime thread). The run they broke ends with
            ``RKLLM_RUN_ERROR``; its reader takes them as the cause and clears the list.
        embed_width: the model's embedding width (floats per token of an embedding, image or
            video input), once learned by :func:`~rkllm_sdk._native.embed_width`; ``None``
            before. The runtime's API does not state it.
        lora_names: the LoRA adapters loaded through :func:`~rkllm_sdk._native.load_lora`;
            a run naming another one is refused before the call.
    """

    __slots__ = (
        "_keep",
        "_lock",
        "_ptr",
        "callback_errors",
        "embed_width",
        "lora_names",
        "n_batch",
        "params",
        "runtime",
    )

    def __init__(
        self,
        runtime: Runtime,
        ptr: CData,  # the LLMHandle (void*)
        params: ModelParams,
        keep: list[object],  # cdata and cffi callbacks the runtime reads until destroy
        callback_errors: list[BaseException],
    ) -> None:
        self.runtime = runtime
        self.params = params
        self.n_batch = params.extend.n_batch or 1
        self.callback_errors = callback_errors
        self.embed_width: int | None = None
        self.lora_names: set[str] = set()
        self._ptr: CData = ptr
        self._keep: dict[str, list[object] | None] = {"init": keep}
        self._lock = threading.Lock()

    @property
    def closed(self) -> bool:
        """True once destroyed."""
        return self._ptr is None

    def hold(self, name: str, objects: list[object] | None) -> None:
        """Keep ``objects`` alive until destroy (the runtime reads them), replacing ``name``'s."""
        self._keep[name] = objects

    def ptr(self) -> CData:
        """The C handle (hazmat); raises ClosedError once destroyed."""
        ptr = self._ptr
        if ptr is None:
            raise ClosedError("the model handle is closed")
        return ptr

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<NativeHandle {state} abi={self.runtime.abi} n_batch={self.n_batch}>"


def init(
    rt: Runtime,
    model_path: str | os.PathLike[str],
    params: ModelParams,
    *,
    tokenizer: Tokenizer | None = None,
    embedder: Embedder | None = None,
) -> NativeHandle:
    """``rkllm_init`` with the bridge's C result callback (runs deliver into a :class:`Channel`).

    Args:
        rt: the loaded runtime.
        model_path: the model file.
        params: overrides of the runtime's defaults (``None`` fields keep them).
        tokenizer: runtime 1.3, ``text -> token ids``, for models without a tokenizer.
        embedder: runtime 1.3, ``int32 ids [n] -> float32 [n, hidden]``, for models without
            an embedding layer. Both run on the runtime thread; what they raise lands in
            :attr:`NativeHandle.callback_errors`.

    Raises:
        InvalidParamsError / UnsupportedOnABIError: bad or other-ABI parameters (a tokenizer
            or embedder on 1.2).
        ModelLoadError: the runtime refused (its log line says why).
    """
    bridge_callback = rt.bridge.rkb_result_callback
    errors: list[BaseException] = []
    keep: list[object] = [bridge_callback]
    # Refused on 1.2 by name, before any C is touched.
    tokenizer_callback = make_tokenizer(rt, tokenizer, errors) if tokenizer is not None else None
    embed_callback = make_embedder(rt, embedder, errors) if embedder is not None else None
    p = param_struct(rt, model_path, params, keep)
    handle = rt.ffi.new("LLMHandle*")
    if rt.abi == "1.2":
        rc = rt.lib.rkllm_init(handle, p, bridge_callback)
    else:
        cb = rt.ffi.new("RKLLMCallback*")
        cb.result_callback = bridge_callback  # result_userdata: NULL, each run gives its own
        if tokenizer_callback is not None:
            cb.tokenizer_callback = tokenizer_callback
        if embed_callback is not None:
            cb.embed_callback = embed_callback
        keep += [cb, tokenizer_callback, embed_callback]
        rc = rt.lib.rkllm_init(handle, p, cb)
    if rc != 0:
        raise ModelLoadError(
            f"rkllm_init failed with return code {rc} for {os.fspath(model_path)!r} (runtime "
            f"{rt.version or 'unknown'}, ABI {rt.abi}); the runtime's log line above says why. "
            f"Common causes: a model converted for another runtime version or platform, an NPU "
            f"driver older than 0.9.8, not enough memory",
            code=rc,
        )
    effective = merge_params(default_params(rt), params)
    return NativeHandle(rt, handle[0], effective, keep, errors)


def destroy(h: NativeHandle) -> None:
    """``rkllm_destroy`` (aborts a running task first). A second call does nothing."""
    with h._lock:
        ptr, h._ptr = h._ptr, None
    if ptr is None:
        return
    rc = h.runtime.lib.rkllm_destroy(ptr)
    h._keep.clear()
    check("rkllm_destroy", rc)
