"""What mdc knows of a model registry's versions (MLflow), as data.

Owns the registry's answers once read and checked: :class:`RegistryVersion`
(a registered version: its run, source, status, aliases and tags),
:class:`FetchedVersion` (a version's files on disk, with their content digest),
:class:`RunRecord` (the run's metrics and parameters, for a pull request's
body), and the tags mdc writes back after a rollout (:func:`outcome_tags`).
Read by the packager (``artifact.mlflow``), the registry bridge and the
reporter; filled by :mod:`controller.adapters.model_registry`. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

__all__ = [
    "TAG_PREFIX",
    "FetchedVersion",
    "Outcome",
    "RegistryVersion",
    "RunRecord",
    "VersionStatus",
    "outcome_tags",
]

#: Every tag mdc writes on a model version starts with this.
TAG_PREFIX = "mdc."


class VersionStatus(StrEnum):
    """MLflow's ``ModelVersionStatus``."""

    PENDING = "PENDING_REGISTRATION"
    FAILED = "FAILED_REGISTRATION"
    READY = "READY"


class Outcome(StrEnum):
    """What became of a version mdc rolled out (the ``mdc.status`` tag)."""

    ROLLING_OUT = "rolling-out"
    SERVING = "serving"
    ROLLED_BACK = "rolled-back"
    RETIRED = "retired"


@dataclass(frozen=True)
class RegistryVersion:
    """One registered model version as the registry answered."""

    model: str
    version: str
    status: VersionStatus
    run_id: str = ""
    source: str = ""
    aliases: tuple[str, ...] = ()
    tags: Mapping[str, str] = field(default_factory=dict)
    created_ms: int = 0


@dataclass(frozen=True)
class FetchedVersion:
    """A version's files at ``path`` (an MLflow model directory with ``MLmodel``)."""

    version: RegistryVersion
    path: Path
    digest: str  # sha256 over the sorted (path, file sha256) pairs
    size: int
    mlflow_version: str = ""  # the MLflow that saved it (MLmodel's mlflow_version)

    def labels(self) -> dict[str, str]:
        """The provenance the model store and the bento carry."""
        v = self.version
        return {
            "mdc.dev/mlflow-model": v.model,
            "mdc.dev/mlflow-version": v.version,
            "mdc.dev/mlflow-run": v.run_id,
            "mdc.dev/mlflow-source": v.source[:200],
            "mdc.dev/sha256": self.digest,
        }


@dataclass(frozen=True)
class RunRecord:
    """The run that produced a version: what a reviewer wants in the PR body."""

    run_id: str
    name: str = ""
    metrics: Mapping[str, float] = field(default_factory=dict)
    params: Mapping[str, str] = field(default_factory=dict)


def outcome_tags(outcome: Outcome, why: str, *, at: str, revision: str = "") -> dict[str, str]:
    """The tags that tell the data scientist, in the registry, what mdc did with a
    version: its status, why (one line, at most 250 characters), when, and the
    git revision it was rolled out from."""
    one_line = " ".join(why.split())
    tags = {
        f"{TAG_PREFIX}status": outcome.value,
        f"{TAG_PREFIX}reason": one_line[:250],
        f"{TAG_PREFIX}updated": at,
    }
    if revision:
        tags[f"{TAG_PREFIX}revision"] = revision
    return tags
