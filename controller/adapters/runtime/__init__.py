"""Runtimes: where releases run -- local ``bentoml serve`` processes (default) or
actors on a Ray cluster (the ``ray`` extra), behind :class:`Runtime`.

:func:`make_runtime` is the factory; an unknown name raises. Called by the wiring.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from controller.adapters.runtime.base import Runtime
from controller.adapters.runtime.local import LocalRuntime
from controller.adapters.runtime.ray_cluster import RayRuntime
from controller.core.inventory import GPU

__all__ = ["LocalRuntime", "RayRuntime", "Runtime", "make_runtime"]


def make_runtime(
    kind: str,
    state_dir: Path,
    bento_home: Path,
    *,
    address: str | None = None,
    namespace: str = "mdc",
    nvml: Callable[[str], list[GPU]] | None = None,
) -> LocalRuntime:
    """The runtime named ``kind`` (``local`` or ``ray``); an unknown name is an error."""
    if kind == "local":
        return LocalRuntime(state_dir, bento_home)
    if kind == "ray":
        return RayRuntime(
            state_dir, bento_home, address=address or "auto", namespace=namespace, nvml=nvml
        )
    raise ValueError(f"unknown runtime {kind!r}; known: local, ray")
