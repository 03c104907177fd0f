"""Thin synchronous wrappers, one per runtime function: models in, Python values out.

Contract of this boundary package:

- Every wrapper checks its arguments before the call (NUL bytes and non-UTF-8 text in
  strings, negative sizes, ABI-only fields on the other ABI) and raises
  :class:`~rkllm_sdk.errors.InvalidParamsError` / ``UnsupportedOnABIError`` without calling C.
- Every return code is checked at once; failure raises an error naming the function and code.
- Nothing returns cdata: handles are :class:`NativeHandle`, runs deliver into a
  :class:`Channel` (the C bridge's; its pointer never leaves this package), results are
  models and numpy arrays copied out of the runtime's buffers.
- Memory handed to the runtime (strings, arrays, structs, cffi callbacks) is owned by Python
  objects that the caller keeps alive while the runtime can read it: the call itself for
  ``run``, the returned :class:`RunKeepalive` for ``run_async`` / ``run_prepared``, the
  handle for init strings, the 1.3 tokenizer / embedder callbacks and cross-attention arrays.
- All calls block (some for seconds); the async layer runs them in worker threads.

Modules: ``params`` (``RKLLMParam``), ``handle`` (init / destroy), ``inputs`` (a run's C
structs), ``calls`` (everything else on a handle), ``channel`` (the bridge's channel),
``callbacks`` (1.3 tokenizer / embedder), ``fake`` (fake-only symbols), ``probe`` (the
model's embedding width, learned once per handle; the KV cache size it checks first).

cdata values are typed :data:`~rkllm_sdk._ffi.protocols.CData` (``Any``: their fields are
dynamic); ``lib`` / ``ffi`` / ``bridge`` calls go through typed faces (``_ffi.protocols``).
It imports ``_ffi``, ``arrays``, ``errors`` and ``models`` only.
"""

from __future__ import annotations

# __all__ below makes these the package's re-exports (mypy's implicit re-export rule).
from .callbacks import Embedder, Tokenizer
from .calls import (
    abort,
    clear_kv_cache,
    is_running,
    load_lora,
    load_prompt_cache,
    print_memorys,
    print_timings,
    release_prompt_cache,
    run,
    run_async,
    run_prepared,
    set_chat_template,
    set_cross_attention,
    set_function_tools,
)
from .channel import Channel, Drained, bridge_live_objects, read_results
from .fake import fake_kv_text, fake_last_input, fake_stats
from .handle import NativeHandle, destroy, init
from .inputs import RunKeepalive, prepare_run
from .params import default_params, merge_params
from .probe import embed_width, kv_cache_size, needs_embed_width

__all__ = [
    "Channel",
    "Drained",
    "Embedder",
    "NativeHandle",
    "RunKeepalive",
    "Tokenizer",
    "abort",
    "bridge_live_objects",
    "clear_kv_cache",
    "default_params",
    "destroy",
    "embed_width",
    "fake_kv_text",
    "fake_last_input",
    "fake_stats",
    "init",
    "is_running",
    "kv_cache_size",
    "load_lora",
    "load_prompt_cache",
    "merge_params",
    "needs_embed_width",
    "prepare_run",
    "print_memorys",
    "print_timings",
    "read_results",
    "release_prompt_cache",
    "run",
    "run_async",
    "run_prepared",
    "set_chat_template",
    "set_cross_attention",
    "set_function_tools",
]
