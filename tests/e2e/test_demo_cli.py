"""``mdc demo`` as a user runs it: interrupted with Ctrl-C while releases run, it
stops every process it started (releases, git daemon) and exits 130."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.bentos import bentoml_processes

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def test_ctrl_c_stops_everything_the_demo_started(tmp_path: Path) -> None:
    workspace = tmp_path / "demo"
    log = tmp_path / "demo.log"
    with log.open("wb") as out:
        demo = subprocess.Popen(
            [sys.executable, "-m", "controller", "demo", "--dir", str(workspace)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and "search-ranker: Healthy" not in log.read_text():
            assert demo.poll() is None, log.read_text()
            time.sleep(0.2)
        assert bentoml_processes(workspace), "releases should be running by now"
        assert bentoml_processes(workspace / "served", "cmdline"), "git daemon should be running"
        demo.send_signal(signal.SIGINT)
        assert demo.wait(timeout=60) == 130, log.read_text()
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    assert "interrupted" in log.read_text()
    assert bentoml_processes(workspace) == []
    assert bentoml_processes(workspace / "served", "cmdline") == []
