"""Releases on a simulated multi-node Ray cluster (``ray.cluster_utils.Cluster``,
one per module, dashboard off): each release lands on the node and with the GPU
share the ledger chose, a canary runs across two nodes and is promoted, and a
canary whose node dies is rolled back while the stable keeps serving. Nothing
started outlives the module: the cluster is shut down by its own handles and
any ``bentoml serve`` left behind by a killed node is stopped by PID."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from controller.adapters.packaging import Packager, Source
from controller.adapters.router.embedded import EmbeddedRouter
from controller.adapters.runtime.base import ReleaseSpec, State
from controller.adapters.runtime.ray_cluster import RayRuntime, node_ids
from controller.app.daemon import Config
from controller.app.rollout import RolloutDriver
from controller.app.wiring import build_controller
from controller.core.allocation import Demand, Placed, ReleaseKind, Request, launch_env
from controller.core.canary import CanaryPhase
from controller.core.inventory import GPU
from controller.core.ledger import Ledger
from controller.core.status import ModelStatus, Phase
from controller.spec.kinds import Analysis, Check, Metric, Quota, RolloutPolicy, Step, StepKind
from controller.spec.loader import load_desired
from controller.spec.tree import DirTree
from tests.bentos import bentoml_processes, example_copy
from tests.gitservers import git_env, make_bare_repo

ray = pytest.importorskip("ray") if not os.environ.get("CI") else __import__("ray")
pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

NODES = ("gpu-node-a", "gpu-node-b")
DOC = {"documents": [{"id": "x", "bm25": 0.5, "click_rate": 0.25, "freshness": 0.75}]}


class _Load:
    """Requests through the router from a thread, until stopped; their status codes."""

    def __init__(self, url: str) -> None:
        self.url, self._codes = url, list[int]()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with httpx.Client(timeout=5) as client:
            while not self._stop.is_set():
                try:
                    self._codes.append(client.post(self.url, json=DOC).status_code)
                except httpx.HTTPError:
                    self._codes.append(0)
                time.sleep(0.02)

    def codes(self) -> list[int]:
        return list(self._codes)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


POLICY = RolloutPolicy(
    "ray-canary",
    (Step(StepKind.SET_WEIGHT, weight=50), Step(StepKind.ANALYSIS, intervals=1)),
    Analysis(1.0, 0, 5, (Check("errors", Metric.ERROR_RATE, None, 0.05, None, None),)),
    progress_deadline=60.0,
    warmup_timeout=90.0,
    warmup_hold=None,
    source=None,  # type: ignore[arg-type]
)


#: a canary that takes traffic and then waits (for a node to die under it)
HOLD = RolloutPolicy(
    "hold",
    (Step(StepKind.SET_WEIGHT, weight=30), Step(StepKind.PAUSE, duration=600.0)),
    None,
    progress_deadline=None,
    warmup_timeout=90.0,
    warmup_hold=None,
    source=None,  # type: ignore[arg-type]
)


@dataclass
class World:
    cluster: Any
    nodes: dict[str, Any]  # pool node name -> cluster_utils node handle
    home: Path
    state: Path
    marker: Path
    stable: str
    canary: str


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("ray")
    marker = base / "ray-homes"
    os.environ["MDC_RAY_HOME"] = str(marker)  # inherited by the cluster's processes
    short = tempfile.mkdtemp(prefix="mdcray", dir="/tmp")  # unix socket paths are short
    os.environ["RAY_TMPDIR"] = short
    from ray.cluster_utils import Cluster  # noqa: PLC0415

    packager = Packager(base / "home", base / "packager")
    repo = example_copy(base / "repo")
    tree = DirTree(repo)
    model = load_desired(tree).desired.models["search-ranker"]
    stable = packager.build(model, tree, Source()).bento_tag
    spec = repo / "models" / "search-ranker.yaml"
    spec.write_text(spec.read_text().replace("search-ranker/v1.json", "search-ranker/v2.json"))
    tree = DirTree(repo)
    canary = packager.build(
        load_desired(tree).desired.models["search-ranker"], tree, Source()
    ).bento_tag
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "num_gpus": 0, "include_dashboard": False},
    )
    nodes = {
        name: cluster.add_node(num_cpus=2, num_gpus=2, resources={f"mdc-node:{name}": 1})
        for name in NODES
    }
    cluster.wait_for_nodes()
    try:
        yield World(cluster, nodes, base / "home", base / "state", marker, stable, canary)
    finally:
        with contextlib.suppress(Exception):
            ray.shutdown()
        cluster.shutdown()
        for pid in bentoml_processes(marker):  # servers orphaned by a killed node
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        os.environ.pop("MDC_RAY_HOME", None)
        os.environ.pop("RAY_TMPDIR", None)
        shutil.rmtree(short, ignore_errors=True)


def _ledger() -> Ledger:
    gib = 1 << 30
    gpus = [
        GPU(node, i, f"GPU-{node}-{i}", "A100", 40 * gib, declared=True)
        for node in NODES
        for i in range(2)
    ]
    return Ledger(gpus, [Quota("search", 2, 4, 100)])


def _spec(name: str, bento: str, ledger: Ledger, node: str, kind: ReleaseKind) -> ReleaseSpec:
    # the ledger chooses; to pin a node, fill the other one first
    placed = ledger.place(Request(name, "search-ranker", "search", Demand(fraction=0.5), 1, kind))
    assert isinstance(placed, Placed), placed
    replica = placed.allocation.replicas[0]
    assert replica[0].node == node, (replica, node)
    return ReleaseSpec(
        name,
        "search-ranker",
        "1",
        bento,
        env=launch_env(replica),
        gpus=tuple(s.gpu for s in replica),
        ready_timeout=90.0,
        node=replica[0].node,
        gpu_share=sum(s.units for s in replica) / 1000,
    )


def test_release_runs_on_the_ledgers_node_with_its_gpus(world: World) -> None:
    runtime = RayRuntime(world.state / "one", world.home, address=world.cluster.address)
    ledger = _ledger()
    ledger.place(Request("filler", "f", "search", Demand(gpus=2), 1, ReleaseKind.STABLE))
    spec = _spec("search-ranker/one", world.stable, ledger, "gpu-node-b", ReleaseKind.STABLE)
    before = ray.available_resources().get("GPU", 0.0)
    runtime.start(spec)
    release = runtime.wait_ready(spec.name, timeout=120)
    assert release.state is State.READY, runtime.tail(spec.name)
    assert ray.available_resources().get("GPU", 0.0) == pytest.approx(before - 0.5)
    answer = httpx.post(release.url + "/rank", json=DOC, timeout=10)
    assert answer.status_code == 200
    where = runtime.placements[spec.name]
    assert where["node"] == node_ids(ray)["gpu-node-b"]  # node affinity to the ledger's node
    assert where["cuda"] == spec.env["CUDA_VISIBLE_DEVICES"]
    assert spec.env["CUDA_VISIBLE_DEVICES"].startswith("GPU-gpu-node-b-")
    environ = Path(f"/proc/{release.pid}/environ").read_bytes().split(b"\0")
    assert f"CUDA_VISIBLE_DEVICES={spec.gpus[0]}".encode() in environ  # the server sees it
    runtime.stop(spec.name, drain=2.0)
    assert runtime.releases[spec.name].state is State.STOPPED
    time.sleep(1)
    assert ray.available_resources().get("GPU", 0.0) == pytest.approx(before)


def test_canary_across_two_nodes_then_its_node_dies(world: World) -> None:
    """Stable on node a, canary on node b: promoted; then a second canary on node b
    loses its node mid-rollout and is rolled back while the stable keeps serving."""
    runtime = RayRuntime(world.state / "two", world.home, address=world.cluster.address)
    router = EmbeddedRouter()
    ledger = _ledger()
    try:
        # the ledger chooses the nodes: node a full first puts the stable on node b;
        # then node b full puts the canary on node a
        ledger.place(Request("fill-a", "f", "search", Demand(gpus=2), 1, ReleaseKind.STABLE))
        stable = _spec("search-ranker/v1", world.stable, ledger, "gpu-node-b", ReleaseKind.STABLE)
        ledger.release("fill-a")
        ledger.place(Request("fill-b", "f", "search", Demand(fraction=0.5), 1, ReleaseKind.STABLE))
        ledger.place(Request("fill-b2", "f", "search", Demand(gpus=1), 1, ReleaseKind.STABLE))
        canary = _spec("search-ranker/v2", world.canary, ledger, "gpu-node-a", ReleaseKind.CANARY)
        runtime.start(stable)
        assert runtime.wait_ready(stable.name, timeout=120).state is State.READY
        url = router.add_model("search-ranker")
        driver = RolloutDriver("search-ranker", POLICY, runtime, router)
        runtime.start(canary)
        driver.begin(stable, canary, "h2")  # routes to the stable at once
        load = _Load(url + "/rank")
        final = driver.run(timeout=150, step=0.2)
        assert final.phase is CanaryPhase.PROMOTED, (final.reason, runtime.tail(canary.name))
        placements = runtime.placements
        nodes = node_ids(ray)
        assert placements[stable.name]["node"] == nodes["gpu-node-b"]
        assert placements[canary.name]["node"] == nodes["gpu-node-a"]
        assert runtime.releases[stable.name].state is State.STOPPED  # the old stable
        served = load.codes()
        assert served.count(200) > 20
        assert set(served) == {200}

        # -- a canary whose node leaves the cluster is judged failed, not promoted ----
        # the stable now runs on node a; the next canary goes to node b, which dies
        third = replace(
            canary,
            name="search-ranker/v3",
            bento=world.stable,
            node="gpu-node-b",
            env={"CUDA_VISIBLE_DEVICES": "GPU-gpu-node-b-1"},
            gpus=("GPU-gpu-node-b-1",),
        )
        new_driver = RolloutDriver("search-ranker", HOLD, runtime, router)
        runtime.start(third)
        new_driver.begin(driver.stable, third, "h3")
        deadline = time.monotonic() + 120
        while new_driver.state is not None and new_driver.state.weight == 0:
            new_driver.tick()
            assert time.monotonic() < deadline, (new_driver.state, runtime.tail(third.name))
            time.sleep(0.2)
        world.cluster.remove_node(world.nodes["gpu-node-b"], allow_graceful=False)
        final = new_driver.run(timeout=90, step=0.2)
        assert final.phase is CanaryPhase.ROLLED_BACK
        assert "node lost" in final.reason
        assert runtime.releases[third.name].state is State.STOPPED  # rolled back: stopped
        before = len(load.codes())
        time.sleep(2)
        after = load.codes()[before:]
        assert after
        assert set(after) == {200}  # the stable, on the surviving node, serves it all
        load.stop()
    finally:
        router.close()


# -- the controller on the cluster: a pool read from it, nodes lost and joining -----------

POOL = """\
apiVersion: mdc.dev/v1alpha1
kind: GPUPool
metadata:
  name: shared-a100
spec:
  sharing: Fractional
  cluster:
    discovery: NVML
    nodeSelector:
      mdc.test/pool: reconcile
  quotas:
    - team: search
      guaranteed: 1
      limit: 2
"""

HOLD_POLICY = """\
apiVersion: mdc.dev/v1alpha1
kind: RolloutPolicy
metadata:
  name: hold
spec:
  steps:
    - setWeight: 30
    - pause: {}
  analysis:
    interval: 2s
    failureLimit: 3
    minRequests: 1
    checks:
      - name: errors
        metric: errorRate
        max: 0.5
"""

#: what a node of the test pool says about itself (no NVML here: its declared GPUs)
LABELS = {
    "mdc.test/pool": "reconcile",
    "mdc.dev/gpu-product": "NVIDIA A100-SXM4-40GB",
    "mdc.dev/gpu-memory": "40Gi",
}


def _commit(work: Path, message: str) -> None:
    env = git_env()
    push = ("push", "--quiet", "origin", "HEAD:main")
    for args in (("add", "-A"), ("commit", "--quiet", "-m", message), push):
        subprocess.run(["git", "-C", str(work), *args], env=env, check=True)


def _spec_repo(base: Path) -> tuple[Path, Path]:
    """The example repo with search-ranker alone, on whole GPUs of a pool that takes
    its nodes from the cluster, rolled out with a canary that holds at 30%."""
    bare = make_bare_repo(base, "specs")
    work = example_copy(base / "work")
    (work / "models" / "fraud-scorer.yaml").unlink()
    (work / "pools" / "shared-a100.yaml").write_text(POOL)
    (work / "rollouts" / "hold.yaml").write_text(HOLD_POLICY)
    spec = work / "models" / "search-ranker.yaml"
    text = spec.read_text().replace("gpuMemory: 10Gi", "gpu: 1")
    spec.write_text(text.replace("rollout: fast", "rollout: hold"))
    env = git_env()
    subprocess.run(["git", "init", "--quiet", "-b", "main", str(work)], env=env, check=True)
    subprocess.run(["git", "-C", str(work), "remote", "add", "origin", str(bare)], check=True)
    _commit(work, "search-ranker on the cluster")
    return bare, work


def test_the_controller_places_on_cluster_nodes_and_survives_losing_them(
    world: World, tmp_path: Path
) -> None:
    """The pool is read from the cluster; the canary goes to the other node; its node
    dies: rolled back. The stable's node dies with no capacity left: it waits for
    GPUs; a node joins: it is placed there through the plan. A new controller
    (``mdc run --once --runtime ray``) adopts it without a restart."""
    cluster = world.cluster
    handles = {
        name: cluster.add_node(
            num_cpus=2, num_gpus=1, resources={f"mdc-node:{name}": 1}, labels=LABELS
        )
        for name in ("r1", "r2")
    }
    cluster.wait_for_nodes()
    bare, work = _spec_repo(tmp_path)
    state = tmp_path / "state"
    namespace = f"mdc-test-{os.getpid()}"
    config = Config(
        repo=str(bare),
        state_dir=state,
        poll_interval=0.5,
        runtime="ray",
        ray_address=cluster.address,
        ray_namespace=namespace,
    )
    reconciler = build_controller(config, router=EmbeddedRouter()).reconciler
    runtime = reconciler.runtime
    assert isinstance(runtime, RayRuntime)
    load: _Load | None = None

    def until(check: Callable[[ModelStatus], bool], what: str, timeout: float = 120) -> ModelStatus:
        deadline = time.monotonic() + timeout
        while True:
            reconciler.run_pass()
            status = reconciler.statuses.get("search-ranker")
            if status is not None and check(status):
                return status
            assert time.monotonic() < deadline, (what, status)
            time.sleep(0.3)

    def node_of(release: str) -> str:
        node = runtime.releases[release].spec.node
        assert node is not None
        assert runtime.placements[release]["node"] == node_ids(ray)[node]
        return node

    try:
        first = until(lambda s: s.phase is Phase.HEALTHY, "deployed")
        assert first.stable is not None
        stable = first.stable.name
        home = node_of(stable)
        assert home in ("r1", "r2")
        assert "shared-a100" in reconciler.book.inventories  # read from the cluster: r1 and r2
        assert sorted(reconciler.book.inventories["shared-a100"].node_names()) == ["r1", "r2"]
        assert any(
            "discovery is NVML but" in p
            for p in reconciler.book.inventories["shared-a100"].disagreements
        )  # the NVML task ran on each node and found no driver: their declared GPUs
        load = _Load(reconciler.routes["search-ranker"] + "/rank")

        # -- a canary on the other node ------------------------------------------------------
        spec = work / "models" / "search-ranker.yaml"
        spec.write_text(
            spec.read_text()
            .replace("search-ranker/v1.json", "search-ranker/v2.json")
            .replace('version: "2026.11.1"', 'version: "2026.11.2"')
        )
        _commit(work, "search-ranker 2026.11.2")
        canary_status = until(lambda s: s.weight == 30, "canary at 30%")
        assert canary_status.canary is not None
        canary = canary_status.canary.name
        other = node_of(canary)
        assert {home, other} == {"r1", "r2"}  # across two nodes, as the ledger chose

        # -- the canary's node dies: judged failed, rolled back; the stable serves ----------
        cluster.remove_node(handles[other], allow_graceful=False)
        rolled = until(lambda s: s.phase is Phase.ROLLED_BACK, "canary rolled back", 90)
        assert rolled.canary_state is not None
        assert "node lost" in rolled.canary_state["reason"]
        assert reconciler.book.inventories["shared-a100"].node_names() == [home]
        pool_file = reconciler.status.files()["pools/shared-a100.yaml"].decode()
        assert f"node {other} left (1 GPUs)" in pool_file
        before = len(load.codes())
        time.sleep(1.5)
        assert set(load.codes()[before:]) == {200}

        # -- the stable's node dies, nothing is left: it waits for GPUs ---------------------
        cluster.remove_node(handles[home], allow_graceful=False)
        waiting = until(lambda s: s.phase is Phase.WAITING, "waiting for GPUs", 90)
        reasons = {c.reason for c in waiting.conditions}
        assert {"NodeLost", "WaitingForGPUs"} <= reasons, waiting.conditions
        assert waiting.gpus == ()  # the dead node's GPU is not held any more

        # -- a node joins: the stable is placed there, through the plan ---------------------
        handles["r3"] = cluster.add_node(
            num_cpus=2, num_gpus=1, resources={"mdc-node:r3": 1}, labels=LABELS
        )
        cluster.wait_for_nodes()
        back = until(
            lambda s: any(e.event == "Recovered" for e in s.history), "re-placed on r3", 120
        )
        assert back.stable is not None
        assert back.stable.name == stable  # the same release, placed again
        assert node_of(stable) == "r3"
        assert [h.node for h in back.gpus] == ["r3"]
        events = [e.event for e in reversed(back.history)]  # oldest first
        assert events.index("NodeLost") < events.index("Replaced") < events.index("Recovered")
        pool_file = reconciler.status.files()["pools/shared-a100.yaml"].decode()
        assert "node r3 joined (1 GPUs)" in pool_file
        before = len(load.codes())
        time.sleep(1.5)
        assert set(load.codes()[before:]) == {200}
        served_by = runtime.releases[stable].pid
        load.stop()
        load = None
        reconciler.close()  # the releases keep serving: detached actors

        # -- a new controller adopts the release: same server, no restart -------------------
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "controller",
                "run",
                "--once",
                "--repo",
                str(bare),
                "--branch",
                "main",
                "--state-dir",
                str(state),
                "--runtime",
                "ray",
                "--ray-address",
                cluster.address,
                "--ray-namespace",
                namespace,
                "--listen",
                "127.0.0.1:0",
                "-v",
            ],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        # --once exits 0 only when every model is Healthy: this one still serves its
        # stable, but the version git asks for was rolled back above
        assert run.returncode == 1, run.stderr[-3000:]
        assert run.stdout.split("\t")[:2] == ["search-ranker", "RolledBack"], run.stdout
        assert f"release {stable}: Adopted" in run.stderr
        adopted = RayRuntime(state, world.home, address=cluster.address, namespace=namespace)
        assert adopted.releases[stable].pid == served_by
        assert adopted.releases[stable].state is State.READY
        answer = httpx.post(adopted.releases[stable].url + "/rank", json=DOC, timeout=10)
        assert answer.status_code == 200
        adopted.stop_all(drain=2.0)
        named = ray.util.list_named_actors(all_namespaces=True)
        assert not [a for a in named if a["namespace"] == namespace], named
    finally:
        if load is not None:
            load.stop()
        reconciler.close(stop_releases=True)
