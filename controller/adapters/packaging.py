"""BentoML packaging: a model's artifact into the model store, and its service
code plus that exact model into a bento -- content-addressed, offline, once.

Owns:

* **Artifacts.** A file or directory inside the spec repo (read through the
  :class:`~controller.spec.tree.Tree`, so a git snapshot works without a checkout),
  an http(s) URL (fetched on a leash, :class:`FetchPolicy`: only to public
  addresses unless ``artifactNetworks`` allows more, checked after DNS on every
  hop; redirects only within the URL's origin; connect, read and total
  deadlines; the size capped while streaming; sha256-checked before anything
  is imported; retried on transient errors while the deadline lasts), or an
  existing model tag. A Git LFS pointer (in the repo or served) and an HTML page
  served instead of the artifact are refused with a message saying so.
  The model tag's version is the artifact's content hash, so the same
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
mdc itself never imports it; they start with the minimal environment of
:func:`~controller.core.environment.bentoml_env` (the repository's code runs
there: never the controller's credentials). Called by ``mdc build`` and the reconciler.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import posixpath
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import httpcore
import httpx
import yaml

from controller.core.environment import PYTHON_ENV_LABEL, PYTHON_SITE_LABEL, bentoml_env
from controller.core.registry import FetchedVersion
from controller.errors import PermanentError, Reason, TransientError
from controller.spec.identity import (
    _digest_of_files,
    _files_under,
    _safe_version,
    _sha256,
    bento_tag,
    service_files,
)
from controller.spec.kinds import MlflowVersion, Model
from controller.spec.requirements import split_requirements_file
from controller.spec.tree import EntryKind, Tree, clean_reference, resolve

__all__ = [
    "LFS_POINTER",
    "ArtifactRegistry",
    "BuildResult",
    "Builder",
    "FetchPolicy",
    "Packager",
    "PythonEnvironment",
    "PythonEnvironments",
    "Source",
    "parse_networks",
]

MAX_ARTIFACT_BYTES = 4 << 30
BUILD_TIMEOUT = 600.0

_IMPORT_MODEL = """
import shutil, sys
import bentoml
tag, source, kind, name = sys.argv[1:5]
labels = dict(arg.split("=", 1) for arg in sys.argv[5:])
extra = {}
if kind == "mlflow":
    # the layout bentoml.mlflow.import_model writes, so bentoml.mlflow.load_model(tag)
    # serves it (with mlflow in the model's own environment, not the controller's)
    from bentoml._internal.models.model import ModelContext
    extra = dict(
        module="bentoml.mlflow",
        signatures={"predict": {"batchable": False}},
        context=ModelContext(framework_name="mlflow", framework_versions={"mlflow": name}),
    )
with bentoml.models.create(tag, labels=labels, **extra) as model:
    if kind == "file":
        shutil.copyfile(source, model.path_of(name))
    elif kind == "mlflow":
        shutil.copytree(source, model.path_of("mlflow_model"))
    else:
        shutil.copytree(source, model.path, dirs_exist_ok=True)
print(model.tag)
"""


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: The first bytes of a Git LFS pointer file: the artifact's placeholder, not the artifact.
LFS_POINTER = b"version https://git-lfs.github.com/spec/v1"
_HTML_START = (b"<!doctype html", b"<html", b"<head", b"<body")
_DEFAULT_PORTS = {"http": 80, "https": 443}

#: The variables an artifact credential comes from (nothing else is ever sent).
TOKEN_ENV = "MDC_ARTIFACT_TOKEN"
TOKEN_HOST_ENV = "MDC_ARTIFACT_TOKEN_HOST"


def parse_networks(values: Iterable[str]) -> tuple[IPNetwork, ...]:
    """``values`` (``10.0.0.0/8``, ``127.0.0.1``, ``fd00::/8``) as networks;
    :class:`ValueError` naming the first that is not one."""
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{value!r} is not an address or network (CIDR)") from None
    return tuple(networks)


def _origin(url: httpx.URL) -> tuple[str, str, int]:
    scheme = url.scheme.lower()
    return scheme, url.host.lower(), url.port or _DEFAULT_PORTS.get(scheme, 0)


def _shown(url: httpx.URL | str) -> str:
    """``url`` as messages show it: no user-info, no query (presigned URLs carry keys there)."""
    url = httpx.URL(url)
    return str(url.copy_with(query=None, fragment=None, username=None, password=None))


@dataclass(frozen=True)
class FetchPolicy:
    """How far an artifact fetch may reach, and how long it may take.

    ``networks``: addresses that are not public (loopback, link-local such as
    the cloud metadata service, private, multicast, reserved) that fetches may
    reach all the same (``artifactNetworks``); public addresses always may.
    ``token`` is sent (``Authorization: Bearer``) only to ``token_origin``
    (scheme, host, port), never to another host, and redirects never leave the
    origin they start at.
    """

    networks: tuple[IPNetwork, ...] = ()
    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    total_timeout: float = 600.0
    max_bytes: int = MAX_ARTIFACT_BYTES
    max_redirects: int = 5
    token: str | None = field(default=None, repr=False)
    token_origin: tuple[str, str, int] | None = None

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str] | None = None,
        *,
        networks: Iterable[str] = (),
        total_timeout: float = 600.0,
    ) -> FetchPolicy:
        """The policy with the credential of ``MDC_ARTIFACT_TOKEN`` (or
        ``MDC_ARTIFACT_TOKEN_FILE``) for the host ``MDC_ARTIFACT_TOKEN_HOST`` names
        (``host``, ``host:port``: https; or an origin, ``http://host:port``). A token
        without its host is refused (:class:`PermanentError`, BadConfig)."""
        env = os.environ if env is None else env
        try:
            nets = parse_networks(networks)
        except ValueError as exc:
            raise PermanentError(f"artifactNetworks: {exc}", reason=Reason.BAD_CONFIG) from None
        token = env.get(TOKEN_ENV) or None
        if token is None and env.get(f"{TOKEN_ENV}_FILE"):
            try:
                token = Path(env[f"{TOKEN_ENV}_FILE"]).read_text().strip() or None
            except OSError as exc:
                raise PermanentError(
                    f"{TOKEN_ENV}_FILE: cannot read ({exc.strerror})",
                    reason=Reason.CREDENTIALS_UNREADABLE,
                ) from None
        origin = None
        if token is not None:
            host = env.get(TOKEN_HOST_ENV, "").strip()
            if not host:
                raise PermanentError(
                    f"{TOKEN_ENV} is set but {TOKEN_HOST_ENV} is not: name the host the "
                    "artifact token belongs to (it is sent nowhere else)",
                    reason=Reason.BAD_CONFIG,
                )
            try:
                url = httpx.URL(host if "://" in host else f"https://{host}")
            except httpx.InvalidURL:
                url = httpx.URL("")
            if url.scheme not in _DEFAULT_PORTS or not url.host:
                raise PermanentError(
                    f"{TOKEN_HOST_ENV}: {host!r} is not a host or an http(s) origin",
                    reason=Reason.BAD_CONFIG,
                )
            origin = _origin(url)
        return cls(networks=nets, total_timeout=total_timeout, token=token, token_origin=origin)

    def allows(self, address: IPAddress) -> bool:
        """Whether a fetch may connect to ``address``."""
        address = _unmapped(address)
        if any(address in net for net in self.networks):
            return True
        return address.is_global and not address.is_multicast

    def headers_for(self, url: httpx.URL) -> dict[str, str]:
        """The credential for ``url``: only when it is the token's origin."""
        if self.token and self.token_origin is not None and _origin(url) == self.token_origin:
            return {"Authorization": f"Bearer {self.token}"}
        return {}


def _unmapped(address: IPAddress) -> IPAddress:
    """``::ffff:a.b.c.d`` as ``a.b.c.d`` (so it is judged, and named, as what it is)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _kind_of(address: IPAddress) -> str:
    for kind in ("loopback", "link_local", "unspecified", "multicast", "reserved", "private"):
        if getattr(address, f"is_{kind}"):
            return kind.replace("_", "-")
    return "non-public"


class _Deadline:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.at = time.monotonic() + seconds

    def left(self) -> float:
        return self.at - time.monotonic()

    def bound(self, timeout: float | None) -> float:
        """``timeout`` cut to what is left; :class:`httpcore.ReadTimeout` when nothing is."""
        left = self.left()
        if left <= 0:
            raise httpcore.ReadTimeout(f"the total deadline of {self.seconds:g} s passed")
        return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose every read and write ends by the fetch's total deadline
    (a server that drips a byte at a time never resets it)."""

    def __init__(self, inner: httpcore.NetworkStream, deadline: _Deadline) -> None:
        self.inner, self.deadline = inner, deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self.inner.read(max_bytes, self.deadline.bound(timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.inner.write(buffer, self.deadline.bound(timeout))

    def close(self) -> None:
        self.inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        tls = self.inner.start_tls(ssl_context, server_hostname, self.deadline.bound(timeout))
        return _DeadlineStream(tls, self.deadline)

    def get_extra_info(self, info: str) -> object:
        return self.inner.get_extra_info(info)


class _GuardedBackend(httpcore.NetworkBackend):
    """Connects only to addresses the policy allows: the host is resolved here,
    every address it resolves to is checked, and the connection goes to a checked
    address (so a second lookup cannot answer differently)."""

    def __init__(self, policy: FetchPolicy, deadline: _Deadline) -> None:
        self.policy, self.deadline = policy, deadline
        self.inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from None
        addresses = list(
            dict.fromkeys(_unmapped(ipaddress.ip_address(info[4][0])) for info in infos)
        )
        for address in addresses:
            if not self.policy.allows(address):
                raise PermanentError(
                    f"{host} resolves to {address} ({_kind_of(address)}): artifact fetches "
                    "go to public addresses only, unless artifactNetworks allows it",
                    reason=Reason.ARTIFACT_UNAVAILABLE,
                )
        error: Exception = httpcore.ConnectError(f"{host} has no address")
        for address in addresses:
            try:
                stream = self.inner.connect_tcp(
                    str(address), port, self.deadline.bound(timeout), local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
                continue
            return _DeadlineStream(stream, self.deadline)
        raise error

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("artifact fetches do not use unix sockets")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class _GuardedTransport(httpx.HTTPTransport):
    """httpx's transport on :class:`_GuardedBackend`: no proxy, no environment."""

    def __init__(self, backend: httpcore.NetworkBackend) -> None:
        super().__init__(trust_env=False)
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(), network_backend=backend
        )


def _refuse_placeholder(head: bytes, what: str, *, html: bool) -> None:
    """A Git LFS pointer, or (``html``) an HTML page, where an artifact should be."""
    if head.startswith(LFS_POINTER):
        raise PermanentError(
            f"{what} is a Git LFS pointer, not the artifact: fetch the LFS object "
            "(git lfs pull) into the repository, or point the artifact at its URL",
            reason=Reason.ARTIFACT_MISSING,
        )
    if html and head.lstrip()[:16].lower().startswith(_HTML_START):
        raise PermanentError(
            f"{what} is an HTML page, not the artifact (a login or error page?)",
            reason=Reason.ARTIFACT_UNAVAILABLE,
        )


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


class ArtifactRegistry(Protocol):
    """Where ``artifact.mlflow`` versions come from
    (:class:`controller.adapters.model_registry.MlflowRegistry`)."""

    display: str

    def fetch(self, model: str, version: str, root: Path) -> FetchedVersion:
        """The version's files under ``root``; transient when the registry is down,
        permanent (ModelVersionNotFound) when it has no such version."""
        ...


class PythonEnvironment(Protocol):
    """An installed set of a model's requirements: ``site`` goes first on PYTHONPATH."""

    @property
    def digest(self) -> str: ...

    @property
    def site(self) -> Path: ...


class PythonEnvironments(Protocol):
    """Where a model's own packages are installed
    (:class:`controller.adapters.environments.Environments`)."""

    def ensure(self, requirements: Iterable[str]) -> tuple[PythonEnvironment, bool]:
        """The environment of ``requirements``, installed when new (the bool)."""
        ...


class Packager:
    """Builds bentos into the BentoML store at ``home``; work files under ``state_dir``."""

    def __init__(
        self,
        home: Path,
        state_dir: Path,
        *,
        python: str = sys.executable,
        fetch: FetchPolicy | None = None,
        retries: int = 3,
        sleep: Callable[[float], None] = time.sleep,
        registry: ArtifactRegistry | None = None,
        environments: PythonEnvironments | None = None,
    ) -> None:
        self.home = Path(home).absolute()  # builds run elsewhere (cwd: their context)
        self.state = Path(state_dir)
        self.python = python
        self.fetch = fetch if fetch is not None else FetchPolicy.from_env()
        self.retries = retries
        self.sleep = sleep
        self.registry = registry
        self.environments = environments
        self._provenance: dict[str, dict[str, str]] = {}
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
        if art.mlflow is not None:
            return self._import_mlflow(model, art.mlflow)
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

    def _import_mlflow(self, model: Model, ref: MlflowVersion) -> str:
        """The model tag of an MLflow version's files, fetched once and imported in
        the layout of ``bentoml.mlflow`` (so ``bentoml.mlflow.load_model`` serves it)."""
        where = model.source.locate(("spec", "artifact", "mlflow", "version"))
        field = f"{model.source.file}:{where.line}: spec.artifact.mlflow"
        if self.registry is None:
            raise PermanentError(
                f"{field}: no MLflow tracking server is configured for the controller: set "
                "mlflowTrackingUri in mdc.yaml or MLFLOW_TRACKING_URI",
                reason=Reason.REGISTRY_NOT_CONFIGURED,
            )
        try:
            fetched = self.registry.fetch(
                ref.model, ref.version or "", self.state / "downloads" / "mlflow"
            )
        except PermanentError as exc:
            if exc.reason != Reason.MODEL_VERSION_NOT_FOUND:
                raise
            raise PermanentError(
                f"{field}.version: MLflow at {self.registry.display} has no version "
                f"{ref.version} of {ref.model!r} ({exc.message})",
                reason=exc.reason,
            ) from None
        tag = f"{model.name}:{_safe_version(fetched.digest)}"
        self._provenance[tag] = fetched.labels()
        if not self.model_exists(tag):
            labels = [f"{k}={v}" for k, v in fetched.labels().items()]
            labels.append(f"mdc.dev/model={model.name}")
            self._run(
                [
                    self.python,
                    "-c",
                    _IMPORT_MODEL,
                    tag,
                    str(fetched.path),
                    "mlflow",
                    fetched.mlflow_version or "unknown",
                    *labels,
                ],
                log=self.state
                / "logs"
                / f"import-{model.name}-{_safe_version(fetched.digest)}.log",
                failure=f"{model.name}: importing MLflow {ref} into the model store failed",
                reason=Reason.ARTIFACT_IMPORT_FAILED,
            )
        return tag

    def provenance(self, model_tag: str) -> dict[str, str]:
        """Where the model ``model_tag`` came from (its store labels ``mdc.dev/*``)."""
        if model_tag not in self._provenance:
            name, _, version = model_tag.partition(":")
            info = self.home / "models" / name / version / "model.yaml"
            try:
                labels = (yaml.safe_load(info.read_text()) or {}).get("labels") or {}
            except (OSError, yaml.YAMLError, AttributeError):
                labels = {}
            self._provenance[model_tag] = {
                str(k): str(v) for k, v in labels.items() if str(k).startswith("mdc.dev/mlflow")
            }
        return self._provenance[model_tag]

    def _stage_from_tree(self, model: Model, tree: Tree) -> tuple[Path, str, str, str]:
        path = clean_reference(model.artifact.path or "")
        target, kind = resolve(tree, path)
        if kind is EntryKind.FILE:
            data = tree.read(target)
            _refuse_placeholder(data[:512], f"{model.name}: artifact {path!r}", html=False)
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
        for rel, data in files.items():
            _refuse_placeholder(data[:512], f"{model.name}: artifact file {rel!r}", html=False)
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
        policy = self.fetch
        deadline = _Deadline(policy.total_timeout)  # for every attempt together
        timeout = httpx.Timeout(
            policy.read_timeout, connect=policy.connect_timeout, pool=policy.connect_timeout
        )
        with httpx.Client(
            transport=_GuardedTransport(_GuardedBackend(policy, deadline)),
            timeout=timeout,
            follow_redirects=False,
            trust_env=False,
        ) as client:
            for attempt in range(1, self.retries + 1):
                try:
                    self._fetch(client, url, partial, deadline)
                    break
                except TransientError:
                    pause = min(30.0, 2.0**attempt)
                    if attempt == self.retries or deadline.left() <= pause:
                        raise
                    self.sleep(pause)
        got = _file_sha256(partial)
        if got != expected:
            partial.unlink(missing_ok=True)
            raise PermanentError(
                f"{model.name}: artifact from {_shown(url)} has sha256 {got}, the spec says "
                f"{expected}; nothing was imported",
                reason=Reason.ARTIFACT_DIGEST_MISMATCH,
            )
        partial.replace(final)
        return final

    def _fetch(self, client: httpx.Client, url: str, into: Path, deadline: _Deadline) -> None:
        """GET ``url`` into ``into``, following redirects within its origin only."""
        shown = _shown(url)
        try:
            current = httpx.URL(url)
        except httpx.InvalidURL as exc:
            raise PermanentError(f"{shown}: {exc}", reason=Reason.ARTIFACT_UNAVAILABLE) from None
        if current.scheme not in _DEFAULT_PORTS or not current.host:
            raise PermanentError(
                f"{shown}: only http(s) URLs are fetched", reason=Reason.ARTIFACT_UNAVAILABLE
            )
        if current.userinfo:
            raise PermanentError(
                f"{shown}: credentials in an artifact URL are refused; use {TOKEN_ENV}",
                reason=Reason.ARTIFACT_UNAVAILABLE,
            )
        origin, hops = _origin(current), [current]
        try:
            while True:
                with client.stream("GET", current, headers=self.fetch.headers_for(current)) as got:
                    if got.has_redirect_location:
                        current = self._redirect(
                            shown, hops, current.join(got.headers["location"]), origin
                        )
                        continue
                    self._receive(got, shown, into, deadline)
                    return
        except httpx.TimeoutException as exc:
            into.unlink(missing_ok=True)
            why = (
                f"not done within the total deadline of {deadline.seconds:g} s"
                if deadline.left() <= 0
                else f"timed out ({type(exc).__name__})"
            )
            raise TransientError(
                f"GET {shown}: {why}", reason=Reason.ARTIFACT_UNAVAILABLE
            ) from None
        except (httpx.TransportError, httpx.DecodingError) as exc:
            into.unlink(missing_ok=True)
            raise TransientError(
                f"GET {shown}: {exc}", reason=Reason.ARTIFACT_UNAVAILABLE
            ) from None
        except PermanentError as exc:
            into.unlink(missing_ok=True)
            if exc.message.startswith(("GET ", shown)):
                raise
            raise PermanentError(f"GET {shown}: {exc.message}", reason=exc.reason) from None
        except TransientError:
            into.unlink(missing_ok=True)
            raise

    def _redirect(
        self, shown: str, hops: list[httpx.URL], target: httpx.URL, origin: tuple[str, str, int]
    ) -> httpx.URL:
        """The next hop of a redirect: within ``origin``, not seen before, not too many."""
        chain = " -> ".join(_shown(u) for u in [*hops, target])
        if _origin(target) != origin:
            raise PermanentError(
                f"GET {shown}: redirected to another origin ({_shown(target)}); artifact "
                "fetches follow redirects only within the URL's own scheme, host and port",
                reason=Reason.ARTIFACT_UNAVAILABLE,
            )
        if target in hops:
            raise PermanentError(
                f"GET {shown}: redirect loop ({chain})", reason=Reason.ARTIFACT_UNAVAILABLE
            )
        if len(hops) > self.fetch.max_redirects:
            raise PermanentError(
                f"GET {shown}: more than {self.fetch.max_redirects} redirects ({chain})",
                reason=Reason.ARTIFACT_UNAVAILABLE,
            )
        hops.append(target)
        return target

    def _receive(self, got: httpx.Response, shown: str, into: Path, deadline: _Deadline) -> None:
        """The body of a final answer into ``into``: refused when it is an error, an
        HTML page or an LFS pointer, or once it passes the size cap or the deadline."""
        status, cap = got.status_code, self.fetch.max_bytes
        if status >= 500 or status == 429:
            raise TransientError(f"GET {shown}: HTTP {status}", reason=Reason.ARTIFACT_UNAVAILABLE)
        if status != 200:
            raise PermanentError(f"GET {shown}: HTTP {status}", reason=Reason.ARTIFACT_UNAVAILABLE)
        if got.headers.get("content-type", "").split(";")[0].strip().lower() == "text/html":
            raise PermanentError(
                f"GET {shown}: the server sent an HTML page (Content-Type: text/html), not "
                "the artifact (a login or error page?)",
                reason=Reason.ARTIFACT_UNAVAILABLE,
            )
        length = got.headers.get("content-length", "")
        if length.isdigit() and int(length) > cap:
            raise PermanentError(
                f"GET {shown}: {length} bytes, over the {cap} byte cap",
                reason=Reason.ARTIFACT_TOO_BIG,
            )
        size, head, checked = 0, b"", False
        with into.open("wb") as out:
            for chunk in got.iter_bytes():
                size += len(chunk)
                if size > cap:
                    raise PermanentError(
                        f"GET {shown}: over the {cap} byte cap", reason=Reason.ARTIFACT_TOO_BIG
                    )
                if deadline.left() <= 0:
                    raise TransientError(
                        f"GET {shown}: not done within the total deadline of "
                        f"{deadline.seconds:g} s",
                        reason=Reason.ARTIFACT_UNAVAILABLE,
                    )
                if not checked:
                    head += chunk
                    if len(head) >= 512:
                        _refuse_placeholder(head, f"GET {shown}", html=True)
                        checked = True
                out.write(chunk)
        if not checked:
            _refuse_placeholder(head, f"GET {shown}", html=True)

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
        environment = self._environment(model, tree)  # present even when the bento is
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
            **self.provenance(model_tag),
        }
        extra: dict[str, str] = {}
        if environment is not None:  # the build imports the service: with its packages
            labels[PYTHON_ENV_LABEL] = environment.digest
            labels[PYTHON_SITE_LABEL] = str(environment.site)
            extra["PYTHONPATH"] = str(environment.site)
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
                extra=extra,
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

    def _environment(self, model: Model, tree: Tree) -> PythonEnvironment | None:
        """The environment of ``model``'s own packages (``spec.python``), installed
        when new; None when it declares none."""
        deps = model.python
        lines = list(deps.packages)
        if deps.requirements:
            target, kind = resolve(tree, clean_reference(deps.requirements))
            if kind is not EntryKind.FILE:
                raise PermanentError(
                    f"{model.name}: requirements file {deps.requirements!r} is not a file "
                    "in the repo",
                    reason=Reason.INVALID_SPEC,
                )
            text = tree.read(target).decode("utf-8", "replace")
            lines += [line for _, line in split_requirements_file(text)]
        if not lines:
            return None
        if self.environments is None:
            raise PermanentError(
                f"{model.name}: declares Python packages (spec.python) but this packager "
                "installs none",
                reason=Reason.DEPENDENCIES_FAILED,
            )
        environment, _ = self.environments.ensure(lines)
        return environment

    def _run(
        self,
        argv: list[str],
        *,
        log: Path,
        failure: str,
        reason: str,
        cwd: Path | None = None,
        extra: Mapping[str, str] | None = None,
    ) -> None:
        with log.open("wb") as out:
            try:
                done = subprocess.run(
                    argv,
                    cwd=cwd,
                    env=bentoml_env(self.home, extra),
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
