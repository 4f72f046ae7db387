"""The identity of a spec and of a bento: content hashes that say when two
builds are the same (the bento tag a model would get, computed without building
anything) and the field-by-field difference between two versions of a document.

Pure; called by the packager, the plan of a pull request and ``mdc history``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from importlib import metadata
from typing import Any

from controller.spec.kinds import Model
from controller.spec.service_sources import service_sources
from controller.spec.tree import EntryKind, Tree, clean_reference, resolve

__all__ = [
    "LAYOUT",
    "bento_tag",
    "field_changes",
    "model_tag_for",
    "planned_bento_tag",
    "service_files",
]


#: Bumped when the layout of build directories or bentofiles changes.
LAYOUT = "mdc-bento-1"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _safe_version(digest: str) -> str:
    return digest[:20]


def _files_under(tree: Tree, directory: str) -> dict[str, bytes]:
    prefix = directory.rstrip("/") + "/"
    return {
        entry[len(prefix) :]: tree.read(entry)
        for entry in tree.walk()
        if entry.startswith(prefix) and tree.kind(entry) is EntryKind.FILE
    }


def _digest_of_files(files: Mapping[str, bytes]) -> str:
    hasher = hashlib.sha256()
    for rel in sorted(files):
        hasher.update(rel.encode() + b"\0" + _sha256(files[rel]).encode() + b"\n")
    return hasher.hexdigest()


def model_tag_for(model: Model, tree: Tree) -> str:
    """The model tag ``model``'s artifact gets, computed without importing anything."""
    art = model.artifact
    if art.bento_model:
        return art.bento_model
    if art.mlflow is not None:
        # a stand-in until the version's files are fetched (the built tag is their digest);
        # a version never changes, so it names the files as well for plans
        return f"{model.name}:mlflow-v{art.mlflow.version}"
    if art.url:
        return f"{model.name}:{_safe_version(art.sha256 or '')}"
    target, kind = resolve(tree, clean_reference(art.path or ""))
    if kind is EntryKind.FILE:
        return f"{model.name}:{_safe_version(_sha256(tree.read(target)))}"
    return f"{model.name}:{_safe_version(_digest_of_files(_files_under(tree, target)))}"


def service_files(model: Model, tree: Tree) -> dict[str, bytes]:
    """The model's service module and the repository modules it imports, by path
    in the build context (see :mod:`controller.spec.service_sources`), and its
    requirements file (``spec.python.requirements``): what the bento is made of."""
    files = service_sources(tree, model.service_module)
    if model.python.requirements:
        path = clean_reference(model.python.requirements)
        target, kind = resolve(tree, path)
        if kind is EntryKind.FILE:
            files[path] = tree.read(target)
    return files


def bento_tag(model: Model, model_tag: str, files: Mapping[str, bytes]) -> str:
    """The content-addressed bento tag: same inputs, same tag."""
    hasher = hashlib.sha256()
    for part in (LAYOUT, _bentoml_version(), model.name, model_tag, model.service_class):
        hasher.update(part.encode() + b"\n")
    if model.python.packages:  # the environment it is served from is part of it
        hasher.update(b"python\0" + "\n".join(sorted(model.python.packages)).encode() + b"\n")
    for rel in sorted(files):
        hasher.update(rel.encode() + b"\0" + _sha256(files[rel]).encode() + b"\n")
    return f"{model.name}:{_safe_version(hasher.hexdigest())}"


def planned_bento_tag(model: Model, tree: Tree) -> str:
    """The bento tag a build of ``model`` would have (for plans: nothing is built)."""
    return bento_tag(model, model_tag_for(model, tree), service_files(model, tree))


def _bentoml_version() -> str:
    try:
        return metadata.version("bentoml")
    except metadata.PackageNotFoundError:  # pragma: no cover - a dependency
        return "unknown"


def _flatten(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict) and value:
        for key, sub in value.items():
            yield from _flatten(sub, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, list) and value and any(isinstance(v, dict | list) for v in value):
        for i, sub in enumerate(value):
            yield from _flatten(sub, f"{prefix}[{i}]")
    else:
        yield prefix, value


def field_changes(old: Any, new: Any) -> tuple[str, ...]:
    """``path: old -> new`` for every leaf that differs between two documents."""
    before, after = dict(_flatten(old or {})), dict(_flatten(new or {}))
    out = []
    for path in sorted(set(before) | set(after)):
        if before.get(path, _MISSING) != after.get(path, _MISSING):
            was = "(unset)" if path not in before else repr(before[path])
            now = "(unset)" if path not in after else repr(after[path])
            out.append(f"{path}: {was} -> {now}")
    return tuple(out)


_MISSING = object()
