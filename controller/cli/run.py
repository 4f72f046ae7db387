"""The ``mdc`` verbs that run things: ``run`` (the controller), ``down`` and ``demo``.

``mdc run`` reads its settings (``--config`` and flags), takes the state
directory's lock, builds the reconciler and the daemon (dashboard, ``/metrics``,
``/healthz``, ``/readyz``, webhooks on one port) and runs until SIGINT or
SIGTERM -- leaving the router and the releases serving for the next controller,
as its last line says -- or, with ``--once``, until the moves of one pass have
settled (:meth:`~controller.app.daemon.Daemon.settle`); ``mdc down`` stops what
a controller left serving; ``mdc demo`` tells :mod:`controller.demo`'s story and
stops everything it started, also on SIGTERM. Each verb takes the parsed
arguments and returns the exit code. Called by :func:`controller.cli.main.main`.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from controller.adapters.github.webhook import load_secret
from controller.adapters.router.haproxy import HAProxyRouter
from controller.adapters.router.supervised import SupervisedRouter
from controller.adapters.runtime.base import State
from controller.adapters.runtime.local import LocalRuntime
from controller.app.daemon import Config, StateLock, load_config
from controller.app.reconciler import PassResult, Reconciler
from controller.app.wiring import bento_home, build_controller
from controller.demo import run_demo
from controller.errors import MdcError
from controller.ui.terminal import EXIT_INVALID, EXIT_USAGE, visible

__all__ = ["demo", "down", "run_controller"]


def run_controller(args: argparse.Namespace) -> int:
    """``mdc run``: the controller; ``--once`` runs one pass and exits 0 or 1."""
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        config = load_config(Path(args.config)) if args.config else Config()
    except MdcError as exc:
        print(f"mdc run: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    overrides: dict[str, Any] = {
        "repo": args.repo,
        "branch": args.branch,
        "status_branch": args.status_branch,
        "state_dir": Path(args.state_dir) if args.state_dir else None,
        "listen": args.listen,
        "poll_interval": args.poll_interval,
        "router": args.router,
        "github_repository": args.github_repository,
        "runtime": args.runtime,
        "ray_address": args.ray_address,
        "ray_namespace": args.ray_namespace,
        "prometheus": args.prometheus,
        "bentoml_home": Path(args.bento_home) if args.bento_home else None,
    }
    config = replace(config, **{k: v for k, v in overrides.items() if v is not None})
    # absolute: releases and the router run in other directories and outlive this one
    config = replace(config, state_dir=Path(config.state_dir).absolute())
    if not config.repo:
        print("mdc run: --repo (or repo: in --config) is required", file=sys.stderr)
        return EXIT_USAGE
    try:
        config.port  # noqa: B018 - validates --listen
    except MdcError as exc:
        print(f"mdc run: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    try:
        secret = None
        if config.webhook_secret_file is not None:
            secret = load_secret(file=config.webhook_secret_file)
        elif os.environ.get("MDC_WEBHOOK_SECRET") or os.environ.get("MDC_WEBHOOK_SECRET_FILE"):
            secret = load_secret(file=os.environ.get("MDC_WEBHOOK_SECRET_FILE"))
        lock = StateLock(config.state_dir)
        lock.acquire()
    except MdcError as exc:
        print(f"mdc run: {exc.message}", file=sys.stderr)
        return EXIT_INVALID
    try:
        return _serve(config, secret, args.once, args.timeout or ONCE_TIMEOUT)
    except MdcError as exc:
        print(f"mdc run: {exc.message}", file=sys.stderr)
        return EXIT_INVALID
    finally:
        lock.release()


#: How long ``mdc run --once`` waits for its moves to settle, unless ``--timeout``.
ONCE_TIMEOUT = 600.0


def _serve(config: Config, secret: bytes | None, once: bool, timeout: float) -> int:
    """Build the controller (:func:`~controller.app.wiring.build_controller`, the
    path the demo, the benches and the end-to-end tests take too) and run it.

    SIGTERM and SIGINT stop it after the pass under way; the data plane (the router
    and every release) keeps serving and the last line says what was left and how
    to stop it (``mdc down``). Exit codes: 0 (stopped by SIGTERM, or ``--once``
    with every model Healthy), 1 (``--once`` with a model not Healthy, or a failed
    pass), 130 (SIGINT)."""
    controller = build_controller(config, secret=secret)
    reconciler, daemon = controller.reconciler, controller.daemon
    received: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        received.append(signum)
        daemon.stop()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    daemon.start()
    print(f"mdc run: serving {daemon.url}/ (dashboard, /metrics, /healthz)", file=sys.stderr)
    shown: dict[str, str] = {}

    def on_pass(result: PassResult) -> None:
        for entry in result.plan:
            status = reconciler.statuses.get(entry.model)
            line = f"{entry.model}: {entry.move}"
            if status is not None:
                line += f" -> {status.phase}"
                if status.canary is not None:
                    line += f" (step {status.step}/{status.steps}, weight {status.weight}%)"
            if shown.get(entry.model) != line:
                shown[entry.model] = line
                print(f"mdc run: {visible(line)}", file=sys.stderr)
        for name, status in sorted(reconciler.statuses.items()):
            key = f"endpoint of {name}"
            if status.endpoint and shown.get(key) != status.endpoint:
                shown[key] = status.endpoint
                print(f"mdc run: {name}: routed at {status.endpoint}", file=sys.stderr)
        for diagnostic in result.diagnostics:
            if shown.get(diagnostic.render()) is None:
                shown[diagnostic.render()] = "shown"
                print(f"mdc run: {diagnostic.render()}", file=sys.stderr)

    try:
        if once:
            healthy, moving = daemon.settle(timeout, on_pass)
            _print_models(reconciler)
            if moving and not received:
                print(
                    f"mdc run: still moving after {timeout:.0f}s: {', '.join(moving)}",
                    file=sys.stderr,
                )
            code = 0 if healthy else EXIT_INVALID
        else:
            code = int(daemon.run(on_pass=on_pass))
            if received and received[-1] == signal.SIGTERM:
                code = 0
    finally:
        try:
            left = _left_running(reconciler, config)
        except MdcError as exc:
            left = f"stopped; what it left serving is unknown: {exc.message}"
        controller.close()
        print(f"mdc run: {left}", file=sys.stderr)
    return 130 if received and received[-1] == signal.SIGINT else code


def _print_models(reconciler: Reconciler) -> None:
    """``--once``'s answer on stdout: one line per model, its phase and URL."""
    for name, status in sorted(reconciler.statuses.items()):
        version = status.stable.version if status.stable is not None else "-"
        print(f"{name}\t{status.phase}\t{version}\t{status.endpoint or '-'}")


def _left_running(reconciler: Reconciler, config: Config) -> str:
    """The last line: what keeps serving for the next controller, and how to stop it."""
    router = reconciler.router
    routes = router.routes() if isinstance(router, SupervisedRouter) else {}
    releases = [
        r
        for r in reconciler.runtime.releases.values()
        if r.state not in (State.STOPPED, State.FAILED) and r.pid is not None
    ]
    if not routes and not releases:
        return "stopped; nothing left running"
    parts = []
    if routes and isinstance(router, SupervisedRouter):
        parts.append(f"the router (pid {router.pid}; {len(routes)} routes)")
    if releases:
        names = ", ".join(f"{r.spec.name} (pid {r.pid})" for r in releases)
        parts.append(f"{len(releases)} releases: {names}")
    return (
        f"stopped; left serving for the next controller on {config.state_dir}: "
        f"{' and '.join(parts)}. Stop them with: mdc down --state-dir {config.state_dir}"
    )


def down(args: argparse.Namespace) -> int:
    """``mdc down``: stop what a controller left serving in a state directory (the
    router, after its requests in flight, then every local release). Refused while
    a controller holds the directory."""
    state = Path(args.state_dir).absolute()
    if not state.is_dir():
        print(f"mdc down: {state}: no such state directory", file=sys.stderr)
        return EXIT_INVALID
    lock = StateLock(state)
    try:
        lock.acquire()
    except MdcError as exc:
        print(f"mdc down: {exc.message}; stop that controller first", file=sys.stderr)
        return EXIT_INVALID
    try:
        router = SupervisedRouter(state)
        if router.adopted:
            count = len(router.routes())
            router.shutdown()
            print(f"stopped the router (pid {router.pid}; {count} routes)")
        else:
            router.close()
        if (state / "haproxy" / "haproxy.pid").exists():  # a controller run with --router haproxy
            proxy = HAProxyRouter(state)
            if proxy.adopted:
                proxy.shutdown()
                print(f"stopped HAProxy (pid {proxy.pid})")
            else:
                proxy.close()
        home = bento_home(Path(args.bento_home) if args.bento_home else None, state)
        runtime = LocalRuntime(state, home)
        running = [r for r in runtime.list() if r.state not in (State.STOPPED, State.FAILED)]
        for release in running:
            runtime.stop(release.spec.name)
            print(f"stopped {release.spec.name} (pid {release.pid})")
        if not router.adopted and not running:
            print(f"nothing runs for {state}")
    finally:
        lock.release()
    return 0


def demo(args: argparse.Namespace) -> int:
    """``mdc demo``: a team's week on one machine (see :mod:`controller.demo`)."""
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.ERROR,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    base = Path(args.dir) if args.dir else None
    if base is not None and base.exists() and any(base.iterdir()):
        print(f"mdc demo: {base} is not empty", file=sys.stderr)
        return EXIT_USAGE

    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt  # SIGTERM stops the demo as Ctrl-C does: everything goes

    signal.signal(signal.SIGTERM, interrupt)
    try:
        return run_demo(base, keep=args.keep)
    except KeyboardInterrupt:
        print("mdc demo: interrupted; everything it started is stopped", file=sys.stderr)
        return 130
    except (TimeoutError, RuntimeError, MdcError) as exc:
        print(f"mdc demo: {exc}", file=sys.stderr)
        return EXIT_INVALID
