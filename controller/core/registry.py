"""What mdc knows of a model registry's versions (MLflow), as data.

Owns the registry's answers once read and checked: :class:`RegistryVersion`
(a registered version: its run, source, status, aliases and tags),
:class:`FetchedVersion` (a version's files on disk, with their content digest),
:class:`RunRecord` (the run's metrics and parameters, for a pull request's
body), and the tags mdc writes back after a rollout (:func:`outcome_tags`).
Also the bridge's arithmetic: which version an alias or tag proposes
(:func:`newest_matching`), the pull request that proposes it (its branch, title
and body) and the spec as it would read (:func:`bump_scalars`, a text edit that
keeps comments and layout). Read by the packager (``artifact.mlflow``), the
registry bridge and the reporter; filled by
:mod:`controller.adapters.model_registry`. Pure.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from controller.core.safe_text import md_code, md_text

__all__ = [
    "PROPOSAL_MARKER",
    "PROPOSAL_PREFIX",
    "TAG_PREFIX",
    "FetchedVersion",
    "Outcome",
    "RegistryVersion",
    "RunRecord",
    "VersionStatus",
    "bump_scalars",
    "newest_matching",
    "outcome_tags",
    "proposal_body",
    "proposal_branch",
    "proposal_title",
    "version_number",
]

#: Every tag mdc writes on a model version starts with this.
TAG_PREFIX = "mdc."
#: The branches of the pull requests the bridge opens: ``PREFIX<model>/v<version>``.
PROPOSAL_PREFIX = "mdc/registry/"
#: Hidden in the body of every pull request the bridge opens.
PROPOSAL_MARKER = "<!-- mdc:registry -->"


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


def version_number(version: str) -> int:
    """MLflow's version label as a number to compare; -1 when it is not one."""
    return int(version) if version.isascii() and version.isdigit() else -1


def newest_matching(
    versions: Iterable[RegistryVersion], tag: str, value: str | None, after: str
) -> RegistryVersion | None:
    """The newest READY version carrying ``tag`` (with ``value``, unless None) that
    is newer than ``after`` (the version git names); None when there is none."""
    chosen: RegistryVersion | None = None
    for v in versions:
        if v.status is not VersionStatus.READY or tag not in v.tags:
            continue
        if value is not None and v.tags[tag] != value:
            continue
        if version_number(v.version) > version_number(after) and (
            chosen is None or version_number(v.version) > version_number(chosen.version)
        ):
            chosen = v
    return chosen


def proposal_branch(model: str, version: str) -> str:
    return f"{PROPOSAL_PREFIX}{model}/v{version}"


def proposal_title(model: str, version: RegistryVersion) -> str:
    return f"{model}: MLflow {version.model} version {version.version}"


#: A YAML plain or quoted scalar at the start of the text it is matched against.
_SCALAR = re.compile(r"""("(?:[^"\\]|\\.)*"|'(?:[^']|'')*'|[^\s#,\]\}]+)""")


def bump_scalars(text: str, spots: Sequence[tuple[int, int]], value: str) -> str:
    """``text`` with the scalar at each 1-based (line, column) of ``spots``
    replaced by ``value`` (double-quoted, so "7" stays a string where the spec
    wants one, and a number reads the same to the schema's integer-or-string);
    everything else (comments, order, spacing) as it was. :class:`ValueError`
    when a spot holds no scalar."""
    lines = text.splitlines(keepends=True)
    for line, column in sorted(set(spots), reverse=True):
        current = lines[line - 1]
        found = _SCALAR.match(current, column - 1)
        if found is None:
            raise ValueError(f"no scalar at line {line}, column {column}")
        quoted = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
        lines[line - 1] = current[: found.start()] + quoted + current[found.end() :]
    return "".join(lines)


def proposal_body(
    model: str,
    spec_file: str,
    version: RegistryVersion,
    *,
    run: RunRecord | None,
    registry: str,
    trigger: str,
    before: str,
) -> str:
    """The pull request's description: what moved in the registry, the run that
    made the version (its metrics and parameters), and what merging does."""
    link = f"{registry}/#/models/{version.model}/versions/{version.version}"
    rows = [
        PROPOSAL_MARKER,
        f"MLflow {md_code(version.model)} version **{md_text(version.version)}** got "
        f"{md_text(trigger)}; `{md_text(spec_file)}` runs version {md_text(before)}.",
        "",
        f"- registry: {md_text(link)}",
        f"- run: {md_code(version.run_id or 'unknown')}"
        + (f" ({md_text(run.name)})" if run and run.name else ""),
        f"- source: {md_code(version.source or 'unknown')}",
    ]
    if run and run.metrics:
        rows += ["", "| metric | value |", "|---|---|"]
        rows += [
            f"| {md_code(k, in_table=True)} | {v:.6g} |" for k, v in sorted(run.metrics.items())
        ]
    if run and run.params:
        rows += ["", "| parameter | value |", "|---|---|"]
        rows += [
            f"| {md_code(k, in_table=True)} | {md_code(v, in_table=True)} |"
            for k, v in sorted(run.params.items())
        ]
    rows += [
        "",
        f"Merging releases {md_code(model)} as a canary under its rollout policy; mdc "
        "writes the outcome back to the registry. Opened by `mdc registry watch`; a newer "
        "version closes this pull request.",
    ]
    return "\n".join(rows)
