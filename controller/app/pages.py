"""The pages a controller serves besides its API: the dashboard at ``/``.

Owns :func:`dashboard_route`, which makes the dashboard page from what a
reconciler knows right now (its statuses, the last loaded specs, the first
pool's holdings, the monitors) for the daemon's route table.

Called by the controller's wiring (:mod:`controller.app.wiring`), ``mdc run``
(:mod:`controller.cli.run`) and the demo (:mod:`controller.demo`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from controller.app.daemon import Config
from controller.app.reconciler import Reconciler
from controller.core.inventory import build_inventory
from controller.ui.dashboard import render_dashboard
from controller.ui.pool_view import pool_report, recorded_holdings

__all__ = ["dashboard_route"]


def dashboard_route(
    reconciler: Reconciler, config: Config
) -> Callable[[], tuple[int, str, bytes]]:
    """The ``/`` route of ``reconciler``'s daemon: (code, content type, HTML) on each call."""

    def page() -> tuple[int, str, bytes]:
        load = reconciler.load
        statuses = sorted(dict(reconciler.statuses).values(), key=lambda s: s.name)
        pool = None
        policies: dict[str, Any] = {}
        policy_of: dict[str, str] = {}
        if load is not None:
            policies = dict(load.desired.policies)
            policy_of = {name: m.rollout for name, m in load.desired.models.items()}
            pools = list(load.desired.pools.values())
            if pools:
                first = pools[0]
                holdings = [
                    h
                    for h in recorded_holdings(statuses)
                    if load.desired.models.get(h.model) is None
                    or load.desired.models[h.model].pool == first.name
                ]
                pool = pool_report(
                    first,
                    build_inventory(first, {}),
                    holdings,
                    "status",
                    statuses=statuses,
                    now=time.time(),
                )
        html = render_dashboard(
            statuses,
            pool,
            policies,
            time.time(),
            policy_of=policy_of,
            title=f"mdc - {config.repo}",
            monitors=reconciler.monitor_view(),
            previews=reconciler.previews.views(),
        )
        return 200, "text/html; charset=utf-8", html.encode()

    return page
