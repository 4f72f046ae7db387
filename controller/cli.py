"""The ``mdc`` command line: ``mdc VERB [ARGS]``, in the manner of git and kubectl.

Owns argument parsing, output formats and exit codes. Every read command
takes ``--format text|json``; text goes to a person (colour only on a
terminal, never when ``NO_COLOR`` is set), JSON to scripts. Errors go to
stderr.

Exit codes scripts can trust:

* 0 -- success (the specs are valid)
* 1 -- the command ran and found a problem (invalid specs)
* 2 -- usage error (unknown flag, a path that is not a directory)

Verbs so far: ``validate``, ``plan``, ``pool``, ``build``, ``logs``,
``history``, ``watch``, ``version``. Called by the ``mdc`` console script and
``python -m controller``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from controller import __version__
from controller.costs import per_day
from controller.documents import Diagnostic
from controller.errors import MdcError
from controller.gitsource import GitSource
from controller.history import model_history
from controller.loader import LoadResult, load_desired
from controller.overview import canary_checks, policy_timeline, summarize, team_usage
from controller.tree import DirTree
from controller.units import format_bytes

__all__ = ["EXIT_INVALID", "EXIT_OK", "EXIT_USAGE", "main", "verbs"]

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_USAGE = 2


class _Style:
    """ANSI styling, switched on only for a terminal without NO_COLOR."""

    def __init__(self, stream: TextIO) -> None:
        self.on = (
            stream.isatty() and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"
        )

    def __call__(self, text: str, code: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.on else text

    def bold(self, text: str) -> str:
        return self(text, "1")

    def red(self, text: str) -> str:
        return self(text, "31")

    def green(self, text: str) -> str:
        return self(text, "32")

    def yellow(self, text: str) -> str:
        return self(text, "33")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mdc",
        description="GitOps controller for model delivery.",
    )
    parser.add_argument("--version", action="version", version=f"mdc {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    def read_command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = verbs.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--format", choices=("text", "json"), default="text", help="output format")
        return sub

    validate = read_command("validate", "Check a spec repository; exit 1 if anything is invalid.")
    validate.add_argument("path", nargs="?", default=".", help="spec repository (default: .)")
    plan = read_command(
        "plan", "Show what a spec repository asks for: GPUs per team, rollout timelines."
    )
    plan.add_argument("path", nargs="?", default=".", help="spec repository (default: .)")
    history = read_command(
        "history", "Every change to a model's spec, merged with what mdc did about it."
    )
    history.add_argument("model", help="the model's name (metadata.name)")
    history.add_argument(
        "--repo", default=".", help="a local repository or a remote URL (default: .)"
    )
    history.add_argument("--branch", help="the release branch (default: the repo's HEAD, or main)")
    history.add_argument("--status-branch", default="mdc/status", help="default: mdc/status")
    history.add_argument("--limit", type=int, default=200, help="most events shown")
    watch = read_command(
        "watch",
        "Follow a spec repository's release branch (poll, and webhooks) and report "
        "each revision: changed, force-pushed, signed, valid. Changes nothing.",
    )
    watch.add_argument("repo", help="remote URL or path of the spec repository")
    watch.add_argument("--branch", default="main", help="release branch (default: main)")
    watch.add_argument("--interval", type=float, default=60.0, help="seconds between polls")
    watch.add_argument("--state-dir", default=".mdc-state", help="where the mirror is kept")
    watch.add_argument(
        "--webhook",
        metavar="HOST:PORT",
        help="serve GitHub push webhooks here (needs "
        "MDC_WEBHOOK_SECRET or MDC_WEBHOOK_SECRET_FILE)",
    )
    watch.add_argument("--once", action="store_true", help="poll once and exit")
    watch.add_argument("--require-signed", choices=("gpg", "ssh"), help="refuse unsigned tips")
    watch.add_argument("--gpg-keyring", help="public keyring for --require-signed gpg")
    watch.add_argument("--ssh-allowed-signers", help="allowed signers for --require-signed ssh")
    pool = read_command(
        "pool", "The GPU pools: inventory, who holds what, free and stranded capacity, quotas."
    )
    pool.add_argument("name", nargs="?", help="one pool (default: all)")
    pool.add_argument("--repo", default=".", help="spec repository (default: .)")
    build = read_command(
        "build", "Build the bentos of a spec repository's models (only what changed)."
    )
    build.add_argument("models", nargs="*", metavar="MODEL", help="models to build (default: all)")
    build.add_argument("--repo", default=".", help="spec repository (default: .)")
    build.add_argument("--state-dir", default=".mdc-state", help="work files and logs")
    build.add_argument(
        "--bento-home", help="BentoML store (default: $BENTOML_HOME, else STATE_DIR/bentoml)"
    )
    logs = verbs.add_parser("logs", help="Show a release's output.")
    logs.add_argument("model")
    logs.add_argument("--release", choices=("stable", "canary"), default="stable")
    logs.add_argument("--state-dir", default=".mdc-state")
    logs.add_argument("--lines", type=int, default=100)
    for verb, text in (
        (
            "promote",
            "Send all traffic to the model's canary now (after a manual pause, or on purpose).",
        ),
        ("abort", "Roll the model's canary back now."),
        ("pause", "Freeze the model's canary where it is."),
        (
            "resume",
            "Carry on with a paused canary (also approves a pause that waits for a person).",
        ),
        ("retry", "Allow a rolled-back spec to be tried again (removes its pin)."),
    ):
        manual = verbs.add_parser(verb, help=text, description=text)
        manual.add_argument("model")
        manual.add_argument("--state-dir", default=".mdc-state")
        manual.add_argument("--as", dest="who", help="who asks (default: $MDC_USER or $USER)")
    read_command("version", "Print the version.")
    return parser


def verbs() -> tuple[str, ...]:
    """The verbs ``mdc`` knows, for scripts and tests that call it."""
    for action in _parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return tuple(action.choices)
    return ()  # pragma: no cover - the parser always has verbs


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    if args.verb == "version":
        if args.format == "json":
            print(json.dumps({"version": __version__}))
        else:
            print(f"mdc {__version__}")
        return EXIT_OK
    if args.verb == "history":
        return _history(args)
    if args.verb == "watch":
        return _watch(args)
    if args.verb == "pool":
        return _pool(args)
    if args.verb == "build":
        return _build(args)
    if args.verb in ("promote", "abort", "pause", "resume", "retry"):
        return _manual(args)
    if args.verb == "logs":
        return _logs(args)
    try:
        tree = DirTree(args.path)
    except NotADirectoryError:
        print(f"mdc {args.verb}: {args.path}: not a directory", file=sys.stderr)
        return EXIT_USAGE
    result = load_desired(tree)
    if args.verb == "validate":
        return _validate(args.path, result, args.format)
    return _plan(args.path, result, args.format)


def _counts(result: LoadResult) -> str:
    d = result.desired
    parts = [
        _plural(len(d.models), "model"),
        _plural(len(d.pools), "pool"),
        _plural(len(d.policies), "rollout policy", "rollout policies"),
    ]
    return ", ".join(parts)


def _plural(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else (many or one + 's')}"


def _report(diagnostics: Sequence[Diagnostic], stream: TextIO) -> None:
    style = _Style(stream)
    for d in diagnostics:
        where = style.bold(f"{d.file}:{d.line}:{d.column}:")
        path = f" {d.path}:" if d.path else ""
        print(f"{where}{path} {style.red(d.message)} [{d.rule}]", file=stream)
    files = len({d.file for d in diagnostics})
    print(
        f"{_plural(len(diagnostics), 'error')} in {_plural(files, 'file')}",
        file=stream,
    )


def _validate(path: str, result: LoadResult, fmt: str) -> int:
    code = EXIT_OK if result.ok else EXIT_INVALID
    if fmt == "json":
        print(json.dumps(_json_result(path, result), indent=2))
        return code
    if result.ok:
        style = _Style(sys.stdout)
        print(f"{path}: {style.green('valid')} ({_counts(result)})")
    else:
        _report(result.diagnostics, sys.stderr)
    return code


def _json_result(path: str, result: LoadResult) -> dict[str, Any]:
    return {
        "path": path,
        "valid": result.ok,
        "counts": {
            "models": len(result.desired.models),
            "pools": len(result.desired.pools),
            "policies": len(result.desired.policies),
        },
        "errors": [d.as_dict() for d in result.diagnostics],
        "invalid": sorted(str(ref) for ref in result.invalid),
    }


def _plan(path: str, result: LoadResult, fmt: str) -> int:
    code = EXIT_OK if result.ok else EXIT_INVALID
    if fmt == "json":
        print(
            json.dumps(_json_result(path, result) | {"plan": summarize(result.desired)}, indent=2)
        )
        return code
    if not result.ok:
        _report(result.diagnostics, sys.stderr)
        print("the plan below leaves out the invalid objects", file=sys.stderr)
    out = sys.stdout
    style = _Style(out)
    desired = result.desired
    print(style.bold(f"Plan for {path}") + f" ({_counts(result)})", file=out)
    for pool in sorted(desired.pools.values(), key=lambda p: p.name):
        total = pool.declared_gpus
        gpus = f"{total} GPUs declared" if total is not None else "GPUs discovered with NVML"
        print(f"\n{style.bold('Pool ' + pool.name)}  sharing {pool.sharing}, {gpus}", file=out)
        for node in pool.nodes:
            groups = ", ".join(
                f"{g.count} x {g.product} ({format_bytes(g.memory)})" for g in node.gpus
            )
            print(
                f"  node {node.name:<12} {node.discovery:<9} {groups or '(read from NVML)'}",
                file=out,
            )
        rows = [r for r in team_usage(desired) if r.pool == pool.name]
        print(
            f"  {'team':<14}{'guaranteed':>11}{'limit':>7}{'priority':>9}{'requested':>11}"
            f"{'canary peak':>13}{'GPU-h/day':>11}  verdict",
            file=out,
        )
        for r in rows:
            verdict = r.verdict
            colour = style.green if verdict in ("ok", "borrows") else style.yellow
            print(
                f"  {r.team:<14}{r.guaranteed:>11g}{r.limit:>7g}{r.priority:>9}"
                f"{r.requested:>11g}{r.canary_peak:>13g}{per_day(r.requested):>11g}"
                f"  {colour(verdict)}",
                file=out,
            )
    checks = canary_checks(desired)
    if checks:
        print(f"\n{style.bold('Canaries')}", file=out)
        for check in checks:
            line = check.describe()
            print(f"  {line if check.fits else style.yellow(line)}", file=out)
    print(f"\n{style.bold('Rollout policies')}", file=out)
    for policy in sorted(desired.policies.values(), key=lambda p: p.name):
        print(f"  {policy.name}: {policy_timeline(policy).describe()}", file=out)
    print(f"\n{style.bold('Models')}", file=out)
    for model in sorted(desired.models.values(), key=lambda m: m.name):
        print(
            f"  {model.name} {model.version}: team {model.team}, {model.resources.describe()} "
            f"from pool {model.pool}, rolled out by {model.rollout}",
            file=out,
        )
        print(f"    service {model.service_module}:{model.service_class}", file=out)
    return code


def _open_history_repo(args: argparse.Namespace) -> tuple[Any, str, str | None]:
    """The repository to read, the release branch tip and the status branch tip."""
    import pygit2  # noqa: PLC0415 - only this verb needs libgit2

    local = Path(args.repo)
    if local.exists():
        found = pygit2.discover_repository(str(local))
        if found is None:
            raise _UsageError(f"{args.repo}: not a git repository")
        repo = pygit2.Repository(found)
        branch = args.branch or (repo.head.shorthand if not repo.head_is_unborn else "main")
        tips = {
            b: _first_ref(repo, [f"refs/heads/{b}", f"refs/remotes/origin/{b}"])
            for b in (branch, args.status_branch)
        }
    else:
        source = GitSource(args.repo, args.branch or "main", _cache_dir())
        repo = source.repo
        branch = source.branch
        tips = source.fetch_refs([branch, args.status_branch])
    tip = tips[branch]
    if tip is None:
        raise _UsageError(f"{args.repo}: no branch {branch!r}")
    return repo, tip, tips[args.status_branch]


def _first_ref(repo: Any, names: list[str]) -> str | None:
    for name in names:
        ref = repo.references.get(name)
        if ref is not None:
            return str(ref.resolve().target)
    return None


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mdc"


class _UsageError(Exception):
    pass


def _history(args: argparse.Namespace) -> int:
    try:
        repo, tip, status_tip = _open_history_repo(args)
    except _UsageError as exc:
        print(f"mdc history: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except MdcError as exc:
        print(f"mdc history: {exc}", file=sys.stderr)
        return EXIT_INVALID
    events = model_history(repo, tip, status_tip, args.model, args.limit)
    if args.format == "json":
        print(json.dumps({"model": args.model, "events": [e.as_dict() for e in events]}, indent=2))
    else:
        style = _Style(sys.stdout)
        for e in events:
            label = style.bold("spec  ") if e.kind == "spec" else style.green("status")
            print(f"{e.when}  {label}  {e.commit[:10]}  {e.subject}  ({e.author})")
            for change in e.changes:
                print(f"    {change}")
            if e.source_revision:
                print(f"    for {e.source_revision}")
    if not events:
        print(f"mdc history: no change to model {args.model!r} found", file=sys.stderr)
        return EXIT_INVALID
    return EXIT_OK


def _watch(args: argparse.Namespace) -> int:
    from controller.gitsource import Credentials, PollResult, SourcePoller  # noqa: PLC0415
    from controller.loader import SnapshotLoader  # noqa: PLC0415
    from controller.signing import SigningMode, SigningPolicy  # noqa: PLC0415
    from controller.watcher import Watcher, push_listener  # noqa: PLC0415
    from controller.webhook import Trigger, WebhookServer, load_secret  # noqa: PLC0415

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
    except ValueError as exc:
        print(f"mdc watch: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except MdcError as exc:
        print(f"mdc watch: {exc}", file=sys.stderr)
        return EXIT_USAGE
    poller = SourcePoller(source, args.interval, signing=policy)
    loader = SnapshotLoader()
    failed = False

    def report(result: PollResult) -> None:
        nonlocal failed
        line: dict[str, Any] = {"condition": result.condition}
        if result.snapshot is not None:
            loaded = loader.load(source.tree(result.snapshot), result.snapshot.tree)
            line |= {
                "revision": result.snapshot.revision,
                "changed": result.changed,
                "forced": result.forced,
                "valid": loaded.ok,
                "counts": _json_result(args.repo, loaded)["counts"],
                "errors": [d.render() for d in loaded.diagnostics],
            }
        failed = result.error is not None or result.refused is not None
        if args.format == "json":
            print(json.dumps(line), flush=True)
            return
        what = "force-pushed" if result.forced else "changed" if result.changed else "unchanged"
        print(f"{line.get('revision', '-')}  {what}  {result.condition}", flush=True)
        for error in line.get("errors", []):
            print(f"    {error}", flush=True)

    logging.basicConfig(level=logging.WARNING, format="mdc watch: %(message)s")
    trigger = Trigger()
    watcher = Watcher(poller, report, trigger)
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


def _recorded_statuses(path: str) -> tuple[list[Any], list[str]]:
    """Model statuses from the status branch of the git repository at ``path``, if any."""
    import pygit2  # noqa: PLC0415

    from controller.gitsource import GitTree  # noqa: PLC0415
    from controller.status import parse_model_status  # noqa: PLC0415

    found = pygit2.discover_repository(path)
    if found is None:
        return [], []
    repo = pygit2.Repository(found)
    tip = _first_ref(repo, ["refs/heads/mdc/status", "refs/remotes/origin/mdc/status"])
    if tip is None:
        return [], []
    commit = repo.get(tip)
    if not isinstance(commit, pygit2.Commit):
        return [], [f"mdc/status points at {tip}, not a commit"]
    tree = GitTree(repo, str(commit.tree_id))
    statuses, problems = [], []
    for file in tree.walk():
        if file.startswith("models/") and file.endswith(".yaml"):
            try:
                statuses.append(parse_model_status(file, tree.read(file)))
            except MdcError as exc:
                problems.append(str(exc))
    return statuses, problems


def _pool(args: argparse.Namespace) -> int:
    import socket  # noqa: PLC0415
    import time  # noqa: PLC0415

    from controller.inventory import build_inventory, read_nvml  # noqa: PLC0415
    from controller.poolview import (  # noqa: PLC0415
        planned_holdings,
        pool_report,
        recorded_holdings,
        render,
    )
    from controller.spec import Discovery  # noqa: PLC0415

    try:
        tree = DirTree(args.repo)
    except NotADirectoryError:
        print(f"mdc pool: {args.repo}: not a directory", file=sys.stderr)
        return EXIT_USAGE
    result = load_desired(tree)
    pools = sorted(result.desired.pools.values(), key=lambda p: p.name)
    if args.name is not None:
        pools = [p for p in pools if p.name == args.name]
        if not pools:
            print(f"mdc pool: no valid GPUPool named {args.name!r}", file=sys.stderr)
            return EXIT_INVALID
    statuses, problems = _recorded_statuses(args.repo)
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
        mine = [
            s
            for s in statuses
            if s.name in result.desired.models and result.desired.models[s.name].pool == pool.name
        ]
        if statuses:
            report = pool_report(
                pool, inventory, recorded_holdings(mine), "recorded", statuses=mine, now=time.time()
            )
        else:
            holdings, waiting = planned_holdings(result.desired, pool, inventory)
            report = pool_report(pool, inventory, holdings, "planned", waiting=waiting)
        report["disagreements"] += problems
        reports.append(report)
    if args.format == "json":
        print(json.dumps({"pools": reports, "valid": result.ok}, indent=2))
    else:
        style = _Style(sys.stdout)
        for report in reports:
            print("\n".join(render(report, style.bold)))
    if not result.ok:
        _report(result.diagnostics, sys.stderr)
        return EXIT_INVALID
    return EXIT_OK


def _bento_home(args: argparse.Namespace) -> Path:
    if args.bento_home:
        return Path(args.bento_home)
    if os.environ.get("BENTOML_HOME"):
        return Path(os.environ["BENTOML_HOME"])
    return Path(args.state_dir) / "bentoml"


def _revision(path: str) -> str:
    import pygit2  # noqa: PLC0415

    found = pygit2.discover_repository(path)
    if found is None:
        return ""
    repo = pygit2.Repository(found)
    return "" if repo.head_is_unborn else str(repo.head.target)


def _build(args: argparse.Namespace) -> int:
    import time  # noqa: PLC0415

    from controller.packager import Packager, Source  # noqa: PLC0415

    try:
        tree = DirTree(args.repo)
    except NotADirectoryError:
        print(f"mdc build: {args.repo}: not a directory", file=sys.stderr)
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
            _report(result.diagnostics, sys.stderr)
        return EXIT_INVALID
    packager = Packager(_bento_home(args), Path(args.state_dir))
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


def _logs(args: argparse.Namespace) -> int:
    from controller.runtime import release_log  # noqa: PLC0415

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


def _manual(args: argparse.Namespace) -> int:
    from controller.rollout import Pins, send_command  # noqa: PLC0415

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
