"""The loop under faults, with real parts: the controller killed mid-canary and
started again; git unreachable for a while; GitHub answering 5xx and 429; a bad
spec in one model while another rolls out."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from controller.core.status import Phase
from controller.demo import RANKER, TEAM, Demo, Traffic, _bump, ranker_request, version_classifier
from tests.bentos import bentoml_processes
from tests.e2e.conftest import Controller, mdc_config
from tests.e2e.conftest import wait_for as _wait

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]
MARKER = "<!-- mdc:plan -->"
APPROVAL = """\
apiVersion: mdc.dev/v1alpha1
kind: RolloutPolicy
metadata:
  name: approval
spec:
  steps:
    - setWeight: 30
    - pause: {}
    - setWeight: 60
  analysis:
    interval: 5s
    failureLimit: 1
    minRequests: 5
    checks:
      - name: errors
        metric: errorRate
        max: 0.05
"""


def _mdc_comments(demo: Demo, number: int) -> list[str]:
    assert demo.github is not None
    return [c.body for c in demo.github.comments.get(number, []) if MARKER in c.body]


def _status_file(demo: Demo) -> str:
    shown = subprocess.run(
        ["git", "show", f"mdc/status:models/{RANKER}.yaml"],
        cwd=demo.served / "models.git",
        capture_output=True,
        text=True,
        check=True,
    )
    return shown.stdout


def _table(raw: str) -> dict[str, tuple[Any, ...]]:
    return {r["spec"]["name"]: (r["pid"], r["port"], r["state"]) for r in json.loads(raw)}


def _approval_policy(repo: Path) -> None:
    (repo / "rollouts" / "approval.yaml").write_text(APPROVAL)
    spec = repo / "models" / f"{RANKER}.yaml"
    spec.write_text(spec.read_text().replace("rollout: fast", "rollout: approval"))


def test_killed_mid_canary_resumes_at_the_same_step(
    tmp_path: Path, cleanup: list[Controller]
) -> None:
    with Demo(tmp_path / "demo") as demo:
        demo.setup(prepare=_approval_policy)
        assert demo.github is not None
        config, router_port = mdc_config(
            tmp_path, demo, githubRepository="acme/models", githubApiUrl=demo.github.url
        )
        env = {**os.environ, "MDC_GITHUB_TOKEN": demo.github.token}
        controller = Controller(config, tmp_path / "controller.log", env)
        cleanup.append(controller)
        controller.start()
        demo.hook_url = controller.url() + "/webhook"
        for model in ("fraud-scorer", RANKER):
            _wait(
                lambda m=model: (controller.status(m) or {}).get("phase") == "Healthy",
                240,
                f"{model} healthy",
            )
        traffic = Traffic(
            f"http://127.0.0.1:{router_port}/rank", ranker_request, version_classifier(demo.work)
        ).start()
        number = demo.open_pr("ranker-v2", "search-ranker 2026.11.2", _bump("2026.11.2", "v2.json"))
        _wait(lambda: _mdc_comments(demo, number), 30, "plan comment")
        demo.merge("ranker-v2")
        paused = _wait(
            lambda: (row := controller.status(RANKER)) and row["phase"] == "Paused" and row,
            120,
            "paused for approval",
        )
        assert (paused["step"], paused["weight"]) == ("2/3", 30)
        _wait(lambda: "**Paused**" in _mdc_comments(demo, number)[0], 30, "comment shows the pause")
        releases = sorted(bentoml_processes(tmp_path))
        before = (tmp_path / "state" / "runtime" / "releases.json").read_text()

        # -- killed without warning ----------------------------------------------------
        controller.kill()
        killed_at = time.time()
        time.sleep(1)
        controller.start()
        demo.hook_url = controller.url() + "/webhook"
        resumed = _wait(lambda: controller.status(RANKER), 60, "status after restart")
        assert resumed["phase"] == "Paused"
        assert (resumed["step"], resumed["weight"]) == ("2/3", 30)
        assert resumed["gpus"] == paused["gpus"]  # the same GPUs, none leaked or doubled
        assert sorted(bentoml_processes(tmp_path)) == releases  # adopted, not restarted
        after = (tmp_path / "state" / "runtime" / "releases.json").read_text()
        assert _table(after) == _table(before)  # same releases, pids and ports
        # traffic flows again through the same router port, split as before the kill
        time.sleep(4)
        window = traffic.window(time.time() - 3)
        share = window.get("v2", 0) / max(1, sum(window.values()))
        assert 0.15 <= share <= 0.45, window
        assert len(_mdc_comments(demo, number)) == 1  # no duplicate comment
        # the status branch says what happened: resumed, not started again
        recorded = _wait(
            lambda: "Resumed" in (text := _status_file(demo)) and text, 30, "Resumed recorded"
        )
        assert "canary resumed at step 2, weight 30%" in recorded
        assert recorded.count("CanaryStarted") == 1

        # -- a writer approves from the PR -----------------------------------------------
        demo.comment(number, "/mdc resume", TEAM[1])
        done = _wait(
            lambda: (row := controller.status(RANKER)) and row["phase"] == "Healthy" and row,
            120,
            "promoted after the approval",
        )
        assert done["stable"] == "2026.11.2"
        assert len(_mdc_comments(demo, number)) == 1
        replies = [c.body for c in demo.github.comments[number] if "sent for" in c.body]
        assert len(replies) == 1
        assert time.time() - killed_at < 200
        traffic.stop()
        assert controller.stop() == 0


def test_outages_and_a_bad_spec_beside_a_rollout(tmp_path: Path) -> None:
    with Demo(tmp_path / "demo", tick=0.25, poll_interval=1.0) as demo:
        demo.setup()
        demo.start_controller()
        assert demo.reconciler is not None
        assert demo.github is not None
        assert demo.daemon is not None
        for model in ("fraud-scorer", RANKER):
            demo.wait_for(model, lambda s: s.phase is Phase.HEALTHY, 240, show=False)
        fraud = demo.reconciler.runtime.releases
        fraud_pid = next(r.pid for r in fraud.values() if r.spec.model == "fraud-scorer")

        # -- git unreachable for a while: what runs stays, the controller keeps going ------
        demo.stop_git()
        passes = len(demo.passes)
        _wait(lambda: any(p.poll and p.poll.error for p in demo.passes[passes:]), 30, "poll error")
        failing = next(p for p in demo.passes[passes:] if p.poll and p.poll.error)
        assert failing.poll is not None
        assert failing.poll.error is not None
        assert failing.poll.error.reason == "GitUnavailable"
        assert failing.poll.snapshot is not None  # the last good snapshot stays in force
        time.sleep(2)
        for model in ("fraud-scorer", RANKER):
            status = demo.status(model)
            assert status is not None
            assert status.phase is Phase.HEALTHY
        assert httpx.get(demo.daemon.url + "/healthz").status_code == 200
        demo.start_git()

        # -- GitHub failing (5xx, then rate limited) while a PR is planned and rolled out ----
        demo.github.fail_next(503, times=2, method="POST")
        demo.github.fail_next(429, headers={"retry-after": "1"}, method="GET")
        traffic = demo.start_traffic()

        # -- a bad spec in one model, in the same commit that bumps the other ---------------
        def change(repo: Path) -> None:
            _bump("2026.11.2", "v2.json")(repo)
            spec = repo / "models" / "fraud-scorer.yaml"
            spec.write_text(spec.read_text().replace("replicas: 2", "replicas: lots"))

        number = demo.open_pr("two-changes", "search-ranker 2026.11.2; fraud replicas", change)
        _wait(lambda: _mdc_comments(demo, number), 60, "plan comment despite 5xx/429")
        plan = _mdc_comments(demo, number)[0]
        assert "fraud-scorer.yaml" in plan  # the error, with its file
        assert any(
            s["context"] == "mdc/plan" and s["state"] == "failure"
            for s in demo.github.statuses[demo.github.pulls[number].head_sha]
        )
        demo.github.fail_next(503, times=12, method="PATCH")  # a longer outage mid-rollout
        merge = demo.merge("two-changes")
        done = demo.wait_for(
            RANKER,
            lambda s: (
                s.phase is Phase.HEALTHY
                and s.stable is not None
                and s.stable.version == "2026.11.2"
            ),
            180,
            show=False,
        )
        promoted_at = time.time()
        assert done.applied_revision == f"main@sha1:{merge}"
        fraud_status = demo.status("fraud-scorer")
        assert fraud_status is not None
        assert fraud_status.phase is Phase.HEALTHY  # still serving its last good spec
        assert any(c.reason == "SpecInvalid" for c in fraud_status.conditions)
        assert (
            next(r.pid for r in fraud.values() if r.spec.model == "fraud-scorer") == fraud_pid
        )  # untouched
        assert demo.passes[-1].diagnostics  # the error is reported every pass
        # every report reached GitHub in the end, in one comment
        _wait(lambda: "**Healthy**" in _mdc_comments(demo, number)[0], 60, "comment after outage")
        assert len(_mdc_comments(demo, number)) == 1

        def rollout_states() -> list[str]:
            assert demo.github is not None
            return [
                s["state"]
                for s in demo.github.statuses.get(merge, [])
                if s["context"] == "mdc/rollout"
            ]

        _wait(lambda: rollout_states()[-1:] == ["success"], 30, "mdc/rollout success")
        assert rollout_states()[0] == "pending"
        assert len(demo.github.calls("PATCH", r"/issues/comments/")) > 12  # retried
        time.sleep(max(0.0, promoted_at + 3 - time.time()))
        window = traffic.window(promoted_at + 1)
        assert set(window) == {"v2"}, window
        traffic.stop()
