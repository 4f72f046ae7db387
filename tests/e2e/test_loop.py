"""The whole loop, as ``mdc demo`` tells it, with assertions at every step: a real
``git daemon``, real bentos and ``bentoml serve`` releases, the real controller
(reconciler, embedded router, webhook server), and the fake GitHub.

Deploy from git; a PR's plan on the PR; the merge canaried under traffic whose
split is measured from the answers, then promoted; a bad version rolled back
within one interval, pinned, a revert PR opened; every step recorded on the
status branch and in exactly one comment per PR."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from controller.app.manual import Pins
from controller.core.canary import CanaryPhase, state_from_dict
from controller.core.status import Phase, parse_model_status
from controller.demo import RANKER, TEAM, Demo, _bump, git
from tests.bentos import bentoml_processes

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]
MARKER = "<!-- mdc:plan -->"


def _mdc_comments(demo: Demo, number: int) -> list[str]:
    assert demo.github is not None
    return [c.body for c in demo.github.comments.get(number, []) if MARKER in c.body]


def _statuses(demo: Demo, sha: str, context: str) -> list[str]:
    assert demo.github is not None
    return [s["state"] for s in demo.github.statuses.get(sha, []) if s["context"] == context]


def _wait(check: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"not true within {timeout}s")


def test_the_week_of_a_team(tmp_path: Path) -> None:
    with Demo(tmp_path / "demo", tick=0.25) as demo:
        demo.setup()
        demo.start_controller()
        assert demo.daemon is not None
        assert demo.reconciler is not None
        assert demo.github is not None

        # -- 1. deploy from git ------------------------------------------------------------
        for model in ("fraud-scorer", RANKER):
            demo.wait_for(model, lambda s: s.phase is Phase.HEALTHY, 240, show=False)
        assert httpx.get(demo.daemon.url + "/healthz").status_code == 200
        assert httpx.get(demo.daemon.url + "/readyz").status_code == 200
        traffic = demo.start_traffic()

        # -- 2. a PR: its plan, the merge, a canary walked under traffic, promotion ---------
        number = demo.open_pr("ranker-v2", "search-ranker 2026.11.2", _bump("2026.11.2", "v2.json"))
        _wait(lambda: _mdc_comments(demo, number))
        plan = _mdc_comments(demo, number)[0]
        assert "can be applied" in plan
        assert "search-ranker" in plan
        assert "v2.json" in plan
        head = demo.github.pulls[number].head_sha
        _wait(lambda: _statuses(demo, head, "mdc/plan") == ["success"])

        # a reader cannot steer the rollout from the PR
        demo.comment(number, "/mdc promote", TEAM[0])
        _wait(
            lambda: any(
                "needs write access" in c.body for c in demo.github.comments.get(number, [])
            )
        )

        merge = demo.merge("ranker-v2")
        seen: dict[int, float] = {}

        def walk(status: object) -> bool:
            assert hasattr(status, "weight")
            if status.weight and status.weight not in seen:  # type: ignore[attr-defined]
                seen[status.weight] = time.time()  # type: ignore[attr-defined]
            return (
                status.phase is Phase.HEALTHY  # type: ignore[attr-defined]
                and status.stable.version == "2026.11.2"  # type: ignore[attr-defined]
            )

        promoted = demo.wait_for(RANKER, walk, 180, show=False)
        promoted_at = time.time()
        assert sorted(seen) == [20, 60]
        # the split the clients measured, step by step
        at20 = traffic.window(seen[20] + 1, seen[60])
        at60 = traffic.window(seen[60] + 1, promoted_at - 1)
        share20 = at20.get("v2", 0) / sum(at20.values())
        share60 = at60.get("v2", 0) / sum(at60.values())
        assert 0.10 <= share20 <= 0.30, at20
        assert 0.50 <= share60 <= 0.70, at60
        assert at20.get("errors", 0) == 0
        time.sleep(2)
        after = traffic.window(promoted_at + 1)
        assert set(after) == {"v2"}, after  # all traffic on the new version
        assert promoted.applied_revision == f"main@sha1:{merge}"
        assert promoted.pull_request == number
        # one comment on the PR: the plan, then the rollout with each interval's verdict
        _wait(lambda: "Healthy" in _mdc_comments(demo, number)[0])
        comments = _mdc_comments(demo, number)
        assert len(comments) == 1
        assert comments[0].startswith(MARKER)
        assert "can be applied" in comments[0]  # the plan is kept above the rollout
        assert "<!-- mdc:rollout -->" in comments[0]
        assert comments[0].count("✅") >= 4  # 2 checks x 2 intervals at least
        rollout = _statuses(demo, merge, "mdc/rollout")
        assert rollout[0] == "pending"
        assert rollout[-1] == "success"

        # -- 3. a bad version: rolled back within an interval, pinned, a revert PR ----------
        bad = demo.open_pr(
            "ranker-v3", "search-ranker 2026.11.3", _bump("2026.11.3", "v3.json", probe=True)
        )
        bad_merge = demo.merge("ranker-v3")
        rolled = demo.wait_for(RANKER, lambda s: s.phase is Phase.ROLLED_BACK, 180, show=False)
        rolled_at = time.time()
        assert rolled.stable is not None
        assert rolled.stable.version == "2026.11.2"
        assert rolled.canary_state is not None
        state = state_from_dict(rolled.canary_state)
        assert state.phase is CanaryPhase.ROLLED_BACK
        assert "errorRate" in state.reason
        failed = [v for v in state.verdicts if v.outcome == "fail"]
        assert len(failed) == 1  # failureLimit 0: the first failed interval
        assert Pins(demo.reconciler.state_dir).get(RANKER) == state.spec_hash
        time.sleep(2)
        since = traffic.window(rolled_at + 0.5)
        assert set(since) == {"v2"}, since  # nothing reaches the failed canary
        _wait(lambda: _statuses(demo, bad_merge, "mdc/rollout")[-1:] == ["failure"])
        _wait(lambda: "RolledBack" in _mdc_comments(demo, bad)[0])
        assert "❌" in _mdc_comments(demo, bad)[0]
        assert len(_mdc_comments(demo, bad)) == 1
        reverts = [p for p in demo.github.pulls.values() if p.head.startswith("mdc/revert-")]
        assert len(reverts) == 1
        reverted = demo.github.repo.files(reverts[0].head)[f"models/{RANKER}.yaml"]
        assert b'version: "2026.11.2"' in reverted
        assert f"#{bad}".encode() in (reverts[0].body or "").encode()

        # nothing changed in git: the pinned spec is not tried again
        passes = len(demo.passes)
        _wait(lambda: len(demo.passes) > passes + 8)
        status = demo.status(RANKER)
        assert status is not None
        assert status.phase is Phase.ROLLED_BACK

        # -- 4. the record: status branch, status API, metrics, dashboard ------------------
        bare = demo.served / "models.git"
        log = git("log", "--format=%s", "mdc/status", cwd=bare).splitlines()
        assert log[0] == "search-ranker: RolledBack"
        assert "search-ranker: Healthy" in log
        assert any(
            re.fullmatch(r"search-ranker: Progressing step \d/4, weight 60%", s) for s in log
        )
        recorded = parse_model_status(
            "models/search-ranker.yaml",
            git("show", f"mdc/status:models/{RANKER}.yaml", cwd=bare).encode(),
        )
        assert recorded.phase is Phase.ROLLED_BACK
        assert {h.release for h in recorded.gpus} == {"stable"}  # the canary's GPUs are free
        trailers = git("log", "-1", "--format=%(trailers)", "mdc/status", cwd=bare)
        assert f"Source-Revision: main@sha1:{bad_merge}" in trailers
        rows = httpx.get(demo.daemon.url + "/api/status").json()["models"]
        assert {r["model"]: r["phase"] for r in rows} == {
            "fraud-scorer": "Healthy",
            RANKER: "RolledBack",
        }
        metrics = httpx.get(demo.daemon.url + "/metrics").text
        values = {
            (s.name, *sorted(s.labels.items())): s.value
            for family in text_string_to_metric_families(metrics)
            for s in family.samples
        }
        assert values["mdc_model_phase", ("model", RANKER), ("phase", "RolledBack")] == 1
        assert values["mdc_canary_verdicts_total", ("model", RANKER), ("outcome", "fail")] == 1
        assert values[("mdc_reconcile_passes_total",)] >= 1
        held = ("mdc_gpus_held", ("pool", "shared-a100"), ("release", "stable"), ("team", "fraud"))
        assert values[held] == 2
        page = httpx.get(demo.daemon.url + "/").text
        assert "search-ranker" in page
        assert "RolledBack" in page
        traffic.stop()

        # -- 5. a model removed from git: shown in the plan, then pruned -------------------
        fraud = [r for r in demo.reconciler.runtime.list() if r.spec.model == "fraud-scorer"]
        assert [r.state for r in fraud] == ["ready", "ready"]  # replicas: 2
        gone = demo.open_pr(
            "retire-fraud",
            "Retire fraud-scorer",
            lambda repo: (repo / "models" / "fraud-scorer.yaml").unlink(),
        )
        _wait(lambda: _mdc_comments(demo, gone))
        assert re.search(r"\| fraud-scorer \| removed \|", _mdc_comments(demo, gone)[0])
        demo.merge("retire-fraud")
        _wait(lambda: demo.status("fraud-scorer") is None, 60)
        for replica in fraud:
            assert demo.reconciler.runtime.releases[replica.spec.name].state == "stopped"
        ledger = demo.reconciler.ledgers["shared-a100"][1]
        assert not [a for a in ledger.allocations if a.startswith("fraud-scorer/")]
        _wait(
            lambda: (
                "fraud-scorer: removed (pruned)"
                in git("log", "--format=%s", "-3", "mdc/status", cwd=bare)
            )
        )
        files = git("ls-tree", "--name-only", "-r", "mdc/status", cwd=bare).split()
        assert "models/fraud-scorer.yaml" not in files
        assert f"models/{RANKER}.yaml" in files
    # everything the demo started is gone
    assert bentoml_processes(tmp_path) == []
