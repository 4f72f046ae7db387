"""Previews of pull requests on mirrored live traffic, through the controller ``mdc
run`` builds (real git daemon, real bentos and ``bentoml serve`` releases, the
router, the fake GitHub): a PR whose model flips a tenth of its labels gets
``mdc/preview`` failure naming the agreement; closing it stops its preview and
gives its GPUs back; a PR whose model answers like the stable gets success with
agreement >= 0.99; merging that head makes the preview the canary -- the same
process, nothing built twice; the requests' sensitive field is never kept."""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from controller.adapters.runtime.base import State
from controller.core.allocation import ReleaseKind
from controller.core.status import Phase
from controller.demo import Demo
from tests.e2e.load import SECRET, Load, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]


SERVICE = """\
# {note}
import bentoml


@bentoml.service
class Svc:
    @bentoml.api
    def predict(self, x: float, user: str = "") -> dict:
        label = "high" if x > 0 else "low"
        if {flip} and int(abs(x) * 1e6) % 10 == 0:  # a tenth of the answers flipped
            label = "low" if label == "high" else "high"
        return {{"label": label, "user": user}}
"""

MODEL = """\
apiVersion: mdc.dev/v1alpha1
kind: Model
metadata:
  name: labeler
spec:
  version: "{version}"
  team: search
  artifact:
    path: artifacts/search-ranker/v1.json
  service: services/labeler:Svc
  resources:
    gpu: 0.25
  pool: shared-a100
  rollout: quick
  preview:
    field: label
    kind: label
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
  preview:
    share: 100
    minPairs: 150
    minAgreement: 0.99
    maxLatencyRatio: 5
"""


def _write(repo: Path, version: str, flip: bool) -> None:
    note = f"version {version}"  # each version its own bento
    (repo / "services" / "labeler.py").write_text(SERVICE.format(flip=flip, note=note))
    (repo / "models" / "labeler.yaml").write_text(MODEL.format(version=version))


def _prepare(repo: Path) -> None:
    for old in ("fraud-scorer", "search-ranker"):
        (repo / "models" / f"{old}.yaml").unlink()
    (repo / "rollouts" / "quick.yaml").write_text(QUICK)
    _write(repo, "1", flip=False)


def _recorded(demo: Demo) -> dict[str, Any]:
    """The last preview of labeler recorded on the status branch."""
    out = subprocess.run(
        ["git", "-C", str(demo.served / "models.git"), "show", "mdc/status:previews/labeler.yaml"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return yaml.safe_load(out) or {}


def test_previews_judge_prs_on_mirrored_traffic_and_a_merged_one_becomes_the_canary(
    tmp_path: Path,
) -> None:
    out = io.StringIO()
    with Demo(tmp_path / "demo", out=out, tick=0.25, poll_interval=1.0) as demo:
        demo.setup(_prepare)
        demo.start_controller()
        reconciler, github = demo.reconciler, demo.github
        assert reconciler is not None
        assert github is not None
        demo.wait_for("labeler", lambda s: s.phase is Phase.HEALTHY, 240, show=False)
        load = Load(reconciler.routes["labeler"] + "/predict", seed=7)
        try:

            def preview_statuses(sha: str) -> list[dict[str, Any]]:
                return [s for s in github.statuses.get(sha, []) if s["context"] == "mdc/preview"]

            def settled(sha: str) -> dict[str, Any] | None:
                done = [s for s in preview_statuses(sha) if s["state"] != "pending"]
                return done[-1] if done else None

            def preview_gpus() -> float:
                return sum(
                    ledger.team_preview_gpus("search") for _, ledger in reconciler.ledgers.values()
                )

            # -- a PR that flips a tenth of the labels: failure, with the figure ---------
            flip = demo.open_pr("flip", "labeler 3: new thresholds", lambda r: _write(r, "3", True))
            flip_head = github.pulls[flip].head_sha
            failed = wait_until(lambda: settled(flip_head), 150, "the flipped preview judged")
            assert failed["state"] == "failure", failed
            assert (
                "agreement 0.8" in failed["description"]
                or "agreement 0.9" in (failed["description"])
            ), failed
            assert preview_gpus() == 0.25  # its own quota line: a quarter GPU
            preview = reconciler.previews.running["labeler"]
            assert preview.release is not None
            flipped_release = preview.release.name
            comment = demo.plan_comment(flip)
            assert "## mdc preview" in comment
            assert "Preview of `labeler`" in comment
            assert SECRET not in comment

            # -- closed: the preview stops and its GPUs are given back -------------------
            demo.close_pr("flip")
            wait_until(lambda: "labeler" not in reconciler.previews.running, 30, "flip stopped")
            release = reconciler.runtime.releases.get(flipped_release)
            assert release is None or release.state is State.STOPPED
            assert preview_gpus() == 0.0
            record = wait_until(lambda: _recorded(demo).get("pullRequest") == flip, 30, "recorded")
            record = _recorded(demo)
            assert record["state"] == "failure"
            assert record["head"] == flip_head
            assert 0.8 <= record["comparison"]["agreement"] <= 0.95
            assert SECRET not in yaml.safe_dump(record)

            # -- a PR that answers like the stable: success ------------------------------
            same = demo.open_pr("same", "labeler 2: same answers", lambda r: _write(r, "2", False))
            same_head = github.pulls[same].head_sha
            passed = wait_until(lambda: settled(same_head), 150, "the same preview judged")
            assert passed["state"] == "success", passed
            preview = reconciler.previews.running["labeler"]
            comparison = preview.pairs.comparison()
            assert comparison.agreement is not None
            assert comparison.agreement >= 0.99
            assert comparison.compared >= 150
            assert preview.release is not None
            running = reconciler.runtime.releases[preview.release.name]
            pid, name, bento = running.pid, preview.release.name, preview.release.bento
            builds = reconciler.moves.builds
            assert builds is not None

            # -- merged: the preview is the canary, the same process, built once ---------
            demo.merge("same")
            status = demo.wait_for(
                "labeler",
                lambda s: (
                    (s.canary is not None and s.canary.version == "2")
                    or (s.stable is not None and s.stable.version == "2")
                ),
                60,
                show=False,
            )
            release_of_2 = status.canary or status.stable
            assert release_of_2 is not None
            assert release_of_2.name == name
            assert release_of_2.bento == bento
            assert reconciler.runtime.releases[name].pid == pid
            assert "labeler" not in reconciler.previews.running
            assert builds.built[bento] == 1  # built for the preview, found for the canary
            assert all(count == 1 for count in builds.built.values()), builds.built
            assert preview_gpus() == 0.0
            done = demo.wait_for(
                "labeler",
                lambda s: (
                    s.phase is Phase.HEALTHY and s.stable is not None and s.stable.version == "2"
                ),
                120,
                show=False,
            )
            assert done.stable is not None
            assert reconciler.runtime.releases[name].pid == pid
            assert reconciler.book.allocation("labeler", ReleaseKind.STABLE) is not None

            # -- what people see: mdc preview (live and from git), the dashboard ----------
            daemon = demo.daemon
            assert daemon is not None
            mark = len(out.getvalue())
            assert (
                demo.mdc("preview", "labeler", "--controller", daemon.url, "--format", "json") == 0
            )
            live = json.loads(out.getvalue()[mark:])
            assert [(p["pullRequest"], p["state"]) for p in live["previews"]] == [
                (same, "success"),
                (flip, "failure"),
            ]
            mark = len(out.getvalue())
            assert demo.mdc("preview", "labeler", "--repo", demo.remote) == 0
            text = out.getvalue()[mark:]
            assert f"#{same} 2 at {same_head[:12]}: success" in text
            assert "agreement 1.000" in text
            page = httpx.get(daemon.url + "/", timeout=10).text
            assert 'data-preview="labeler"' in page
        finally:
            load.stop()
        assert load.codes.count(200) == len(load.codes)  # clients never saw a preview
