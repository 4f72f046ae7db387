"""BentoML packaging: a model's artifact into the model store, and its service
code plus that exact model into a bento -- content-addressed, offline, once.

Owns:

* **Artifacts.** A file or directory inside the spec repo (read through the
  :class:`~controller.spec.tree.Tree`, so a git snapshot works without a checkout),
  an http(s) URL (streamed with httpx under a size cap, sha256-checked before
  anything is imported, retried on transient errors), or an existing model
  tag. The model tag's version is the artifact's content hash, so the same
  bytes never make two models. A single file is stored in the model as
  ``artifact<suffix>`` (``artifact.json``); a directory as it is.
* **Bentos.** The service module and the repository modules it imports
  (found by parsing them, never running them:
  :mod:`controller.spec.service_sources`) and a generated ``bentofile.yaml``
  are laid out in a build directory; ``bentoml build`` runs offline
  (``lock_packages: false``, no index, no proxies) with the exact model tag as
  the ``model_tag`` build argument, so the bento pins it. The bento tag's
  version is a hash of everything that goes in (those files, model tag,
  service class, BentoML version), so an unchanged model costs no ``bentoml
  build``, and neither does a change to another model's code. Labels name the
  source repo, revision and spec file. Each build's output goes to a log file;
  a failed build is a :class:`~controller.errors.PermanentError`
  (``BuildFailed``) carrying the log's last lines, and nothing half-written is
  left in the store.

BentoML runs in subprocesses (with ``BENTOML_HOME`` set and telemetry off), so
mdc itself never imports it. Called by ``mdc build`` and the reconciler.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import httpx
import yaml

from controller.core.environment import bentoml_env
from controller.errors import PermanentError, Reason, TransientError
from controller.spec.identity import (
    _digest_of_files,
    _files_under,
    _safe_version,
    _sha256,
    bento_tag,
    service_files,
)
from controller.spec.kinds import Model
from controller.spec.tree import EntryKind, Tree, clean_reference, resolve

__all__ = [
    "BuildResult",
    "Builder",
    "Packager",
    "Source",
]

MAX_ARTIFACT_BYTES = 4 << 30
BUILD_TIMEOUT = 600.0

_IMPORT_MODEL = """
import shutil, sys
import bentoml
tag, source, kind, name = sys.argv[1:5]
labels = dict(arg.split("=", 1) for arg in sys.argv[5:])
with bentoml.models.create(tag, labels=labels) as model:
    if kind == "file":
        shutil.copyfile(source, model.path_of(name))
    else:
        shutil.copytree(source, model.path, dirs_exist_ok=True)
print(model.tag)
"""


@dataclass(frozen=True)
class Source:
    """Where the specs came from, written into the bento's labels."""

    repo: str = ""
    revision: str = ""


@dataclass(frozen=True)
class BuildResult:
    model: str
    model_tag: str
    bento_tag: str
    built: bool  # False: the bento was already in the store
    log: Path | None = None


class Builder(Protocol):
    """What the controller needs from a packager: a bento for a model, built once."""

    def build(self, model: Model, tree: Tree, source: Source | None = None) -> BuildResult:
        """The bento for ``model`` as ``tree`` has it (built, or found by its tag)."""
        ...


class Packager:
    """Builds bentos into the BentoML store at ``home``; work files under ``state_dir``."""

    def __init__(
        self,
        home: Path,
        state_dir: Path,
        *,
        python: str = sys.executable,
        http: httpx.Client | None = None,
        retries: int = 3,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.home = Path(home).absolute()  # builds run elsewhere (cwd: their context)
        self.state = Path(state_dir)
        self.python = python
        self.http = http
        self.retries = retries
        self.sleep = sleep
        for sub in ("models", "bentos"):
            (self.home / sub).mkdir(parents=True, exist_ok=True)
        for sub in ("staging", "build", "logs", "downloads"):
            (self.state / sub).mkdir(parents=True, exist_ok=True)

    # -- store queries --------------------------------------------------------

    def model_exists(self, tag: str) -> bool:
        name, _, version = tag.partition(":")
        return (self.home / "models" / name / version / "model.yaml").is_file()

    def bento_exists(self, tag: str) -> bool:
        name, _, version = tag.partition(":")
        return (self.home / "bentos" / name / version / "bento.yaml").is_file()

    # -- artifacts ------------------------------------------------------------

    def import_artifact(self, model: Model, tree: Tree) -> str:
        """The model tag holding ``model``'s artifact, importing it when new."""
        art = model.artifact
        if art.bento_model:
            if not self.model_exists(art.bento_model):
                raise PermanentError(
                    f"{model.name}: BentoML model {art.bento_model} is not in the store "
                    f"({self.home / 'models'})",
                    reason=Reason.MODEL_NOT_FOUND,
                )
            return art.bento_model
        if art.url:
            staged, name = self._download(model), "artifact" + _suffix(art.url)
            digest = art.sha256 or ""
            kind = "file"
        else:
            staged, digest, kind, name = self._stage_from_tree(model, tree)
        tag = f"{model.name}:{_safe_version(digest)}"
        if not self.model_exists(tag):
            labels = [f"mdc.dev/sha256={digest}", f"mdc.dev/model={model.name}"]
            self._run(
                [self.python, "-c", _IMPORT_MODEL, tag, str(staged), kind, name, *labels],
                log=self.state / "logs" / f"import-{model.name}-{_safe_version(digest)}.log",
                failure=f"{model.name}: importing the artifact into the model store failed",
                reason=Reason.ARTIFACT_IMPORT_FAILED,
            )
        return tag

    def _stage_from_tree(self, model: Model, tree: Tree) -> tuple[Path, str, str, str]:
        path = clean_reference(model.artifact.path or "")
        target, kind = resolve(tree, path)
        if kind is EntryKind.FILE:
            data = tree.read(target)
            digest = _sha256(data)
            staged = self.state / "staging" / digest
            staged.write_bytes(data)
            return staged, digest, "file", "artifact" + _suffix(target)
        if kind is not EntryKind.DIR:
            raise PermanentError(
                f"{model.name}: artifact {path!r} is not a file or directory in the repo",
                reason=Reason.ARTIFACT_MISSING,
            )
        files = _files_under(tree, target)
        if sum(len(b) for b in files.values()) > MAX_ARTIFACT_BYTES:
            raise PermanentError(
                f"{model.name}: artifact over the size cap", reason=Reason.ARTIFACT_TOO_BIG
            )
        digest = _digest_of_files(files)
        staged = self.state / "staging" / digest
        shutil.rmtree(staged, ignore_errors=True)
        for rel, data in files.items():
            out = staged / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(data)
        return staged, digest, "dir", ""

    def _download(self, model: Model) -> Path:
        url, expected = model.artifact.url or "", model.artifact.sha256 or ""
        final = self.state / "downloads" / expected
        if final.is_file() and _file_sha256(final) == expected:
            return final
        partial = final.with_suffix(".part")
        client = self.http or httpx.Client(timeout=httpx.Timeout(30.0), follow_redirects=True)
        try:
            for attempt in range(1, self.retries + 1):
                try:
                    self._fetch(client, url, partial)
                    break
                except TransientError:
                    if attempt == self.retries:
                        raise
                    self.sleep(min(30.0, 2.0**attempt))
        finally:
            if self.http is None:
                client.close()
        got = _file_sha256(partial)
        if got != expected:
            partial.unlink(missing_ok=True)
            raise PermanentError(
                f"{model.name}: artifact from {url} has sha256 {got}, the spec says {expected}; "
                "nothing was imported",
                reason=Reason.ARTIFACT_DIGEST_MISMATCH,
            )
        partial.replace(final)
        return final

    def _fetch(self, client: httpx.Client, url: str, into: Path) -> None:
        try:
            with client.stream("GET", url) as answer:
                if answer.status_code >= 500 or answer.status_code == 429:
                    raise TransientError(
                        f"GET {url}: HTTP {answer.status_code}", reason=Reason.ARTIFACT_UNAVAILABLE
                    )
                if answer.status_code != 200:
                    raise PermanentError(
                        f"GET {url}: HTTP {answer.status_code}", reason=Reason.ARTIFACT_UNAVAILABLE
                    )
                size = 0
                with into.open("wb") as out:
                    for chunk in answer.iter_bytes(1 << 20):
                        size += len(chunk)
                        if size > MAX_ARTIFACT_BYTES:
                            raise PermanentError(
                                f"GET {url}: over the {MAX_ARTIFACT_BYTES} byte cap",
                                reason=Reason.ARTIFACT_TOO_BIG,
                            )
                        out.write(chunk)
        except httpx.TransportError as exc:
            into.unlink(missing_ok=True)
            raise TransientError(f"GET {url}: {exc}", reason=Reason.ARTIFACT_UNAVAILABLE) from None
        except PermanentError:
            into.unlink(missing_ok=True)
            raise

    # -- bentos -----------------------------------------------------------------

    def service_files(self, model: Model, tree: Tree) -> dict[str, bytes]:
        return service_files(model, tree)

    def bento_tag(self, model: Model, model_tag: str, files: Mapping[str, bytes]) -> str:
        return bento_tag(model, model_tag, files)

    def build(self, model: Model, tree: Tree, source: Source | None = None) -> BuildResult:
        """The bento for ``model`` as ``tree`` describes it; built only when new."""
        source = source or Source()
        model_tag = self.import_artifact(model, tree)
        files = self.service_files(model, tree)
        tag = self.bento_tag(model, model_tag, files)
        if self.bento_exists(tag):
            return BuildResult(model.name, model_tag, tag, built=False)
        version = tag.split(":", 1)[1]
        context = Path(tempfile.mkdtemp(prefix=f"{version}-", dir=self._build_root()))
        for rel, data in files.items():
            out = context / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(data)
        stem = posixpath.basename(model.service_module)[: -len(".py")]
        bentofile = {
            "service": f"{stem}:{model.service_class}",
            "name": model.name,
            "include": ["**/*.py"],
            "python": {"lock_packages": False},
        }
        (context / "bentofile.yaml").write_text(yaml.safe_dump(bentofile, sort_keys=False))
        labels = {
            "mdc.dev/repo": source.repo,
            "mdc.dev/revision": source.revision,
            "mdc.dev/spec": model.source.file,
            "mdc.dev/model-version": model.version,
        }
        argv = [
            self.python,
            "-m",
            "bentoml",
            "build",
            str(context),
            "--version",
            version,
            "--name",
            model.name,
            "--arg",
            f"model_tag={model_tag}",
            "-o",
            "tag",
        ]
        for key, value in labels.items():
            if value:
                argv += ["--label", f"{key}={value}"]
        log = self.state / "logs" / f"build-{model.name}-{version}.log"
        try:
            self._run(
                argv,
                log=log,
                failure=f"{model.name}: bentoml build failed",
                reason=Reason.BUILD_FAILED,
                cwd=context,
            )
        except PermanentError:
            shutil.rmtree(self.home / "bentos" / model.name / version, ignore_errors=True)
            raise
        finally:
            shutil.rmtree(context, ignore_errors=True)
        if not self.bento_exists(tag):
            raise PermanentError(
                f"{model.name}: bentoml build did not produce {tag}", reason=Reason.BUILD_FAILED
            )
        return BuildResult(model.name, model_tag, tag, built=True, log=log)

    def _build_root(self) -> Path:
        """Where build contexts go: ``STATE/build``, unless a directory on its path is
        hidden (a state directory such as ``.mdc-state``) -- BentoML refuses a build
        context under any hidden directory -- then the system's temporary directory."""
        for root in (self.state / "build", Path(tempfile.gettempdir()) / "mdc-build"):
            if not any(part.startswith(".") for part in root.resolve().parts):
                root.mkdir(parents=True, exist_ok=True)
                return root
        raise PermanentError(
            f"no directory to build in: {self.state} and {tempfile.gettempdir()} are under "
            "a hidden directory, which BentoML refuses; set --state-dir or TMPDIR",
            reason=Reason.BUILD_FAILED,
        )

    def _run(
        self, argv: list[str], *, log: Path, failure: str, reason: str, cwd: Path | None = None
    ) -> None:
        with log.open("wb") as out:
            try:
                done = subprocess.run(
                    argv,
                    cwd=cwd,
                    env=bentoml_env(self.home),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    timeout=BUILD_TIMEOUT,
                    check=False,
                )
                code = done.returncode
            except subprocess.TimeoutExpired:
                code = -1
        if code != 0:
            why = "timed out" if code == -1 else f"exit {code}"
            cause = _cause(log.read_text(errors="replace"))
            raise PermanentError(
                f"{failure} ({why}): {cause}; log: {log}"
                if cause
                else f"{failure} ({why}); log: {log}",
                reason=reason,
            )


#: A line that names an error: ``ValueError: ...``, ``bentoml.exceptions.X: ...``, ``Error: ...``.
_ERROR_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt)|Error|error)\b.*")


def _cause(output: str, limit: int = 300) -> str:
    """One line saying why a build failed: the last line of its output that names
    an error (a traceback's last line), else its last line; at most ``limit`` chars."""
    lines = [line.strip() for line in output.strip().splitlines() if line.strip()]
    for line in reversed(lines):
        if _ERROR_LINE.match(line):
            return line[:limit]
    return lines[-1][:limit] if lines else ""


def _suffix(name: str) -> str:
    base = posixpath.basename(name.split("?", 1)[0])
    suffix = posixpath.splitext(base)[1]
    return suffix if suffix and len(suffix) <= 10 and suffix[1:].isalnum() else ""


def _file_sha256(path: Path) -> str:
    hasher = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            hasher.update(block)
    return hasher.hexdigest()
