"""A verified on-disk cache for artifacts that are expensive to build (e.g. de-quantized weights).

Each entry is a folder holding the artifact files and a ``manifest.json`` with the fingerprint of the
source it was built from plus the size and SHA-256 of every file. An entry is used only when the manifest
matches; a missing, stale or damaged entry is rebuilt in a temporary folder and swapped in atomically, so
an interrupted build never leaves a half-written entry behind. A lock file per entry serializes checking and
building, so processes started together (``torchrun``, parallel jobs) build an entry once and the others wait
for it instead of replacing it under each other.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from filelock import FileLock

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


def cache_root() -> Path:
    """The user cache folder: ``$MMPT_CACHE``, else ``$XDG_CACHE_HOME/mmpt``, else ``~/.cache/mmpt``."""
    if env := os.environ.get("MMPT_CACHE"):
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "mmpt"


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    """SHA-256 hex digest of a file, read in 4 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _manifest_problem(entry: Path, fingerprint: dict[str, Any]) -> str | None:
    """Return why ``entry`` cannot be used, or None when it is intact and built from ``fingerprint``."""
    manifest_path = entry / MANIFEST
    if not manifest_path.is_file():
        return "no manifest"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        return f"unreadable manifest ({exc})"
    if manifest.get("fingerprint") != fingerprint:
        return "built from a different source"
    for name, meta in manifest.get("files", {}).items():
        path = entry / name
        if not path.is_file():
            return f"missing file {name}"
        if path.stat().st_size != meta["size"]:
            return f"{name} has the wrong size"
        if sha256_file(path) != meta["sha256"]:
            return f"{name} fails its checksum"
    return None


def cached_build(
    name: str,
    fingerprint: dict[str, Any],
    build: Callable[[Path], None],
    root: Path | None = None,
) -> Path:
    """Return the folder of cache entry ``name``, (re)building it with ``build(folder)`` when needed.

    Args:
        name: entry name, a folder under the cache root.
        fingerprint: JSON-serializable description of the source; a change triggers a rebuild.
        build: writes the artifact files into the folder it is given.
        root: cache root (defaults to :func:`cache_root`).
    """
    root = root or cache_root()
    entry = root / name
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f".{name}.lock")):
        problem = _manifest_problem(entry, fingerprint) if entry.exists() else "not built yet"
        if problem is None:
            return entry
        log.warning("mmpt cache: building %s (%s) in %s", name, problem, entry)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
        try:
            build(tmp)
            files = {
                p.name: {"size": p.stat().st_size, "sha256": sha256_file(p)}
                for p in sorted(tmp.iterdir())
                if p.is_file() and p.name != MANIFEST
            }
            (tmp / MANIFEST).write_text(json.dumps({"fingerprint": fingerprint, "files": files}, indent=2))
            if entry.exists():
                shutil.rmtree(entry)
            os.replace(tmp, entry)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return entry
