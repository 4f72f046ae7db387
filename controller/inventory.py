"""What GPUs a pool has: discovered through NVML, or declared in the spec.

Owns reading the local GPUs with NVML (``nvidia-ml-py``: index, UUID, product
name, total and used memory, utilisation, MIG mode), expanding the GPUs a
``GPUPool`` declares, and merging the two into an :class:`Inventory` that
always says which GPUs are declared rather than discovered, and reports every
disagreement (a declared GPU NVML does not see, a different product or memory
size, NVML missing on a node that asked for it) instead of trusting either
side silently.

NVML is imported lazily so the rest of mdc runs where it is not installed;
without a driver ``nvmlInit`` raises ``NVMLError_LibraryNotFound``, which
becomes :class:`NVMLUnavailable` (transient: a driver can come back).

Called by the reconciler and ``mdc pool``; the GPU ledger
(:mod:`controller.ledger`) places releases on :attr:`Inventory.gpus`.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from controller.errors import TransientError
from controller.spec import Discovery, GPUPool
from controller.units import format_bytes

__all__ = [
    "GPU",
    "Inventory",
    "NVMLUnavailable",
    "build_inventory",
    "declared_gpus",
    "read_nvml",
]

#: Declared and discovered memory sizes closer than this count as the same
#: (NVML reports an "80GB" H100 as 79.6 GiB).
MEMORY_TOLERANCE = 0.06


class NVMLUnavailable(TransientError):
    default_reason = "NVMLUnavailable"


@dataclass(frozen=True)
class GPU:
    node: str
    index: int
    uuid: str
    product: str
    memory: int  # bytes
    declared: bool  # True: written in the spec, never seen by NVML
    memory_used: int | None = None
    utilization: int | None = None  # percent, over NVML's last sample period
    mig: bool | None = None  # MIG mode enabled; None when not supported or unknown

    @property
    def source(self) -> str:
        return "declared" if self.declared else "nvml"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_nvml(node: str, nvml: Any = None) -> list[GPU]:
    """The GPUs of this machine, as NVML sees them, labelled with ``node``.

    ``nvml`` is the ``pynvml`` module (a parameter so tests can hand in one
    whose calls fail in the ways the real one does).
    """
    if nvml is None:
        try:
            import pynvml  # noqa: PLC0415 - optional at run time

            nvml = pynvml
        except ImportError as exc:  # pragma: no cover - it is a dependency
            raise NVMLUnavailable(f"nvidia-ml-py is not installed: {exc}") from None
    try:
        nvml.nvmlInit()
    except nvml.NVMLError_LibraryNotFound:
        raise NVMLUnavailable(
            f"node {node}: NVML library not found (no NVIDIA driver on this machine)"
        ) from None
    except nvml.NVMLError as exc:
        raise NVMLUnavailable(f"node {node}: NVML failed to start: {exc}") from None
    try:
        gpus = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            gpus.append(
                GPU(
                    node=node,
                    index=index,
                    uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
                    product=_text(nvml.nvmlDeviceGetName(handle)),
                    memory=int(memory.total),
                    declared=False,
                    memory_used=int(memory.used),
                    utilization=_optional(
                        nvml, lambda h=handle: nvml.nvmlDeviceGetUtilizationRates(h).gpu
                    ),
                    mig=_optional(nvml, lambda h=handle: nvml.nvmlDeviceGetMigMode(h)[0] == 1),
                )
            )
        return gpus
    except nvml.NVMLError as exc:
        raise NVMLUnavailable(f"node {node}: NVML query failed: {exc}") from None
    finally:
        with contextlib.suppress(nvml.NVMLError):
            nvml.nvmlShutdown()


def _optional(nvml: Any, read: Any) -> Any:
    """A reading some GPUs do not support (utilisation, MIG): None then."""
    try:
        return read()
    except nvml.NVMLError_NotSupported:
        return None


def declared_gpus(pool: GPUPool, node_name: str) -> list[GPU]:
    """The GPUs ``pool`` declares on ``node_name``, with stable made-up UUIDs."""
    node = next(n for n in pool.nodes if n.name == node_name)
    out: list[GPU] = []
    for group in node.gpus:
        for _ in range(group.count):
            index = len(out)
            uuid = f"declared-{pool.name}-{node.name}-{index}"
            out.append(GPU(node.name, index, uuid, group.product, group.memory, declared=True))
    return out


@dataclass(frozen=True)
class Inventory:
    pool: str
    gpus: tuple[GPU, ...]
    disagreements: tuple[str, ...]

    def node_names(self) -> list[str]:
        return sorted({g.node for g in self.gpus})

    @property
    def declared_count(self) -> int:
        return sum(g.declared for g in self.gpus)

    @property
    def discovered_count(self) -> int:
        return sum(not g.declared for g in self.gpus)


def _same_memory(a: int, b: int) -> bool:
    return abs(a - b) <= MEMORY_TOLERANCE * max(a, b)


def _describe(gpus: Sequence[GPU]) -> str:
    if not gpus:
        return "no GPUs"
    counts = Counter((g.product, format_bytes(g.memory)) for g in gpus)
    return ", ".join(
        f"{n} x {product} ({memory})" for (product, memory), n in sorted(counts.items())
    )


def _compare(node: str, declared: list[GPU], found: list[GPU]) -> list[str]:
    """Disagreements between what the spec declares and what NVML sees on a node."""
    problems: list[str] = []
    unmatched = list(found)
    missing: list[GPU] = []
    for gpu in declared:
        match = next(
            (
                f
                for f in unmatched
                if f.product == gpu.product and _same_memory(f.memory, gpu.memory)
            ),
            None,
        )
        if match is None:
            missing.append(gpu)
        else:
            unmatched.remove(match)
    if missing or unmatched:
        problems.append(
            f"node {node}: the spec declares {_describe(declared)} but NVML sees "
            f"{_describe(found)}"
            + (f"; declared but not seen: {_describe(missing)}" if missing else "")
            + (f"; seen but not declared: {_describe(unmatched)}" if unmatched else "")
        )
    return problems


def build_inventory(
    pool: GPUPool, discovered: Mapping[str, Sequence[GPU] | Exception]
) -> Inventory:
    """Merge the pool's declarations with what NVML reported per node.

    ``discovered`` maps a node name to its NVML reading, or to the error that
    reading raised; a node absent from it was not read (no agent there).
    ``Declared`` nodes use their declared GPUs. ``NVML`` nodes use what NVML
    saw (and report any difference from GPUs also declared for them); when
    NVML could not be read they fall back to their declared GPUs, if any, and
    say so.
    """
    gpus: list[GPU] = []
    problems: list[str] = []
    for node in pool.nodes:
        declared = declared_gpus(pool, node.name)
        if node.discovery is Discovery.DECLARED:
            gpus += declared
            continue
        reading = discovered.get(node.name)
        if reading is None or isinstance(reading, Exception):
            why = "NVML was not read there" if reading is None else str(reading)
            fallback = (
                f"using the {len(declared)} declared GPUs" if declared else "no GPUs are usable"
            )
            problems.append(f"node {node.name}: discovery is NVML but {why}; {fallback}")
            gpus += declared
            continue
        found = [g if g.node == node.name else _renamed(g, node.name) for g in reading]
        gpus += found
        if declared:
            problems += _compare(node.name, declared, found)
    return Inventory(pool.name, tuple(gpus), tuple(problems))


def _renamed(gpu: GPU, node: str) -> GPU:
    return replace(gpu, node=node)
