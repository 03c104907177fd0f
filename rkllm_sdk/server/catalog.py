"""Named models for the OpenAI and Ollama faces: loaded on first use, queued, swapped, expired.

The operator names models (:mod:`.model_specs`: ``--model``, ``--models-dir``); clients name
them in requests. A client's name is only ever looked up (:meth:`ModelCatalog.resolve`),
never used as a path. ``qwen3`` and ``qwen3:latest`` are the same model.

:class:`ModelCatalog` holds one handle per model, because the NPU runs one generation at a
time:

- **turns**: each model serves its requests one at a time, first come first served
  (:meth:`ModelCatalog.use`); at most ``max_queue`` requests wait per model, one more gets
  :class:`QueueFullError` at once (with a ``retry_after_s`` estimate), never a hang. A
  request cancelled while it waits leaves the queue.
- **loading**: a model loads on the first request that needs it (one load at a time, in
  order); its chat template comes from :func:`~.templates.load_template` and the runtime's
  own template is switched off (``set_chat_template("", "", "")``): the engine sends
  rendered text. A failed load raises the SDK's error to that request; the next request
  tries again. A load cancelled midway leaves no handle behind.
- **swapping**: at most ``max_loaded`` models are loaded. A request for another model waits
  until a loaded one is idle, then unloads the least recently used idle model and loads its
  own. A model in use is never unloaded. A model whose current request ends while an
  earlier request for another model waits to swap does not start its next request first:
  a busy model cannot starve the others.
- **keep-alive**: after a request the model stays loaded for that request's ``keep_alive_s``
  (``None``: the catalog's default; negative: forever; ``0``: unloaded as the request ends
  unless another one waits). The reaper of :meth:`ModelCatalog.lifespan` unloads expired
  models; :attr:`ModelInfo.expires_at` shows the deadline.
- **counters**: per model (:class:`~.catalog_metrics.ModelCounters`), as Prometheus text by
  :meth:`ModelCatalog.metrics_text`.
- **draining** (:attr:`ModelCatalog.draining`, set by ``rkllm serve`` on SIGTERM): new
  requests get :class:`DrainingError` at once; those running and those already waiting are
  served to the end. :meth:`ModelCatalog.wait_idle` waits until none is left.
- **closing** (the end of :meth:`ModelCatalog.lifespan`, or :meth:`ModelCatalog.aclose`):
  waiting requests get :class:`~rkllm_sdk.errors.ClosedError`, running ones have their
  handle closed under them, every handle is destroyed, later requests are refused.
"""

from __future__ import annotations

import itertools
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import attrs

from ..errors import ClosedError
from ..llm import AsyncLLM
from ..models import ModelParams
from .catalog_metrics import ModelCounters, prometheus_text
from .model_specs import ModelSpec, with_tag
from .templates import ChatTemplate, load_template

__all__ = [
    "DrainingError",
    "Loaded",
    "ModelCatalog",
    "ModelInfo",
    "ModelNotFoundError",
    "QueueFullError",
]


# ---- errors --------------------------------------------------------------------------------


class ModelNotFoundError(LookupError):
    """No model of that name is configured.

    Attributes:
        name: the name as the client gave it.
    """

    def __init__(self, name: str) -> None:
        super().__init__(f"model {name!r} not found")
        self.name = name


class QueueFullError(RuntimeError):
    """The model's queue is full (``max_queue`` requests wait): try again later.

    Attributes:
        model: the model's name.
        retry_after_s: an estimate of when a place frees up, in seconds (at least 1).
    """

    def __init__(self, model: str, waiting: int, retry_after_s: float) -> None:
        super().__init__(
            f"{waiting} requests are waiting for model {model!r}, the limit: "
            f"retry in {math.ceil(retry_after_s)} s"
        )
        self.model = model
        self.retry_after_s = retry_after_s


#: The ``retry_after_s`` of :class:`DrainingError`: long enough for a restart to begin,
#: short enough that a client with retries (the OpenAI SDKs: two) still tries a new process.
DRAIN_RETRY_AFTER_S = 5.0


class DrainingError(QueueFullError):
    """The server is shutting down (:attr:`ModelCatalog.draining`): it takes no new requests.

    A :class:`QueueFullError`, so every face answers it as it answers a busy model: OpenAI
    429 and Ollama 503, both with ``Retry-After``; MCP the proxy's BusyError code with
    ``retry_after_s``. That is an answer clients and load balancers already retry: the
    OpenAI SDKs retry a 429 after ``Retry-After``, a balancer can resend a refused request
    to another backend (nginx's ``proxy_next_upstream http_429 http_503``) and takes this
    one out as ``/health`` answers 503 "draining". ClosedError would be a 410 Gone (OpenAI)
    or a 500 (Ollama), read as final or as a bug. The refused request did nothing, so
    retrying it is safe.

    Attributes:
        model: the model's name.
        retry_after_s: :data:`DRAIN_RETRY_AFTER_S`.
    """

    def __init__(self, model: str) -> None:
        RuntimeError.__init__(
            self,
            f"the server is shutting down and takes no new requests for model {model!r}: "
            f"retry in {math.ceil(DRAIN_RETRY_AFTER_S)} s (or on another server)",
        )
        self.model = model
        self.retry_after_s = DRAIN_RETRY_AFTER_S


# ---- what the catalog reports ---------------------------------------------------------------


@attrs.frozen(kw_only=True)
class ModelInfo:
    """One configured model, for ``/v1/models``, ``/api/tags`` and ``/api/ps``.

    Attributes:
        name: its name with tag.
        path: its file.
        size_bytes: the file's size (0 when it cannot be read).
        modified: the file's modification time, UTC (the epoch when it cannot be read).
        loaded: whether a handle is loaded now.
        loading: whether it is being loaded now.
        expires_at: when it will be unloaded if nothing uses it (UTC); None when not loaded
            or kept forever.
        params: its init parameters (None: the runtime's defaults).
        template: its ``template`` option (None: automatic).
    """

    name: str
    path: Path
    size_bytes: int
    modified: datetime
    loaded: bool
    loading: bool
    expires_at: datetime | None
    params: ModelParams | None
    template: str | None


@attrs.define(kw_only=True, eq=False)
class Loaded:
    """A loaded model, what :meth:`ModelCatalog.use` hands the request holding it.

    Attributes:
        spec: the model.
        llm: its handle (the runtime's own chat template is off).
        template: its chat template.
        load_ms: how long loading took (template and handle).
        last_used: ``time.monotonic()`` when a request last ended on it (or it loaded).
        uses: requests that held this handle, the current one included (1: the current
            request loaded it).
        engine_state: the chat engine's (what the KV cache holds); None after a load.
    """

    spec: ModelSpec
    llm: AsyncLLM
    template: ChatTemplate
    load_ms: float
    last_used: float
    uses: int = 0
    engine_state: Any = None


# ---- the catalog ----------------------------------------------------------------------------


@attrs.define(eq=False)
class _Ticket:
    """One request waiting for a model's turn."""

    seq: int
    event: anyio.Event = attrs.field(factory=anyio.Event)
    granted: bool = False
    closed: bool = False


@attrs.define(eq=False)
class _Slot:
    """A model's state: its handle, who holds it, who waits."""

    spec: ModelSpec
    counters: ModelCounters = attrs.field(factory=ModelCounters)
    loaded: Loaded | None = None
    busy: bool = False  # a request holds the turn, or the handle is being unloaded
    loading: bool = False
    waiters: deque[_Ticket] = attrs.field(factory=deque)
    keep_alive_s: float = 0.0  # of the request holding it, else of the last one
    idle_since: float = 0.0  # time.monotonic() when the last request ended
    turns_ended: int = 0


class ModelCatalog:
    """The configured models, their handles, queues and keep-alives (see the module doc).

    Args:
        specs: the models (names must be unique).
        runtime: ``runtime=`` for every load (a library path, ``"fake"``, or None).
        abi: ``abi=`` for every load.
        max_loaded: models loaded at once (at least 1).
        max_queue: requests waiting per model (beyond the one it serves); one more gets
            :class:`QueueFullError`.
        keep_alive_s: how long a model stays loaded after a request by default (negative:
            forever; 0: unloaded after each request).
        cache_dir: where the engine keeps prompt caches (None: none kept).
        log: called with one line per load, unload and failure.
        reap_interval_s: how often the reaper looks for expired models.

    Raises:
        ValueError: duplicate names, or limits out of range.
    """

    def __init__(
        self,
        specs: Iterable[ModelSpec],
        *,
        runtime: str | None,
        abi: str | None,
        max_loaded: int = 1,
        max_queue: int = 8,
        keep_alive_s: float = 300.0,
        cache_dir: Path | None = None,
        log: Callable[[str], None] | None = None,
        reap_interval_s: float = 1.0,
    ) -> None:
        if max_loaded < 1:
            raise ValueError(f"max_loaded must be at least 1, got {max_loaded}")
        if max_queue < 0:
            raise ValueError(f"max_queue must be at least 0, got {max_queue}")
        if math.isnan(keep_alive_s):
            raise ValueError("keep_alive_s must be a number of seconds, got nan")
        if not reap_interval_s > 0:
            raise ValueError(f"reap_interval_s must be > 0, got {reap_interval_s}")
        self._slots: dict[str, _Slot] = {}
        for spec in specs:
            if spec.name in self._slots:
                raise ValueError(f"model {spec.name!r} is configured twice")
            self._slots[spec.name] = _Slot(spec)
        self.runtime = runtime
        self.abi = abi
        self.max_loaded = max_loaded
        self.max_queue = max_queue
        self.keep_alive_s = keep_alive_s
        self.cache_dir = cache_dir
        self.reap_interval_s = reap_interval_s
        self._log = log or (lambda line: None)
        self._seq = itertools.count()
        self._load_lock = anyio.Lock()
        self._evict_waiters: set[int] = set()  # seqs of loads waiting for an idle model
        self._changed = anyio.Event()  # set (and replaced) when a model may have gone idle
        self._closed = False
        #: Refuse new requests (:class:`DrainingError`) and serve those running or waiting:
        #: set on SIGTERM, then :meth:`wait_idle`.
        self.draining = False

    # ---- lookups ---------------------------------------------------------------------------

    def resolve(self, name: str) -> ModelSpec:
        """The model a client named (``qwen3`` means ``qwen3:latest``).

        Raises:
            ModelNotFoundError: no such model.
        """
        return self._slot(name).spec

    def _slot(self, name: str) -> _Slot:
        slot = self._slots.get(with_tag(name))
        if slot is None:
            raise ModelNotFoundError(name)
        return slot

    def counters(self, name: str) -> ModelCounters:
        """The model's counters (the engine adds its token counts to them).

        Raises:
            ModelNotFoundError: no such model.
        """
        return self._slot(name).counters

    def models(self) -> list[ModelInfo]:
        """Every configured model, sorted by name, with its file's size and time and its state."""
        return [self._info(slot) for _, slot in sorted(self._slots.items())]

    def _info(self, slot: _Slot) -> ModelInfo:
        try:
            stat = slot.spec.path.stat()
            size, mtime = stat.st_size, stat.st_mtime
        except OSError:
            size, mtime = 0, 0.0
        expires_at = None
        if slot.loaded is not None and slot.keep_alive_s >= 0:
            now = time.monotonic()
            start = now if slot.busy else slot.idle_since
            try:
                expires_at = datetime.now(UTC) + timedelta(seconds=start + slot.keep_alive_s - now)
            except OverflowError:  # beyond year 9999 (or infinite): as good as forever
                expires_at = None
        return ModelInfo(
            name=slot.spec.name,
            path=slot.spec.path,
            size_bytes=size,
            modified=datetime.fromtimestamp(mtime, UTC),
            loaded=slot.loaded is not None,
            loading=slot.loading,
            expires_at=expires_at,
            params=slot.spec.params,
            template=slot.spec.template,
        )

    @property
    def loading(self) -> bool:
        """Whether a model is being loaded now."""
        return any(slot.loading for slot in self._slots.values())

    @property
    def ready(self) -> bool:
        """Whether the catalog can answer without waiting for a load (no model is loading)."""
        return not self._closed and not self.loading

    def health(self) -> tuple[bool, dict[str, Any]]:
        """``GET /health``'s part (:meth:`HttpFace.add`): not ready while the only named
        model is loading (a client has nothing else to use); which models are loaded and
        which loading."""
        infos = self.models()
        loading = [m.name for m in infos if m.loading]
        fields = {"models": {"loaded": [m.name for m in infos if m.loaded], "loading": loading}}
        return not (len(infos) == 1 and loading), fields

    # ---- turns -----------------------------------------------------------------------------

    @asynccontextmanager
    async def use(self, name: str, *, keep_alive_s: float | None = None) -> AsyncIterator[Loaded]:
        """Hold model ``name`` for one request: wait for its turn, load it, yield it.

        Args:
            name: the model as the client named it.
            keep_alive_s: how long the model stays loaded after this request (None: the
                catalog's default; negative: forever; 0: unloaded as this request ends,
                unless another one waits).

        Raises:
            ModelNotFoundError: no such model.
            QueueFullError: ``max_queue`` requests already wait for it (raised at once).
            DrainingError: the catalog is draining (raised at once).
            ClosedError: the catalog is closing.
            ValueError: ``keep_alive_s`` is NaN.
            RuntimeNotFoundError, ModelLoadError, InvalidParamsError, TemplateError: the
                load failed (the next request tries again).

        >>> async with catalog.use("qwen3") as loaded:  # doctest: +SKIP
        ...     text = (await loaded.llm.generate(prompt)).text
        """
        slot = self._slot(name)
        if keep_alive_s is not None and math.isnan(keep_alive_s):
            raise ValueError("keep_alive_s must be a number of seconds, got nan")
        seq = next(self._seq)
        await self._take_turn(slot, seq)
        started = time.monotonic()
        slot.keep_alive_s = self.keep_alive_s if keep_alive_s is None else keep_alive_s
        try:
            loaded = await self._ensure_loaded(slot, seq)
            loaded.uses += 1
            yield loaded
        finally:
            with anyio.CancelScope(shield=True):
                await self._end_turn(slot, started)

    async def _take_turn(self, slot: _Slot, seq: int) -> None:
        """Wait (FIFO) until ``slot`` is ours; counts the request as running."""
        if self._closed:
            raise ClosedError("the model catalog is closed")
        if self.draining:
            slot.counters.rejected += 1
            raise DrainingError(slot.spec.name)
        if slot.busy or slot.waiters or self._held_back(seq):
            if len(slot.waiters) >= self.max_queue:
                slot.counters.rejected += 1
                raise QueueFullError(slot.spec.name, len(slot.waiters), self._retry_after(slot))
            ticket = _Ticket(seq)
            slot.waiters.append(ticket)
            slot.counters.queued += 1
            try:
                await ticket.event.wait()
            except BaseException:
                if ticket.granted:  # handed the turn just as we were cancelled: pass it on
                    slot.busy = False
                    slot.counters.running -= 1
                    self._dispatch()
                    self._notify()
                elif not ticket.closed:  # still in the queue
                    slot.waiters.remove(ticket)
                    slot.counters.queued -= 1
                    self._notify()  # for wait_idle
                raise
            if ticket.closed:
                raise ClosedError("the model catalog is closed")
        else:
            slot.busy = True
            slot.counters.running += 1
        slot.counters.requests += 1

    def _held_back(self, seq: int) -> bool:
        """Whether an earlier request waits to swap its model in: it goes first."""
        return any(other < seq for other in self._evict_waiters)

    def _dispatch(self) -> None:
        """Hand each free model to its first waiter (unless an earlier swap waits)."""
        for slot in self._slots.values():
            while self._closed and slot.waiters:
                ticket = slot.waiters.popleft()
                slot.counters.queued -= 1
                ticket.closed = True
                ticket.event.set()
            if slot.busy or not slot.waiters:
                continue
            if self._held_back(slot.waiters[0].seq):
                continue
            ticket = slot.waiters.popleft()
            slot.counters.queued -= 1
            slot.counters.running += 1
            slot.busy = True
            ticket.granted = True
            ticket.event.set()

    def _notify(self) -> None:
        """Wake the load waiting for an idle model."""
        self._changed.set()
        self._changed = anyio.Event()

    def _retry_after(self, slot: _Slot) -> float:
        """Seconds until a place in ``slot``'s queue likely frees up (at least 1)."""
        c = slot.counters
        mean = c.busy_seconds / slot.turns_ended if slot.turns_ended else 1.0
        return max(1.0, round(mean * (len(slot.waiters) + 1), 1))

    async def _end_turn(self, slot: _Slot, started: float) -> None:
        """The request holding ``slot`` ended: unload if its keep-alive says so, pass it on."""
        now = time.monotonic()
        slot.counters.running -= 1
        slot.counters.busy_seconds += now - started
        slot.turns_ended += 1
        slot.idle_since = now
        try:
            if slot.loaded is not None:
                slot.loaded.last_used = now
                if slot.keep_alive_s == 0 and not slot.waiters:
                    await self._close_handle(slot, "keep_alive 0")
        finally:
            slot.busy = False
            self._dispatch()
            self._notify()

    # ---- loading and unloading -------------------------------------------------------------

    async def _ensure_loaded(self, slot: _Slot, seq: int) -> Loaded:
        """``slot``'s handle, loaded now if need be (the caller holds its turn)."""
        if slot.loaded is not None:
            return slot.loaded
        async with self._load_lock:
            if self._closed:
                raise ClosedError("the model catalog is closed")
            await self._make_room(seq)
            if self._closed:
                raise ClosedError("the model catalog is closed")
            slot.loading = True
            try:
                slot.loaded = await self._load(slot.spec)
                slot.counters.loads += 1
            except Exception as exc:
                slot.counters.load_failures += 1
                self._log(f"loading {slot.spec.name} failed: {type(exc).__name__}: {exc}")
                raise
            finally:
                slot.loading = False
        self._log(f"loaded {slot.spec.name} in {slot.loaded.load_ms:.0f} ms")
        return slot.loaded

    async def _make_room(self, seq: int) -> None:
        """Unload least recently used idle models until one more may load; wait for one
        to go idle when every loaded model is in use."""
        waiting = False
        try:
            while sum(s.loaded is not None for s in self._slots.values()) >= self.max_loaded:
                if self._closed:
                    raise ClosedError("the model catalog is closed")
                idle = [s for s in self._slots.values() if s.loaded is not None and not s.busy]
                if idle:
                    victim = min(idle, key=lambda s: s.loaded.last_used if s.loaded else 0.0)
                    await self._unload_idle(victim, "making room")
                    continue
                if not waiting:
                    waiting = True
                    self._evict_waiters.add(seq)
                await self._changed.wait()
        finally:
            if waiting:
                self._evict_waiters.discard(seq)
                self._dispatch()

    async def _load(self, spec: ModelSpec) -> Loaded:
        """Load ``spec``: its chat template, its handle, the runtime's template off."""
        start = time.perf_counter()
        template = await anyio.to_thread.run_sync(load_template, spec.template, spec.path)
        llm = await AsyncLLM.load(spec.path, runtime=self.runtime, abi=self.abi, params=spec.params)
        try:
            await llm.set_chat_template("", "", "")
            if self._closed:
                raise ClosedError("the model catalog is closed")
        except BaseException:
            with anyio.CancelScope(shield=True):
                await llm.aclose()
            raise
        load_ms = (time.perf_counter() - start) * 1e3
        return Loaded(
            spec=spec, llm=llm, template=template, load_ms=load_ms, last_used=time.monotonic()
        )

    async def _close_handle(self, slot: _Slot, why: str) -> None:
        """Destroy ``slot``'s handle (the caller keeps the slot busy meanwhile)."""
        loaded = slot.loaded
        if loaded is None:
            return
        with anyio.CancelScope(shield=True):
            try:
                await loaded.llm.aclose()  # a second caller waits for the first's close
            finally:
                if slot.loaded is loaded:
                    slot.loaded = None
                    slot.counters.unloads += 1
                    self._log(f"unloaded {slot.spec.name} ({why})")

    async def _unload_idle(self, slot: _Slot, why: str) -> None:
        """Unload an idle model, holding it busy meanwhile; then hand it on."""
        slot.busy = True
        try:
            await self._close_handle(slot, why)
        finally:
            slot.busy = False
            self._dispatch()
            self._notify()

    async def unload(self, name: str) -> None:
        """Unload model ``name`` now if it is idle, else as soon as its current request ends
        (unless another one waits then). Nothing happens when it is not loaded.

        Raises:
            ModelNotFoundError: no such model.
        """
        slot = self._slot(name)
        if slot.loaded is None:
            return
        if slot.busy:
            slot.keep_alive_s = 0
            return
        await self._unload_idle(slot, "unload")

    # ---- lifetime --------------------------------------------------------------------------

    def _expired(self, now: float) -> Iterator[_Slot]:
        for slot in self._slots.values():
            if (
                slot.loaded is not None
                and not slot.busy
                and not slot.waiters
                and slot.keep_alive_s >= 0
                and slot.idle_since + slot.keep_alive_s <= now
            ):
                yield slot

    async def _reap(self) -> None:
        """Unload expired models every ``reap_interval_s``, until cancelled."""
        while True:
            await anyio.sleep(self.reap_interval_s)
            for slot in list(self._expired(time.monotonic())):
                if not slot.busy and slot.loaded is not None:
                    try:
                        await self._unload_idle(slot, "keep-alive expired")
                    except Exception as exc:  # the reaper carries on; the server too
                        self._log(f"unloading {slot.spec.name} failed: {exc!r}")

    @asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        """Run the keep-alive reaper while the block runs; unload everything when it ends.

        >>> async with catalog.lifespan():  # doctest: +SKIP
        ...     await serve()
        """
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._reap)
            try:
                yield
            finally:
                tg.cancel_scope.cancel()
                await self.aclose()

    async def aclose(self) -> None:
        """Refuse new requests, fail waiting ones (ClosedError), abort running ones and
        destroy every handle; a load in progress is destroyed when it finishes. Idempotent."""
        with anyio.CancelScope(shield=True):
            self._closed = True
            self._dispatch()
            self._notify()
            for slot in self._slots.values():
                await self._close_handle(slot, "closing")
            # A load under way finishes (and destroys its handle) before this returns.
            async with self._load_lock:
                pass
            for slot in self._slots.values():
                await self._close_handle(slot, "closing")

    @property
    def idle(self) -> bool:
        """Whether no request holds a model or waits for one."""
        return not any(slot.counters.running or slot.waiters for slot in self._slots.values())

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no request holds a model or waits for one (True), or ``timeout_s``
        passes (False). Set :attr:`draining` first, or new requests may keep it busy.

        >>> catalog.draining = True  # doctest: +SKIP
        >>> await catalog.wait_idle(30.0)  # doctest: +SKIP
        True
        """
        with anyio.move_on_after(timeout_s):
            while not self.idle:
                await self._changed.wait()  # set as each turn ends or a waiter leaves
            return True
        return False

    # ---- metrics ---------------------------------------------------------------------------

    def metrics_text(self) -> str:
        """The counters as Prometheus text (:func:`~.catalog_metrics.prometheus_text`), models
        sorted by name."""
        return prometheus_text(
            (name, slot.counters, slot.loaded is not None)
            for name, slot in sorted(self._slots.items())
        )
