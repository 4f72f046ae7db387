"""The one place a controller is built: from a :class:`~controller.app.daemon.Config`
to its parts, its reconciler and its daemon.

``mdc run``, ``mdc demo``, the benches and the end-to-end tests all call
:func:`build_controller`, so the demo exercises exactly what a user runs. What
each setting picks:

* the git source and its poller (``repo``, ``branch``, ``pollInterval``; the
  credentials from the environment), and the status branch (``statusBranch``);
* the packager, with the BentoML store that every command resolves the same way
  (:func:`bento_home`: ``bentomlHome``, else ``$BENTOML_HOME``, else
  ``STATE/bentoml``), so ``bentoModel:`` tags a user imported are found, and
  its leash on artifact fetches (``artifactNetworks``, ``artifactTimeout``; the
  credential from ``MDC_ARTIFACT_TOKEN`` for ``MDC_ARTIFACT_TOKEN_HOST``);
* the runtime (``runtime``: local or ray, with ``rayAddress``/``rayNamespace``) and
  the router (``router``: embedded or haproxy), through their factories;
* the metrics provider for PromQL checks (``prometheus``: the server's URL, else
  ``$MDC_PROMETHEUS_URL``);
* the reporter (GitHub when ``githubRepository`` and a token are set);
* this machine's NVML reading (``node``), and the clock.

A local repository that is a working copy (not bare) is refused at start with a
message that says what to do: libgit2 will not push the status branch into it.

Tests build parts of their own (fakes) and call :class:`Reconciler` directly.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from controller.adapters.environments import Environments
from controller.adapters.git.local import LocalRepository
from controller.adapters.git.source import Credentials, GitSource, SourcePoller
from controller.adapters.git.status_branch import StatusBranch
from controller.adapters.github.client import GitHubReporter
from controller.adapters.github.webhook import Event, Route
from controller.adapters.metrics import make_provider
from controller.adapters.model_registry import registry_from_env
from controller.adapters.nvml import read_nvml
from controller.adapters.packaging import FetchPolicy, Packager
from controller.adapters.router import make_router
from controller.adapters.router.base import Router
from controller.adapters.runtime import make_runtime
from controller.app.courier import Courier
from controller.app.daemon import Config, Daemon
from controller.app.pages import dashboard_route
from controller.app.parts import Parts, Settings
from controller.app.reconciler import Reconciler
from controller.app.registry_bridge import RegistryFeedback, WithFeedback, bento_labels
from controller.app.reporting import NullReporter, PullRequests, Reporter
from controller.errors import PermanentError, Reason

__all__ = ["Controller", "bento_home", "build_controller", "build_parts", "reporter_for"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Controller:
    """A built controller: its reconciler, its daemon and its reporter."""

    reconciler: Reconciler
    daemon: Daemon
    reporter: Reporter

    def close(self, stop_releases: bool = False) -> None:
        self.reconciler.close(stop_releases=stop_releases)
        close = getattr(self.reporter, "close", None)
        if callable(close):
            close()


def bento_home(
    configured: Path | None, state_dir: Path, env: Mapping[str, str] = os.environ
) -> Path:
    """The BentoML store every command uses: configured, ``$BENTOML_HOME``, or the state's."""
    if configured is not None:
        return Path(configured)
    if env.get("BENTOML_HOME"):
        return Path(env["BENTOML_HOME"])
    return Path(state_dir) / "bentoml"


def reporter_for(config: Config) -> tuple[Reporter, Callable[[Event], None] | None]:
    """GitHub when a repository and a token are configured, else status branch and log."""
    if not config.github_repository:
        return NullReporter(), None
    env_url = {"MDC_GITHUB_API_URL": config.github_api_url} if config.github_api_url else {}
    github = GitHubReporter.from_env(
        config.github_repository,
        env={**os.environ, **env_url},
        max_attempts=3,
        max_wait=10.0,  # a longer wait is reported as transient and retried next pass
    )
    if github is None:
        log.warning(
            "github: %s configured but no token (MDC_GITHUB_TOKEN): reports go to the status "
            "branch and the log only",
            config.github_repository,
        )
        return NullReporter(), None
    reporter = PullRequests(github, branch=config.branch, revert_prs=config.revert_prs)
    return reporter, reporter


def refuse_working_copy(repo: str) -> None:
    """A local non-bare repository cannot take the status branch's pushes: say so now."""
    local = LocalRepository.discover(repo) if Path(repo).exists() else None
    if local is not None and not local.bare:
        raise PermanentError(
            f"repo: {repo} is a working copy; mdc pushes its status branch there and libgit2 "
            f"refuses to push into a non-bare repository. Point mdc at a bare clone "
            f"(git clone --bare {repo} {repo.rstrip('/')}.git) or serve it (git daemon)",
            reason=Reason.BAD_CONFIG,
        )


def python_environments(config: Config, state: Path) -> Environments:
    """Where models' own packages are installed (``STATE/environments``), from the
    configured index (else the one uv or pip would use here) and wheel directories."""
    index = config.package_index or next(
        (
            os.environ[name]
            for name in ("UV_DEFAULT_INDEX", "UV_INDEX_URL", "PIP_INDEX_URL")
            if os.environ.get(name)
        ),
        None,
    )
    return Environments(state / "environments", index_url=index, find_links=config.wheel_dirs)


def build_parts(
    config: Config,
    *,
    reporter: Reporter | None = None,
    router: Router | None = None,
    clock: Callable[[], float] = time.time,
    credentials: Credentials | None = None,
) -> Parts:
    """Every adapter ``config`` names (see the module docstring)."""
    refuse_working_copy(config.repo)
    state = Path(config.state_dir).absolute()  # processes it starts run elsewhere
    source = GitSource(config.repo, config.branch, state, credentials or Credentials.from_env())
    home = bento_home(config.bentoml_home, state)
    nvml = read_nvml if config.node else None
    prometheus = config.prometheus or os.environ.get("MDC_PROMETHEUS_URL")
    return Parts(
        source=source,
        poller=SourcePoller(source, interval=config.poll_interval),
        status=StatusBranch(source, config.status_branch),
        packager=Packager(
            home,
            state / "packager",
            fetch=FetchPolicy.from_env(
                networks=config.artifact_networks, total_timeout=config.artifact_timeout
            ),
            registry=registry_from_env(config.mlflow_tracking_uri),
            environments=python_environments(config, state),
        ),
        runtime=make_runtime(
            config.runtime,
            state,
            home,
            address=config.ray_address,
            namespace=config.ray_namespace,
            nvml=read_nvml,
        ),
        router=router or make_router(config.router, state_dir=state),
        reporter=reporter or NullReporter(),
        prometheus=make_provider("prometheus", url=prometheus) if prometheus else None,
        nvml=nvml,
        clock=clock,
    )


def build_controller(
    config: Config,
    *,
    secret: bytes | None = None,
    reporter: Reporter | None = None,
    on_event: Callable[[Event], None] | None = None,
    router: Router | None = None,
    clock: Callable[[], float] = time.time,
    routes: Mapping[str, Route] | None = None,
) -> Controller:
    """A controller as ``mdc run`` runs it; ``reporter`` and ``on_event`` default to
    :func:`reporter_for`'s."""
    if reporter is None:
        reporter, on_event = reporter_for(config)
    if isinstance(reporter, PullRequests):  # GitHub is called off the loop
        courier = Courier(reporter)
        if on_event is reporter:
            on_event = courier
        reporter = courier
    registry = registry_from_env(config.mlflow_tracking_uri)
    if registry is not None:  # outcomes go back to the registry too, off the loop
        home = bento_home(config.bentoml_home, Path(config.state_dir).absolute())
        feedback = RegistryFeedback(registry, lambda bento: bento_labels(home, bento))
        reporter = WithFeedback(reporter, feedback)
    parts = build_parts(config, reporter=reporter, router=router, clock=clock)
    reconciler = Reconciler(
        parts,
        Settings(Path(config.state_dir), node=config.node, router_ports=config.router_ports),
    )
    bind = getattr(reporter, "bind", None)
    if callable(bind):
        bind(reconciler)
    daemon = Daemon(
        config,
        reconciler,
        secret=secret,
        on_event=on_event,
        routes={"/": dashboard_route(reconciler, config), **(routes or {})},
    )
    return Controller(reconciler, daemon, reporter)
