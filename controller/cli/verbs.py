"""The ``mdc`` verbs that reach beyond the spec files: git history, watching a
branch, GPU pools, builds, release logs and manual canary control.

Each function takes the parsed arguments of its verb and returns the exit
code; :mod:`controller.cli.main` parses, dispatches and owns the shared output
helpers. Heavy parts (libgit2, NVML, the runtime) are imported inside the
verb that needs them, so ``mdc validate`` starts fast.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from controller.adapters.git.history import model_history
from controller.adapters.git.source import GitSource
from controller.errors import MdcError
from controller.spec.loader import load_desired
from controller.spec.tree import DirTree
from controller.ui.terminal import EXIT_INVALID, EXIT_OK, EXIT_USAGE, Style, json_result, report

__all__ = ["build", "change_plan", "history", "logs", "manual", "pool", "watch"]


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


def _open_or_exit(args: argparse.Namespace) -> tuple[Any, str, str | None] | int:
    """:func:`_open_history_repo`, or the exit code after saying why on stderr."""
    try:
        return _open_history_repo(args)
    except _UsageError as exc:
        print(f"mdc {args.verb}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except MdcError as exc:
        print(f"mdc {args.verb}: {exc}", file=sys.stderr)
        return EXIT_INVALID


def history(args: argparse.Namespace) -> int:
    opened = _open_or_exit(args)
    if isinstance(opened, int):
        return opened
    repo, tip, status_tip = opened
    events = model_history(repo, tip, status_tip, args.model, args.limit)
    if args.format == "json":
        print(json.dumps({"model": args.model, "events": [e.as_dict() for e in events]}, indent=2))
    else:
        style = Style(sys.stdout)
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


def watch(args: argparse.Namespace) -> int:
    from controller.adapters.git.signing import SigningMode, SigningPolicy  # noqa: PLC0415
    from controller.adapters.git.source import Credentials, PollResult, SourcePoller  # noqa: PLC0415
    from controller.adapters.github.webhook import Trigger, WebhookServer, load_secret  # noqa: PLC0415
    from controller.app.watch import Watcher, push_listener  # noqa: PLC0415
    from controller.spec.loader import SnapshotLoader  # noqa: PLC0415

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
        print(f"{line.get('revision', '-')}  {what}  {result.condition}", flush=True)
        for error in line.get("errors", []):
            print(f"    {error}", flush=True)

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


def _recorded_statuses(path: str) -> tuple[list[Any], list[str]]:
    """Model statuses from the status branch of the git repository at ``path``, if any."""
    import pygit2  # noqa: PLC0415

    from controller.adapters.git.source import GitTree  # noqa: PLC0415
    from controller.core.status import parse_model_status  # noqa: PLC0415

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


def pool(args: argparse.Namespace) -> int:
    import socket  # noqa: PLC0415
    import time  # noqa: PLC0415

    from controller.adapters.nvml import read_nvml  # noqa: PLC0415
    from controller.core.inventory import Inventory, build_inventory  # noqa: PLC0415
    from controller.spec.kinds import Discovery  # noqa: PLC0415
    from controller.ui.pool_view import (  # noqa: PLC0415
        planned_holdings,
        pool_report,
        recorded_holdings,
        render,
    )

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


def build(args: argparse.Namespace) -> int:
    import time  # noqa: PLC0415

    from controller.adapters.packaging import Packager, Source  # noqa: PLC0415

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
            report(result.diagnostics, sys.stderr)
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


def logs(args: argparse.Namespace) -> int:
    from controller.adapters.runtime.local import release_log  # noqa: PLC0415

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
    from controller.app.rollout import Pins, send_command  # noqa: PLC0415

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


def _post_plan(args: argparse.Namespace, plan: Any, head: str) -> int:
    """``--comment PR``: the plan as the PR's one mdc comment, and ``mdc/plan`` on its head."""
    from controller.adapters.github.client import GitHubReporter  # noqa: PLC0415
    from controller.core.pr_plan import MARKER, render_markdown  # noqa: PLC0415

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
        print(f"mdc plan: GitHub: {exc.message}", file=sys.stderr)
        return EXIT_INVALID
    print(f"mdc plan: posted on {repository}#{args.comment}: {comment.html_url}", file=sys.stderr)
    return EXIT_OK


def change_plan(args: argparse.Namespace) -> int:
    """``mdc plan --base REF --head REF``: what merging the PR would change."""
    import pygit2  # noqa: PLC0415

    from controller.adapters.git.source import GitTree  # noqa: PLC0415
    from controller.core.pr_plan import plan_change, render_markdown, render_text  # noqa: PLC0415

    if not (args.base and args.head):
        print("mdc plan: --base and --head go together", file=sys.stderr)
        return EXIT_USAGE
    found = pygit2.discover_repository(args.path)
    if found is None:
        print(f"mdc plan: {args.path}: not a git repository", file=sys.stderr)
        return EXIT_USAGE
    repo = pygit2.Repository(found)
    commits = []
    for ref in (args.base, args.head):
        try:
            commit = repo.revparse_single(ref).peel(pygit2.Commit)
        except (KeyError, ValueError, pygit2.GitError):
            print(f"mdc plan: {ref!r} names no commit in {args.path}", file=sys.stderr)
            return EXIT_USAGE
        commits.append(commit)
    base, head = (GitTree(repo, str(c.tree_id)) for c in commits)
    plan = plan_change(base, head, str(commits[0].id), str(commits[1].id))
    if args.comment is not None:
        code = _post_plan(args, plan, str(commits[1].id))
        if code != EXIT_OK:
            return code
    if args.format == "json":
        print(json.dumps(plan.as_dict(), indent=2))
    elif args.markdown:
        print(render_markdown(plan))
    else:
        print(render_text(plan))
    return EXIT_OK if plan.applicable else EXIT_INVALID


def run_controller(args: argparse.Namespace) -> int:
    """``mdc run``: the controller; ``--once`` runs one pass and exits 0 or 1."""
    import logging  # noqa: PLC0415
    import signal  # noqa: PLC0415

    from controller.adapters.github.webhook import load_secret  # noqa: PLC0415
    from controller.adapters.router import make_router  # noqa: PLC0415
    from controller.app.daemon import Config, Daemon, StateLock, load_config  # noqa: PLC0415
    from controller.app.reconciler import Reconciler  # noqa: PLC0415

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
        return _serve(config, secret, args.once, Reconciler, Daemon, make_router, signal)
    except MdcError as exc:
        print(f"mdc run: {exc.message}", file=sys.stderr)
        return EXIT_INVALID
    finally:
        lock.release()


def _serve(  # noqa: PLR0917
    config: Any,
    secret: bytes | None,
    once: bool,
    reconciler_of: Any,
    daemon_of: Any,
    make_router: Any,
    signal: Any,
) -> int:
    from controller.adapters.nvml import read_nvml  # noqa: PLC0415
    from controller.app.reporting import reporter_for  # noqa: PLC0415

    reporter, on_event = reporter_for(config)
    reconciler = reconciler_of(
        config.repo,
        config.branch,
        config.state_dir,
        router=make_router(config.router, **router_options(config)),
        status_branch=config.status_branch,
        poll_interval=config.poll_interval,
        reporter=reporter,
        nvml=read_nvml if config.node else None,  # this machine's GPUs, as node NAME
        node=config.node,
        router_ports=config.router_ports,
        runtime=config.runtime,
        ray_address=config.ray_address,
        ray_namespace=config.ray_namespace,
    )
    if hasattr(reporter, "bind"):
        reporter.bind(reconciler)
    daemon = daemon_of(
        config,
        reconciler,
        secret=secret,
        on_event=on_event,
        routes={"/": _dashboard_route(reconciler, config)},
    )
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: daemon.stop())
    daemon.start()
    print(f"mdc run: serving {daemon.url}/ (dashboard, /metrics, /healthz)", file=sys.stderr)
    shown: dict[str, str] = {}

    def on_pass(result: Any) -> None:
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
        reconciler.close()
        if hasattr(reporter, "close"):
            reporter.close()


def router_options(config: Any) -> dict[str, Any]:
    """What ``make_router`` needs besides the name: HAProxy keeps its files in the state dir."""
    return {"state_dir": config.state_dir} if config.router == "haproxy" else {}


def _dashboard_route(reconciler: Any, config: Any) -> Any:
    def page() -> tuple[int, str, bytes]:
        import time  # noqa: PLC0415

        from controller.ui.dashboard import render_dashboard  # noqa: PLC0415
        from controller.ui.pool_view import pool_report, recorded_holdings  # noqa: PLC0415

        load = reconciler.load
        statuses = sorted(dict(reconciler.statuses).values(), key=lambda s: s.name)
        pool = None
        policies: dict[str, Any] = {}
        policy_of: dict[str, str] = {}
        if load is not None:
            policies = dict(load.desired.policies)
            policy_of = {name: m.rollout for name, m in load.desired.models.items()}
            pools = list(load.desired.pools.values())
            if pools:
                from controller.core.inventory import build_inventory  # noqa: PLC0415

                first = pools[0]
                holdings = [
                    h
                    for h in recorded_holdings(statuses)
                    if load.desired.models.get(h.model) is None
                    or load.desired.models[h.model].pool == first.name
                ]
                pool = pool_report(
                    first,
                    build_inventory(first, {}),
                    holdings,
                    "status",
                    statuses=statuses,
                    now=time.time(),
                )
        view = getattr(reconciler, "monitor_view", None)
        html = render_dashboard(
            statuses,
            pool,
            policies,
            time.time(),
            policy_of=policy_of,
            title=f"mdc - {config.repo}",
            monitors=view() if view is not None else (),
        )
        return 200, "text/html; charset=utf-8", html.encode()

    return page


def _ask_controller(args: argparse.Namespace, path: str) -> Any:
    """GET ``path`` of the controller at ``--controller`` as JSON; None (after saying
    why on stderr) when it cannot be had."""
    import httpx  # noqa: PLC0415

    try:
        answer = httpx.get(args.controller.rstrip("/") + path, timeout=10)
        answer.raise_for_status()
        return answer.json()
    except (httpx.HTTPError, ValueError) as exc:
        print(f"mdc {args.verb}: {args.controller}: {exc}", file=sys.stderr)
        return None


def status(args: argparse.Namespace) -> int:
    """``mdc status``: a table of every model (from the status branch, or a controller)."""
    import time  # noqa: PLC0415

    from controller.core.status import parse_model_status  # noqa: PLC0415
    from controller.ui.dashboard import render_status_table, status_rows  # noqa: PLC0415

    now = time.time()
    if args.controller:
        rows = _ask_controller(args, "/api/status")
        if rows is None:
            return EXIT_INVALID
    else:
        opened = _open_or_exit(args)
        if isinstance(opened, int):
            return opened
        repo, _, status_tip = opened
        statuses = []
        if status_tip is not None:
            from controller.adapters.git.source import GitTree  # noqa: PLC0415

            tree = GitTree(repo, str(repo.get(status_tip).tree_id))
            for path in sorted(tree.walk()):
                if path.startswith("models/") and path.endswith(".yaml"):
                    try:
                        statuses.append(parse_model_status(path, tree.read(path)))
                    except MdcError as exc:
                        print(f"mdc status: {exc}", file=sys.stderr)
        rows = status_rows(statuses, now)
    if args.format == "json":
        print(json.dumps({"models": rows}, indent=2, default=str))
    elif not rows:
        print("no model has a status yet (is the controller running?)")
    else:
        print(render_status_table(rows, Style(sys.stdout)))
    return EXIT_OK


def monitor(args: argparse.Namespace) -> int:
    """``mdc monitor MODEL``: objective states, drift and the last rollups of the
    running version -- from the status branch, or live from a controller."""
    from controller.core.monitor import default_objectives, view_from_record, view_text  # noqa: PLC0415

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
        import yaml  # noqa: PLC0415

        from controller.adapters.git.source import GitTree  # noqa: PLC0415
        from controller.core.status import parse_model_status  # noqa: PLC0415

        opened = _open_or_exit(args)
        if isinstance(opened, int):
            return opened
        repo, tip, status_tip = opened
        files = {}
        if status_tip is not None:  # only the two files this model has there
            tree = GitTree(repo, str(repo.get(status_tip).tree_id))
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
        desired = load_desired(GitTree(repo, str(repo.get(tip).tree_id))).desired
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
        print(style.bold(lines[0]) + f"  (from the {view['source']})")
        print("\n".join(lines[1:]))
    return EXIT_OK


def demo(args: argparse.Namespace) -> int:
    """``mdc demo``: a team's week on one machine (see :mod:`controller.demo`)."""
    import logging  # noqa: PLC0415

    from controller.demo import run_demo  # noqa: PLC0415

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
