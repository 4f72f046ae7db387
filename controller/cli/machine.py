"""The ``mdc`` verbs about this machine and its state directory: ``pool``,
``build``, ``logs`` and the manual canary commands (``promote``, ``abort``,
``pause``, ``resume``, ``retry``).

``mdc pool`` pictures the GPU pools of a spec repository (NVML for this node,
holdings from the status branch when there is one, else planned; ``--repo``
takes every form ``mdc status`` takes, through
:func:`~controller.cli.records.open_repo`); ``mdc build``
builds the models' bentos; ``mdc logs`` shows a release's output; the manual
commands leave a command in the state directory for the controller's next pass.
Each verb takes the parsed arguments and returns the exit code. Called by
:func:`controller.cli.main.main`.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from controller.adapters.git.local import LocalRepository
from controller.adapters.nvml import read_nvml
from controller.adapters.packaging import Packager, Source
from controller.adapters.runtime.local import release_log
from controller.app.manual import Pins, send_command
from controller.app.wiring import bento_home
from controller.cli.records import RepoError, local_path, open_repo, recorded_statuses
from controller.core.inventory import Inventory, build_inventory
from controller.errors import MdcError
from controller.spec.kinds import Discovery
from controller.spec.loader import load_desired
from controller.spec.tree import DirTree, Tree
from controller.ui.pool_view import planned_holdings, pool_report, recorded_holdings, render
from controller.ui.terminal import EXIT_INVALID, EXIT_OK, EXIT_USAGE, Style, report

__all__ = ["build", "logs", "manual", "pool"]


def _pool_specs(args: argparse.Namespace) -> tuple[Tree, list[Any], list[str]]:
    """The specs ``mdc pool`` pictures, the statuses recorded for them and what
    could not be read. A local directory that is not a bare repository is read
    as files (a working copy, or specs not in git yet), its status branch from
    its git repository if it has one; a bare repository or a remote URL is read
    at its release branch, as ``mdc status`` reads it. Raises
    :class:`~controller.cli.records.RepoError` and
    :class:`~controller.errors.MdcError`."""
    path = local_path(args.repo)
    local = LocalRepository.discover(path) if path is not None else None
    if path is not None and (local is None or not local.bare):
        if local is None:
            return DirTree(path), [], []
        branch = args.status_branch
        tip = local.first_ref([f"refs/heads/{branch}", f"refs/remotes/origin/{branch}"])
        return DirTree(path), *recorded_statuses(local, tip)
    repo, tip, status_tip = open_repo(args.repo, args.branch, args.status_branch)
    return repo.tree(tip)[1], *recorded_statuses(repo, status_tip)


def pool(args: argparse.Namespace) -> int:
    """``mdc pool [NAME]``: inventory, holdings, free and stranded GPUs, quotas."""
    try:
        tree, statuses, problems = _pool_specs(args)
    except RepoError as exc:
        print(f"mdc pool: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except MdcError as exc:
        print(f"mdc pool: {exc}", file=sys.stderr)
        return EXIT_INVALID
    result = load_desired(tree)
    pools = sorted(result.desired.pools.values(), key=lambda p: p.name)
    if args.name is not None:
        pools = [p for p in pools if p.name == args.name]
        if not pools:
            print(f"mdc pool: no valid GPUPool named {args.name!r}", file=sys.stderr)
            return EXIT_INVALID
    local = os.environ.get("MDC_NODE_NAME") or socket.gethostname()
    reports = []
    for pool in pools:
        discovered: dict[str, Any] = {}
        if any(n.name == local and n.discovery is Discovery.NVML for n in pool.nodes):
            try:
                discovered[local] = read_nvml(local)
            except MdcError as exc:
                discovered[local] = exc
        inventory = build_inventory(pool, discovered)
        if pool.cluster is not None:
            inventory = Inventory(
                pool.name,
                (),
                (
                    f"pool {pool.name} takes its nodes from the cluster: the controller running "
                    f"with --runtime ray reads them (see pools/{pool.name}.yaml on its status "
                    "branch)",
                ),
            )
        mine = [
            s
            for s in statuses
            if s.name in result.desired.models and result.desired.models[s.name].pool == pool.name
        ]
        if statuses:
            picture = pool_report(
                pool, inventory, recorded_holdings(mine), "recorded", statuses=mine, now=time.time()
            )
        else:
            holdings, waiting = planned_holdings(result.desired, pool, inventory)
            picture = pool_report(pool, inventory, holdings, "planned", waiting=waiting)
        picture["disagreements"] += problems
        reports.append(picture)
    if args.format == "json":
        print(json.dumps({"pools": reports, "valid": result.ok}, indent=2))
    else:
        style = Style(sys.stdout)
        for picture in reports:
            print("\n".join(render(picture, style.bold)))
    if not result.ok:
        report(result.diagnostics, sys.stderr)
        return EXIT_INVALID
    return EXIT_OK


def _revision(path: str) -> str:
    repo = LocalRepository.discover(path)
    return "" if repo is None else repo.head_revision()


def build(args: argparse.Namespace) -> int:
    """``mdc build [MODEL...]``: build the bentos that are not built yet (from the
    files of a local directory: a build packs a working copy)."""
    try:
        path = local_path(args.repo)
        if path is None:
            raise RepoError(f"{args.repo}: a remote URL; mdc build reads a local directory")
        tree = DirTree(path)
    except RepoError as exc:
        print(f"mdc build: {exc}", file=sys.stderr)
        return EXIT_USAGE
    result = load_desired(tree)
    models = result.desired.models
    names = args.models or sorted(models)
    missing = [n for n in names if n not in models]
    if missing:
        for name in missing:
            invalid = any(ref.kind == "Model" and ref.name == name for ref in result.invalid)
            why = "is invalid" if invalid else "does not exist"
            print(f"mdc build: model {name!r} {why}", file=sys.stderr)
        if not result.ok:
            report(result.diagnostics, sys.stderr)
        return EXIT_INVALID
    packager = Packager(
        bento_home(Path(args.bento_home) if args.bento_home else None, Path(args.state_dir)),
        Path(args.state_dir),
    )
    source = Source(str(Path(args.repo).resolve()), _revision(args.repo))
    rows, failed = [], False
    for name in names:
        started = time.perf_counter()
        try:
            built = packager.build(models[name], tree, source)
        except MdcError as exc:
            failed = True
            print(f"mdc build: {exc}", file=sys.stderr)
            rows.append({"model": name, "error": exc.reason, "message": str(exc)})
            continue
        seconds = round(time.perf_counter() - started, 2)
        rows.append(
            {
                "model": name,
                "bento": built.bento_tag,
                "modelTag": built.model_tag,
                "built": built.built,
                "seconds": seconds,
            }
        )
        if args.format == "text":
            what = f"built in {seconds:g}s" if built.built else "present"
            print(f"{name:<24} {built.bento_tag:<40} {what}", flush=True)
    if args.format == "json":
        print(json.dumps({"builds": rows}, indent=2))
    return EXIT_INVALID if failed else EXIT_OK


def logs(args: argparse.Namespace) -> int:
    """``mdc logs MODEL``: the last lines a release wrote."""
    path = release_log(Path(args.state_dir), f"{args.model}/{args.release}")
    if not path.exists():
        print(
            f"mdc logs: no logs for {args.model}/{args.release} in {args.state_dir}",
            file=sys.stderr,
        )
        return EXIT_INVALID
    lines = path.read_text(errors="replace").splitlines()[-args.lines :]
    print("\n".join(lines))
    return EXIT_OK


def manual(args: argparse.Namespace) -> int:
    """``mdc promote|abort|pause|resume|retry MODEL``: a command for the next pass."""
    state = Path(args.state_dir)
    if args.verb == "retry":
        pins = Pins(state)
        pinned = pins.get(args.model)
        if pinned is None:
            print(f"mdc retry: {args.model} has no failed spec pinned", file=sys.stderr)
            return EXIT_INVALID
    action = send_command(state, args.model, args.verb, args.who)
    if args.verb == "retry":
        Pins(state).unpin(args.model)
    print(f"{args.verb} {args.model}: asked by {action.who}; the controller acts on its next pass")
    return EXIT_OK
