"""The MLflow model registry over its REST API: read versions, fetch their files,
write tags and aliases back.

Owns the one conversation mdc has with an MLflow tracking server (no MLflow
package in the controller: httpx against MLflow's documented REST API,
``/api/2.0/mlflow/...`` and the artifact proxy ``/api/2.0/mlflow-artifacts/...``).
:class:`MlflowRegistry` is built by the wiring from ``mlflowTrackingUri`` in
``mdc.yaml`` or ``MLFLOW_TRACKING_URI``, with credentials only from the
environment (``MLFLOW_TRACKING_TOKEN``, or ``MLFLOW_TRACKING_USERNAME`` and
``MLFLOW_TRACKING_PASSWORD``), never shown: messages name the server by
:attr:`MlflowRegistry.display` (no user-info, no query). Called by the packager
(``artifact.mlflow``), the registry bridge and the reporter.

Errors: a server that does not answer, answers 5xx or 429, or times out is a
:class:`TransientError` (``RegistryUnavailable``); a version that does not
exist is a :class:`PermanentError` (``ModelVersionNotFound``); files that are
not an MLflow model with a ``python_function`` flavor are refused
(``NotAnMLflowModel``). The server's answers are untrusted: paths are checked
before anything is written, sizes are capped while streaming, and every fetch
has a total deadline.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import yaml

from controller.core.registry import FetchedVersion, RegistryVersion, RunRecord, VersionStatus
from controller.errors import PermanentError, Reason, TransientError

__all__ = [
    "MAX_FILES",
    "MAX_MODEL_BYTES",
    "TRACKING_ENV",
    "MlflowRegistry",
    "registry_from_env",
]

TRACKING_ENV = "MLFLOW_TRACKING_URI"
_TOKEN_ENV = "MLFLOW_TRACKING_TOKEN"
_USER_ENV, _PASSWORD_ENV = "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"
#: A model version's files together may not pass this size.
MAX_MODEL_BYTES = 8 * 1024**3
#: ... nor this many files and directories.
MAX_FILES = 10_000
_MAX_DEPTH = 32
_MAX_JSON = 8 * 1024 * 1024
_MLMODEL_MAX = 1024 * 1024


def _shown(uri: str) -> str:
    parts = urlsplit(uri)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}{parts.path}".rstrip("/")


def _safe_rel(path: str) -> str | None:
    """``path`` when it is a clean relative path (no ``..``, no absolute, no
    control characters); None otherwise."""
    if not path or path.startswith("/") or "\\" in path or any(ord(c) < 32 for c in path):
        return None
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts) or len(parts) > _MAX_DEPTH:
        return None
    return path


class MlflowRegistry:
    """One MLflow tracking server (``uri``: ``http(s)://host:port[/prefix]``)."""

    def __init__(
        self,
        uri: str,
        *,
        token: str | None = None,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 10.0,
        fetch_timeout: float = 600.0,
        max_bytes: int = MAX_MODEL_BYTES,
        transport: httpx.BaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        parts = urlsplit(uri)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise PermanentError(
                f"the MLflow tracking URI must be http(s)://host[:port] (got {_shown(uri)!r}); "
                "a local mlruns directory or a database URI cannot be read by the controller",
                reason=Reason.BAD_CONFIG,
            )
        self.display = _shown(uri)
        user = username if username is not None else parts.username
        secret = password if password is not None else parts.password
        base = f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        self.base = base + parts.path.rstrip("/")
        headers = {"User-Agent": "mdc"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        auth = httpx.BasicAuth(user, secret or "") if user and not token else None
        self.client = httpx.Client(
            headers=headers,
            auth=auth,
            timeout=httpx.Timeout(timeout),
            follow_redirects=False,
            transport=transport,
        )
        self.fetch_timeout = fetch_timeout
        self.max_bytes = max_bytes
        self.clock = clock

    def close(self) -> None:
        self.client.close()

    # -- the registry ---------------------------------------------------------

    def version(self, model: str, version: str) -> RegistryVersion:
        """The registered version, or :class:`PermanentError` (ModelVersionNotFound)."""
        got = self._get("mlflow/model-versions/get", {"name": model, "version": version})
        return _version_of(got.get("model_version"), self.display)

    def versions(self, model: str) -> list[RegistryVersion]:
        """Every version of ``model`` (newest first), through the search's pages."""
        found: list[RegistryVersion] = []
        token = ""
        escaped = model.replace("'", "\\'")
        for _ in range(100):
            params = {"filter": f"name='{escaped}'", "max_results": "200"}
            if token:
                params["page_token"] = token
            got = self._get("mlflow/model-versions/search", params)
            found += [_version_of(v, self.display) for v in got.get("model_versions") or ()]
            token = str(got.get("next_page_token") or "")
            if not token:
                break
        return sorted(found, key=lambda v: int(v.version) if v.version.isdigit() else 0)[::-1]

    def by_alias(self, model: str, alias: str) -> RegistryVersion | None:
        try:
            got = self._get("mlflow/registered-models/alias", {"name": model, "alias": alias})
        except PermanentError as exc:
            # MLflow answers an unknown alias 400 INVALID_PARAMETER_VALUE "... not found."
            if exc.reason == Reason.MODEL_VERSION_NOT_FOUND or "not found" in str(exc):
                return None
            raise
        return _version_of(got.get("model_version"), self.display)

    def run(self, run_id: str) -> RunRecord:
        got = self._get("mlflow/runs/get", {"run_id": run_id}).get("run") or {}
        data = got.get("data") or {}
        info = got.get("info") or {}
        return RunRecord(
            run_id=run_id,
            name=str(info.get("run_name", ""))[:200],
            metrics={
                str(m.get("key", ""))[:100]: float(m["value"])
                for m in (data.get("metrics") or ())[:200]
                if isinstance(m, dict) and isinstance(m.get("value"), int | float)
            },
            params={
                str(p.get("key", ""))[:100]: str(p.get("value", ""))[:200]
                for p in (data.get("params") or ())[:200]
                if isinstance(p, dict)
            },
        )

    def set_tags(self, model: str, version: str, tags: Mapping[str, str]) -> None:
        for key, value in tags.items():
            self._post(
                "mlflow/model-versions/set-tag",
                {"name": model, "version": version, "key": key, "value": value},
            )

    def set_alias(self, model: str, alias: str, version: str) -> None:
        self._post(
            "mlflow/registered-models/alias", {"name": model, "alias": alias, "version": version}
        )

    # -- the files --------------------------------------------------------------

    def fetch(self, model: str, version: str, root: Path) -> FetchedVersion:
        """The version's files under ``root`` (fetched once: a version never
        changes, so a complete earlier fetch is used without asking the server)."""
        key = hashlib.sha256(f"{self.display}\0{model}\0{version}".encode()).hexdigest()[:24]
        final = Path(root) / key
        done = Path(root) / f"{key}.json"  # written last: the files beside it are whole
        if done.is_file() and final.is_dir():
            try:
                return _fetched_from(json.loads(done.read_text()), final)
            except (ValueError, KeyError, TypeError):
                done.unlink(missing_ok=True)
        found = self.version(model, version)
        if found.status is VersionStatus.PENDING:
            raise TransientError(
                f"MLflow at {self.display}: {model} version {version} is still being "
                "registered (PENDING_REGISTRATION)",
                reason=Reason.REGISTRY_UNAVAILABLE,
                retry_after=10.0,
            )
        if found.status is VersionStatus.FAILED:
            raise PermanentError(
                f"MLflow at {self.display}: {model} version {version} failed to register "
                "(FAILED_REGISTRATION)",
                reason=Reason.MODEL_VERSION_NOT_FOUND,
            )
        uri = self._get(
            "mlflow/model-versions/get-download-uri", {"name": model, "version": version}
        ).get("artifact_uri")
        prefix = self._artifact_path(str(uri or ""), model, version)
        partial = Path(root) / f"{key}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        deadline = self.clock() + self.fetch_timeout
        try:
            hashes, size = self._download_tree(prefix, partial, deadline)
            mlflow_version = _check_mlmodel(partial, f"{model} version {version}")
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        digest = hashlib.sha256(
            "".join(f"{rel}\0{h}\n" for rel, h in sorted(hashes.items())).encode()
        ).hexdigest()
        record = {
            "model": found.model,
            "version": found.version,
            "run_id": found.run_id,
            "source": found.source,
            "digest": digest,
            "size": size,
            "mlflow_version": mlflow_version,
        }
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)
        written = Path(root) / f"{key}.json.partial"
        written.write_text(json.dumps(record))
        written.replace(done)
        return _fetched_from(record, final)

    def _artifact_path(self, uri: str, model: str, version: str) -> str:
        """The path under the server's artifact proxy of a version's files."""
        parts = urlsplit(uri)
        if parts.scheme != "mlflow-artifacts":
            shown = parts.scheme or "a local path"
            raise PermanentError(
                f"MLflow at {self.display}: {model} version {version} is stored at a "
                f"{shown!s} location the controller cannot read; run the tracking server "
                "with its artifact proxy (mlflow server --serve-artifacts, the default) so "
                "the files are served over its API",
                reason=Reason.ARTIFACT_UNAVAILABLE,
            )
        # an authority (mlflow-artifacts://host/...) is ignored: the files are read
        # through this tracking server only, never from a host an answer names
        path = parts.path.strip("/")
        if _safe_rel(path) is None:
            raise PermanentError(
                f"MLflow at {self.display}: unsafe artifact location {path[:100]!r}",
                reason=Reason.ARTIFACT_UNAVAILABLE,
            )
        return path

    def _listing(self, path: str) -> list[dict[str, Any]]:
        got = self._get("mlflow-artifacts/artifacts", {"path": path})
        files = got.get("files") or []
        return [f for f in files if isinstance(f, dict)] if isinstance(files, list) else []

    def _walk(self, prefix: str) -> Iterator[tuple[str, str, int]]:
        """``(relative path, full path, size)`` of every file under ``prefix``."""
        pending, seen = [""], 0
        while pending:
            rel_dir = pending.pop()
            for entry in self._listing(posixpath.join(prefix, rel_dir) if rel_dir else prefix):
                seen += 1
                if seen > MAX_FILES:
                    raise PermanentError(
                        f"MLflow at {self.display}: more than {MAX_FILES} files under {prefix}",
                        reason=Reason.ARTIFACT_TOO_BIG,
                    )
                name = str(entry.get("path", ""))
                # the proxy answers paths relative to the listed directory
                rel = _safe_rel(posixpath.join(rel_dir, posixpath.basename(name)))
                if rel is None or posixpath.basename(name) != name.rsplit("/", 1)[-1]:
                    raise PermanentError(
                        f"MLflow at {self.display}: unsafe file name {name[:100]!r} under {prefix}",
                        reason=Reason.ARTIFACT_UNAVAILABLE,
                    )
                if entry.get("is_dir"):
                    pending.append(rel)
                else:
                    size = entry.get("file_size")
                    yield rel, posixpath.join(prefix, rel), size if isinstance(size, int) else 0

    def _download_tree(
        self, prefix: str, into: Path, deadline: float
    ) -> tuple[dict[str, str], int]:
        hashes: dict[str, str] = {}
        total = 0
        for rel, full, _ in self._walk(prefix):
            out = into / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            hasher = hashlib.sha256()
            url = f"{self.base}/api/2.0/mlflow-artifacts/artifacts/{quote(full)}"
            try:
                with self.client.stream("GET", url) as got, out.open("wb") as sink:
                    self._check(got, f"GET {full}")
                    for chunk in got.iter_bytes():
                        total += len(chunk)
                        if total > self.max_bytes:
                            raise PermanentError(
                                f"MLflow at {self.display}: the model's files pass the "
                                f"{self.max_bytes} byte cap",
                                reason=Reason.ARTIFACT_TOO_BIG,
                            )
                        if self.clock() > deadline:
                            raise TransientError(
                                f"MLflow at {self.display}: fetching {prefix} took longer "
                                f"than {self.fetch_timeout:g} s",
                                reason=Reason.REGISTRY_UNAVAILABLE,
                            )
                        hasher.update(chunk)
                        sink.write(chunk)
            except httpx.HTTPError as exc:
                raise self._unavailable(exc) from None
            hashes[rel] = hasher.hexdigest()
        return hashes, total

    # -- HTTP -------------------------------------------------------------------

    def _unavailable(self, exc: httpx.HTTPError) -> TransientError:
        kind = type(exc).__name__
        return TransientError(
            f"MLflow at {self.display} cannot be reached ({kind})",
            reason=Reason.REGISTRY_UNAVAILABLE,
            retry_after=10.0,
        )

    def _get(self, path: str, params: Mapping[str, str]) -> dict[str, Any]:
        try:
            got = self.client.get(f"{self.base}/api/2.0/{path}", params=dict(params))
        except httpx.HTTPError as exc:
            raise self._unavailable(exc) from None
        return self._json(got, f"GET {path}")

    def _post(self, path: str, body: Mapping[str, str]) -> dict[str, Any]:
        try:
            got = self.client.post(f"{self.base}/api/2.0/{path}", json=dict(body))
        except httpx.HTTPError as exc:
            raise self._unavailable(exc) from None
        return self._json(got, f"POST {path}")

    def _check(self, got: httpx.Response, what: str) -> None:
        status = got.status_code
        if status < 300:
            return
        if status >= 500 or status == 429:
            raise TransientError(
                f"MLflow at {self.display}: {what}: HTTP {status}",
                reason=Reason.REGISTRY_UNAVAILABLE,
                retry_after=10.0,
            )
        if status in (401, 403):
            raise TransientError(
                f"MLflow at {self.display}: {what}: HTTP {status} (set MLFLOW_TRACKING_TOKEN, "
                "or MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, for the controller)",
                reason=Reason.REGISTRY_UNAVAILABLE,
                retry_after=60.0,
            )
        got.read()
        message, code = _error_of(got)
        if status == 404 or code == "RESOURCE_DOES_NOT_EXIST":
            raise PermanentError(
                f"MLflow at {self.display}: {message or 'not found'}",
                reason=Reason.MODEL_VERSION_NOT_FOUND,
            )
        raise PermanentError(
            f"MLflow at {self.display}: {what}: HTTP {status}: {message}"[:400],
            reason=Reason.REGISTRY_UNAVAILABLE,
        )

    def _json(self, got: httpx.Response, what: str) -> dict[str, Any]:
        self._check(got, what)
        if len(got.content) > _MAX_JSON:
            raise PermanentError(
                f"MLflow at {self.display}: {what}: answer over {_MAX_JSON} bytes",
                reason=Reason.REGISTRY_UNAVAILABLE,
            )
        try:
            body = got.json()
        except (ValueError, RecursionError):
            raise TransientError(
                f"MLflow at {self.display}: {what}: the answer is not JSON",
                reason=Reason.REGISTRY_UNAVAILABLE,
            ) from None
        return body if isinstance(body, dict) else {}


def _error_of(got: httpx.Response) -> tuple[str, str]:
    try:
        body = got.json()
    except (ValueError, RecursionError):
        return "", ""
    if not isinstance(body, dict):
        return "", ""
    return " ".join(str(body.get("message", "")).split())[:300], str(body.get("error_code", ""))


def _version_of(raw: object, shown: str) -> RegistryVersion:
    if not isinstance(raw, dict) or not raw.get("name") or not raw.get("version"):
        raise TransientError(
            f"MLflow at {shown}: the answer has no model version",
            reason=Reason.REGISTRY_UNAVAILABLE,
        )
    try:
        status = VersionStatus(str(raw.get("status", "READY")))
    except ValueError:
        status = VersionStatus.PENDING
    tags = raw.get("tags") or []
    return RegistryVersion(
        model=str(raw["name"])[:256],
        version=str(raw["version"])[:20],
        status=status,
        run_id=str(raw.get("run_id") or "")[:64],
        source=str(raw.get("source") or "")[:1024],
        aliases=tuple(str(a)[:256] for a in (raw.get("aliases") or ())[:100]),
        tags={
            str(t.get("key", ""))[:250]: str(t.get("value", ""))[:5000]
            for t in tags[:200]
            if isinstance(t, dict)
        }
        if isinstance(tags, list)
        else {},
        created_ms=int(raw.get("creation_timestamp") or 0),
    )


def _check_mlmodel(path: Path, what: str) -> str:
    """The MLflow that saved the model at ``path``; refused when it is not an
    MLflow model the ``python_function`` flavor can load."""
    mlmodel = path / "MLmodel"
    if not mlmodel.is_file() or mlmodel.stat().st_size > _MLMODEL_MAX:
        raise PermanentError(
            f"{what} is not an MLflow model: no MLmodel file at the top of its files",
            reason=Reason.NOT_AN_MLFLOW_MODEL,
        )
    try:
        meta = yaml.safe_load(mlmodel.read_bytes())
    except yaml.YAMLError:
        meta = None
    if not isinstance(meta, dict) or not isinstance(meta.get("flavors"), dict):
        raise PermanentError(
            f"{what}: its MLmodel file is not readable YAML with flavors",
            reason=Reason.NOT_AN_MLFLOW_MODEL,
        )
    if "python_function" not in meta["flavors"]:
        flavors = ", ".join(sorted(str(k) for k in meta["flavors"]))
        raise PermanentError(
            f"{what} has no python_function flavor (it has: {flavors}); BentoML serves "
            "MLflow models through pyfunc",
            reason=Reason.NOT_AN_MLFLOW_MODEL,
        )
    return str(meta.get("mlflow_version", ""))[:40]


def _fetched_from(record: Mapping[str, Any], path: Path) -> FetchedVersion:
    return FetchedVersion(
        version=RegistryVersion(
            model=str(record["model"]),
            version=str(record["version"]),
            status=VersionStatus.READY,
            run_id=str(record["run_id"]),
            source=str(record["source"]),
        ),
        path=path,
        digest=str(record["digest"]),
        size=int(record["size"]),
        mlflow_version=str(record.get("mlflow_version", "")),
    )


def registry_from_env(
    uri: str | None, environ: Mapping[str, str] | None = None
) -> MlflowRegistry | None:
    """The registry of ``uri`` (the configuration's), else of ``MLFLOW_TRACKING_URI``;
    None when neither is set. Credentials come from the environment only."""
    env = os.environ if environ is None else environ
    chosen = uri or env.get(TRACKING_ENV, "")
    if not chosen:
        return None
    return MlflowRegistry(
        chosen,
        token=env.get(_TOKEN_ENV) or None,
        username=env.get(_USER_ENV) or None,
        password=env.get(_PASSWORD_ENV) or None,
    )
