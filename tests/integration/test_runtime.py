"""Real `bentoml serve`: two versions side by side with their own metrics;
a taken port, a server that never gets ready, one that dies, one that hangs;
a controller restarted over running and dead releases. Nothing outlives a test."""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import psutil
import pytest

from controller.adapters.metrics import bentoml_window
from controller.adapters.packaging import Packager, Source
from controller.adapters.runtime.base import ReleaseSpec, State
from controller.adapters.runtime.local import LocalRuntime, release_home
from controller.cli.main import main
from controller.spec.kinds import Probe
from controller.spec.loader import load_desired
from controller.spec.tree import DirTree
from tests.bentos import bentoml_processes, example_copy, repo_with_service

pytestmark = pytest.mark.integration
PROBE = Probe(
    "/score",
    {"transactions": [{"amount_log": 1.0}]},
    timeout=2.0,
    interval=0.2,
    failure_threshold=2,
)


@dataclass(frozen=True)
class Bentos:
    home: Path
    v1: str
    v2: str
    slow: str


@pytest.fixture(scope="module")
def bentos(tmp_path_factory: pytest.TempPathFactory) -> Bentos:
    base = tmp_path_factory.mktemp("bentos")
    packager = Packager(base / "home", base / "state")
    repo = example_copy(base / "repo")
    tree = DirTree(repo)
    fraud = load_desired(tree).desired.models["fraud-scorer"]
    v1 = packager.build(fraud, tree, Source()).bento_tag
    spec = repo / "models" / "fraud-scorer.yaml"
    spec.write_text(spec.read_text().replace("fraud-scorer/v1.json", "fraud-scorer/v2.json"))
    tree = DirTree(repo)
    v2 = packager.build(load_desired(tree).desired.models["fraud-scorer"], tree, Source()).bento_tag
    slow_repo, slow_model = repo_with_service(
        base / "slow",
        "slow-start",
        """
        import time
        import bentoml

        @bentoml.service
        class Svc:
            def __init__(self) -> None:
                time.sleep(120)  # never ready in time

            @bentoml.api
            def ping(self) -> str:
                return "pong"
        """,
    )
    slow = packager.build(slow_model, DirTree(slow_repo), Source()).bento_tag
    return Bentos(base / "home", v1, v2, slow)


@pytest.fixture
def runtime(tmp_path: Path, bentos: Bentos) -> Iterator[LocalRuntime]:
    rt = LocalRuntime(tmp_path / "state", bentos.home, rng=random.Random(0))
    try:
        yield rt
    finally:
        rt.stop_all(drain=2.0)
        deadline = time.monotonic() + 10
        while bentoml_processes(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert bentoml_processes(tmp_path) == [], "a process outlived its test"


def spec(name: str, bento: str, **kw: object) -> ReleaseSpec:
    return replace(
        ReleaseSpec(name, "fraud-scorer", name, bento, probe=PROBE, ready_timeout=60), **kw
    )


def score(url: str) -> float:
    answer = httpx.post(
        f"{url}/score",
        json={"transactions": [{"amount_log": 3.0, "foreign_merchant": 1}]},
        timeout=10,
    )
    answer.raise_for_status()
    return float(answer.json()[0])


def request_count(url: str) -> int:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    pattern = (
        r'bentoml_service_request_total\{[^}]*endpoint="/score"'
        r'[^}]*http_response_code="200"[^}]*\} ([0-9.]+)'
    )
    return int(sum(float(v) for v in re.findall(pattern, text)))


def test_two_versions_side_by_side_with_their_own_metrics(
    runtime: LocalRuntime, bentos: Bentos, capsys: pytest.CaptureFixture[str]
) -> None:
    gpu_env = {"CUDA_VISIBLE_DEVICES": "GPU-test-0001", "MDC_GPU_MEMORY_LIMIT_BYTES": "1073741824"}
    runtime.start(spec("fraud-scorer/stable", bentos.v1, env=gpu_env, gpus=("GPU-test-0001",)))
    runtime.start(spec("fraud-scorer/canary", bentos.v2))
    stable = runtime.wait_ready("fraud-scorer/stable", 60)
    canary = runtime.wait_ready("fraud-scorer/canary", 60)
    assert (stable.state, canary.state) == (State.READY, State.READY)
    assert stable.port != canary.port
    assert score(stable.url) != pytest.approx(score(canary.url))  # v1 and v2 weights differ
    base_s, base_c = request_count(stable.url), request_count(canary.url)
    scrape = httpx.get(f"{canary.url}/metrics", timeout=10).text
    for _ in range(3):
        score(stable.url)
    for _ in range(5):
        score(canary.url)
    assert request_count(stable.url) - base_s == 3
    assert request_count(canary.url) - base_c == 5
    # the BentoML /metrics provider reads the same from the canary's own server
    window = bentoml_window(scrape, httpx.get(f"{canary.url}/metrics", timeout=10).text, 10.0)
    assert (window.requests, window.errors) == (5, 0)
    assert 0 < window.latency[0.5] < 1.0
    listed = {r.spec.name: r for r in runtime.list()}
    assert listed["fraud-scorer/canary"].spec.bento == bentos.v2
    assert listed["fraud-scorer/stable"].spec.gpus == ("GPU-test-0001",)
    # the ledger's environment reaches every process of the release, workers included
    for pid in bentoml_processes(runtime.home("fraud-scorer/stable")):
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert b"CUDA_VISIBLE_DEVICES=GPU-test-0001" in environ
        assert b"MDC_GPU_MEMORY_LIMIT_BYTES=1073741824" in environ
        assert any(v.startswith(b"BENTOML_DO_NOT_TRACK=") for v in environ), environ
    # and each release's output is kept, for `mdc logs`
    state = runtime.dir.parent
    assert main(["logs", "fraud-scorer", "--release", "canary", "--state-dir", str(state)]) == 0
    assert f"starting {bentos.v2}" in capsys.readouterr().out


def test_the_server_picks_its_port_and_the_runtime_records_it(
    tmp_path: Path, runtime: LocalRuntime, bentos: Bentos
) -> None:
    runtime.start(spec("fraud-scorer/stable", bentos.v1))
    starting = runtime.releases["fraud-scorer/stable"]
    assert starting.pid is not None
    assert psutil.Process(starting.pid).cmdline()[-2:] == ["--port", "0"]  # the kernel picks
    ready = runtime.wait_ready("fraud-scorer/stable", 60)
    assert ready.state is State.READY
    assert ready.port > 0
    # the port recorded is the one the release's workers listen on
    workers = [
        p
        for p in bentoml_processes(runtime.home("fraud-scorer/stable"))
        if b"_bentoml_impl.worker" in Path(f"/proc/{p}/cmdline").read_bytes()
    ]
    assert workers
    for pid in workers:
        listening = {
            c.laddr.port
            for c in psutil.Process(pid).net_connections("tcp")
            if c.status == psutil.CONN_LISTEN
        }
        assert ready.port in listening
    assert score(ready.url) > 0
    rows = json.loads(runtime.table.read_text())
    assert [row["port"] for row in rows] == [ready.port]
    assert f"listening on port {ready.port}" in runtime.log_path("fraud-scorer/stable").read_text()
    # a controller restarted over it adopts it with its port
    again = LocalRuntime(tmp_path / "state", bentos.home, rng=random.Random(0))
    assert again.releases["fraud-scorer/stable"].port == ready.port
    assert again.releases["fraud-scorer/stable"].state is State.READY


def test_a_release_log_rotates_by_size(tmp_path: Path, bentos: Bentos) -> None:
    rt = LocalRuntime(
        tmp_path / "state", bentos.home, rng=random.Random(0), log_max_bytes=2048, log_keep=2
    )
    live = rt.log_path("fraud-scorer/stable")
    old = [live.with_name(f"{live.name}.{n}") for n in (1, 2, 3)]
    try:
        rt.start(spec("fraud-scorer/stable", bentos.v1, probe=replace(PROBE, interval=3600)))
        ready = rt.wait_ready("fraud-scorer/stable", 60)
        assert ready.state is State.READY
        assert not old[0].exists()
        for _ in range(200):  # the server writes a line a request
            if live.stat().st_size > 2048:
                break
            score(ready.url)
        before = live.read_bytes()
        rt.tick()
        assert old[0].read_bytes().startswith(before)  # copied ...
        assert live.stat().st_size < len(before)  # ... then truncated
        for _ in range(3):
            score(ready.url)
        time.sleep(0.5)
        after = live.read_bytes()
        assert after.count(b"path=/score") >= 3  # the server writes on into the live file,
        assert b"\0" not in after  # at its new end (O_APPEND), not past a hole
        rotations = 1
        for _ in range(600):
            score(ready.url)
            if live.stat().st_size > 2048:
                rt.tick()
                rotations += 1
            if rotations == 4:
                break
        assert rotations == 4
        assert old[1].exists()
        assert not old[2].exists()  # only log_keep old files are kept
        kept = b"".join(p.read_bytes() for p in (live, *old[:2]))
        assert b"mdc: starting" not in kept  # the oldest content is gone
    finally:
        rt.stop_all(drain=2.0)
    assert bentoml_processes(tmp_path) == []


def test_tail_reaches_into_the_rotated_log(tmp_path: Path) -> None:
    rt = LocalRuntime(tmp_path / "state", tmp_path / "bentos")
    rt.old_log("m/stable", 1).write_text("a\nb\n")
    rt.log_path("m/stable").write_text("c\n")
    assert rt.tail("m/stable", 2) == ["b", "c"]
    assert rt.tail("m/stable", 1) == ["c"]
    assert rt.tail("m/stable") == ["a", "b", "c"]


def test_port_taken_by_another_process(runtime: LocalRuntime, bentos: Bentos) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        runtime.start(spec("fraud-scorer/stable", bentos.v1, port=port))
        release = runtime.wait_ready("fraud-scorer/stable", 60)
    assert release.state is State.FAILED
    assert f"port {port} is taken" in release.reason


def test_server_that_never_becomes_ready(runtime: LocalRuntime, bentos: Bentos) -> None:
    runtime.start(
        ReleaseSpec(
            "slow-start/stable",
            "slow-start",
            "1",
            bentos.slow,
            ready_timeout=3,
            probe=Probe("/ping", {}),
        )
    )
    release = runtime.wait_ready("slow-start/stable", 30)
    assert release.state is State.FAILED
    assert release.reason == "not ready within 3s"
    assert bentoml_processes(runtime.home("slow-start/stable")) == []


def test_server_that_dies_after_ready_is_restarted(runtime: LocalRuntime, bentos: Bentos) -> None:
    runtime.start(spec("fraud-scorer/stable", bentos.v1))
    ready = runtime.wait_ready("fraud-scorer/stable", 60)
    assert ready.state is State.READY
    assert ready.pid is not None
    for pid in bentoml_processes(runtime.home("fraud-scorer/stable")):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    events = []
    while time.monotonic() < deadline:
        events += runtime.tick()
        if runtime.releases["fraud-scorer/stable"].state is State.CRASHED:
            break
        time.sleep(0.05)
    crashed = runtime.releases["fraud-scorer/stable"]
    assert crashed.state is State.CRASHED
    assert crashed.crashes == 1
    assert "exited" in crashed.reason
    assert any(e.kind == "Crashed" for e in events)
    time.sleep(max(0.0, (crashed.restart_at or 0) - time.time()))
    back = runtime.wait_ready("fraud-scorer/stable", 60)
    assert back.state is State.READY
    assert back.pid != ready.pid
    assert score(back.url) > 0


def test_hung_worker_is_found_by_a_real_request(runtime: LocalRuntime, bentos: Bentos) -> None:
    runtime.start(spec("fraud-scorer/stable", bentos.v1, probe=replace(PROBE, timeout=1.0)))
    ready = runtime.wait_ready("fraud-scorer/stable", 60)
    assert ready.state is State.READY
    workers = [
        p
        for p in bentoml_processes(runtime.home("fraud-scorer/stable"))
        if b"_bentoml_impl.worker" in Path(f"/proc/{p}/cmdline").read_bytes()
    ]
    assert workers
    for pid in workers:
        os.kill(pid, signal.SIGSTOP)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            runtime.tick()
            if runtime.releases["fraud-scorer/stable"].state is State.UNHEALTHY:
                break
            time.sleep(0.1)
        hung = runtime.releases["fraud-scorer/stable"]
        assert hung.state is State.UNHEALTHY
        assert "probes failed in a row" in hung.reason
    finally:
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
    deadline = time.monotonic() + 20
    while (
        time.monotonic() < deadline
        and runtime.releases["fraud-scorer/stable"].state is not State.READY
    ):
        runtime.tick()
        time.sleep(0.1)
    assert runtime.releases["fraud-scorer/stable"].state is State.READY


CONTROLLER = """
import os, random, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from controller.adapters.runtime.local import LocalRuntime, ReleaseSpec
from controller.spec.kinds import Probe
state, home, v1, v2 = sys.argv[2:6]
rt = LocalRuntime(Path(state), Path(home), rng=random.Random(0))
probe = Probe("/score", {"transactions": [{"amount_log": 1.0}]}, 2.0, 0.2, 2)
for name, bento in (("fraud-scorer/stable", v1), ("fraud-scorer/canary", v2)):
    rt.start(ReleaseSpec(name, "fraud-scorer", name, bento, probe=probe, ready_timeout=60))
for name in ("fraud-scorer/stable", "fraud-scorer/canary"):
    assert rt.wait_ready(name, 60).state.value == "ready", rt.releases[name]
print("ready", flush=True)
os.kill(os.getpid(), 9)  # the controller dies; its releases run on
"""


def test_restarted_controller_adopts_live_releases_and_cleans_dead_ones(
    tmp_path: Path, bentos: Bentos
) -> None:
    state = tmp_path / "state"
    root = str(Path(__file__).resolve().parents[2])
    killed = subprocess.run(
        [
            sys.executable,
            "-c",
            CONTROLLER,
            root,
            str(state),
            str(bentos.home),
            bentos.v1,
            bentos.v2,
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert "ready" in killed.stdout
    again = None
    try:
        # then the canary's server dies too, while no controller runs
        for pid in bentoml_processes(release_home(state, "fraud-scorer/canary")):
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
        stable_before = bentoml_processes(release_home(state, "fraud-scorer/stable"))
        again = LocalRuntime(state, bentos.home, rng=random.Random(0))
        kinds = {(e.release, e.kind) for e in again.events}
        assert ("fraud-scorer/stable", "Adopted") in kinds
        assert ("fraud-scorer/canary", "CleanedUp") in kinds
        adopted = again.releases["fraud-scorer/stable"]
        assert adopted.state is State.READY
        assert adopted.pid in stable_before
        assert again.releases["fraud-scorer/canary"].state is State.CRASHED
        assert bentoml_processes(again.home("fraud-scorer/stable")) == stable_before  # no duplicate
        assert score(adopted.url) > 0
        back = again.wait_ready("fraud-scorer/canary", 60)  # restarted at once
        assert back.state is State.READY
    finally:
        if again is not None:
            again.stop_all(drain=2.0)
        for pid in bentoml_processes(tmp_path):  # whatever happened, nothing outlives the test
            os.kill(pid, signal.SIGKILL)
    assert bentoml_processes(tmp_path) == []
