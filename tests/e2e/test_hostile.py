"""A hostile spec beside a healthy rollout: the controller (real git daemon,
bentos, releases, router) reads a repository where one model's files are built
to crash or stall it -- a duration with a trailing newline, a NaN GPU count, a
YAML merge-key bomb -- while another model is rolled out under traffic. The
rollout completes, the hostile model shows a condition naming its file, and
``/readyz`` and ``/metrics`` answer within 100 ms throughout (95% of answers;
none over a second)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest

from controller.core.status import Phase
from controller.demo import RANKER, Demo, _bump

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

EVIL_POLICY = """\
apiVersion: mdc.dev/v1alpha1
kind: RolloutPolicy
metadata: {name: evil-policy}
spec:
  steps: [{setWeight: 50}, {analysis: {intervals: 1}}]
  analysis:
    interval: "5s\\n"
    checks: [{name: errors, metric: errorRate, max: .nan}]
"""

EVIL_MODEL = """\
apiVersion: mdc.dev/v1alpha1
kind: Model
metadata: {name: evil}
spec:
  version: "1"
  team: search
  artifact: {path: artifacts/search-ranker/v1.json}
  service: services/search_ranker.py:SearchRanker
  resources: {gpu: .nan}
  pool: shared-a100
  rollout: evil-policy
"""


def merge_bomb(width: int = 20, depth: int = 5) -> str:
    """Each level merges the one before it ``width`` times: expanded, width**depth keys."""
    lines = ["a0: &a0 {k: v}"]
    for level in range(1, depth):
        refs = ", ".join(f"*a{level - 1}" for _ in range(width))
        lines.append(f"a{level}: &a{level}\n  <<: [{refs}]")
    lines.append(f"top:\n  <<: [{', '.join(f'*a{depth - 1}' for _ in range(width))}]")
    return "\n".join(lines) + "\n"


def test_a_hostile_spec_does_not_stop_a_healthy_rollout(tmp_path: Path) -> None:
    def prepare(repo: Path) -> None:
        (repo / "rollouts" / "evil.yaml").write_text(EVIL_POLICY)
        (repo / "models" / "evil.yaml").write_text(EVIL_MODEL)
        (repo / "models" / "bomb.yaml").write_text(merge_bomb())

    took: dict[str, list[float]] = {"/readyz": [], "/metrics": []}
    stop = threading.Event()

    def probe(url: str) -> None:
        with httpx.Client(timeout=5.0) as client:
            while not stop.is_set():
                for path, seen in took.items():
                    started = time.monotonic()
                    client.get(url + path)
                    seen.append(time.monotonic() - started)
                stop.wait(0.05)

    with Demo(tmp_path / "demo", tick=0.25) as demo:
        demo.setup(prepare)
        demo.start_controller()
        assert demo.daemon is not None
        prober = threading.Thread(target=probe, args=(demo.daemon.url,), daemon=True)
        prober.start()
        try:
            demo.wait_for(RANKER, lambda s: s.phase is Phase.HEALTHY, 240, show=False)
            demo.start_traffic()
            demo.open_pr("v2", "search-ranker 2026.11.2", _bump("2026.11.2", "v2.json"))
            demo.merge("v2")
            promoted = demo.wait_for(
                RANKER,
                lambda s: (
                    s.phase is Phase.HEALTHY
                    and s.stable is not None
                    and s.stable.version == "2026.11.2"
                ),
                240,
                show=False,
            )
            assert promoted.stable is not None
            assert demo.reconciler is not None
            evil = demo.reconciler.statuses.get("evil")
            assert evil is not None, sorted(demo.reconciler.statuses)
            assert evil.phase is not Phase.HEALTHY
            assert any(c.reason == "SpecInvalid" for c in evil.conditions), evil.conditions
            last = demo.reconciler.last
            assert last is not None
            said = " | ".join(d.render() for d in last.diagnostics)
            for hostile in ("models/bomb.yaml", "models/evil.yaml", "rollouts/evil.yaml"):
                assert hostile in said, said
        finally:
            stop.set()
            prober.join(5)
    for path, seen in took.items():
        seen.sort()
        p95, worst = seen[int(0.95 * (len(seen) - 1))], seen[-1]
        print(f"{path}: {len(seen)} answers, p95 {p95 * 1e3:.0f} ms, slowest {worst * 1e3:.0f} ms")
        # never held by a pass parsing hostile input (a bomb held it for 24 s); the
        # 5% tail is left to a shared CI machine's scheduling
        assert p95 < 0.1, (path, p95)
        assert worst < 1.0, (path, worst)
