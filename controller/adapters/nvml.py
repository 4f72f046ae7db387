"""NVML: the GPUs of this machine (name, UUID, memory, utilisation) through
nvidia-ml-py. Where NVML cannot be read, :class:`NVMLUnavailable` (transient).
Called by the pool refresh, ``mdc pool`` and the Ray runtime's per-node task.
"""

from __future__ import annotations

import contextlib
from typing import Any

from controller.core.inventory import GPU
from controller.errors import TransientError

__all__ = [
    "NVMLUnavailable",
    "read_nvml",
]


class NVMLUnavailable(TransientError):
    default_reason = "NVMLUnavailable"


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
