"""GitHub reports off the control loop.

A GitHub that does not answer holds each call for the client's timeout (10 s).
The control loop must not wait for that: it ticks canaries, applies weights and
rolls back from the router's counters whatever GitHub does. :class:`Courier`
is the :class:`~controller.app.reporting.Reporter` the loop talks to: it hands
every report (a status, a removal, a force-push, the once-a-pass drain of
webhook events and retries) to one thread of its own, in order, and returns at
once; the reporter behind it (:class:`~controller.app.reporting.PullRequests`)
does the GitHub calls there.

What the reporter reads of the controller, it reads as the loop handed it over
(:class:`ControllerView`): the statuses as they were when the report was
queued, each model's traffic as of the last drain, and the release branch
through a git source of its own (:meth:`GitSource.twin`), so the two threads
never share a libgit2 object or a dict being written.

Which pull request brought a commit is the one question the loop asks and
needs answered: :meth:`Courier.pull_request_for` waits for it at most
``wait`` seconds and otherwise says "not known yet" (None) and keeps the
answer for the next time it is asked (the reconciler asks again while the
rollout's PR is unknown).

Owns the thread. Built by :func:`controller.app.wiring.build_controller`, so
``mdc run``, ``mdc demo`` and the e2e tests report through it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from controller.adapters.git.source import GitSource
from controller.app.reporting import PullRequests, Reported
from controller.core.preview import PreviewReport, PreviewWish
from controller.core.status import ModelStatus
from controller.core.traffic import ObservedTraffic
from controller.errors import MdcError, Reason

__all__ = ["ControllerView", "Courier"]

log = logging.getLogger(__name__)

#: A GitHub call running longer than this shows as a fault (``/readyz``, conditions)
SLOW_SECONDS = 5.0


class ControllerView:
    """The controller as the reporter's thread sees it: what the loop handed over."""

    def __init__(self, reconciler: Reported) -> None:
        self._reconciler = reconciler
        self.current: Mapping[str, ModelStatus] = dict(reconciler.statuses)
        self.observed: Mapping[str, ObservedTraffic] = {}
        source = reconciler.source
        twin = getattr(source, "twin", None)
        self._source: GitSource = twin() if callable(twin) else source

    @property
    def statuses(self) -> Mapping[str, ModelStatus]:
        return self.current

    @property
    def source(self) -> GitSource:
        return self._source

    @property
    def state_dir(self) -> Path:
        return self._reconciler.state_dir

    def traffic(self, now: float) -> Mapping[str, ObservedTraffic]:
        return self.observed

    def wish_preview(self, wish: PreviewWish) -> None:
        self._reconciler.wish_preview(wish)  # a queue: safe from this thread


class Courier:
    """The reporter the loop talks to (see the module docstring)."""

    def __init__(
        self,
        inner: PullRequests,
        *,
        wait: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.inner = inner
        self.wait = wait
        self.clock = clock
        self.view: ControllerView | None = None
        self._reconciler: Reported | None = None
        self._jobs: queue.Queue[tuple[Mapping[str, ModelStatus], Callable[[], None]] | None] = (
            queue.Queue()
        )
        self._lock = threading.Lock()
        self._pulls: dict[str, int | None] = {}
        self._asked: dict[str, threading.Event] = {}
        self._drain_queued = False
        self._busy_since: float | None = None
        self._fault: tuple[str, str] | None = None
        self._thread = threading.Thread(target=self._run, name="mdc-github", daemon=True)
        self._thread.start()

    # -- set up and down ------------------------------------------------------------

    def bind(self, reconciler: Reported) -> None:
        """Report for ``reconciler`` (the reporter reads it through a view)."""
        self._reconciler = reconciler
        self.view = ControllerView(reconciler)
        self.inner.bind(self.view)

    def __call__(self, event: object) -> None:
        """The webhook server's events: the reporter only queues them (thread-safe)."""
        self.inner(event)  # type: ignore[arg-type]

    def close(self, timeout: float = 2.0) -> None:
        """Send what is queued (for at most ``timeout`` seconds), then let go."""
        self._jobs.put(None)
        self._thread.join(timeout)
        self.inner.close()

    # -- the Reporter protocol (the loop's thread): queue, never wait ----------------

    def pull_request_for(self, commit: str) -> int | None:
        with self._lock:
            if commit in self._pulls:
                return self._pulls[commit]
            asked = self._asked.get(commit)
            first = asked is None
            if asked is None:
                asked = self._asked[commit] = threading.Event()
        if first:
            self._put(lambda: self._look_up(commit, asked))
        asked.wait(self.wait if first else 0.0)
        with self._lock:
            return self._pulls.get(commit)

    def on_status(self, previous: ModelStatus | None, status: ModelStatus) -> None:
        self._put(lambda: self.inner.on_status(previous, status))

    def on_removed(self, status: ModelStatus) -> None:
        self._put(lambda: self.inner.on_removed(status))

    def on_force_push(self, previous: str, current: str) -> None:
        self._put(lambda: self.inner.on_force_push(previous, current))

    def on_preview(self, report: PreviewReport) -> None:
        self._put(lambda: self.inner.on_preview(report))

    def drain(self) -> None:
        """Once a pass: the traffic the plan comments size verdict times with, and
        one drain of the reporter queued (not one per pass while GitHub is slow)."""
        if self.view is not None and self._reconciler is not None:
            try:
                self.view.observed = dict(self._reconciler.traffic(time.time()))
            except (RuntimeError, ValueError) as exc:  # a monitor mid-change: next pass
                log.debug("traffic not read this pass: %s", exc)
        with self._lock:
            if self._drain_queued:
                return
            self._drain_queued = True
        self._put(self._drain)

    def fault(self) -> tuple[str, str] | None:
        """The reporter's own fault as of its last report, or a call GitHub has not
        answered for :data:`SLOW_SECONDS` (the reports queue behind it)."""
        busy = self._busy_since
        if busy is not None and self.clock() - busy > SLOW_SECONDS:
            return (
                Reason.GITHUB_UNAVAILABLE,
                f"a GitHub call has not answered for {self.clock() - busy:.0f}s; "
                f"{self._jobs.qsize()} report(s) wait",
            )
        return self._fault

    # -- the courier's thread -------------------------------------------------------

    def _put(self, job: Callable[[], None]) -> None:
        statuses = dict(self._reconciler.statuses) if self._reconciler is not None else {}
        self._jobs.put((statuses, job))

    def _drain(self) -> None:
        with self._lock:
            self._drain_queued = False
        self.inner.drain()

    def _look_up(self, commit: str, asked: threading.Event) -> None:
        try:
            number = self.inner.pull_request_for(commit)
        except MdcError as exc:
            log.warning("which PR brought %s is unknown: %s", commit[:12], exc.message)
            with self._lock:
                self._asked.pop(commit, None)  # asked again next time
        else:
            with self._lock:
                self._pulls[commit] = number
        finally:
            asked.set()

    def _run(self) -> None:
        while True:
            item = self._jobs.get()
            if item is None:
                return
            statuses, job = item
            if self.view is not None:
                self.view.current = statuses
            self._busy_since = self.clock()
            try:
                job()
            except MdcError as exc:
                log.warning("GitHub report failed: %s", exc.message)
            except Exception:  # a bug: logged, the reports go on
                log.exception("GitHub report failed")
            finally:
                self._busy_since = None
            try:
                self._fault = self.inner.fault()
            except Exception:  # pragma: no cover - fault() only reads its own state
                log.exception("reporter fault")
