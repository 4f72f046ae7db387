"""Routers: the embedded router (default) and HAProxy, behind :class:`Router`.

:func:`make_router` is the factory; an unknown name raises.
"""

from __future__ import annotations

from controller.adapters.router.base import Router
from controller.adapters.router.embedded import EmbeddedRouter
from controller.adapters.router.haproxy import HAProxyRouter

__all__ = ["EmbeddedRouter", "HAProxyRouter", "Router", "make_router"]


def make_router(kind: str, **options: object) -> Router:
    """The router named ``kind``; an unknown name is an error, never a fallback."""
    if kind == "embedded":
        return EmbeddedRouter(**options)  # type: ignore[arg-type]
    if kind == "haproxy":
        return HAProxyRouter(**options)  # type: ignore[arg-type]
    raise ValueError(f"unknown router {kind!r}; known: embedded, haproxy")
