"""The embedded router: one stable HTTP endpoint per model on loopback that
splits traffic between the stable and the canary release.

Owns, per model: a listening port; the split (``weight`` percent of requests
to the canary), which changes at once for the next request while in-flight
requests and kept-alive client connections carry on; sticky assignment by a
header or cookie value's hash (the same user stays on one version); a header
override (``X-MDC-Version: stable|canary``) for smoke tests; mirroring (a
share of requests also copied to the canary, its answers discarded); and
per-backend counters -- requests by status code and a latency histogram --
read by the analysis (:meth:`EmbeddedRouter.snapshot`) and exposed as
Prometheus metrics on an admin port; and opt-in sampling of a share of the
requests and their JSON answers (:meth:`EmbeddedRouter.sample`), with the
model's sensitive keys dropped before a sample is buffered, in a buffer
bounded in count and bytes, drained by the monitor once a pass.

HTTP/1.1 with keep-alive on both sides (pooled backend connections),
``Content-Length`` and chunked request bodies, TCP_NODELAY everywhere. It runs
an asyncio loop in a thread of its own, so callers stay synchronous. A
backend that cannot be reached answers 502 and is counted as such.

Called by the rollout driver and the reconciler; :class:`Router` is the small
protocol a real proxy (HAProxy) implements too.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import random
import socket
import threading
import time
from collections import deque
from collections.abc import Coroutine, Iterator, Mapping
from typing import Any, TypeVar

from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from controller.core.drift import redact
from controller.core.traffic import BUCKETS, BackendStats, RouteConfig, Sample, SamplingConfig

__all__ = [
    "BUCKETS",
    "BackendStats",
    "EmbeddedRouter",
]

OVERRIDE_HEADER = b"x-mdc-version"
MAX_HEAD = 64 * 1024
MAX_BODY = 64 * 1024 * 1024
T = TypeVar("T")
_BACKEND_ERRORS = (
    TimeoutError,
    OSError,
    asyncio.IncompleteReadError,
    asyncio.LimitOverrunError,
    ValueError,
    IndexError,
)
_HOP = {
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"transfer-encoding",
    b"te",
    b"trailer",
    b"upgrade",
    b"content-length",
}


class _Model:
    def __init__(self, name: str) -> None:
        self.name = name
        self.config = RouteConfig()
        self.stats: dict[str, BackendStats] = {"stable": BackendStats(), "canary": BackendStats()}
        self.server: asyncio.base_events.Server | None = None
        self.url = ""
        self.sampling: SamplingConfig | None = None
        self.samples: deque[Sample] = deque(maxlen=SAMPLES_BUFFERED)
        self.sampled_bytes = 0
        self.dropped = 0  # samples not kept: the buffer was full, or not JSON


#: Samples a model's buffer holds between two drains (the oldest go first), and bytes.
SAMPLES_BUFFERED, SAMPLE_BYTES_BUFFERED = 5000, 8 * 2**20


class EmbeddedRouter:
    """The default router (see the module docstring)."""

    def __init__(self, host: str = "127.0.0.1", admin_port: int | None = 0) -> None:
        self.host = host
        self.models: dict[str, _Model] = {}
        self.pools: dict[str, deque[tuple[asyncio.StreamReader, asyncio.StreamWriter]]] = {}
        self.writers: set[asyncio.StreamWriter] = (
            set()
        )  # every open connection, to close at the end
        self.lock = threading.Lock()
        self.rng = random.Random()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="mdc-router", daemon=True)
        self.thread.start()
        self.admin_url = ""
        self._admin: asyncio.base_events.Server | None = None
        if admin_port is not None:
            self._admin = self._call(asyncio.start_server(self._serve_admin, host, admin_port))
            self.admin_url = f"http://{host}:{self._admin.sockets[0].getsockname()[1]}"

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    # -- the Router protocol ------------------------------------------------------

    def add_model(self, model: str, port: int = 0) -> str:
        if model in self.models:
            return self.models[model].url
        state = _Model(model)

        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            with contextlib.suppress(asyncio.CancelledError):  # closing the router
                await self._serve_client(state, r, w)

        state.server = self._call(asyncio.start_server(handler, self.host, port))
        state.url = f"http://{self.host}:{state.server.sockets[0].getsockname()[1]}"
        self.models[model] = state
        return state.url

    def configure(self, model: str, config: RouteConfig) -> None:
        """Takes effect for the very next request; nothing in flight is dropped."""
        if not 0 <= config.weight <= 100 or not 0 <= config.mirror <= 100:
            raise ValueError(f"weight and mirror are percentages: {config}")
        self.models[model].config = config

    def sample(self, model: str, config: SamplingConfig | None) -> None:
        """Start (or, with None, stop) sampling ``model``'s requests and answers."""
        with self.lock:
            state = self.models[model]
            if state.sampling != config:  # samples kept under other rules go
                state.samples.clear()
                state.sampled_bytes = 0
            state.sampling = config

    def samples(self, model: str) -> list[Sample]:
        """The samples kept since the last call (they leave the buffer)."""
        with self.lock:
            state = self.models.get(model)
            if state is None:
                return []
            out = list(state.samples)
            state.samples.clear()
            state.sampled_bytes = 0
            return out

    def snapshot(self, model: str) -> dict[str, BackendStats]:
        with self.lock:
            return {k: v.copy() for k, v in self.models[model].stats.items()}

    def close(self) -> None:
        async def shutdown() -> None:
            for m in self.models.values():
                if m.server is not None:
                    m.server.close()
            if self._admin is not None:
                self._admin.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for writer in list(self.writers):
                writer.close()
            self.writers.clear()
            self.pools.clear()

        if self.loop.is_running():
            self._call(shutdown())
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)
        self.loop.close()

    # -- choosing ---------------------------------------------------------------

    def _choose(self, config: RouteConfig, headers: Mapping[bytes, bytes]) -> str:
        override = headers.get(OVERRIDE_HEADER, b"").decode().strip().lower()
        if override in ("stable", "canary"):
            return override if getattr(config, override) else "stable"
        if config.canary is None or config.weight <= 0:
            return "stable"
        if config.weight >= 100 or config.stable is None:
            return "canary"
        key = _sticky_key(config.sticky, headers) if config.sticky else None
        if key is not None:
            bucket = int.from_bytes(hashlib.blake2b(key, digest_size=4).digest()) % 100
        else:
            bucket = self.rng.randrange(100)
        return "canary" if bucket < config.weight else "stable"

    # -- serving ----------------------------------------------------------------

    async def _serve_client(
        self, model: _Model, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        _nodelay(writer)
        self.writers.add(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                except asyncio.LimitOverrunError:
                    await _answer(writer, 431, b"request head too large")
                    return
                request_line, headers, raw_headers = _parse_head(head)
                try:
                    body = await _read_body(reader, headers)
                except ValueError as exc:
                    await _answer(writer, 400, str(exc).encode())
                    return
                config = model.config
                which = self._choose(config, headers)
                address = getattr(config, which)
                if address is None:
                    await _answer(writer, 503, b"no release is serving this model")
                    continue
                outgoing = _outgoing(request_line, raw_headers, body)
                started = time.perf_counter()
                status, response, answer = await self._forward(address, outgoing)
                elapsed = time.perf_counter() - started
                with self.lock:
                    model.stats[which].observe(status, elapsed)
                writer.write(response)
                await writer.drain()
                sampling = model.sampling  # after the answer: the client does not wait on it
                if sampling is not None and self.rng.random() < sampling.share:
                    self._keep(model, sampling, which, status, elapsed, body, answer)
                if (
                    config.mirror
                    and which == "stable"
                    and config.canary is not None
                    and self.rng.randrange(100) < config.mirror
                ):
                    self.loop.create_task(self._mirror(model, config.canary, outgoing))
                if headers.get(b"connection", b"").lower() == b"close":
                    return
        finally:
            self.writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()

    def _keep(  # noqa: PLR0917
        self,
        model: _Model,
        sampling: SamplingConfig,
        which: str,
        status: int,
        elapsed: float,
        request: bytes,
        answer: bytes,
    ) -> None:
        """Buffer one exchange, redacted; bodies that are not JSON (or are nested past
        what can be walked, or would not fit the buffer) are not kept."""
        if len(request) + len(answer) > SAMPLE_BYTES_BUFFERED:
            model.dropped += 1
            return
        try:
            sample = Sample(
                time.time(),
                which,
                status,
                elapsed,
                redact(json.loads(request or b"null"), sampling.sensitive),
                redact(json.loads(answer or b"null"), sampling.sensitive),
                len(request) + len(answer),
            )
        except (ValueError, RecursionError):
            model.dropped += 1
            return
        with self.lock:
            if model.sampling is not sampling:  # the rules changed meanwhile: not kept
                return
            if model.sampled_bytes + sample.size > SAMPLE_BYTES_BUFFERED:
                model.dropped += 1
                return
            if len(model.samples) == model.samples.maxlen:
                model.sampled_bytes -= model.samples[0].size
                model.dropped += 1
            model.samples.append(sample)
            model.sampled_bytes += sample.size

    async def _mirror(self, model: _Model, address: str, outgoing: bytes) -> None:
        started = time.perf_counter()
        status, _, _ = await self._forward(address, outgoing)
        with self.lock:
            model.stats["canary"].observe(status, time.perf_counter() - started)

    async def _forward(self, address: str, outgoing: bytes) -> tuple[int, bytes, bytes]:
        """The backend's status, the answer to pass on, and the answer's body."""
        pool = self.pools.setdefault(address, deque())
        for attempt in (0, 1):
            fresh = not pool
            try:
                if pool:
                    reader, writer = pool.pop()
                else:
                    host, port = address.rsplit(":", 1)
                    reader, writer = await asyncio.wait_for(
                        asyncio.open_connection(host, int(port)), timeout=5
                    )
                    _nodelay(writer)
                    self.writers.add(writer)
            except _BACKEND_ERRORS:
                return 502, _response(502, b"the release did not answer"), b""
            try:
                writer.write(outgoing)
                await writer.drain()
                head = await reader.readuntil(b"\r\n\r\n")
                status_line, headers, raw_headers = _parse_head(head)
                status = int(status_line.split(b" ", 2)[1])
                body = await _read_body(reader, headers)
            except _BACKEND_ERRORS:
                writer.close()
                self.writers.discard(writer)
                if fresh or attempt == 1:
                    return 502, _response(502, b"the release did not answer"), b""
                continue  # a pooled connection the backend had closed: try a new one
            if headers.get(b"connection", b"").lower() == b"close":
                writer.close()
                self.writers.discard(writer)
            else:
                pool.append((reader, writer))
            return status, _rebuild(status_line, raw_headers, body), body
        return 502, _response(502, b"the release did not answer"), b""  # pragma: no cover

    async def _serve_admin(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            writer.close()
            return
        path = head.split(b" ", 2)[1] if head.count(b" ") >= 2 else b"/"
        if path.startswith(b"/metrics"):
            writer.write(_response(200, self.metrics_text().encode(), b"text/plain; version=0.0.4"))
        else:
            writer.write(_response(404, b"not found"))
        await writer.drain()
        writer.close()

    def metrics_text(self) -> str:
        """Each backend's counters in the Prometheus text format: requests by code
        and the latency histogram (cumulative buckets, the bounds of :data:`BUCKETS`)."""
        requests = CounterMetricFamily(
            "mdc_router_requests_total",
            "Requests the router forwarded, by backend and code.",
            labels=("model", "backend", "code"),
        )
        durations = HistogramMetricFamily(
            "mdc_router_request_duration_seconds",
            "Time to answer, as seen by the router.",
            labels=("model", "backend"),
        )
        les = [*(f"{bound:g}" for bound in BUCKETS), "+Inf"]
        for model in list(self.models):
            for backend, s in self.snapshot(model).items():
                for code, n in sorted(s.codes.items()):
                    requests.add_metric((model, backend, str(code)), n)
                cumulative = itertools.accumulate(s.buckets)
                durations.add_metric(
                    (model, backend), list(zip(les, cumulative, strict=True)), s.seconds
                )
        return generate_latest(_Families((requests, durations))).decode()


class _Families(Collector):
    """The families of one render of the admin port's ``/metrics``."""

    def __init__(self, families: tuple[Metric, ...]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def _nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _sticky_key(sticky: str, headers: Mapping[bytes, bytes]) -> bytes | None:
    if sticky.lower().startswith("cookie:"):
        name = sticky.split(":", 1)[1].strip().encode()
        for part in headers.get(b"cookie", b"").split(b";"):
            key, _, value = part.strip().partition(b"=")
            if key == name and value:
                return value
        return None
    return headers.get(sticky.lower().encode()) or None


def _parse_head(head: bytes) -> tuple[bytes, dict[bytes, bytes], list[tuple[bytes, bytes]]]:
    lines = head[:-4].split(b"\r\n")
    raw: list[tuple[bytes, bytes]] = []
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        raw.append((name.strip(), value.strip()))
    return lines[0], {n.lower(): v for n, v in raw}, raw


async def _read_body(reader: asyncio.StreamReader, headers: Mapping[bytes, bytes]) -> bytes:
    if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
        body = bytearray()
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass  # trailers
                return bytes(body)
            if len(body) + size > MAX_BODY:
                raise ValueError("body too large")
            body += await reader.readexactly(size)
            await reader.readexactly(2)
    length = headers.get(b"content-length")
    if length is None:
        return b""
    size = int(length)
    if size < 0 or size > MAX_BODY:
        raise ValueError("bad content-length")
    return await reader.readexactly(size)


def _outgoing(request_line: bytes, raw_headers: list[tuple[bytes, bytes]], body: bytes) -> bytes:
    kept = [(n, v) for n, v in raw_headers if n.lower() not in _HOP]
    head = b"\r\n".join(
        [
            request_line,
            *(n + b": " + v for n, v in kept),
            b"Content-Length: " + str(len(body)).encode(),
            b"Connection: keep-alive",
        ]
    )
    return head + b"\r\n\r\n" + body


def _rebuild(status_line: bytes, raw_headers: list[tuple[bytes, bytes]], body: bytes) -> bytes:
    kept = [(n, v) for n, v in raw_headers if n.lower() not in _HOP]
    head = b"\r\n".join(
        [
            status_line,
            *(n + b": " + v for n, v in kept),
            b"Content-Length: " + str(len(body)).encode(),
        ]
    )
    return head + b"\r\n\r\n" + body


def _response(status: int, body: bytes, content_type: bytes = b"text/plain") -> bytes:
    reason = {
        200: b"OK",
        400: b"Bad Request",
        404: b"Not Found",
        431: b"Too Large",
        502: b"Bad Gateway",
        503: b"Service Unavailable",
    }.get(status, b"Error")
    return (
        b"HTTP/1.1 "
        + str(status).encode()
        + b" "
        + reason
        + b"\r\nContent-Type: "
        + content_type
        + b"\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


async def _answer(writer: asyncio.StreamWriter, status: int, body: bytes) -> None:
    writer.write(_response(status, body))
    await writer.drain()
