"""The embedded router's HTTP/1.1 against backends and clients that misbehave on
purpose: raw-socket backends on loopback (keep-alive timeouts, connections closed
without notice, interim answers, HEAD, bodies until close, silence) and raw
clients (stalled heads, aborted bodies, ``Expect: 100-continue``, garbage)."""

from __future__ import annotations

import contextlib
import logging
import random
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from controller.adapters.router.embedded import EmbeddedRouter
from controller.core.traffic import RouteConfig

pytestmark = pytest.mark.integration


class Conn:
    """One backend connection, read the simple way (tests send sane requests)."""

    def __init__(self, sock: socket.socket, backend: Backend) -> None:
        self.sock, self.backend = sock, backend
        self.rfile = sock.makefile("rb")

    def read_request(self, timeout: float | None = 10) -> tuple[bytes, bytes] | None:
        """The next request's head and body; None when the peer closed (or, with
        ``timeout``, stayed silent that long)."""
        self.sock.settimeout(timeout)
        try:
            line = self.rfile.readline()
            if not line:
                return None
            head = [line]
            while line not in (b"\r\n", b""):
                line = self.rfile.readline()
                head.append(line)
        except (TimeoutError, OSError):
            return None
        whole = b"".join(head)
        length = 0
        for header in head[1:]:
            name, _, value = header.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        body = self.rfile.read(length) if length else b""
        with self.backend.lock:
            self.backend.requests.append((whole, body))
        return whole, body

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)


def answer(status: int = 200, body: bytes = b"ok", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 %d X\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n%s\r\n%s" % (
        status,
        len(body),
        extra,
        body,
    )


class Backend:
    """A raw HTTP/1.1 backend on loopback: ``serve`` handles each connection in a
    thread of its own; the connection closes when it returns."""

    def __init__(self, serve: Callable[[Conn], None]) -> None:
        self.requests: list[tuple[bytes, bytes]] = []
        self.connections = 0
        self.lock = threading.Lock()
        self.stop = threading.Event()
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                with outer.lock:
                    outer.connections += 1
                conn = Conn(self.request, outer)
                try:
                    serve(conn)
                except OSError:
                    pass
                finally:
                    conn.rfile.close()

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


def keep_alive(seconds: float, advertise: bool = False, delay: float = 0) -> Callable[[Conn], None]:
    """Answers 200 (after ``delay``), and closes a connection idle for exactly
    ``seconds``, saying so only with ``advertise``."""

    def serve(conn: Conn) -> None:
        extra = b"Keep-Alive: timeout=%d\r\n" % seconds if advertise else b""
        while conn.read_request(timeout=seconds) is not None:
            time.sleep(delay)
            conn.send(answer(extra=extra))

    return serve


def burst(url: str, methods: list[str]) -> list[int]:
    """The statuses of ``methods`` sent at once, each on a connection of its own."""
    with ThreadPoolExecutor(len(methods)) as pool:
        return list(
            pool.map(lambda m: httpx.request(m, f"{url}/", content=b"{}").status_code, methods)
        )


@contextlib.contextmanager
def routed(
    serve: Callable[[Conn], None], **timeouts: float
) -> Iterator[tuple[EmbeddedRouter, str, Backend]]:
    backend = Backend(serve)
    router = EmbeddedRouter(admin_port=None, **timeouts)
    url = router.add_model("m")
    router.configure("m", RouteConfig(backend.address, None, 0))
    try:
        yield router, url, backend
    finally:
        router.close()
        backend.close()


def raw(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    return sock


def read_all(sock: socket.socket) -> bytes:
    """Everything until the router closes the connection."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def codes(router: EmbeddedRouter) -> dict[int, int]:
    return router.snapshot("m")["stable"].codes


@pytest.fixture(autouse=True)
def no_errors_logged(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """No traceback, no "Task exception was never retrieved": nothing logged at
    WARNING or above by the router or asyncio."""
    caplog.set_level(logging.WARNING)
    yield
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


# -- stale pooled backend connections ---------------------------------------------------


def test_requests_that_race_the_backends_keep_alive_timeout_get_no_502() -> None:
    """The backend closes a connection idle for exactly 0.3 s, without a word; bursts
    of four requests (four pooled connections) come 0.27-0.33 s apart, so some are
    sent just as the backend closes, others after it closed them all."""
    with routed(keep_alive(0.3, delay=0.02)) as (router, url, backend):
        rng = random.Random(7)
        statuses = []
        for _ in range(12):
            statuses += burst(url, ["GET", "POST", "GET", "POST"])
            time.sleep(0.3 + rng.uniform(-0.03, 0.03))
    assert statuses == [200] * 48
    assert codes(router) == {200: 48}
    assert backend.connections > 8  # the backend did close idle connections


def test_a_reused_connection_closed_as_the_request_goes_out_is_retried_on_a_fresh_one() -> None:
    """Every connection is closed unanswered on its second request (the keep-alive
    race, made certain), and three are pooled: each request fails once on a pooled
    one and goes again on a fresh connection, never on another pooled one."""
    together = threading.Barrier(3, timeout=5)
    backend: Backend

    def serve(conn: Conn) -> None:
        if conn.read_request() is not None:
            if len(backend.requests) <= 3:
                together.wait()  # the first three, on three connections at once
            conn.send(answer(body=b"first"))
        conn.read_request()  # read, never answered: closed

    with routed(serve) as (router, url, backend):
        assert burst(url, ["GET"] * 3) == [200] * 3
        with httpx.Client() as client:
            for method in ("GET", "POST", "GET", "POST"):
                assert client.request(method, f"{url}/", content=b"{}").status_code == 200
    assert codes(router) == {200: 7}
    assert backend.connections == 3 + 4


def test_a_post_is_not_sent_twice_once_the_backend_began_answering() -> None:
    """A reused connection that breaks after part of the answer: GET is retried,
    POST is not (the backend may have acted on it) and gets 502."""

    def serve(conn: Conn) -> None:
        if conn.read_request() is not None:
            conn.send(answer())
        if conn.read_request() is not None:
            conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhal")  # then closes

    with routed(serve) as (router, url, backend), httpx.Client() as client:
        assert client.get(f"{url}/").status_code == 200
        assert client.get(f"{url}/").status_code == 200  # broke, retried on a fresh one
        assert client.post(f"{url}/", content=b"{}").status_code == 502
    assert codes(router) == {200: 2, 502: 1}
    assert [h.split(b" ")[0] for h, _ in backend.requests] == [b"GET", b"GET", b"GET", b"POST"]


def test_a_backend_closing_after_each_answer_without_saying_so() -> None:
    def serve(conn: Conn) -> None:
        if conn.read_request() is not None:
            conn.send(answer())

    with routed(serve) as (router, url, _), httpx.Client() as client:
        statuses = [
            client.request(m, f"{url}/", content=b"{}").status_code for m in ["GET", "POST"] * 40
        ]
    assert statuses == [200] * 80
    assert codes(router) == {200: 80}


def test_an_advertised_keep_alive_is_honoured() -> None:
    """``Keep-Alive: timeout=1``: a connection idle 0.9 s is not reused (a fresh one
    is opened; the backend sees no request on the old one it would drop at 1 s)."""
    with routed(keep_alive(1.0, advertise=True)) as (_, url, backend):
        with httpx.Client() as client:
            assert client.get(f"{url}/").status_code == 200
            assert client.get(f"{url}/").status_code == 200
            assert backend.connections == 1  # reused while fresh
            time.sleep(0.9)
            assert client.get(f"{url}/").status_code == 200
        assert backend.connections == 2


def test_a_pooled_connection_the_backend_closed_is_not_reused() -> None:
    """The backend closes idle connections after 0.1 s; three were pooled: the next
    requests go on fresh connections (the closed ones were dropped)."""

    def serve(conn: Conn) -> None:
        while conn.read_request(timeout=0.1) is not None:
            time.sleep(0.05)
            conn.send(answer())

    with routed(serve) as (router, url, backend):
        assert burst(url, ["POST"] * 3) == [200] * 3
        time.sleep(0.3)
        with httpx.Client() as client:
            for _ in range(3):
                assert client.post(f"{url}/", content=b"{}").status_code == 200
                time.sleep(0.3)
    assert len(backend.requests) == 6  # none was lost on a closed connection
    assert codes(router) == {200: 6}


# -- what backends answer -----------------------------------------------------------------


def test_head_gets_its_answer_without_a_body() -> None:
    def serve(conn: Conn) -> None:
        while (request := conn.read_request()) is not None:
            if request[0].startswith(b"HEAD"):
                conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
            else:
                conn.send(answer(body=b"after"))

    with routed(serve) as (router, url, _):
        sock = raw(url)
        sock.sendall(b"HEAD / HTTP/1.1\r\nHost: m\r\n\r\nGET / HTTP/1.1\r\nHost: m\r\n\r\n")
        sock.shutdown(socket.SHUT_WR)
        got = read_all(sock)
        sock.close()
    head, _, rest = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"Content-Length: 5" in head
    assert rest.startswith(b"HTTP/1.1 200")  # no body after HEAD's head
    assert rest.endswith(b"\r\n\r\nafter")
    assert codes(router) == {200: 2}


def test_interim_answers_are_skipped_and_204_304_have_no_body() -> None:
    finals = iter(
        [
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n"
            + answer(body=b"final"),
            b"HTTP/1.1 204 No Content\r\n\r\n",
            b"HTTP/1.1 304 Not Modified\r\nETag: x\r\n\r\n",
            answer(body=b"last"),
        ]
    )

    def serve(conn: Conn) -> None:
        while conn.read_request() is not None:
            conn.send(next(finals))

    with routed(serve) as (router, url, _), httpx.Client(timeout=5) as client:
        first = client.post(f"{url}/", content=b"{}")
        assert (first.status_code, first.content) == (200, b"final")
        assert (client.get(f"{url}/").status_code, client.get(f"{url}/").status_code) == (204, 304)
        last = client.get(f"{url}/")  # the same connections: nothing stray in between
        assert (last.status_code, last.content) == (200, b"last")
    assert codes(router) == {200: 2, 204: 1, 304: 1}


@pytest.mark.parametrize("version", [b"HTTP/1.0", b"HTTP/1.1"])
def test_a_body_delimited_by_close_is_passed_on_whole(version: bytes) -> None:
    body = bytes(range(256)) * 400

    def serve(conn: Conn) -> None:
        if conn.read_request() is not None:
            conn.send(version + b" 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n")
            conn.send(body[:5000])
            time.sleep(0.05)
            conn.send(body[5000:])

    with routed(serve) as (router, url, _), httpx.Client() as client:
        for _ in range(2):
            got = client.get(f"{url}/")
            assert (got.status_code, got.content) == (200, body)
            assert got.headers["content-length"] == str(len(body))
    assert codes(router) == {200: 2}


def test_a_chunked_answer_is_passed_on_whole() -> None:
    def serve(conn: Conn) -> None:
        while conn.read_request() is not None:
            conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for part in (b"hello ", b"chunked ", b"world"):
                conn.send(b"%x\r\n%s\r\n" % (len(part), part))
            conn.send(b"0\r\nX-Trailer: t\r\n\r\n")

    with routed(serve) as (_, url, _backend), httpx.Client() as client:
        for _ in range(3):
            assert client.get(f"{url}/").content == b"hello chunked world"


def test_a_body_past_the_bound_is_413(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("controller.adapters.router.http1.MAX_BODY", 1000)

    def serve(conn: Conn) -> None:
        while conn.read_request() is not None:
            conn.send(answer())

    def chunks() -> Iterator[bytes]:
        yield b"x" * 600
        yield b"x" * 600

    with routed(serve) as (router, url, backend):
        with httpx.Client() as client:
            assert client.post(f"{url}/", content=b"x" * 1000).status_code == 200
            assert client.post(f"{url}/", content=b"x" * 1001).status_code == 413
        with httpx.Client() as client:
            assert client.post(f"{url}/", content=chunks()).status_code == 413
        assert len(backend.requests) == 1
        assert codes(router) == {200: 1}


# -- what clients send ----------------------------------------------------------------------


def test_expect_100_continue_is_answered() -> None:
    def serve(conn: Conn) -> None:
        while conn.read_request() is not None:
            conn.send(answer())

    with routed(serve) as (_, url, backend):
        sock = raw(url)
        sock.settimeout(3)
        for _ in range(2):  # the second on the same connection
            sock.sendall(
                b"POST / HTTP/1.1\r\nHost: m\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"
            )
            assert sock.recv(1000) == b"HTTP/1.1 100 Continue\r\n\r\n"
            sock.sendall(b"body")
            assert sock.recv(1000).startswith(b"HTTP/1.1 200")
        sock.close()
    assert [body for _, body in backend.requests] == [b"body", b"body"]
    assert b"expect" not in backend.requests[0][0].lower()


def test_a_stalled_request_head_gets_408() -> None:
    with routed(keep_alive(5), header_timeout=0.5) as (_, url, backend):
        sock = raw(url)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: m\r\n")
        started = time.monotonic()
        got = read_all(sock)
        sock.close()
        assert got.startswith(b"HTTP/1.1 408")
        assert b"Connection: close" in got
        assert 0.4 < time.monotonic() - started < 3
        assert backend.requests == []
        assert httpx.get(f"{url}/").status_code == 200  # still serving


def test_an_idle_client_connection_is_closed() -> None:
    with routed(keep_alive(5), idle_timeout=0.5) as (_, url, _backend):
        sock = raw(url)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: m\r\n\r\n")
        started = time.monotonic()
        got = read_all(sock)  # the answer, then the close
        sock.close()
        assert got.startswith(b"HTTP/1.1 200")
        assert got.endswith(b"ok")
        assert 0.4 < time.monotonic() - started < 3


def test_a_backend_that_does_not_answer_in_time_is_504() -> None:
    with routed(lambda conn: conn.backend.stop.wait(), response_timeout=0.5) as (router, url, _):
        started = time.monotonic()
        assert httpx.get(f"{url}/", timeout=10).status_code == 504
        assert 0.4 < time.monotonic() - started < 3
    assert codes(router) == {504: 1}


def test_a_client_aborting_mid_body_leaves_the_router_serving() -> None:
    def serve(conn: Conn) -> None:
        while conn.read_request() is not None:
            conn.send(answer())

    with routed(serve) as (router, url, backend):
        for _ in range(5):
            sock = raw(url)
            sock.sendall(b"POST / HTTP/1.1\r\nHost: m\r\nContent-Length: 1000\r\n\r\n" + b"x" * 500)
            sock.close()
        sock = raw(url)  # and one that goes while its request is being answered
        sock.sendall(b"POST / HTTP/1.1\r\nHost: m\r\nContent-Length: 2\r\n\r\n{}")
        sock.close()
        time.sleep(0.3)
        assert httpx.post(f"{url}/", content=b"{}").status_code == 200
        assert len(backend.requests) in (1, 2)  # the one that left may have gone through
        assert codes(router) == {200: len(backend.requests)}
        assert router.in_flight("m") == {backend.address: 0}


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"NOT HTTP AT ALL\r\n\r\n",
        b"GET / HTTP/1.1\r\nContent-Length: nope\r\n\r\n",
        b"GET / HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Header Name: x\r\n\r\n",
    ],
)
def test_a_malformed_request_is_400_and_closed(request_bytes: bytes) -> None:
    with routed(keep_alive(5)) as (router, url, backend):
        sock = raw(url)
        sock.sendall(request_bytes)
        got = read_all(sock)
        sock.close()
        assert got.startswith(b"HTTP/1.1 400")
        assert backend.requests == []
        assert httpx.get(f"{url}/").status_code == 200
        assert codes(router) == {200: 1}


def test_a_request_head_past_the_bound_is_431() -> None:
    with routed(keep_alive(5)) as (router, url, backend):
        sock = raw(url)
        sock.sendall(b"GET / HTTP/1.1\r\nX-Big: " + b"b" * 70_000 + b"\r\n\r\n")
        got = read_all(sock)
        sock.close()
        assert got.startswith(b"HTTP/1.1 431")
        assert backend.requests == []
        assert httpx.get(f"{url}/", headers={"X-Fine": "f" * 60_000}).status_code == 200
        assert codes(router) == {200: 1}


# -- draining -------------------------------------------------------------------------------


def test_in_flight_counts_the_requests_being_forwarded_by_backend() -> None:
    release = threading.Event()

    def serve(conn: Conn) -> None:
        while conn.read_request() is not None:
            release.wait(10)
            conn.send(answer())

    canary = Backend(keep_alive(5))
    with routed(serve) as (router, url, stable), ThreadPoolExecutor(3) as pool:
        router.configure("m", RouteConfig(stable.address, canary.address, 0))
        assert router.in_flight("m") == {stable.address: 0, canary.address: 0}
        answers = [pool.submit(httpx.post, f"{url}/", content=b"{}") for _ in range(3)]
        deadline = time.monotonic() + 5
        while router.in_flight("m")[stable.address] < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert router.in_flight("m") == {stable.address: 3, canary.address: 0}
        router.configure("m", RouteConfig(canary.address, None, 0))  # stable leaves the route
        assert router.in_flight("m") == {stable.address: 3, canary.address: 0}
        release.set()
        assert [a.result().status_code for a in answers] == [200] * 3
        assert router.in_flight("m") == {canary.address: 0}  # drained
    canary.close()


def test_shutdown_answers_the_requests_in_flight_then_stops() -> None:
    release = threading.Event()

    def serve(conn: Conn) -> None:
        while conn.read_request() is not None:
            release.wait(10)
            conn.send(answer(body=b"late"))

    backend = Backend(serve)
    router = EmbeddedRouter(admin_port=None)
    url = router.add_model("m")
    router.configure("m", RouteConfig(backend.address, None, 0))
    try:
        with ThreadPoolExecutor(2) as pool:
            pending = pool.submit(httpx.post, f"{url}/", content=b"{}")
            while router.in_flight("m")[backend.address] == 0:
                time.sleep(0.01)
            stopped = pool.submit(router.shutdown, 10)
            time.sleep(0.2)
            assert not stopped.done()  # waiting on the request in flight
            with pytest.raises(httpx.ConnectError):
                httpx.get(f"{url}/")  # no new connections
            release.set()
            assert pending.result().content == b"late"
            stopped.result(timeout=10)
    finally:
        router.close()
        backend.close()


def test_a_backend_switching_protocols_is_502() -> None:
    def serve(conn: Conn) -> None:
        if conn.read_request() is not None:
            conn.send(
                b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: x\r\n\r\n"
            )
            conn.backend.stop.wait(5)

    with routed(serve) as (router, url, backend):
        answer_ = httpx.get(f"{url}/", headers={"Connection": "Upgrade", "Upgrade": "x"})
        assert answer_.status_code == 502
        assert b"upgrade" not in backend.requests[0][0].lower()  # hop-by-hop: not passed on
    assert codes(router) == {502: 1}


def test_http10_clients() -> None:
    with routed(keep_alive(5)) as (_, url, _backend):
        sock = raw(url)
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        got = read_all(sock)  # answered, then closed
        sock.close()
        assert got.startswith(b"HTTP/1.1 200")
        assert b"Connection: close" in got
        sock = raw(url)
        sock.settimeout(3)
        for _ in range(2):
            sock.sendall(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            got = sock.recv(65536)
            assert got.startswith(b"HTTP/1.1 200")
            assert b"Connection: keep-alive" in got
        sock.close()
