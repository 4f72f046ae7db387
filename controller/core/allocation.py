"""What the GPU ledger trades in: a replica's demand, a release's request, the
slices of GPUs it is given, its allocation and the decision about it.

Owns :class:`Demand` (whole GPUs, a fraction of one, or an amount of memory on
one), :class:`Request`, :class:`Slice`, :class:`Allocation`, the two decisions
(:class:`Placed`, :class:`Waiting`), the environment a placed replica starts
with (:func:`launch_env`), and the translation to and from a model's status
(:func:`holds_of`, :func:`allocations_from_status`, :func:`request_for`).
Quota arithmetic is done in integer milli-GPUs (:data:`UNITS` per GPU).

Pure: no I/O, no clock. The bookkeeping over these is
:class:`~controller.core.ledger.Ledger`; used by it, the reconciler, the pool
book, ``mdc plan`` and ``mdc pool``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from controller.core.status import GPUHold, ModelStatus
from controller.spec.kinds import Resources
from controller.spec.units import format_bytes

__all__ = [
    "MEMORY_LIMIT_ENV",
    "UNITS",
    "Allocation",
    "Decision",
    "Demand",
    "Placed",
    "ReleaseKind",
    "Request",
    "Slice",
    "Waiting",
    "allocations_from_status",
    "holds_of",
    "launch_env",
    "request_for",
]

#: Milli-GPUs: quota arithmetic is done in integers of this many per GPU.
UNITS = 1000
#: The environment variable a fractional release is told its memory bound in.
MEMORY_LIMIT_ENV = "MDC_GPU_MEMORY_LIMIT_BYTES"


class ReleaseKind(StrEnum):
    """Which of a model's releases: the one serving, the one being tried, or a
    pull request's preview (answering mirrored requests only)."""

    STABLE = "stable"
    CANARY = "canary"
    PREVIEW = "preview"


@dataclass(frozen=True)
class Demand:
    """What one replica needs: at most one of the three is set; none for a
    CPU-only model (:attr:`cpu_only`), which is placed on no GPU."""

    gpus: int = 0  # whole GPUs, all on one node
    fraction: float = 0.0  # a share of one GPU, 0 < fraction < 1
    memory: int = 0  # bytes on one GPU

    @classmethod
    def of(cls, resources: Resources) -> Demand:
        if resources.gpu_memory is not None:
            return cls(memory=resources.gpu_memory)
        gpu = resources.gpu or 0.0
        return cls(gpus=int(gpu)) if gpu >= 1 else cls(fraction=gpu)

    @property
    def cpu_only(self) -> bool:
        """No GPU at all: placed without booking anything, seeing no GPU."""
        return not (self.gpus or self.fraction or self.memory)

    def describe(self) -> str:
        if self.gpus:
            return f"{self.gpus} GPU" + ("s" if self.gpus > 1 else "")
        if self.fraction:
            return f"{self.fraction:g} GPU"
        if self.cpu_only:
            return "no GPU (CPU only)"
        return f"{format_bytes(self.memory)} of one GPU"


@dataclass(frozen=True)
class Request:
    release: str  # unique, e.g. "fraud-scorer/canary"
    model: str
    team: str
    demand: Demand
    replicas: int = 1
    kind: ReleaseKind = ReleaseKind.STABLE
    serving: bool = False  # a stable release taking traffic: never preempted


@dataclass(frozen=True)
class Slice:
    """The part of one GPU a replica holds."""

    gpu: str  # UUID
    node: str
    memory: int  # bytes
    units: int  # milli-GPUs


@dataclass(frozen=True)
class Allocation:
    release: str
    model: str
    team: str
    kind: ReleaseKind
    serving: bool
    borrowed: bool
    replicas: tuple[tuple[Slice, ...], ...]
    order: int = 0  # when it was placed: newer allocations are preempted first

    @property
    def units(self) -> int:
        return sum(s.units for replica in self.replicas for s in replica)

    @property
    def gpus(self) -> float:
        return self.units / UNITS


def launch_env(replica: tuple[Slice, ...]) -> dict[str, str]:
    """The environment a replica's process starts with: the GPUs it may see,
    by UUID (none, ``CUDA_VISIBLE_DEVICES=""``, for a CPU-only replica, whatever
    the controller itself sees), and for a share of a GPU its memory bound.

    The bound is advisory: without MIG or MPS, processes sharing a GPU are not
    isolated; the serving code must keep within ``MDC_GPU_MEMORY_LIMIT_BYTES``
    (for PyTorch, ``torch.cuda.set_per_process_memory_fraction``).
    """
    env = {
        "CUDA_VISIBLE_DEVICES": ",".join(s.gpu for s in replica),
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
    }
    if any(s.units < UNITS for s in replica):
        env[MEMORY_LIMIT_ENV] = str(sum(s.memory for s in replica))
    return env


@dataclass(frozen=True)
class Placed:
    allocation: Allocation
    preempted: tuple[str, ...] = ()  # releases stopped to make room (their GPUs are free now)
    reasons: tuple[str, ...] = ()  # one sentence per preemption, for the plan and status


@dataclass(frozen=True)
class Waiting:
    reason: str


Decision = Placed | Waiting


def holds_of(allocation: Allocation, since: str | None) -> tuple[GPUHold, ...]:
    """How an allocation is written into its model's status."""
    return tuple(
        GPUHold(s.node, s.gpu, s.units / UNITS, str(allocation.kind), since, replica=i)
        for i, replica in enumerate(allocation.replicas)
        for s in replica
    )


def allocations_from_status(
    status: ModelStatus, memory_of: Mapping[str, int], order: int = 0
) -> list[Allocation]:
    """The allocations a model's status records, for :meth:`~controller.core.ledger.Ledger.rebuild`.

    ``memory_of`` maps GPU UUIDs to their memory; a GPU it lacks (gone from the
    inventory) gets 0 bytes, and :meth:`~controller.core.ledger.Ledger.adopt` reports it.
    """
    out = []
    for kind in (ReleaseKind.STABLE, ReleaseKind.CANARY):
        holds = [h for h in status.gpus if h.release == str(kind)]
        if not holds:
            continue
        replicas: dict[int, list[Slice]] = {}
        for h in holds:
            memory = memory_of.get(h.gpu, 0)
            amount = memory if h.share >= 1 else math.ceil(h.share * memory)
            replicas.setdefault(h.replica, []).append(
                Slice(h.gpu, h.node, amount, round(h.share * UNITS))
            )
        out.append(
            Allocation(
                release=f"{status.name}/{kind}",
                model=status.name,
                team=status.team or "",
                kind=kind,
                serving=kind is ReleaseKind.STABLE,
                borrowed=False,  # worked out again by Ledger.adopt
                replicas=tuple(tuple(replicas[i]) for i in sorted(replicas)),
                order=order,
            )
        )
    return out


def request_for(model: str, team: str, resources: Resources, kind: ReleaseKind) -> Request:
    """The ledger request for one release of a model."""
    return Request(f"{model}/{kind}", model, team, Demand.of(resources), resources.replicas, kind)
