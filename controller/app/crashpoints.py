"""Named points where a test can make the controller die abruptly.

Owns :data:`POINTS`, every place between two side effects of a multi-step move
(deploy, canary start, promotion, rollback, abort, re-placement) and of status
writing, and :func:`crash_point`, called at each of them. Outside tests it does
nothing: it reads ``MDC_CRASH_AT`` (a point's name) and, when it names this
point, exits the process at once with status 137, as ``kill -9`` would leave it
-- no ``finally``, no flush, no clean-up. With ``MDC_CRASH_MODE=raise`` it raises
:class:`SimulatedCrash` instead (a :class:`BaseException`, so no ``except
Exception`` of the controller catches it), which lets the in-process crash-point
suite (``tests/unit/test_crash_points.py``) throw a controller away at the point
and start a new one over the same state directory, repository and releases.

Called by the moves (:mod:`controller.app.moves`), the rollout driver
(:mod:`controller.app.rollout`) and the reconciler's status writing.
"""

from __future__ import annotations

import os

__all__ = ["CRASH_ENV", "POINTS", "SimulatedCrash", "crash_point"]

#: The environment variable that names the point to die at (tests only).
CRASH_ENV = "MDC_CRASH_AT"
#: ``raise``: raise :class:`SimulatedCrash` instead of exiting (in-process tests).
MODE_ENV = "MDC_CRASH_MODE"

#: Every crash point, in the order a move passes them.
POINTS: tuple[str, ...] = (
    # a first release: booked, then started, then recorded
    "deploy.after-intent",
    "deploy.after-launch",
    # a canary: booked, then started, then recorded
    "canary.after-intent",
    "canary.after-launch",
    # promotion: decided, traffic moved, the old stable drained and stopped, booked
    "promote.after-intent",
    "promote.after-route",
    "promote.after-stop-stable",
    "promote.after-book",
    # rollback: decided, traffic back to stable, the canary stopped, its GPUs freed
    "rollback.after-intent",
    "rollback.after-route",
    "rollback.after-stop-canary",
    "rollback.after-free",
    # abort (the spec changed during the canary, or it was removed from git)
    "abort.after-intent",
    "abort.after-route",
    "abort.after-stop-canary",
    # re-placement of a stable whose node was lost
    "replace.after-free",
    "replace.after-launch",
    # the status of a pass: committed locally, pushed, reported
    "status.after-commit",
    "status.after-push",
    "status.after-report",
)


class SimulatedCrash(BaseException):
    """The controller died at a crash point (``MDC_CRASH_MODE=raise``)."""


def crash_point(name: str) -> None:
    """Die here when ``MDC_CRASH_AT`` names this point (see the module docstring)."""
    if name not in POINTS:  # a typo in the code, caught by any test that passes it
        raise ValueError(f"unknown crash point {name!r}")
    if os.environ.get(CRASH_ENV) != name:
        return
    if os.environ.get(MODE_ENV) == "raise":
        raise SimulatedCrash(name)
    os._exit(137)
