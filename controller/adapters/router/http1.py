"""HTTP/1.1 as the embedded router's clients see it, parsed by httptools (llhttp).

Owns the messages -- :class:`Request` and :class:`Response`, one whole message
each, bodies bounded by :data:`MAX_BODY` -- and :class:`ClientConnection`, the
asyncio protocol of one client connection: keep-alive, pipelined requests
answered in order, ``Expect: 100-continue`` answered, chunked bodies read whole,
and the router's own refusals (400 malformed, 408 a head or body that stalls,
413 a body too large, 431 a head too large, each then closing). Each whole
request goes to a handler coroutine, whose answer is written back. Also owns
:class:`Watch`, the one timer that checks every connection's deadline (client
timeouts here, the backend side's in :mod:`controller.adapters.router.upstream`).

Called by :mod:`controller.adapters.router.embedded`, on its loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import httptools

__all__ = [
    "HOP",
    "MAX_BODY",
    "MAX_HEAD",
    "ClientConnection",
    "Handler",
    "Request",
    "Response",
    "Timeouts",
    "Watch",
    "nodelay",
    "plain",
]

log = logging.getLogger(__name__)

MAX_HEAD = 64 * 1024
MAX_BODY = 64 * 1024 * 1024
#: Seconds between two checks of the connections' deadlines.
TICK = 0.1
#: Requests a client may pipeline ahead before the router stops reading.
PIPELINED = 8
HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"te",
        b"trailer",
        b"upgrade",
        b"content-length",
        b"expect",
    }
)
REASONS = {
    200: b"OK",
    400: b"Bad Request",
    404: b"Not Found",
    408: b"Request Timeout",
    413: b"Content Too Large",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
}


@dataclass(frozen=True)
class Timeouts:
    """Seconds: a client's request head from its first byte (then 408), a client
    connection with no request under way, a backend's whole answer (then 504),
    and opening a backend connection (then 502)."""

    header: float = 10.0
    idle: float = 60.0
    response: float = 300.0
    connect: float = 5.0


@dataclass(frozen=True, slots=True)
class Request:
    """A client's whole request: ``headers`` are the end-to-end ones as sent,
    ``fields`` every header by lower-case name (the last value wins)."""

    method: bytes
    target: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    fields: dict[bytes, bytes]
    body: bytes
    keep_alive: bool
    http10: bool

    def encode(self) -> bytes:
        """The request as sent to a backend: HTTP/1.1, kept alive, sized."""
        lines = [self.method + b" " + self.target + b" HTTP/1.1"]
        lines += [name + b": " + value for name, value in self.headers]
        if self.body or self.method not in (b"GET", b"HEAD"):
            lines.append(b"Content-Length: %d" % len(self.body))
        return b"\r\n".join(lines) + b"\r\n\r\n" + self.body


@dataclass(frozen=True, slots=True)
class Response:
    """A backend's (or the router's own) final answer; ``headers`` are the
    end-to-end ones, ``length`` the backend's Content-Length, passed on where
    the answer has no body (HEAD, 304)."""

    status: int
    reason: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes = b""
    length: bytes | None = None

    def encode(self, method: bytes, keep_alive: bool, http10: bool = False) -> bytes:
        lines = [b"HTTP/1.1 %d %s" % (self.status, self.reason)]
        lines += [name + b": " + value for name, value in self.headers]
        body = self.body
        if method == b"HEAD" or self.status in (204, 304) or self.status < 200:
            body = b""
            if self.length is not None and self.status != 204:
                lines.append(b"Content-Length: " + self.length)
        else:
            lines.append(b"Content-Length: %d" % len(body))
        if not keep_alive:
            lines.append(b"Connection: close")
        elif http10:
            lines.append(b"Connection: keep-alive")
        return b"\r\n".join(lines) + b"\r\n\r\n" + body


def plain(status: int, text: bytes, content_type: bytes = b"text/plain") -> Response:
    """The router's own answer."""
    reason = REASONS.get(status, b"Error")
    return Response(status, reason, ((b"Content-Type", content_type),), text)


def nodelay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Watched(Protocol):
    """A connection with a deadline (``math.inf``: none) and what to do past it."""

    deadline: float

    def expired(self) -> None: ...

    def close(self) -> None: ...


class Watch:
    """Every open connection's deadline, checked every :data:`TICK` seconds by
    one timer -- cheaper than a timer per request; late by a tick at most."""

    def __init__(self) -> None:
        self.connections: set[Watched] = set()
        self.handle: asyncio.TimerHandle | None = None

    def add(self, connection: Watched) -> None:
        self.connections.add(connection)
        if self.handle is None:
            self.handle = asyncio.get_running_loop().call_later(TICK, self._tick)

    def discard(self, connection: Watched) -> None:
        self.connections.discard(connection)

    def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        for connection in [c for c in self.connections if c.deadline <= now]:
            connection.expired()
        self.handle = loop.call_later(TICK, self._tick) if self.connections else None

    def close(self) -> None:
        """Close every connection (the router is closing)."""
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
        for connection in list(self.connections):
            connection.close()
        self.connections.clear()


Handler = Callable[[Request], Awaitable[Response]]

#: What a client connection waits for, past its deadline.
_NOTHING, _REQUEST, _HEAD, _BODY = range(4)


class ClientConnection(asyncio.Protocol):
    """One client's connection: requests in, answers out, in order."""

    def __init__(self, handle: Handler, timeouts: Timeouts, watch: Watch) -> None:
        self.handle, self.timeouts, self.watch = handle, timeouts, watch
        self.loop = asyncio.get_running_loop()
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.pending: deque[Request | Response] = deque()  # a Response: refused, then close
        self.worker: asyncio.Task[None] | None = None
        self.deadline, self.waiting = math.inf, _NOTHING
        self.parsing = False  # between a request's first byte and its end
        self.closing = False  # no more requests are read
        self.refusal: Response | None = None
        self.drained: asyncio.Future[None] | None = None
        self.write_paused = False
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.fields: dict[bytes, bytes] = {}
        self.chunks: list[bytes] = []
        self.size = self.body_size = 0

    # -- asyncio.Protocol -----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        nodelay(transport)
        self.watch.add(self)
        self._wait(_REQUEST, self.timeouts.idle)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:  # served as a plain request, then closed
            self._stop_reading()
        except httptools.HttpParserError:
            self._refuse(self.refusal or plain(400, b"malformed request"))

    def eof_received(self) -> bool | None:
        """The client sends no more: what it asked is answered, then the
        connection closes."""
        self.closing = True
        self._disarm()
        if self._busy():
            return True  # keep the sending half open
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self.watch.discard(self)
        self.closing = True
        self.pending.clear()
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)

    # -- httptools callbacks ----------------------------------------------------------

    def on_message_begin(self) -> None:
        self.parsing = True
        self._wait(_HEAD, self.timeouts.header)
        self.url, self.headers, self.fields, self.chunks = b"", [], {}, []
        self.size = self.body_size = 0

    def on_url(self, url: bytes) -> None:
        self.url += url
        self._count(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value))
        lower = name.lower()
        self.fields[lower] = value
        if lower not in HOP:
            self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._wait(_BODY, self.timeouts.idle)
        length = self.fields.get(b"content-length")
        if length is not None and int(length) > MAX_BODY:  # llhttp checked the digits
            self._stop(plain(413, b"request body too large"))
        connection = self.fields.get(b"connection", b"").lower()
        if connection.strip() not in (b"", b"keep-alive", b"close"):  # names more hop headers
            listed = {token.strip() for token in connection.split(b",")}
            self.headers = [(n, v) for n, v in self.headers if n.lower() not in listed]
        if (
            self.fields.get(b"expect", b"").lower() == b"100-continue"
            and self.parser.get_http_version() == "1.1"
            and self.transport is not None
            and not self._busy()
        ):  # (else it would come before the answers under way; the client sends anyway)
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self.body_size += len(body)
        if self.body_size > MAX_BODY:
            self._stop(plain(413, b"request body too large"))
        self.chunks.append(body)
        self.deadline = self.loop.time() + self.timeouts.idle

    def on_message_complete(self) -> None:
        self.parsing = False
        self._disarm()
        keep_alive = self.parser.should_keep_alive()
        request = Request(
            self.parser.get_method(),
            self.url,
            tuple(self.headers),
            self.fields,
            b"".join(self.chunks),
            keep_alive,
            keep_alive and self.parser.get_http_version() == "1.0",
        )
        self.pending.append(request)
        if not keep_alive:
            self._stop_reading()
        elif len(self.pending) >= PIPELINED and self.transport is not None:
            self.transport.pause_reading()
        self._kick()

    # -- serving ----------------------------------------------------------------------

    async def _work(self) -> None:
        transport = self.transport
        assert transport is not None
        while self.pending:
            item = self.pending.popleft()
            if isinstance(item, Response):  # refused: the last answer on this connection
                transport.write(item.encode(b"", keep_alive=False))
                transport.close()
                return
            try:
                response = await self.handle(item)
            except Exception:
                log.exception("the router failed on a request")
                response, self.closing = plain(500, b"the router failed"), True
            if transport.is_closing():  # the client went away meanwhile
                return
            keep = item.keep_alive and not (self.closing and not self.pending)
            transport.write(response.encode(item.method, keep, item.http10))
            if self.write_paused:
                self.drained = self.loop.create_future()
                await self.drained
            if not keep:
                transport.close()
                return
            if not self.closing and len(self.pending) < PIPELINED:
                transport.resume_reading()
        if not self.parsing:
            self._wait(_REQUEST, self.timeouts.idle)

    def _busy(self) -> bool:
        """Whether requests are waiting or being answered."""
        return bool(self.pending) or not (self.worker is None or self.worker.done())

    def _kick(self) -> None:
        if self.worker is None or self.worker.done():
            self._disarm()
            self.worker = self.loop.create_task(self._work())

    def _refuse(self, response: Response) -> None:
        """Answer ``response`` after what is already under way, then close."""
        self._stop_reading()
        self._disarm()
        self.pending.append(response)
        self._kick()

    def _stop(self, response: Response) -> None:
        """Inside a parser callback: stop parsing, answer ``response``."""
        self.refusal = response
        raise ValueError(response.reason.decode())

    def _count(self, size: int) -> None:
        self.size += size
        if self.size > MAX_HEAD:
            self._stop(plain(431, b"request head too large"))

    def _stop_reading(self) -> None:
        self.closing = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    # -- deadlines ---------------------------------------------------------------------

    def _wait(self, waiting: int, seconds: float) -> None:
        self.waiting, self.deadline = waiting, self.loop.time() + seconds

    def _disarm(self) -> None:
        self.waiting, self.deadline = _NOTHING, math.inf

    def expired(self) -> None:
        waiting = self.waiting
        self._disarm()
        if waiting == _REQUEST:  # kept alive, and no request came
            if self.transport is not None and not self.pending:
                self.transport.close()
        elif waiting == _HEAD:
            self._refuse(plain(408, b"request head timeout"))
        elif waiting == _BODY:
            self._refuse(plain(408, b"request body timeout"))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
