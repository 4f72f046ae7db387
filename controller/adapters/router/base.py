"""The router seam: what the controller needs from whatever carries a model's
traffic -- the embedded router or a real proxy (HAProxy). Implementations live
beside this file; :func:`controller.adapters.router.make_router` picks one by name.
"""

from __future__ import annotations

from typing import Protocol

from controller.core.traffic import (
    BackendStats,
    Pair,
    PairingConfig,
    RouteConfig,
    Sample,
    SamplingConfig,
)

__all__ = [
    "Router",
]


class Router(Protocol):
    """What the rollout needs from a router, embedded or a real proxy.

    One route per model: a listening address that splits the model's traffic
    between a stable and a canary backend by weight, and may send a share of
    what the stable answers to a pull request's preview too (its answers paired
    with the stable's, never the client's). Every call is idempotent.
    """

    def add_model(self, model: str, port: int = 0) -> str:
        """Open ``model``'s route on ``port`` (0: any free port); its URL. A route
        already open is returned as it is."""
        ...

    def configure(self, model: str, config: RouteConfig) -> None:
        """Send ``model``'s traffic as ``config`` says, from the next request on. A
        router that cannot do what ``config`` asks (mirroring, sticky users, a
        preview, ...) raises a permanent error saying so."""
        ...

    def snapshot(self, model: str) -> dict[str, BackendStats]:
        """``model``'s counters since its route opened, by backend (``stable``,
        ``canary``): monotonic, so two snapshots make a window. A preview's
        requests are never counted here."""
        ...

    def sample(self, model: str, config: SamplingConfig | None) -> None:
        """Keep a share of ``model``'s requests and answers (None: stop sampling).
        A router that cannot sample raises a permanent error saying so."""
        ...

    def samples(self, model: str) -> list[Sample]:
        """The samples kept since the last call (each is returned once)."""
        ...

    def pair(self, model: str, config: PairingConfig | None) -> None:
        """Keep, for each request of ``model`` also sent to its preview
        (``RouteConfig.preview``), the request with the stable's and the preview's
        answers (None: stop pairing, and drop the pairs kept). A router that
        cannot send traffic to a preview raises a permanent error saying so."""
        ...

    def pairs(self, model: str) -> list[Pair]:
        """The pairs kept since the last call (each is returned once)."""
        ...

    def in_flight(self, model: str) -> dict[str, int]:
        """The requests of ``model`` being answered now, by backend address
        (``"127.0.0.1:PORT"``): a release is stopped once its count is 0 (drained)."""
        ...

    def waiting(self, model: str) -> dict[str, float]:
        """How long (seconds) the oldest request in flight on each of ``model``'s
        backends has waited, by address; backends with none are left out, and a
        router that cannot tell answers ``{}``. A release that hangs (on a full
        disk, say) fails no request the counters see: this is how it shows."""
        ...

    def close(self) -> None:
        """Let go of the routes. A router in a process of its own keeps serving them
        (the next controller adopts it); one in this process stops."""
        ...

    def shutdown(self) -> None:
        """Stop serving every route, after the requests in flight are answered."""
        ...
