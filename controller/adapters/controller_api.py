"""A client of a running controller's JSON API (``/api/status``, ``/api/monitor``).

Owns :class:`ControllerAPI`: one GET of a path under the controller's URL, its
answer decoded as JSON. Any failure (no answer, an HTTP error status, a body
that is not JSON) is raised as :class:`~controller.errors.TransientError` whose
message names the controller and what went wrong -- a controller may come back.

Called by ``mdc status --controller`` and ``mdc monitor --controller``
(:mod:`controller.cli.records`).
"""

from __future__ import annotations

from typing import Any

import httpx

from controller.errors import Reason, TransientError

__all__ = ["ControllerAPI"]


class ControllerAPI:
    """The JSON API of the controller at ``url`` (e.g. ``http://127.0.0.1:8080``)."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self.url = url
        self.timeout = timeout

    def get(self, path: str) -> Any:
        """GET ``path`` (``/api/status``) as JSON; TransientError when it cannot be had."""
        try:
            answer = httpx.get(self.url.rstrip("/") + path, timeout=self.timeout)
            answer.raise_for_status()
            return answer.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise TransientError(f"{self.url}: {exc}", reason=Reason.UNAVAILABLE) from exc
