"""The watch loop: poll the release branch on a timer, and at once when a
webhook says it moved.

Owns the wiring between :class:`~controller.adapters.github.webhook.WebhookServer` and
:class:`~controller.adapters.git.source.SourcePoller`: a push to the release branch
fires a :class:`~controller.adapters.github.webhook.Trigger`, and a burst of pushes coalesces
into one poll: after the first, the loop waits until the webhooks have been
quiet for ``settle`` seconds (at most ``max_settle``), then fetches once.
Polling stays on as the fallback, on the poller's interval, or on its
back-off while the remote is down.

Called by ``mdc watch`` now, and by the reconciler later (its ``on_result``
runs the reconcile pass).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from controller.adapters.git.source import PollResult, SourcePoller
from controller.adapters.github.webhook import Event, PushEvent, Trigger

__all__ = ["Watcher", "push_listener"]

log = logging.getLogger(__name__)


def push_listener(branch: str, trigger: Trigger) -> Callable[[Event], None]:
    """An ``on_event`` for the webhook server that fires ``trigger`` for pushes
    to ``branch`` and ignores everything else (other branches, PR events)."""
    wanted = f"refs/heads/{branch}"

    def on_event(event: Event) -> None:
        if isinstance(event, PushEvent) and event.ref == wanted:
            trigger.fire()

    return on_event


class Watcher:
    """Runs :meth:`SourcePoller.poll` whenever the trigger fires or the delay ends."""

    def __init__(
        self,
        poller: SourcePoller,
        on_result: Callable[[PollResult], None],
        trigger: Trigger | None = None,
        *,
        clock: Callable[[], float] = time.time,
        settle: float = 0.2,
        max_settle: float = 1.0,
    ) -> None:
        self.settle = settle
        self.max_settle = max_settle
        self.poller = poller
        self.on_result = on_result
        self.trigger = trigger or Trigger()
        self.clock = clock
        self.polls = 0
        self._stop = threading.Event()

    def run(self, max_polls: int | None = None) -> None:
        """Poll now, then after each delay or trigger, until :meth:`stop` (or ``max_polls``)."""
        delay = 0.0
        while not self._stop.is_set():
            if delay > 0 and self.trigger.wait(delay):
                self._settle()
            if self._stop.is_set():
                break
            result = self.poller.poll(self.clock())
            self.polls += 1
            try:
                self.on_result(result)
            except Exception:  # one bad pass must not end the loop
                log.exception("handling poll result failed")
            if max_polls is not None and self.polls >= max_polls:
                break
            delay = result.retry_in

    def _settle(self) -> None:
        """Let a burst of webhooks finish before fetching once for all of them."""
        until = time.monotonic() + self.max_settle
        while not self._stop.is_set() and time.monotonic() < until:
            if not self.trigger.wait(min(self.settle, until - time.monotonic())):
                return

    def stop(self) -> None:
        self._stop.set()
        self.trigger.fire()
