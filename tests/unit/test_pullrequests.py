"""What mdc says on pull requests: commands it hears, the states it reports, the
rollout section of its comment, and how it behaves while GitHub is down."""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path

import pytest

from controller.adapters.github.webhook import IssueCommentEvent
from controller.app.reporting import (
    MONITOR_MARKER,
    PREVIEW_MARKER,
    ROLLOUT_MARKER,
    PullRequests,
    monitor_state,
    parse_command,
    render_monitor,
    render_rollout,
    rollout_state,
)
from controller.core.canary import CanaryPhase, CanaryState, CheckResult, IntervalVerdict, Outcome
from controller.core.preview import PreviewReport, PreviewWish
from controller.core.status import Condition, HistoryEntry, ModelStatus, Phase, Release
from controller.errors import TransientError


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
        ("/mdc preview stop", "preview stop"),
        ("/mdc preview restart now", "preview restart"),
        ("/mdc preview", None),
        ("/mdc preview delete", None),
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
    # a pipe in a message cannot break the table: escaped, so the row keeps its 4 cells
    assert r"max 0.05 \| x" in row
    assert len(re.findall(r"(?<!\\)\|", row)) == 5


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


def _running(name: str, monitor: dict[str, object] | None, pull: int = 7) -> ModelStatus:
    stable = Release("2", name=f"{name}/abc", revision=f"main@sha1:{'b' * 40}", pull_request=pull)
    return ModelStatus(name, Phase.HEALTHY, stable=stable, monitor=monitor)


@pytest.mark.parametrize(
    ("records", "state", "words"),
    [
        ({"a": None, "b": None}, "success", ["a, b: objectives met, no drift"]),
        ({"a": {"breached": {"latency": "T"}}, "b": None}, "failure", ["a latency breached"]),
        (
            {"a": {"drifting": {"score": "T"}}, "b": {"breached": {"errors": "T"}}},
            "failure",
            ["a score drifting", "b errors breached"],
        ),
    ],
)
def test_monitor_state_covers_every_model_of_the_merge(
    records: dict[str, dict[str, object] | None], state: str, words: list[str]
) -> None:
    got, description = monitor_state([_running(n, r) for n, r in records.items()])
    assert got == state
    for word in words:
        assert word in description


def test_render_monitor_says_what_needs_attention() -> None:
    bad = _running(
        "a", {"breached": {"latency": "2026-11-28T05:00:00Z"}, "drifting": {"score": "T"}}
    )
    bad = bad.with_event(HistoryEntry("T1", "ObjectiveBreached", "latency: latencyP99 0.4"))
    text = render_monitor([_running("b", None), bad])
    assert text.startswith(MONITOR_MARKER)
    assert text.index("`a`") < text.index("`b`")
    assert "objective **latency** breached since 2026-11-28T05:00:00Z" in text
    assert "predictions (`score`) drifting since T" in text
    assert "ObjectiveBreached: latency: latencyP99 0.4" in text
    assert "`b` 2: ✅" in text


class RecordingGitHub:
    """Records statuses and comment bodies; fails while ``down``."""

    def __init__(self) -> None:
        self.down = False
        self.statuses: list[tuple[str, str, str]] = []
        self.bodies: dict[int, str] = {}

    def set_status(self, sha: str, context: str, state: str, *_: object) -> None:
        if self.down:
            raise TransientError("GitHub 503", reason="GitHubUnavailable", retry_after=1)
        self.statuses.append((sha, context, state))

    def find_comment(self, number: int, marker: str) -> object:
        body = self.bodies.get(number)
        return None if body is None else type("C", (), {"body": body})()

    def upsert_comment(self, number: int, body: str, marker: str) -> None:
        self.bodies[number] = body


def test_monitor_reports_only_changes_and_keep_the_plan() -> None:
    now = [0.0]
    github = RecordingGitHub()
    github.bodies[7] = "<!-- mdc:plan -->\nthe plan\n\n<!-- mdc:rollout -->\nrolled out"
    reporter = PullRequests(github, branch="main", clock=lambda: now[0])  # type: ignore[arg-type]
    calm = _running("a", None)
    reporter.on_status(None, calm)
    assert github.statuses == []  # nothing changed: nothing posted
    breached = _running("a", {"breached": {"latency": "T"}})
    github.down = True
    reporter.on_status(calm, breached)
    assert github.statuses == []
    github.down = False
    now[0] += 10
    reporter.drain()  # kept, sent once GitHub is back
    assert [s[1:] for s in github.statuses] == [("mdc/monitor", "failure")]
    assert github.statuses[0][0] == "b" * 40
    body = github.bodies[7]
    assert body.startswith("<!-- mdc:plan -->\nthe plan")
    assert "rolled out" in body
    assert "objective **latency** breached" in body
    reporter.on_status(breached, breached)
    assert len(github.statuses) == 1  # the same record: not again
    reporter.on_status(breached, calm)
    assert [s[2] for s in github.statuses] == ["failure", "success"]
    assert github.bodies[7].count(MONITOR_MARKER) == 1


def test_a_restarted_reporter_does_not_post_again_what_was_recorded() -> None:
    github = RecordingGitHub()
    reporter = PullRequests(github, branch="main")  # type: ignore[arg-type]
    breached = _running("a", {"breached": {"latency": "T"}})
    reporter.bind(type("R", (), {"statuses": {"a": breached}})())
    reporter.on_status(breached, breached)
    assert github.statuses == []  # reported by the controller before the restart
    reporter.on_status(breached, _running("a", None))
    assert [s[2] for s in github.statuses] == ["success"]  # the recovery is news


def _preview(model: str, state: str, head: str = "c" * 40) -> PreviewReport:
    section = f"#### Preview of `{model}`: {state}"
    return PreviewReport(9, head, model, state, f"{model} {state}", section)


def test_previews_share_one_comment_section_and_the_worst_state_is_the_heads() -> None:
    now = [0.0]
    github = RecordingGitHub()
    github.bodies[9] = "<!-- mdc:plan -->\nthe plan"
    reporter = PullRequests(github, branch="main", clock=lambda: now[0])  # type: ignore[arg-type]
    reporter.on_preview(_preview("a", "success"))
    reporter.on_preview(_preview("b", "pending"))
    assert [s[1:] for s in github.statuses] == [
        ("mdc/preview", "success"),
        ("mdc/preview", "pending"),  # b's pending is the head's: not all judged yet
    ]
    github.down = True
    reporter.on_preview(_preview("b", "failure"))
    github.down = False
    now[0] += 10
    reporter.drain()  # kept while GitHub was down, sent after
    assert github.statuses[-1] == ("c" * 40, "mdc/preview", "failure")
    body = github.bodies[9]
    assert body.startswith("<!-- mdc:plan -->\nthe plan")
    assert body.count(PREVIEW_MARKER) == 1
    assert "Preview of `a`: success" in body
    assert "Preview of `b`: failure" in body
    assert "Preview of `b`: pending" not in body
    reporter.on_preview(_preview("a", "success", head="d" * 40))  # a new head: its own
    assert github.statuses[-1] == ("d" * 40, "mdc/preview", "success")
    assert "Preview of `b`" not in github.bodies[9]


class _Wishes:
    """The controller as the reporter sees it: only the preview wishes matter here."""

    def __init__(self, state_dir: Path) -> None:
        self.statuses: dict[str, ModelStatus] = {}
        self.state_dir = state_dir
        self.wishes: list[PreviewWish] = []

    def wish_preview(self, wish: PreviewWish) -> None:
        self.wishes.append(wish)


class _Commenting(RecordingGitHub):
    def __init__(self, writers: set[str]) -> None:
        super().__init__()
        self.writers = writers
        self.comments: list[tuple[int, str]] = []

    def can_write(self, user: str) -> bool:
        return user in self.writers

    def comment(self, number: int, body: str) -> None:
        self.comments.append((number, body))


@pytest.mark.parametrize(
    ("user", "body", "wish"),
    [
        ("ann", "/mdc preview stop", "stop"),
        ("ann", "thanks\n/mdc preview restart", "restart"),
        ("eve", "/mdc preview stop", None),  # no write access: refused, nothing sent
        ("ann", "/mdc preview", None),  # not a command
    ],
)
def test_preview_commands_need_write_access(
    tmp_path: Path, user: str, body: str, wish: str | None
) -> None:
    github = _Commenting({"ann"})
    reporter = PullRequests(github, branch="main")  # type: ignore[arg-type]
    controller = _Wishes(tmp_path)
    reporter.reconciler = controller  # type: ignore[assignment]
    reporter(IssueCommentEvent("created", 9, True, body, user, "o/r"))
    reporter.drain()
    assert [(w.number, w.command, w.who) for w in controller.wishes] == (
        [(9, wish, f"{user} (GitHub)")] if wish else []
    )
    if wish is not None:
        assert github.comments == [
            (
                9,
                f"@{user}: `preview {wish}` sent for this pull "
                "request's previews; mdc acts on its next pass.",
            )
        ]
    elif user == "eve":
        assert "needs write access" in github.comments[0][1]
    else:
        assert github.comments == []
