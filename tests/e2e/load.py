"""What the end-to-end tests of the running versions share: :class:`Load`, a
thread of requests to one model (``x ~ N(centre, 1)`` and a user the model's
spec marks sensitive, so a test can look for it where it must never be), and
:func:`wait_until`. Used by ``test_monitor.py`` and ``test_preview.py``."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx

__all__ = ["SECRET", "Load", "wait_until"]

#: The user every request carries: it must never be kept (samples, pairs, records).
SECRET = "alice@example.com"


class Load:
    """Requests to one model from a thread: x ~ N(centre, 1), with a user to hide;
    every answer's status code (0: no answer) in :attr:`codes`."""

    def __init__(self, url: str, seed: int) -> None:
        self.url, self.centre, self.codes = url, 0.0, list[int]()
        self.rng = random.Random(seed)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self._stop.is_set():
                body = {"x": self.rng.gauss(self.centre, 1.0), "user": SECRET}
                try:
                    self.codes.append(client.post(self.url, json=body).status_code)
                except httpx.HTTPError:
                    self.codes.append(0)
                time.sleep(0.01)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=15)


def wait_until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """``check()``'s first truthy value within ``timeout`` seconds (else it fails)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out: {what}")
