"""`mdc pool`: the planned picture from specs alone, the recorded one from the
status branch (with GPU-hours), and NVML's absence reported, not hidden."""

from __future__ import annotations

import json
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from controller.adapters.git.source import GitSource
from controller.adapters.git.status_branch import StatusBranch
from controller.cli.main import EXIT_OK, main
from controller.core.status import GPUHold, ModelStatus, Phase, render
from tests.conftest import EXAMPLE_REPO
from tests.gitservers import make_bare_repo, run_git
from tests.integration.test_gitsource import push_example

pytestmark = pytest.mark.integration


def pool_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, object]:
    assert main(["pool", *argv, "--format", "json"]) == EXIT_OK
    data: dict[str, object] = json.loads(capsys.readouterr().out)
    return data


def test_planned_pool_of_the_example(capsys: pytest.CaptureFixture[str]) -> None:
    (report,) = pool_json(capsys, "--repo", str(EXAMPLE_REPO))["pools"]  # type: ignore[misc]
    assert report["holdings"] == "planned"
    teams = {t["team"]: t for t in report["teams"]}
    assert teams["fraud"]["held"] == 2.0  # two replicas of one GPU
    assert teams["fraud"]["gpuHoursPerDay"] == 48.0
    assert teams["search"]["held"] == 0.25  # 10Gi on a 40Gi GPU, the smallest that holds it
    assert report["free"] == 5.75
    assert report["stranded"] == {"gpus": 0.75, "on": 1}
    replicas = [
        g["node"] for g in report["gpus"] if any(h["model"] == "fraud-scorer" for h in g["held"])
    ]
    assert sorted(replicas) == ["gpu-node-a", "gpu-node-b"]  # spread over nodes
    assert {g["source"] for g in report["gpus"]} == {"declared"}

    assert main(["pool", "--repo", str(EXAMPLE_REPO)]) == EXIT_OK
    text = capsys.readouterr().out
    assert "gpu-node-b  [FFFFFFFF][SS......][........][........]" in text
    assert "F fraud  S search  . free" in text


def test_recorded_pool_from_the_status_branch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    remote = make_bare_repo(tmp_path, "remote")
    push_example(str(remote), tmp_path / "author")
    two_hours_ago = datetime.fromtimestamp(time.time() - 7200, UTC).isoformat()
    status = ModelStatus(
        "fraud-scorer",
        Phase.PROGRESSING,
        team="fraud",
        gpus=(
            GPUHold(
                "gpu-node-a", "declared-shared-a100-gpu-node-a-0", 1.0, "stable", two_hours_ago
            ),
            GPUHold(
                "gpu-node-b", "declared-shared-a100-gpu-node-b-0", 1.0, "stable", two_hours_ago
            ),
            GPUHold(
                "gpu-node-b", "declared-shared-a100-gpu-node-b-1", 1.0, "canary", two_hours_ago
            ),
        ),
        gpu_hours={"stable": 10.0},
    )
    writer = StatusBranch(GitSource(str(remote), "main", tmp_path / "state"))
    writer.commit({"models/fraud-scorer.yaml": render(status)}, "fraud-scorer: Progressing", {})
    assert writer.push().error is None
    repo = tmp_path / "clone"  # an operator's clone: the status is origin/mdc/status there
    run_git("clone", "-q", str(remote), repo)

    (report,) = pool_json(capsys, "--repo", str(repo))["pools"]  # type: ignore[misc]
    assert report["holdings"] == "recorded"
    fraud = next(t for t in report["teams"] if t["team"] == "fraud")
    assert fraud["held"] == 3.0
    assert fraud["borrowed"] == 0.0  # 3 held, 3 guaranteed
    assert fraud["stableHours"] == pytest.approx(14.0, abs=0.01)  # 10 + 2 GPUs x 2 h
    assert fraud["canaryHours"] == pytest.approx(2.0, abs=0.01)
    assert report["free"] == 5.0


def test_nvml_node_without_a_driver_is_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = tmp_path / "specs"
    shutil.copytree(EXAMPLE_REPO, repo)
    pool = repo / "pools" / "shared-a100.yaml"
    pool.write_text(pool.read_text().replace("discovery: Declared", "discovery: NVML", 1))
    monkeypatch.setenv("MDC_NODE_NAME", "gpu-node-a")
    (report,) = pool_json(capsys, "--repo", str(repo))["pools"]  # type: ignore[misc]
    (problem,) = report["disagreements"]
    assert "node gpu-node-a: discovery is NVML but" in problem
    assert "NVML library not found" in problem
    assert "using the 4 declared GPUs" in problem
    assert report["declared"] == 8


def test_a_pool_from_the_cluster_is_planned_and_explained(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = tmp_path / "specs"
    shutil.copytree(EXAMPLE_REPO, repo)
    pool = repo / "pools" / "shared-a100.yaml"
    text = pool.read_text()
    start, end = text.index("  nodes:"), text.index("  quotas:")
    listed = (
        "  cluster:\n    discovery: NVML\n    nodeSelector:\n"
        "      mdc.dev/gpu-product: NVIDIA A100-SXM4-80GB\n      zone: eu\n"
    )
    pool.write_text(text[:start] + listed + text[end:])
    assert main(["plan", str(repo)]) == EXIT_OK
    out = capsys.readouterr().out
    assert (
        "Pool shared-a100  sharing Fractional, nodes from the cluster "
        "(mdc.dev/gpu-product=NVIDIA A100-SXM4-80GB, zone=eu), GPUs read with NVML"
    ) in out
    assert main(["plan", str(repo), "--format", "json"]) == EXIT_OK
    (planned,) = json.loads(capsys.readouterr().out)["plan"]["pools"]
    assert planned["cluster"] == {
        "discovery": "NVML",
        "nodeSelector": {"mdc.dev/gpu-product": "NVIDIA A100-SXM4-80GB", "zone": "eu"},
    }
    assert planned["nodes"] == []
    (report,) = pool_json(capsys, "--repo", str(repo))["pools"]  # type: ignore[misc]
    (problem,) = report["disagreements"]
    assert "takes its nodes from the cluster" in problem
    assert "pools/shared-a100.yaml" in problem
