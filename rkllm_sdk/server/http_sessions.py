"""Who owns a handle over HTTP: an (API key, ``X-RKLLM-Session``) pair, until idle too long.

HTTP requests come and go on any connection, so a handle cannot die with a connection as it
does over TCP. Over HTTP a handle belongs to the *HTTP session* that created it: the API key
the request carried (none when the server has no key) and the value of the
``X-RKLLM-Session`` header (``default`` when absent). Every request of that pair sees the
session's handles (and ``rkllm_run_async`` runs); any other pair gets ``-32602 unknown
handle``. A session's handles are
destroyed by ``rkllm_destroy``, or, all of them, once the session has served no request for
``idle_timeout_s`` (its runs are aborted first).

Each request is served with the session as its :class:`~.registry.Peer` (the owner handle
ownership compares) and its *own* outbox: :attr:`HttpPeer.outbox` reads a context variable
the transport sets for the task serving the request, so two requests of one session
(a streaming run and its ``rkllm_abort``) never mix their messages.
"""

from __future__ import annotations

import contextvars
import hashlib
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager

import anyio
import anyio.abc

from .outbox import Outbox
from .sessions import Sessions

__all__ = ["SESSION_HEADER", "HttpPeer", "HttpSessions", "SessionError"]

#: The request header naming the session (printable, at most 128 characters).
SESSION_HEADER = "X-RKLLM-Session"
_SESSION_NAME = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")

#: The outbox of the request the current task serves.
_REQUEST_OUTBOX: contextvars.ContextVar[Outbox] = contextvars.ContextVar("rkllm_request_outbox")


class SessionError(Exception):
    """A bad ``X-RKLLM-Session`` value, or too many sessions hold handles already."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


class HttpPeer:
    """One HTTP session: the owner of its handles; the outbox is the current request's."""

    def __init__(self, parent: HttpSessions, key: tuple[str, str]) -> None:
        self.parent = parent
        self.sessions = parent.sessions
        self.key = key
        self.active = 0  # requests in progress
        self.last_used = time.monotonic()

    @property
    def outbox(self) -> Outbox:
        """The outbox of the request being served (set by :meth:`HttpSessions.request`)."""
        return _REQUEST_OUTBOX.get()

    @outbox.setter
    def outbox(self, value: Outbox) -> None:
        _REQUEST_OUTBOX.set(value)

    @property
    def tasks(self) -> anyio.abc.TaskGroup | None:
        """The HTTP server's task group, which drives the session's async runs."""
        return self.parent.tasks


class HttpSessions:
    """The HTTP sessions of one server; destroys what an idle session holds."""

    def __init__(self, sessions: Sessions, idle_timeout_s: float, max_sessions: int) -> None:
        self.sessions = sessions
        self.idle_timeout_s = idle_timeout_s
        self.max_sessions = max_sessions
        self.peers: dict[tuple[str, str], HttpPeer] = {}
        #: Drives async runs while the HTTP face serves (set by ``serve_http``).
        self.tasks: anyio.abc.TaskGroup | None = None

    @staticmethod
    def key(api_key: str | None, name: str | None) -> tuple[str, str]:
        """The owner key of a request: a digest of its API key and its session name.

        Raises:
            SessionError: a session name that is not 1-128 of ``A-Za-z0-9._:@/+=-``.
        """
        if name is None:
            name = "default"
        elif not _SESSION_NAME.fullmatch(name):
            raise SessionError(
                f"{SESSION_HEADER} takes 1 to 128 of A-Z a-z 0-9 . _ : @ / + = -", status=400
            )
        principal = hashlib.sha256(api_key.encode()).hexdigest()[:16] if api_key else ""
        return principal, name

    @contextmanager
    def request(self, key: tuple[str, str], outbox: Outbox) -> Iterator[HttpPeer]:
        """The session of ``key`` serving one request whose messages go to ``outbox``.

        Raises:
            SessionError: a new session while ``max_sessions`` hold handles.
        """
        peer = self.peers.get(key)
        if peer is None:
            if len(self.peers) >= self.max_sessions:
                raise SessionError("too many HTTP sessions: try again later", status=429)
            peer = self.peers[key] = HttpPeer(self, key)
        token = _REQUEST_OUTBOX.set(outbox)
        peer.active += 1
        try:
            yield peer
        finally:
            _REQUEST_OUTBOX.reset(token)
            peer.active -= 1
            peer.last_used = time.monotonic()
            idle = not self.sessions.owned(peer) and not self.sessions.polled.owned(peer)
            if not peer.active and idle:
                self.peers.pop(key, None)  # nothing to keep: forget it

    async def reap(self) -> int:
        """Destroy the handles of every session idle longer than the timeout; how many."""
        now = time.monotonic()
        idle = [
            p
            for p in self.peers.values()
            if not p.active and now - p.last_used > self.idle_timeout_s
        ]
        for peer in idle:
            self.peers.pop(peer.key, None)
        for peer in idle:
            await self.sessions.close_connection(peer)
        return len(idle)

    async def reap_forever(self) -> None:
        """Reap idle sessions periodically (at least every 5 s), until cancelled."""
        period = min(5.0, max(0.05, self.idle_timeout_s / 4))
        while True:
            await anyio.sleep(period)
            await self.reap()

    async def close_all(self) -> None:
        """Destroy every session's handles (the server is stopping)."""
        peers, self.peers = list(self.peers.values()), {}
        for peer in peers:
            await self.sessions.close_connection(peer)
