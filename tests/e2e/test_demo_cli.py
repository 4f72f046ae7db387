"""``mdc demo`` as a user runs it: interrupted with Ctrl-C (or stopped with SIGTERM)
while releases run, it stops every process it started (releases, the router, git
daemon), removes a workspace it made itself, and exits 130."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.bentos import bentoml_processes

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


@pytest.mark.parametrize(
    ("sig", "own_dir"),
    [(signal.SIGINT, True), (signal.SIGTERM, False)],
    ids=["ctrl-c-with-dir", "sigterm-in-a-temporary-workspace"],
)
def test_an_interrupted_demo_stops_everything_it_started(
    tmp_path: Path, sig: signal.Signals, own_dir: bool
) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    workspace = tmp_path / "demo" if own_dir else temp
    log = tmp_path / "demo.log"
    args = ["--dir", str(workspace)] if own_dir else []
    with log.open("wb") as out:
        demo = subprocess.Popen(
            [sys.executable, "-m", "controller", "demo", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "TMPDIR": str(temp)},
        )
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and "search-ranker: Healthy" not in log.read_text():
            assert demo.poll() is None, log.read_text()
            time.sleep(0.2)
        assert bentoml_processes(workspace), "releases should be running by now"
        running = bentoml_processes(workspace, "cmdline")
        assert running, "git daemon and the router should be running"
        demo.send_signal(sig)
        assert demo.wait(timeout=60) == 130, log.read_text()
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    assert "interrupted" in log.read_text()
    assert bentoml_processes(workspace) == []
    assert bentoml_processes(workspace, "cmdline") == []  # git daemon, the router
    if not own_dir:
        assert [p.name for p in temp.iterdir() if p.name.startswith("mdc-demo-")] == []
