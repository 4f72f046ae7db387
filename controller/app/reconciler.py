"""The reconcile pass: keeps what runs equal to what git says, one model at a time.

Owns :class:`Reconciler` -- the adapters of one controller (git source and
status branch, packager, runtime, router, GPU ledgers, pins, a reporter) and
:meth:`Reconciler.run_pass`, which reads like the pass in DESIGN.md:

    fetch -> load desired -> observe -> plan (pure) -> execute per model
          -> watch the running versions (:mod:`controller.app.monitoring`)
          -> summarize (pure) -> record on the status branch -> report

Each model's moves run in their own ``try``: one model's failure is a condition
on that model, never the end of the pass. Every side effect is recorded before
the pass ends (status files hold the canary's state, the GPUs held and the
release names), so a controller killed at any point resumes from the status
branch and the runtime's process table: same step, same weight, same GPUs.

Called by :mod:`controller.app.daemon` (``mdc run``); the end-to-end tests drive
it pass by pass.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import yaml

from controller.adapters.git.source import (
    Credentials,
    GitSource,
    PollResult,
    Snapshot,
    SourcePoller,
)
from controller.adapters.git.status_branch import StatusBranch
from controller.adapters.packaging import Packager, Source
from controller.adapters.router.base import Router
from controller.adapters.runtime.local import LocalRuntime, ReleaseSpec, State
from controller.app.monitoring import Monitoring
from controller.app.rollout import ManualAction, Pins, RolloutDriver, read_command
from controller.core.allocation import (
    Allocation,
    Placed,
    ReleaseKind,
    allocations_from_status,
    holds_of,
    launch_env,
    request_for,
)
from controller.core.canary import Action, CanaryPhase, CanaryState, state_from_dict
from controller.core.inventory import (
    GPU,
    ClusterNode,
    Inventory,
    NodeChange,
    build_inventory,
    cluster_inventory,
    node_changes,
)
from controller.core.ledger import Ledger
from controller.core.plan import (
    ModelPlan,
    Move,
    Observed,
    PlanInput,
    iso,
    make_plan,
    next_status,
    spec_hash,
)
from controller.core.status import (
    Condition,
    GPUHold,
    ModelStatus,
    Phase,
    Release,
    commit_message,
    model_path,
    parse_model_status,
    render,
)
from controller.core.traffic import RouteConfig
from controller.errors import MdcError, PermanentError, TransientError
from controller.spec.documents import Diagnostic
from controller.spec.identity import planned_bento_tag
from controller.spec.kinds import GPUPool, Model
from controller.spec.loader import LoadResult, SnapshotLoader

__all__ = ["NullReporter", "PassResult", "Reconciler", "Reporter"]

log = logging.getLogger(__name__)


class Reporter(Protocol):
    """Where a pass's news goes besides the status branch (GitHub, or nowhere)."""

    def pull_request_for(self, commit: str) -> int | None:
        """The pull request that brought ``commit`` to the release branch, if any."""
        ...

    def on_status(self, previous: ModelStatus | None, status: ModelStatus) -> None:
        """A model's status changed (and is already on the status branch)."""
        ...

    def drain(self) -> None:
        """Once a pass, after the statuses: retry what failed, handle queued events."""
        ...


class NullReporter:
    """Reports go to the status branch and the log only."""

    def pull_request_for(self, commit: str) -> int | None:
        return None

    def on_status(self, previous: ModelStatus | None, status: ModelStatus) -> None:
        return None

    def drain(self) -> None:
        return None


@dataclass
class _Run:
    """What the controller holds in memory for one model between passes."""

    name: str
    stable: ReleaseSpec | None = None
    stable_hash: str | None = None
    stable_record: Release | None = None
    driver: RolloutDriver | None = None
    resume: tuple[ReleaseSpec, CanaryState] | None = None  # a canary recorded before a restart
    pull: int | None = None  # the PR behind the spec being rolled out
    canary_record: Release | None = None
    finished: CanaryState | None = None  # the last canary, kept for the record
    failed: tuple[str, str, str] | None = None  # (spec hash, reason, message): permanent
    retry_at: float = 0.0  # after a transient error
    conditions: list[Condition] = field(default_factory=list)
    event: tuple[str, str] | None = None
    manual: list[ManualAction] = field(default_factory=list)
    since: dict[str, str] = field(default_factory=dict)  # ledger key -> when its GPUs were taken
    replacing: str | None = None  # why its stable is being placed again (its node was lost)
    monitor_events: list[tuple[str, str]] = field(default_factory=list)  # this pass's


@dataclass(frozen=True)
class PassResult:
    revision: str | None
    plan: tuple[ModelPlan, ...]
    failed: tuple[str, ...]  # models whose moves raised
    poll: PollResult | None
    seconds: float
    diagnostics: tuple[Diagnostic, ...] = ()
    nodes: tuple[NodeChange, ...] = ()  # nodes that joined or left a pool in this pass

    @property
    def ok(self) -> bool:
        return (
            not self.failed
            and not self.diagnostics
            and (self.poll is None or self.poll.error is None)
        )


class Reconciler:
    """One controller's adapters and its pass (see the module docstring)."""

    def __init__(
        self,
        repo: str,
        branch: str,
        state_dir: Path,
        *,
        router: Router,
        status_branch: str = "mdc/status",
        poll_interval: float = 30.0,
        credentials: Credentials | None = None,
        reporter: Reporter | None = None,
        nvml: Callable[[str], list[GPU]] | None = None,
        node: str | None = None,
        clock: Callable[[], float] = time.time,
        router_ports: Mapping[str, int] | None = None,
        runtime: str = "local",
        ray_address: str | None = None,
        ray_namespace: str = "mdc",
    ) -> None:
        self.state_dir = Path(state_dir)
        self.clock = clock
        self.source = GitSource(repo, branch, self.state_dir, credentials or Credentials.from_env())
        self.poller = SourcePoller(self.source, interval=poll_interval)
        self.status = StatusBranch(self.source, status_branch)
        bento_home = self.state_dir / "bentoml"
        self.packager = Packager(bento_home, self.state_dir / "packager")
        self.runtime: LocalRuntime
        if runtime == "local":
            self.runtime = LocalRuntime(self.state_dir, bento_home)
        else:
            from controller.adapters.runtime.ray_cluster import make_runtime  # noqa: PLC0415 - optional extra

            options = (
                {"address": ray_address or "auto", "namespace": ray_namespace}
                if runtime == "ray"
                else {}
            )
            self.runtime = make_runtime(runtime, self.state_dir, bento_home, **options)
        self.router = router
        self.reporter: Reporter = reporter or NullReporter()
        self.pins = Pins(self.state_dir)
        self.loader = SnapshotLoader()
        self.nvml = nvml
        self.node = node
        self.router_ports = dict(router_ports or {})
        self.routes: dict[str, str] = {}  # model -> the router's URL for it
        self.runs: dict[str, _Run] = {}
        self.statuses: dict[str, ModelStatus] = {}
        self.ledgers: dict[str, tuple[GPUPool, Ledger]] = {}
        self.inventories: dict[str, Inventory] = {}  # pool -> what its ledger was built on
        self._view: Sequence[ClusterNode] | None = None  # the cluster, read once a pass
        self._view_read = False
        self.monitoring = Monitoring(router, self.status, self.state_dir, nvml=nvml, node=node)
        self.snapshot: Snapshot | None = None
        self.load: LoadResult | None = None
        self.last: PassResult | None = None
        self.passes = 0
        self.verdicts: dict[tuple[str, str], int] = {}  # (model, outcome) -> intervals judged
        self._hashes: dict[str, tuple[str, str, str]] = {}  # tree -> model -> (hash, bento)
        self._hash_tree: str | None = None
        self._recover()

    # -- start-up: what was recorded, and what still runs ----------------------------

    def _recover(self) -> None:
        try:
            self.source.fetch_refs([self.status.branch])
        except TransientError as exc:
            log.warning("status branch not fetched (%s): using the local copy", exc.message)
        for path, raw in self.status.files().items():
            if not (path.startswith("models/") and path.endswith(".yaml")):
                continue
            try:
                recorded = parse_model_status(path, raw)
            except PermanentError as exc:
                log.error("%s", exc.message)
                continue
            self.statuses[recorded.name] = recorded
            run = self.runs.setdefault(recorded.name, _Run(recorded.name))
            for hold in recorded.gpus:
                if hold.since:
                    run.since[f"{recorded.name}/{hold.release}"] = hold.since
            if recorded.stable is not None and recorded.stable.name:
                adopted = self.runtime.releases.get(recorded.stable.name)
                if adopted is not None and adopted.state is not State.STOPPED:
                    run.stable, run.stable_hash = adopted.spec, recorded.stable.spec_hash
                    run.stable_record = recorded.stable
            state = None
            if recorded.canary_state is not None:
                try:
                    state = state_from_dict(recorded.canary_state)
                except ValueError as exc:
                    log.error("%s: canary state unreadable (%s)", path, exc)
            if state is not None and state.phase.done:
                run.finished = state
            elif state is not None and recorded.canary is not None and recorded.canary.name:
                adopted = self.runtime.releases.get(recorded.canary.name)
                if adopted is not None and adopted.state is not State.STOPPED:
                    run.canary_record = recorded.canary
                    run.resume = (adopted.spec, state)
            run.pull = recorded.pull_request

    # -- the pass ------------------------------------------------------------------

    def run_pass(self, fetch: bool = True) -> PassResult:
        started = time.monotonic()
        now = self.clock()
        poll: PollResult | None = None
        if fetch or self.snapshot is None:
            poll = self.poller.poll(now)
            self.snapshot = poll.snapshot
        if self.snapshot is None:
            result = PassResult(None, (), (), poll, time.monotonic() - started)
            self.last = result
            return result
        tree = self.source.tree(self.snapshot)
        self.load = load = self.loader.load(tree, self.snapshot.tree)
        desired = load.desired
        for event in self.runtime.tick(now):
            log.info("release %s: %s: %s", event.release, event.kind, event.message)
        self._view_read = False
        nodes = self._refresh_pools(now)
        hashes = self._spec_hashes(desired.models, tree)
        invalid = frozenset(ref.name for ref in load.invalid if ref.kind == "Model")
        plan = make_plan(
            PlanInput(
                desired={name: h for name, (h, _) in hashes.items()},
                invalid=invalid,
                prune_safe=not load.unreadable,
                observed={name: self._observe(run) for name, run in self.runs.items()},
            )
        )
        failed: list[str] = []
        for entry in plan:
            run = self.runs.setdefault(entry.model, _Run(entry.model))
            run.event, run.conditions = None, []
            model = desired.models.get(entry.model)
            try:
                self._execute(entry, run, model, hashes.get(entry.model), tree, now)
            except MdcError as exc:
                failed.append(entry.model)
                self._failed(run, entry, exc, now)
            except Exception as exc:  # an unexpected bug: transient, with its traceback
                log.error("%s: %s\n%s", entry.model, exc, traceback.format_exc())
                failed.append(entry.model)
                self._failed(run, entry, TransientError(str(exc), reason="InternalError"), now)
        self._watch(desired.models, now)
        self._record(plan, desired.models, now)
        result = PassResult(
            self.snapshot.revision,
            plan,
            tuple(failed),
            poll,
            time.monotonic() - started,
            load.diagnostics,
            tuple(nodes),
        )
        self.passes += 1
        self.last = result
        return result

    def _spec_hashes(self, models: Mapping[str, Model], tree: object) -> dict[str, tuple[str, str]]:
        """Model -> (spec hash, planned bento tag), computed once per tree."""
        assert self.snapshot is not None
        if self._hash_tree != self.snapshot.tree:
            computed: dict[str, tuple[str, str, str]] = {}
            for name, model in models.items():
                try:
                    bento = planned_bento_tag(model, tree)  # type: ignore[arg-type]
                except MdcError as exc:
                    computed[name] = ("", "", exc.message)
                    continue
                computed[name] = (spec_hash(model, bento), bento, "")
            self._hashes, self._hash_tree = computed, self.snapshot.tree
        return {n: (h, b) for n, (h, b, err) in self._hashes.items() if not err}

    def _observe(self, run: _Run) -> Observed:
        ready = False
        release = None
        if run.stable is not None:
            release = self.runtime.releases.get(run.stable.name)
            ready = release is not None and release.state is State.READY
        canary = run.driver.state if run.driver is not None else None
        if canary is None and run.resume is not None:
            canary = run.resume[1]
        lost = None
        if run.stable is not None and release is not None and release.state is State.FAILED:
            lost = release.reason if release.reason.startswith("node lost") else None
        return Observed(run.stable_hash, ready, canary, self.pins.get(run.name), lost)

    # -- moves -------------------------------------------------------------------

    def _execute(  # noqa: PLR0917
        self,
        entry: ModelPlan,
        run: _Run,
        model: Model | None,
        hashed: tuple[str, str] | None,
        tree: object,
        now: float,
    ) -> None:
        move = entry.move
        if move is Move.PRUNE:
            self._prune(run, now)
            return
        if move in (Move.HOLD, Move.KEEP):
            run.conditions.append(Condition("SpecValid", False, "SpecInvalid", entry.reason))
            if run.driver is not None:
                self._tick(run, now)
            return
        assert model is not None
        assert hashed is not None
        wanted = hashed[0]
        if run.failed is not None and self.pins.get(run.name) != run.failed[0]:
            run.failed = None  # someone asked for a retry
        if (
            run.failed is not None
            and run.failed[0] == wanted
            and move
            in (
                Move.DEPLOY,
                Move.START_CANARY,
                Move.REPLACE,
            )
        ):
            _, reason, message = run.failed
            run.conditions.append(Condition("Ready", False, reason, message))
            return
        if now < run.retry_at and move in (
            Move.DEPLOY,
            Move.START_CANARY,
            Move.REPLACE,
            Move.RE_PLACE,
        ):
            run.conditions.append(
                Condition("Ready", False, "RetryLater", f"retrying in {run.retry_at - now:.0f}s")
            )
            return
        self._ensure_route(run.name)
        if move is Move.DEPLOY:
            self._deploy(run, model, wanted, tree, now)
        elif move is Move.AWAIT:
            self._await(run, now)
        elif move is Move.RE_PLACE:
            self._re_place(run, model, now)
        elif move is Move.REPLACE:
            self._abort(run, "the spec changed during the canary", now)
            if wanted != run.stable_hash:  # else git went back to what the stable runs
                self._start_canary(run, model, wanted, tree, now)
        elif move is Move.START_CANARY:
            self._start_canary(run, model, wanted, tree, now)
        elif move is Move.CONTINUE:
            if run.driver is None:
                self._adopt_driver(run, model)
            self._tick(run, now)
        elif move in (Move.STEADY, Move.PINNED):
            self._steady(run, move, now)

    def _pull(self) -> int | None:
        assert self.snapshot is not None
        try:
            return self.reporter.pull_request_for(self.snapshot.commit)
        except MdcError as exc:
            log.warning(
                "which PR brought %s is unknown: %s", self.snapshot.commit[:12], exc.message
            )
            return None

    def _ensure_route(self, name: str) -> str:
        if name not in self.routes:
            port = self.router_ports.get(name, 0)
            try:
                self.routes[name] = self.router.add_model(name, port)
            except OSError as exc:
                raise TransientError(
                    f"the router cannot listen on port {port} for {name}: {exc}",
                    reason="RouterPortBusy",
                ) from None
        return self.routes[name]

    def _build(self, model: Model, tree: object) -> str:
        assert self.snapshot is not None
        result = self.packager.build(
            model,
            tree,  # type: ignore[arg-type]
            Source(self.source.remote.display, self.snapshot.revision),
        )
        return result.bento_tag

    def _ledger(self, model: Model) -> Ledger:
        """The ledger of ``model``'s pool, rebuilt from status records the first time
        (and whenever the pool's spec changes, keeping what is booked)."""
        assert self.load is not None
        pool = self.load.desired.pools[model.pool]
        known = self.ledgers.get(pool.name)
        if known is not None and known[0] == pool:
            return known[1]
        inventory = self._inventory(pool)
        self.inventories[pool.name] = inventory
        for problem in inventory.disagreements:
            log.warning("pool %s: %s", pool.name, problem)
        if known is not None:
            records: list[Allocation] = list(known[1].allocations.values())
        else:
            memory = {g.uuid: g.memory for g in inventory.gpus}
            records = []
            for i, status in enumerate(self.statuses.values()):
                if status.name in self.load.desired.models and (
                    self.load.desired.models[status.name].pool != pool.name
                ):
                    continue
                records += allocations_from_status(status, memory, order=i)
        ledger, problems, _ = Ledger.rebuild(inventory.gpus, pool.quotas, records)
        for problem in problems:
            log.error("pool %s: %s", pool.name, problem)
        self.ledgers[pool.name] = (pool, ledger)
        return ledger

    def _inventory(self, pool: GPUPool) -> Inventory:
        if pool.cluster is not None:
            if not self._view_read:
                self._view, self._view_read = self.runtime.cluster_nodes(), True
            return cluster_inventory(pool, self._view)
        discovered: dict[str, list[GPU] | Exception] = {}
        if self.nvml is not None and self.node is not None:
            try:
                discovered[self.node] = self.nvml(self.node)
            except Exception as exc:
                discovered[self.node] = exc
        return build_inventory(pool, discovered)

    def _refresh_pools(self, now: float) -> list[NodeChange]:
        """Pools whose nodes come from the cluster follow it: a node that joined adds
        its GPUs; one that left the cluster takes its GPUs and what was booked on
        them with it (its releases are failed "node lost" by the runtime and placed
        again by the plan, see :meth:`_re_place`).

        Conservative on purpose: a node still in the cluster keeps the GPUs the
        ledger knows it by (even if its labels stop matching, or NVML now reads it
        differently), and a cluster that answers with no node at all changes
        nothing -- so a running release never loses its booking to a hiccup."""
        changes: list[NodeChange] = []
        for name, (pool, ledger) in list(self.ledgers.items()):
            before = self.inventories.get(name)
            if pool.cluster is None or before is None:
                continue
            try:
                after = self._inventory(pool)
            except Exception as exc:  # the cluster could not be read: keep the pool
                log.warning("pool %s: the cluster was not read (%s); unchanged", name, exc)
                continue
            alive = {node.name for node in self._view or ()}
            if not alive:
                log.warning("pool %s: the cluster shows no node; the pool is unchanged", name)
                continue
            known = {g.node for g in before.gpus}
            merged = Inventory(
                name,
                tuple(g for g in before.gpus if g.node in alive)
                + tuple(g for g in after.gpus if g.node not in known),
                after.disagreements,
            )
            if _gpu_set(merged) == _gpu_set(before):
                continue
            self.inventories[name] = merged
            moved = node_changes(before, merged)
            lost = ledger.resize(merged.gpus)
            for change in moved:
                log.warning("%s", change.describe())
            for allocation in lost:
                model = allocation.release.partition("/")[0]
                log.warning("pool %s: %s lost its GPUs", name, allocation.release)
                run = self.runs.get(model)
                if run is not None:
                    run.since.pop(allocation.release, None)
            changes += moved
            if moved:
                self._record_pool(merged, moved, lost)
        return changes

    def _record_pool(
        self, inventory: Inventory, moved: list[NodeChange], lost: list[Allocation]
    ) -> None:
        """A pool's nodes changed: its file on the status branch says what it has now."""
        nodes: dict[str, list[GPU]] = {}
        for gpu in inventory.gpus:
            nodes.setdefault(gpu.node, []).append(gpu)
        doc = {
            "pool": inventory.pool,
            "nodes": [
                {
                    "name": node,
                    "gpus": len(gpus),
                    "products": sorted({g.product for g in gpus}),
                    "source": "declared" if all(g.declared for g in gpus) else "nvml",
                }
                for node, gpus in sorted(nodes.items())
            ],
            "lastChange": [c.describe() for c in moved],
            "releasesLost": sorted(a.release for a in lost),
            "problems": list(inventory.disagreements),
        }
        subject = "; ".join(c.describe() for c in moved)
        self.status.commit(
            {f"pools/{inventory.pool}.yaml": yaml.safe_dump(doc, sort_keys=False).encode()},
            subject,
            {"Pool": inventory.pool},
        )

    def _place(self, run: _Run, model: Model, kind: ReleaseKind, now: float) -> Allocation | None:
        ledger = self._ledger(model)
        key = f"{model.name}/{kind}"
        held = ledger.allocations.get(key)
        if held is not None:
            return held
        decision = ledger.place(request_for(model.name, model.team, model.resources, kind))
        if not isinstance(decision, Placed):
            run.conditions.append(Condition("GPUs", False, "WaitingForGPUs", decision.reason))
            return None
        run.since[key] = iso(now)
        for victim in decision.preempted:
            self._preempted(victim, now)
        for reason in decision.reasons:
            log.warning("%s", reason)
        return decision.allocation

    def _preempted(self, key: str, now: float) -> None:
        """A release whose GPUs the ledger gave to another: stop it."""
        name, _, kind = key.partition("/")
        victim = self.runs.get(name)
        if victim is None:
            return
        if kind == ReleaseKind.CANARY and victim.driver is not None:
            self._abort(victim, "preempted: its GPUs went to a higher-priority team", now)
        elif kind == ReleaseKind.STABLE and victim.stable is not None:
            self.runtime.stop(victim.stable.name, drain=2.0)
            victim.stable = victim.stable_hash = victim.stable_record = None
        victim.event = ("Preempted", f"{kind} release preempted for a higher-priority team")

    def _release_spec(
        self, model: Model, wanted: str, bento: str, allocation: Allocation
    ) -> ReleaseSpec:
        replica = allocation.replicas[0] if allocation.replicas else ()
        return ReleaseSpec(
            name=f"{model.name}/{wanted[:10]}",
            model=model.name,
            version=model.version,
            bento=bento,
            env=launch_env(replica) if replica else {},
            gpus=tuple(s.gpu for s in replica),
            ready_timeout=model.ready_timeout,
            probe=model.probe,
            node=replica[0].node if replica else None,
            gpu_share=sum(s.units for s in replica) / 1000 if replica else 0.0,
        )

    def _deploy(self, run: _Run, model: Model, wanted: str, tree: object, now: float) -> None:
        assert self.snapshot is not None
        bento = self._build(model, tree)
        allocation = self._place(run, model, ReleaseKind.STABLE, now)
        if allocation is None:
            return
        spec = self._release_spec(model, wanted, bento, allocation)
        self.runtime.start(spec)
        run.stable, run.stable_hash = spec, wanted
        run.pull = self._pull()
        run.stable_record = Release(
            model.version, bento, iso(now), spec.name, wanted, self.snapshot.revision, run.pull
        )
        run.event = ("Deploying", f"starting {model.version} ({bento})")

    def _re_place(self, run: _Run, model: Model, now: float) -> None:
        """The stable's node is gone: abort a canary (nothing to compare it with), and
        place the same release again through the ledger, with the usual quotas and
        reasons (it waits for GPUs like any release when none are left)."""
        assert run.stable is not None
        lost = self.runtime.releases.get(run.stable.name)
        why = lost.reason if lost is not None else "node lost"
        if run.replacing is None:
            run.event = ("NodeLost", f"{run.stable.name}: {why}; placing it again")
        run.replacing = why
        if run.driver is not None:
            self._abort(run, f"the stable release was lost ({why})", now)
        self.router.configure(run.name, RouteConfig(None, None, 0))
        run.conditions.append(Condition("Ready", False, "NodeLost", why))
        self._free(run, ReleaseKind.STABLE, now)
        allocation = self._place(run, model, ReleaseKind.STABLE, now)
        if allocation is None:
            return
        replica = allocation.replicas[0] if allocation.replicas else ()
        spec = replace(
            run.stable,
            env=launch_env(replica) if replica else {},
            gpus=tuple(s.gpu for s in replica),
            node=replica[0].node if replica else None,
            gpu_share=sum(s.units for s in replica) / 1000 if replica else 0.0,
        )
        self.runtime.start(spec)
        run.stable = spec
        run.event = ("Replaced", f"{spec.name} placed again on {spec.node or 'this machine'}")

    def _await(self, run: _Run, now: float) -> None:
        assert run.stable is not None
        release = self.runtime.releases.get(run.stable.name)
        if release is not None and release.state is State.READY:
            self.router.configure(run.name, RouteConfig(release.address, None, 0))
            run.event = ("Deployed", f"{run.stable.version} serves all traffic")
            if run.replacing is not None:
                run.event = ("Recovered", f"{run.stable.name} serves all traffic again")
                run.replacing = None
        elif release is None or release.state is State.FAILED:
            reason = release.reason if release is not None else "the release is gone"
            self._stop_stable(run, now)
            raise PermanentError(
                f"the first release never became ready: {reason}", reason="NotReady"
            )
        else:
            run.conditions.append(
                Condition(
                    "Ready",
                    False,
                    "Starting" if run.replacing is None else "NodeLost",
                    f"{run.stable.name} is {release.state}"
                    + (f" again ({run.replacing})" if run.replacing else ""),
                )
            )

    def _stop_stable(self, run: _Run, now: float) -> None:
        if run.stable is not None:
            self.runtime.stop(run.stable.name, drain=2.0)
        self._free(run, ReleaseKind.STABLE, now)
        run.stable = run.stable_hash = run.stable_record = None

    def _free(self, run: _Run, kind: ReleaseKind, now: float) -> None:
        key = f"{run.name}/{kind}"
        for _, ledger in self.ledgers.values():
            ledger.release(key)
        run.since.pop(key, None)

    def _start_canary(self, run: _Run, model: Model, wanted: str, tree: object, now: float) -> None:
        assert self.load is not None
        assert self.snapshot is not None
        bento = self._build(model, tree)
        allocation = self._place(run, model, ReleaseKind.CANARY, now)
        if allocation is None:
            return
        spec = self._release_spec(model, wanted, bento, allocation)
        driver = self._driver(model)
        driver.begin(run.stable, spec, wanted)
        run.driver, run.finished = driver, None
        run.pull = self._pull()
        run.canary_record = Release(
            model.version, bento, iso(now), spec.name, wanted, self.snapshot.revision, run.pull
        )
        run.event = ("CanaryStarted", f"canary {model.version} ({bento}) beside stable")

    def _driver(self, model: Model) -> RolloutDriver:
        assert self.load is not None
        return RolloutDriver(
            model.name,
            self.load.desired.policies[model.rollout],
            self.runtime,
            self.router,
            pins=self.pins,
            state_dir=self.state_dir,
            ledger=self._ledger(model),
            clock=self.clock,
            tick_runtime=False,  # the pass ticks the runtime once for all models
        )

    def _adopt_driver(self, run: _Run, model: Model) -> None:
        """Take over a canary recorded before a restart, at its recorded step and weight."""
        assert self.load is not None
        assert run.resume is not None
        canary, state = run.resume
        driver = self._driver(model)
        driver.begin(run.stable, canary, state.spec_hash, state)
        run.driver, run.resume = driver, None
        run.event = ("Resumed", f"canary resumed at step {state.step + 1}, weight {state.weight}%")

    def _tick(self, run: _Run, now: float) -> None:
        driver = run.driver
        assert driver is not None
        before = len(driver.state.verdicts) if driver.state else 0
        previous_manual = len(driver.manual)
        state, actions = driver.tick()
        for verdict in state.verdicts[before:]:
            key = (run.name, str(verdict.outcome))
            self.verdicts[key] = self.verdicts.get(key, 0) + 1
        for manual in driver.manual[previous_manual:]:
            run.event = (
                f"Manual{manual.command.capitalize()}",
                f"{manual.command} by {manual.who}",
            )
        self._after_actions(run, state, actions, now)

    def _after_actions(
        self, run: _Run, state: CanaryState, actions: tuple[Action, ...], now: float
    ) -> None:
        driver = run.driver
        assert driver is not None
        if state.phase is CanaryPhase.PROMOTED:
            run.stable, run.stable_hash = driver.stable, state.spec_hash
            run.stable_record = run.canary_record
            run.since[f"{run.name}/{ReleaseKind.STABLE}"] = run.since.pop(
                f"{run.name}/{ReleaseKind.CANARY}", iso(now)
            )
            run.driver, run.finished, run.canary_record = None, state, None
            run.event = ("Promoted", state.reason or "all steps passed")
        elif state.phase is CanaryPhase.ROLLED_BACK:
            run.since.pop(f"{run.name}/{ReleaseKind.CANARY}", None)
            run.driver, run.finished, run.canary_record = None, state, None
            run.event = ("RolledBack", state.reason or "the analysis failed")

    def _abort(self, run: _Run, reason: str, now: float) -> None:
        driver = run.driver
        if driver is None:
            return
        stable = driver.address(driver.stable)
        self.router.configure(run.name, RouteConfig(stable, None, 0))
        if driver.canary is not None:
            self.runtime.stop(driver.canary.name, drain=2.0)
        self._free(run, ReleaseKind.CANARY, now)
        run.driver, run.canary_record, run.finished = None, None, None
        run.event = ("CanaryAborted", reason)

    def _steady(self, run: _Run, move: Move, now: float) -> None:
        release = self.runtime.releases.get(run.stable.name) if run.stable else None
        address = release.address if release is not None and release.state is State.READY else None
        self.router.configure(run.name, RouteConfig(address, None, 0))
        if address is not None and run.replacing is not None:
            again = run.stable.name if run.stable is not None else run.name
            run.event = ("Recovered", f"{again} serves all traffic again")
            run.replacing = None
        if address is None and run.stable is not None:
            state = release.state if release is not None else "gone"
            run.conditions.append(
                Condition("Ready", False, "StableNotReady", f"{run.stable.name} is {state}")
            )
        manual = read_command(self.state_dir, run.name)
        if manual is not None:
            run.manual.append(manual)
            if manual.command == "retry" and move is Move.PINNED:
                self.pins.unpin(run.name)
                run.failed = None
                run.event = ("ManualRetry", f"retry by {manual.who}: the pin is lifted")
            else:
                run.event = (
                    "CommandIgnored",
                    f"{manual.command} by {manual.who}: no canary is under way",
                )

    def _prune(self, run: _Run, now: float) -> None:
        self._abort(run, "removed from git", now)
        self._stop_stable(run, now)
        if run.name in self.routes:
            self.router.configure(run.name, RouteConfig(None, None, 0))
        self.pins.unpin(run.name)
        self.monitoring.forget(run.name)
        run.event = ("Pruned", "removed from git: releases stopped, GPUs freed")

    def _failed(self, run: _Run, entry: ModelPlan, exc: MdcError, now: float) -> None:
        if isinstance(exc, TransientError):
            run.retry_at = now + (exc.retry_after or 10.0)
        elif entry.spec_hash is not None:  # stalled until the spec changes or a retry
            run.failed = (entry.spec_hash, exc.reason, exc.message)
            self.pins.pin(run.name, entry.spec_hash, exc.message, now)
        run.conditions.append(Condition("Ready", False, exc.reason, exc.message))
        run.event = ("Error", f"{exc.reason}: {exc.message}")
        log.warning("%s: %s: %s", run.name, exc.reason, exc.message)

    # -- after promotion -----------------------------------------------------------------

    def _watch(self, models: Mapping[str, Model], now: float) -> None:
        """Judge each running stable release (:mod:`controller.app.monitoring`); one
        model's trouble is a condition on it, never the end of the pass."""
        assert self.load is not None
        for name, run in list(self.runs.items()):
            run.monitor_events = []
            model = models.get(name)
            release = self.runtime.releases.get(run.stable.name) if run.stable else None
            if model is None or release is None or release.state is not State.READY:
                continue
            if name not in self.routes or run.stable is None:
                continue
            key = f"{name}/{ReleaseKind.STABLE}"
            allocation = next(
                (
                    led.allocations[key]
                    for _, led in self.ledgers.values()
                    if key in led.allocations
                ),
                None,
            )
            try:
                events, conditions = self.monitoring.watch(
                    model,
                    self.load.desired.policies.get(model.rollout),
                    run.stable,
                    run.driver.canary if run.driver is not None else None,
                    allocation,
                    self.statuses.get(name),
                    now,
                )
            except MdcError as exc:
                run.conditions.append(Condition("Monitored", False, exc.reason, exc.message))
                continue
            except Exception as exc:  # a bug: logged, the pass goes on
                log.error("%s: monitor: %s\n%s", name, exc, traceback.format_exc())
                continue
            run.monitor_events = events
            run.conditions += conditions

    def monitor_view(self) -> list[dict[str, Any]]:
        """Every monitored model: live states, values and its latest rollups."""
        return self.monitoring.view()

    # -- summarize and record ----------------------------------------------------------

    def _record(self, plan: tuple[ModelPlan, ...], models: Mapping[str, Model], now: float) -> None:
        assert self.snapshot is not None
        assert self.load is not None
        revision = self.snapshot.revision
        changes: list[tuple[ModelStatus, bytes | None, ModelStatus | None]] = []
        for entry in plan:
            run = self.runs[entry.model]
            previous = self.statuses.get(entry.model)
            if entry.move is Move.PRUNE:
                if previous is not None:
                    changes.append((previous, None, previous))
                    del self.statuses[entry.model]
                self.runs.pop(entry.model, None)
                continue
            status = self._summarize(entry, run, models.get(entry.model), previous, revision, now)
            if previous is None or render(status) != render(previous):
                self.statuses[entry.model] = status
                changes.append((status, render(status), previous))
        for status, raw, _ in changes:
            if raw is None:
                subject, trailers = f"{status.name}: removed (pruned)", {"Model": status.name}
            else:
                subject, trailers = commit_message(status, revision)
                watched = self.runs.get(status.name)
                if watched is not None and watched.monitor_events:
                    event, message = watched.monitor_events[-1]
                    subject = f"{status.name}: {event}: {message}"[:200]
                    trailers = trailers | {"Monitor": event}
            self.status.commit({model_path(status.name): raw}, subject, trailers)
        self.monitoring.commit_rollups()
        if self.status.pending():
            try:
                self.status.push()
            except MdcError as exc:
                log.warning("status push failed (kept for the next pass): %s", exc.message)
        for status, raw, previous in changes:
            if raw is None:
                continue
            try:
                self.reporter.on_status(previous, status)
            except MdcError as exc:
                log.warning("report for %s failed: %s", status.name, exc.message)
        try:
            self.reporter.drain()
        except MdcError as exc:
            log.warning("reporter: %s", exc.message)

    def _summarize(  # noqa: PLR0917
        self,
        entry: ModelPlan,
        run: _Run,
        model: Model | None,
        previous: ModelStatus | None,
        revision: str,
        now: float,
    ) -> ModelStatus:
        holds: list[GPUHold] = []
        for _, ledger in self.ledgers.values():
            for kind in (ReleaseKind.STABLE, ReleaseKind.CANARY):
                key = f"{run.name}/{kind}"
                allocation = ledger.allocations.get(key)
                if allocation is not None:
                    holds += holds_of(allocation, run.since.get(key))
        state = run.driver.state if run.driver is not None else run.finished
        policy = None
        if model is not None and self.load is not None:
            policy = self.load.desired.policies.get(model.rollout)
        phase: Phase | None = None
        if entry.move in (Move.HOLD, Move.KEEP) and state is None:
            phase = previous.phase if previous is not None else Phase.STALLED
        elif entry.move is Move.PINNED:
            failed = run.failed is not None and run.failed[0] == entry.spec_hash
            phase = Phase.STALLED if failed or run.stable is None else Phase.ROLLED_BACK
        elif entry.move is Move.STEADY and (state is None or state.phase is CanaryPhase.PROMOTED):
            phase = Phase.HEALTHY if not run.conditions else Phase.DEGRADED
        elif run.failed is not None and entry.spec_hash == run.failed[0]:
            phase = Phase.STALLED
        elif any(c.reason == "WaitingForGPUs" for c in run.conditions):
            phase = Phase.WAITING
        elif run.replacing is not None:
            phase = Phase.DEGRADED
        elif run.stable is not None and state is None and entry.move in (Move.DEPLOY, Move.AWAIT):
            release = self.runtime.releases.get(run.stable.name)
            ready = release is not None and release.state is State.READY
            phase = Phase.HEALTHY if ready else Phase.PENDING
        elif state is None and run.stable is None:
            phase = Phase.PENDING
        applied = entry.spec_hash is not None and entry.spec_hash == run.stable_hash
        return next_status(
            previous,
            run.name,
            now=now,
            phase=phase,
            model=model,
            revision=revision,
            applied=applied,
            stable=run.stable_record if run.stable is not None else None,
            canary=run.canary_record,
            state=state,
            steps=len(policy.steps) if policy is not None else None,
            gpus=holds,
            conditions=run.conditions,
            event=run.event,
            pull_request=run.pull,
            monitor=self.monitoring.record(run.name, run.stable.name) if run.stable else None,
            monitor_events=run.monitor_events,
        )

    # -- shutting down -------------------------------------------------------------

    def close(self, stop_releases: bool = False) -> None:
        """Stop the router; with ``stop_releases``, every release too (else they keep
        serving, and the next controller adopts them)."""
        if stop_releases:
            self.runtime.stop_all(drain=2.0)
        self.router.close()


def _gpu_set(inventory: Inventory) -> frozenset[tuple[str, str, int]]:
    return frozenset((g.node, g.uuid, g.memory) for g in inventory.gpus)
