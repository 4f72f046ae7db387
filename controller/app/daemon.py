"""The long-running controller behind ``mdc run``: its configuration, the lock
on its state directory, the loop that runs reconcile passes, and the one HTTP
port that serves ``/healthz``, ``/readyz``, ``/metrics``, the dashboard,
``/api/status``, ``/api/monitor`` and the GitHub webhook.

Owns :class:`Config` (``mdc.yaml`` and command-line flags; an unknown key is an
error naming the file and line), :class:`StateLock` (a second controller on
the same state directory refuses to start, so two never act on one model),
:class:`Daemon` (poll on an interval, at once on a verified push webhook, and
tick running canaries in between) and the Prometheus text of
:func:`metrics_text`.

Called by ``mdc run`` (:mod:`controller.cli.verbs`) and ``mdc demo``.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import IO, Any

from controller.adapters.git.lease import RepoLease, controller_identity
from controller.adapters.git.source import PollResult
from controller.adapters.github.webhook import Event, PushEvent, Route, Trigger, WebhookServer
from controller.app.background import Builds, Fetcher, LeaseKeeper, Pusher
from controller.app.reconciler import PassResult, Reconciler
from controller.core.status import Condition, Phase
from controller.errors import ConditionType, PermanentError, Reason
from controller.spec.documents import Document, parse_yaml
from controller.ui.exposition import controller_metrics
from controller.ui.status_table import status_document

__all__ = ["Config", "Daemon", "StateLock", "load_config", "metrics_text"]

log = logging.getLogger(__name__)

#: The phases of a model that is still on its way (``mdc run --once`` waits them out).
MOVING = frozenset({Phase.PENDING, Phase.PROGRESSING, Phase.DEGRADED})


@dataclass(frozen=True)
class Config:
    """How one controller runs; ``mdc.yaml`` keys are the camelCase of these names."""

    repo: str = ""
    branch: str = "main"
    status_branch: str = "mdc/status"
    state_dir: Path = Path(".mdc-state")
    poll_interval: float = 30.0  # seconds between fetches without a webhook
    tick: float = 0.5  # seconds between passes that tick canaries without fetching
    listen: str = "127.0.0.1:8080"  # host:port of the health, metrics, dashboard and webhook
    router: str = "embedded"
    runtime: str = "local"  # or ray: releases on a Ray cluster (the `ray` extra)
    ray_address: str | None = None  # with runtime: ray, e.g. ray://head:10001 or auto
    ray_namespace: str = "mdc"  # with runtime: ray, where this controller's actors are named
    router_ports: Mapping[str, int] = field(default_factory=dict)  # model -> port
    webhook_secret_file: Path | None = None  # else MDC_WEBHOOK_SECRET; neither: no webhook
    github_repository: str | None = None  # owner/name; the token comes from the environment
    github_api_url: str | None = None  # for GitHub Enterprise
    revert_prs: bool = False  # open a revert PR after a rollback
    node: str | None = None  # this machine's node name in the pool (for NVML)
    prometheus: str | None = None  # Prometheus' URL, for PromQL checks in rollout policies
    bentoml_home: Path | None = None  # the BentoML store; else $BENTOML_HOME, else STATE/bentoml
    lease_ttl: float = 15.0  # seconds a controller's lease on the repository lasts; 0: no lease
    # addresses artifact URLs may reach though not public (loopback, private, link-local):
    artifact_networks: tuple[str, ...] = ()  # CIDRs or addresses, e.g. 10.20.0.0/16
    artifact_timeout: float = 600.0  # seconds one artifact download may take in all
    # the MLflow tracking server of artifact.mlflow (else $MLFLOW_TRACKING_URI); its
    # credentials only from the environment (MLFLOW_TRACKING_TOKEN, or _USERNAME/_PASSWORD)
    mlflow_tracking_uri: str | None = None
    # where models' own packages (spec.python) come from: the index (else UV_DEFAULT_INDEX,
    # UV_INDEX_URL or PIP_INDEX_URL, else PyPI) and local wheel directories (used alone
    # when the index cannot be reached)
    package_index: str | None = None
    wheel_dirs: tuple[Path, ...] = ()

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0] or "127.0.0.1"

    @property
    def port(self) -> int:
        return listen_port(self.listen)


def listen_port(listen: str) -> int:
    """The port of ``HOST:PORT`` (or ``PORT``); :class:`PermanentError` (BadConfig) if none."""
    port = listen.rpartition(":")[2]  # a bare PORT listens on 127.0.0.1
    if not port.isdigit() or int(port) > 65535:
        raise PermanentError(
            f"listen: {listen!r} is not HOST:PORT (e.g. 127.0.0.1:8080; port 0 picks one)",
            reason=Reason.BAD_CONFIG,
        )
    return int(port)


_KEYS = {
    "".join(w.capitalize() if i else w for i, w in enumerate(f.name.split("_"))): f.name
    for f in fields(Config)
}


_TYPES: dict[str, type] = {
    "poll_interval": float,
    "tick": float,
    "lease_ttl": float,
    "artifact_timeout": float,
    "revert_prs": bool,
    "router_ports": dict,
    "state_dir": Path,
    "webhook_secret_file": Path,
    "bentoml_home": Path,
    "artifact_networks": list,
    "wheel_dirs": tuple,
}


_CHOICES = {"router": ("embedded", "haproxy"), "runtime": ("local", "ray")}

#: What each kind of value is called in an error.
_KIND_NAMES = {
    Path: "a path (text)",
    dict: "a mapping of model name to port",
    list: "a list of addresses or networks (text, e.g. 10.0.0.0/8)",
    tuple: "a list of directory paths (text)",
    bool: "true or false",
    float: "a number",
    str: "text",
}


def _port(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 65535


def _convert(name: str, value: Any) -> Any:
    """``value`` of the field ``name`` as :class:`Config` holds it. Raises
    :class:`TypeError` when it is of the wrong kind, :class:`ValueError` (its
    text says what is wanted) when the kind is right but the value is not."""
    kind = _TYPES.get(name, str)
    if kind is Path:
        if not isinstance(value, str):
            raise TypeError
        return Path(value)
    if kind is dict:
        if not isinstance(value, dict):
            raise TypeError
        if not all(_port(v) for v in value.values()):
            raise ValueError("a port (0-65535) for each model")
        return {str(k): v for k, v in value.items()}
    if kind is tuple:  # of paths
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise TypeError
        return tuple(Path(v) for v in value)
    if kind is list:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise TypeError
        for item in value:
            try:
                ipaddress.ip_network(item.strip(), strict=False)
            except ValueError:
                raise ValueError(f"addresses or networks (CIDR); {item!r} is neither") from None
        return tuple(item.strip() for item in value)
    if kind is bool:
        if not isinstance(value, bool):
            raise TypeError
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError
        if name == "artifact_timeout" and not 0 < value <= 86400:
            raise ValueError("a number of seconds above 0 and at most 86400")
        return float(value)
    if not isinstance(value, str):
        raise TypeError
    if name == "listen":
        try:
            listen_port(value)
        except PermanentError:
            raise ValueError("HOST:PORT (e.g. 127.0.0.1:8080; port 0 picks one)") from None
    if name in _CHOICES and value not in _CHOICES[name]:
        raise ValueError(f"one of {', '.join(_CHOICES[name])}")
    return value


def _field_problems(document: Document, key: str, name: str, value: Any) -> list[str]:
    """What is wrong with ``key: value`` (empty when nothing), each naming file:line:column."""

    def at(*path: Any) -> str:
        spot = document.locate((key, *path))
        return f"{document.file}:{spot.line}:{spot.column}"

    try:
        _convert(name, value)
    except TypeError:
        kind = _KIND_NAMES[_TYPES.get(name, str)]
        return [f"{at()}: {key} must be {kind}, not {value!r}"]
    except ValueError as exc:
        if name != "router_ports":
            return [f"{at()}: {key} must be {exc}, not {value!r}"]
        return [  # one error per model, each with its own line
            f"{at()}: {key} must be {exc}: {model} (at {at(model)}) is {port!r}"
            for model, port in value.items()
            if not _port(port)
        ]
    return []


def load_config(path: Path) -> Config:
    """``mdc.yaml``, checked whole: an unknown key, a wrong type or a value out of
    range is an error, and every error of the file is reported at once, one line
    each naming file:line:column and the key (:class:`PermanentError`, BadConfig)."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise PermanentError(
            f"{path}: cannot read ({exc.strerror})", reason=Reason.BAD_CONFIG
        ) from None
    documents, problems = parse_yaml(str(path), raw)
    if problems:
        raise PermanentError("\n".join(p.render() for p in problems), reason=Reason.BAD_CONFIG)
    if len(documents) != 1 or not isinstance(documents[0].data, dict):
        raise PermanentError(f"{path}: expected one YAML mapping", reason=Reason.BAD_CONFIG)
    document = documents[0]
    values: dict[str, Any] = {}
    errors: list[str] = []
    for key, value in document.data.items():
        name = _KEYS.get(key)
        if name is None:
            spot = document.locate((key,))
            known = ", ".join(sorted(_KEYS))
            errors.append(f"{path}:{spot.line}:{spot.column}: unknown key {key!r} (known: {known})")
            continue
        wrong = _field_problems(document, key, name, value)
        errors += wrong
        if not wrong:
            values[name] = _convert(name, value)
    if errors:
        raise PermanentError("\n".join(errors), reason=Reason.BAD_CONFIG)
    return replace(Config(), **values)


class StateLock:
    """An exclusive ``flock`` on ``STATE/lock``, held while the controller runs."""

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / "lock"
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = self.path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise PermanentError(
                f"another controller (pid {holder}) holds {self.path}: two controllers must "
                "never act on the same models; stop it or use another --state-dir",
                reason=Reason.LOCKED,
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._file = handle

    def release(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def __enter__(self) -> StateLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


@dataclass
class _PassStats:
    total: int = 0
    failed: int = 0
    seconds_sum: float = 0.0
    last_ok: float | None = None  # when a pass last fetched and applied without error
    buckets: dict[float, int] = field(
        default_factory=lambda: dict.fromkeys((0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0), 0)
    )

    def add(self, result: PassResult, now: float) -> None:
        self.total += 1
        self.failed += 0 if result.ok else 1
        self.seconds_sum += result.seconds
        for bound in self.buckets:
            if result.seconds <= bound:
                self.buckets[bound] += 1
        if result.poll is not None and result.poll.error is None:
            self.last_ok = now


def metrics_text(
    reconciler: Reconciler, stats: _PassStats, faults: list[Condition] | None = None
) -> str:
    """The controller's metrics in the Prometheus text format; ``faults``: the
    controller's faults now (else the reconciler's own)."""
    view = getattr(reconciler, "monitor_view", None)
    if faults is None:
        own = getattr(reconciler, "faults", None)
        faults = own() if callable(own) else []
    return controller_metrics(
        passes=stats.total,
        failures=stats.failed,
        pass_buckets=stats.buckets,
        pass_seconds=stats.seconds_sum,
        statuses=reconciler.statuses.values(),
        verdicts=reconciler.verdicts,
        pools={name: ledger for name, (_, ledger) in reconciler.ledgers.items()},
        monitor=view() if view is not None else [],
        push_failures=reconciler.writes.total_failures,
        commits_pending=reconciler.writes.pending,
        faults=[(str(c.type), str(c.reason)) for c in faults if not c.status],
    )


class Daemon:
    """Runs passes: a fetch every ``poll_interval`` (or at once on a push webhook),
    and canary ticks every ``tick`` seconds in between."""

    def __init__(
        self,
        config: Config,
        reconciler: Reconciler,
        *,
        secret: bytes | None = None,
        on_event: Callable[[Event], None] | None = None,
        routes: Mapping[str, Route] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.reconciler = reconciler
        self.clock = clock
        self.trigger = Trigger()
        self.stats = _PassStats()
        self.stopping = threading.Event()
        self._serving = False
        self.webhooks = 0  # verified deliveries taken
        self.crashes = 0  # passes that raised (bugs): logged, and the loop went on
        self.pass_failure: str | None = None  # why the last pass failed as a whole
        self._extra_events = on_event
        self._lock = threading.Lock()  # passes and the few readers of the live reconciler
        self.fetcher: Fetcher | None = None
        self.pusher: Pusher | None = None
        self.lease: LeaseKeeper | None = None
        self.builds: Builds | None = None
        self.leading = False  # this controller holds the repository's lease and acts
        self._followed = False  # another controller held the lease while this one stood by
        #: what the HTTP API serves, published after each pass: never waits for one
        self._published: dict[str, Any] = {}  # set by _publish() below, then after each pass
        all_routes: dict[str, Route] = {
            "/healthz": self._healthz,
            "/readyz": self._readyz,
            "/metrics": self._metrics,
            "/api/status": self._api_status,
            "/api/monitor": self._api_monitor,
            "/api/previews": self._api_previews,
        }
        all_routes.update(routes or {})
        self.server = WebhookServer(
            secret,
            self._on_event,
            host=config.host,
            port=config.port,
            routes=all_routes,
            repository=config.github_repository,  # events about another one are ignored
        )
        self._publish()  # what the controller recovered, served before its first pass

    # -- HTTP --------------------------------------------------------------------

    @property
    def url(self) -> str:
        return self.server.url.rsplit("/", 1)[0]

    def _healthz(self) -> tuple[int, str, bytes]:
        return 200, "text/plain", b"ok\n"

    def _readyz(self) -> tuple[int, str, bytes]:
        """Ready once a pass has read git; not ready, with one line per fault
        (reason: message), while git has failed for longer than three poll
        intervals (what runs is kept, but it may be stale), while the status cannot
        be saved or pushed."""
        last = self.stats.last_ok
        now = self.clock()
        stale = 3 * self.config.poll_interval + 10
        standby = self._standby()
        if standby is not None:
            return (
                503,
                "text/plain",
                f"not ready:\n  {standby.reason}: {standby.message}\n".encode(),
            )
        if last is None:
            return 503, "text/plain", b"not ready: no successful pass yet\n"
        # git counts once stale (a failed poll or two is retried, what runs is kept)
        faults = [
            f"{c.reason}: {c.message}"
            for c in self._published["faults"]
            if c.type not in (ConditionType.GIT_READ, ConditionType.LEADER)
        ]
        if now - last > stale:
            faults.insert(0, f"{Reason.GIT_UNAVAILABLE}: git not read for {now - last:.0f}s")
        if faults:
            body = "not ready:\n" + "".join(f"  {f}\n" for f in faults)
            return 503, "text/plain", body.encode()
        return 200, "text/plain", b"ready\n"

    def _metrics(self) -> tuple[int, str, bytes]:
        text = str(self._published["metrics"]) or metrics_text(self.reconciler, self.stats)
        metrics_of_router = getattr(self.reconciler.router, "metrics_text", None)
        if callable(metrics_of_router):
            text += str(metrics_of_router())
        return 200, "text/plain; version=0.0.4", text.encode()

    def _api_status(self) -> tuple[int, str, bytes]:
        """Every model's status: :func:`status_document`, what ``mdc status --format
        json`` prints for the same statuses."""
        document = status_document(list(self._published["statuses"]), self.clock())
        standby = self._standby()
        if self.lease is not None:
            document["controller"] = {
                "role": "standby" if standby is not None else "leader",
                "lease": self.lease.lease.last.describe(),
            }
        return 200, "application/json", json.dumps(document, indent=2, default=str).encode()

    def _api_monitor(self) -> tuple[int, str, bytes]:
        """Every monitored model, live: objective states and values, drift, rollups."""
        views = self._published["monitor"]
        return 200, "application/json", json.dumps(views, indent=1, default=str).encode()

    def _api_previews(self) -> tuple[int, str, bytes]:
        """Pull requests' previews, live (running ones first, then the last ended)."""
        views = self._published["previews"]
        return 200, "application/json", json.dumps(views, indent=1, default=str).encode()

    def _on_event(self, event: Event) -> None:
        self.webhooks += 1
        if isinstance(event, PushEvent) and event.ref == f"refs/heads/{self.config.branch}":
            if self.fetcher is not None:
                self.fetcher.kick()  # fetched in its thread; its result wakes the loop
            else:
                self.trigger.fire()
        if self._extra_events is not None:
            self._extra_events(event)

    # -- the loop ------------------------------------------------------------------

    def one_pass(self, fetch: bool, poll: PollResult | None = None) -> PassResult:
        """One pass; a bug in it is logged with its traceback and the loop goes on."""
        started = time.monotonic()
        try:
            with self._lock:
                result = self.reconciler.run_pass(fetch, poll)
        except Exception as exc:
            log.exception("reconcile pass failed")
            self.crashes += 1
            self.pass_failure = f"{type(exc).__name__}: {exc}"[:300]
            result = PassResult(None, (), (f"pass: {type(exc).__name__}: {exc}",), None, 0.0)
            result = replace(result, seconds=time.monotonic() - started)
        else:
            self.pass_failure = None
        self.stats.add(result, self.clock())
        try:
            with self._lock:
                self._publish()
        except Exception:  # a bug: the API serves what it served before
            log.exception("publishing the state for the API failed")
        return result

    def _publish(self) -> None:
        """What the HTTP API serves until the next pass (called in the loop's thread)."""
        view = getattr(self.reconciler, "monitor_view", None)
        previews = getattr(self.reconciler, "previews", None)
        own = getattr(self.reconciler, "faults", None)
        standby = self._standby()
        faults = ([standby] if standby else []) + (own() if callable(own) else [])
        if self.pass_failure is not None:  # no model was reconciled or ticked
            faults.insert(
                0,
                Condition(
                    ConditionType.READY,
                    False,
                    Reason.PASS_FAILED,
                    f"the last pass failed as a whole: {self.pass_failure}",
                ),
            )
        self._published = {
            "statuses": list(self.reconciler.statuses.values()),
            "metrics": metrics_text(self.reconciler, self.stats, faults),
            "monitor": view() if view is not None else [],
            "previews": previews.views() if previews is not None else [],
            "faults": faults,
        }

    def _standby(self) -> Condition | None:
        """Why this controller does not act (another holds the repository's lease)."""
        if self.lease is None or self.leading:
            return None
        return Condition(
            ConditionType.LEADER, False, Reason.STANDING_BY, self.lease.lease.last.describe()
        )

    def _start_workers(self) -> None:
        """Git off the loop (:mod:`controller.app.background`): a fetcher and a pusher,
        each over its own libgit2 repository object on the same mirror."""
        if self.fetcher is not None:
            return
        reconciler = self.reconciler
        poller = reconciler.poller
        poller.source = poller.source.twin()  # the fetcher's thread owns the poller now
        self.fetcher = Fetcher(poller, self.clock, landed=self.trigger.fire)
        self.pusher = Pusher(reconciler.status.twin(), reconciler.writes, self.clock)
        reconciler.polls_elsewhere, reconciler.pusher = True, self.pusher
        moves = getattr(reconciler, "moves", None)
        if moves is not None:
            self.builds = Builds(moves.packager, reconciler.source.twin())
            moves.builds = self.builds
        self.fetcher.start()
        self.pusher.start()
        if self.config.lease_ttl > 0:
            lease = RepoLease(
                reconciler.source,
                self.config.branch,
                controller_identity(Path(self.config.state_dir)),
                ttl=self.config.lease_ttl,
            )
            # wall time, not the controller's clock (which tests move): the lease's
            # expiry is read by other controllers, on other machines
            self.lease = LeaseKeeper(lease, time.time, changed=self.trigger.fire)
            self.lease.start()
            self.lease.ticked.wait(min(5.0, self.config.lease_ttl))

    def _lead(self) -> bool:
        """Whether this controller acts now: it holds the repository's lease (or no
        lease is kept). Taking the lease over after standing by, it first reads
        again what the status branch records (the last holder wrote it)."""
        if self.lease is None:
            return True
        lease = self.lease.lease
        holds = lease.holds(time.time())  # wall time, as the other controllers read it
        if holds and not self.leading:
            log.warning("this controller leads: %s", lease.last.describe())
            take_over = getattr(self.reconciler, "take_over", None)
            if callable(take_over) and self.stats.total and self._followed:
                with self._lock:  # another acted meanwhile: what this one knew is stale
                    take_over()
            self.leading, self._followed = True, False
        elif not holds:
            if self.leading:
                log.warning("this controller stands by: %s", lease.last.describe())
            self.leading = False
            holder = lease.last.holder
            self._followed = self._followed or bool(holder and holder != lease.identity)
        return self.leading

    def _stop_workers(self) -> None:
        for worker in (self.lease, self.fetcher, self.pusher):
            if worker is not None:
                worker.stop()
        if self.builds is not None:
            self.builds.close()

    def run(self, once: bool = False, on_pass: Callable[[PassResult], None] | None = None) -> int:
        """Pass until :meth:`stop`; with ``once``, a single pass. The exit status:
        0 when the last pass went through, 1 when something in it failed.

        Git is read and written by threads of their own (:meth:`_start_workers`):
        the loop never waits for it, and ticks canaries every ``tick`` seconds
        whatever git does."""
        self.start()
        if once:
            try:
                result = self.one_pass(True)
                if on_pass is not None:
                    on_pass(result)
                return 0 if result.ok else 1
            finally:
                self.server.stop()
                self._serving = False
        self._start_workers()
        assert self.fetcher is not None
        if self.fetcher.polled.wait(min(1.0, self.config.tick)):  # a first pass with git
            self.trigger.wait(0)  # its landing is taken by that first pass
        try:
            while True:
                poll = self.fetcher.take()
                if not self._lead():
                    self._publish()
                    self.trigger.wait(self.config.tick)
                    if self.stopping.is_set():
                        return 0
                    continue
                result = self.one_pass(False, poll)
                if on_pass is not None:
                    on_pass(result)
                if self.stopping.is_set():
                    return 0 if result.ok else 1
                if self.crashes and result.revision is None and result.poll is None:
                    self.stopping.wait(self.config.tick)  # never a busy loop over a bug
                self.trigger.wait(self.config.tick)  # a tick, or a poll's result landed
                if self.stopping.is_set():
                    return 0 if result.ok else 1
        finally:
            self._stop_workers()
            self.server.stop()
            self._serving = False

    def settle(
        self, timeout: float, on_pass: Callable[[PassResult], None] | None = None
    ) -> tuple[bool, list[str]]:
        """``mdc run --once``: one pass that reads git, then passes without a fetch
        until every model has settled (no phase in :data:`MOVING`) or ``timeout``
        seconds have passed, or :meth:`stop` is called. Whether all of them are
        Healthy (and no pass failed), and the models still moving at the end."""
        self.start()
        deadline = time.monotonic() + timeout
        fetch = True
        try:
            while True:
                result = self.one_pass(fetch)
                fetch = False
                ok = result.ok  # the last pass: an early transient failure may have passed
                if on_pass is not None:
                    on_pass(result)
                with self._lock:
                    statuses = list(self.reconciler.statuses.values())
                moving = sorted(s.name for s in statuses if s.phase in MOVING)
                if result.revision is None and result.poll is None:
                    return False, moving  # git was never read: nothing can settle
                if not moving or self.stopping.is_set() or time.monotonic() >= deadline:
                    healthy = all(s.phase is Phase.HEALTHY for s in statuses)
                    return ok and healthy and not moving, moving
                self.trigger.wait(min(self.config.tick, max(0.0, deadline - time.monotonic())))
        finally:
            self.server.stop()
            self._serving = False

    def start(self) -> None:
        """Open the HTTP port (done by :meth:`run` when not done before)."""
        if not self._serving:
            self.server.start()
            self._serving = True

    def stop(self) -> None:
        self.stopping.set()
        self.trigger.fire()
