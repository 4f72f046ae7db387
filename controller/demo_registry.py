"""The demo's chapter on MLflow: the data scientists' model, from the registry to
production and back.

Owns :class:`MlflowServer` -- a real ``mlflow server`` (sqlite, local artifact
root, loopback) started and stopped with the demo, and the example
repository's ``iris-classifier`` trained and registered by its own script
(``artifacts/iris-classifier/train.py``) -- and :func:`registry_chapter`, the
story told with it on a running :class:`~controller.demo.Demo`:

1. the team onboards ``iris-classifier`` (a scikit-learn model, CPU only,
   ``artifact.mlflow`` version 1, ``promoteOn: {alias: candidate}``) with a
   pull request; merged, it is deployed from MLflow;
2. the data scientist registers version 2 and gives it the alias
   ``candidate``; the registry bridge opens the pull request that moves the
   spec to it, with the run's metrics;
3. a reviewer merges it: the canary runs under traffic and is promoted;
4. MLflow shows the outcome: version 2 tagged ``mdc.status=serving`` and
   aliased ``production``, version 1 ``retired``.

Needs ``mlflow`` and ``scikit-learn`` where mdc runs (``make demo`` installs
the ``demo`` extra); :func:`available` says whether they are. Called by
:func:`controller.demo.run_demo`; the tests start :class:`MlflowServer` too.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import httpx

from controller.adapters.github.client import GitHubReporter
from controller.adapters.model_registry import MlflowRegistry
from controller.app.registry_bridge import PRODUCTION_ALIAS, RegistryBridge
from controller.core.status import ModelStatus, Phase
from controller.spec.tree import DirTree

__all__ = ["IRIS", "MlflowServer", "available", "onboard", "registry_chapter", "train_script"]

IRIS = "iris-classifier"

#: The spec the team onboards (added by a pull request in the demo).
IRIS_SPEC = f"""\
# A scikit-learn model the data science team registers in MLflow; mdc
# deploys the version named here and proposes the next one the alias marks.
apiVersion: mdc.dev/v1alpha1
kind: Model
metadata:
  name: {IRIS}
spec:
  version: "1"
  description: Logistic regression over the four iris measurements.
  team: search
  artifact:
    mlflow:
      model: {IRIS}
      version: 1
  promoteOn:
    alias: candidate
  service: services/iris_classifier:IrisClassifier
  resources:
    cpu: 1                   # no GPU
  pool: shared-a100
  rollout: fast
  serving:
    probe:
      path: /classify
      body: {{flowers: [[5.1, 3.5, 1.4, 0.2]]}}
"""

FLOWERS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5], [6.0, 2.2, 5.0, 1.5]]


def available() -> bool:
    """Whether mlflow and scikit-learn can be imported here (the ``demo`` extra)."""
    return all(importlib.util.find_spec(m) is not None for m in ("mlflow", "sklearn"))


def train_script(example_repo: Path) -> Path:
    return example_repo / "artifacts" / "iris-classifier" / "train.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _quiet_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)
    env["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    env["GIT_PYTHON_REFRESH"] = "quiet"
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # no job runner (10 huey workers)
    return env


class MlflowServer:
    """``mlflow server`` on 127.0.0.1 with its data under ``root``; :meth:`stop`
    and :meth:`start` again keep the data and the port (a registry outage).
    :meth:`launch` starts it without waiting; :meth:`wait` waits for it."""

    def __init__(self, root: Path, port: int | None = None, train: Path | None = None) -> None:
        self.root = Path(root)
        self.train = train  # the example repository's artifacts/iris-classifier/train.py
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = port or _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def launch(self) -> subprocess.Popen[bytes]:
        mlflow = Path(sys.executable).with_name("mlflow")
        with (self.root / "server.log").open("ab") as log:
            self.proc = self._spawn(str(mlflow), log)
        return self.proc

    def wait(self, timeout: float = 90.0) -> MlflowServer:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"mlflow server not up in {timeout:g}s: {self.log_tail()}")

    def start(self, timeout: float = 90.0) -> MlflowServer:
        self.launch()
        return self.wait(timeout)

    def _spawn(self, mlflow: str, log: IO[bytes]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                mlflow,
                "server",
                "--backend-store-uri",
                f"sqlite:///{self.root / 'mlflow.db'}",
                "--artifacts-destination",
                str(self.root / "artifacts"),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "1",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=_quiet_env(),
            start_new_session=True,
        )

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        self.proc = None

    def log_tail(self) -> str:
        path = self.root / "server.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def register(
        self,
        *releases: int,
        alias: str | None = None,
        started: Callable[[subprocess.Popen[str]], None] | None = None,
    ) -> list[dict[str, str]]:
        """Train and register releases of the iris-classifier with the example
        repository's training script (one process, in a session of its own, given
        to ``started`` so whoever stops everything stops it too):
        ``[{"version": ..., "run_id": ...}]``; ``alias`` points at the last."""
        if self.train is None:
            raise ValueError("this server was made without a training script")
        argv = [sys.executable, str(self.train), "--tracking-uri", self.url]
        for release in releases:
            argv += ["--release", str(release)]
        if alias:
            argv += ["--alias", alias]
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env=_quiet_env(),
            start_new_session=True,
        )
        if started is not None:
            started(proc)
        try:
            out, err = proc.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise RuntimeError("train.py did not finish in 240s") from None
        if proc.returncode != 0:
            raise RuntimeError(f"train.py failed: {err[-2000:]}")
        # MLflow prints its own lines ("View run ...") between the script's JSON lines
        lines = [line for line in out.splitlines() if line.startswith('{"version"')]
        return [dict(json.loads(line)) for line in lines]

    def __enter__(self) -> MlflowServer:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def iris_request(rng: random.Random) -> dict[str, Any]:
    flowers = [[round(x + rng.uniform(-0.2, 0.2), 2) for x in f] for f in FLOWERS]
    return {"flowers": flowers}


def iris_version(answer: Any) -> str:
    model = answer.get("model", "") if isinstance(answer, dict) else ""
    return "v" + str(model).rsplit("/", 1)[-1] if model else ""


def onboard(demo: Any) -> None:
    """A pull request adds the iris-classifier (MLflow version 1) and is merged; the
    controller deploys it from MLflow while the story goes on."""
    demo.say(f"a PR onboards {IRIS}, the data scientists' model, from MLflow version 1")

    def add(repo: Path) -> None:
        (repo / "models" / f"{IRIS}.yaml").write_text(IRIS_SPEC)

    demo.open_pr("iris-onboard", f"{IRIS}: serve MLflow version 1", add)
    demo.merge("iris-onboard")


def registry_chapter(
    demo: Any,
    server: MlflowServer,
    number: str,
    traffic_of: Callable[..., Any],
    registered: dict[str, str],
) -> None:
    """The chapter (see the module docstring) on a running ``demo``
    (:class:`~controller.demo.Demo`) after :func:`onboard`; ``number`` heads its
    lines; ``traffic_of`` is :class:`~controller.demo.Traffic`; ``registered`` the
    version the data scientist registered and aliased ``candidate``."""
    assert demo.github is not None
    assert demo.reconciler is not None
    demo.say(f"{number}. the data scientists' model, from MLflow")
    demo.wait_for(IRIS, lambda s: s.phase is Phase.HEALTHY, 240)
    url = demo.reconciler.routes[IRIS] + "/classify"
    traffic = traffic_of(url, iris_request, iris_version, rate=120.0).start()
    demo.say(f"{IRIS} serves MLflow version 1; traffic: {traffic.rate:.0f} requests/s at {url}")
    try:
        demo.say(
            f"the data scientist registered version {registered['version']} (trained on the "
            "same data, fit closer) and gave it the alias 'candidate'"
        )
        registry = MlflowRegistry(server.url)
        github = GitHubReporter(
            demo.github.repo.full_name, demo.github.token, api_url=demo.github.url, max_attempts=3
        )
        try:
            tree = DirTree(demo.work)  # the release branch, checked out
            (proposal,) = RegistryBridge(registry, github, "main").scan(tree)
            assert proposal.pull is not None, proposal
            pull = demo.github.pulls[proposal.pull]
            demo.say(f"mdc registry watch opened PR #{pull.number}: {pull.title}")
            for line in (pull.body or "").splitlines()[1:9]:
                print(f"    {line}", file=demo.out)
            demo.say(f"a reviewer merges PR #{pull.number}")
            demo.adopt_pull(pull.number)
            merged = time.time()
            demo.merge(pull.head)

            def promoted(status: ModelStatus) -> bool:
                stable = status.stable.version if status.stable is not None else None
                return status.phase is Phase.HEALTHY and stable == registered["version"]

            demo.wait_for(IRIS, promoted, 180)
            demo.say(f"promoted {time.time() - merged:.0f}s after the merge")
            tags: dict[str, str] = {}
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and tags.get("mdc.status") != "serving":
                tags = dict(registry.version(IRIS, registered["version"]).tags)
                time.sleep(0.2)
            production = registry.by_alias(IRIS, PRODUCTION_ALIAS)
            older = registry.version(IRIS, "1").tags.get("mdc.status", "")
            demo.say(
                f"MLflow now says: version {registered['version']} mdc.status="
                f"{tags.get('mdc.status', '?')}, alias {PRODUCTION_ALIAS} -> "
                f"{production.version if production else '?'}; version 1 mdc.status={older}"
            )
        finally:
            registry.close()
            github.close()
    finally:
        traffic.stop()
