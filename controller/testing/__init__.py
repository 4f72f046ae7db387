"""Fakes for tests and the demo; the fake GitHub is :mod:`controller.testing.github`.

Re-exports its public names so ``from controller.testing import FakeGitHub`` keeps working.
Imported by the tests and :mod:`controller.demo`.
"""

from controller.testing.github import (
    FakeComment,
    FakeCommit,
    FakeGitHub,
    FakePull,
    FakeRepo,
    RecordedRequest,
    ScriptedResponse,
    blob_sha,
)

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
