"""Git I/O off the control loop: the fetcher and the status pusher.

A black-holed git remote blocks a libgit2 call for its timeout (60 s). The
control loop must not wait for that: it ticks canaries, applies weights and
rolls back from the router's counters whatever git does. So ``mdc run`` reads
and writes git in two threads of their own, each over its own libgit2
repository object on the same mirror (:meth:`GitSource.twin`):

* :class:`Fetcher` polls the release branch on the poller's schedule (at once
  when :meth:`Fetcher.kick` is called, by a push webhook) and keeps the newest
  :class:`~controller.adapters.git.source.PollResult`; the loop takes it with
  :meth:`Fetcher.take`, never waiting.
* :class:`Pusher` pushes the status commits the loop makes locally
  (:meth:`StatusBranch.commit` is local and quick), after every pass that made
  one and on the back-off of :class:`~controller.app.status_writes.StatusWrites`
  while pushes fail. The status branch's lock keeps a commit and a replay from
  overwriting each other.
* :class:`Builds` runs bento builds (minutes) in a thread of its own, over its
  own repository object, one at a time: a model whose bento is being built says
  so (``Building``) and the loop goes on ticking the others.
* :class:`LeaseKeeper` keeps the repository's lease
  (:class:`~controller.adapters.git.lease.RepoLease`): one controller per
  repository and branch acts, another stands by and takes over when the
  lease runs out.

Owns the four threads. Created and started by the daemon (``mdc run``); the
reconciler takes a fetcher's results and hands its pushes to a pusher.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from controller.adapters.git.lease import RepoLease
from controller.adapters.git.source import GitSource, PollResult, Snapshot, SourcePoller
from controller.adapters.git.status_branch import StatusBranch
from controller.adapters.packaging import Builder, BuildResult, Source
from controller.app.status_writes import StatusWrites
from controller.errors import MdcError, TransientError
from controller.spec.kinds import Model

__all__ = ["Builds", "Fetcher", "LeaseKeeper", "Pusher"]

log = logging.getLogger(__name__)


class _Worker:
    """A daemon thread that runs :meth:`work` when kicked or when it asks to."""

    name = "worker"

    def __init__(self) -> None:
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()

    def kick(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 1.0) -> None:
        """Ask the thread to end; a call blocked on the network is left to its timeout
        (the thread is a daemon and dies with the process)."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        wait = 0.0
        while not self._stopping.is_set():
            self._wake.wait(wait)
            self._wake.clear()
            if self._stopping.is_set():
                return
            try:
                wait = self.work()
            except Exception:  # a bug: logged, the thread goes on
                log.exception("%s failed", self.name)
                wait = 5.0

    def work(self) -> float:
        """One round; seconds until the next one unless kicked."""
        raise NotImplementedError


class Fetcher(_Worker):
    """Polls the release branch in its own thread (see the module docstring)."""

    name = "mdc-fetcher"

    def __init__(
        self,
        poller: SourcePoller,
        clock: Callable[[], float] = time.time,
        landed: Callable[[], None] | None = None,
    ) -> None:
        super().__init__()
        self.poller = poller  # its own: given a twin source by the caller
        self.clock = clock
        self.landed = landed  # called when a poll's result is ready (wakes the loop)
        self._lock = threading.Lock()
        self._newest: PollResult | None = None
        self.polls = 0
        self.polled = threading.Event()  # set after the first poll ended

    def work(self) -> float:
        result = self.poller.poll(self.clock())
        with self._lock:
            self._newest = result
        self.polls += 1
        self.polled.set()
        if self.landed is not None:
            self.landed()
        return max(0.05, result.retry_in)

    def take(self) -> PollResult | None:
        """The newest poll's result not yet taken (None: none since the last take)."""
        with self._lock:
            result, self._newest = self._newest, None
        return result


class Pusher(_Worker):
    """Pushes the status branch in its own thread (see the module docstring)."""

    name = "mdc-pusher"

    def __init__(
        self, status: StatusBranch, writes: StatusWrites, clock: Callable[[], float] = time.time
    ) -> None:
        super().__init__()
        self.status = status  # a twin of the loop's status branch
        self.writes = writes
        self.clock = clock

    def work(self) -> float:
        self.writes.push(self.status, self.clock())
        if self.writes.error is not None:
            return max(0.1, self.writes.retry_at - self.clock())
        return 3600.0  # nothing to do until the loop commits again (it kicks)


class LeaseKeeper(_Worker):
    """Acquires and renews the repository's lease in its own thread; the loop asks
    :meth:`RepoLease.holds`, which never waits."""

    name = "mdc-lease"

    def __init__(
        self,
        lease: RepoLease,
        clock: Callable[[], float] = time.time,
        every: float = 2.0,
        changed: Callable[[], None] | None = None,
    ) -> None:
        super().__init__()
        self.lease = lease
        self.clock = clock
        self.every = every
        self.changed = changed  # called when the lease changes hands (wakes the loop)
        self.ticked = threading.Event()  # set after the first tick
        self._held: bool | None = None

    def work(self) -> float:
        state = self.lease.tick(self.clock())
        self.ticked.set()
        if state.held != self._held:
            log.warning("repository lease: %s", state.describe())
            self._held = state.held
            if self.changed is not None:
                self.changed()
        return self.every

    def stop(self, timeout: float = 1.0) -> None:
        super().stop(timeout)
        self.lease.release(self.clock())  # a standby takes over at once


class Builds:
    """Bento builds off the loop (see the module docstring). :meth:`request` never
    waits: the result when the build is done (or its error, raised once), else None
    while it runs."""

    KEEP = 32  # finished builds remembered

    def __init__(self, builder: Builder, source: GitSource) -> None:
        self.builder = builder
        self.source = source  # a twin: the build thread reads trees through it
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mdc-build")
        self._jobs: dict[tuple[str, str, str], Future[BuildResult]] = {}
        #: bento tag -> times it was built (not found in the store): once, by content
        self.built: Counter[str] = Counter()

    def request(self, model: Model, snapshot: Snapshot, source: Source) -> BuildResult | None:
        key = (model.name, snapshot.tree, repr(model))
        job = self._jobs.get(key)
        if job is None:
            for old in list(self._jobs)[: max(0, len(self._jobs) - self.KEEP)]:
                if self._jobs[old].done():
                    del self._jobs[old]
            self._jobs[key] = self._pool.submit(self._build, model, snapshot, source)
            return None
        if not job.done():
            return None
        try:
            return job.result()
        except TransientError:
            del self._jobs[key]  # built again when asked again (after its back-off)
            raise
        except MdcError:
            raise
        except Exception as exc:  # a bug in the build: transient, asked again later
            del self._jobs[key]
            raise TransientError(f"{model.name}: the build broke: {exc}") from exc

    def _build(self, model: Model, snapshot: Snapshot, source: Source) -> BuildResult:
        result = self.builder.build(model, self.source.tree(snapshot), source)
        if result.built:  # not found by its tag: made now
            self.built[result.bento_tag] += 1
            log.info("%s: built %s", model.name, result.bento_tag)
        return result

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
