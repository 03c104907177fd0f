"""The handle core: what one runtime handle's client, streams and chat sessions share.

:class:`HandleCore` owns the native handle and everything that belongs to it rather than
to one call: the FIFO slot (one task at a time on the handle), the bridge channel kept
for reuse between runs, the metrics recorder, the last finished result, and the registry
of live handles (listed by :func:`open_handles`, closed at interpreter exit). ``AsyncLLM``
is the public face over it; ``TokenStream`` and ``ChatSession`` depend on this small
surface, never on the client class.

The registry holds cores strongly until they are closed: an ``AsyncLLM`` that is dropped
without ``aclose()`` stays listed (and its runtime handle, i.e. the model's NPU memory, stays
allocated) until it is closed at exit, so a leak is visible instead of silent.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

import anyio
import anyio.lowlevel
import anyio.to_thread
import attrs

from . import _native as native
from . import metrics
from .errors import BusyError, ClosedError, EventLoopError, RKLLMError
from .results import Generation, RuntimeInfo

__all__ = ["MAX_PENDING", "HandleCore", "HandleInfo", "finish_even_if_cancelled", "open_handles"]

T = TypeVar("T")

#: Events the bridge may hold before the runtime thread waits for the consumer. Small enough
#: that processing one page keeps the event loop responsive (a few ms of Python work).
MAX_PENDING = 512


class Run(Protocol):
    """What the core needs of the run in progress (a ``TokenStream``)."""

    def abort(self) -> None: ...
    async def aclose(self) -> None: ...


@attrs.frozen(kw_only=True)
class HandleInfo:
    """A live handle, for leak hunting (see :func:`open_handles`).

    Attributes:
        model_path: the model file the handle was loaded from.
        abi: the runtime ABI (``"1.2"`` or ``"1.3"``).
        age_s: seconds since it was loaded.
        state: ``"idle"``, ``"running"`` or ``"closing"``.
    """

    model_path: str
    abi: str
    age_s: float
    state: str


_live: set[HandleCore] = set()
_live_lock = threading.Lock()


def open_handles() -> list[HandleInfo]:
    """Every handle not yet destroyed (closing and forgotten ones included): model, age
    and state.

    >>> open_handles()
    []
    """
    with _live_lock:
        cores = list(_live)
    now = time.monotonic()
    return [
        HandleInfo(
            model_path=core.model_path,
            abi=core.runtime.abi,
            age_s=now - core.opened_at,
            state=core.state_name(),
        )
        for core in cores
    ]


@atexit.register
def _close_all_at_exit() -> None:
    # Abort and destroy what users forgot, before the interpreter finalizes. Only C calls:
    # the runtime's callbacks go to the C bridge, so nothing re-enters Python here.
    with _live_lock:
        cores = list(_live)
    for core in cores:
        core.destroy_now()


# Close jobs running on asyncio after their caller was cancelled (asyncio keeps only weak
# references to tasks).
_jobs: set[asyncio.Task[None]] = set()


async def finish_even_if_cancelled(job: Callable[[], Awaitable[None]], done: anyio.Event) -> None:
    """Run ``job`` to its end even if the caller is cancelled meanwhile, however; ``done``
    is set when it has ended (later callers wait on it).

    anyio's shielded cancel scope covers anyio's own cancellation (and trio's), but not
    asyncio's native ``task.cancel()`` (``asyncio.wait_for`` with a short timeout, a
    second ``task.cancel()``): that one interrupts the next await even inside a shield.
    Closing must never stop half-way (the handle would stay taken), so on asyncio the job
    runs as a task of its own that the caller's cancellation cannot reach. The caller waits
    for it in a shielded scope (anyio's cancellation waits, as on trio); a native
    cancellation lets the caller leave early, and the job finishes anyway.
    """

    async def run() -> None:
        try:
            await job()
        finally:
            done.set()

    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # trio: its cancellation is anyio's, which the shield holds off
        loop = None
    if loop is None:
        with anyio.CancelScope(shield=True):
            await run()
        return

    task = loop.create_task(run())
    _jobs.add(task)
    task.add_done_callback(_jobs.discard)
    with anyio.CancelScope(shield=True):
        await asyncio.shield(task)


def runtime_info(rt: Any) -> RuntimeInfo:  # Any: the hazmat Runtime, seen only here
    """The public description of a loaded runtime."""
    return RuntimeInfo(
        path=rt.path, version=rt.version, abi=rt.abi, is_fake=rt.is_fake, found_by=rt.found_by
    )


#: ChatML (the format of the Qwen models RKLLM mostly runs): the template sessions use to
#: give a system prompt, ``{system}`` filled in.
CHATML = (
    "<|im_start|>system\n{system}<|im_end|>\n",
    "<|im_start|>user\n",
    "<|im_end|>\n<|im_start|>assistant\n",
)
#: The template put back when a chat session's template must be undone and the handle has
#: none of its own: the runtime offers no way back to the model's built-in template, so
#: ChatML without a system prompt.
PLAIN_TEMPLATE = ("", CHATML[1], CHATML[2])


def chatml(system: str) -> tuple[str, str, str]:
    """The ChatML template with ``system`` as its system prompt."""
    return (CHATML[0].format(system=system), CHATML[1], CHATML[2])


Template = tuple[str, str, str]  # system prompt, prefix, postfix
Tools = tuple[str, Any, str]  # system prompt, OpenAI tools, tool response string


class HandleCore:
    """One runtime handle and its shared state (internal; see the module docstring).

    Configuration has owners: the runtime holds one chat template and one set of function
    tools per handle, and one KV cache. ``config_owner`` is the chat session whose template
    or tools are in force (None: the handle's own, set with ``AsyncLLM.set_chat_template``
    / ``set_function_tools``, or the model's), ``history_owner`` the session whose
    conversation the KV cache holds (None: plain runs). A turn of another session, or a
    plain run, puts its own configuration back first (:meth:`configure`).
    """

    def __init__(self, handle: native.NativeHandle, model_path: str) -> None:
        self._handle: native.NativeHandle | None = handle
        self.model_path = model_path
        self.runtime = runtime_info(handle.runtime)
        self.opened_at = time.monotonic()
        self.recorder = metrics.Recorder(model=Path(model_path).name, abi=self.runtime.abi)
        #: The last finished run (``AsyncLLM.timings()``).
        self.last: Generation | None = None
        self._slot = anyio.Semaphore(1)  # FIFO: one task at a time on the handle
        # The slot, the streams' locks and their fd wake-ups belong to the loading loop.
        self._loop = anyio.lowlevel.current_token()
        self._closing = False
        self._closed: anyio.Event | None = None  # set once closing has finished
        self._busy = False
        self._current: Run | None = None  # the run on the handle, if any
        # The bridge channel of the last finished run, reused by the next (its buffers stay).
        self._spare_channel: native.Channel | None = None
        self.config_owner: object | None = None
        self.history_owner: object | None = None
        self.own_template: Template | None = None  # set through AsyncLLM.set_chat_template
        self.own_tools: Tools | None = None  # set through AsyncLLM.set_function_tools
        self._template_changed = False  # the runtime no longer has the model's template
        self._tools_set = False
        with _live_lock:
            _live.add(self)

    # ---- state -----------------------------------------------------------------------------

    @property
    def native_handle(self) -> native.NativeHandle:
        """The native handle; :class:`ClosedError` once closed."""
        if self._handle is None:
            raise ClosedError("the model handle is closed")
        return self._handle

    @property
    def closed(self) -> bool:
        """True once closing has begun."""
        return self._handle is None or self._closing

    def state_name(self) -> str:
        """``"idle"``, ``"running"`` or ``"closing"``."""
        if self.closed:
            return "closing"
        return "running" if self._busy else "idle"

    # ---- the FIFO slot ---------------------------------------------------------------------

    def check_loop(self) -> None:
        """:class:`EventLoopError` at once when called from a loop not the handle's own
        (waiting on its queue there would hang both loops)."""
        if anyio.lowlevel.current_token() != self._loop:
            raise EventLoopError(
                f"this handle ({Path(self.model_path).name}) was loaded on another event loop "
                "(another thread's, or another async library's); use it there, or load one "
                "per loop"
            )

    async def acquire(self, wait: bool, run: Run | None = None) -> None:
        """Take the handle for one call (in FIFO order); ``run`` is what ``abort()`` stops.

        Raises:
            ClosedError: the handle is closed, or was closed while waiting.
            BusyError: ``wait`` is False and the handle is in use.
            EventLoopError: called from another event loop than the handle's.
        """
        self.check_loop()
        if self.closed:
            raise ClosedError("the model handle is closed")
        if not wait and (self._busy or self._slot.value == 0):
            raise BusyError("the model handle is busy (wait=False)")
        self.recorder.queue_entered()
        try:
            await self._slot.acquire()
        finally:
            self.recorder.queue_left()
        if self.closed:
            self._slot.release()
            raise ClosedError("the model handle was closed while waiting for it")
        self._busy = True
        self._current = run

    def release(self) -> None:
        """Give the handle to the next caller."""
        self._busy = False
        self._current = None
        self._slot.release()

    async def call(self, fn: Callable[..., T], *args: Any, wait: bool = True, **kwargs: Any) -> T:
        """Run a blocking native call on the handle in a worker thread, in FIFO order."""
        await self.acquire(wait)
        try:
            return await self.call_held(fn, *args, **kwargs)
        finally:
            self.release()

    async def call_held(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """As :meth:`call`, for a caller that already holds the slot."""
        handle = self.native_handle
        return await anyio.to_thread.run_sync(functools.partial(fn, handle, *args, **kwargs))

    # ---- configuration owners --------------------------------------------------------------

    async def configure(
        self, owner: object | None, *, template: Template | None = None, tools: Tools | None = None
    ) -> bool:
        """Put ``owner``'s template / tools in force (the slot is held); False when they are
        already. None for both means the handle's own configuration."""
        if self.config_owner is owner:
            return False
        if template is None and tools is None:
            template, tools = self.own_template, self.own_tools
        if template is None and tools is not None and self._template_changed:
            # A set template replaces the one the tools' system prompt would go in (A9 of
            # the fake; the vendor: the template overrides the model's): carry it there.
            template = chatml(tools[0]) if tools[0] else PLAIN_TEMPLATE
        if template is not None:
            await self.call_held(native.set_chat_template, *template)
            self._template_changed = True
        elif self._template_changed:
            await self.call_held(native.set_chat_template, *PLAIN_TEMPLATE)
        if tools is not None:
            await self.call_held(native.set_function_tools, *tools)
            self._tools_set = True
        elif self._tools_set:  # an empty list switches function calling off
            await self.call_held(native.set_function_tools, "", [], "tool_response")
            self._tools_set = False
        self.config_owner = owner
        return True

    async def use_own_configuration(self) -> None:
        """Before a plain run (the slot is held): the handle's own template and tools, and
        the KV cache is no longer any session's."""
        await self.configure(None)
        self.history_owner = None

    def set_own(self, *, template: Template | None = None, tools: Tools | None = None) -> None:
        """The user configured the handle directly: that is its own configuration now."""
        if template is not None:
            self.own_template = template
            self._template_changed = True
        if tools is not None:
            self.own_tools = tools
            self._tools_set = True
        self.config_owner = None

    # ---- runs ------------------------------------------------------------------------------

    def take_channel(self, array_rows: int, release_buffers: bool) -> native.Channel:
        """A bridge channel for the next run: the spare one reset, or a new one."""
        channel, self._spare_channel = self._spare_channel, None
        if channel is None:
            return native.Channel(
                self.native_handle.runtime,
                self.native_handle.n_batch,
                array_rows=array_rows,
                release_buffers=release_buffers,
                max_pending=MAX_PENDING,
            )
        channel.reset(array_rows=array_rows, release_buffers=release_buffers)
        return channel

    def return_channel(self, channel: native.Channel) -> None:
        """A run is over and ``rkllm_run`` has returned: keep its channel for the next."""
        if self._spare_channel is None and not self.closed:
            self._spare_channel = channel
        else:
            channel.free()

    def _free_spare_channel(self) -> None:
        channel, self._spare_channel = self._spare_channel, None
        if channel is not None:
            channel.free()

    def abort_native(self) -> None:
        """``rkllm_abort`` on the handle, if it is still open (errors ignored: the run is
        ending anyway)."""
        handle = self._handle
        if handle is not None:
            with contextlib.suppress(RKLLMError):
                native.abort(handle)

    def abort(self) -> None:
        """Abort the run in progress, if any."""
        if self._handle is None:
            raise ClosedError("the model handle is closed")
        if self._current is not None:
            self._current.abort()

    def take_callback_error(self) -> BaseException | None:
        """The last exception a 1.3 tokenizer / embedder callable raised (then cleared)."""
        handle = self._handle
        if handle is None or not handle.callback_errors:
            return None
        error = handle.callback_errors[-1]
        handle.callback_errors.clear()
        return error

    # ---- closing ---------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Abort what runs, wait for it, destroy the handle. Idempotent; a cancelled call
        still closes the handle (a later call waits for that to finish)."""
        if self._handle is None:
            return
        self.check_loop()
        if self._closed is None:
            self._closing = True
            self._closed = anyio.Event()
            await finish_even_if_cancelled(self._close, self._closed)
        else:
            with anyio.CancelScope(shield=True):
                await self._closed.wait()

    async def _close(self) -> None:
        handle = self._handle
        assert handle is not None
        if self._current is not None:
            # Aborts the run and waits for the runtime, even if nobody iterates the stream.
            await self._current.aclose()
        await self._slot.acquire()  # a configuration call in progress ends by itself
        try:
            await anyio.to_thread.run_sync(native.destroy, handle)
        finally:
            self._forget()
            self._slot.release()

    def destroy_now(self) -> None:
        """Abort and destroy at once, from any thread (interpreter exit)."""
        handle, self._handle = self._handle, None
        if handle is not None:
            self._closing = True
            with contextlib.suppress(Exception):  # best effort at interpreter exit
                native.abort(handle)
                native.destroy(handle)
            self._forget()

    def _forget(self) -> None:
        self._free_spare_channel()
        self._handle = None
        self.recorder.retire()
        with _live_lock:
            _live.discard(self)
