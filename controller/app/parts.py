"""What a controller is made of: its adapters (:class:`Parts`) and the settings its
pass needs (:class:`Settings`). Built in one place, :mod:`controller.app.wiring`;
the reconciler receives them and builds nothing itself, so tests hand it fakes
(:mod:`controller.testing`) and ``mdc run``, ``mdc demo``, the benches and the
end-to-end tests hand it the same real parts.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from controller.adapters.git.source import GitSource, SourcePoller
from controller.adapters.git.status_branch import StatusBranch
from controller.adapters.metrics import QueryProvider
from controller.adapters.packaging import Builder
from controller.adapters.router.base import Router
from controller.adapters.runtime.base import Runtime
from controller.app.reporting import NullReporter, Reporter
from controller.core.inventory import GPU

__all__ = ["Parts", "Settings"]


@dataclass(frozen=True)
class Parts:
    """The adapters of one controller."""

    source: GitSource  # the release branch
    poller: SourcePoller  # fetches it on a schedule, with back-off
    status: StatusBranch  # where statuses are committed and pushed
    packager: Builder  # bentos from specs
    runtime: Runtime  # where releases run
    router: Router  # the traffic split
    reporter: Reporter = field(default_factory=NullReporter)  # GitHub, or nowhere
    prometheus: QueryProvider | None = None  # for PromQL checks; None: such checks fail
    nvml: Callable[[str], list[GPU]] | None = None  # this machine's GPUs
    clock: Callable[[], float] = time.time


@dataclass(frozen=True)
class Settings:
    """What the pass needs to know besides its parts."""

    state_dir: Path
    node: str | None = None  # this machine's node name in the pool (for NVML)
    router_ports: Mapping[str, int] = field(default_factory=dict)  # model -> port
