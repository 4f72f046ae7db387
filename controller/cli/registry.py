"""``mdc registry watch``: the registry-to-pull-request bridge on the command line.

Reads the release branch of ``--repo`` (a local repository, or a remote fetched
into a cache), asks the MLflow tracking server (``--tracking-uri``, else the
configuration's ``mlflowTrackingUri``, else ``MLFLOW_TRACKING_URI``) for the
versions each Model's ``promoteOn`` marks, and opens one pull request per new
version on ``--github-repository`` (token from ``MDC_GITHUB_TOKEN``), closing
its own superseded ones (:class:`~controller.app.registry_bridge.RegistryBridge`).
``--once`` looks once and prints what it did (``--format json`` for scripts);
without it, it looks every ``--interval`` seconds until Ctrl-C. Exit 0, or 1
when a model's look failed, 2 on a usage error. Called by
:func:`controller.cli.main.main`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

from controller.adapters.github.client import GitHubReporter
from controller.adapters.model_registry import registry_from_env
from controller.app.daemon import Config, load_config
from controller.app.registry_bridge import Proposal, RegistryBridge
from controller.cli.records import RepoError, open_repo
from controller.errors import MdcError
from controller.ui.terminal import EXIT_INVALID, EXIT_OK, EXIT_USAGE, visible

__all__ = ["add_parser", "registry"]


def add_parser(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``mdc registry watch`` and its flags."""
    text = "Propose new MLflow versions as pull requests (the registry bridge)."
    parser = verbs.add_parser("registry", help=text, description=text)
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    watch = actions.add_parser(
        "watch",
        help="Open a pull request for each new version a Model's promoteOn marks.",
        description="For each Model with promoteOn and artifact.mlflow on the release "
        "branch, open one pull request that moves the spec to the newest version the "
        "alias or tag marks (never twice for a version), and close the bridge's own "
        "pull requests that it supersedes.",
    )
    watch.add_argument("--repo", default=".", help="a local repository or a remote URL")
    watch.add_argument("--branch", help="the release branch (default: the repo's HEAD, or main)")
    watch.add_argument("--config", help="an mdc.yaml (repo, branch, githubRepository, ...)")
    watch.add_argument("--github-repository", metavar="OWNER/NAME", help="where PRs open")
    watch.add_argument("--tracking-uri", help="MLflow (default: mlflowTrackingUri, else env)")
    watch.add_argument("--once", action="store_true", help="look once, print, exit")
    watch.add_argument("--interval", type=float, default=60.0, help="seconds between looks")
    watch.add_argument("--format", choices=("text", "json"), default="text")


def _print(proposals: list[Proposal], fmt: str) -> None:
    if fmt == "json":
        print(json.dumps({"proposals": [asdict(p) for p in proposals]}, indent=2))
        return
    for p in proposals:
        where = f" #{p.pull}" if p.pull is not None else ""
        closed = f" (closed {', '.join(f'#{n}' for n in p.closed)})" if p.closed else ""
        said = f": {p.message}" if p.message else ""
        line = f"{p.model:<24} {p.action:<9} {p.version or '-':<6}{where}{closed}{said}"
        print(visible(line), flush=True)
    if not proposals:
        print("no Model declares promoteOn", flush=True)


def registry(args: argparse.Namespace) -> int:
    """``mdc registry watch``."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(Path(args.config)) if args.config else Config()
    except MdcError as exc:
        print(f"mdc registry: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    repository = args.github_repository or config.github_repository
    repo = args.repo if args.repo != "." or not config.repo else config.repo
    branch = args.branch or (config.branch if args.config else None)
    if not repository:
        print(
            "mdc registry: --github-repository (or githubRepository:) is required", file=sys.stderr
        )
        return EXIT_USAGE
    try:
        mlflow = registry_from_env(args.tracking_uri or config.mlflow_tracking_uri)
        env = {**os.environ}
        if config.github_api_url:
            env["MDC_GITHUB_API_URL"] = config.github_api_url
        github = GitHubReporter.from_env(repository, env=env, max_attempts=3, max_wait=10.0)
    except MdcError as exc:
        print(f"mdc registry: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    if mlflow is None:
        print(
            "mdc registry: no MLflow tracking server: --tracking-uri, mlflowTrackingUri "
            "or MLFLOW_TRACKING_URI",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if github is None:
        print("mdc registry: no GitHub token (MDC_GITHUB_TOKEN)", file=sys.stderr)
        return EXIT_USAGE
    try:
        while True:
            try:
                local, tip, _ = open_repo(repo, branch, config.status_branch)
                _, tree = local.tree(tip)
                base = branch or local.head_branch() or "main"
                proposals = RegistryBridge(mlflow, github, base).scan(tree)
            except RepoError as exc:
                print(f"mdc registry: {exc}", file=sys.stderr)
                return EXIT_USAGE
            except MdcError as exc:
                print(f"mdc registry: {exc}", file=sys.stderr)
                if args.once:
                    return EXIT_INVALID
                proposals = []
            _print(proposals, args.format if args.once else "text")
            if args.once:
                failed = any(p.action == "failed" for p in proposals)
                return EXIT_INVALID if failed else EXIT_OK
            time.sleep(max(1.0, args.interval))
    finally:
        mlflow.close()
        github.close()
