"""The ``mdc`` verbs that run things: ``run`` (the controller) and ``demo``.

``mdc run`` reads its settings (``--config`` and flags), takes the state
directory's lock, builds the reconciler and the daemon (dashboard, ``/metrics``,
``/healthz``, ``/readyz``, webhooks on one port) and runs until SIGINT or
SIGTERM, or one pass with ``--once``; ``mdc demo`` tells :mod:`controller.demo`'s
story. Each verb takes the parsed arguments and returns the exit code. Called by
:func:`controller.cli.main.main`.
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
from controller.app.daemon import Config, StateLock, load_config
from controller.app.reconciler import PassResult
from controller.app.wiring import build_controller
from controller.demo import run_demo
from controller.errors import MdcError
from controller.ui.terminal import EXIT_INVALID, EXIT_USAGE

__all__ = ["demo", "run_controller"]


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
        return _serve(config, secret, args.once)
    except MdcError as exc:
        print(f"mdc run: {exc.message}", file=sys.stderr)
        return EXIT_INVALID
    finally:
        lock.release()


def _serve(config: Config, secret: bytes | None, once: bool) -> int:
    """Build the controller (:func:`~controller.app.wiring.build_controller`, the
    path the demo, the benches and the end-to-end tests take too) and run it."""
    controller = build_controller(config, secret=secret)
    reconciler, daemon = controller.reconciler, controller.daemon
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: daemon.stop())
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
                print(f"mdc run: {line}", file=sys.stderr)
        for diagnostic in result.diagnostics:
            if shown.get(diagnostic.render()) is None:
                shown[diagnostic.render()] = "shown"
                print(f"mdc run: {diagnostic.render()}", file=sys.stderr)

    try:
        return int(daemon.run(once=once, on_pass=on_pass))
    finally:
        controller.close()


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
    try:
        return run_demo(base, keep=args.keep)
    except KeyboardInterrupt:
        print("mdc demo: interrupted; everything it started is stopped", file=sys.stderr)
        return 130
    except (TimeoutError, RuntimeError, MdcError) as exc:
        print(f"mdc demo: {exc}", file=sys.stderr)
        return EXIT_INVALID
