"""The GPU ledger: who holds which share of which GPU, and where the next
release goes.

A pure, deterministic allocator over an :class:`~controller.core.inventory.Inventory`:

* **Demands** per replica: whole GPUs (several on one node), a fraction of one
  GPU, or an amount of GPU memory on one GPU. Replicas of a release are spread
  over nodes when they can be. A GPU's capacity is its memory: a whole-GPU
  holder takes all of it, a fraction ``f`` takes ``f`` of it.
* **Best fit**: a shared request goes to the partly used GPU it fills most
  tightly, then to an untouched GPU on the node with the fewest untouched
  GPUs, so whole GPUs and whole nodes stay free for whole-GPU requests; a
  whole-GPU request goes to the node with the fewest untouched GPUs that
  still fit it. What is left on partly used GPUs is reported as stranded.
* **Quotas** per team in GPUs: a team may hold up to its ``limit``; what it
  holds above its ``guaranteed`` share is *borrowed*. A team asking within
  its guarantee for capacity that others borrowed gets it back: borrowed
  allocations of other teams are preempted, lowest priority (then newest)
  first, never below their own guarantee, and never a stable release serving
  traffic (it is replaced before it is stopped, not preempted).
* **Previews** (a pull request's version answering mirrored requests only)
  are the lowest class. A preview is placed on free capacity only: it never
  preempts anything, not even another preview, and waits for free GPUs
  instead. It counts against its team's ``limit``, on its own quota line
  (:attr:`Ledger.preview_used`, :meth:`Ledger.team_preview_gpus`), never in
  :attr:`Ledger.used`: previews never make the team look as if it borrowed,
  and never make its stable or canary release wait on the limit. A stable or
  canary release that does not fit first reclaims previews -- any team's,
  newest first, only as many as it needs, whatever its guarantee -- and only
  then preempts borrowed allocations; one that takes its team past its limit
  with the team's previews counted reclaims the team's own newest previews
  until it is within the limit again.
* **Never over-commits**: a request that does not fit waits, with a reason
  naming the numbers.
* **CPU-only** requests (no GPU demand) are placed at once on no GPU and are
  not booked: they hold nothing, count against no quota, preempt nothing.

Every decision is all-or-nothing; :meth:`Ledger.clone` gives a copy to ask
"would this fit, and what would it displace?" without changing anything.
Records of allocations (in model status) rebuild a ledger after a restart
(:meth:`Ledger.rebuild`). What a ledger is asked and answers -- demands,
requests, slices, allocations, decisions -- is :mod:`controller.core.allocation`.

Pure: no I/O, no clock. Used by the reconciler, ``mdc plan`` and ``mdc pool``.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from controller.core.allocation import (
    UNITS,
    Allocation,
    Decision,
    Demand,
    Placed,
    ReleaseKind,
    Request,
    Slice,
    Waiting,
)
from controller.core.inventory import GPU
from controller.spec.kinds import Quota
from controller.spec.units import format_bytes

__all__ = ["Ledger"]


@dataclass
class _GPUState:
    node: str
    memory: int
    free: int
    holders: dict[str, int] = field(default_factory=dict)  # release -> bytes


class _NoRoom(Exception):
    pass


class Ledger:
    """Mutable bookkeeping behind pure decisions; :meth:`clone` for what-ifs."""

    def __init__(self, gpus: Iterable[GPU], quotas: Iterable[Quota]) -> None:
        self.gpus: dict[str, _GPUState] = {}
        self.node_untouched: dict[str, list[str]] = {}
        for gpu in sorted(gpus, key=lambda g: (g.node, g.index, g.uuid)):
            if gpu.uuid in self.gpus:
                raise ValueError(f"GPU {gpu.uuid} is listed twice")
            self.gpus[gpu.uuid] = _GPUState(gpu.node, gpu.memory, gpu.memory)
            self.node_untouched.setdefault(gpu.node, []).append(gpu.uuid)
        self.quotas: dict[str, Quota] = {q.team: q for q in quotas}
        #: milli-GPUs each team holds by stable and canary releases (its own and borrowed)
        self.used: dict[str, int] = dict.fromkeys(self.quotas, 0)
        #: milli-GPUs each team holds by previews: its own quota line, kept out of
        #: :attr:`used` (previews never borrow, and never hold back a release)
        self.preview_used: dict[str, int] = dict.fromkeys(self.quotas, 0)
        self.allocations: dict[str, Allocation] = {}
        self.partial: list[tuple[int, str]] = []  # (free bytes, uuid) of partly used GPUs
        # untouched count -> nodes with that many untouched GPUs (a dict: ordered)
        self.buckets: dict[int, dict[str, None]] = {}
        for node, uuids in self.node_untouched.items():
            self.buckets.setdefault(len(uuids), {})[node] = None
        self.min_memory = min((g.memory for g in self.gpus.values()), default=1)
        self.counter = 0

    # -- what-ifs -----------------------------------------------------------

    def clone(self) -> Ledger:
        other = Ledger.__new__(Ledger)
        other.gpus = {
            k: _GPUState(v.node, v.memory, v.free, dict(v.holders)) for k, v in self.gpus.items()
        }
        other.node_untouched = {k: list(v) for k, v in self.node_untouched.items()}
        other.quotas = dict(self.quotas)
        other.used = dict(self.used)
        other.preview_used = dict(self.preview_used)
        other.allocations = dict(self.allocations)
        other.partial = list(self.partial)
        other.buckets = {k: dict(v) for k, v in self.buckets.items()}
        other.min_memory = self.min_memory
        other.counter = self.counter
        return other

    # -- reading ------------------------------------------------------------

    def free_gpus(self) -> float:
        return sum(s.free / s.memory for s in self.gpus.values()) if self.gpus else 0.0

    def stranded(self) -> tuple[float, int]:
        """Free capacity on partly used GPUs (in GPUs), and how many such GPUs:
        it serves shared requests only, never a whole-GPU one."""
        return (
            round(sum(free / self.gpus[u].memory for free, u in self.partial), 4),
            len(self.partial),
        )

    def team_gpus(self, team: str) -> float:
        """GPUs ``team`` holds by stable and canary releases (previews are apart:
        :meth:`team_preview_gpus`)."""
        return self.used.get(team, 0) / UNITS

    def team_preview_gpus(self, team: str) -> float:
        """GPUs ``team`` holds by previews: its own quota line, counted against the
        team's limit for further previews but never borrowed."""
        return self.preview_used.get(team, 0) / UNITS

    def _held_with_previews(self, team: str) -> int:
        return self.used.get(team, 0) + self.preview_used.get(team, 0)

    # -- index upkeep -------------------------------------------------------

    def _take(self, uuid: str, amount: int, release: str) -> None:
        state = self.gpus[uuid]
        if amount > state.free:  # the invariant everything rests on
            raise AssertionError(f"over-commit of {uuid}")
        untouched = state.free == state.memory
        if not untouched:
            self._partial_remove(state.free, uuid)
        else:
            self._untouched_remove(state.node, uuid)
        state.free -= amount
        state.holders[release] = state.holders.get(release, 0) + amount
        if state.free > 0:
            bisect.insort(self.partial, (state.free, uuid))

    def _give(self, uuid: str, release: str) -> None:
        state = self.gpus[uuid]
        amount = state.holders.pop(release)
        if 0 < state.free < state.memory:
            self._partial_remove(state.free, uuid)
        state.free += amount
        if state.free == state.memory:
            self._untouched_add(state.node, uuid)
        else:
            bisect.insort(self.partial, (state.free, uuid))

    def _partial_remove(self, free: int, uuid: str) -> None:
        i = bisect.bisect_left(self.partial, (free, uuid))
        del self.partial[i]

    def _untouched_remove(self, node: str, uuid: str) -> None:
        uuids = self.node_untouched[node]
        del self.buckets[len(uuids)][node]
        uuids.remove(uuid)
        self.buckets.setdefault(len(uuids), {})[node] = None

    def _untouched_add(self, node: str, uuid: str) -> None:
        uuids = self.node_untouched[node]
        del self.buckets[len(uuids)][node]
        bisect.insort(uuids, uuid)
        self.buckets.setdefault(len(uuids), {})[node] = None

    # -- placing one replica --------------------------------------------------

    def _bytes_for(self, demand: Demand, uuid: str) -> int:
        memory = self.gpus[uuid].memory
        if demand.fraction:
            return math.ceil(demand.fraction * memory)
        return demand.memory

    def _whole(self, count: int, avoid: set[str]) -> list[str]:
        """``count`` untouched GPUs on the best-fitting node."""
        fallback: str | None = None
        for size in sorted(k for k, nodes in self.buckets.items() if k >= count and nodes):
            for node in self.buckets[size]:
                if node not in avoid:
                    return self.node_untouched[node][:count]
                fallback = fallback or node
                break  # the rest of this bucket is no better for spreading
            if fallback is not None and len(avoid) >= len(self.node_untouched):
                break
        if fallback is None:
            raise _NoRoom
        return self.node_untouched[fallback][:count]

    def _shared(self, demand: Demand, avoid: set[str]) -> str:
        """The GPU a shared request fills most tightly."""
        need = demand.memory or math.ceil(demand.fraction * self.min_memory)
        start = bisect.bisect_left(self.partial, (need, ""))
        fallback: str | None = None
        looked = 0
        for free, uuid in self.partial[start:]:
            if free >= self._bytes_for(demand, uuid):
                if self.gpus[uuid].node not in avoid:
                    return uuid
                fallback = fallback or uuid
            if fallback is not None:
                looked += 1
                if looked > 64:  # enough looking for another node: share this one
                    return fallback
        for size in sorted(k for k, nodes in self.buckets.items() if k > 0 and nodes):
            best: str | None = None  # for a memory request: the smallest GPU that holds it
            for looked, node in enumerate(self.buckets[size]):
                if best is not None and (not demand.memory or looked > 32):
                    break
                if fallback is not None and node in avoid:
                    continue
                for uuid in self.node_untouched[node]:
                    if self.gpus[uuid].memory >= self._bytes_for(demand, uuid):
                        if node in avoid:
                            fallback = fallback or uuid
                        elif best is None or self.gpus[uuid].memory < self.gpus[best].memory:
                            best = uuid
            if best is not None:
                return best
        if fallback is None:
            raise _NoRoom
        return fallback

    def _place_replicas(self, request: Request) -> tuple[tuple[Slice, ...], ...]:
        """Take GPUs for every replica, or nothing (raises :class:`_NoRoom`)."""
        placed: list[tuple[Slice, ...]] = []
        nodes: set[str] = set()
        try:
            for _ in range(request.replicas):
                if request.demand.gpus:
                    chosen = self._whole(request.demand.gpus, nodes)
                    amounts = [(u, self.gpus[u].memory) for u in chosen]
                else:
                    uuid = self._shared(request.demand, nodes)
                    amounts = [(uuid, self._bytes_for(request.demand, uuid))]
                replica = []
                for uuid, amount in amounts:
                    self._take(uuid, amount, request.release)
                    state = self.gpus[uuid]
                    units = (
                        UNITS
                        if amount == state.memory
                        else math.ceil(amount * UNITS / state.memory)
                    )
                    replica.append(Slice(uuid, state.node, amount, units))
                    nodes.add(state.node)
                placed.append(tuple(replica))
        except _NoRoom:
            for done in placed:
                for s in done:
                    if request.release in self.gpus[s.gpu].holders:
                        self._give(s.gpu, request.release)
            raise
        return tuple(placed)

    # -- decisions ----------------------------------------------------------

    def place(self, request: Request) -> Decision:
        """Place ``request`` (all replicas) or say why it waits. Changes the ledger
        only when it returns :class:`Placed`."""
        if request.release in self.allocations:
            return Placed(self.allocations[request.release])
        quota = self.quotas.get(request.team)
        if quota is None:
            return Waiting(f"team {request.team} has no quota in this pool")
        if request.demand.cpu_only:  # no GPU: every replica on none, nothing booked
            return Placed(
                Allocation(
                    request.release,
                    request.model,
                    request.team,
                    request.kind,
                    request.serving,
                    borrowed=False,
                    replicas=((),) * request.replicas,
                )
            )
        estimate = self._estimate_units(request)
        if request.kind is ReleaseKind.PREVIEW:
            return self._place_preview(request, estimate)
        limit = round(quota.limit * UNITS)
        held = self.used[request.team]
        if estimate is not None and held + estimate > limit:
            return Waiting(
                f"{request.release} needs {request.replicas} x {request.demand.describe()}; "
                f"team {request.team}: {held / UNITS:g} of limit {quota.limit:g} GPUs held"
            )
        try:
            replicas = self._place_replicas(request)
        except _NoRoom:
            decision = self._make_room(request, estimate)
        else:
            decision = self._commit(request, replicas, ())
        if isinstance(decision, Placed):
            return self._keep_within_limit(request, decision)
        return decision

    def _place_preview(self, request: Request, estimate: int | None) -> Decision:
        """A preview takes free capacity or waits: it displaces nothing."""
        quota = self.quotas[request.team]
        held = self._held_with_previews(request.team)
        if estimate is not None and held + estimate > round(quota.limit * UNITS):
            return Waiting(
                f"{request.release} needs {request.replicas} x {request.demand.describe()}; "
                f"team {request.team}: {self._team_line(request.team)}"
            )
        try:
            replicas = self._place_replicas(request)
        except _NoRoom:
            return Waiting(
                self._why_no_room(
                    request,
                    " (a preview waits for free GPUs and never displaces a release)",
                )
            )
        return self._commit(request, replicas, ())

    def _commit(
        self, request: Request, replicas: tuple[tuple[Slice, ...], ...], preempted: tuple[str, ...]
    ) -> Decision:
        quota = self.quotas[request.team]
        units = sum(s.units for r in replicas for s in r)
        preview = request.kind is ReleaseKind.PREVIEW
        # a preview counts against the limit with the team's previews; a release does not
        held = self._held_with_previews(request.team) if preview else self.used[request.team]
        if held + units > round(quota.limit * UNITS):  # a memory request, known only now
            for replica in replicas:
                for s in replica:
                    if request.release in self.gpus[s.gpu].holders:
                        self._give(s.gpu, request.release)
            line = (
                self._team_line(request.team)
                if preview
                else f"{held / UNITS:g} of limit {quota.limit:g} GPUs held"
            )
            return Waiting(
                f"{request.release} needs {units / UNITS:g} GPUs; team {request.team}: {line}"
            )
        self.counter += 1
        allocation = Allocation(
            request.release,
            request.model,
            request.team,
            request.kind,
            request.serving,
            borrowed=not preview and held + units > round(quota.guaranteed * UNITS),
            replicas=replicas,
            order=self.counter,
        )
        if preview:
            self.preview_used[request.team] = self.preview_used.get(request.team, 0) + units
        else:
            self.used[request.team] = held + units
        self.allocations[request.release] = allocation
        return Placed(allocation, preempted)

    def _estimate_units(self, request: Request) -> int | None:
        if request.demand.gpus:
            return request.demand.gpus * UNITS * request.replicas
        if request.demand.fraction:
            return math.ceil(request.demand.fraction * UNITS) * request.replicas
        return None  # memory: depends on the GPU it lands on

    def _previews(self, team: str | None = None) -> list[Allocation]:
        """Preview allocations (of ``team``, or of every team), newest first."""
        return sorted(
            (
                a
                for a in self.allocations.values()
                if a.kind is ReleaseKind.PREVIEW and (team is None or a.team == team)
            ),
            key=lambda a: (-a.order, a.release),
        )

    def _make_room(self, request: Request, estimate: int | None) -> Decision:
        """A stable or canary release that does not fit: reclaim previews (any
        team's, newest first, one at a time, whatever the guarantee) until it
        fits; if every preview is not enough, preempt borrowed allocations too
        (:meth:`_preempt_for`). All on a trial: the ledger changes only when the
        release is placed, and previews that turned out not to be needed keep
        their GPUs."""
        previews = self._previews()
        if not previews:
            return self._preempt_for(request, estimate)
        trial = self.clone()
        reclaimed: list[Allocation] = []
        decision: Decision | None = None
        for preview in previews:
            trial.release(preview.release)
            reclaimed.append(preview)
            try:
                replicas = trial._place_replicas(request)
            except _NoRoom:
                continue
            decision = trial._commit(request, replicas, ())
            break
        if decision is None:  # every preview reclaimed, and still no room
            gpus = sum(p.units for p in reclaimed) / UNITS
            note = f"; reclaiming every preview ({gpus:g} GPUs) would not make room either"
            decision = trial._preempt_for(request, estimate, report=self, note=note)
        if not isinstance(decision, Placed):
            return decision  # nothing in self was touched
        for preview in sorted(reclaimed, key=lambda a: a.order):  # oldest back first
            if trial._restore(preview):
                reclaimed.remove(preview)
        reasons = tuple(
            f"PR preview {p.release} gives back {p.gpus:g} GPU for {request.release} "
            f"(a preview of team {p.team}: previews hold only GPUs no release needs)"
            for p in reclaimed
        )
        vars(self).update(vars(trial))
        return Placed(
            decision.allocation,
            tuple(p.release for p in reclaimed) + decision.preempted,
            reasons + decision.reasons,
        )

    def _restore(self, preview: Allocation) -> bool:
        """Book a reclaimed preview again exactly where it was, if its GPUs are
        still free and its team's limit allows it."""
        limit = round(self.quotas[preview.team].limit * UNITS)
        if self._held_with_previews(preview.team) + preview.units > limit:
            return False
        return self.adopt(preview) is None

    def _keep_within_limit(self, request: Request, decision: Placed) -> Placed:
        """A release placed within the limit that takes its team past the limit
        with the team's previews counted: its own newest previews give way."""
        team = request.team
        quota = self.quotas[team]
        limit = round(quota.limit * UNITS)
        victims: list[str] = []
        reasons: list[str] = []
        for preview in self._previews(team):
            if self._held_with_previews(team) <= limit:
                break
            reasons.append(
                f"PR preview {preview.release} gives back {preview.gpus:g} GPU for "
                f"{request.release} (team {team}: {self._team_line(team)})"
            )
            self.release(preview.release)
            victims.append(preview.release)
        if not victims:
            return decision
        return Placed(
            decision.allocation,
            decision.preempted + tuple(victims),
            decision.reasons + tuple(reasons),
        )

    def _preempt_for(
        self,
        request: Request,
        estimate: int | None,
        report: Ledger | None = None,
        note: str = "",
    ) -> Decision:
        """Preempt borrowed allocations for a request within its guarantee; a
        reason to wait (about ``report``'s GPUs, by default this ledger's, then
        ``note``) if that is not allowed or not enough."""
        quota = self.quotas[request.team]
        held = self.used[request.team]
        within_guarantee = estimate is not None and held + estimate <= round(
            quota.guaranteed * UNITS
        )
        if within_guarantee:
            trial = self.clone()
            victims: list[str] = []
            reasons: list[str] = []
            while candidates := trial._preemptible(request.team):
                victim = candidates[0]
                victim_quota = trial.quotas[victim.team]
                reasons.append(
                    f"{victim.release} gives back {victim.gpus:g} GPU borrowed by team "
                    f"{victim.team} (holding {trial.team_gpus(victim.team):g}, guaranteed "
                    f"{victim_quota.guaranteed:g}, priority {victim_quota.priority}) for "
                    f"{request.release}, within team {request.team}'s guarantee of "
                    f"{quota.guaranteed:g}"
                )
                trial.release(victim.release)
                victims.append(victim.release)
                try:
                    replicas = trial._place_replicas(request)
                except _NoRoom:
                    continue
                units = sum(s.units for r in replicas for s in r)
                if held + units > round(quota.limit * UNITS):
                    break  # nothing in self was touched yet
                for name in victims:
                    self.release(name)
                placed = self._place_replicas_exact(request, replicas)
                decision = self._commit(request, placed, tuple(victims))
                if isinstance(decision, Placed):
                    return Placed(decision.allocation, decision.preempted, tuple(reasons))
                return decision
        tail = "" if within_guarantee else " (above its guarantee, so nothing is preempted for it)"
        return Waiting((report or self)._why_no_room(request, tail) + note)

    def _place_replicas_exact(
        self, request: Request, replicas: tuple[tuple[Slice, ...], ...]
    ) -> tuple[tuple[Slice, ...], ...]:
        for replica in replicas:
            for s in replica:
                self._take(s.gpu, s.memory, request.release)
        return replicas

    def _preemptible(self, team: str) -> list[Allocation]:
        """Borrowed allocations of other teams that may give capacity back, in order."""
        candidates = [
            a
            for a in self.allocations.values()
            if a.team != team
            and a.borrowed
            and a.kind is not ReleaseKind.PREVIEW  # never borrowed; reclaimed before this
            and not (a.kind is ReleaseKind.STABLE and a.serving)
        ]
        candidates.sort(key=lambda a: (self.quotas[a.team].priority, -a.order))
        return [  # never take a team below its own guarantee
            a
            for a in candidates
            if self.used[a.team] - a.units >= round(self.quotas[a.team].guaranteed * UNITS)
        ]

    def _team_line(self, team: str) -> str:
        quota = self.quotas[team]
        line = f"{self.team_gpus(team):g} of limit {quota.limit:g} GPUs held"
        if self.preview_used.get(team, 0):
            line += f", and {self.team_preview_gpus(team):g} by previews"
        return line

    def _why_no_room(self, request: Request, tail: str) -> str:
        by_node: dict[str, list[_GPUState]] = {}
        for state in self.gpus.values():
            by_node.setdefault(state.node, []).append(state)
        parts = []
        for node in sorted(by_node)[:4]:
            states = by_node[node]
            untouched = sum(s.free == s.memory for s in states)
            biggest = max((s.free for s in states), default=0)
            parts.append(
                f"{untouched} free on {node} ({len(states) - untouched}/{len(states)} held, "
                f"largest free share {format_bytes(biggest)})"
            )
        if len(by_node) > 4:
            parts.append(f"and {len(by_node) - 4} more nodes")
        quota = self.quotas[request.team]
        team = (
            f"team {request.team}: {self.team_gpus(request.team):g} of limit {quota.limit:g} held"
        )
        if self.preview_used.get(request.team, 0):
            team += f", and {self.team_preview_gpus(request.team):g} by previews"
        return (
            f"{request.release} needs {request.replicas} x {request.demand.describe()}; "
            f"{'; '.join(parts) or 'no GPUs'}; {team}{tail}"
        )

    def release(self, release: str) -> Allocation | None:
        """Free everything ``release`` holds; returns what it held."""
        allocation = self.allocations.pop(release, None)
        if allocation is None:
            return None
        for replica in allocation.replicas:
            for s in replica:
                if release in self.gpus[s.gpu].holders:
                    self._give(s.gpu, release)
        if allocation.kind is ReleaseKind.PREVIEW:
            self.preview_used[allocation.team] -= allocation.units
        else:
            self.used[allocation.team] -= allocation.units
        return allocation

    def rename(self, old: str, new: str) -> Allocation | None:
        """Give ``old``'s allocation the name ``new`` (a promoted canary becomes the
        stable release, keeping its GPUs); ``new`` must be free."""
        allocation = self.allocations.get(old)
        if allocation is None:
            return None
        if allocation.kind is ReleaseKind.PREVIEW:
            raise ValueError(f"{old} is a preview: it is never promoted in place")
        if new in self.allocations:
            raise ValueError(f"{new} already holds GPUs")
        for replica in allocation.replicas:
            for s in replica:
                holders = self.gpus[s.gpu].holders
                if old in holders:
                    holders[new] = holders.pop(old)
        renamed = replace(allocation, release=new, kind=ReleaseKind.STABLE, serving=True)
        del self.allocations[old]
        self.allocations[new] = renamed
        return renamed

    def convert(self, old: str, new: str, kind: ReleaseKind) -> Allocation | None:
        """``old``'s allocation, on the same GPUs, becomes ``new``'s of ``kind`` (a
        merged pull request's preview becoming its canary: off the preview line,
        onto the team's, borrowed if it is above the guarantee); ``new`` must be free."""
        allocation = self.allocations.get(old)
        if allocation is None:
            return None
        if new in self.allocations:
            raise ValueError(f"{new} already holds GPUs")
        self.release(old)
        moved = replace(allocation, release=new, kind=kind, serving=False)
        problem = self.adopt(moved)
        if problem is not None:  # cannot be: the same GPUs were just freed
            raise ValueError(problem)
        return self.allocations[new]

    # -- restart ------------------------------------------------------------

    def adopt(self, allocation: Allocation) -> str | None:
        """Book a recorded allocation exactly as it was; a problem text if it cannot be."""
        if allocation.release in self.allocations:
            return f"{allocation.release} is recorded twice"
        if allocation.team not in self.quotas:
            return f"{allocation.release}: team {allocation.team} has no quota any more"
        need: dict[str, int] = {}
        for replica in allocation.replicas:
            for s in replica:
                if s.gpu not in self.gpus:
                    return f"{allocation.release} held GPU {s.gpu} on {s.node}, which is gone"
                need[s.gpu] = need.get(s.gpu, 0) + s.memory
        for uuid, amount in need.items():
            state = self.gpus[uuid]
            if amount > state.free:
                others = ", ".join(sorted(state.holders)) or "nobody"
                return (
                    f"{allocation.release} and {others} both hold GPU {uuid}: it is "
                    "double-booked; the later record is re-placed"
                )
        for uuid, amount in need.items():
            self._take(uuid, amount, allocation.release)
        self.counter = max(self.counter, allocation.order)
        if allocation.kind is ReleaseKind.PREVIEW:  # its own quota line, never borrowed
            previews = self.preview_used.get(allocation.team, 0)
            self.preview_used[allocation.team] = previews + allocation.units
            self.allocations[allocation.release] = replace(allocation, borrowed=False)
            return None
        held = self.used.get(allocation.team, 0)
        guaranteed = round(self.quotas[allocation.team].guaranteed * UNITS)
        self.used[allocation.team] = held + allocation.units
        self.allocations[allocation.release] = replace(
            allocation, borrowed=held + allocation.units > guaranteed
        )
        return None

    @classmethod
    def rebuild(
        cls, gpus: Iterable[GPU], quotas: Iterable[Quota], records: Iterable[Allocation]
    ) -> tuple[Ledger, list[str], list[str]]:
        """A ledger from recorded allocations: (ledger, problems, releases to re-place).

        Records are adopted oldest first; one that names a GPU no longer in the
        inventory, or that would double-book a GPU, is reported and left out so
        its release can be placed again.
        """
        ledger = cls(gpus, quotas)
        problems: list[str] = []
        again: list[str] = []
        for record in sorted(records, key=lambda a: (a.order, a.release)):
            problem = ledger.adopt(record)
            if problem is not None:
                problems.append(problem)
                again.append(record.release)
        return ledger, problems, again

    def resize(self, gpus: Iterable[GPU]) -> list[Allocation]:
        """The pool's GPUs changed (nodes joined or left): keep, in place, every
        allocation whose GPUs are all still there; free and return those that held
        a GPU that is gone (their releases must be placed again)."""
        held = list(self.allocations.values())
        rebuilt, _, again = Ledger.rebuild(gpus, self.quotas.values(), held)
        lost = [a for a in held if a.release in set(again)]
        vars(self).update(vars(rebuilt))
        return lost

    def check(self) -> None:
        """Assert the ledger's invariants (used by the property tests)."""
        for uuid, state in self.gpus.items():
            assert 0 <= state.free <= state.memory, uuid
            assert sum(state.holders.values()) == state.memory - state.free, uuid
        for team, used in self.used.items():
            expected = sum(
                a.units
                for a in self.allocations.values()
                if a.team == team and a.kind is not ReleaseKind.PREVIEW
            )
            assert used == expected, team
            assert used <= round(self.quotas[team].limit * UNITS), team
        for team, previews in self.preview_used.items():
            expected = sum(
                a.units
                for a in self.allocations.values()
                if a.team == team and a.kind is ReleaseKind.PREVIEW
            )
            assert previews == expected, team
            assert previews + self.used.get(team, 0) <= round(self.quotas[team].limit * UNITS), team
        for a in self.allocations.values():
            assert not (a.kind is ReleaseKind.PREVIEW and a.borrowed), a.release
