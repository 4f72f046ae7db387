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
import codecs
import json
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from controller.adapters.git.local import LocalRepository
from controller.adapters.model_registry import registry_from_env
from controller.adapters.nvml import read_nvml
from controller.adapters.packaging import Packager, Source
from controller.adapters.runtime.local import release_log
from controller.app.daemon import Config, StateLock
from controller.app.manual import Pins, StateRecords, lock_holder, read_records, send_command
from controller.app.wiring import bento_home, python_environments
from controller.cli.records import RepoError, local_path, open_repo, recorded_statuses
from controller.core.inventory import Inventory, build_inventory
from controller.errors import MdcError
from controller.spec.kinds import Discovery, Model
from controller.spec.loader import load_desired
from controller.spec.tree import DirTree, Tree
from controller.ui.pool_view import planned_holdings, pool_report, recorded_holdings, render
from controller.ui.terminal import (
    EXIT_INVALID,
    EXIT_OK,
    EXIT_USAGE,
    Style,
    progress,
    report,
    silence_stdout,
    visible,
    visible_lines,
)

__all__ = ["FOLLOW_INTERVAL", "build", "logs", "manual", "pool"]

#: Seconds between looks at a followed log (``mdc logs -f``).
FOLLOW_INTERVAL = 0.2


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


def _build_one(
    packager: Packager, model: Model, tree: Tree, source: Source, fmt: str
) -> dict[str, Any]:
    """Build one model's bento: its row (``error`` set when it failed, said on stderr)."""
    started = time.perf_counter()
    try:
        built = packager.build(model, tree, source)
    except MdcError as exc:
        print(f"mdc build: {exc}", file=sys.stderr)
        return {"model": model.name, "error": exc.reason, "message": str(exc)}
    seconds = round(time.perf_counter() - started, 2)
    if fmt == "text":
        what = f"built in {seconds:g}s" if built.built else "present"
        print(f"{visible(model.name):<24} {visible(built.bento_tag):<40} {what}", flush=True)
    return {
        "model": model.name,
        "bento": built.bento_tag,
        "modelTag": built.model_tag,
        "built": built.built,
        "seconds": seconds,
    }


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
    try:
        registry = registry_from_env(None)  # MLFLOW_TRACKING_URI, as the controller reads it
    except MdcError as exc:
        print(f"mdc build: {exc}", file=sys.stderr)
        return EXIT_USAGE
    packager = Packager(
        bento_home(Path(args.bento_home) if args.bento_home else None, Path(args.state_dir)),
        Path(args.state_dir),
        registry=registry,
        environments=python_environments(Config(), Path(args.state_dir).absolute()),
    )
    source = Source(str(path.resolve()), _revision(str(path)))
    rows, failed = [], False
    with progress(sys.stderr) as note:
        for number, name in enumerate(names, 1):
            note(f"building {name} ({number}/{len(names)})")
            row = _build_one(packager, models[name], tree, source, args.format)
            failed |= "error" in row
            rows.append(row)
    if args.format == "json":
        print(json.dumps({"builds": rows}, indent=2))
    return EXIT_INVALID if failed else EXIT_OK


def _known(args: argparse.Namespace, records: StateRecords) -> bool:
    """Whether the controller on ``--state-dir`` has recorded ``args.model`` (if
    not, say so on stderr, with the models it knows)."""
    if args.model in records.models:
        return True
    known = ", ".join(records.models) or "none recorded yet"
    print(
        f"mdc {args.verb}: the controller on {args.state_dir} knows no model {args.model!r} "
        f"(known: {known})",
        file=sys.stderr,
    )
    return False


def _tail(path: Path, lines: int) -> tuple[bytes, int]:
    """The last ``lines`` lines of ``path`` and the size they end at (read from
    the end, a block at a time: a log can be large)."""
    with path.open("rb") as f:
        end = f.seek(0, os.SEEK_END)
        data, at = b"", end
        while at > 0 and data.count(b"\n") <= lines:
            step = min(at, 64 * 1024)
            at -= step
            f.seek(at)
            data = f.read(step) + data
    kept = data.splitlines(keepends=True)[-lines:] if lines > 0 else []
    return b"".join(kept), end


def _follow(path: Path, at: int, write: Callable[[str], object]) -> None:
    """Print what is added to ``path`` after ``at``, as ``tail -f`` does, until
    interrupted; a file cut short is read again from its start."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    while True:
        try:
            size = path.stat().st_size
        except OSError:
            size = at
        if size < at:
            at = 0
        if size > at:
            with path.open("rb") as f:
                f.seek(at)
                chunk = f.read(size - at)
            at += len(chunk)
            write(visible_lines(decoder.decode(chunk)))
            sys.stdout.flush()
        time.sleep(FOLLOW_INTERVAL)


def logs(args: argparse.Namespace) -> int:
    """``mdc logs MODEL``: the last lines the model's stable (or canary) release
    wrote; with ``--follow``, what it writes next, until Ctrl-C or until the
    reader of stdout goes (both end with 0)."""
    state = Path(args.state_dir)
    if not state.is_dir():
        print(
            f"mdc logs: {args.state_dir}: no such state directory (give the controller's "
            "--state-dir)",
            file=sys.stderr,
        )
        return EXIT_INVALID
    records = read_records(state, args.status_branch)
    if not _known(args, records):
        return EXIT_INVALID
    name = records.release(args.model, args.release)
    if name is None:
        print(f"mdc logs: {args.model} has no {args.release} release", file=sys.stderr)
        return EXIT_INVALID
    path = release_log(state, name)
    if not path.exists():
        print(f"mdc logs: release {name} has written no log yet ({path})", file=sys.stderr)
        return EXIT_INVALID
    text, end = _tail(path, max(0, args.lines))
    sys.stdout.write(visible_lines(text.decode(errors="replace")))
    if not args.follow:
        return EXIT_OK
    try:
        sys.stdout.flush()
        _follow(path, end, sys.stdout.write)
    except KeyboardInterrupt:
        return EXIT_OK
    except BrokenPipeError:
        silence_stdout()
        return EXIT_OK
    return EXIT_OK  # pragma: no cover - a follow ends only by an interrupt


def manual(args: argparse.Namespace) -> int:
    """``mdc promote|abort|pause|resume|retry MODEL``: a command for the next pass
    of the controller on ``--state-dir``; refused (exit 1, nothing written) when
    no controller runs there or it knows no such model."""
    state = Path(args.state_dir)
    if lock_holder(StateLock(state).path) is None:
        print(
            f"mdc {args.verb}: no controller runs on the state directory {args.state_dir} "
            f"(nothing holds {StateLock(state).path}); start one with mdc run, or give the "
            "--state-dir of the one that runs",
            file=sys.stderr,
        )
        return EXIT_INVALID
    if not _known(args, read_records(state, args.status_branch)):
        return EXIT_INVALID
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
