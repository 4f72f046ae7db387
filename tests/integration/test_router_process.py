"""The embedded router in its own supervised process (controller.adapters.router.
supervised and .control), tested for real: a real router process, real backends on
loopback, a controller-like client that dies with SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from controller.adapters.router import make_router
from controller.adapters.router.embedded import EmbeddedRouter
from controller.adapters.router.supervised import SupervisedRouter
from controller.app.rollout import drain
from controller.core.traffic import RouteConfig

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


class _Named(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    name = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.name)))
        self.end_headers()
        self.wfile.write(self.name)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def backends() -> Iterator[dict[str, str]]:
    servers = {}
    for name in ("blue", "green"):
        handler = type(name, (_Named,), {"name": name.encode()})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers[name] = server
    yield {name: f"127.0.0.1:{s.server_address[1]}" for name, s in servers.items()}
    for server in servers.values():
        server.shutdown()
        server.server_close()


@pytest.fixture
def router(tmp_path: Path) -> Iterator[SupervisedRouter]:
    started = SupervisedRouter(tmp_path)
    yield started
    started.close()
    SupervisedRouter(tmp_path).shutdown()  # whichever process serves now


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_the_factory_starts_the_router_in_a_process_of_its_own(tmp_path: Path) -> None:
    router = make_router("embedded", state_dir=tmp_path)
    try:
        assert isinstance(router, SupervisedRouter)
        assert router.pid == 0
        assert router.routes() == {}
        router.add_model("m")
        assert router.pid != os.getpid()
        assert _alive(router.pid)
        assert os.getsid(router.pid) != os.getsid(0)  # a Ctrl-C here does not reach it
    finally:
        router.shutdown()
    assert not _alive(router.pid)
    assert not (tmp_path / "router" / "router.json").exists()


def test_routes_split_and_count_through_the_process(
    router: SupervisedRouter, backends: dict[str, str]
) -> None:
    url = router.add_model("m")
    assert router.add_model("m") == url  # idempotent
    router.configure("m", RouteConfig(backends["blue"], backends["green"], 100))
    assert httpx.get(url).text == "green"
    router.configure("m", RouteConfig(backends["blue"], None, 0))
    answers = {httpx.get(url).text for _ in range(5)}
    assert answers == {"blue"}
    stats = router.snapshot("m")
    assert stats["canary"].codes == {200: 1}
    assert stats["stable"].codes == {200: 5}
    assert router.routes() == {"m": url}
    assert 'mdc_router_requests_total{backend="stable",code="200",model="m"} 5.0' in (
        router.metrics_text()
    )
    assert router.in_flight("m") == {backends["blue"]: 0}


def test_a_second_controller_adopts_the_running_router(
    router: SupervisedRouter, backends: dict[str, str], tmp_path: Path
) -> None:
    url = router.add_model("m")
    router.configure("m", RouteConfig(backends["blue"], None, 0))
    router.close()  # the first controller lets go
    assert httpx.get(url).text == "blue"  # and traffic flows without it
    again = SupervisedRouter(tmp_path)
    try:
        assert again.adopted
        assert again.pid == router.pid
        assert again.add_model("m") == url
    finally:
        again.close()


def test_the_router_outlives_a_controller_killed_with_sigkill(
    tmp_path: Path, backends: dict[str, str]
) -> None:
    """A controller (a child process here) opens a route and dies with SIGKILL while
    requests flow: none fails, and the next controller adopts the same router."""
    script = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from controller.adapters.router.supervised import SupervisedRouter
        from controller.core.traffic import RouteConfig
        router = SupervisedRouter(Path({str(tmp_path)!r}))
        url = router.add_model("m")
        router.configure("m", RouteConfig({backends["blue"]!r}, None, 0))
        print(url, router.pid, flush=True)
        time.sleep(60)
        """
    )
    controller = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    assert controller.stdout is not None
    url, pid = controller.stdout.readline().split()
    controller.stdout.close()
    failed, served = 0, 0
    with httpx.Client() as client:
        for i in range(60):
            if i == 20:
                controller.send_signal(signal.SIGKILL)
                controller.wait()
            try:
                failed += client.get(url).text != "blue"
            except httpx.HTTPError:
                failed += 1
            served += 1
            time.sleep(0.01)
    assert (failed, served) == (0, 60)
    adopted = SupervisedRouter(tmp_path)
    try:
        assert adopted.adopted
        assert adopted.pid == int(pid)
    finally:
        adopted.shutdown()


def test_a_dead_router_is_started_again_with_its_routes_on_the_same_ports(
    router: SupervisedRouter, backends: dict[str, str]
) -> None:
    url = router.add_model("m")
    router.configure("m", RouteConfig(backends["blue"], backends["green"], 100))
    first = router.pid
    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while _alive(first) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert router.snapshot("m")["canary"].codes == {}  # the call that found it gone
    assert router.pid != first
    assert router.restarts == 1
    assert httpx.get(url).text == "green"  # same port, same split


def test_the_control_api_needs_the_token(router: SupervisedRouter) -> None:
    router.add_model("m")
    assert httpx.get(f"{router.control}/healthz").status_code == 200
    assert httpx.get(f"{router.control}/routes").status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    answer = httpx.put(f"{router.control}/routes/m/config", headers=wrong, json={})
    assert answer.status_code == 401
    token = (router.dir / "token").stat()
    assert token.st_mode & 0o077 == 0  # only the controller's user reads it


def test_a_bad_config_is_refused_not_applied(
    router: SupervisedRouter, backends: dict[str, str]
) -> None:
    url = router.add_model("m")
    router.configure("m", RouteConfig(backends["blue"], None, 0))
    with pytest.raises(ValueError, match="percentages"):
        router.configure("m", RouteConfig(backends["blue"], backends["green"], 300))
    headers = router._headers()
    answer = httpx.put(f"{router.control}/routes/m/config", headers=headers, content=b"{not json")
    assert answer.status_code == 400
    assert httpx.get(url).text == "blue"
    table = json.loads((router.dir / "routes.json").read_text())
    assert table["m"]["config"]["stable"] == backends["blue"]


def test_calls_on_one_kept_alive_connection_do_not_bleed_into_each_other(
    router: SupervisedRouter, backends: dict[str, str]
) -> None:
    """A body the call does not use (draining samples) is read all the same."""
    router.add_model("m")
    router.configure("m", RouteConfig(backends["blue"], None, 0))
    for _ in range(3):
        assert router.samples("m") == []
        assert router.snapshot("m")["stable"].codes == {}


class _Slow(_Named):
    name = b"slow"

    def do_GET(self) -> None:
        time.sleep(float(self.path.rsplit("/", 1)[-1] or 0))
        super().do_GET()


@pytest.mark.parametrize("kind", ["in-process", "own process"])
def test_drain_waits_for_what_the_old_backend_still_answers(
    kind: str, backends: dict[str, str], tmp_path: Path
) -> None:
    """The rollout stops a release that lost its traffic only once the router has
    answered every request it sent there (drain), so none fails at a promotion."""
    slow = ThreadingHTTPServer(("127.0.0.1", 0), _Slow)
    slow.daemon_threads = True
    threading.Thread(target=slow.serve_forever, daemon=True).start()
    old = f"127.0.0.1:{slow.server_address[1]}"
    router: EmbeddedRouter | SupervisedRouter = (
        EmbeddedRouter() if kind == "in-process" else SupervisedRouter(tmp_path)
    )
    answers: list[str] = []
    try:
        url = router.add_model("m")
        router.configure("m", RouteConfig(old, None, 0))
        asked = threading.Thread(target=lambda: answers.append(httpx.get(f"{url}/1.0").text))
        asked.start()
        deadline = time.monotonic() + 5
        while router.in_flight("m").get(old, 0) == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert router.in_flight("m")[old] == 1
        router.configure("m", RouteConfig(backends["blue"], None, 0))  # "promoted"
        assert httpx.get(url).text == "blue"
        started = time.monotonic()
        assert drain(router, "m", old, timeout=5) == 0
        assert time.monotonic() - started > 0.3  # it did wait
        asked.join(5)
        assert answers == ["slow"]  # the request in flight was answered
        router.configure("m", RouteConfig(old, None, 0))
        threading.Thread(target=lambda: httpx.get(f"{url}/2.0"), daemon=True).start()
        deadline = time.monotonic() + 5
        while router.in_flight("m").get(old, 0) == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        router.configure("m", RouteConfig(backends["blue"], None, 0))
        assert drain(router, "m", old, timeout=0.2) == 1  # gave up: one still in flight
    finally:
        router.shutdown()
        slow.shutdown()
        slow.server_close()


@pytest.mark.parametrize("kind", ["in-process", "process"])
def test_the_router_tells_how_long_the_oldest_request_has_waited(
    kind: str, backends: dict[str, str], tmp_path: Path
) -> None:
    """A release that hangs fails no request the counters see; the age of the
    oldest request in flight on it is how the rollout sees it."""
    slow = ThreadingHTTPServer(("127.0.0.1", 0), _Slow)
    slow.daemon_threads = True
    threading.Thread(target=slow.serve_forever, daemon=True).start()
    hung = f"127.0.0.1:{slow.server_address[1]}"
    router: EmbeddedRouter | SupervisedRouter = (
        EmbeddedRouter() if kind == "in-process" else SupervisedRouter(tmp_path)
    )
    try:
        url = router.add_model("m")
        router.configure("m", RouteConfig(backends["blue"], hung, 50))
        assert router.waiting("m") == {}
        asked = threading.Thread(
            target=lambda: httpx.get(f"{url}/1.5", headers={"X-MDC-Version": "canary"})
        )
        asked.start()
        time.sleep(0.8)
        assert httpx.get(url, headers={"X-MDC-Version": "stable"}).text == "blue"
        waited = router.waiting("m")
        assert set(waited) == {hung}  # the stable's request was answered
        assert 0.7 < waited[hung] < 1.5
        asked.join(5)
        assert router.waiting("m") == {}  # answered: nothing waits
    finally:
        router.shutdown()
        slow.shutdown()
        slow.server_close()
