"""The router seam: what the controller needs from whatever carries a model's
traffic -- the embedded router or a real proxy (HAProxy). Implementations live
beside this file; :func:`controller.adapters.router.make_router` picks one by name.
"""

from __future__ import annotations

from typing import Protocol

from controller.core.traffic import BackendStats, RouteConfig, Sample, SamplingConfig

__all__ = [
    "Router",
]


class Router(Protocol):
    """What the rollout needs from a router, embedded or a real proxy."""

    def add_model(self, model: str, port: int = 0) -> str: ...

    def configure(self, model: str, config: RouteConfig) -> None: ...

    def snapshot(self, model: str) -> dict[str, BackendStats]: ...

    def sample(self, model: str, config: SamplingConfig | None) -> None: ...

    def samples(self, model: str) -> list[Sample]: ...

    def close(self) -> None: ...
