"""A pull request's preview behind the embedded router, against real HTTP backends
on loopback: a share of what the stable answers is sent to the preview too, the
client never waits on it nor sees its answer, each is paired with the stable's
answer (redacted), and neither side's counters the judge reads change; then the
same through the router's control API and its process, and from its table."""

from __future__ import annotations

import contextlib
import http.server
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from controller.adapters.router import control
from controller.adapters.router.control import (
    RouterService,
    config_to_json,
    pair_from_json,
)
from controller.adapters.router.embedded import EmbeddedRouter
from controller.adapters.router.supervised import SupervisedRouter
from controller.core.traffic import Pair, PairingConfig, RouteConfig

pytestmark = pytest.mark.integration

SENSITIVE = frozenset({"user"})


class Backend:
    """A tiny HTTP/1.1 server answering JSON with a sensitive key at two depths
    (or ``raw`` as it is), after ``delay`` seconds; it counts its requests."""

    def __init__(
        self, name: str, status: int = 200, delay: float = 0.0, raw: bytes | None = None
    ) -> None:
        self.name, self.status, self.delay, self.raw = name, status, delay, raw
        self.hits = 0
        self.lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with outer.lock:
                    outer.hits += 1
                time.sleep(outer.delay)
                answer = outer.raw
                if answer is None:
                    document = {"backend": outer.name, "user": "alice", "deep": [{"user": "a"}]}
                    answer = json.dumps(document).encode()
                self.send_response(outer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def closed_address() -> str:
    """An address nothing listens on (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def ask(client: httpx.Client, url: str, i: int, **headers: str) -> httpx.Response:
    body = {"x": i, "user": "bob", "deep": {"list": [{"user": "carol", "y": 2}]}}
    return client.post(f"{url}/score", json=body, headers=headers)


def collect(router: Any, count: int, seconds: float = 5.0) -> list[Pair]:
    """The pairs drained until ``count`` are in (a pair is kept once the preview
    answers, after the client's answer)."""
    pairs: list[Pair] = []
    deadline = time.monotonic() + seconds
    while len(pairs) < count and time.monotonic() < deadline:
        pairs += router.pairs("m")
        time.sleep(0.01)
    return pairs


def settle(backend: Backend, hits: int, seconds: float = 3.0) -> None:
    deadline = time.monotonic() + seconds
    while backend.hits < hits and time.monotonic() < deadline:
        time.sleep(0.01)


@contextlib.contextmanager
def previewed(
    preview: Backend | None = None,
) -> Iterator[tuple[EmbeddedRouter, str, Backend, Backend, Backend]]:
    """An embedded router in front of a stable, a canary (weight 0) and a preview
    that gets every request the stable answers; pairing on."""
    stable, canary = Backend("stable"), Backend("canary")
    preview = preview or Backend("preview")
    router = EmbeddedRouter(admin_port=None)
    url = router.add_model("m")
    router.configure(
        "m",
        RouteConfig(stable.address, canary.address, 0, preview=preview.address, preview_share=100),
    )
    router.pair("m", PairingConfig(SENSITIVE))
    try:
        yield router, url, stable, canary, preview
    finally:
        router.shutdown()
        for backend in (stable, canary, preview):
            backend.close()


def test_every_request_the_stable_answers_is_paired_with_the_preview() -> None:
    with previewed() as (router, url, stable, canary, preview), httpx.Client() as client:
        answers = [ask(client, url, i).json()["backend"] for i in range(20)]
        assert answers == ["stable"] * 20  # the preview's answer never reaches the client
        pairs = collect(router, 20)
        assert sorted(p.request["x"] for p in pairs) == list(range(20))  # each once
        for pair in pairs:
            # sensitive keys gone at any depth, from the request and both answers
            assert pair.request == {"x": pair.request["x"], "deep": {"list": [{"y": 2}]}}
            assert pair.stable_answer == {"backend": "stable", "deep": [{}]}
            assert pair.preview_answer == {"backend": "preview", "deep": [{}]}
            assert (pair.stable_status, pair.preview_status) == (200, 200)
            assert pair.stable_seconds > 0
            assert pair.preview_seconds > 0
            assert pair.size > 0
            for name in ("alice", "bob", "carol", "'user'"):
                assert name not in repr(pair)
        assert router.pairs("m") == []  # drained
        assert preview.hits == 20
        assert canary.hits == 0
        stats = router.snapshot("m")
        assert set(stats) == {"stable", "canary"}  # the preview is no judge's business
        assert stats["stable"].codes == {200: 20}
        assert stats["canary"].codes == {}
        assert router.models["m"].preview_stats.codes == {200: 20}
        assert router.in_flight("m") == {stable.address: 0, canary.address: 0, preview.address: 0}


def test_what_the_canary_answers_is_not_sent_to_the_preview() -> None:
    with previewed() as (router, url, stable, canary, preview), httpx.Client() as client:
        router.configure(
            "m",
            RouteConfig(
                stable.address, canary.address, 50, preview=preview.address, preview_share=100
            ),
        )
        answers = Counter(ask(client, url, i).json()["backend"] for i in range(100))
        forced = Counter(
            ask(client, url, i, **{"x-mdc-version": "canary"}).json()["backend"] for i in range(10)
        )
        assert forced == {"canary": 10}
        on_stable, on_canary = answers["stable"], answers["canary"] + 10
        assert 20 <= on_stable <= 80
        pairs = collect(router, on_stable)
        assert len(pairs) == on_stable
        settle(preview, on_stable + 1, seconds=0.3)  # none more comes
        assert preview.hits == on_stable
        assert all(p.stable_answer == {"backend": "stable", "deep": [{}]} for p in pairs)
        stats = router.snapshot("m")  # what the judge reads: the clients' requests only
        assert stats["stable"].codes == {200: on_stable}
        assert stats["canary"].codes == {200: on_canary}
        assert stable.hits == on_stable
        assert canary.hits == on_canary


def test_a_slow_preview_does_not_slow_the_client() -> None:
    with (
        previewed(Backend("preview", delay=1.0)) as (router, url, _, _, preview),
        httpx.Client() as client,
    ):
        slowest = 0.0
        for i in range(5):
            started = time.perf_counter()
            assert ask(client, url, i).json()["backend"] == "stable"
            slowest = max(slowest, time.perf_counter() - started)
        assert slowest < 0.5
        settle(preview, 5)
        assert router.in_flight("m")[preview.address] > 0  # counted: it can be drained
        pairs = collect(router, 5, seconds=5.0)
        assert len(pairs) == 5
        assert all(p.preview_seconds >= 1.0 > p.stable_seconds for p in pairs)
        assert router.snapshot("m")["stable"].codes == {200: 5}


def test_a_failing_preview_is_paired_and_the_client_served() -> None:
    with (
        previewed(Backend("preview", status=500)) as (router, url, _, _, _),
        httpx.Client() as client,
    ):
        assert [ask(client, url, i).status_code for i in range(5)] == [200] * 5
        pairs = collect(router, 5)
        assert [p.preview_status for p in pairs] == [500] * 5
        assert all(p.preview_answer == {"backend": "preview", "deep": [{}]} for p in pairs)
        assert router.snapshot("m")["stable"].codes == {200: 5}
        assert router.snapshot("m")["stable"].errors == 0


def test_a_preview_that_is_down_pairs_as_502() -> None:
    stable, canary = Backend("stable"), Backend("canary")
    router = EmbeddedRouter(admin_port=None)
    try:
        url = router.add_model("m")
        router.configure(
            "m", RouteConfig(stable.address, preview=closed_address(), preview_share=100)
        )
        router.pair("m", PairingConfig(SENSITIVE))
        with httpx.Client() as client:
            assert [ask(client, url, i).json()["backend"] for i in range(5)] == ["stable"] * 5
        pairs = collect(router, 5)
        assert [(p.stable_status, p.preview_status) for p in pairs] == [(200, 502)] * 5
        assert all(p.preview_answer is None for p in pairs)  # the router's text: not JSON
        assert router.snapshot("m")["stable"].codes == {200: 5}
    finally:
        router.shutdown()
        stable.close()
        canary.close()


def test_bodies_that_are_not_json() -> None:
    """An answer that is not JSON pairs as None; a request that is not JSON is not kept."""
    with (
        previewed(Backend("preview", raw=b"plain words")) as (router, url, _, _, preview),
        httpx.Client() as client,
    ):
        ask(client, url, 1)
        client.post(f"{url}/score", content=b"not json", headers={"content-type": "text/plain"})
        pairs = collect(router, 1)
        deadline = time.monotonic() + 3
        while router.models["m"].pairs.dropped < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        pairs += router.pairs("m")
        assert preview.hits == 2
        assert len(pairs) == 1
        assert pairs[0].request["x"] == 1
        assert pairs[0].preview_answer is None
        assert pairs[0].stable_answer == {"backend": "stable", "deep": [{}]}
        assert router.models["m"].pairs.dropped == 1


def test_no_share_no_preview_no_pairing_no_pairs() -> None:
    with previewed() as (router, url, stable, canary, preview), httpx.Client() as client:
        router.configure(
            "m",
            RouteConfig(stable.address, canary.address, preview=preview.address, preview_share=0),
        )
        ask(client, url, 0)
        router.configure("m", RouteConfig(stable.address, canary.address, preview_share=100))
        ask(client, url, 1)
        settle(preview, 1, seconds=0.3)
        assert preview.hits == 0
        assert router.pairs("m") == []
        # previewed, but not paired: pairing off (its buffer emptied)
        router.configure(
            "m",
            RouteConfig(stable.address, canary.address, preview=preview.address, preview_share=100),
        )
        ask(client, url, 2)
        settle(preview, 1)
        router.pair("m", None)
        ask(client, url, 3)
        state = router.models["m"]
        deadline = time.monotonic() + 3  # counted once the preview answers
        while state.preview_stats.requests < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert state.preview_stats.codes == {200: 2}
        assert router.pairs("m") == []
        with pytest.raises(ValueError, match="percentages"):
            router.configure("m", RouteConfig(stable.address, preview_share=101))


def test_the_pair_buffer_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("controller.adapters.router.embedded.PAIR_BYTES_BUFFERED", 1500)
    with previewed() as (router, url, _, _, _), httpx.Client() as client:
        for i in range(50):
            ask(client, url, i)
        state = router.models["m"]
        deadline = time.monotonic() + 5  # a pair is kept once the preview answers
        while len(state.pairs) + state.pairs.dropped < 50 and time.monotonic() < deadline:
            time.sleep(0.01)
        pairs = router.pairs("m")
        assert sum(p.size for p in pairs) <= 1500
        assert 3 <= len(pairs) < 50
        assert state.pairs.dropped == 50 - len(pairs)


# -- through the control API, its process and its table ---------------------------------


@contextlib.contextmanager
def control_api(directory: Path) -> Iterator[tuple[RouterService, httpx.Client]]:
    """The router process's service and control API, served in this process."""
    service = RouterService(directory)
    handler = type("Handler", (control._Handler,), {"service": service, "token": b"secret"})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with httpx.Client(base_url=base, headers={"Authorization": "Bearer secret"}) as client:
            yield service, client
    finally:
        server.shutdown()
        server.server_close()
        service.close()


def test_previews_over_the_control_api_and_from_the_table(tmp_path: Path) -> None:
    stable, preview = Backend("stable"), Backend("preview")
    directory = tmp_path / "router"
    try:
        config = RouteConfig(stable.address, preview=preview.address, preview_share=100)
        with control_api(directory) as (service, api):
            url = api.put("/routes/m", json={"port": 0}).json()["url"]
            assert api.put("/routes/m/config", json=config_to_json(config)).status_code == 200
            assert api.put("/routes/m/pairing", json={"sensitive": ["user"]}).status_code == 200
            route = api.get("/routes").json()["m"]
            assert route["config"]["preview"] == preview.address
            assert route["config"]["previewShare"] == 100
            assert route["pairing"] == {"sensitive": ["user"]}
            with httpx.Client() as client:
                for i in range(3):
                    assert ask(client, url, i).json()["backend"] == "stable"
            drained: list[Pair] = []
            deadline = time.monotonic() + 5
            while len(drained) < 3 and time.monotonic() < deadline:
                drained += [pair_from_json(p) for p in api.post("/routes/m/pairs").json()]
            assert sorted(p.request["x"] for p in drained) == [0, 1, 2]
            assert all(p.preview_answer == {"backend": "preview", "deep": [{}]} for p in drained)
            assert api.post("/routes/m/pairs").json() == []  # drained
            assert api.put("/routes/nope/pairing", json=None).status_code == 404
            assert service.engine.snapshot("m")["stable"].codes == {200: 3}
        saved = json.loads((directory / "routes.json").read_text())["m"]
        assert saved["pairing"] == {"sensitive": ["user"]}
        assert saved["config"]["preview"] == preview.address

        with control_api(directory) as (service, api):  # a restarted router: as it was
            state = service.engine.models["m"]
            assert state.config == config
            assert state.pairing == PairingConfig(SENSITIVE)
            assert api.get("/routes").json()["m"]["url"] == url
            with httpx.Client() as client:
                ask(client, url, 7)
            (pair,) = collect(service.engine, 1)
            assert pair.request == {"x": 7, "deep": {"list": [{"y": 2}]}}
            assert api.put("/routes/m/pairing", json=None).status_code == 200
            assert api.get("/routes").json()["m"]["pairing"] is None

        # a table an older version wrote: no preview, no pairing
        older = {"m": {"port": 0, "config": {"stable": stable.address, "weight": 0}}}
        (directory / "routes.json").write_text(json.dumps(older))
        with control_api(directory) as (service, api):
            assert service.engine.models["m"].config == RouteConfig(stable.address)
            assert service.engine.models["m"].pairing is None
            assert api.get("/routes").json()["m"]["pairing"] is None
    finally:
        stable.close()
        preview.close()


def test_the_router_process_pairs_for_the_controller(tmp_path: Path) -> None:
    stable, preview = Backend("stable"), Backend("preview")
    router = SupervisedRouter(tmp_path)
    try:
        assert router.pairs("m") == []  # no process yet: nothing to drain
        url = router.add_model("m")
        router.configure(
            "m", RouteConfig(stable.address, preview=preview.address, preview_share=100)
        )
        router.pair("m", PairingConfig(SENSITIVE))
        with httpx.Client() as client:
            assert [ask(client, url, i).json()["backend"] for i in range(4)] == ["stable"] * 4
        pairs = collect(router, 4)
        assert sorted(p.request["x"] for p in pairs) == [0, 1, 2, 3]
        assert all("alice" not in repr(p) for p in pairs)
        assert router.pairs("m") == []
        assert router.snapshot("m")["stable"].codes == {200: 4}
        router.pair("m", None)
        with pytest.raises(ValueError, match="percentages"):
            router.configure("m", RouteConfig(stable.address, preview_share=-1))
    finally:
        router.shutdown()
        stable.close()
        preview.close()
