"""The pool book: the one place where the controller books and frees GPUs.

Owns, per pool, the :class:`~controller.core.ledger.Ledger` (rebuilt from the
recorded statuses the first time a pool is used, and whenever the pool's spec
changes, keeping what is booked) and the inventory it was built on; for every
booking, when it was taken; and the GPU-hours of shares already given back,
per model and release kind (carried over from the status branch after a
restart, so no hour is lost). Pools whose nodes come from a cluster follow it
(:meth:`PoolBook.refresh`): a node that joined adds its GPUs; one that left
takes its bookings with it, and the change is committed as ``pools/NAME.yaml``
on the status branch.

Conservative on purpose: a node still in the cluster keeps the GPUs the ledger
knows it by, and a cluster that answers with no node at all changes nothing --
so a running release never loses its booking to a hiccup.

Called by the reconciler (placing, freeing, promoting, summarizing).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import yaml

from controller.adapters.git.status_branch import StatusBranch
from controller.adapters.runtime.base import ReleaseSpec, Runtime
from controller.core.allocation import (
    UNITS,
    Allocation,
    Placed,
    ReleaseKind,
    Slice,
    allocations_from_status,
    holds_of,
    request_for,
)
from controller.core.costs import hold_hours
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
from controller.core.status import GPUHold, ModelStatus
from controller.core.timestamps import iso
from controller.spec.kinds import Desired, GPUPool, Model

__all__ = ["Booking", "PoolBook"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Booking:
    """The answer to :meth:`PoolBook.place`: an allocation, or why there is none."""

    allocation: Allocation | None
    waiting: str = ""  # why not, when there is no allocation
    preempted: tuple[str, ...] = ()  # ledger keys ("model/kind") whose GPUs it took


def _key(model: str, kind: ReleaseKind) -> str:
    return f"{model}/{kind}"


class PoolBook:
    """GPUs booked and freed in one place (see the module docstring)."""

    def __init__(
        self,
        runtime: Runtime,
        status: StatusBranch,
        *,
        nvml: Callable[[str], list[GPU]] | None = None,
        node: str | None = None,
    ) -> None:
        self.runtime = runtime
        self.status = status
        self.nvml = nvml
        self.node = node
        self.ledgers: dict[str, tuple[GPUPool, Ledger]] = {}
        self.inventories: dict[str, Inventory] = {}  # pool -> what its ledger was built on
        self.since: dict[str, str] = {}  # ledger key -> when its GPUs were taken (ISO)
        self.hours: dict[str, dict[str, float]] = {}  # model -> kind -> GPU-hours given back
        self._desired: Desired | None = None
        self._statuses: Mapping[str, ModelStatus] = {}
        self._view: Sequence[ClusterNode] | None = None  # the cluster, read once a pass
        self._view_read = False

    # -- start-up and each pass ------------------------------------------------------

    def recover(self, statuses: Mapping[str, ModelStatus]) -> None:
        """What the status branch recorded: when each share was taken, and the hours."""
        for status in statuses.values():
            self.hours[status.name] = dict(status.gpu_hours)
            for hold in status.gpus:
                if hold.since:
                    self.since[f"{status.name}/{hold.release}"] = hold.since

    def begin_pass(self, desired: Desired, statuses: Mapping[str, ModelStatus]) -> None:
        self._desired, self._statuses = desired, statuses
        self._view_read = False

    # -- booking -----------------------------------------------------------------------

    def ledger(self, model: Model) -> Ledger:
        """The ledger of ``model``'s pool (see the module docstring)."""
        assert self._desired is not None, "begin_pass() first"
        pool = self._desired.pools[model.pool]
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
            for i, status in enumerate(self._statuses.values()):
                wanted = self._desired.models.get(status.name)
                if wanted is not None and wanted.pool != pool.name:
                    continue
                records += allocations_from_status(status, memory, order=i)
        ledger, problems, _ = Ledger.rebuild(inventory.gpus, pool.quotas, records)
        for problem in problems:
            log.error("pool %s: %s", pool.name, problem)
        self.ledgers[pool.name] = (pool, ledger)
        return ledger

    def place(self, model: Model, kind: ReleaseKind, now: float) -> Booking:
        """Book ``model``'s ``kind`` release (or return what it already holds)."""
        ledger = self.ledger(model)
        key = _key(model.name, kind)
        held = ledger.allocations.get(key)
        if held is not None:
            return Booking(held)
        before = dict(ledger.allocations)
        decision = ledger.place(request_for(model.name, model.team, model.resources, kind))
        if not isinstance(decision, Placed):
            return Booking(None, decision.reason)
        self.since[key] = iso(now)
        for victim in decision.preempted:
            if victim in before:
                self._given_back(before[victim], now)
        for reason in decision.reasons:
            log.warning("%s", reason)
        return Booking(decision.allocation, preempted=tuple(decision.preempted))

    def free(self, model: str, kind: ReleaseKind, now: float) -> None:
        """Give back what ``model``'s ``kind`` release holds; its hours are kept."""
        key = _key(model, kind)
        for _, ledger in self.ledgers.values():
            allocation = ledger.release(key)
            if allocation is not None:
                self._given_back(allocation, now)
        self.since.pop(key, None)

    def promote(self, model: str, now: float) -> None:
        """The canary became the stable: the old stable's share is given back, and the
        canary's booking (and when it was taken) is the stable's from now on. Nothing
        when the canary holds no booking (the promotion is recorded already)."""
        if self.allocation(model, ReleaseKind.CANARY) is None:
            return
        self.free(model, ReleaseKind.STABLE, now)
        old, new = _key(model, ReleaseKind.CANARY), _key(model, ReleaseKind.STABLE)
        for _, ledger in self.ledgers.values():
            ledger.rename(old, new)
        self.since[new] = self.since.pop(old, iso(now))

    def convert(self, model: str, old: ReleaseKind, new: ReleaseKind) -> bool:
        """``model``'s ``old`` booking becomes its ``new`` one, on the same GPUs (a
        merged pull request's preview becoming its canary). False when there is no
        such booking, or ``new`` is held already."""
        before, after = _key(model, old), _key(model, new)
        for _, ledger in self.ledgers.values():
            if before in ledger.allocations and after not in ledger.allocations:
                ledger.convert(before, after, new)
                self.since[after] = self.since.pop(before, "")
                return True
        return False

    def match_running(
        self,
        running: Mapping[tuple[str, ReleaseKind], tuple[ReleaseSpec, ...]],
        models: Mapping[str, Model],
        now: float,
    ) -> list[tuple[str, str]]:
        """Bookings checked against the releases observed running (after a restart):
        ``running`` maps each (model, kind) to the replicas running for it (none:
        nothing runs). A booking whose release is gone is dropped; a release running
        without its booking (or on other GPUs than booked) is booked again on the
        GPUs its replicas run on. What could not be made to match, as (model, why)."""
        problems: list[tuple[str, str]] = []
        for (name, kind), replicas in sorted(running.items()):
            model = models.get(name)
            if model is None:
                continue
            held = self.allocation(name, kind)
            if not replicas:
                if held is not None:
                    log.warning("%s: %s booking dropped: its release is not running", name, kind)
                    self.free(name, kind, now)
                continue
            used = {gpu for spec in replicas for gpu in spec.gpus}
            if not used:
                continue  # nothing to book from (a CPU release)
            booked = {s.gpu for r in held.replicas for s in r} if held is not None else set()
            if booked == used:
                continue
            if held is not None:
                self.free(name, kind, now)
            problem = self._book_as_running(model, kind, replicas)
            if problem is not None:
                log.error("%s: %s", name, problem)
                problems.append((name, problem))
            else:
                self.since[_key(name, kind)] = iso(now)
                log.warning("%s: %s booked again on the GPUs it runs on", name, replicas[0].name)
        return problems

    def _book_as_running(
        self, model: Model, kind: ReleaseKind, replicas: tuple[ReleaseSpec, ...]
    ) -> str | None:
        ledger = self.ledger(model)
        placed: list[tuple[Slice, ...]] = []
        for spec in sorted(replicas, key=lambda r: r.replica):
            if not spec.gpus:
                continue
            per_gpu = round(spec.gpu_share * UNITS / len(spec.gpus)) or UNITS
            slices = []
            for uuid in spec.gpus:
                state = ledger.gpus.get(uuid)
                if state is None:
                    return f"{spec.name} runs on GPU {uuid}, which the pool does not have"
                memory = (
                    state.memory if per_gpu >= UNITS else math.ceil(per_gpu / UNITS * state.memory)
                )
                slices.append(Slice(uuid, state.node, memory, per_gpu))
            placed.append(tuple(slices))
        allocation = Allocation(
            release=_key(model.name, kind),
            model=model.name,
            team=model.team,
            kind=kind,
            serving=kind is ReleaseKind.STABLE,
            borrowed=False,
            replicas=tuple(placed),
            order=ledger.counter + 1,
        )
        problem = ledger.adopt(allocation)
        if problem is None:
            return None
        gpus = ", ".join(g for spec in replicas for g in spec.gpus)
        return f"{replicas[0].name} runs on {gpus} but cannot be booked: {problem}"

    def allocation(self, model: str, kind: ReleaseKind) -> Allocation | None:
        """What ``model``'s ``kind`` release holds (its pool's ledger is rebuilt from the
        recorded statuses first, so a restarted controller sees what was booked)."""
        self._ensure(model)
        key = _key(model, kind)
        return next(
            (led.allocations[key] for _, led in self.ledgers.values() if key in led.allocations),
            None,
        )

    def holds(self, model: str) -> list[GPUHold]:
        """What ``model`` holds now, as its status records it."""
        out: list[GPUHold] = []
        for kind in (ReleaseKind.STABLE, ReleaseKind.CANARY):
            allocation = self.allocation(model, kind)
            if allocation is not None:
                out += holds_of(allocation, self.since.get(_key(model, kind)))
        return out

    def hours_of(self, model: str) -> dict[str, float]:
        """GPU-hours of the shares ``model`` has given back, by release kind."""
        return dict(self.hours.get(model, {}))

    def _ensure(self, model: str) -> None:
        """Build the ledger of ``model``'s pool if no move of this pass has yet."""
        desired = self._desired
        wanted = desired.models.get(model) if desired is not None else None
        if desired is None or wanted is None or wanted.pool not in desired.pools:
            return
        try:
            self.ledger(wanted)
        except Exception as exc:  # the pool's GPUs could not be read: nothing is shown held
            log.warning("pool %s: not read (%s)", wanted.pool, exc)

    def _given_back(self, allocation: Allocation, now: float) -> None:
        model, _, _ = allocation.release.partition("/")
        since = self.since.get(allocation.release)
        spent = sum(hold_hours(h, now) for h in holds_of(allocation, since))
        if spent > 0:
            kinds = self.hours.setdefault(model, {})
            kinds[str(allocation.kind)] = kinds.get(str(allocation.kind), 0.0) + spent

    # -- the inventory ------------------------------------------------------------------

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

    def refresh(self, now: float) -> tuple[list[NodeChange], list[Allocation]]:
        """Cluster pools follow the cluster: what changed, and the bookings lost."""
        changes: list[NodeChange] = []
        gone: list[Allocation] = []
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
                log.warning("pool %s: %s lost its GPUs", name, allocation.release)
                self._given_back(allocation, now)
                self.since.pop(allocation.release, None)
            changes += moved
            gone += lost
            if moved:
                self._record_pool(merged, moved, lost)
        return changes, gone

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


def _gpu_set(inventory: Inventory) -> frozenset[tuple[str, str, int]]:
    return frozenset((g.node, g.uuid, g.memory) for g in inventory.gpus)
