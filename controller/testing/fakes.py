"""Fakes of the controller's adapters, for unit tests of the reconciler and the
rollout driver: a runtime whose releases are records, a router whose counters a
test fills, a packager that builds nothing, a reporter that remembers what it
was told, a Prometheus that answers what a test set, and a status branch whose
pushes a test can break.

Each fake implements its seam's Protocol (:class:`~controller.adapters.runtime.base.Runtime`,
:class:`~controller.adapters.router.base.Router`,
:class:`~controller.adapters.packaging.Builder`,
:class:`~controller.app.reporting.Reporter`,
:class:`~controller.adapters.metrics.QueryProvider`) and keeps a log of the calls it
took, so a test asserts on what the controller did, not on how. Time is the
caller's: nothing here reads the clock.

Imported by the tests (``tests/unit/test_reconciler.py``); nothing below the
demo imports it.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from controller.adapters.git.status_branch import PushResult, StatusBranch
from controller.adapters.packaging import BuildResult, Source
from controller.adapters.runtime.base import Event, Release, ReleaseSpec, State
from controller.core.inventory import ClusterNode
from controller.core.preview import PreviewReport
from controller.core.status import ModelStatus
from controller.core.traffic import (
    BUCKETS,
    BackendStats,
    Pair,
    PairingConfig,
    RouteConfig,
    Sample,
    SamplingConfig,
)
from controller.errors import PermanentError, Reason, TransientError
from controller.spec.identity import planned_bento_tag
from controller.spec.kinds import Model
from controller.spec.tree import Tree

__all__ = [
    "FakeBuilder",
    "FakePrometheus",
    "FakeReporter",
    "FakeRouter",
    "FakeRuntime",
    "FlakyStatusBranch",
]


class FakeRuntime:
    """Releases as records. A started release is ``starting`` until the next
    :meth:`tick`, then ``ready`` -- or ``failed`` when its model is in
    :attr:`never_ready`. A new fake given an old one's :attr:`releases` is a
    restarted controller's runtime that adopted them."""

    def __init__(self, releases: Mapping[str, Release] | None = None) -> None:
        self._releases: dict[str, Release] = dict(releases or {})
        self.started: list[str] = []  # release names, in order
        self.stopped: list[str] = []
        self.drains: list[tuple[str, float]] = []  # (release, drain seconds) per stop
        self.never_ready: dict[str, str] = {}  # model -> why its releases fail
        self._port = max((r.port for r in self._releases.values()), default=20000)
        self._events: list[Event] = [
            Event(name, "Adopted", "from the fake's table") for name in self._releases
        ]

    @property
    def releases(self) -> Mapping[str, Release]:
        return self._releases

    def start(self, spec: ReleaseSpec) -> Release:
        current = self._releases.get(spec.name)
        if current is not None and current.state not in (State.STOPPED, State.FAILED):
            return current
        self._port += 1
        release = Release(spec, spec.port or self._port, None, State.STARTING, 0.0)
        self._releases[spec.name] = release
        self.started.append(spec.name)
        self._events.append(Event(spec.name, "Started", spec.bento))
        return release

    def stop(self, name: str, drain: float = 10.0) -> Release | None:
        current = self._releases.get(name)
        if current is None or current.state is State.STOPPED:
            return current
        stopped = replace(current, state=State.STOPPED)
        self._releases[name] = stopped
        self.stopped.append(name)
        self.drains.append((name, drain))
        return stopped

    def stop_all(self, drain: float = 10.0) -> None:
        for name in list(self._releases):
            self.stop(name, drain)

    def tick(self, now: float | None = None) -> list[Event]:
        for name, release in list(self._releases.items()):
            if release.state is not State.STARTING:
                continue
            why = self.never_ready.get(release.spec.model)
            state = State.FAILED if why is not None else State.READY
            self._releases[name] = replace(release, state=state, since=now or 0.0, reason=why or "")
            self._events.append(Event(name, "Failed" if why else "Ready", why or ""))
        events, self._events = self._events, []
        return events

    def cluster_nodes(self) -> list[ClusterNode] | None:
        return None

    def fail(self, name: str, reason: str) -> None:
        """The release ``name`` fails (its node was lost, say)."""
        self._releases[name] = replace(self._releases[name], state=State.FAILED, reason=reason)

    def running(self) -> set[str]:
        """Names of the releases not stopped or failed."""
        return {
            n for n, r in self._releases.items() if r.state not in (State.STOPPED, State.FAILED)
        }


def _bucket(latency: float) -> int:
    return bisect.bisect_left(BUCKETS, latency)


class FakeRouter:
    """Routes as records; :meth:`serve` sends traffic through the current split and
    counts it per backend, as the embedded router's counters would."""

    def __init__(self) -> None:
        self.routes: dict[str, RouteConfig] = {}
        self.configured: list[tuple[str, RouteConfig]] = []  # every configure(), in order
        self.stats: dict[str, dict[str, BackendStats]] = {}
        self.closed = False
        self._port = 30000
        self.queued: dict[str, int] = {}  # address -> requests in flight (what in_flight says)
        self.oldest: dict[str, float] = {}  # address -> seconds its oldest request waited
        self.pairing: dict[str, PairingConfig | None] = {}  # model -> as pair() set it
        self.paired: dict[str, list[Pair]] = {}  # model -> pairs the test made, not drained

    def add_model(self, model: str, port: int = 0) -> str:
        if model not in self.stats:
            self._port += 1
            self.stats[model] = {"stable": BackendStats(), "canary": BackendStats()}
            self.routes[model] = RouteConfig()
        return f"http://127.0.0.1:{port or self._port}"

    def configure(self, model: str, config: RouteConfig) -> None:
        if model not in self.stats:
            raise KeyError(f"no route for {model}")
        self.configured.append((model, config))
        self.routes[model] = config

    def snapshot(self, model: str) -> dict[str, BackendStats]:
        return {k: v.copy() for k, v in self.stats[model].items()}

    def sample(self, model: str, config: SamplingConfig | None) -> None:
        return None

    def samples(self, model: str) -> list[Sample]:
        return []

    def pair(self, model: str, config: PairingConfig | None) -> None:
        self.pairing[model] = config
        if config is None:
            self.paired.pop(model, None)

    def pairs(self, model: str) -> list[Pair]:
        """What the test put in :attr:`paired` while pairing was on (drained)."""
        if self.pairing.get(model) is None:
            return []
        return self.paired.pop(model, [])

    def in_flight(self, model: str) -> dict[str, int]:
        return dict(self.queued)

    def waiting(self, model: str) -> dict[str, float]:
        return dict(self.oldest)

    def close(self) -> None:
        self.closed = True

    def shutdown(self) -> None:
        self.closed = True

    def serve(
        self,
        model: str,
        requests: int,
        *,
        canary_errors: float = 0.0,
        stable_errors: float = 0.0,
        latency: float = 0.01,
        canary_share_hangs: bool = False,
    ) -> dict[str, int]:
        """``requests`` requests split by the route's weight; a share of each side's
        answers are 500s (``canary_share_hangs``: the canary answers none of its
        share). Returns how many each backend got."""
        route = self.routes[model]
        if route.stable is None and route.canary is None:
            return {"stable": 0, "canary": 0}
        to_canary = 0
        if route.canary is not None:
            to_canary = requests if route.stable is None else requests * route.weight // 100
        split = {"stable": requests - to_canary, "canary": to_canary}
        for backend, rate in (("stable", stable_errors), ("canary", canary_errors)):
            count = split[backend]
            if not count or (backend == "canary" and canary_share_hangs):
                continue  # a hanging canary answers none (they wait: see ``waiting``)
            stats = self.stats[model][backend]
            errors = round(count * rate)
            stats.codes[500] = stats.codes.get(500, 0) + errors
            stats.codes[200] = stats.codes.get(200, 0) + count - errors
            stats.buckets[_bucket(latency)] += count
            stats.seconds += latency * count
        return split


@dataclass
class FakeBuilder:
    """Builds nothing: the bento tag is the one mdc plans for the model's tree.
    A model in :attr:`failures` fails to build (a permanent error)."""

    failures: dict[str, str] = field(default_factory=dict)
    builds: list[str] = field(default_factory=list)  # bento tags, in order

    def build(self, model: Model, tree: Tree, source: Source | None = None) -> BuildResult:
        if model.name in self.failures:
            raise PermanentError(
                f"{model.name}: {self.failures[model.name]}", reason=Reason.BUILD_FAILED
            )
        tag = planned_bento_tag(model, tree)
        self.builds.append(tag)
        return BuildResult(model.name, f"{model.name}:{model.version}", tag, built=True)


@dataclass
class FakeReporter:
    """Remembers every status it was told of; ``pulls`` maps a commit to its PR."""

    pulls: dict[str, int] = field(default_factory=dict)
    statuses: list[tuple[ModelStatus | None, ModelStatus]] = field(default_factory=list)
    drains: int = 0
    removed: list[str] = field(default_factory=list)  # models, as on_removed was told
    force_pushes: list[tuple[str, str]] = field(default_factory=list)  # (previous, current)
    failing: tuple[str, str] | None = None  # what fault() says (reports not delivered)
    previews: list[PreviewReport] = field(default_factory=list)  # as on_preview was told

    def pull_request_for(self, commit: str) -> int | None:
        return self.pulls.get(commit)

    def on_status(self, previous: ModelStatus | None, status: ModelStatus) -> None:
        self.statuses.append((previous, status))

    def on_removed(self, status: ModelStatus) -> None:
        self.removed.append(status.name)

    def on_force_push(self, previous: str, current: str) -> None:
        self.force_pushes.append((previous, current))

    def on_preview(self, report: PreviewReport) -> None:
        self.previews.append(report)

    def drain(self) -> None:
        self.drains += 1

    def fault(self) -> tuple[str, str] | None:
        return self.failing


@dataclass
class FakePrometheus:
    """Answers each query from :attr:`values`; one in :attr:`down` raises as an
    unreachable server would."""

    values: dict[str, float | None] = field(default_factory=dict)
    down: bool = False
    queries: list[str] = field(default_factory=list)

    def value(self, promql: str) -> float | None:
        self.queries.append(promql)
        if self.down:
            raise TransientError("prometheus: connection refused", retry_after=1.0)
        return self.values.get(promql)


class FlakyStatusBranch(StatusBranch):
    """A real status branch whose pushes fail while :attr:`broken` says why."""

    broken: str | None = None
    attempts: int = 0

    def push(self) -> PushResult:
        self.attempts += 1
        if self.broken is not None:
            raise TransientError(self.broken, reason=Reason.STATUS_PUSH_FAILED, retry_after=1.0)
        return super().push()
