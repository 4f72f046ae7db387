"""The controller's process side: :class:`controller.app.daemon.Daemon` over real HTTP
with a fake reconciler, and ``mdc run`` / ``mdc status`` as real processes against a
real ``git daemon``. The spec repository pushed here has pools and rollout policies
but no model, so a pass builds and starts nothing and the tests stay quick."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from controller.adapters.git.source import PollResult
from controller.adapters.github.webhook import Event, PushEvent
from controller.app.daemon import Config, Daemon, StateLock
from controller.app.reconciler import PassResult
from controller.app.status_writes import StatusWrites
from controller.cli.main import main
from controller.core.status import ModelStatus, Phase, Release, model_path, render
from controller.errors import TransientError
from tests.conftest import EXAMPLE_REPO
from tests.gitservers import GitDaemon, missing_git_binaries, run_git

pytestmark = pytest.mark.integration

MDC = Path(sys.executable).with_name("mdc")
SECRET = b"hook-secret"
SERVING = "mdc run: serving http://"


# -- a fake reconciler ---------------------------------------------------------------------


def poll_result(error: TransientError | None = None, retry_in: float = 30.0) -> PollResult:
    return PollResult(None, False, False, None, error, 1 if error else 0, retry_in, 0.0)


def ok_pass(seconds: float = 0.02) -> PassResult:
    return PassResult("main@sha1:" + "a" * 40, (), (), poll_result(), seconds)


def failed_pass() -> PassResult:
    return PassResult("main@sha1:" + "a" * 40, (), ("fraud-scorer",), poll_result(), 0.01)


def git_down_pass() -> PassResult:
    return PassResult(None, (), (), poll_result(TransientError("fetch failed")), 0.01)


def tick_pass() -> PassResult:
    return PassResult(None, (), (), None, 0.001)


class FakeRouter:
    def metrics_text(self) -> str:
        return "mdc_router_requests_total 7\n"


@dataclass
class FakeReconciler:
    """What :class:`Daemon` reads: ``statuses``, ``verdicts``, ``ledgers``, ``router``,
    ``writes`` and ``run_pass``; each pass takes the next outcome (the last one repeats)."""

    outcomes: list[PassResult | Exception] = field(default_factory=lambda: [ok_pass()])
    statuses: dict[str, ModelStatus] = field(default_factory=dict)
    verdicts: dict[tuple[str, str], int] = field(default_factory=dict)
    ledgers: dict[str, Any] = field(default_factory=dict)
    router: Any = None
    writes: StatusWrites = field(default_factory=StatusWrites)
    calls: list[bool] = field(default_factory=list)  # per pass: did it have news from git
    poller: Any = None
    status: Any = None
    polls_elsewhere: bool = False
    pusher: Any = None

    def __post_init__(self) -> None:
        self.poller, self.status = FakePoller(), FakeStatus()

    def run_pass(self, fetch: bool, poll: PollResult | None = None) -> PassResult:
        self.calls.append(fetch or poll is not None)
        outcome = self.outcomes.pop(0) if len(self.outcomes) > 1 else self.outcomes[0]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


class FakePoller:
    """Polls answer at once, every 300 s (the daemon's fetcher thread runs it)."""

    def __init__(self) -> None:
        self.source = self
        self.polls = 0

    def twin(self) -> FakePoller:
        return self

    def poll(self, now: float) -> PollResult:
        self.polls += 1
        return poll_result(retry_in=300.0)


class FakeStatus:
    def twin(self) -> FakeStatus:
        return self

    def pending(self) -> int:
        return 0


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_daemon(
    reconciler: FakeReconciler,
    *,
    secret: bytes | None = None,
    clock: Callable[[], float] = time.time,
    on_event: Callable[[Event], None] | None = None,
    **config: Any,
) -> Daemon:
    settings: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "poll_interval": 30.0,
        "lease_ttl": 0.0,  # no repository to keep a lease in
    } | config
    return Daemon(
        Config(**settings),
        reconciler,  # type: ignore[arg-type]
        secret=secret,
        clock=clock,
        on_event=on_event,
    )


@pytest.fixture
def serve() -> Iterator[Callable[[Daemon], httpx.Client]]:
    """Starts a daemon's HTTP server (no loop) and gives a client for it."""
    started: list[tuple[Daemon, httpx.Client]] = []

    def start(daemon: Daemon) -> httpx.Client:
        daemon.server.start()
        client = httpx.Client(base_url=daemon.url, timeout=10)
        started.append((daemon, client))
        return client

    yield start
    for daemon, client in started:
        client.close()
        daemon.server.stop()


def two_statuses() -> dict[str, ModelStatus]:
    return {
        "search-ranker": ModelStatus(
            "search-ranker",
            Phase.PROGRESSING,
            team="search",
            stable=Release("v2"),
            canary=Release("v3"),
            weight=25,
            step=2,
            steps=5,
        ),
        "fraud-scorer": ModelStatus("fraud-scorer", Phase.HEALTHY, team="payments"),
    }


# -- Daemon over HTTP ----------------------------------------------------------------------


def test_healthz_answers_before_any_pass(serve: Callable[[Daemon], httpx.Client]) -> None:
    daemon = make_daemon(FakeReconciler())
    client = serve(daemon)
    answer = client.get("/healthz")
    assert (answer.status_code, answer.text) == (200, "ok\n")
    assert answer.headers["cache-control"] == "no-store"
    head = client.head("/healthz")
    assert (head.status_code, head.content) == (200, b"")
    assert daemon.reconciler.calls == []  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("passes", "advance", "status", "says"),
    [
        ([], 0.0, 503, "no successful pass yet"),
        ([tick_pass()], 0.0, 503, "no successful pass yet"),
        ([git_down_pass()], 0.0, 503, "no successful pass yet"),
        ([failed_pass()], 0.0, 200, "ready"),  # git was read; a model's failure is not git's
        ([ok_pass()], 0.0, 200, "ready"),
        ([ok_pass(), tick_pass(), git_down_pass()], 99.0, 200, "ready"),
        ([ok_pass()], 3 * 30 + 10 - 1, 200, "ready"),
        ([ok_pass()], 3 * 30 + 10 + 5, 503, "git not read for 105s"),
        ([ok_pass(), git_down_pass()], 3 * 30 + 10 + 5, 503, "git not read"),
    ],
)
def test_readyz_follows_the_last_pass_that_read_git(
    serve: Callable[[Daemon], httpx.Client],
    passes: list[PassResult],
    advance: float,
    status: int,
    says: str,
) -> None:
    clock = Clock()
    daemon = make_daemon(FakeReconciler(list(passes) or [ok_pass()]), clock=clock)
    for result in passes:
        assert daemon.one_pass(fetch=result.poll is not None) == result
    clock.now += advance
    answer = serve(daemon).get("/readyz")
    assert answer.status_code == status
    assert says in answer.text


def metric_value(text: str, name: str, **labels: str) -> float | None:
    """The value of the sample ``name{labels}`` in Prometheus text; None if there is none."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return None


def test_metrics_counts_passes_and_appends_the_router(
    serve: Callable[[Daemon], httpx.Client],
) -> None:
    reconciler = FakeReconciler(
        [ok_pass(0.02), failed_pass()], statuses=two_statuses(), router=FakeRouter()
    )
    daemon = make_daemon(reconciler)
    client = serve(daemon)
    daemon.one_pass(fetch=True)
    daemon.one_pass(fetch=False)
    answer = client.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "text/plain; version=0.0.4"
    text = answer.text
    assert metric_value(text, "mdc_reconcile_passes_total") == 2
    assert metric_value(text, "mdc_reconcile_pass_failures_total") == 1
    assert metric_value(text, "mdc_reconcile_pass_duration_seconds_bucket", le="0.01") == 1
    assert metric_value(text, "mdc_reconcile_pass_duration_seconds_bucket", le="0.05") == 2
    progressing = {"model": "search-ranker", "phase": "Progressing"}
    assert metric_value(text, "mdc_model_phase", **progressing) == 1
    assert metric_value(text, "mdc_canary_weight_percent", model="search-ranker") == 25
    assert text.splitlines()[-1] == "mdc_router_requests_total 7"
    assert reconciler.calls == [True, False]


def test_api_status_gives_one_row_per_model(serve: Callable[[Daemon], httpx.Client]) -> None:
    client = serve(make_daemon(FakeReconciler(statuses=two_statuses())))
    answer = client.get("/api/status")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/json"
    rows = answer.json()["models"]
    assert [row["model"] for row in rows] == ["fraud-scorer", "search-ranker"]
    ranker = rows[1]
    assert (ranker["phase"], ranker["weight"], ranker["step"]) == ("Progressing", 25, "2/5")
    assert (ranker["stable"], ranker["canary"], ranker["team"]) == ("v2", "v3", "search")
    assert rows[0]["phase"] == "Healthy"


def test_api_status_without_models_is_an_empty_list(
    serve: Callable[[Daemon], httpx.Client],
) -> None:
    assert serve(make_daemon(FakeReconciler())).get("/api/status").json() == {"models": []}


@pytest.mark.parametrize(
    ("secret", "method", "path", "status"),
    [
        (None, "GET", "/nope", 404),
        (None, "POST", "/nope", 404),
        (None, "GET", "/healthz/", 404),
        (None, "POST", "/webhook", 404),  # no secret: no webhooks
        (None, "GET", "/webhook", 404),
        (SECRET, "GET", "/nope", 404),
        (SECRET, "GET", "/webhook", 405),
        (SECRET, "POST", "/healthz", 404),
        (SECRET, "DELETE", "/metrics", 404),
    ],
)
def test_unknown_paths_and_methods(
    serve: Callable[[Daemon], httpx.Client],
    secret: bytes | None,
    method: str,
    path: str,
    status: int,
) -> None:
    daemon = make_daemon(FakeReconciler(), secret=secret)
    body = b"{}" if method == "POST" else None
    answer = serve(daemon).request(method, path, content=body)
    assert answer.status_code == status
    assert daemon.webhooks == 0
    assert daemon.trigger.fired == 0


def push(ref: str) -> bytes:
    return json.dumps(
        {
            "ref": ref,
            "before": "1" * 40,
            "after": "2" * 40,
            "forced": False,
            "repository": {"full_name": "acme/specs"},
        }
    ).encode()


def deliver(
    client: httpx.Client, body: bytes, event: str = "push", secret: bytes = SECRET
) -> httpx.Response:
    signature = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    return client.post(
        "/webhook",
        content=body,
        headers={
            "Content-Type": "application/json",
            "X-GitHub-Event": event,
            "X-GitHub-Delivery": str(uuid.uuid4()),
            "X-Hub-Signature-256": signature,
        },
    )


@pytest.mark.parametrize(
    ("ref", "fires"),
    [
        ("refs/heads/release", True),
        ("refs/heads/main", False),
        ("refs/heads/release-2", False),
        ("refs/tags/release", False),
    ],
)
def test_push_webhook_for_the_release_branch_fires_the_trigger(
    serve: Callable[[Daemon], httpx.Client], ref: str, fires: bool
) -> None:
    seen: list[Event] = []
    daemon = make_daemon(FakeReconciler(), secret=SECRET, on_event=seen.append, branch="release")
    answer = deliver(serve(daemon), push(ref))
    assert (answer.status_code, answer.json()) == (202, {"accepted": "push"})
    assert daemon.webhooks == 1
    assert daemon.trigger.fired == (1 if fires else 0)
    assert len(seen) == 1
    assert isinstance(seen[0], PushEvent)
    assert seen[0].ref == ref


@pytest.mark.parametrize("secret", [b"wrong-secret", b""])
def test_badly_signed_webhook_is_refused(
    serve: Callable[[Daemon], httpx.Client], secret: bytes
) -> None:
    daemon = make_daemon(FakeReconciler(), secret=SECRET)
    client = serve(daemon)
    answer = deliver(client, push("refs/heads/main"), secret=secret)
    assert answer.status_code == 401
    assert (daemon.webhooks, daemon.trigger.fired) == (0, 0)


# -- Daemon's loop -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("outcome", "code", "crashes"),
    [
        (ok_pass(), 0, 0),
        (failed_pass(), 1, 0),
        (git_down_pass(), 1, 0),
        (RuntimeError("a bug in the pass"), 1, 1),
    ],
)
def test_run_once_exits_with_the_pass_outcome(
    outcome: PassResult | Exception, code: int, crashes: int, caplog: pytest.LogCaptureFixture
) -> None:
    reconciler = FakeReconciler([outcome])
    daemon = make_daemon(reconciler)
    with caplog.at_level(logging.ERROR, logger="controller.app.daemon"):
        assert daemon.run(once=True) == code
    assert reconciler.calls == [True]
    assert daemon.crashes == crashes
    assert (daemon.stats.total, daemon.stats.failed) == (1, code)
    crashed = [r for r in caplog.records if r.getMessage() == "reconcile pass failed"]
    assert len(crashed) == crashes
    if crashes:
        assert crashed[0].exc_info is not None
    with pytest.raises(RuntimeError, match="not started"):
        daemon.url  # noqa: B018 - the server is stopped again


def run_in_thread(daemon: Daemon) -> tuple[threading.Thread, list[int]]:
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(daemon.run()), daemon=True)
    thread.start()
    return thread, codes


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_loop_goes_on_after_a_pass_raises(caplog: pytest.LogCaptureFixture) -> None:
    reconciler = FakeReconciler([RuntimeError("a bug"), ok_pass()])
    daemon = make_daemon(reconciler, tick=0.05)
    with caplog.at_level(logging.ERROR, logger="controller.app.daemon"):
        thread, codes = run_in_thread(daemon)
        try:
            wait_until(lambda: len(reconciler.calls) >= 3)
        finally:
            daemon.stop()
            thread.join(5)
    assert not thread.is_alive()
    assert codes == [0]  # the last pass went through
    assert daemon.crashes == 1
    assert daemon.stats.total >= 3
    assert daemon.stats.failed == 1
    assert reconciler.calls[0] is True
    assert "RuntimeError: a bug" in caplog.text


def test_a_pass_that_always_raises_is_not_retried_in_a_busy_loop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reconciler = FakeReconciler([RuntimeError("always")])
    daemon = make_daemon(reconciler, tick=0.2)
    with caplog.at_level(logging.CRITICAL, logger="controller.app.daemon"):
        thread, _ = run_in_thread(daemon)
        time.sleep(0.6)
        daemon.stop()
        thread.join(5)
    assert not thread.is_alive()
    assert 1 <= daemon.crashes <= 0.6 / 0.2 + 2


def test_webhook_push_wakes_the_loop_for_a_fetch() -> None:
    reconciler = FakeReconciler([ok_pass()])
    daemon = make_daemon(reconciler, secret=SECRET, tick=30.0, poll_interval=300.0)
    thread, codes = run_in_thread(daemon)
    try:
        wait_until(lambda: reconciler.calls == [True])  # run() opened the port before it
        with httpx.Client(base_url=daemon.url, timeout=10) as client:
            time.sleep(0.1)
            assert reconciler.calls == [True]  # waits: no tick or poll due for minutes
            assert deliver(client, push("refs/heads/main")).status_code == 202
            wait_until(lambda: len(reconciler.calls) == 2)
    finally:
        daemon.stop()
        thread.join(5)
    assert reconciler.calls[:2] == [True, True]
    assert codes == [0]


# -- the mdc command line ------------------------------------------------------------------


def mdc_env(tmp_path: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MDC_", "GITHUB_", "GH_", "GIT_")) and k != "BENTOML_HOME"
    }
    return env | {"XDG_CACHE_HOME": str(tmp_path / "cache"), "NO_COLOR": "1"}


def mdc(tmp_path: Path, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(MDC), *args],
        capture_output=True,
        text=True,
        env=mdc_env(tmp_path),
        stdin=subprocess.DEVNULL,
        timeout=timeout,
        check=False,
        cwd=tmp_path,
    )


def mdc_run(tmp_path: Path, repo: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """``mdc run`` on ``tmp_path/state``, listening on a free port (a later flag wins)."""
    state = str(tmp_path / "state")
    return mdc(
        tmp_path, "run", "--repo", repo, "--state-dir", state, "--listen", "127.0.0.1:0", *extra
    )


def push_without_models(url: str, work: Path) -> str:
    """Pools and rollout policies from the example repo, no model: nothing to deploy."""
    run_git("clone", "-q", url, work)
    for part in ("pools", "rollouts"):
        shutil.copytree(EXAMPLE_REPO / part, work / part)
    run_git("add", "-A", cwd=work)
    run_git("commit", "-qm", "pools and policies", cwd=work)
    run_git("push", "-q", "origin", "HEAD:main", cwd=work)
    return run_git("rev-parse", "HEAD", cwd=work).stdout.strip()


@pytest.fixture
def specs(daemon: GitDaemon, tmp_path: Path) -> str:
    """The git daemon's URL of a spec repository without models."""
    if missing_git_binaries():
        pytest.skip(f"missing {missing_git_binaries()}")
    push_without_models(daemon.url("specs"), tmp_path / "work")
    return daemon.url("specs")


def test_run_without_repo_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--state-dir", str(tmp_path / "state"), "--once"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "mdc run: --repo (or repo: in --config) is required" in err
    assert not (tmp_path / "state").exists()  # refused before taking the lock


def test_run_with_an_unknown_config_key_names_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("repo: /srv/specs.git\nbranch: main\npolInterval: 5\n")
    state = tmp_path / "state"
    assert main(["run", "--config", str(config), "--state-dir", str(state), "--once"]) == 2
    err = capsys.readouterr().err
    assert f"mdc run: {config}:3:1: unknown key 'polInterval'" in err
    assert not state.exists()


def test_run_refuses_a_state_dir_another_controller_holds(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with StateLock(state):
        done = mdc(tmp_path, "run", "--repo", "/nowhere", "--state-dir", str(state), "--once")
    assert done.returncode == 1, done.stderr
    assert f"mdc run: another controller (pid {os.getpid()}) holds {state / 'lock'}" in done.stderr
    assert "Traceback" not in done.stderr


class Controller:
    """``mdc run`` in the background; its stderr read line by line on a thread."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.proc = subprocess.Popen(
            [str(MDC), "run", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env=mdc_env(tmp_path),
            cwd=tmp_path,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, needle: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                raise AssertionError(f"mdc run exited: {''.join(self.seen)}")
            self.seen.append(line)
            if needle in line:
                return line
        raise AssertionError(f"no {needle!r} from mdc run in {timeout}s: {''.join(self.seen)}")

    def output(self) -> list[str]:
        """Every line it wrote (call after :meth:`close`)."""
        while True:
            try:
                line = self.lines.get_nowait()
            except queue.Empty:
                return self.seen
            if line is not None:
                self.seen.append(line)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._reader.join(10)
        assert self.proc.stderr is not None
        self.proc.stderr.close()


def test_two_controllers_on_one_state_dir_and_sigterm(specs: str, tmp_path: Path) -> None:
    state = tmp_path / "state"
    args = ("--repo", specs, "--state-dir", str(state), "--listen", "127.0.0.1:0")
    first = Controller(tmp_path, *args, "--poll-interval", "1")
    try:
        line = first.wait_for(SERVING)
        url = line.split("serving ", 1)[1].split()[0].rstrip("/")
        with httpx.Client(base_url=url, timeout=10) as client:
            assert client.get("/healthz").status_code == 200
            wait_until(lambda: client.get("/readyz").status_code == 200, timeout=20)
            metrics = client.get("/metrics").text
            assert metric_value(metrics, "mdc_reconcile_pass_failures_total") == 0
        second = mdc(tmp_path, "run", *args, "--once")
        assert second.returncode == 1
        assert f"another controller (pid {first.proc.pid})" in second.stderr
        down = mdc(tmp_path, "down", "--state-dir", str(state))
        assert down.returncode == 1  # not while a controller runs on it
        assert f"another controller (pid {first.proc.pid})" in down.stderr
        started = time.monotonic()
        first.proc.send_signal(signal.SIGTERM)
        assert first.proc.wait(10) == 0
        assert time.monotonic() - started < 5
    finally:
        first.close()
    assert "Traceback" not in "".join(first.output())
    assert first.output()[-1].strip() == "mdc run: stopped; nothing left running"
    # the lock went with it
    with StateLock(state):
        pass


def test_two_controllers_on_one_repository_one_acts_the_other_takes_over(
    specs: str, tmp_path: Path
) -> None:
    """Two ``mdc run`` (two state directories) against one repository and branch:
    the repository's lease lets exactly one act; the other says it stands by (in
    /readyz and /api/status) and leads once the first is killed -9."""
    config = tmp_path / "mdc.yaml"
    config.write_text("leaseTtl: 3\ntick: 0.2\n")
    controllers, clients = [], []
    try:
        for name in ("a", "b"):
            args = ("--config", str(config), "--repo", specs, "--poll-interval", "1")
            controller = Controller(
                tmp_path, *args, "--state-dir", str(tmp_path / name), "--listen", "127.0.0.1:0"
            )
            controllers.append(controller)
            url = controller.wait_for(SERVING).split("serving ", 1)[1].split()[0].rstrip("/")
            clients.append(httpx.Client(base_url=url, timeout=10))

        def roles() -> list[str]:
            return [c.get("/api/status").json()["controller"]["role"] for c in clients]

        wait_until(lambda: sorted(roles()) == ["leader", "standby"], timeout=20)
        leader = roles().index("leader")
        standby = 1 - leader
        ready = clients[standby].get("/readyz")
        assert ready.status_code == 503
        assert "StandingBy: standing by: held by" in ready.text
        assert clients[leader].get("/readyz").status_code == 200
        metrics = clients[standby].get("/metrics").text
        assert metric_value(metrics, "mdc_reconcile_passes_total") == 0  # it never acted
        assert metric_value(metrics, "mdc_controller_fault", type="Leader", reason="StandingBy")
        controllers[leader].proc.kill()  # no clean shutdown: its lease runs out
        controllers[leader].proc.wait(10)
        wait_until(lambda: roles_of(clients[standby]) == "leader", timeout=20)
        wait_until(lambda: clients[standby].get("/readyz").status_code == 200, timeout=20)
    finally:
        for client in clients:
            client.close()
        for controller in controllers:
            controller.close()
    assert all("Traceback" not in "".join(c.output()) for c in controllers)


def roles_of(client: httpx.Client) -> str:
    return str(client.get("/api/status").json()["controller"]["role"])


def test_sigint_stops_the_controller_with_130(specs: str, tmp_path: Path) -> None:
    args = ("--repo", specs, "--state-dir", str(tmp_path / "state"), "--listen", "127.0.0.1:0")
    controller = Controller(tmp_path, *args, "--poll-interval", "1")
    try:
        controller.wait_for(SERVING)
        controller.proc.send_signal(signal.SIGINT)
        assert controller.proc.wait(10) == 130
    finally:
        controller.close()
    assert "Traceback" not in "".join(controller.output())
    assert controller.output()[-1].strip() == "mdc run: stopped; nothing left running"


def test_down_of_a_state_dir_with_nothing_running(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    done = mdc(tmp_path, "down", "--state-dir", str(tmp_path / "state"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"nothing runs for {tmp_path / 'state'}"
    missing = mdc(tmp_path, "down", "--state-dir", str(tmp_path / "nope"))
    assert missing.returncode == 1
    assert "no such state directory" in missing.stderr


def test_run_once_against_a_repo_without_models_succeeds(specs: str, tmp_path: Path) -> None:
    done = mdc_run(tmp_path, specs, "--once")
    assert done.returncode == 0, done.stderr
    assert SERVING in done.stderr
    assert "Traceback" not in done.stderr
    status = mdc(tmp_path, "status", "--repo", specs)
    assert status.returncode == 0, status.stderr
    assert "no model has a status yet" in status.stdout


def test_run_once_with_the_haproxy_router(specs: str, tmp_path: Path) -> None:
    done = mdc_run(tmp_path, specs, "--once", "--router", "haproxy")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert (tmp_path / "state" / "haproxy").is_dir()  # the real proxy was configured


def test_run_once_against_a_missing_repo_fails(daemon: GitDaemon, tmp_path: Path) -> None:
    done = mdc_run(tmp_path, daemon.url("absent"), "--once")
    assert done.returncode == 1
    assert "git poll failed" in done.stderr
    assert "Traceback" not in done.stderr


def test_run_with_a_bad_listen_address_is_a_usage_error(tmp_path: Path) -> None:
    bare = tmp_path / "specs.git"
    run_git("init", "-q", "--bare", "--initial-branch=main", bare)
    done = mdc_run(tmp_path, str(bare), "--listen", "localhost", "--once")
    assert "Traceback" not in done.stderr
    assert done.returncode == 2
    assert "localhost" in done.stderr


def push_status_branch(bare: Path, work: Path, statuses: list[ModelStatus]) -> None:
    run_git("clone", "-q", bare, work)
    run_git("switch", "-q", "--orphan", "mdc/status", cwd=work)
    for status in statuses:
        path = work / model_path(status.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(render(status))
    run_git("add", "-A", cwd=work)
    run_git("commit", "-qm", "status", cwd=work)
    run_git("push", "-q", "origin", "mdc/status", cwd=work)


@pytest.fixture
def bare_specs(tmp_path: Path) -> Path:
    if missing_git_binaries():
        pytest.skip(f"missing {missing_git_binaries()}")
    bare = tmp_path / "specs.git"
    run_git("init", "-q", "--bare", "--initial-branch=main", bare)
    push_without_models(str(bare), tmp_path / "work")
    return bare


def test_status_without_a_status_branch(bare_specs: Path, tmp_path: Path) -> None:
    text = mdc(tmp_path, "status", "--repo", str(bare_specs))
    assert text.returncode == 0, text.stderr
    assert text.stdout == "no model has a status yet (is the controller running?)\n"
    as_json = mdc(tmp_path, "status", "--repo", str(bare_specs), "--format", "json")
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout) == {"models": []}


def test_status_reads_the_status_branch(bare_specs: Path, tmp_path: Path) -> None:
    statuses = two_statuses()
    push_status_branch(bare_specs, tmp_path / "status-work", list(statuses.values()))
    as_json = mdc(tmp_path, "status", "--repo", str(bare_specs), "--format", "json")
    assert as_json.returncode == 0, as_json.stderr
    models = json.loads(as_json.stdout)["models"]
    assert isinstance(models, list)
    assert [(m["model"], m["phase"], m["weight"]) for m in models] == [
        ("fraud-scorer", "Healthy", 0),
        ("search-ranker", "Progressing", 25),
    ]
    text = mdc(tmp_path, "status", "--repo", str(bare_specs))
    assert text.returncode == 0, text.stderr
    rows = text.stdout.splitlines()
    assert len(rows) == 3  # a header and one row per model
    assert rows[1].split()[:2] == ["fraud-scorer", "payments"]
    assert rows[2].split()[:5] == ["search-ranker", "search", "v2", "v3", "Progressing"]
    assert "25%" in rows[2]
    assert "2/5" in rows[2]


def test_status_json_is_what_the_api_answers(
    bare_specs: Path, tmp_path: Path, serve: Callable[[Daemon], httpx.Client]
) -> None:
    """One JSON shape: ``mdc status --format json`` from the status branch, the
    controller's ``/api/status`` and ``mdc status --controller`` say the same."""
    statuses = two_statuses()
    statuses["fraud-scorer"] = replace(statuses["fraud-scorer"], endpoint="http://127.0.0.1:8100")
    push_status_branch(bare_specs, tmp_path / "status-work", list(statuses.values()))
    from_git = mdc(tmp_path, "status", "--repo", str(bare_specs), "--format", "json")
    assert from_git.returncode == 0, from_git.stderr
    client = serve(make_daemon(FakeReconciler(statuses=statuses)))
    from_api = client.get("/api/status").json()
    assert json.loads(from_git.stdout) == from_api
    rows = {row["model"]: row for row in from_api["models"]}
    assert rows["fraud-scorer"]["endpoint"] == "http://127.0.0.1:8100"
    assert rows["search-ranker"]["endpoint"] is None
    via_controller = mdc(
        tmp_path, "status", "--controller", str(client.base_url), "--format", "json"
    )
    assert via_controller.returncode == 0, via_controller.stderr
    assert json.loads(via_controller.stdout) == from_api
    text = mdc(tmp_path, "status", "--controller", str(client.base_url))
    header, fraud, ranker = text.stdout.splitlines()
    assert header.split()[-1] == "ENDPOINT"
    assert fraud.split()[-1] == "http://127.0.0.1:8100"
    assert ranker.split()[-1] == "-"


def test_status_of_a_path_that_is_not_a_repository(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    done = mdc(tmp_path, "status", "--repo", str(tmp_path / "plain"))
    assert done.returncode == 2
    assert "not a git repository" in done.stderr


def test_run_refuses_a_working_copy_at_start_and_takes_its_bare_clone(tmp_path: Path) -> None:
    """libgit2 cannot push the status branch into a non-bare repository: ``mdc run``
    says so at start, with what to do, instead of running with nothing written back."""
    work = tmp_path / "specs"
    run_git("init", "-q", "--initial-branch=main", work)
    for part in ("pools", "rollouts"):
        shutil.copytree(EXAMPLE_REPO / part, work / part)
    run_git("add", "-A", cwd=work)
    run_git("commit", "-qm", "pools and policies", cwd=work)
    refused = mdc_run(tmp_path, str(work), "--once")
    assert refused.returncode == 1
    assert f"repo: {work} is a working copy" in refused.stderr
    assert f"git clone --bare {work} {work}.git" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert not (tmp_path / "state" / "mirrors").exists()  # nothing was fetched or started
    run_git("clone", "-q", "--bare", work, f"{work}.git")
    done = mdc_run(tmp_path, f"{work}.git", "--once")
    assert done.returncode == 0, done.stderr
    assert SERVING in done.stderr
    assert (tmp_path / "state" / "mirrors").is_dir()


def test_readyz_says_a_pass_that_fails_as_a_whole(
    serve: Callable[[Daemon], httpx.Client],
) -> None:
    """One value nothing caught made every pass raise: no model was reconciled or
    ticked, yet /readyz said 200. Now it says why until a pass goes through."""
    reconciler = FakeReconciler([ok_pass(), ValueError("not a duration: '5s\\n'"), ok_pass()])
    daemon = make_daemon(reconciler)
    client = serve(daemon)
    daemon.one_pass(fetch=True)
    assert client.get("/readyz").status_code == 200
    daemon.one_pass(fetch=True)
    answer = client.get("/readyz")
    assert answer.status_code == 503
    assert "PassFailed: the last pass failed as a whole: ValueError: not a duration" in answer.text
    text = client.get("/metrics").text
    assert metric_value(text, "mdc_controller_fault", type="Ready", reason="PassFailed") == 1
    daemon.one_pass(fetch=True)
    assert client.get("/readyz").status_code == 200
