"""The runtime seam: what a release is (:class:`ReleaseSpec`, :class:`Release`,
:class:`State`, :class:`Event`) and what the controller needs from whatever
runs releases (:class:`Runtime`). Implementations beside this file: local
processes (``local.py``) and a Ray cluster (``ray_cluster.py``); the factory is
:func:`controller.adapters.runtime.make_runtime`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from controller.core.inventory import ClusterNode
from controller.spec.kinds import Probe

__all__ = [
    "Event",
    "Release",
    "ReleaseSpec",
    "Runtime",
    "State",
    "replica_names",
]


class State(StrEnum):
    STARTING = "starting"
    READY = "ready"
    UNHEALTHY = "unhealthy"
    CRASHED = "crashed"  # exited; restarted after a back-off
    FAILED = "failed"  # will not be restarted: never became ready, or the port is taken
    STOPPED = "stopped"


@dataclass(frozen=True)
class ReleaseSpec:
    name: str  # unique: "fraud-scorer/canary"
    model: str
    version: str
    bento: str
    env: Mapping[str, str] = field(default_factory=dict)  # from the ledger's launch_env
    gpus: tuple[str, ...] = ()
    ready_timeout: float = 120.0
    probe: Probe | None = None
    port: int | None = None  # None: a free loopback port
    node: str | None = None  # the pool node the ledger placed it on (the Ray runtime uses it)
    gpu_share: float = 0.0  # GPUs it holds (1.5 = one and a half), for Ray's own accounting
    replica: int = 0  # which of the release's replicas this process is (0: the first)
    replicas: int = 1  # how many replicas the release runs (each a release of its own)


def replica_names(spec: ReleaseSpec) -> tuple[str, ...]:
    """The names of every replica of the release whose first replica is ``spec``:
    ``NAME`` for the first, ``NAME~1``, ``NAME~2``... for the others."""
    base = spec.name.split("~", 1)[0]
    return (base, *(f"{base}~{k}" for k in range(1, max(1, spec.replicas))))


@dataclass(frozen=True)
class Release:
    spec: ReleaseSpec
    port: int
    pid: int | None
    state: State
    since: float  # when it entered this state
    reason: str = ""
    crashes: int = 0
    started_at: float = 0.0
    restart_at: float | None = None
    probe_failures: int = 0
    next_probe: float = 0.0
    proc_start: int | None = None  # the kernel's start time of pid (guards PID reuse)
    host: str = "127.0.0.1"  # where it listens (a Ray node's address for the Ray runtime)

    @property
    def address(self) -> str:
        """``host:port``, as the router takes it."""
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"


@dataclass(frozen=True)
class Event:
    release: str
    #: Started, Ready, Unhealthy, Recovered, Crashed, Restarted, Failed, Stopped,
    #: Adopted or CleanedUp
    kind: str
    message: str


class Runtime(Protocol):
    """Where releases run: local processes, or actors on a Ray cluster.

    ``releases`` maps a release name to what the runtime last saw of it. Every
    call is idempotent: starting a release that runs (or was adopted after a
    restart) returns it as it is; stopping one that is gone does nothing.
    """

    @property
    def releases(self) -> Mapping[str, Release]:
        """Every release by name, as last seen."""
        ...

    def start(self, spec: ReleaseSpec) -> Release:
        """Start ``spec`` (or return it, already started or adopted)."""
        ...

    def stop(self, name: str, drain: float = 10.0) -> Release | None:
        """Stop a release after ``drain`` seconds for in-flight requests."""
        ...

    def stop_all(self, drain: float = 10.0) -> None:
        """Stop every release this runtime started or adopted."""
        ...

    def tick(self, now: float | None = None) -> list[Event]:
        """Probe, restart and reap: what happened since the last tick."""
        ...

    def cluster_nodes(self) -> list[ClusterNode] | None:
        """The cluster's nodes and labels (None: not a cluster runtime)."""
        ...
