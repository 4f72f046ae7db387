"""A CPU-only model rolled out end to end (issue 19, item 4): search-ranker asks
for ``cpu``/``memory`` and no GPU; the real controller deploys it, a new version
is canaried to promotion through real releases behind the router, and then the
status holds no GPU, every release process started with no visible GPU (though
the controller itself sees one), and ``mdc pool`` shows it holds nothing.

The real ``git daemon``, bentos, ``bentoml serve`` releases, router and
controller, through :class:`controller.demo.Demo`."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from controller.core.status import Phase
from controller.demo import RANKER, Demo, Traffic, _bump, ranker_request, version_classifier

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

#: One quick step: half the traffic, one interval judged, then promotion.
POLICY = """\
apiVersion: mdc.dev/v1alpha1
kind: RolloutPolicy
metadata:
  name: fast
spec:
  warmup: {timeout: 1m}
  progressDeadline: 3m
  steps:
    - setWeight: 50
    - analysis: {intervals: 1}
  analysis:
    judge: sequential
    interval: 5s
    falseRollback: 1%
    errorRate: {maxIncrease: 5%}
"""


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(
        entry.decode(errors="replace").split("=", 1) for entry in raw.split(b"\0") if b"=" in entry
    )


def _pool(demo: Demo) -> dict[str, Any]:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "controller",
            "pool",
            "--repo",
            str(demo.served / "models.git"),
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def test_a_cpu_only_model_rolls_out_and_holds_no_gpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started = time.monotonic()
    # the controller sees a GPU: a CPU-only release must not inherit it
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")

    def prepare(repo: Path) -> None:
        (repo / "rollouts" / "fast.yaml").write_text(POLICY)
        spec = repo / "models" / f"{RANKER}.yaml"
        text = spec.read_text()
        assert "    gpuMemory: 10Gi\n" in text
        spec.write_text(text.replace("    gpuMemory: 10Gi\n", '    cpu: "500m"\n    memory: 1Gi\n'))

    with Demo(tmp_path / "demo", tick=0.25) as demo:
        demo.setup(prepare)
        demo.start_controller()
        assert demo.reconciler is not None
        first = demo.wait_for(RANKER, lambda s: s.phase is Phase.HEALTHY, 240, show=False)
        assert first.gpus == ()
        url = demo.reconciler.routes[RANKER] + "/rank"
        demo.traffic = traffic = Traffic(
            url, ranker_request, version_classifier(demo.work), rate=30.0
        )
        traffic.start()
        time.sleep(3)

        number = demo.open_pr("v2", "search-ranker 2026.11.2", _bump("2026.11.2", "v2.json"))
        comment = ""
        deadline = time.monotonic() + 60
        while "CPU only" not in comment and time.monotonic() < deadline:
            comment = demo.plan_comment(number)
            time.sleep(0.2)
        row = next(line for line in comment.splitlines() if line.startswith(f"| {RANKER}"))
        assert "0 (CPU only)" in row, comment
        assert "CPU only: a canary holds no GPU" in row, comment

        demo.merge("v2")
        seen_canary = False

        def promoted(status: Any) -> bool:
            nonlocal seen_canary
            assert status.gpus == (), status.gpus  # at every step of the way
            seen_canary = seen_canary or status.canary is not None
            return (
                status.phase is Phase.HEALTHY
                and status.stable is not None
                and status.stable.version == "2026.11.2"
            )

        done = demo.wait_for(RANKER, promoted, 240, show=False)
        assert seen_canary
        assert done.gpus == ()
        assert not any(done.gpu_hours.values())
        assert traffic.window(0).get("v2", 0) > 0  # the new version answered

        # every process of the release started with no GPU in sight
        runtime = demo.reconciler.runtime
        assert done.stable is not None
        releases = [r for n, r in runtime.releases.items() if n.startswith(f"{RANKER}/")]
        serving = [r for r in releases if r.spec.name == done.stable.name]
        assert serving, [r.spec.name for r in releases]
        for release in serving:
            assert release.spec.env["CUDA_VISIBLE_DEVICES"] == ""
            assert release.spec.gpus == ()
            assert release.pid is not None
            assert _environ(release.pid).get("CUDA_VISIBLE_DEVICES") == ""

        # mdc pool, as a user runs it against the remote: the ranker holds nothing
        def recorded() -> dict[str, Any] | None:
            report = _pool(demo)
            (pool,) = report["pools"]
            return pool if pool["holdings"] == "recorded" else None

        deadline = time.monotonic() + 30
        pool = recorded()
        while pool is None and time.monotonic() < deadline:
            time.sleep(0.5)
            pool = recorded()
        assert pool is not None
        held = [h for g in pool["gpus"] for h in g["held"]]
        assert all(h["model"] != RANKER for h in held), held
        assert any(h["model"] == "fraud-scorer" for h in held), held  # the GPU model does
        search = next(t for t in pool["teams"] if t["team"] == "search")
        assert search["held"] == 0
        assert search["stableHours"] == 0
        assert search["canaryHours"] == 0
        ranker = next(m for m in pool["models"] if m["model"] == RANKER)
        assert ranker["held"] == 0
    print(f"\ne2e CPU model: {time.monotonic() - started:.0f}s")
