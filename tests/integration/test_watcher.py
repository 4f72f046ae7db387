"""Webhook-driven polling against a real git daemon and the real webhook server:
a burst of pushes coalesces into one immediate fetch; polling stays the fallback."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

from controller.adapters.git.source import GitSource, PollResult, SourcePoller
from controller.adapters.github.webhook import Trigger, WebhookServer
from controller.app.watch import Watcher, push_listener
from tests.gitservers import GitDaemon, run_git
from tests.integration.test_gitsource import commit_change, push_example

pytestmark = pytest.mark.integration
SECRET = b"hook-secret"


def deliver(url: str, ref: str, after: str) -> int:
    body = json.dumps(
        {
            "ref": ref,
            "before": "0" * 40,
            "after": after,
            "forced": False,
            "repository": {"full_name": "acme/specs"},
        }
    ).encode()
    signature = "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()
    headers = {
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": str(uuid.uuid4()),
        "X-Hub-Signature-256": signature,
        "Content-Type": "application/json",
    }
    return httpx.post(url, content=body, headers=headers, timeout=10).status_code


def test_burst_of_pushes_is_one_immediate_fetch(daemon: GitDaemon, tmp_path: Path) -> None:
    work = tmp_path / "work"
    push_example(daemon.url("specs"), work)
    poller = SourcePoller(GitSource(daemon.url("specs"), "main", tmp_path / "state"), interval=60)
    results: list[tuple[float, PollResult]] = []
    changed = threading.Event()

    def on_result(result: PollResult) -> None:
        results.append((time.monotonic(), result))
        if result.changed and len(results) > 1:
            changed.set()

    trigger = Trigger()
    watcher = Watcher(poller, on_result, trigger)
    with WebhookServer(SECRET, push_listener("main", trigger)) as hooks:
        thread = threading.Thread(target=watcher.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not results and time.monotonic() < deadline:
            time.sleep(0.01)
        assert watcher.polls == 1  # the first poll, at start

        # pushes to another branch, and PR-ish noise, wake nothing
        assert deliver(hooks.url, "refs/heads/feature", "a" * 40) == 202
        time.sleep(0.3)
        assert watcher.polls == 1

        sha = commit_change(work, "models/fraud-scorer.yaml", '"1.0.0"', '"1.1.0"', "v1.1")
        run_git("push", "-q", "origin", "HEAD:main", cwd=work)
        sent = time.monotonic()
        codes = [deliver(hooks.url, "refs/heads/main", sha) for _ in range(20)]
        burst = time.monotonic() - sent  # long on a loaded machine: each delivery is a request
        assert codes == [202] * 20
        assert changed.wait(10), "the webhook did not cause a fetch"
        time.sleep(0.5)  # let any trailing poll of the burst happen
        fired = trigger.fired
        polls = watcher.polls
        watcher.stop()
        thread.join(timeout=10)

    first_change = next(at for at, r in results if r.changed and at > sent)
    assert first_change - sent < 2.0  # seconds, not the 60 s poll interval
    assert fired == 20
    # 1 poll at start + the burst coalesced: one fetch per max_settle window of the
    # burst (1 on a quiet machine), plus one when pushes arrived while a poll ran;
    # never one per push
    bound = 1 + (1 + int(burst / watcher.max_settle)) + 1
    assert 2 <= polls <= min(bound, 20), (polls, burst)
    changed_results = [r for _, r in results if r.changed]
    assert changed_results[-1].snapshot is not None
    assert changed_results[-1].snapshot.commit == sha


def test_polling_is_the_fallback_without_webhooks(daemon: GitDaemon, tmp_path: Path) -> None:
    work = tmp_path / "work"
    push_example(daemon.url("specs"), work)
    poller = SourcePoller(GitSource(daemon.url("specs"), "main", tmp_path / "state"), interval=0.2)
    seen: list[PollResult] = []
    watcher = Watcher(poller, seen.append)
    thread = threading.Thread(target=watcher.run, kwargs={"max_polls": 50}, daemon=True)
    thread.start()
    time.sleep(0.3)
    sha = commit_change(work, "models/fraud-scorer.yaml", '"1.0.0"', '"1.1.0"', "v1.1")
    run_git("push", "-q", "origin", "HEAD:main", cwd=work)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any(
        r.snapshot and r.snapshot.commit == sha for r in seen
    ):
        time.sleep(0.05)
    watcher.stop()
    thread.join(timeout=10)
    assert any(r.snapshot and r.snapshot.commit == sha and r.changed for r in seen)
