"""The embedded router's backend side: kept-alive HTTP/1.1 connections to the
releases, pooled by address, and the exchange of one request for its answer.

Owns :class:`Upstreams` (the pools, and :meth:`Upstreams.send`) and the asyncio
protocol of one backend connection, parsed by httptools (llhttp): interim 1xx
answers skipped, HEAD/204/304 answers without a body, chunked and
close-delimited bodies read whole (at most :data:`MAX_BODY`); 504 for an answer
that does not come within the response timeout, 502 for a backend that cannot be
reached, closes the connection early or does not speak HTTP/1.1.

A pooled connection is never reused once it has been idle for
:data:`IDLE_SHARE` of the backend's keep-alive (its ``Keep-Alive: timeout=N``,
else :data:`DEFAULT_KEEP_ALIVE`), nor once the backend closed it; and a request
that fails on a reused connection is sent once more on a fresh one when that is
safe -- an idempotent method, or the connection was reset or closed before any
byte of the answer came (what nginx and HAProxy do) -- so a backend closing an
idle connection just as a request goes out costs no 502.

Called by :mod:`controller.adapters.router.embedded`, on its loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import math

import httptools

from controller.adapters.router.http1 import (
    HOP,
    MAX_BODY,
    MAX_HEAD,
    Response,
    Timeouts,
    Watch,
    nodelay,
    plain,
)

__all__ = [
    "DEFAULT_KEEP_ALIVE",
    "IDEMPOTENT",
    "IDLE_SHARE",
    "UNREACHABLE",
    "Upstreams",
]

#: A backend's keep-alive (seconds) when it does not say (uvicorn's default is 5).
DEFAULT_KEEP_ALIVE = 5.0
#: A pooled connection is reused while idle less than this share of the keep-alive.
IDLE_SHARE = 0.8
#: Idle connections kept per backend.
POOLED = 64
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"TRACE"})
#: The body of the router's 502 when a backend cannot be connected to (nothing sent).
UNREACHABLE = b"the release did not answer"


class _Reset(Exception):
    """The backend reset or closed the connection before its answer was whole."""

    def __init__(self, answered: bool) -> None:
        super().__init__("the backend closed the connection")
        self.answered = answered  # some byte of the answer had come


class _Broken(Exception):
    """The backend's answer broke HTTP or the router's bounds."""


class _Upstream(asyncio.Protocol):
    """One connection to a backend: one exchange at a time, then pooled."""

    def __init__(self, loop: asyncio.AbstractEventLoop, watch: Watch) -> None:
        self.loop, self.watch = loop, watch
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[Response] | None = None
        self.deadline = math.inf  # of the answer under way, or of reuse while pooled
        self.pool: list[_Upstream] | None = None  # while pooled
        self.closed = False
        self.max_idle = DEFAULT_KEEP_ALIVE * IDLE_SHARE
        self.idle_since = 0.0
        self._begin(head=False)

    def _begin(self, head: bool) -> None:
        self.head, self.answered, self.headers_done, self.keep_alive = head, False, False, False
        self.status, self.reason, self.size = 0, b"", 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []
        self.length: bytes | None = None
        self.chunked = False

    def exchange(self, data: bytes, head: bool, timeout: float) -> asyncio.Future[Response]:
        assert self.transport is not None
        if self.head:  # the last answer was to HEAD: llhttp still waits for its body
            self.parser = httptools.HttpResponseParser(self)
        self._begin(head)
        self.waiter = waiter = self.loop.create_future()
        if self.closed or self.transport.is_closing():
            waiter.set_exception(_Reset(answered=False))
            return waiter
        self.deadline = self.loop.time() + timeout
        self.transport.write(data)
        return waiter

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    # -- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        nodelay(transport)
        self.watch.add(self)

    def data_received(self, data: bytes) -> None:
        if self.waiter is None or self.waiter.done():  # nothing was asked: not HTTP
            self.close()
            return
        self.answered = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(_Broken(f"the backend's answer is not HTTP/1.1: {exc}"))
        except httptools.HttpParserUpgrade:  # 101: never asked for (Upgrade is not passed on)
            self._fail(_Broken("the backend switched protocols"))

    def eof_received(self) -> bool | None:
        self.closed = True
        return None  # the transport closes; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.watch.discard(self)
        if self.pool is not None:
            with contextlib.suppress(ValueError):
                self.pool.remove(self)
            self.pool = None
        if self.waiter is None or self.waiter.done():
            return
        if self.headers_done and self._until_close():
            self._finish()  # a body delimited by the end of the connection
        else:
            self._fail(_Reset(self.answered))

    # -- httptools callbacks ----------------------------------------------------------

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.size += len(name) + len(value)
        if self.size > MAX_HEAD:
            raise _Broken("the backend's answer head is too large")
        lower = name.lower()
        if lower not in HOP:
            self.headers.append((name, value))
        elif lower == b"content-length":
            self.length = value
        elif lower == b"transfer-encoding":
            self.chunked = b"chunked" in value.lower()
        elif lower == b"keep-alive":
            self._keep_alive(value)

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        if self.status < 200:  # interim (100 Continue, 103 Early Hints): skipped
            return
        self.headers_done = True
        self.keep_alive = self.parser.should_keep_alive()
        if self.head:
            self._finish()

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size > MAX_HEAD + MAX_BODY:
            raise _Broken("the backend's answer is too large")
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        if self.status < 200:
            self.reason, self.headers, self.size, self.length = b"", [], 0, None
            return
        if not self.head:
            self.keep_alive = self.parser.should_keep_alive()
            self._finish()

    # -- the end of an exchange -------------------------------------------------------

    def _until_close(self) -> bool:
        return not (
            self.head or self.status in (204, 304) or self.length is not None or self.chunked
        )

    def _finish(self) -> None:
        self.deadline = math.inf
        if self.waiter is not None and not self.waiter.done():
            response = Response(
                self.status,
                self.reason,
                tuple(self.headers),
                b"".join(self.chunks),
                self.length,
            )
            self.waiter.set_result(response)

    def _fail(self, error: Exception) -> None:
        self.deadline = math.inf
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(error)
        self.close()

    def expired(self) -> None:
        """No answer in time, or pooled past its idle limit."""
        self._fail(TimeoutError())

    def _keep_alive(self, value: bytes) -> None:
        for part in value.split(b","):
            key, _, seconds = part.partition(b"=")
            if key.strip().lower() == b"timeout":
                with contextlib.suppress(ValueError):
                    self.max_idle = max(0.0, float(seconds) * IDLE_SHARE)


class Upstreams:
    """Kept-alive connections to the backends, pooled by address."""

    def __init__(self, timeouts: Timeouts, watch: Watch) -> None:
        self.timeouts, self.watch = timeouts, watch
        self.pools: dict[str, list[_Upstream]] = {}

    async def send(self, address: str, request: bytes, method: bytes) -> Response:
        """``request`` to the backend at ``address``; its answer, or the router's
        502 (unreachable, reset, not HTTP) or 504 (no answer in time)."""
        connection = self._reuse(address)
        for _attempt in (0, 1):
            reused = connection is not None
            if connection is None:
                try:
                    connection = await self._connect(address)
                except (OSError, TimeoutError, ValueError):
                    return plain(502, UNREACHABLE)
            try:
                answer = await connection.exchange(
                    request, method == b"HEAD", self.timeouts.response
                )
            except TimeoutError:
                return plain(504, b"the release did not answer in time")
            except _Reset as reset:
                if reused and (method in IDEMPOTENT or not reset.answered):
                    connection = None
                    continue  # a kept-alive connection the backend had closed
                return plain(502, b"the release closed the connection")
            except _Broken:
                return plain(502, b"the release's answer is not valid HTTP/1.1")
            except BaseException:
                connection.close()
                raise
            connection.waiter = None
            self._release(address, connection)
            return answer
        return plain(502, b"the release closed the connection")

    def _reuse(self, address: str) -> _Upstream | None:
        """The most recently used pooled connection, if the backend cannot have
        closed it yet; any staler ones are closed."""
        pool = self.pools.get(address)
        if not pool:
            return None
        now = asyncio.get_running_loop().time()
        while pool:
            connection = pool.pop()
            connection.pool = None
            transport = connection.transport
            if (
                not connection.closed
                and transport is not None
                and not transport.is_closing()
                and now - connection.idle_since < connection.max_idle
            ):
                return connection
            connection.close()
        return None

    def _release(self, address: str, connection: _Upstream) -> None:
        pool = self.pools.setdefault(address, [])
        transport = connection.transport
        if (
            not connection.keep_alive
            or connection.closed
            or transport is None
            or transport.is_closing()
            or len(pool) >= POOLED
        ):
            connection.close()
            return
        connection.idle_since = asyncio.get_running_loop().time()
        connection.deadline = connection.idle_since + connection.max_idle
        connection.pool = pool
        pool.append(connection)

    async def _connect(self, address: str) -> _Upstream:
        host, port = address.rsplit(":", 1)
        loop = asyncio.get_running_loop()
        _, connection = await asyncio.wait_for(
            loop.create_connection(lambda: _Upstream(loop, self.watch), host, int(port)),
            self.timeouts.connect,
        )
        return connection

    def close(self) -> None:
        """Forget the pools (the :class:`Watch` closes the connections)."""
        self.pools.clear()
