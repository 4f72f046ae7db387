"""Per-model Python dependencies, each set installed once into its own directory.

A Model declares the packages its service needs (``scikit-learn==1.5.2``...). Each
distinct set -- normalized by :func:`normalize`, keyed by :func:`environment_digest`
together with the interpreter's version and platform -- gets one environment,
``ROOT/<digest>/site``, built once with ``uv pip install --target`` and never
rebuilt while it is complete. It is a layer, not a virtualenv: the release's
``bentoml serve`` still runs on the controller's interpreter (so BentoML comes from
the controller's environment) and :meth:`Environment.env` puts ``site`` first on
``PYTHONPATH``, so the model's packages shadow the controller's. Two models can pin
different versions of one library; each sees its own.

Layout under ``ROOT`` (owned by this module alone)::

    <digest>/site/              the installed packages
    <digest>/environment.json   the marker: requirements, python, installed name==version
    logs/<digest>.log           uv's output of the last install (credentials removed)
    locks/<digest>.lock         flock'd while one process installs that digest
    .<digest>.*/                an install under way (renamed into place when complete)

A build goes to a temporary sibling and is renamed into place whole, marker
included, under an exclusive lock, so a killed install leaves no half environment
and two controllers (or threads) ensuring one digest install it once.

Packages come from the package index, or -- when the index cannot be reached, or
the controller runs offline -- from the wheel directories given as ``find_links``
and uv's cache. A wheel that is missing then is a :class:`PermanentError` whose
message names the requirement and where to put its wheels. The index URL may hold
credentials: it reaches uv through its environment (not its argv) and is shown
without them everywhere else.

Called by the packager (to build) and the runtimes (to serve) through
:meth:`Environments.ensure` and :meth:`Environment.env`; what a requirement line
may be is :mod:`controller.spec.requirements`' (the spec validator reports bad
lines with file:line before anything reaches here).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import distributions
from pathlib import Path
from typing import TextIO
from urllib.parse import unquote, urlsplit, urlunsplit

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from controller.core.environment import without_secrets
from controller.errors import PermanentError, Reason, TransientError
from controller.spec.requirements import requirement_lines, split_requirements_file

__all__ = [
    "Environment",
    "Environments",
    "RequirementError",
    "environment_digest",
    "normalize",
    "public_url",
]


#: Bumped when the layout of an environment changes, so old ones are not reused.
_LAYOUT = "mdc-env-1"
_MARKER = "environment.json"
_SITE = "site"

#: Parent variables that choose where packages come from: the controller decides.
_SOURCE_VARIABLES = re.compile(
    r"UV_(DEFAULT_INDEX|INDEX\w*|EXTRA_INDEX_URL|FIND_LINKS|NO_INDEX|OFFLINE|NO_CACHE"
    r"|PYTHON|SYSTEM_PYTHON|TARGET)$|PIP_\w+"
)

#: uv's words for "the network failed" (connection refused, DNS, TLS handshake cut...).
_NETWORK = re.compile(
    r"Failed to fetch|error sending request|tcp connect error|Connection refused"
    r"|dns error|failed to lookup address|Network is unreachable|No route to host"
    r"|Connection reset|operation timed out|Could not connect",
    re.IGNORECASE,
)

#: uv's words for "this package is not where I may look" (offline, no index, cache).
_MISSING = (
    re.compile(r"([A-Za-z0-9][\w.\-]*)\S* was not found in"),
    re.compile(r"([A-Za-z0-9][\w.\-]*)\S* needs to be downloaded from a registry"),
    re.compile(r"there is no version of ([A-Za-z0-9][\w.\-]*?)(?:[\[=<>!~ ,]|$)"),
    re.compile(r"only the following versions of ([A-Za-z0-9][\w.\-]*) are available"),
    re.compile(r"only ([A-Za-z0-9][\w.\-]*?)[=<>!~]\S* is available"),
)

#: Interpreter probe: major.minor and the platform string, one per line.
_PROBE = (
    "import sys, sysconfig; "
    "print(f'{sys.version_info[0]}.{sys.version_info[1]}'); "
    "print(f\"{sys.implementation.name}{getattr(sys, 'abiflags', '')}-{sysconfig.get_platform()}\")"
)

Runner = Callable[..., "subprocess.CompletedProcess[str]"]


class RequirementError(ValueError):
    """A requirement line the controller refuses; ``index`` is its position in the
    list given to :func:`normalize`, ``line`` its text."""

    def __init__(self, index: int, line: str, why: str) -> None:
        super().__init__(f"requirement {index + 1} {line!r}: {why}")
        self.index = index
        self.line = line
        self.why = why


def normalize(requirements: Iterable[str]) -> tuple[str, ...]:
    """The canonical form of ``requirements`` (:func:`controller.spec.requirements.
    requirement_lines`: names and extras canonicalized, sorted, deduplicated); an
    item may hold several lines, with ``#`` comments and blank lines.

    Raises :class:`RequirementError` on the first refused line: an option (``-e .``,
    ``--index-url``, ``-r file``), anything that is not a PEP 508 requirement (file
    paths included) or a direct reference (``name @ https://...``).
    """
    lines: list[str] = []
    items: list[int] = []
    for index, item in enumerate(requirements):
        for _, line in split_requirements_file(item):
            lines.append(line)
            items.append(index)
    kept, refused = requirement_lines(lines)
    if refused:
        first = refused[0]
        raise RequirementError(items[first.index], lines[first.index], first.why)
    return kept


def environment_digest(requirements: Iterable[str], python_version: str, platform: str) -> str:
    """The key of the environment for ``requirements`` on a Python ``major.minor``
    and platform: 20 hex digits of a sha256. Order, duplicates, spacing and the
    spelling of names do not change it; the Python version and platform do.

    Raises :class:`ValueError` for an empty set: it has no environment (callers skip).
    """
    normalized = normalize(requirements)
    if not normalized:
        raise ValueError("an empty requirement set has no environment")
    parts = python_version.split(".")
    if len(parts) < 2 or not all(p.isdigit() for p in parts[:2]):
        raise ValueError(f"python_version must be major.minor, got {python_version!r}")
    blob = json.dumps(
        {
            "layout": _LAYOUT,
            "requirements": list(normalized),
            "python": f"{parts[0]}.{parts[1]}",
            "platform": platform,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def public_url(url: str) -> str:
    """``url`` without its ``user:password@`` part, for messages and logs."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


@dataclass(frozen=True)
class Environment:
    """One installed environment: ``site`` holds the packages of ``requirements``;
    ``installed`` is every distribution there as ``name==version``."""

    digest: str
    path: Path
    site: Path
    requirements: tuple[str, ...]
    installed: tuple[str, ...]

    def env(self, base: Mapping[str, str]) -> dict[str, str]:
        """``base`` with :attr:`site` first on ``PYTHONPATH``."""
        env = dict(base)
        rest = env.get("PYTHONPATH", "")
        env["PYTHONPATH"] = str(self.site) + (os.pathsep + rest if rest else "")
        return env


def _installed(site: Path) -> tuple[str, ...]:
    found = set()
    for dist in distributions(path=[str(site)]):
        name = dist.metadata["Name"]
        if name:
            found.add(f"{canonicalize_name(name)}=={dist.version}")
    return tuple(sorted(found))


def _cause(output: str) -> str:
    """uv's reason in one line: the ``cause:`` block (or the ``error:`` line)."""
    lines = output.splitlines()
    error = next((i for i, line in enumerate(lines) if line.startswith("error:")), None)
    if error is None:
        tail = [line.strip() for line in lines if line.strip()]
        return tail[-1] if tail else "uv failed without a message"
    block: list[str] = []
    for line in lines[error + 1 :]:
        if not line.strip() or line.startswith("hint:"):
            break
        block.append(line.strip().removeprefix("cause:").strip())
    first = lines[error].removeprefix("error:").strip()
    if not block:
        return first
    if first.startswith("No solution found"):
        return " ".join(block)
    return f"{first}: {block[-1]}"


def _missing(output: str) -> set[str]:
    names: set[str] = set()
    flat = " ".join(output.split())
    for pattern in _MISSING:
        names.update(canonicalize_name(m.group(1)) for m in pattern.finditer(flat))
    return names


class Environments:
    """The environments under ``root``: :meth:`get` one, :meth:`ensure` one exists.

    ``python`` is the interpreter releases run on (its version and platform are
    part of the key; uv resolves markers for it). ``uv`` defaults to the one next
    to this interpreter, else the first on ``PATH``. ``index_url`` is the package
    index (default: uv's, PyPI); ``find_links`` are local wheel directories, used
    beside the index and alone when the index cannot be reached; ``offline`` never
    touches the network (wheel directories and uv's cache only); ``no_index`` uses
    the wheel directories alone. ``cache_dir`` overrides uv's cache, ``http_retries``
    uv's retries (default 3). ``timeout`` bounds one install (and the wait for
    another process's install of the same digest). ``run`` is
    :func:`subprocess.run`, a parameter so tests can count or fail it; ``env`` is
    the environment uv starts from (default: this process's, less secrets).
    """

    def __init__(
        self,
        root: Path,
        *,
        python: str = sys.executable,
        uv: str | None = None,
        index_url: str | None = None,
        find_links: Sequence[Path] = (),
        offline: bool = False,
        no_index: bool = False,
        cache_dir: Path | None = None,
        http_retries: int | None = None,
        timeout: float = 900.0,
        run: Runner = subprocess.run,
        env: Mapping[str, str] | None = None,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {timeout}")
        if http_retries is not None and http_retries < 0:
            raise ValueError(f"http_retries must be >= 0, got {http_retries}")
        self.root = Path(root)
        self.python = python
        self._uv = uv
        self._index_url = index_url
        self.find_links = tuple(Path(p).absolute() for p in find_links)
        self.offline = offline
        self.no_index = no_index
        self._cache_dir = cache_dir
        self._http_retries = http_retries
        self._timeout = timeout
        self._run = run
        self._parent = dict(os.environ if env is None else env)
        self._target: tuple[str, str] | None = None

    # -- what is there ------------------------------------------------------

    @property
    def index(self) -> str:
        """The package index as messages show it: without credentials."""
        if self._index_url is None:
            return "https://pypi.org/simple (uv's default)"
        return public_url(self._index_url)

    def target(self) -> tuple[str, str]:
        """``(major.minor, platform)`` of :attr:`python`, probed once."""
        if self._target is None:
            if os.path.realpath(self.python) == os.path.realpath(sys.executable):
                version = f"{sys.version_info[0]}.{sys.version_info[1]}"
                abi = getattr(sys, "abiflags", "")
                platform = f"{sys.implementation.name}{abi}-{sysconfig.get_platform()}"
                self._target = (version, platform)
            else:
                self._target = self._probe()
        return self._target

    def digest(self, requirements: Iterable[str]) -> str:
        """The key of ``requirements`` on :attr:`python` (see :func:`environment_digest`)."""
        version, platform = self.target()
        return environment_digest(requirements, version, platform)

    def get(self, requirements: Iterable[str]) -> Environment | None:
        """The environment of ``requirements`` if it is present and complete; None
        for an empty set or one not installed (yet)."""
        normalized = self._normalized(requirements)
        if not normalized:
            return None
        return self._load(self.digest(normalized), normalized)

    def ensure(self, requirements: Iterable[str]) -> tuple[Environment, bool]:
        """The environment of ``requirements``, installed now if it is not there;
        the flag says whether it was. Raises :class:`ValueError` for an empty set,
        :class:`PermanentError` when it cannot be installed (reasons
        ``DependenciesUnavailable``, ``DependenciesFailed``), :class:`TransientError`
        when the install or the wait for another one times out."""
        normalized = self._normalized(requirements)
        if not normalized:
            raise ValueError("an empty requirement set has no environment")
        digest = self.digest(normalized)
        found = self._load(digest, normalized)
        if found is not None:
            return found, False
        with self._lock(digest):
            found = self._load(digest, normalized)
            if found is not None:
                return found, False
            return self._install(digest, normalized), True

    def log_path(self, digest: str) -> Path:
        """Where uv's output of ``digest``'s last install is."""
        return self.root / "logs" / f"{digest}.log"

    # -- reading --------------------------------------------------------------

    def _normalized(self, requirements: Iterable[str]) -> tuple[str, ...]:
        try:
            return normalize(requirements)
        except RequirementError as exc:
            raise PermanentError(str(exc), reason=Reason.INVALID_SPEC) from None

    def _load(self, digest: str, requirements: tuple[str, ...]) -> Environment | None:
        path = self.root / digest
        try:
            marker = json.loads((path / _MARKER).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(marker, dict) or marker.get("requirements") != list(requirements):
            return None
        site = path / _SITE
        if not site.is_dir():
            return None
        installed = marker.get("installed")
        return Environment(
            digest=digest,
            path=path,
            site=site,
            requirements=requirements,
            installed=tuple(str(x) for x in installed) if isinstance(installed, list) else (),
        )

    # -- installing -----------------------------------------------------------

    @contextlib.contextmanager
    def _lock(self, digest: str) -> Iterator[None]:
        locks = self.root / "locks"
        locks.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self._timeout
        with open(locks / f"{digest}.lock", "a+b") as handle:
            while True:
                try:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise TransientError(
                            f"environment {digest}: another install of it is still "
                            f"running after {self._timeout:.0f}s",
                            reason=Reason.LOCKED,
                            retry_after=30.0,
                        ) from None
                    time.sleep(0.1)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def _uv_path(self) -> str:
        beside = Path(sys.executable).parent / "uv"
        wanted = self._uv or (str(beside) if os.access(beside, os.X_OK) else "uv")
        found = shutil.which(wanted)
        if found is None:
            where = self._uv or f"neither next to {sys.executable} nor on PATH"
            raise PermanentError(
                f"uv ({where}) cannot be run: it installs the models' dependencies; "
                "install it (pip install uv) or configure its path",
                reason=Reason.DEPENDENCIES_FAILED,
            )
        return found

    def _probe(self) -> tuple[str, str]:
        try:
            done = self._run(
                [self.python, "-c", _PROBE],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
                env=without_secrets(self._parent),
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise PermanentError(
                f"python {self.python!r} cannot be run: {exc}", reason=Reason.DEPENDENCIES_FAILED
            ) from None
        lines = done.stdout.split()
        if done.returncode != 0 or len(lines) != 2:
            raise PermanentError(
                f"python {self.python!r} cannot be run: {_cause(done.stderr or done.stdout)}",
                reason=Reason.DEPENDENCIES_FAILED,
            )
        return lines[0], lines[1]

    def _uv_env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in without_secrets(self._parent).items()
            if not k.startswith("MDC_") and not _SOURCE_VARIABLES.fullmatch(k)
        }
        env["UV_NO_PROGRESS"] = "1"
        env["NO_COLOR"] = "1"
        if self._index_url is not None:
            env["UV_DEFAULT_INDEX"] = self._index_url  # not on argv: /proc/*/cmdline is public
        if self._cache_dir is not None:
            env["UV_CACHE_DIR"] = str(self._cache_dir)
        if self._http_retries is not None:
            env["UV_HTTP_RETRIES"] = str(self._http_retries)
        return env

    def _redact(self, text: str) -> str:
        text = re.sub(r"://[^/\s@]+@", "://", text)
        if self._index_url:
            secret = urlsplit(self._index_url).password
            for value in {secret, unquote(secret or "")} - {None, ""}:
                text = text.replace(str(value), "***")
        return text

    def _command(self, uv: str, site: Path, requirements_file: Path, local: bool) -> list[str]:
        command = [uv, "pip", "install", "--target", str(site), "--python", self.python]
        command += ["--no-config", "-r", str(requirements_file)]
        for directory in self.find_links:
            if directory.is_dir():
                command += ["--find-links", str(directory)]
        if local:
            command.append("--offline")
        if self.no_index:
            command.append("--no-index")
        return command

    def _attempt(
        self, command: list[str], log: TextIO, *, timeout: float
    ) -> subprocess.CompletedProcess[str]:
        log.write(f"$ {self._redact(' '.join(command))}\n")
        log.flush()
        done = self._run(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            check=False,
            env=self._uv_env(),
        )
        log.write(self._redact(done.stdout or ""))
        log.write(f"[exit {done.returncode}]\n")
        log.flush()
        return done

    def _install(self, digest: str, requirements: tuple[str, ...]) -> Environment:
        uv = self._uv_path()
        self.log_path(digest).parent.mkdir(parents=True, exist_ok=True)
        for dead in self.root.glob(f".{digest}.*"):  # left by a killed install (we hold the lock)
            shutil.rmtree(dead, ignore_errors=True)
        work = Path(tempfile.mkdtemp(prefix=f".{digest}.", dir=self.root))
        deadline = time.monotonic() + self._timeout
        try:
            requirements_file = work / "requirements.txt"
            requirements_file.write_text("\n".join(requirements) + "\n", encoding="utf-8")
            site = work / _SITE
            with open(self.log_path(digest), "w", encoding="utf-8") as log:
                log.write(f"# {datetime.now(UTC).isoformat(timespec='seconds')} {digest}\n")
                local = self.offline or self.no_index
                try:
                    done = self._attempt(
                        self._command(uv, site, requirements_file, self.offline),
                        log,
                        timeout=self._timeout,
                    )
                    if done.returncode != 0 and not local and _NETWORK.search(done.stdout or ""):
                        # The index cannot be reached: the wheel directories and uv's
                        # cache may still hold every wheel.
                        log.write("# the index cannot be reached: trying local wheels only\n")
                        shutil.rmtree(site, ignore_errors=True)
                        local = True
                        done = self._attempt(
                            self._command(uv, site, requirements_file, True),
                            log,
                            timeout=max(1.0, deadline - time.monotonic()),
                        )
                except subprocess.TimeoutExpired:
                    raise TransientError(
                        f"installing {', '.join(requirements)} took longer than "
                        f"{self._timeout:.0f}s (log: {self.log_path(digest)})",
                        reason=Reason.DEPENDENCIES_UNAVAILABLE,
                        retry_after=60.0,
                    ) from None
            if done.returncode != 0:
                raise self._failure(requirements, self._redact(done.stdout or ""), local)
            (site / ".lock").unlink(missing_ok=True)  # uv's lock of the target
            installed = _installed(site)
            marker = {
                "digest": digest,
                "requirements": list(requirements),
                "python": self.target()[0],
                "platform": self.target()[1],
                "installed": list(installed),
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
            }
            (work / _MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
            requirements_file.unlink()
            final = self.root / digest
            if final.exists():  # incomplete or stale: we hold the lock, so it is ours to drop
                stale = Path(tempfile.mkdtemp(prefix=f".{digest}.stale.", dir=self.root))
                final.rename(stale / "old")
                shutil.rmtree(stale, ignore_errors=True)
            work.rename(final)
            return Environment(
                digest=digest,
                path=final,
                site=final / _SITE,
                requirements=requirements,
                installed=installed,
            )
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _failure(self, requirements: tuple[str, ...], output: str, local: bool) -> PermanentError:
        cause = _cause(output)
        missing = _missing(output) if local else set()
        if local and (missing or "not found" in output or "unavailable" in output):
            return PermanentError(
                self._unavailable(requirements, missing), reason=Reason.DEPENDENCIES_UNAVAILABLE
            )
        return PermanentError(
            f"cannot install {', '.join(requirements)}: {cause}", reason=Reason.DEPENDENCIES_FAILED
        )

    def _unavailable(self, requirements: tuple[str, ...], missing: set[str]) -> str:
        def name(requirement: str) -> str:
            return canonicalize_name(Requirement(requirement).name)

        direct = [r for r in requirements if name(r) in missing]
        indirect = sorted(missing - {name(r) for r in direct})
        wanted = direct or list(requirements)
        if direct and not indirect:
            what = "it" if len(direct) == 1 else "them"
        elif indirect and not direct:
            what = "its dependency " + ", ".join(indirect)
        else:
            what = ", ".join([*direct, *indirect])
        if self.offline:
            why = "the controller runs offline"
        elif self.no_index:
            why = "the controller uses no package index"
        else:
            why = f"the package index {self.index} cannot be reached"
        if self.find_links:
            dirs = ", ".join(
                str(d) + ("" if d.is_dir() else " (does not exist)") for d in self.find_links
            )
            where = f"{dirs} (nor in uv's cache)"
            put = "put its wheels (and its dependencies') there"
        else:
            where = "uv's cache, and no wheel directory (find-links) is configured"
            put = "put its wheels (and its dependencies') in a wheel directory given as find-links"
        return (
            f"cannot install {', '.join(wanted)}: {why} and no wheel for {what} is in {where}; "
            f"{put}, or let the controller reach the index"
        )
