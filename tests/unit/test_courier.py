"""GitHub off the control loop: the courier hands reports to a thread of its own
and returns at once, whatever GitHub does; the reporter behind it reads the
statuses as they were when each report was queued; a call GitHub does not
answer shows as a fault; the one answer the loop needs (which PR brought a
commit) is waited for briefly, then given when it comes."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest

from controller.app.courier import SLOW_SECONDS, Courier
from controller.app.reporting import PullRequests
from controller.core.status import ModelStatus, Phase
from controller.core.traffic import ObservedTraffic
from controller.errors import Reason


class Stuck:
    """A reporter whose every GitHub call hangs until ``gate`` opens."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.calls: list[tuple[Any, ...]] = []
        self.view: Any = None
        self.closed = False

    def bind(self, view: Any) -> None:
        self.view = view

    def pull_request_for(self, commit: str) -> int | None:
        self.gate.wait(10)
        self.calls.append(("pull", commit))
        return 7

    def on_status(self, previous: ModelStatus | None, status: ModelStatus) -> None:
        self.gate.wait(10)
        self.calls.append(("status", status.name, sorted(self.view.statuses)))

    def on_removed(self, status: ModelStatus) -> None:
        self.gate.wait(10)
        self.calls.append(("removed", status.name))

    def on_force_push(self, previous: str, current: str) -> None:
        self.gate.wait(10)
        self.calls.append(("force-push", current))

    def drain(self) -> None:
        self.gate.wait(10)
        self.calls.append(("drain", dict(self.view.traffic(0.0))))

    def fault(self) -> tuple[str, str] | None:
        return None

    def close(self) -> None:
        self.closed = True

    def __call__(self, event: object) -> None:
        self.calls.append(("event", event))


@dataclass
class Controller:
    statuses: dict[str, ModelStatus] = field(default_factory=dict)
    state_dir: Path = Path("/nonexistent")
    source: Any = None
    observed: dict[str, ObservedTraffic] = field(default_factory=dict)

    def traffic(self, now: float) -> Mapping[str, ObservedTraffic]:
        return self.observed


@dataclass
class Clock:
    now: float = 100.0

    def __call__(self) -> float:
        return self.now


def _courier(wait: float = 0.2) -> tuple[Courier, Stuck, Controller, Clock]:
    inner, controller, clock = Stuck(), Controller(), Clock()
    courier = Courier(cast(PullRequests, inner), wait=wait, clock=clock)
    courier.bind(controller)
    return courier, inner, controller, clock


def _until(check: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not within the time"
        time.sleep(0.01)


def test_the_loop_never_waits_on_a_github_that_does_not_answer() -> None:
    courier, inner, controller, clock = _courier()
    try:
        started = time.monotonic()
        for name in ("a", "b"):
            controller.statuses[name] = ModelStatus(name, Phase.PROGRESSING)
            courier.on_status(None, controller.statuses[name])
        controller.observed = {"a": ObservedTraffic(3.0, 0.0)}
        for _ in range(3):
            courier.drain()  # once a pass: queued once while one waits
        courier.on_force_push("a" * 40, "b" * 40)
        assert time.monotonic() - started < 0.1
        assert courier.fault() is None
        _until(lambda: courier._busy_since is not None)
        clock.now += SLOW_SECONDS + 1
        fault = courier.fault()
        assert fault is not None
        assert fault[0] == Reason.GITHUB_UNAVAILABLE
        assert "has not answered for 6s" in fault[1]
        inner.gate.set()
        _until(lambda: len(inner.calls) == 4)
        assert inner.calls == [
            ("status", "a", ["a"]),  # the statuses as they were when it was queued
            ("status", "b", ["a", "b"]),
            ("drain", {"a": ObservedTraffic(3.0, 0.0)}),
            ("force-push", "b" * 40),
        ]
        _until(lambda: courier.fault() is None)
    finally:
        inner.gate.set()
        courier.close()
    assert inner.closed


def test_which_pr_brought_a_commit_is_waited_for_briefly_then_told_when_known() -> None:
    courier, inner, _, _ = _courier(wait=0.2)
    try:
        started = time.monotonic()
        assert courier.pull_request_for("c" * 40) is None  # GitHub hangs: not known yet
        assert 0.15 < time.monotonic() - started < 1.0
        started = time.monotonic()
        assert courier.pull_request_for("c" * 40) is None  # asked once, not waited again
        assert time.monotonic() - started < 0.05
        inner.gate.set()
        _until(lambda: courier.pull_request_for("c" * 40) == 7)
        assert inner.calls.count(("pull", "c" * 40)) == 1
    finally:
        inner.gate.set()
        courier.close()


def test_a_quick_github_answers_within_the_wait() -> None:
    courier, inner, _, _ = _courier(wait=2.0)
    inner.gate.set()
    try:
        assert courier.pull_request_for("d" * 40) == 7
    finally:
        courier.close()


@pytest.mark.parametrize("broken", [RuntimeError("a bug"), ValueError("another")])
def test_a_report_that_raises_does_not_stop_the_ones_after_it(broken: Exception) -> None:
    courier, inner, _, _ = _courier()
    inner.gate.set()

    def fails(previous: ModelStatus | None, status: ModelStatus) -> None:
        if status.name == "bad":
            raise broken
        inner.calls.append(("status", status.name))

    inner.on_status = fails  # type: ignore[method-assign]
    try:
        courier.on_status(None, ModelStatus("bad", Phase.PROGRESSING))
        courier.on_status(None, ModelStatus("good", Phase.PROGRESSING))
        _until(lambda: ("status", "good") in inner.calls)
    finally:
        courier.close()
