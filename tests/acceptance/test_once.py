"""``mdc run --once`` against a bare clone on disk, from a fresh directory and a
fresh state: both models deployed and Healthy, one line each on stdout with a URL
that answers the model's real request, what was left serving named on stderr;
``mdc status --repo``, ``mdc logs`` and a manual verb (refused: no controller runs)
from the same directory; then ``mdc down`` stops everything it left."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from tests.acceptance.conftest import MODELS, RANKER, SCORER, Workspace, ask, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

VERSIONS = {SCORER: "1.0.0", RANKER: "2026.11.1"}


def _excerpt(log: str, count: int = 30) -> str:
    """The lines of a log that matter to a user, for a failure's message."""
    wanted = ("mdc run:", "Traceback", "Error", " WARNING ", " ERROR ")
    kept = [line[:300] for line in log.splitlines() if any(w in line for w in wanted)]
    return "\n".join(kept[-count:])


def test_run_once_deploys_both_models_and_down_stops_them(tmp_path: Path) -> None:
    with Workspace(tmp_path) as ws:
        ws.bare_clone(ws.cwd / "specs.git")
        began = time.monotonic()
        once = ws.mdc(
            "run",
            "--repo",
            "specs.git",
            "--once",
            "--timeout",
            "120",
            "--listen",
            "127.0.0.1:0",
            timeout=240,
        )
        took = time.monotonic() - began
        print(f"mdc run --once: exit {once.returncode} after {took:.1f}s")
        assert once.returncode == 0, (once.stdout, _excerpt(once.stderr))

        # stdout: NAME PHASE VERSION URL, tab-separated, one line per model
        rows = [line.split("\t") for line in once.stdout.splitlines()]
        assert [row[0] for row in rows] == sorted(MODELS), once.stdout
        endpoints = {}
        for name, phase, version, url in rows:
            assert phase == "Healthy", once.stdout
            assert version == VERSIONS[name], once.stdout
            assert url.startswith("http://127.0.0.1:"), once.stdout
            endpoints[name] = url
        for name, url in endpoints.items():
            ask(name, url)

        # stderr: each model's URL when its route opened; last, what keeps serving
        lines = once.stderr.splitlines()
        for name, url in endpoints.items():
            assert f"mdc run: {name}: routed at {url}" in lines, once.stderr[-3000:]
        last = lines[-1]
        assert last.startswith("mdc run: stopped; left serving for the next controller on "), last
        assert ".mdc-state" in last
        assert "the router (pid " in last
        assert "2 routes" in last
        for name in MODELS:
            assert f"{name}/" in last, last
        assert "mdc down" in last

        # still serving with no controller; status from the status branch on disk
        for name, url in endpoints.items():
            ask(name, url)
        status = ws.mdc("status", "--repo", "specs.git")
        assert status.returncode == 0, status.stderr
        for name, url in endpoints.items():
            row = next(line for line in status.stdout.splitlines() if line.startswith(name))
            assert "Healthy" in row.split(), status.stdout
            assert row.split()[-1] == url, status.stdout
        as_json = ws.mdc("status", "--repo", "specs.git", "--format", "json")
        assert as_json.returncode == 0, as_json.stderr
        models = {r["model"]: r for r in json.loads(as_json.stdout)["models"]}
        assert {name: r["endpoint"] for name, r in models.items()} == endpoints
        assert {name: r["phase"] for name, r in models.items()} == dict.fromkeys(MODELS, "Healthy")

        logs = ws.mdc("logs", SCORER)
        assert logs.returncode == 0, logs.stderr
        assert "path=/score" in logs.stdout, logs.stdout[-2000:]  # BentoML's access log

        refused = ws.mdc("pause", RANKER)
        assert refused.returncode == 1, (refused.stdout, refused.stderr)
        assert "no controller runs" in refused.stderr

        # mdc down: the router and the releases stop; the URLs stop answering
        assert ws.leftovers(), "nothing was left serving after --once"
        down = ws.mdc("down", timeout=120)
        assert down.returncode == 0, down.stderr
        assert "stopped the router" in down.stdout, down.stdout
        for name, url in endpoints.items():

            def refused_now(url: str = url) -> bool:
                try:
                    httpx.post(url + "/", timeout=2)
                except httpx.TransportError:
                    return True
                return False

            wait_for(refused_now, 10, f"{name}'s URL {url} refusing after mdc down")
        wait_for(lambda: not ws.leftovers(), 15, "no process of the workspace after mdc down")
