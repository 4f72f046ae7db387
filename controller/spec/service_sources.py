"""The Python sources a model's bento is made of: its service module and the
repository modules it imports, found by parsing -- never importing -- them.

A spec repository holds many services side by side; a model's bento (its build
context and its content hash) must change when its own code changes and only
then, so a commit that touches model A's service never gives model B a new
bento. The service module is parsed with :mod:`ast`; every ``import x``,
``from x import y``, relative import (``from .x import y``) and literal dynamic
import (``importlib.import_module("x")``, ``__import__("x")``) anywhere in it --
in functions, ``try`` blocks, ``if TYPE_CHECKING`` -- that names a module file
or package in the repository is taken, then parsed in turn, to any depth.
Names that are not in the repository (the standard library, installed
packages, typos) are skipped; import cycles end where a module was already
taken; a module that does not parse is taken but not followed.

**Import roots**, searched in order for an absolute import: the service
module's directory, then the repository root -- a module is where Python would
find it with both on ``sys.path``, the service's directory first. A relative
import is resolved inside the root its module was found in.

**Layout**: each file goes into the build context at its path relative to the
root it was found in (the service module ``services/fraud_scorer.py`` at
``fraud_scorer.py``, ``services/features.py`` imported as ``features`` at
``features.py``, ``common/text.py`` imported as ``common.text`` at
``common/text.py``), so with the build context as BentoML's working directory
every import resolves as it did in the repository.

**Bounds**: at most :data:`MAX_FILES` files, :data:`MAX_FILE_BYTES` per file and
:data:`MAX_BYTES` in all; past them the bento is refused
(:class:`~controller.errors.PermanentError`, ``BuildFailed``) rather than built
without some of its code. Only ``.py`` files are taken: a service that reads
data files beside it needs them in its artifact.

Pure: reads only through the :class:`~controller.spec.tree.Tree`. Called by
:func:`controller.spec.identity.service_files` (the bento tag of a plan and a
build) and so by the packager.
"""

from __future__ import annotations

import ast
import posixpath
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

from controller.errors import PermanentError, Reason, UnsafePath
from controller.spec.pysource import parse_module
from controller.spec.tree import EntryKind, Tree, clean_reference, resolve

__all__ = ["MAX_BYTES", "MAX_FILES", "MAX_FILE_BYTES", "imported_names", "service_sources"]

MAX_FILES = 256
MAX_FILE_BYTES = 1 << 20
MAX_BYTES = 16 << 20

_DYNAMIC = frozenset({"import_module", "__import__"})


@dataclass(frozen=True)
class _Module:
    root: str  # the import root it was found in ("" is the repository root)
    name: str  # its dotted name from that root
    path: str  # its file in the repository (an __init__.py for a package)
    package: bool


def imported_names(source: ast.Module, name: str, package: bool) -> Iterator[tuple[str, bool]]:
    """``(dotted name, relative)`` of every module ``source`` may import, for a
    module called ``name`` (a package when ``package``). ``from x import y``
    yields ``x`` and ``x.y`` (``y`` may be a submodule); relative imports come
    out absolute, and those that climb above the top package are dropped."""
    parts = name.split(".") if package else name.split(".")[:-1]
    for node in ast.walk(source):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, False
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                base = node.module or ""
            elif len(parts) >= node.level:
                base = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            else:
                continue
            if not base:
                continue
            yield base, node.level > 0
            for alias in node.names:
                if alias.name != "*":
                    yield f"{base}.{alias.name}", node.level > 0
        elif isinstance(node, ast.Call) and node.args:
            func, first = node.func, node.args[0]
            called = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            if (
                called in _DYNAMIC
                and isinstance(first, ast.Constant)
                and isinstance(first.value, str)
                and not first.value.startswith(".")
            ):
                yield first.value, False


class _Scan:
    def __init__(
        self, tree: Tree, service: str, roots: tuple[str, ...], max_files: int, max_bytes: int
    ) -> None:
        self.tree = tree
        self.service = service
        self.roots = roots
        self.max_files = max_files
        self.max_bytes = max_bytes
        self.files: dict[str, bytes] = {}
        self.size = 0
        self.looked_up: set[tuple[tuple[str, ...], str]] = set()
        self.queue: deque[_Module] = deque()

    def _file(self, path: str) -> str | None:
        """The in-repo file ``path`` resolves to, or None (absent, not a file,
        or a symlink that leaves the repository)."""
        try:
            target, kind = resolve(self.tree, path)
        except UnsafePath:
            return None
        return target if kind is EntryKind.FILE else None

    def request(self, name: str, roots: tuple[str, ...]) -> None:
        """Take module ``name`` and each package above it, where they are files."""
        parts = name.split(".")
        if not all(part.isidentifier() for part in parts):
            return
        for i in range(1, len(parts) + 1):
            prefix = ".".join(parts[:i])
            if (roots, prefix) in self.looked_up:
                continue
            self.looked_up.add((roots, prefix))
            found = self.find(prefix, roots)
            if found is not None:
                self.take(found)

    def find(self, name: str, roots: tuple[str, ...]) -> _Module | None:
        rel = name.replace(".", "/")
        for root in roots:
            base = posixpath.join(root, rel) if root else rel
            # a package directory wins over a module file of the same name
            for path, package in ((f"{base}/__init__.py", True), (f"{base}.py", False)):
                if self._file(path) is not None:
                    return _Module(root, name, path, package)
        return None

    def take(self, module: _Module) -> None:
        context = _context(module)
        if context in self.files:
            return
        target = self._file(module.path)
        if target is None:
            return
        size = self.tree.size(target)
        if size > MAX_FILE_BYTES:
            raise self.too_much(f"{module.path} is over {MAX_FILE_BYTES} bytes")
        if len(self.files) >= self.max_files:
            raise self.too_much(f"more than {self.max_files} files")
        if self.size + size > self.max_bytes:
            raise self.too_much(f"more than {self.max_bytes} bytes")
        data = self.tree.read(target)
        self.files[context] = data
        self.size += len(data)
        self.queue.append(module)

    def follow(self, module: _Module) -> None:
        parsed = parse_module(self.files[_context(module)], module.path)
        if isinstance(parsed, str):
            return  # taken as it is; the build will say what is wrong with it
        for name, relative in imported_names(parsed, module.name, module.package):
            self.request(name, (module.root,) if relative else self.roots)

    def too_much(self, what: str) -> PermanentError:
        return PermanentError(
            f"service {self.service}: its sources are over the bound, {what} (a service and "
            f"the repository modules it imports may have at most {self.max_files} files, "
            f"{MAX_FILE_BYTES} bytes each, {self.max_bytes} bytes in all)",
            reason=Reason.BUILD_FAILED,
        )


def _context(module: _Module) -> str:
    """Where ``module`` goes in the build context: its path from its import root."""
    return posixpath.relpath(module.path, module.root) if module.root else module.path


def service_sources(
    tree: Tree, service_module: str, *, max_files: int = MAX_FILES, max_bytes: int = MAX_BYTES
) -> dict[str, bytes]:
    """Build-context path -> bytes of the service module ``service_module`` (a
    ``.py`` path in ``tree``) and every repository module it imports, directly or
    not. Empty when the service module is not a file."""
    module = clean_reference(service_module)
    directory, file = posixpath.split(module)
    roots = (directory, "") if directory else ("",)
    scan = _Scan(tree, module, roots, max_files, max_bytes)
    stem = file[: -len(".py")] if file.endswith(".py") else file
    scan.take(_Module(directory, stem, module, package=False))
    while scan.queue:
        scan.follow(scan.queue.popleft())
    return dict(sorted(scan.files.items()))
