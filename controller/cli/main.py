"""The ``mdc`` command line: ``mdc VERB [ARGS]``, in the manner of git and kubectl.

Owns argument parsing, output formats and exit codes. Every read command
takes ``--format text|json``; text goes to a person (colour only on a
terminal, never when ``NO_COLOR`` is set), JSON to scripts. Errors go to
stderr.

Exit codes scripts can trust:

* 0 -- success (the specs are valid)
* 1 -- the command ran and found a problem (invalid specs, an unknown model,
  no controller on the state directory)
* 2 -- usage error: an unknown verb or flag (the verb's own usage goes to
  stderr), no verb at all, a ``--repo`` or path that is no directory or no git
  repository
* 130 -- interrupted with Ctrl-C (``mdc logs -f`` and ``mdc watch`` end with 0:
  Ctrl-C is how they are meant to end)
* 141 -- stdout was closed by its reader (``mdc status | head -1``), as git
  does (128 + SIGPIPE): nothing more is written and no traceback is shown

``mdc`` alone prints the help on stdout (for a person to read, or page) and
exits 2: for a script, a command without a verb is a usage error.

Verbs: ``validate``, ``plan``, ``pool``, ``build``, ``logs``, ``history``,
``watch``, ``run``, ``status``, ``monitor``, ``demo``, ``registry watch``,
``promote``/``abort``/``pause``/``resume``/``retry``, ``version``. This module
carries out ``validate``, ``plan`` (of a directory) and ``version``; the others
live by subject in :mod:`controller.cli.records` (history, status, monitor),
:mod:`controller.cli.changes` (watch, plan --base/--head),
:mod:`controller.cli.machine` (pool, build, logs, the manual canary commands) and
:mod:`controller.cli.run` (run, demo) and :mod:`controller.cli.registry` (registry
watch). Called by the ``mdc`` console script and
``python -m controller``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from controller import __version__
from controller.cli import changes, machine, records, registry, run
from controller.core.costs import per_day
from controller.core.demand import canary_checks, policy_timeline, summarize, team_usage
from controller.spec.loader import LoadResult, load_desired
from controller.spec.tree import DirTree
from controller.spec.units import format_bytes
from controller.ui.terminal import (
    EXIT_BROKEN_PIPE,
    EXIT_INTERRUPTED,
    EXIT_INVALID,
    EXIT_OK,
    EXIT_USAGE,
    Style,
    counts,
    json_result,
    report,
    silence_stdout,
    visible,
)

__all__ = ["EXIT_INVALID", "EXIT_OK", "EXIT_USAGE", "main", "verbs"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mdc",
        description="GitOps controller for model delivery.",
    )
    parser.add_argument("--version", action="version", version=f"mdc {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    def read_command(
        name: str, help_text: str, formats: tuple[str, ...] = ("text", "json")
    ) -> argparse.ArgumentParser:
        sub = verbs.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--format", choices=formats, default="text", help="output format")
        return sub

    validate = read_command("validate", "Check a spec repository; exit 1 if anything is invalid.")
    validate.add_argument("path", nargs="?", default=".", help="spec repository (default: .)")
    plan = read_command(
        "plan",
        "Show what a spec repository asks for: GPUs per team, rollout timelines.",
        formats=("text", "json", "markdown"),
    )
    plan.add_argument("path", nargs="?", default=".", help="spec repository (default: .)")
    plan.add_argument("--repo", dest="repo_path", help="the same as PATH")
    plan.add_argument("--base", help="with --head: plan merging HEAD into BASE (git refs)")
    plan.add_argument("--head", help="with --base: the pull request's head (git ref)")
    plan.add_argument("--markdown", action="store_true", help="with --base/--head: the PR comment")
    plan.add_argument(
        "--comment",
        type=int,
        metavar="PR",
        help="with --base/--head: upsert the plan as one comment on pull request PR and set "
        "the commit status mdc/plan (token: MDC_GITHUB_TOKEN or GITHUB_TOKEN)",
    )
    plan.add_argument("--github-repository", metavar="OWNER/NAME", help="with --comment")
    plan.add_argument("--status-sha", help="with --comment: where mdc/plan goes (default: --head)")
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
    pool.add_argument("--repo", default=".", help="a local repository or a remote URL (default: .)")
    pool.add_argument("--branch", help="the release branch (default: the repo's HEAD, or main)")
    pool.add_argument("--status-branch", default="mdc/status", help="default: mdc/status")
    build = read_command(
        "build", "Build the bentos of a spec repository's models (only what changed)."
    )
    build.add_argument("models", nargs="*", metavar="MODEL", help="models to build (default: all)")
    build.add_argument("--repo", default=".", help="spec repository (default: .)")
    build.add_argument("--state-dir", default=".mdc-state", help="work files and logs")
    build.add_argument(
        "--bento-home", help="BentoML store (default: $BENTOML_HOME, else STATE_DIR/bentoml)"
    )
    logs = verbs.add_parser(
        "logs",
        help="Show a release's output.",
        description="Show the output of the release the controller runs as the model's "
        "stable (or canary), found through the state directory.",
    )
    logs.add_argument("model", help="the model's name")
    logs.add_argument("--release", choices=("stable", "canary"), default="stable")
    logs.add_argument(
        "--state-dir", default=".mdc-state", help="the controller's (default: .mdc-state)"
    )
    logs.add_argument("--status-branch", default="mdc/status", help="default: mdc/status")
    logs.add_argument("--lines", type=int, default=100, help="last lines shown (default: 100)")
    logs.add_argument(
        "-f", "--follow", action="store_true", help="then print what it writes, until Ctrl-C"
    )
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
        manual.add_argument("model", help="the model's name")
        manual.add_argument(
            "--state-dir", default=".mdc-state", help="the controller's (default: .mdc-state)"
        )
        manual.add_argument("--status-branch", default="mdc/status", help="default: mdc/status")
        manual.add_argument("--as", dest="who", help="who asks (default: $MDC_USER or $USER)")
    run = verbs.add_parser(
        "run",
        help="Run the controller: keep what runs equal to the release branch.",
        description="Run the controller: poll the release branch (and take its push "
        "webhooks), build, canary, promote or roll back, and record it all on the status "
        "branch. Serves the dashboard, /metrics, /healthz, /readyz and the webhook on one port.",
    )
    run.add_argument("--repo", help="remote URL or path of the spec repository")
    run.add_argument("--branch", help="release branch (default: main)")
    run.add_argument("--config", help="an mdc.yaml with these settings and more")
    run.add_argument("--state-dir", help="mirror, bentos, releases, lock (default: .mdc-state)")
    run.add_argument("--status-branch", help="where status is recorded (default: mdc/status)")
    run.add_argument("--listen", metavar="HOST:PORT", help="default: 127.0.0.1:8080")
    run.add_argument("--poll-interval", type=float, help="seconds between fetches (default: 30)")
    run.add_argument("--router", choices=("embedded", "haproxy"), help="default: embedded")
    run.add_argument("--runtime", choices=("local", "ray"), help="default: local")
    run.add_argument("--ray-address", help="with --runtime ray: the cluster (default: auto)")
    run.add_argument(
        "--ray-namespace",
        help="with --runtime ray: the Ray namespace of this controller's actors (default: mdc)",
    )
    run.add_argument("--github-repository", metavar="OWNER/NAME", help="report on GitHub")
    run.add_argument(
        "--prometheus", metavar="URL", help="Prometheus for PromQL checks ($MDC_PROMETHEUS_URL)"
    )
    run.add_argument(
        "--bento-home", help="BentoML store (default: $BENTOML_HOME, else STATE_DIR/bentoml)"
    )
    run.add_argument(
        "--once",
        action="store_true",
        help="one pass, then wait until its moves settle; print each model's phase and URL; "
        "exit 0 only if every model is Healthy",
    )
    run.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="with --once: the longest wait for the moves to settle (default: 600)",
    )
    run.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    status = read_command(
        "status", "Every model: versions, phase, canary step and weight, verdict, GPUs, age."
    )
    status.add_argument(
        "--repo", default=".", help="a local repository or a remote URL (default: .)"
    )
    status.add_argument("--status-branch", default="mdc/status", help="default: mdc/status")
    status.add_argument("--branch", help="the release branch (default: the repo's HEAD, or main)")
    status.add_argument("--controller", metavar="URL", help="ask a running controller instead")
    monitor = read_command(
        "monitor",
        "The running version of a model: objective states, drift score, last rollups.",
    )
    monitor.add_argument("model", help="the model's name")
    monitor.add_argument(
        "--repo", default=".", help="a local repository or a remote URL (default: .)"
    )
    monitor.add_argument("--status-branch", default="mdc/status", help="default: mdc/status")
    monitor.add_argument("--branch", help="the release branch (default: the repo's HEAD, or main)")
    monitor.add_argument("--controller", metavar="URL", help="ask a running controller (live)")
    preview = read_command(
        "preview",
        "A model's pull-request previews: running ones with their comparison so far, "
        "and the last one ended (recorded on the status branch).",
    )
    preview.add_argument("model", help="the model's name")
    preview.add_argument(
        "--repo", default=".", help="a local repository or a remote URL (default: .)"
    )
    preview.add_argument("--status-branch", default="mdc/status", help="default: mdc/status")
    preview.add_argument("--branch", help="the release branch (default: the repo's HEAD, or main)")
    preview.add_argument("--controller", metavar="URL", help="ask a running controller (live)")
    demo = verbs.add_parser(
        "demo",
        help="A team's week with mdc on this machine, in a few minutes (no GPU, no network).",
        description="Serve the example repo with git daemon, run the controller, deploy, "
        "then a PR that is canaried and promoted and one that is rolled back; prints "
        "status, the status branch's log and a model's history. Stops all it started.",
    )
    demo.add_argument("--dir", help="workspace (default: a new temporary directory)")
    demo.add_argument("--keep", action="store_true", help="keep running until Ctrl-C")
    demo.add_argument("-v", "--verbose", action="store_true", help="the controller's log too")
    down = verbs.add_parser(
        "down",
        help="Stop what a controller left serving: the router and the releases.",
        description="Stop the router (after its requests in flight) and every local "
        "release that mdc run left serving in a state directory for the next controller. "
        "Refused while a controller runs on it.",
    )
    down.add_argument(
        "--state-dir", default=".mdc-state", help="the controller's (default: .mdc-state)"
    )
    down.add_argument(
        "--bento-home", help="BentoML store (default: $BENTOML_HOME, else STATE_DIR/bentoml)"
    )
    registry.add_parser(verbs)
    read_command("version", "Print the version.")
    return parser


def verbs() -> tuple[str, ...]:
    """The verbs ``mdc`` knows, for scripts and tests that call it."""
    return tuple(_subparsers(_parser()))


#: The verbs another module of this package carries out, by name.
_VERBS: dict[str, Callable[[argparse.Namespace], int]] = {
    "history": records.history,
    "status": records.status,
    "monitor": records.monitor,
    "preview": records.preview,
    "watch": changes.watch,
    "pool": machine.pool,
    "build": machine.build,
    "logs": machine.logs,
    **dict.fromkeys(("promote", "abort", "pause", "resume", "retry"), machine.manual),
    "run": run.run_controller,
    "down": run.down,
    "demo": run.demo,
    "registry": registry.registry,
}


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """The parsed arguments; a flag the verb does not know is reported with that
    verb's usage (argparse alone would show the top-level one)."""
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        sub = _subparsers(parser).get(args.verb, parser)
        sub.error(f"unrecognized arguments: {' '.join(unknown)}")
    return args


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}  # pragma: no cover - the parser always has verbs


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``mdc`` with ``argv`` (default: the command line); the exit code."""
    try:
        code = _main(sys.argv[1:] if argv is None else list(argv))
        sys.stdout.flush()  # a closed pipe is found here, not at the interpreter's exit
    except BrokenPipeError:
        silence_stdout()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return code


def _main(argv: list[str]) -> int:
    parser = _parser()
    if not argv:
        print(parser.format_help(), end="")
        return EXIT_USAGE
    try:
        args = _parse(parser, argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    if args.verb == "version":
        if args.format == "json":
            print(json.dumps({"version": __version__}))
        else:
            print(f"mdc {__version__}")
        return EXIT_OK
    verb = _VERBS.get(args.verb)
    if verb is not None:
        return verb(args)
    if args.verb == "plan" and args.repo_path:
        args.path = args.repo_path
    if args.verb == "plan" and args.format == "markdown":
        args.markdown = True
        if not (args.base or args.head):
            print("mdc plan: --format markdown needs --base and --head", file=sys.stderr)
            return EXIT_USAGE
    if args.verb == "plan" and (args.base or args.head):
        return changes.change_plan(args)
    try:
        tree = DirTree(args.path)
    except NotADirectoryError:
        problem = "not a directory" if Path(args.path).exists() else "no such directory"
        print(f"mdc {args.verb}: {args.path}: {problem}", file=sys.stderr)
        return EXIT_USAGE
    result = load_desired(tree)
    if args.verb == "validate":
        return _validate(args.path, result, args.format)
    return _plan(args.path, result, args.format)


def _validate(path: str, result: LoadResult, fmt: str) -> int:
    code = EXIT_OK if result.ok else EXIT_INVALID
    if fmt == "json":
        print(json.dumps(json_result(path, result), indent=2))
        return code
    if result.ok:
        style = Style(sys.stdout)
        print(f"{path}: {style.green('valid')} ({counts(result)})")
    else:
        report(result.diagnostics, sys.stderr)
    return code


def _plan(path: str, result: LoadResult, fmt: str) -> int:
    code = EXIT_OK if result.ok else EXIT_INVALID
    if fmt == "json":
        print(json.dumps(json_result(path, result) | {"plan": summarize(result.desired)}, indent=2))
        return code
    if not result.ok:
        report(result.diagnostics, sys.stderr)
        print("the plan below leaves out the invalid objects", file=sys.stderr)
    out = sys.stdout
    style = Style(out)
    desired = result.desired
    print(style.bold(f"Plan for {path}") + f" ({counts(result)})", file=out)
    for pool in sorted(desired.pools.values(), key=lambda p: p.name):
        total = pool.declared_gpus
        gpus = f"{total} GPUs declared" if total is not None else "GPUs discovered with NVML"
        if pool.cluster is not None:
            chosen = ", ".join(f"{k}={v}" for k, v in sorted(pool.cluster.selector.items()))
            gpus = (
                f"nodes from the cluster ({chosen or 'every node'}), "
                f"GPUs {'read with NVML' if pool.cluster.discovery == 'NVML' else 'declared'}"
            )
        print(
            f"\n{style.bold('Pool ' + visible(pool.name))}  sharing {visible(pool.sharing)}, "
            f"{visible(gpus)}",
            file=out,
        )
        for node in pool.nodes:
            groups = ", ".join(
                f"{g.count} x {visible(g.product)} ({format_bytes(g.memory)})" for g in node.gpus
            )
            print(
                f"  node {visible(node.name):<12} {visible(node.discovery):<9} "
                f"{groups or '(read from NVML)'}",
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
                f"  {visible(r.team):<14}{r.guaranteed:>11g}{r.limit:>7g}{r.priority:>9}"
                f"{r.requested:>11g}{r.canary_peak:>13g}{per_day(r.requested):>11g}"
                f"  {colour(verdict)}",
                file=out,
            )
    checks = canary_checks(desired)
    if checks:
        print(f"\n{style.bold('Canaries')}", file=out)
        for check in checks:
            line = visible(check.describe())
            print(f"  {line if check.fits else style.yellow(line)}", file=out)
    print(f"\n{style.bold('Rollout policies')}", file=out)
    for policy in sorted(desired.policies.values(), key=lambda p: p.name):
        print(f"  {visible(policy.name)}: {visible(policy_timeline(policy).describe())}", file=out)
    print(f"\n{style.bold('Models')}", file=out)
    for model in sorted(desired.models.values(), key=lambda m: m.name):
        print(
            visible(
                f"  {model.name} {model.version}: team {model.team}, "
                f"{model.resources.describe()} from pool {model.pool}, rolled out by "
                f"{model.rollout}"
            ),
            file=out,
        )
        print(visible(f"    service {model.service_module}:{model.service_class}"), file=out)
    return code
