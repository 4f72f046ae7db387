"""Routers: the embedded router (default: in a supervised process of its own,
:class:`SupervisedRouter`) and HAProxy, behind :class:`Router`.

:func:`make_router` is the factory; an unknown name raises.
"""

from __future__ import annotations

from pathlib import Path

from controller.adapters.router.base import Router
from controller.adapters.router.embedded import EmbeddedRouter
from controller.adapters.router.haproxy import HAProxyRouter
from controller.adapters.router.supervised import SupervisedRouter

__all__ = ["EmbeddedRouter", "HAProxyRouter", "Router", "SupervisedRouter", "make_router"]


def make_router(kind: str, *, state_dir: Path | None = None) -> Router:
    """The router named ``kind``; an unknown name is an error, never a fallback.
    The embedded router runs as a process of its own that keeps its route table
    under ``state_dir`` (adopted by the next controller); HAProxy keeps its
    configuration and socket there."""
    if kind not in ("embedded", "haproxy"):
        raise ValueError(f"unknown router {kind!r}; known: embedded, haproxy")
    if state_dir is None:
        raise ValueError(f"the {kind} router needs a state directory")
    if kind == "embedded":
        return SupervisedRouter(state_dir)
    if kind == "haproxy":
        return HAProxyRouter(state_dir)
    raise ValueError(f"unknown router {kind!r}; known: embedded, haproxy")
