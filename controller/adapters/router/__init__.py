"""Routers: the embedded router (default) and HAProxy, behind :class:`Router`.

:func:`make_router` is the factory; an unknown name raises.
"""

from __future__ import annotations

from pathlib import Path

from controller.adapters.router.base import Router
from controller.adapters.router.embedded import EmbeddedRouter
from controller.adapters.router.haproxy import HAProxyRouter

__all__ = ["EmbeddedRouter", "HAProxyRouter", "Router", "make_router"]


def make_router(kind: str, *, state_dir: Path | None = None) -> Router:
    """The router named ``kind``; an unknown name is an error, never a fallback.
    HAProxy keeps its configuration and socket under ``state_dir``."""
    if kind == "embedded":
        return EmbeddedRouter()
    if kind == "haproxy":
        if state_dir is None:
            raise ValueError("the haproxy router needs a state directory")
        return HAProxyRouter(state_dir)
    raise ValueError(f"unknown router {kind!r}; known: embedded, haproxy")
