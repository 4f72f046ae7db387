"""The ``mdc`` verbs that read what happened: ``history``, ``status`` and ``monitor``.

Each reads the spec repository's release branch and its status branch -- a
local repository, or a remote one fetched into a mirror under
``$XDG_CACHE_HOME/mdc`` -- or, with ``--controller URL``, asks a running
controller's JSON API. Owns the three verbs (each takes the parsed arguments
and returns the exit code) and what every verb that reads git through
``--repo`` shares (``mdc pool`` too): :func:`open_repo`, which takes the same
forms everywhere (a path, ``file://``, ``git://``, ``http(s)://``, ``ssh://``,
``user@host:path``) and names the real problem of one it cannot read
(:class:`RepoError`: ``PATH: no such directory``, ``not a git repository``, a
refused URL; a usage error, exit 2), :func:`local_path` and
:func:`recorded_statuses`. Called by :func:`controller.cli.main.main`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from controller.adapters.controller_api import ControllerAPI
from controller.adapters.git.history import model_history
from controller.adapters.git.local import LocalRepository
from controller.adapters.git.source import GitSource, parse_remote
from controller.core.monitor import default_objectives
from controller.core.status import ModelStatus, parse_model_status
from controller.errors import MdcError, TransientError
from controller.spec.loader import load_desired
from controller.ui.dashboard import render_status_table
from controller.ui.monitor_view import view_from_record, view_text
from controller.ui.preview_view import preview_text
from controller.ui.status_table import status_document
from controller.ui.terminal import EXIT_INVALID, EXIT_OK, EXIT_USAGE, Style, visible

__all__ = [
    "RepoError",
    "history",
    "local_path",
    "monitor",
    "open_repo",
    "recorded_statuses",
    "status",
]


class RepoError(Exception):
    """``--repo`` names nothing mdc can read as a repository (a usage error)."""


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mdc"


def local_path(repo: str) -> Path | None:
    """The directory ``repo`` names (a path or a ``file://`` URL), or None for a
    remote URL; :class:`RepoError` when it is refused or is not a directory."""
    try:
        remote = parse_remote(repo)
    except MdcError as exc:
        raise RepoError(str(exc)) from None
    if remote.scheme != "file":
        return None
    path = Path(urlsplit(remote.url).path) if "://" in remote.url else Path(remote.url)
    if not path.exists():
        raise RepoError(f"{repo}: no such directory")
    if not path.is_dir():
        raise RepoError(f"{repo}: not a directory")
    return path


def open_repo(
    repo: str, branch: str | None, status_branch: str
) -> tuple[LocalRepository, str, str | None]:
    """The repository ``repo`` names (local, or a remote fetched into a mirror in
    the cache), its release branch tip and its status branch tip (None if absent).

    The release branch is ``branch``, else a local repository's HEAD, else
    ``main``. Raises :class:`RepoError` (say it, exit 2) when ``repo`` cannot be
    read as a repository, :class:`~controller.errors.MdcError` when a fetch fails.
    """
    path = local_path(repo)
    if path is not None:
        local = LocalRepository.discover(path)
        if local is None:
            raise RepoError(f"{repo}: not a git repository")
        branch = branch or local.head_branch() or "main"
        tips = {
            b: local.first_ref([f"refs/heads/{b}", f"refs/remotes/origin/{b}"])
            for b in (branch, status_branch)
        }
    else:
        source = GitSource(repo, branch or "main", _cache_dir())
        local = LocalRepository(source.repo)
        branch = source.branch
        tips = source.fetch_refs([branch, status_branch])
    tip = tips[branch]
    if tip is None:
        raise RepoError(f"{repo}: no branch {branch!r}")
    return local, tip, tips[status_branch]


def recorded_statuses(
    repo: LocalRepository, status_tip: str | None
) -> tuple[list[ModelStatus], list[str]]:
    """The model statuses at ``status_tip``, and what could not be read (each a sentence)."""
    if status_tip is None:
        return [], []
    try:
        _, tree = repo.tree(status_tip)
    except MdcError:
        return [], [f"the status branch points at {status_tip}, not a commit"]
    statuses, problems = [], []
    for path in sorted(tree.walk()):
        if path.startswith("models/") and path.endswith(".yaml"):
            try:
                statuses.append(parse_model_status(path, tree.read(path)))
            except MdcError as exc:
                problems.append(str(exc))
    return statuses, problems


def _open_or_exit(args: argparse.Namespace) -> tuple[LocalRepository, str, str | None] | int:
    """:func:`open_repo` of ``--repo``, or the exit code after saying why on stderr."""
    try:
        return open_repo(args.repo, args.branch, args.status_branch)
    except RepoError as exc:
        print(f"mdc {args.verb}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except MdcError as exc:
        print(f"mdc {args.verb}: {exc}", file=sys.stderr)
        return EXIT_INVALID


def _ask_controller(args: argparse.Namespace, path: str) -> Any:
    """GET ``path`` of the controller at ``--controller`` as JSON; None (after saying
    why on stderr) when it cannot be had."""
    try:
        return ControllerAPI(args.controller).get(path)
    except TransientError as exc:
        print(f"mdc {args.verb}: {exc}", file=sys.stderr)
        return None


def history(args: argparse.Namespace) -> int:
    """``mdc history MODEL``: its spec changes merged with what mdc did about them."""
    opened = _open_or_exit(args)
    if isinstance(opened, int):
        return opened
    repo, tip, status_tip = opened
    events = model_history(repo.repo, tip, status_tip, args.model, args.limit)
    if args.format == "json":
        print(json.dumps({"model": args.model, "events": [e.as_dict() for e in events]}, indent=2))
    else:
        style = Style(sys.stdout)
        for e in events:
            label = style.bold("spec  ") if e.kind == "spec" else style.green("status")
            print(
                f"{visible(e.when)}  {label}  {visible(e.commit[:10])}  {visible(e.subject)}"
                f"  ({visible(e.author)})"
            )
            for change in e.changes:
                print(f"    {visible(change)}")
            if e.source_revision:
                print(f"    for {visible(e.source_revision)}")
    if not events:
        print(f"mdc history: no change to model {args.model!r} found", file=sys.stderr)
        return EXIT_INVALID
    return EXIT_OK


def status(args: argparse.Namespace) -> int:
    """``mdc status``: a table of every model (from the status branch, or a controller)."""
    now = time.time()
    if args.controller:
        document = _ask_controller(args, "/api/status")
        if document is None:
            return EXIT_INVALID
        if isinstance(document, list):  # a controller from before the one shape
            document = {"models": document}
    else:
        opened = _open_or_exit(args)
        if isinstance(opened, int):
            return opened
        repo, _, status_tip = opened
        statuses, problems = recorded_statuses(repo, status_tip)
        for problem in problems:
            print(f"mdc status: {problem}", file=sys.stderr)
        document = status_document(statuses, now)
    rows = document.get("models") or []
    if args.format == "json":
        print(json.dumps(document, indent=2, default=str))
    elif not rows:
        print("no model has a status yet (is the controller running?)")
    else:
        print(render_status_table(rows, Style(sys.stdout)))
    return EXIT_OK


def monitor(args: argparse.Namespace) -> int:
    """``mdc monitor MODEL``: objective states, drift and the last rollups of the
    running version -- from the status branch, or live from a controller."""
    if args.controller:
        views = _ask_controller(args, "/api/monitor")
        if views is None:
            return EXIT_INVALID
        view = next((v for v in views if v.get("model") == args.model), None)
        if view is None:
            print(f"mdc monitor: the controller does not monitor {args.model!r}", file=sys.stderr)
            return EXIT_INVALID
        view["source"] = "controller"
    else:
        opened = _open_or_exit(args)
        if isinstance(opened, int):
            return opened
        repo, tip, status_tip = opened
        files = {}
        if status_tip is not None:  # only the two files this model has there
            _, tree = repo.tree(status_tip)
            wanted = {f"models/{args.model}.yaml", f"monitor/{args.model}.yaml"}
            files = {p: tree.read(p) for p in tree.walk() if p in wanted}
        raw = files.get(f"models/{args.model}.yaml")
        if raw is None:
            print(f"mdc monitor: no status of {args.model!r} on the status branch", file=sys.stderr)
            return EXIT_INVALID
        try:
            recorded = parse_model_status(f"models/{args.model}.yaml", raw)
        except MdcError as exc:
            print(f"mdc monitor: {exc}", file=sys.stderr)
            return EXIT_INVALID
        desired = load_desired(repo.tree(tip)[1]).desired
        model = desired.models.get(args.model)
        spec = model.monitor if model is not None else None
        policy = desired.policies.get(model.rollout) if model is not None else None
        rollups = files.get(f"monitor/{args.model}.yaml")
        view = view_from_record(
            args.model,
            recorded.stable.version if recorded.stable else None,
            default_objectives(spec, policy),
            spec.drift if spec is not None else None,
            recorded.monitor,
            yaml.safe_load(rollups) if rollups else None,
        )
        view["source"] = "status branch"
    if args.format == "json":
        print(json.dumps(view, indent=2, default=str))
    else:
        style = Style(sys.stdout)
        lines = view_text(view)
        print(style.bold(lines[0]) + f"  (from the {visible(view['source'])})")
        print("\n".join(lines[1:]))
    return EXIT_OK


def preview(args: argparse.Namespace) -> int:
    """``mdc preview MODEL``: the model's pull-request previews -- live from a
    controller (running ones and the last ended), or the last one ended as the
    status branch records it."""
    if args.controller:
        views = _ask_controller(args, "/api/previews")
        if views is None:
            return EXIT_INVALID
        rows = [v for v in views if isinstance(v, dict) and v.get("model") == args.model]
        source = "controller"
    else:
        opened = _open_or_exit(args)
        if isinstance(opened, int):
            return opened
        repo, _, status_tip = opened
        rows = []
        if status_tip is not None:
            _, tree = repo.tree(status_tip)
            path = f"previews/{args.model}.yaml"
            if path in set(tree.walk()):
                record = yaml.safe_load(tree.read(path))
                if isinstance(record, dict):
                    rows = [{**record, "phase": "ended"}]
        source = "status branch"
    if not rows:
        print(f"mdc preview: no preview of {args.model!r} (from the {source})", file=sys.stderr)
        return EXIT_INVALID
    if args.format == "json":
        print(json.dumps({"model": args.model, "source": source, "previews": rows}, indent=2))
        return EXIT_OK
    style = Style(sys.stdout)
    print(style.bold(visible(args.model)) + f"  (from the {source})")
    for row in rows:
        print("\n".join(preview_text(row)))
    return EXIT_OK
