"""The embedded router: one stable HTTP endpoint per model on loopback that
splits traffic between the stable and the canary release.

Owns, per model: a listening port; the split (``weight`` percent of requests
to the canary), which changes at once for the next request while in-flight
requests and kept-alive client connections carry on; sticky assignment by a
header or cookie value's hash (the same user stays on one version); a header
override (``X-MDC-Version: stable|canary``) for smoke tests; mirroring (a
share of requests also copied to the canary, its answers discarded); previews
(a share of the requests the stable answers also sent, once the stable's answer
is ready, to a pull request's preview release, whose answer never reaches the
client -- the client never waits on it); and per-backend counters -- requests
by status code and a latency histogram -- read by the analysis
(:meth:`EmbeddedRouter.snapshot`) and exposed as Prometheus metrics on an admin
port (a preview's requests are counted apart, never in the stable's or the
canary's counters the judge reads); the requests in flight to each backend,
previews included (:meth:`EmbeddedRouter.in_flight`, to drain a release before
stopping it); opt-in sampling of a share of the requests and their JSON answers
(:meth:`EmbeddedRouter.sample`), with the model's sensitive keys dropped before
a sample is buffered, in a buffer bounded in count and bytes, drained by the
monitor once a pass; and, the same way, opt-in pairing of each previewed
request with the stable's and the preview's answers (:meth:`EmbeddedRouter.pair`,
drained by :meth:`EmbeddedRouter.pairs`).

The HTTP/1.1 itself is :mod:`controller.adapters.router.http1` (the clients'
side: parsing, keep-alive, timeouts, 400/408/413/431) and
:mod:`controller.adapters.router.upstream` (the backends': pooled connections
and their safe reuse, 502/504). It runs an asyncio loop in a thread of
its own, so callers stay synchronous.

Called by the rollout driver and the reconciler (through the router process,
:mod:`controller.adapters.router.control`), and the benches; :class:`Router`
is the small protocol a real proxy (HAProxy) implements too.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import random
import threading
import time
from collections import deque
from collections.abc import Coroutine, Iterator, Mapping
from typing import Any, Generic, Protocol, TypeVar

from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from controller.adapters.router.http1 import (
    MAX_BODY,
    ClientConnection,
    Handler,
    Request,
    Response,
    Timeouts,
    Watch,
    plain,
)
from controller.adapters.router.upstream import UNREACHABLE, Upstreams
from controller.core.drift import redact
from controller.core.traffic import (
    BUCKETS,
    BackendStats,
    Pair,
    PairingConfig,
    RouteConfig,
    Sample,
    SamplingConfig,
)

__all__ = [
    "BUCKETS",
    "MAX_BODY",
    "BackendStats",
    "EmbeddedRouter",
]

OVERRIDE_HEADER = b"x-mdc-version"
T = TypeVar("T")


class _Model:
    def __init__(self, name: str) -> None:
        self.name = name
        self.config = RouteConfig()
        self.stats: dict[str, BackendStats] = {"stable": BackendStats(), "canary": BackendStats()}
        self.in_flight: dict[str, int] = {}  # by backend address, every one ever used
        #: by backend address: each request in flight's token -> when it was sent
        self.sent: dict[str, dict[int, float]] = {}
        self.server: asyncio.base_events.Server | None = None
        self.url = ""
        self.sampling: SamplingConfig | None = None
        self.samples: _Buffer[Sample] = _Buffer(SAMPLES_BUFFERED)  # dropped: or not JSON
        #: the preview's answers: apart from ``stats`` (the judge's), never in a snapshot
        self.preview_stats = BackendStats()
        self.pairing: PairingConfig | None = None
        self.pairs: _Buffer[Pair] = _Buffer(PAIRS_BUFFERED)  # dropped: or a request not JSON
        self.turns: dict[str, int] = {}  # side -> requests handed out (replicas in turn)


class _Sized(Protocol):
    @property
    def size(self) -> int: ...


S = TypeVar("S", bound=_Sized)


class _Buffer(Generic[S]):
    """What a model keeps between two drains (samples, or a preview's pairs): at
    most ``count`` items and ``limit`` bytes, the oldest going first; ``dropped``
    counts what was not kept. Used under the router's lock."""

    def __init__(self, count: int) -> None:
        self.items: deque[S] = deque(maxlen=count)
        self.bytes = 0
        self.dropped = 0

    def __len__(self) -> int:
        return len(self.items)

    def keep(self, item: S, limit: int) -> None:
        if self.bytes + item.size > limit:
            self.dropped += 1
            return
        if len(self.items) == self.items.maxlen:
            self.bytes -= self.items[0].size
            self.dropped += 1
        self.items.append(item)
        self.bytes += item.size

    def drain(self) -> list[S]:
        out = list(self.items)
        self.items.clear()
        self.bytes = 0
        return out


#: Samples a model's buffer holds between two drains (the oldest go first), and bytes.
SAMPLES_BUFFERED, SAMPLE_BYTES_BUFFERED = 5000, 8 * 2**20
#: Pairs a model's buffer holds between two drains (the oldest go first), and bytes.
PAIRS_BUFFERED, PAIR_BYTES_BUFFERED = 5000, 8 * 2**20


class EmbeddedRouter:
    """The default router (see the module docstring). ``header_timeout``: seconds
    a client has to send a request's head once it began (then 408);
    ``idle_timeout``: a kept-alive client connection with no request is closed
    after it; ``response_timeout``: a backend's whole answer (then 504)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        admin_port: int | None = 0,
        *,
        header_timeout: float = 10.0,
        idle_timeout: float = 60.0,
        response_timeout: float = 300.0,
    ) -> None:
        self.host = host
        self.models: dict[str, _Model] = {}
        self.timeouts = Timeouts(header_timeout, idle_timeout, response_timeout)
        self.watch = Watch()  # every open connection, client or backend, and its deadline
        self.upstreams = Upstreams(self.timeouts, self.watch)
        self.tasks: set[asyncio.Task[None]] = set()  # mirrored and previewed requests under way
        self.lock = threading.Lock()
        self._tokens = itertools.count()  # one per forwarded request (see ``waiting``)
        self.rng = random.Random()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="mdc-router", daemon=True)
        self.thread.start()
        self.admin_url = ""
        self._admin: asyncio.base_events.Server | None = None
        if admin_port is not None:
            self._admin = self._call(self._listen(self._serve_admin, admin_port))
            self.admin_url = f"http://{host}:{self._admin.sockets[0].getsockname()[1]}"

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    async def _listen(self, handle: Handler, port: int) -> asyncio.base_events.Server:
        return await self.loop.create_server(
            lambda: ClientConnection(handle, self.timeouts, self.watch), self.host, port
        )

    # -- the Router protocol ------------------------------------------------------

    def add_model(self, model: str, port: int = 0) -> str:
        if model in self.models:
            return self.models[model].url
        state = _Model(model)

        async def handle(request: Request) -> Response:
            return await self._handle(state, request)

        state.server = self._call(self._listen(handle, port))
        state.url = f"http://{self.host}:{state.server.sockets[0].getsockname()[1]}"
        self.models[model] = state
        return state.url

    def configure(self, model: str, config: RouteConfig) -> None:
        """Takes effect for the very next request; nothing in flight is dropped."""
        if not all(0 <= p <= 100 for p in (config.weight, config.mirror, config.preview_share)):
            raise ValueError(f"weight, mirror and preview_share are percentages: {config}")
        self.models[model].config = config

    def sample(self, model: str, config: SamplingConfig | None) -> None:
        """Start (or, with None, stop) sampling ``model``'s requests and answers."""
        with self.lock:
            state = self.models[model]
            if state.sampling != config:  # samples kept under other rules go
                state.samples.drain()
            state.sampling = config

    def samples(self, model: str) -> list[Sample]:
        """The samples kept since the last call (they leave the buffer)."""
        with self.lock:
            state = self.models.get(model)
            return [] if state is None else state.samples.drain()

    def pair(self, model: str, config: PairingConfig | None) -> None:
        """Start (or, with None, stop) pairing the answers of ``model``'s preview
        with the stable's; pairs kept under other rules go."""
        with self.lock:
            state = self.models[model]
            if state.pairing != config:
                state.pairs.drain()
                state.pairing = config

    def pairs(self, model: str) -> list[Pair]:
        """The pairs kept since the last call (they leave the buffer)."""
        with self.lock:
            state = self.models.get(model)
            return [] if state is None else state.pairs.drain()

    def snapshot(self, model: str) -> dict[str, BackendStats]:
        """The stable's and the canary's counters (a preview's are not among them)."""
        with self.lock:
            return {k: v.copy() for k, v in self.models[model].stats.items()}

    def in_flight(self, model: str) -> dict[str, int]:
        """The requests (mirrored and previewed ones included) being forwarded now
        to each of ``model``'s backends, by address (``"127.0.0.1:PORT"``); the
        route's current backends (its preview too) are always named. A release
        whose count is 0 and that the route no longer names is drained."""
        state = self.models[model]
        counts = {a: n for a, n in state.in_flight.copy().items() if n}
        config = state.config
        preview = (config.preview,) if config.preview is not None else ()
        for address in (*config.backends("stable"), *config.backends("canary"), *preview):
            counts.setdefault(address, 0)
        return counts

    def waiting(self, model: str) -> dict[str, float]:
        """How long the oldest request in flight on each of ``model``'s backends has
        waited (seconds), by address; backends with none are left out."""
        now = time.monotonic()
        out = {}
        for address, sent in self.models[model].sent.copy().items():
            started = list(sent.values())  # one C call: safe beside the loop's writes
            if started:
                out[address] = now - min(started)
        return out

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop taking connections, let the requests in flight be answered (at
        most ``timeout`` seconds), then close."""

        async def stop_listening() -> None:
            for m in self.models.values():
                if m.server is not None:
                    m.server.close()

        if self.loop.is_running():
            self._call(stop_listening())
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and any(
                sum(self.in_flight(m).values()) for m in list(self.models)
            ):
                time.sleep(0.02)
        self.close()

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
            self.watch.close()
            self.upstreams.close()
            for _ in range(3):  # the transports' sockets close on the next turns
                await asyncio.sleep(0)

        if self.loop.is_running():
            self._call(shutdown())
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)
        if not self.loop.is_closed():
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

    async def _handle(self, model: _Model, request: Request) -> Response:
        config = model.config
        which = self._choose(config, request.fields)
        addresses = config.backends(which)
        if not addresses:
            return plain(503, b"no release is serving this model")
        outgoing = request.encode()
        started = time.perf_counter()
        response = await self._forward_any(model, which, addresses, outgoing, request.method)
        elapsed = time.perf_counter() - started
        with self.lock:
            model.stats[which].observe(response.status, elapsed)
        sampling = model.sampling  # after the answer: the client does not wait on it
        if sampling is not None and self.rng.random() < sampling.share:
            self.loop.call_soon(
                self._keep,
                model,
                sampling,
                which,
                response.status,
                elapsed,
                request.body,
                response.body,
            )
        if (
            config.mirror
            and which == "stable"
            and config.canary is not None
            and self.rng.randrange(100) < config.mirror
        ):
            self._detach(self._mirror(model, config.canary, outgoing, request.method))
        if (
            config.preview_share
            and which == "stable"
            and config.preview is not None
            and self.rng.randrange(100) < config.preview_share
        ):
            self._detach(self._preview(model, config.preview, request, outgoing, response, elapsed))
        return response

    def _detach(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` beside the answer (kept in ``tasks`` until it is done)."""
        task = self.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _forward_any(
        self, model: _Model, which: str, addresses: tuple[str, ...], outgoing: bytes, method: bytes
    ) -> Response:
        """To one of a side's replicas, in turn; a replica that cannot be reached
        (nothing was sent: safe for any request) hands the request to the next."""
        if len(addresses) == 1:
            return await self._forward(model, addresses[0], outgoing, method)
        turn = model.turns.get(which, 0)
        model.turns[which] = turn + 1
        response = plain(502, UNREACHABLE)
        for i in range(len(addresses)):
            address = addresses[(turn + i) % len(addresses)]
            response = await self._forward(model, address, outgoing, method)
            if not (response.status == 502 and response.body == UNREACHABLE):
                return response
        return response

    async def _forward(
        self, model: _Model, address: str, outgoing: bytes, method: bytes
    ) -> Response:
        # only this loop writes the counts, and no key ever goes: another thread's
        # copy (:meth:`in_flight`) needs no lock
        counts = model.in_flight
        counts[address] = counts.get(address, 0) + 1
        token = next(self._tokens)
        sent = model.sent.setdefault(address, {})
        sent[token] = time.monotonic()
        try:
            return await self.upstreams.send(address, outgoing, method)
        finally:
            counts[address] -= 1
            del sent[token]

    async def _mirror(self, model: _Model, address: str, outgoing: bytes, method: bytes) -> None:
        started = time.perf_counter()
        response = await self._forward(model, address, outgoing, method)
        with self.lock:
            model.stats["canary"].observe(response.status, time.perf_counter() - started)

    async def _preview(  # noqa: PLR0917
        self,
        model: _Model,
        address: str,
        request: Request,
        outgoing: bytes,
        stable: Response,
        stable_seconds: float,
    ) -> None:
        """The preview's copy of a request the stable answered: counted apart from
        the stable and the canary, its answer paired with the stable's if pairing
        is on (an unreachable preview pairs as the router's 502)."""
        started = time.perf_counter()
        response = await self._forward(model, address, outgoing, request.method)
        seconds = time.perf_counter() - started
        with self.lock:
            model.preview_stats.observe(response.status, seconds)
            pairing = model.pairing
        if pairing is not None:
            self._pair(model, pairing, request.body, stable, stable_seconds, response, seconds)

    def _pair(  # noqa: PLR0917
        self,
        model: _Model,
        pairing: PairingConfig,
        request: bytes,
        stable: Response,
        stable_seconds: float,
        preview: Response,
        preview_seconds: float,
    ) -> None:
        """Buffer one pair, redacted; an answer that is not JSON pairs as None, a
        request that is not JSON (or a pair that would not fit the buffer) is not
        kept."""
        size = len(request) + len(stable.body) + len(preview.body)
        if size > PAIR_BYTES_BUFFERED:
            model.pairs.dropped += 1
            return
        try:
            asked = redact(json.loads(request or b"null"), pairing.sensitive)
        except (ValueError, RecursionError):
            model.pairs.dropped += 1
            return
        pair = Pair(
            time.time(),
            asked,
            stable.status,
            stable_seconds,
            _answer(stable.body, pairing.sensitive),
            preview.status,
            preview_seconds,
            _answer(preview.body, pairing.sensitive),
            size,
        )
        with self.lock:
            if model.pairing is pairing:  # else the rules changed meanwhile: not kept
                model.pairs.keep(pair, PAIR_BYTES_BUFFERED)

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
            model.samples.dropped += 1
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
            model.samples.dropped += 1
            return
        with self.lock:
            if model.sampling is sampling:  # else the rules changed meanwhile: not kept
                model.samples.keep(sample, SAMPLE_BYTES_BUFFERED)

    async def _serve_admin(self, request: Request) -> Response:
        if request.target.startswith(b"/metrics"):
            return plain(200, self.metrics_text().encode(), b"text/plain; version=0.0.4")
        return plain(404, b"not found")

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


def _answer(body: bytes, sensitive: frozenset[str]) -> Any:
    """An answer's body decoded and redacted; None if it is not JSON."""
    try:
        return redact(json.loads(body), sensitive) if body else None
    except (ValueError, RecursionError):
        return None


def _sticky_key(sticky: str, headers: Mapping[bytes, bytes]) -> bytes | None:
    if sticky.lower().startswith("cookie:"):
        name = sticky.split(":", 1)[1].strip().encode()
        for part in headers.get(b"cookie", b"").split(b";"):
            key, _, value = part.strip().partition(b"=")
            if key == name and value:
                return value
        return None
    return headers.get(sticky.lower().encode()) or None
