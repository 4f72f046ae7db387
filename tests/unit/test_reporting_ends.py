"""No ``mdc/rollout`` is left pending after its rollout ended, and force-pushes reach the PR.

:class:`PullRequests` is driven directly with :class:`ModelStatus` values, as the reconciler
drives it (its statuses updated first, then ``on_status``, then ``drain``), and reports to
:class:`FakeGitHub` over loopback; the assertions read what the fake recorded per commit.
A controller restart is a new :class:`PullRequests` bound to the same state directory and
the statuses the previous one recorded.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from controller.adapters.github.client import GitHubReporter
from controller.app.commit_statuses import RECORD
from controller.app.reporting import (
    FORCE_PUSH_MARKER,
    MONITOR_MARKER,
    ROLLOUT_MARKER,
    NullReporter,
    PullRequests,
)
from controller.core.pr_plan import MARKER
from controller.core.status import ModelStatus, Phase, Release
from controller.testing import FakeGitHub

REPO = "octo-org/specs"
TOKEN = "ghp_test0123456789abcdefTOKEN"
FRAUD, RANKER = "fraud-scorer", "search-ranker"


@pytest.fixture
def github() -> Iterator[FakeGitHub]:
    with FakeGitHub(REPO, token=TOKEN) as fake:
        yield fake
    assert fake.internal_errors == []


@dataclass
class Source:
    """The release branch's history, as the fake repository holds it."""

    github: FakeGitHub

    def is_descendant(self, new: str, old: str) -> bool:
        return old in self.github.repo.ancestors(new)


@dataclass
class Controller:
    """What PullRequests reads of the reconciler it reports for."""

    state_dir: Path
    source: Source
    statuses: dict[str, ModelStatus] = field(default_factory=dict)


class Harness:
    """One controller's reporter; :meth:`restart` gives the next controller's."""

    def __init__(self, github: FakeGitHub, state_dir: Path) -> None:
        self.github = github
        self.now = 1000.0
        self.controller = Controller(state_dir, Source(github))
        self.clients: list[GitHubReporter] = []
        self.reporter = self._reporter()

    def _reporter(self) -> PullRequests:
        client = GitHubReporter(
            REPO, TOKEN, api_url=self.github.url, sleep=lambda _: None, max_attempts=1
        )
        self.clients.append(client)
        reporter = PullRequests(client, branch="main", clock=lambda: self.now)
        reporter.bind(self.controller)  # type: ignore[arg-type]  # a stand-in source
        return reporter

    def restart(self, statuses: dict[str, ModelStatus] | None = None) -> None:
        """A new controller on the same state directory, with the recorded statuses."""
        recorded = dict(self.controller.statuses if statuses is None else statuses)
        self.controller = Controller(self.controller.state_dir, self.controller.source, recorded)
        self.reporter = self._reporter()

    def report(self, status: ModelStatus) -> None:
        """One pass that changed ``status``: recorded, reported, drained."""
        previous = self.controller.statuses.get(status.name)
        self.controller.statuses[status.name] = status
        self.reporter.on_status(previous, status)
        self.reporter.drain()

    def remove(self, name: str) -> None:
        """A pass that pruned ``name``."""
        self.reporter.on_removed(self.controller.statuses.pop(name))
        self.reporter.drain()

    def later(self, seconds: float = 60.0) -> None:
        self.now += seconds

    def close(self) -> None:
        for client in self.clients:
            client.close()


@pytest.fixture
def harness(github: FakeGitHub, tmp_path: Path) -> Iterator[Harness]:
    made = Harness(github, tmp_path / "state")
    yield made
    made.close()


def rolling(name: str, sha: str, step: int = 1, pull: int | None = None) -> ModelStatus:
    return ModelStatus(
        name,
        Phase.PROGRESSING,
        attempted_revision=f"main@sha1:{sha}",
        canary=Release("2"),
        step=step,
        steps=4,
        weight=20 * step,
        pull_request=pull,
    )


def healthy(name: str, sha: str, pull: int | None = None) -> ModelStatus:
    return ModelStatus(
        name,
        Phase.HEALTHY,
        attempted_revision=f"main@sha1:{sha}",
        applied_revision=f"main@sha1:{sha}",
        stable=Release("2"),
        pull_request=pull,
    )


def rollout(github: FakeGitHub, sha: str) -> list[tuple[str, str]]:
    """(state, description) of each ``mdc/rollout`` set on ``sha``, oldest first."""
    return [
        (s["state"], s["description"])
        for s in github.statuses.get(sha, [])
        if s["context"] == "mdc/rollout"
    ]


def left_pending(github: FakeGitHub) -> list[str]:
    """The commits whose last ``mdc/rollout`` is pending."""
    return [sha for sha in github.statuses if rollout(github, sha)[-1:][0][0] == "pending"]


def record(harness: Harness) -> dict[str, object]:
    data: dict[str, object] = json.loads((harness.controller.state_dir / RECORD).read_text())
    return data


# -- superseded ------------------------------------------------------------------------------


def test_a_commit_superseded_mid_canary_is_ended_and_the_new_one_carries_on(
    github: FakeGitHub, harness: Harness
) -> None:
    first = github.repo.commit({"models/fraud-scorer.yaml": "v2"})
    second = github.repo.commit({"models/fraud-scorer.yaml": "v3"})
    harness.report(rolling(FRAUD, first, step=1))
    harness.report(rolling(FRAUD, first, step=2))
    assert left_pending(github) == [first]
    harness.report(rolling(FRAUD, second, step=1))  # the spec changed again mid-canary
    assert rollout(github, first)[-1] == (
        "error",
        f"{FRAUD}: superseded by {second[:7]} before its rollout ended",
    )
    assert rollout(github, second) == [("pending", f"{FRAUD}: Progressing, step 1/4, weight 20%")]
    harness.report(healthy(FRAUD, second))
    assert rollout(github, second)[-1][0] == "success"
    assert left_pending(github) == []
    assert len(rollout(github, first)) == 3  # ended once, not again
    assert record(harness) == {"commits": {}}


def test_the_same_step_at_a_later_commit_still_ends_the_old_one(
    github: FakeGitHub, harness: Harness
) -> None:
    """A commit that changes another model moves every status's attempted revision, with
    the phase, step and weight unchanged: the rollout's status follows it."""
    first, second = "1" * 40, "2" * 40
    harness.report(rolling(FRAUD, first, step=2))
    harness.report(rolling(FRAUD, second, step=2))
    assert rollout(github, first)[-1][0] == "error"
    assert rollout(github, second) == [("pending", f"{FRAUD}: Progressing, step 2/4, weight 40%")]
    assert left_pending(github) == [second]


def test_a_commit_two_models_roll_out_from_ends_when_the_last_one_leaves(
    github: FakeGitHub, harness: Harness
) -> None:
    merge, later = "a" * 40, "b" * 40
    harness.report(rolling(FRAUD, merge))
    harness.report(rolling(RANKER, merge))
    harness.report(rolling(FRAUD, later))
    assert rollout(github, merge)[-1][0] == "pending"  # the ranker's rollout goes on there
    harness.report(rolling(RANKER, merge, step=2))
    harness.report(rolling(RANKER, later))
    assert rollout(github, merge)[-1] == (
        "error",
        f"{RANKER}: superseded by {later[:7]} before its rollout ended",
    )
    assert left_pending(github) == [later]


def test_a_commit_whose_status_is_final_is_never_touched(
    github: FakeGitHub, harness: Harness
) -> None:
    merge, later = "c" * 40, "d" * 40
    harness.report(rolling(FRAUD, merge))
    harness.report(rolling(RANKER, merge))
    harness.report(healthy(FRAUD, merge))  # the commit's mdc/rollout is final now
    said = rollout(github, merge)
    harness.report(rolling(RANKER, later))
    harness.report(healthy(RANKER, later))
    harness.remove(FRAUD)
    harness.reporter.on_force_push(later, "e" * 40)
    harness.reporter.drain()
    assert rollout(github, merge) == said
    assert said[-1][0] == "success"
    assert left_pending(github) == []


# -- removed ---------------------------------------------------------------------------------


def test_a_model_removed_from_git_ends_its_commit(github: FakeGitHub, harness: Harness) -> None:
    merge = "f" * 40
    harness.report(rolling(FRAUD, merge, pull=None))
    harness.report(rolling(RANKER, "9" * 40))
    harness.remove(FRAUD)
    assert rollout(github, merge)[-1] == (
        "error",
        f"{FRAUD}: removed from git before its rollout ended",
    )
    harness.later()
    harness.reporter.drain()
    assert len(rollout(github, merge)) == 2  # not ended twice, the old report not sent again
    assert left_pending(github) == ["9" * 40]  # the other model's rollout is untouched


# -- force-push ------------------------------------------------------------------------------


def test_a_force_push_ends_the_pushed_away_rollout_and_tells_its_pull_request(
    github: FakeGitHub, harness: Harness
) -> None:
    repo = github.repo
    base = repo.commit({"models/search-ranker.yaml": "v2"})
    pushed = repo.commit({"models/fraud-scorer.yaml": "v2"}, message="Merge #7")
    pull = repo.add_pull("bump-fraud", merged=True, merge_commit_sha=pushed)
    other = repo.add_pull("bump-ranker", merged=True, merge_commit_sha=base)
    repo.add_comment(pull.number, f"{MARKER}\nthe plan of #{pull.number}", user="mdc-bot")
    harness.report(rolling(RANKER, base, pull=other.number))
    harness.report(rolling(FRAUD, pushed, step=2, pull=pull.number))
    comment = github.comments[pull.number][0]
    assert ROLLOUT_MARKER in comment.body
    # the branch is put back on base and a different commit pushed on it
    repo.refs["refs/heads/main"] = base
    current = repo.commit({"models/fraud-scorer.yaml": "v9"})

    harness.reporter.on_force_push(pushed, current)  # before the pass's statuses
    harness.report(rolling(FRAUD, current, step=1, pull=pull.number))
    harness.report(rolling(RANKER, current, step=2, pull=other.number))

    assert rollout(github, pushed)[-1] == (
        "error",
        f"{FRAUD}: force-pushed away (main is at {current[:7]})",
    )
    # a commit still on the branch is not "force-pushed away": its model moved on
    assert rollout(github, base)[-1] == (
        "error",
        f"{RANKER}: superseded by {current[:7]} before its rollout ended",
    )
    assert left_pending(github) == [current]
    assert len(github.comments[pull.number]) == 1  # the same comment, upserted
    body = github.comments[pull.number][0].body
    assert body.startswith(f"{MARKER}\nthe plan of #{pull.number}")
    assert body.index(ROLLOUT_MARKER) < body.index(FORCE_PUSH_MARKER)
    section = body.split(FORCE_PUSH_MARKER, 1)[1]
    assert "## Force-pushed" in section
    assert f"force-pushed from `{pushed[:7]}` to `{current[:7]}`" in section
    assert f"the rollout of `{FRAUD}` at `{pushed[:7]}` ended" in section
    assert "step 1/4" in body.split(ROLLOUT_MARKER, 1)[1]  # the rollout section goes on
    assert FORCE_PUSH_MARKER not in github.comments[other.number][0].body

    # a second force-push adds its line and keeps the first
    again = repo.commit({"models/fraud-scorer.yaml": "v10"})
    repo.refs["refs/heads/main"] = base
    final = repo.commit({"models/fraud-scorer.yaml": "v11"})
    harness.reporter.on_force_push(again, final)
    harness.reporter.drain()
    section = github.comments[pull.number][0].body.split(FORCE_PUSH_MARKER, 1)[1]
    assert section.count("force-pushed from") == 2
    assert f"`{current[:7]}` ended" in section
    assert rollout(github, current)[-1][1].startswith(f"{FRAUD}, {RANKER}: force-pushed away")
    assert left_pending(github) == []


def test_the_force_push_section_survives_the_monitor_and_rollout_sections(
    github: FakeGitHub, harness: Harness
) -> None:
    repo = github.repo
    pushed = repo.commit({"a": "1"})
    pull = repo.add_pull("bump", merged=True, merge_commit_sha=pushed)
    harness.report(rolling(FRAUD, pushed, pull=pull.number))
    current = "0" * 40
    harness.reporter.on_force_push(pushed, current)
    stable = Release("2", revision=f"main@sha1:{pushed}", pull_request=pull.number)
    breached = ModelStatus(
        FRAUD,
        Phase.HEALTHY,
        attempted_revision=f"main@sha1:{current}",
        stable=stable,
        pull_request=pull.number,
        monitor={"breached": {"latency": "T"}},
    )
    harness.report(breached)
    body = github.comments[pull.number][0].body
    assert body.count(FORCE_PUSH_MARKER) == 1
    assert body.index(ROLLOUT_MARKER) < body.index(FORCE_PUSH_MARKER) < body.index(MONITOR_MARKER)
    assert "objective **latency** breached" in body
    assert "**Healthy**" in body.split(ROLLOUT_MARKER, 1)[1]
    assert f"force-pushed from `{pushed[:7]}`" in body


# -- GitHub down -----------------------------------------------------------------------------


def test_an_ending_github_did_not_take_is_sent_on_a_later_drain(
    github: FakeGitHub, harness: Harness
) -> None:
    first, second = "3" * 40, "4" * 40
    harness.report(rolling(FRAUD, first))
    github.fail_next(503, times=3, method="POST", path="/statuses/")
    harness.report(rolling(FRAUD, second))
    assert rollout(github, first)[-1][0] == "pending"  # not taken
    assert rollout(github, second) == []
    harness.reporter.drain()  # quiet: GitHub is left alone a while
    assert rollout(github, first)[-1][0] == "pending"
    for _ in range(4):  # one failed try a drain, then quiet again
        harness.later()
        harness.reporter.drain()
    assert rollout(github, first)[-1] == (
        "error",
        f"{FRAUD}: superseded by {second[:7]} before its rollout ended",
    )
    assert rollout(github, second)[-1][0] == "pending"
    assert left_pending(github) == [second]


def test_a_force_push_note_github_did_not_take_is_posted_later(
    github: FakeGitHub, harness: Harness
) -> None:
    repo = github.repo
    pushed = repo.commit({"a": "1"})
    pull = repo.add_pull("bump", merged=True, merge_commit_sha=pushed)
    harness.report(rolling(FRAUD, pushed, pull=pull.number))
    github.fail_next(502, times=3)
    harness.reporter.on_force_push(pushed, "5" * 40)
    assert FORCE_PUSH_MARKER not in github.comments[pull.number][0].body
    for _ in range(3):
        harness.later()
        harness.reporter.drain()
    assert rollout(github, pushed)[-1][0] == "error"
    assert FORCE_PUSH_MARKER in github.comments[pull.number][0].body
    assert left_pending(github) == []


def test_an_ending_github_can_never_take_is_dropped(github: FakeGitHub, harness: Harness) -> None:
    first, second = "6" * 40, "7" * 40
    harness.report(rolling(FRAUD, first))
    github.fail_next(422, method="POST", path=f"/statuses/{first}")
    harness.report(rolling(FRAUD, second))
    harness.later()
    harness.reporter.drain()
    assert len(github.calls("POST", f"/statuses/{first}")) == 2  # pending, the refused end
    assert record(harness) == {"commits": {second: {"ending": None, "models": {FRAUD: None}}}}


# -- a restarted controller ------------------------------------------------------------------


def test_a_restarted_controller_ends_what_the_previous_one_left_pending(
    github: FakeGitHub, harness: Harness
) -> None:
    first, second, gone = "8" * 40, "9" * 40, "a1" * 20
    harness.report(rolling(FRAUD, first, pull=4))
    harness.report(rolling(RANKER, gone))
    assert record(harness)["commits"] == {
        first: {"ending": None, "models": {FRAUD: 4}},
        gone: {"ending": None, "models": {RANKER: None}},
    }
    assert not list(harness.controller.state_dir.rglob("*.tmp"))
    # the controller stops; the ranker is removed from git while it is down
    recorded = dict(harness.controller.statuses)
    del recorded[RANKER]
    harness.restart(recorded)
    harness.reporter.drain()  # the first pass
    assert rollout(github, gone)[-1] == (
        "error",
        f"{RANKER}: removed from git before its rollout ended",
    )
    assert rollout(github, first)[-1][0] == "pending"
    harness.report(rolling(FRAUD, second))
    assert rollout(github, first)[-1] == (
        "error",
        f"{FRAUD}: superseded by {second[:7]} before its rollout ended",
    )
    assert left_pending(github) == [second]


def test_a_final_report_lost_in_a_restart_is_sent_by_the_next_controller(
    github: FakeGitHub, harness: Harness
) -> None:
    merge = "b2" * 20
    harness.report(rolling(FRAUD, merge))
    github.fail_next(503, method="POST", path="/statuses/")
    harness.report(healthy(FRAUD, merge))  # recorded on the status branch, not on GitHub
    assert rollout(github, merge)[-1][0] == "pending"
    harness.restart()
    harness.later()
    harness.reporter.drain()
    assert rollout(github, merge)[-1] == ("success", f"{FRAUD}: Healthy")
    assert left_pending(github) == []


@pytest.mark.parametrize("left", ["", "{not json", '{"commits": {"abc": {}}}'])
def test_without_a_readable_record_the_pending_statuses_are_taken_as_left_pending(
    github: FakeGitHub, harness: Harness, left: str
) -> None:
    """A state directory from before the record (or a damaged one)."""
    first, second = "c3" * 20, "d4" * 20
    harness.report(rolling(FRAUD, first))
    harness.report(healthy(RANKER, "e5" * 20))
    path = harness.controller.state_dir / RECORD
    if left:
        path.write_text(left)
    else:
        path.unlink()
    harness.restart()
    assert record(harness)["commits"] == {first: {"ending": None, "models": {FRAUD: None}}}
    harness.report(rolling(FRAUD, second))
    assert rollout(github, first)[-1][0] == "error"
    assert len(rollout(github, "e5" * 20)) == 1  # a final status is not taken as pending


def test_the_null_reporter_takes_the_new_calls() -> None:
    null = NullReporter()
    status = rolling(FRAUD, "1" * 40)
    null.on_removed(status)
    null.on_force_push("1" * 40, "2" * 40)
    null.drain()


def test_github_failing_is_a_fault_until_the_kept_reports_are_sent(
    github: FakeGitHub, harness: Harness
) -> None:
    assert harness.reporter.fault() is None
    github.fail_next(503, times=2, method="POST", path="/statuses/")
    harness.report(rolling(FRAUD, "5" * 40))
    fault = harness.reporter.fault()
    assert fault is not None
    reason, message = fault
    assert reason == "GitHubUnavailable"
    assert "GitHub reports of 1 model(s) kept for later" in message
    for _ in range(4):
        harness.later()
        harness.reporter.drain()
    assert harness.reporter.fault() is None
    assert NullReporter().fault() is None
