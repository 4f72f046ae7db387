"""Both routers -- embedded, and a real HAProxy -- against real HTTP backends on
loopback: splits, overrides, live weight changes, failures, counters; and the
embedded router's stickiness, mirroring and metrics."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from controller.adapters.router import make_router
from controller.adapters.router.base import Router
from controller.adapters.router.embedded import EmbeddedRouter
from controller.adapters.router.haproxy import HAProxyRouter
from controller.core.traffic import BUCKETS, BackendStats, RouteConfig, SamplingConfig
from controller.errors import PermanentError

pytestmark = pytest.mark.integration


class Backend:
    """A tiny HTTP/1.1 keep-alive server that says who it is and counts requests."""

    def __init__(self, name: str, status: int = 200) -> None:
        self.name, self.status, self.hits, self.bodies = name, status, 0, []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.hits += 1
                outer.bodies.append(body)
                answer = json.dumps({"backend": outer.name}).encode()
                self.send_response(outer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            do_GET = do_POST

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def require_haproxy() -> None:
    if shutil.which("haproxy") is None:
        if os.environ.get("CI"):
            raise RuntimeError("CI lacks haproxy (Debian package haproxy)")
        pytest.skip("haproxy is not installed (Debian package haproxy)")


def new_router(kind: str, tmp_path: Path) -> Router:
    if kind == "haproxy":
        require_haproxy()
        return make_router("haproxy", state_dir=tmp_path)
    return EmbeddedRouter()  # the engine itself, in this process


def settled(router: Router, backend: str, count: int) -> BackendStats:
    """The counters once ``count`` requests are in (HAProxy's come by UDP log)."""
    deadline = time.monotonic() + 3
    while True:
        stats = router.snapshot("m")[backend]
        if stats.requests >= count or time.monotonic() > deadline:
            return stats
        time.sleep(0.02)


@contextlib.contextmanager
def routed(router: Router) -> Iterator[tuple[Router, str, Backend, Backend]]:
    """``router`` in front of two live backends, the canary at weight 0."""
    stable, canary = Backend("stable"), Backend("canary")
    url = router.add_model("m")
    router.configure("m", RouteConfig(stable.address, canary.address, 0))
    try:
        yield router, url, stable, canary
    finally:
        router.shutdown()
        stable.close()
        canary.close()


@pytest.fixture(params=["embedded", "haproxy"])
def setup(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[Router, str, Backend, Backend]]:
    with routed(new_router(request.param, tmp_path)) as world:
        yield world


def who(client: httpx.Client, url: str, **headers: str) -> str:
    answer = client.post(f"{url}/score", json={"x": 1}, headers=headers)
    assert answer.status_code == 200
    return str(answer.json()["backend"])


@pytest.mark.parametrize(("weight", "low", "high"), [(0, 0, 0), (100, 600, 600), (30, 140, 220)])
def test_weighted_split(setup: tuple, weight: int, low: int, high: int) -> None:
    router, url, _, _ = setup
    router.configure("m", RouteConfig(setup[2].address, setup[3].address, weight))
    with httpx.Client() as client:
        counts = Counter(who(client, url) for _ in range(600))
    assert low <= counts["canary"] <= high
    assert settled(router, "canary", counts["canary"]).requests == counts["canary"]
    assert settled(router, "stable", counts["stable"]).requests == counts["stable"]


@pytest.fixture
def embedded() -> Iterator[tuple[Router, str, Backend, Backend]]:
    with routed(EmbeddedRouter()) as world:
        yield world


def test_sticky_users_stay_on_one_version(embedded: tuple) -> None:
    router, url, stable, canary = embedded
    router.configure("m", RouteConfig(stable.address, canary.address, 50, sticky="x-user"))
    with httpx.Client() as client:
        seen = {
            u: {who(client, url, **{"x-user": f"user-{u}"}) for _ in range(5)} for u in range(60)
        }
    assert all(len(v) == 1 for v in seen.values())
    on_canary = sum(v == {"canary"} for v in seen.values())
    assert 15 <= on_canary <= 45


def test_header_override_and_missing_canary(setup: tuple) -> None:
    router, url, stable, _canary = setup
    with httpx.Client() as client:
        assert who(client, url, **{"x-mdc-version": "canary"}) == "canary"  # weight 0, forced
        router.configure("m", RouteConfig(stable.address, None, 100))
        assert who(client, url) == "stable"  # no canary: everything on stable
        assert who(client, url, **{"x-mdc-version": "canary"}) == "stable"


def test_mirror_copies_to_the_canary_and_answers_from_stable(embedded: tuple) -> None:
    router, url, stable, canary = embedded
    router.configure("m", RouteConfig(stable.address, canary.address, 0, mirror=100))
    with httpx.Client() as client:
        answers = Counter(who(client, url) for _ in range(50))
    assert answers == {"stable": 50}
    for _ in range(100):
        if canary.hits == 50:
            break
        threading.Event().wait(0.02)
    assert canary.hits == 50
    assert canary.bodies[0] == b'{"x":1}'


def test_weight_changes_at_once_on_a_kept_alive_connection(setup: tuple) -> None:
    router, url, stable, canary = setup
    with httpx.Client() as client:
        before = [who(client, url) for _ in range(20)]
        router.configure("m", RouteConfig(stable.address, canary.address, 100))
        after = [who(client, url) for _ in range(20)]
        router.configure("m", RouteConfig(stable.address, canary.address, 0))
        back = [who(client, url) for _ in range(20)]
    assert set(before) == {"stable"}
    assert set(after) == {"canary"}
    assert set(back) == {"stable"}
    assert stable.server.socket is not None  # one client connection carried all of it


def test_unreachable_backend_is_502_and_counted(setup: tuple) -> None:
    router, url, stable, _ = setup
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    router.configure("m", RouteConfig(stable.address, dead, 100))
    with httpx.Client() as client:
        code = client.post(f"{url}/score", json={}).status_code
    assert code in (502, 503)  # the embedded router says 502, HAProxy 503
    assert settled(router, "canary", 1).errors == 1


def test_chunked_body_and_metrics(embedded: tuple) -> None:
    router, url, stable, _canary = embedded

    def chunks() -> Iterator[bytes]:
        yield b'{"big": "'
        yield b"x" * 100_000
        yield b'"}'

    with httpx.Client() as client:
        answer = client.post(f"{url}/score", content=chunks())
        assert answer.status_code == 200
    assert len(stable.bodies[-1]) == 100_011
    text = httpx.get(f"{router.admin_url}/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["mdc_router_requests"].type == "counter"
    requests = [(s.name, s.labels, s.value) for s in families["mdc_router_requests"].samples]
    assert requests == [
        ("mdc_router_requests_total", {"model": "m", "backend": "stable", "code": "200"}, 1)
    ]
    durations = families["mdc_router_request_duration_seconds"]
    assert durations.type == "histogram"
    stable_samples = [s for s in durations.samples if s.labels.get("backend") == "stable"]
    buckets = [(s.labels["le"], s.value) for s in stable_samples if s.name.endswith("_bucket")]
    assert [le for le, _ in buckets] == [*(f"{b:g}" for b in BUCKETS), "+Inf"]
    counts = [value for _, value in buckets]
    assert counts == sorted(counts)  # cumulative
    (count,) = [s.value for s in stable_samples if s.name.endswith("_count")]
    assert counts[-1] == count == 1


def test_haproxy_refuses_what_it_cannot_do(tmp_path: Path) -> None:
    router = new_router("haproxy", tmp_path)
    try:
        router.add_model("m")
        for config in (
            RouteConfig("127.0.0.1:1", "127.0.0.1:2", 10, mirror=10),
            RouteConfig("127.0.0.1:1", "127.0.0.1:2", 10, sticky="x-user"),
            RouteConfig("127.0.0.1:1", None, 0, stable_more=("127.0.0.1:3",)),  # replicas
        ):
            with pytest.raises(PermanentError) as caught:
                router.configure("m", config)
            assert caught.value.reason == "RouterFeatureUnsupported"
    finally:
        router.shutdown()


def test_replicas_share_the_requests_and_a_dead_one_fails_none(embedded: tuple) -> None:
    """A side of two replicas: requests go to each in turn; once one is gone (its
    port closed), every request is answered by the other -- none fails."""
    router, url, stable, _ = embedded
    other = Backend("stable-2")
    try:
        router.configure("m", RouteConfig.of((stable.address, other.address)))
        with httpx.Client(timeout=10) as client:
            answers = Counter(who(client, url) for _ in range(40))
            assert answers == {"stable": 20, "stable-2": 20}
            other.close()  # killed: its port refuses
            answers = Counter(
                client.post(f"{url}/score", json={"x": 1}).status_code for _ in range(40)
            )
        assert answers == {200: 40}
        assert set(router.in_flight("m")) >= {stable.address, other.address}
    finally:
        with contextlib.suppress(OSError):
            other.close()


def test_unknown_router_kind_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown router 'nginx-magic'"):
        make_router("nginx-magic")


def test_sampling_keeps_a_share_without_sensitive_keys(embedded: tuple) -> None:
    router, url, stable, canary = embedded
    router.configure("m", RouteConfig(stable.address, canary.address, 50))
    router.sample("m", SamplingConfig(0.5, frozenset({"user", "backend"})))
    with httpx.Client() as client:
        for i in range(400):
            client.post(f"{url}/score", json={"x": i, "user": "alice", "nested": [{"user": "b"}]})
        client.post(f"{url}/score", content=b"not json", headers={"content-type": "text/plain"})
    samples = router.samples("m")
    assert 140 <= len(samples) <= 260  # about half of 400
    assert {s.backend for s in samples} == {"stable", "canary"}
    for sample in samples:
        assert sample.request == {"x": sample.request["x"], "nested": [{}]}
        assert sample.response == {}  # the answer's only key was marked sensitive
        assert sample.status == 200
        assert sample.seconds > 0
        assert "alice" not in repr(sample)
    assert router.samples("m") == []  # drained
    router.sample("m", None)
    with httpx.Client() as client:
        client.post(f"{url}/score", json={"x": 1})
    assert router.samples("m") == []  # off


def test_the_sample_buffer_is_bounded(embedded: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    router, url, stable, canary = embedded
    router.configure("m", RouteConfig(stable.address, canary.address, 0))
    monkeypatch.setattr("controller.adapters.router.embedded.SAMPLE_BYTES_BUFFERED", 1000)
    router.sample("m", SamplingConfig(1.0))
    with httpx.Client() as client:
        for i in range(100):
            client.post(f"{url}/score", json={"x": i, "pad": "p" * 40})
    state = router.models["m"]
    deadline = time.monotonic() + 5  # a sample is kept just after its answer is sent
    while len(state.samples) + state.samples.dropped < 100 and time.monotonic() < deadline:
        time.sleep(0.01)
    samples = router.samples("m")
    assert sum(s.size for s in samples) <= 1000
    assert 10 <= len(samples) < 100
    assert router.models["m"].samples.dropped == 100 - len(samples)


def test_haproxy_cannot_sample(tmp_path: Path) -> None:
    router = new_router("haproxy", tmp_path)
    try:
        router.add_model("m")
        router.sample("m", None)  # nothing asked: fine
        with pytest.raises(PermanentError) as caught:
            router.sample("m", SamplingConfig(0.1))
        assert caught.value.reason == "SamplingUnsupported"
        assert router.samples("m") == []
    finally:
        router.shutdown()


def test_a_restarted_controller_adopts_the_running_haproxy(tmp_path: Path) -> None:
    """The data plane outlives the controller with HAProxy too: the next controller
    adopts the running master (no second HAProxy), keeps the port and the split,
    counts the requests again, and only shutdown() stops it."""
    require_haproxy()
    stable, canary = Backend("stable"), Backend("canary")
    first = HAProxyRouter(tmp_path)
    second: HAProxyRouter | None = None
    try:
        url = first.add_model("m")
        first.configure("m", RouteConfig(stable.address, canary.address, 100))
        master = first.pid
        first.close()  # the controller stops: HAProxy keeps serving
        assert master is not None
        assert _running(master)
        assert httpx.post(url, timeout=5).json() == {"backend": "canary"}
        second = HAProxyRouter(tmp_path)
        assert second.adopted
        assert second.pid == master
        assert second.add_model("m") == url  # the same port
        answers = Counter(httpx.post(url, timeout=5).json()["backend"] for _ in range(20))
        assert answers == {"canary": 20}  # the split survived the reload
        deadline = time.monotonic() + 5
        # counted by this controller's log listener (a request or two may still go
        # to the worker the reload replaced, which logs to the first one's)
        while sum(second.snapshot("m")["canary"].codes.values()) < 15:
            assert time.monotonic() < deadline, second.snapshot("m")
            time.sleep(0.05)
        second.shutdown()
        assert not _running(master)
        with pytest.raises(httpx.TransportError):
            httpx.post(url, timeout=2)
    finally:
        if second is not None:
            second.shutdown()
        first.shutdown()
        stable.close()
        canary.close()


def test_mdc_down_stops_the_haproxy_a_controller_left(tmp_path: Path) -> None:
    require_haproxy()
    state = tmp_path / "state"
    left = HAProxyRouter(state)
    left.add_model("m")
    master = left.pid
    left.close()  # as `mdc run --router haproxy` does when it stops
    assert master is not None
    assert _running(master)
    done = subprocess.run(
        [sys.executable, "-m", "controller", "down", "--state-dir", str(state)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert f"stopped HAProxy (pid {master})" in done.stdout
    assert not _running(master)


def _running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its reaper does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
