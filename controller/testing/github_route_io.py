"""What a route of :class:`~controller.testing.github.FakeGitHub` is given and answers.

Owns :class:`RouteRequest` (the fake, the repository the path names, the query, headers,
body and path parameters; :meth:`RouteRequest.page` pages a list as GitHub does, with
``per_page``/``page`` and a ``Link`` header), :class:`Reply` (raised to answer at once, or
returned), and GitHub's error shapes (:func:`error_reply`, :func:`invalid_reply`, with
``message``, ``documentation_url`` and ``errors``). Used by the routes in
:mod:`controller.testing.github_routes` and by the fake's dispatcher.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from controller.testing.github_repo import FakeRepo
from controller.testing.github_shapes import GitHubShapes

__all__ = ["DOCS", "Reply", "RouteRequest", "error_reply", "invalid_reply", "positive_int"]

#: Where GitHub's error answers point (``documentation_url``).
DOCS = "https://docs.github.com/rest"


class Reply(Exception):
    """A route's answer: raised to answer at once, or returned."""

    def __init__(
        self, status: int, body: Any = None, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = dict(headers or {})


def error_reply(status: int, message: str, doc: str = DOCS) -> Reply:
    """GitHub's error shape: ``message``, ``documentation_url``, ``status``."""
    return Reply(status, {"message": message, "documentation_url": doc, "status": str(status)})


def invalid_reply(*errors: dict[str, Any], message: str = "Validation Failed") -> Reply:
    """A 422 naming what was invalid (GitHub's ``errors`` list)."""
    body = {"message": message, "errors": list(errors), "documentation_url": DOCS, "status": "422"}
    return Reply(422, body)


@dataclass(frozen=True)
class RouteRequest:
    """One request as a route sees it: the fake, the repository named in the path (if any),
    the query, headers, body and the path's parameters."""

    fake: GitHubShapes  # the fake serving it (FakeGitHub), as its answers' shapes
    repo_or_none: FakeRepo | None
    method: str
    path: str
    query: dict[str, list[str]]
    headers: Mapping[str, str]
    body: bytes
    params: dict[str, str]

    @property
    def repo(self) -> FakeRepo:
        assert self.repo_or_none is not None
        return self.repo_or_none

    def arg(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else default

    def json(self) -> dict[str, Any]:
        if not self.body:
            return {}
        try:
            data = json.loads(self.body)
        except ValueError:
            raise error_reply(400, "Problems parsing JSON") from None
        if not isinstance(data, dict):
            raise error_reply(400, "Problems parsing JSON")
        return dict(data)

    def page(self, items: list[Any]) -> Reply:
        """One page of ``items`` with GitHub's ``Link`` header."""
        per_page = min(max(positive_int(self.arg("per_page"), 30), 1), 100)
        page = positive_int(self.arg("page"), 1)
        last = max(1, math.ceil(len(items) / per_page))
        chunk = items[(page - 1) * per_page : page * per_page]
        links = []

        def link(number: int, rel: str) -> str:
            query = {k: v[-1] for k, v in self.query.items()} | {"page": str(number)}
            return f'<{self.fake.url}{self.path}?{urlencode(query)}>; rel="{rel}"'

        if page > 1:
            links.append(link(min(page - 1, last), "prev"))
        if page < last:
            links += [link(page + 1, "next"), link(last, "last")]
        if page > 1:
            links.append(link(1, "first"))
        return Reply(200, chunk, {"link": ", ".join(links)} if links else {})


def positive_int(value: str | None, default: int) -> int:
    """A positive integer query parameter, else ``default``."""
    try:
        number = int(value) if value is not None else default
    except ValueError:
        return default
    return number if number > 0 else default
