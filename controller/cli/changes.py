"""The ``mdc`` verbs about changes to the release branch: ``watch`` and
``plan --base REF --head REF``.

``mdc watch`` follows the branch (polls, and push webhooks) and reports each
revision -- changed, force-pushed, signed, valid -- without changing anything.
``mdc plan --base/--head`` says what merging a pull request would change, and
with ``--comment PR`` posts that plan on the PR and sets its ``mdc/plan``
commit status. Each verb takes the parsed arguments and returns the exit code.
Called by :func:`controller.cli.main.main`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from controller.adapters.git.local import LocalRepository
from controller.adapters.git.signing import SigningMode, SigningPolicy
from controller.adapters.git.source import Credentials, GitSource, PollResult, SourcePoller
from controller.adapters.github.client import GitHubReporter
from controller.adapters.github.webhook import Trigger, WebhookServer, load_secret
from controller.app.watch import Watcher, push_listener
from controller.core.monitor import traffic_from_rollups
from controller.core.pr_plan import MARKER, plan_change, render_markdown, render_text
from controller.core.traffic import ObservedTraffic
from controller.errors import MdcError
from controller.spec.loader import SnapshotLoader
from controller.ui.terminal import EXIT_INVALID, EXIT_OK, EXIT_USAGE, json_result, visible

__all__ = ["change_plan", "watch"]


def watch(args: argparse.Namespace) -> int:
    """``mdc watch REPO``: one line per revision of the release branch."""
    try:
        policy = SigningPolicy(
            SigningMode(args.require_signed or "off"),
            gpg_keyring=Path(args.gpg_keyring) if args.gpg_keyring else None,
            ssh_allowed_signers=Path(args.ssh_allowed_signers)
            if args.ssh_allowed_signers
            else None,
        )
        source = GitSource(args.repo, args.branch, Path(args.state_dir), Credentials.from_env())
        secret = (
            load_secret(file=os.environ.get("MDC_WEBHOOK_SECRET_FILE")) if args.webhook else b""
        )
    except (ValueError, MdcError) as exc:
        print(f"mdc watch: {exc}", file=sys.stderr)
        return EXIT_USAGE
    poller = SourcePoller(source, args.interval, signing=policy)
    loader = SnapshotLoader()
    failed = False

    def show(result: PollResult) -> None:
        nonlocal failed
        line: dict[str, Any] = {"condition": result.condition}
        if result.snapshot is not None:
            loaded = loader.load(source.tree(result.snapshot), result.snapshot.tree)
            line |= {
                "revision": result.snapshot.revision,
                "changed": result.changed,
                "forced": result.forced,
                "valid": loaded.ok,
                "counts": json_result(args.repo, loaded)["counts"],
                "errors": [d.render() for d in loaded.diagnostics],
            }
        failed = result.error is not None or result.refused is not None
        if args.format == "json":
            print(json.dumps(line), flush=True)
            return
        what = "force-pushed" if result.forced else "changed" if result.changed else "unchanged"
        revision = visible(line.get("revision", "-"))
        print(f"{revision}  {visible(what)}  {visible(result.condition)}", flush=True)
        for error in line.get("errors", []):
            print(f"    {visible(error)}", flush=True)

    logging.basicConfig(level=logging.WARNING, format="mdc watch: %(message)s")
    trigger = Trigger()
    watcher = Watcher(poller, show, trigger)
    if args.once:
        watcher.run(max_polls=1)
        return EXIT_INVALID if failed else EXIT_OK
    server = None
    if args.webhook:
        host, _, port = args.webhook.rpartition(":")
        server = WebhookServer(
            secret, push_listener(args.branch, trigger), host=host or "127.0.0.1", port=int(port)
        )
        server.start()
        print(f"mdc watch: webhooks on {server.url}", file=sys.stderr, flush=True)
    try:
        watcher.run()
    except KeyboardInterrupt:
        pass
    finally:
        if server is not None:
            server.stop()
    return EXIT_OK


def _post_plan(args: argparse.Namespace, plan: Any, head: str) -> int:
    """``--comment PR``: the plan as the PR's one mdc comment, and ``mdc/plan`` on its head."""
    repository = args.github_repository or os.environ.get("GITHUB_REPOSITORY")
    if not repository:
        print("mdc plan: --comment needs --github-repository OWNER/NAME", file=sys.stderr)
        return EXIT_USAGE
    env = dict(os.environ)
    if "MDC_GITHUB_API_URL" not in env and env.get("GITHUB_API_URL"):
        env["MDC_GITHUB_API_URL"] = env["GITHUB_API_URL"]  # set by GitHub Actions
    try:
        github = GitHubReporter.from_env(repository, env=env)
        if github is None:
            print("mdc plan: --comment needs MDC_GITHUB_TOKEN or GITHUB_TOKEN", file=sys.stderr)
            return EXIT_USAGE
        with github:
            comment = github.upsert_comment(args.comment, render_markdown(plan), MARKER)
            state = "success" if plan.applicable else "failure"
            text = "the plan applies" if plan.applicable else "the change cannot be applied"
            github.set_status(args.status_sha or head, "mdc/plan", state, text, comment.html_url)
    except MdcError as exc:
        print(f"mdc plan: GitHub: {visible(exc.message)}", file=sys.stderr)
        return EXIT_INVALID
    where = f"{visible(repository)}#{args.comment}: {visible(comment.html_url)}"
    print(f"mdc plan: posted on {where}", file=sys.stderr)
    return EXIT_OK


def _observed_traffic(repo: LocalRepository) -> dict[str, ObservedTraffic]:
    """Each model's traffic from the status branch's hourly rollups, where this
    repository has the branch (``mdc/status`` or ``origin/mdc/status``)."""
    for ref in ("mdc/status", "origin/mdc/status"):
        try:
            _, tree = repo.tree(ref)
        except MdcError:
            continue
        out = {}
        for path in tree.walk():
            if not (path.startswith("monitor/") and path.endswith(".yaml")):
                continue
            try:
                doc = yaml.safe_load(tree.read(path))
            except (yaml.YAMLError, MdcError, OSError):
                continue
            traffic = traffic_from_rollups(doc) if isinstance(doc, dict) else None
            if traffic is not None:
                out[path.removeprefix("monitor/").removesuffix(".yaml")] = traffic
        return out
    return {}


def change_plan(args: argparse.Namespace) -> int:
    """``mdc plan --base REF --head REF``: what merging the PR would change."""
    if not (args.base and args.head):
        print("mdc plan: --base and --head go together", file=sys.stderr)
        return EXIT_USAGE
    repo = LocalRepository.discover(args.path)
    if repo is None:
        print(f"mdc plan: {args.path}: not a git repository", file=sys.stderr)
        return EXIT_USAGE
    commits = []
    for ref in (args.base, args.head):
        try:
            commits.append(repo.tree(ref))
        except MdcError:
            print(f"mdc plan: {ref!r} names no commit in {args.path}", file=sys.stderr)
            return EXIT_USAGE
    (base_sha, base), (head_sha, head) = commits
    plan = plan_change(base, head, base_sha, head_sha, _observed_traffic(repo))
    if args.comment is not None:
        code = _post_plan(args, plan, head_sha)
        if code != EXIT_OK:
            return code
    if args.format == "json":
        print(json.dumps(plan.as_dict(), indent=2))
    elif args.markdown:
        print(render_markdown(plan))
    else:
        print(render_text(plan))
    return EXIT_OK if plan.applicable else EXIT_INVALID
