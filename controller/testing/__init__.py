"""Fakes for tests and the demo: a GitHub REST API served from memory.

A package of modules by subject; this re-exports what tests and the demo use, so
``from controller.testing import FakeGitHub`` works:

* :mod:`controller.testing.github` -- :class:`FakeGitHub`, the HTTP server (with
  :class:`RecordedRequest` and :class:`ScriptedResponse`);
* :mod:`controller.testing.github_repo` -- the repositories it serves (:class:`FakeRepo`,
  :class:`FakeCommit`, :class:`FakeComment`, :class:`FakePull`, :func:`blob_sha`);
* :mod:`controller.testing.github_routes` -- the operations it answers, and
  :mod:`controller.testing.github_route_io` what a route is given and answers;
* :mod:`controller.testing.github_shapes` -- the JSON objects it answers with.

Imported by the tests and :mod:`controller.demo`; nothing below the demo imports it.
"""

from controller.testing.github import FakeGitHub, RecordedRequest, ScriptedResponse
from controller.testing.github_repo import FakeComment, FakeCommit, FakePull, FakeRepo, blob_sha

__all__ = [
    "FakeComment",
    "FakeCommit",
    "FakeGitHub",
    "FakePull",
    "FakeRepo",
    "RecordedRequest",
    "ScriptedResponse",
    "blob_sha",
]
