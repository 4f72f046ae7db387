"""What mdc says on pull requests: commands it hears, the states it reports, the
rollout section of its comment, and how it behaves while GitHub is down."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from controller.canary import CanaryPhase, CanaryState, CheckResult, IntervalVerdict, Outcome
from controller.errors import TransientError
from controller.pullrequests import (
    ROLLOUT_MARKER,
    PullRequests,
    parse_command,
    render_rollout,
    rollout_state,
)
from controller.status import Condition, ModelStatus, Phase, Release


@pytest.mark.parametrize(
    ("body", "command"),
    [
        ("/mdc promote", "promote"),
        ("  /mdc abort  ", "abort"),
        ("looks good\n/mdc resume\nthanks", "resume"),
        ("/mdc retry please", "retry"),
        ("/mdc pause", "pause"),
        ("/mdc destroy", None),
        ("/mdcpromote", None),
        ("please /mdc promote", None),  # only a line that starts with it
        ("", None),
        ("/MDC promote", None),
    ],
)
def test_parse_command(body: str, command: str | None) -> None:
    assert parse_command(body) == command


@pytest.mark.parametrize(
    ("phase", "state"),
    [
        (Phase.HEALTHY, "success"),
        (Phase.ROLLED_BACK, "failure"),
        (Phase.STALLED, "failure"),
        (Phase.DEGRADED, "error"),
        (Phase.PROGRESSING, "pending"),
        (Phase.PAUSED, "pending"),
        (Phase.WAITING, "pending"),
        (Phase.PENDING, "pending"),
    ],
)
def test_rollout_state(phase: Phase, state: str) -> None:
    assert rollout_state(ModelStatus("m", phase)) == state


def _state(outcome: Outcome) -> dict[str, object]:
    verdict = IntervalVerdict(
        1_800_000_000.0,
        outcome,
        20,
        (
            CheckResult("errors", outcome, 0.2, "errorRate 0.2 > max 0.05 | x"),
            CheckResult("latency", Outcome.NO_DATA, None, "no data"),
        ),
    )
    state = CanaryState("h", CanaryPhase.STEPPING, 1, 20, verdicts=(verdict,), reason="r1")
    data: dict[str, object] = json.loads(json.dumps(asdict(state)))
    return data


def test_render_rollout_tables_each_interval() -> None:
    status = ModelStatus(
        "search-ranker",
        Phase.PROGRESSING,
        canary=Release("2"),
        step=2,
        steps=4,
        weight=20,
        conditions=(Condition("GPUs", False, "WaitingForGPUs", "no room"),),
        canary_state=_state(Outcome.FAIL),
    )
    text = render_rollout([status])
    assert text.startswith(ROLLOUT_MARKER)
    assert "`search-ranker` 2: **Progressing**, step 2/4, weight 20%" in text
    assert "WaitingForGPUs: no room" in text
    row = next(line for line in text.splitlines() if line.startswith("| 0"))
    assert "| 20% | fail |" in row
    assert "errors ❌" in row
    assert "latency …" in row
    assert "max 0.05 / x" in row  # a pipe in a message cannot break the table


class FlakyGitHub:
    """Enough of GitHubReporter for the reporter's bookkeeping: fails while ``down``."""

    def __init__(self) -> None:
        self.down = True
        self.calls = 0
        self.statuses: list[tuple[str, str]] = []

    def set_status(self, sha: str, context: str, state: str, *_: object) -> None:
        self.calls += 1
        if self.down:
            raise TransientError("GitHub 503", reason="GitHubUnavailable", retry_after=1)
        self.statuses.append((sha, state))


def test_reports_are_kept_while_github_is_down_and_sent_after() -> None:
    now = [100.0]
    github = FlakyGitHub()
    reporter = PullRequests(github, branch="main", clock=lambda: now[0])  # type: ignore[arg-type]
    sha = "a" * 40
    first = ModelStatus("m", Phase.PROGRESSING, attempted_revision=f"main@sha1:{sha}")
    reporter.on_status(None, first)
    assert github.calls == 1
    later = ModelStatus("m", Phase.HEALTHY, attempted_revision=f"main@sha1:{sha}")
    reporter.on_status(first, later)
    reporter.drain()
    assert github.calls == 1  # left alone while quiet: the pass is not stalled on GitHub
    github.down = False
    now[0] += 10
    reporter.drain()  # no reconciler bound: the kept status itself is sent
    assert github.statuses == [(sha, "success")]
    reporter.on_status(later, later)
    assert len(github.statuses) == 1  # the same phase and step: not reported again
