"""Monitoring after promotion, with real releases behind the router: two models
brought by one PR; one model's predictions drift (and come back) while the
other's never do; latency injected into a model breaches its p99 objective --
exactly one status commit, one update of the PR's comment and a failing
``mdc/monitor`` -- and taking it away recovers all three; rollups land on the
status branch at the end of the hour and of the day (the controller's clock is
moved on); the sampled feedback files never hold a sensitive field and never
exceed their cap."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from controller.adapters.feedback import SCHEMA
from controller.cli.main import EXIT_OK, main
from controller.core.monitor import period_start
from controller.core.status import ModelStatus, Phase
from controller.demo import Demo
from tests.e2e.load import SECRET, Load, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]

CAP = 48 * 1024

SERVICE = """\
import time
from pathlib import Path

import bentoml

DELAY = Path({delay!r})


@bentoml.service
class Svc:
    @bentoml.api
    def predict(self, x: float, user: str = "") -> dict:
        if DELAY.exists():
            time.sleep(float(DELAY.read_text() or 0))
        return {{"score": round(2 * x + 1, 4), "user": user}}
"""

MODEL = """\
apiVersion: mdc.dev/v1alpha1
kind: Model
metadata:
  name: {name}
spec:
  version: "1"
  team: search
  artifact:
    path: artifacts/search-ranker/v1.json
  service: services/{name}:Svc
  resources:
    gpu: 0.25
  pool: shared-a100
  rollout: quick
  monitor:
    window: 4s
    interval: 1s
    minRequests: 5
    breachAfter: 2
    recoverAfter: 3
    objectives:
      - name: latency
        metric: latencyP99
        max: 0.25
      - name: errors
        metric: errorRate
        max: 0.05
    drift:
      field: score
      baseline: 6s
      window: 5s
      minSamples: 150
    sampling:
      share: 1.0
      maxBytes: 48Ki
      sensitive: [user]
"""

QUICK = """\
apiVersion: mdc.dev/v1alpha1
kind: RolloutPolicy
metadata:
  name: quick
spec:
  steps:
    - setWeight: 50
    - pause: {duration: 2s}
"""


def _status_log(demo: Demo) -> list[str]:
    """The status branch's commit messages, newest first."""
    out = subprocess.run(
        ["git", "-C", str(demo.served / "models.git"), "log", "--format=%B%x00", "mdc/status"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [m.strip() for m in out.split("\0") if m.strip()]


def _prepare(delays: Path) -> Callable[[Path], None]:
    def prepare(repo: Path) -> None:
        for old in ("fraud-scorer", "search-ranker"):
            (repo / "models" / f"{old}.yaml").unlink()
        (repo / "rollouts" / "quick.yaml").write_text(QUICK)
        for name in ("steady", "shifty"):
            code = SERVICE.format(delay=str(delays / name))
            (repo / "services" / f"{name}.py").write_text(code)
            (repo / "models" / f"{name}.yaml").write_text(MODEL.format(name=name))

    return prepare


def _bump(repo: Path) -> None:
    for name in ("steady", "shifty"):
        spec = repo / "models" / f"{name}.yaml"
        spec.write_text(spec.read_text().replace('version: "1"', 'version: "2"'))


def test_objectives_drift_rollups_and_feedback_after_promotion(tmp_path: Path) -> None:
    delays = tmp_path / "delays"
    delays.mkdir()
    offset = [0.0]
    loads: list[Load] = []
    with Demo(
        tmp_path / "demo", tick=0.25, poll_interval=1.0, clock=lambda: time.time() + offset[0]
    ) as demo:
        demo.setup(_prepare(delays))
        demo.start_controller()
        reconciler, github = demo.reconciler, demo.github
        assert reconciler is not None
        assert github is not None
        for name in ("steady", "shifty"):
            demo.wait_for(name, lambda s: s.phase is Phase.HEALTHY, 240, show=False)
        steady, shifty = (
            Load(reconciler.routes[name] + "/predict", seed)
            for name, seed in (("steady", 1), ("shifty", 2))
        )
        loads += [steady, shifty]

        # -- one PR brings version 2 of both ------------------------------------------------
        number = demo.open_pr("v2", "steady and shifty 2", _bump)
        merge = demo.merge("v2")

        def promoted(s: ModelStatus) -> bool:
            return s.phase is Phase.HEALTHY and s.stable is not None and s.stable.version == "2"

        for name in ("steady", "shifty"):
            done = demo.wait_for(name, promoted, 120, show=False)
            assert done.stable is not None
            assert done.stable.pull_request == number
            assert done.stable.revision is not None
            assert done.stable.revision.endswith(merge)

        def views() -> dict[str, dict[str, Any]]:
            return {v["model"]: v for v in reconciler.monitor_view()}

        wait_until(
            lambda: all(v["drift"]["score"] is not None for v in views().values()),
            60,
            "a baseline and a recent window for both",
        )

        # -- shifty's inputs move: its predictions drift; steady's never do -----------------
        shifty.centre = 2.5
        wait_until(lambda: (demo.status("shifty").monitor or {}).get("drifting"), 40, "drift")  # type: ignore[union-attr]
        shifty.centre = 0.0
        wait_until(lambda: not demo.status("shifty").monitor, 60, "drift gone")  # type: ignore[union-attr]
        history = [h.event for h in demo.status("shifty").history]  # type: ignore[union-attr]
        assert history.count("DriftDetected") == 1
        assert history.count("DriftRecovered") == 1

        # -- latency injected into steady: one commit, one comment update, mdc/monitor fails --
        def monitor_statuses() -> list[str]:
            return [
                s["state"] for s in github.statuses.get(merge, []) if s["context"] == "mdc/monitor"
            ]

        def comment() -> str:
            return next(
                (c.body for c in github.comments.get(number, []) if "mdc:monitor" in c.body), ""
            )

        # the recovery is reported in full (the status is set before the comment) first
        wait_until(
            lambda: monitor_statuses() and monitor_statuses()[-1] == "success", 20, "settled"
        )
        wait_until(
            lambda: "DriftRecovered" in comment() and "attention" not in comment(), 20, "comment"
        )
        # and on the status branch: its push is the status writer's, in its own time, so a
        # slow push of the recovery must not be counted as a commit of the breach below
        wait_until(
            lambda: "Monitor: DriftRecovered" in _status_log(demo)[0], 20, "recovery recorded"
        )
        before_commits = len(_status_log(demo))
        before_updates = len(github.calls("PATCH", r"/issues/comments/"))
        before_statuses = len(monitor_statuses())
        (delays / "steady").write_text("0.35")
        breached = wait_until(
            lambda: (demo.status("steady").monitor or {}).get("breached"),
            40,
            "breached",  # type: ignore[union-attr]
        )
        assert list(breached) == ["latency"]
        time.sleep(3)  # still breached: nothing more is written or posted
        log = _status_log(demo)[: len(_status_log(demo)) - before_commits]
        assert len(log) == 1, log  # one commit: the change of state, nothing per pass
        assert "Monitor: ObjectiveBreached" in log[0]
        assert "steady: ObjectiveBreached: latency: latencyP99" in log[0]
        assert len(github.calls("PATCH", r"/issues/comments/")) == before_updates + 1
        assert monitor_statuses()[before_statuses:] == ["failure"]
        body = comment()
        assert "objective **latency** breached since" in body
        assert "`shifty` 2: ✅" in body
        assert "mdc:plan" in body  # the plan above is kept

        # -- taken away: recovered, once --------------------------------------------------
        (delays / "steady").unlink()
        wait_until(lambda: not demo.status("steady").monitor, 60, "recovered")  # type: ignore[union-attr]
        time.sleep(2)
        log = _status_log(demo)[: len(_status_log(demo)) - before_commits]
        assert len(log) == 2, log
        assert "Monitor: ObjectiveRecovered" in log[0]
        assert len(github.calls("PATCH", r"/issues/comments/")) == before_updates + 2
        assert monitor_statuses()[before_statuses:] == ["failure", "success"]
        body = comment()
        assert "`steady` 2: ✅" in body
        assert "ObjectiveRecovered" in body
        history = [h.event for h in demo.status("steady").history]  # type: ignore[union-attr]
        assert "DriftDetected" not in history  # steady's predictions never drifted

        # -- the hour ends, then the day: rollups on the status branch ----------------------
        now = time.time()
        offset[0] = period_start(now, "hour") + 3600 + 1 - now
        # one commit for what ended: "rollups: hour H", or "rollups: day D, hour H" when
        # the jump crosses midnight (a run near 23:00 UTC)
        hourly = re.compile(r"rollups: (day \S+, )?hour ")
        wait_until(lambda: any(hourly.match(m) for m in _status_log(demo)[:3]), 30, "hour")
        day_end = period_start(now + offset[0], "day") + 86400 + 1
        offset[0] = day_end - now
        wait_until(
            lambda: any(m.startswith("rollups: day") for m in _status_log(demo)[:3]), 30, "day"
        )
        for load in loads:
            load.stop()
        files = subprocess.run(
            [
                "git",
                "-C",
                str(demo.served / "models.git"),
                "show",
                "mdc/status:monitor/steady.yaml",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "hourly:" in files
        assert "daily:" in files
        assert "gpuHours:" in files
        assert "latency: breached" in files  # the worst the hour saw

        # -- mdc monitor, from the status branch and live ------------------------------------
        assert main(["monitor", "steady", "--repo", demo.remote, "--format", "json"]) == EXIT_OK
        assert demo.daemon is not None
        assert main(["monitor", "shifty", "--controller", demo.daemon.url]) == EXIT_OK
        page = httpx.get(demo.daemon.url + "/", timeout=10).text
        assert 'data-monitor="steady"' in page
        assert re.search(r"<h4>Last hours</h4>\s*<table>", page)

        # -- the feedback files: capped, and never the user ----------------------------------
        root = tmp_path / "demo" / "state" / "feedback"
        versions = [d for d in root.glob("*/*") if d.is_dir()]
        assert {d.parent.name for d in versions} == {"steady", "shifty"}
        lines = 0
        for folder in versions:
            files_here = sorted(folder.glob("samples-*.jsonl"))
            assert sum(f.stat().st_size for f in files_here) <= CAP
            for path in files_here:
                text = path.read_text()
                assert SECRET not in text
                assert '"user"' not in text
                for line in text.splitlines():
                    jsonschema.validate(json.loads(line), SCHEMA)  # the documented schema
                    lines += 1
        assert lines > 100
        kept = sorted(p.name for p in (root / "steady" / "2").glob("samples-*.jsonl"))
        assert kept[0] != "samples-000001.jsonl"  # it rolled: the oldest went first
