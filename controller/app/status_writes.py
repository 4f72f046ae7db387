"""Status pushes that never fail silently.

Status commits are made locally every pass and pushed to the status branch;
a push that fails is kept (the commits stay queued) and retried on the next
pass after a back-off (:func:`~controller.core.backoff.backoff_delay`). While
it fails, every model's status carries a ``StatusWritten`` condition with the
reason and the message, ``/metrics`` counts the failures
(``mdc_status_push_failures_total``) and the commits waiting
(``mdc_status_commits_pending``), and the log says so once per distinct error.

Called by the reconciler at the end of each pass.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from controller.adapters.git.status_branch import StatusBranch
from controller.core.backoff import backoff_delay
from controller.core.status import Condition
from controller.errors import ConditionType, MdcError, Reason

__all__ = ["StatusWrites"]

log = logging.getLogger(__name__)


@dataclass
class StatusWrites:
    """The state of the status pushes (see the module docstring)."""

    failures: int = 0  # in a row
    total_failures: int = 0  # since start
    pushes: int = 0  # that succeeded
    error: str | None = None  # the last failure's message, while failing
    reason: str = Reason.STATUS_PUSH_FAILED
    retry_at: float = 0.0
    pending: int = 0  # commits waiting for a push, after the last attempt

    def push(self, status: StatusBranch, now: float) -> bool:
        """Push what is pending, unless backing off; True when nothing is left."""
        if not status.pending():
            self.pending = 0
            return True
        if self.failures and now < self.retry_at:
            self.pending = status.pending()
            return False
        try:
            status.push()
        except MdcError as exc:
            self.failures += 1
            self.total_failures += 1
            if exc.message != self.error:
                log.error(
                    "status push to %s failed (kept, retried): %s", status.branch, exc.message
                )
            self.error, self.reason = exc.message, exc.reason or Reason.STATUS_PUSH_FAILED
            self.retry_at = now + backoff_delay(self.failures, base=1.0, cap=60.0)
            self.pending = status.pending()
            return False
        if self.error is not None:
            log.warning("status push to %s works again", status.branch)
        self.failures, self.error, self.pending = 0, None, 0
        self.pushes += 1
        return True

    def conditions(self) -> list[Condition]:
        """What every model's status says while pushes fail (nothing when they work)."""
        if self.error is None:
            return []
        return [
            Condition(
                ConditionType.STATUS_WRITTEN,
                False,
                self.reason,
                f"the status branch is not pushed (retried every pass): {self.error}",
            )
        ]
