"""`mdc watch` end to end: the real console script, a real git daemon, a real
webhook delivery. A push shows up in seconds, not at the next poll."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import selectors
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.gitservers import GitDaemon, free_port, make_bare_repo, run_git
from tests.integration.test_gitsource import commit_change, push_example

pytestmark = pytest.mark.integration
MDC = Path(sys.executable).with_name("mdc")


def read_json_line(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    assert proc.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    if not selector.select(timeout):
        raise AssertionError(f"no output from mdc watch in {timeout}s")
    line = proc.stdout.readline()
    assert line, "mdc watch exited"
    result: dict[str, Any] = json.loads(line)
    return result


def test_watch_follows_a_push_announced_by_webhook(tmp_path: Path) -> None:
    base = tmp_path / "served"
    base.mkdir()
    make_bare_repo(base, "specs")
    with GitDaemon(base) as daemon:
        work = tmp_path / "work"
        first = push_example(daemon.url("specs"), work)
        port = free_port()
        env = os.environ | {"MDC_WEBHOOK_SECRET": "s3cret"}
        with subprocess.Popen(
            [
                str(MDC),
                "watch",
                daemon.url("specs"),
                "--format",
                "json",
                "--interval",
                "300",
                "--state-dir",
                str(tmp_path / "state"),
                "--webhook",
                f"127.0.0.1:{port}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        ) as proc:
            try:
                start = read_json_line(proc, 20)
                assert start["revision"] == f"main@sha1:{first}"
                assert start["valid"] is True
                assert start["counts"] == {"models": 2, "pools": 1, "policies": 2}

                second = commit_change(work, "models/fraud-scorer.yaml", "gpu: 1", "gpu: -1", "bad")
                run_git("push", "-q", "origin", "HEAD:main", cwd=work)
                body = json.dumps(
                    {
                        "ref": "refs/heads/main",
                        "before": first,
                        "after": second,
                        "forced": False,
                        "repository": {"full_name": "acme/specs"},
                    }
                ).encode()
                signature = "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
                sent = time.monotonic()
                answer = httpx.post(
                    f"http://127.0.0.1:{port}/webhook",
                    content=body,
                    timeout=10,
                    headers={
                        "X-GitHub-Event": "push",
                        "X-GitHub-Delivery": str(uuid.uuid4()),
                        "X-Hub-Signature-256": signature,
                        "Content-Type": "application/json",
                    },
                )
                assert answer.status_code == 202
                update = read_json_line(proc, 10)
                assert time.monotonic() - sent < 5  # the poll interval is 300 s
                assert update["revision"] == f"main@sha1:{second}"
                assert update["changed"] is True
                assert update["valid"] is False
                assert any("spec.resources.gpu: must be > 0" in e for e in update["errors"])
            finally:
                proc.send_signal(signal.SIGINT)
                proc.wait(timeout=10)
            assert proc.returncode == 0


def test_watch_once_exit_codes(tmp_path: Path) -> None:
    bare = make_bare_repo(tmp_path, "specs")
    push_example(str(bare), tmp_path / "work")
    ok = subprocess.run(
        [str(MDC), "watch", str(bare), "--once", "--state-dir", str(tmp_path / "s")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert "changed  Ready" in ok.stdout
    down = subprocess.run(
        [
            str(MDC),
            "watch",
            "git://127.0.0.1:9/none.git",
            "--once",
            "--state-dir",
            str(tmp_path / "t"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert down.returncode == 1
    assert "GitUnavailable" in down.stdout
    bad = subprocess.run(
        [str(MDC), "watch", "ext::sh -c id", "--once"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 2
    assert "refused" in bad.stderr
