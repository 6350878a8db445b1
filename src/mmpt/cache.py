"""A verified on-disk cache for artifacts that are expensive to build (e.g. de-quantized weights).

Each entry is a folder holding the artifact files and a ``manifest.json`` with the fingerprint of the
source it was built from plus the size and SHA-256 of every file. An entry is used only when it is intact:
a folder, a readable manifest of the expected shape built from the same source, every listed file present with
its size and checksum, and no other file. Anything else (a file or link where the folder should be, a missing,
truncated or non-JSON manifest, a missing, truncated or altered file, a stray extra file) is rebuilt in a
temporary folder and swapped in, so an interrupted build never leaves a half-written entry behind.

A lock file per entry serializes checking and building, so processes started together (``torchrun``, parallel
jobs) build an entry once and the others wait for it instead of replacing it under each other. Temporary folders
are named ``.<name>.tmp-<pid>-<random>``; a build killed outright (SIGKILL, power loss) cannot remove its own, so
whoever next holds the entry's lock (to load or to build it) removes every temporary folder of that entry: with
the lock held, none of them can belong to a build still running.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from filelock import FileLock

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
TMP_TAG = ".tmp-"


def cache_root() -> Path:
    """The user cache folder: ``$MMPT_CACHE``, else ``$XDG_CACHE_HOME/mmpt``, else ``~/.cache/mmpt``."""
    if env := os.environ.get("MMPT_CACHE"):
        root = Path(env).expanduser()
        if root.exists() and not root.is_dir():
            raise ValueError(f"MMPT_CACHE={env} is a file, not a folder; point MMPT_CACHE at a folder (it is "
                             "created if missing) or unset it")
        return root
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "mmpt"


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    """SHA-256 hex digest of a file, read in 4 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _temp_pattern(name: str) -> re.Pattern[str]:
    """Names of the temporary folders of entry ``name``: ``.<name>.tmp-<pid>-<random>`` (random: ``[a-z0-9_]``,
    so entry ``a`` never claims those of entry ``a.tmp-1``), and ``.<name>-<8 random>`` of mmpt <= 0.1."""
    escaped = re.escape(name)
    return re.compile(rf"\.{escaped}{re.escape(TMP_TAG)}\d+-[A-Za-z0-9_]+|\.{escaped}-[a-z0-9_]{{8}}")


def _remove(path: Path) -> None:
    """Delete a file, link or folder tree; what cannot be deleted is logged, not raised."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("mmpt cache: could not remove %s (%s); delete it by hand", path, exc)


def remove_stale_temps(root: Path, name: str) -> list[Path]:
    """Remove every temporary folder of entry ``name`` under ``root``; call only while holding its lock.

    Returns the removed paths (builds killed before they could clean up after themselves).
    """
    pattern = _temp_pattern(name)
    stale = [p for p in root.iterdir() if pattern.fullmatch(p.name)]
    for path in stale:
        log.warning("mmpt cache: removing %s, left behind by an interrupted build of %s", path, name)
        _remove(path)
    return stale


def _files_problem(manifest: Any) -> str | None:
    """Why the manifest's ``files`` table is malformed, or None."""
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict):
        return "malformed manifest (no files table)"
    for rel, meta in files.items():
        parts = PurePosixPath(rel).parts
        if rel == MANIFEST or not parts or PurePosixPath(rel).is_absolute() or ".." in parts or "\\" in rel:
            return f"malformed manifest (bad file name {rel!r})"
        size = meta.get("size") if isinstance(meta, dict) else None
        digest = meta.get("sha256") if isinstance(meta, dict) else None
        if not isinstance(size, int) or isinstance(size, bool) or size < 0 or not isinstance(digest, str):
            return f"malformed manifest (bad record of {rel!r})"
    return None


def _present_files(entry: Path) -> set[str]:
    """Everything under ``entry`` that is not a folder (files, links...), as relative POSIX paths."""
    found = set()
    for folder, dirs, names in os.walk(entry):
        base = Path(folder)
        links = [d for d in dirs if (base / d).is_symlink()]  # links to folders are not followed: list them
        for n in [*names, *links]:
            found.add((base / n).relative_to(entry).as_posix())
    return found


def entry_problem(entry: Path, fingerprint: dict[str, Any]) -> str | None:
    """Return why cache folder ``entry`` cannot be used, or None when it is intact and built from ``fingerprint``."""
    if not entry.exists() and not entry.is_symlink():
        return "not built yet"
    if entry.is_symlink() or not entry.is_dir():
        return "not a folder"
    manifest_path = entry / MANIFEST
    if manifest_path.is_symlink() or not manifest_path.is_file():
        return "no manifest"
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: not JSON or not UTF-8
        return f"unreadable manifest ({type(exc).__name__})"
    if problem := _files_problem(manifest):
        return problem
    if manifest.get("fingerprint") != fingerprint:
        return "built from a different source"
    files: dict[str, dict[str, Any]] = manifest["files"]
    stray = sorted(_present_files(entry) - set(files) - {MANIFEST})
    if stray:
        return f"unexpected file {stray[0]}" + (f" (and {len(stray) - 1} more)" if len(stray) > 1 else "")
    for rel, meta in files.items():
        path = entry / rel
        if path.is_symlink() or not path.is_file():
            return f"missing file {rel}"
        if path.stat().st_size != meta["size"]:
            return f"{rel} has the wrong size"
        if sha256_file(path) != meta["sha256"]:
            return f"{rel} fails its checksum"
    return None


def _record_files(folder: Path) -> dict[str, dict[str, Any]]:
    """Size and SHA-256 of every file a build wrote (recursively); links and special files are refused."""
    files = {}
    for rel in sorted(_present_files(folder)):
        path = folder / rel
        if path.is_symlink() or not path.is_file():
            raise ValueError(f"cache build wrote {rel}, which is not a regular file; builders must write plain files")
        if rel != MANIFEST:
            files[rel] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
    return files


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
        build: writes the artifact files into the (empty) folder it is given.
        root: cache root (defaults to :func:`cache_root`).
    """
    root = root or cache_root()
    entry = root / name
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f".{name}.lock")):
        remove_stale_temps(root, name)
        problem = entry_problem(entry, fingerprint)
        if problem is None:
            return entry
        log.warning("mmpt cache: building %s (%s) in %s", name, problem, entry)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}{TMP_TAG}{os.getpid()}-", dir=root))
        old = tmp.with_name(f"{tmp.name}_old")  # also a temporary name of this entry: removed if we die
        try:
            build(tmp)
            files = _record_files(tmp)
            (tmp / MANIFEST).write_text(json.dumps({"fingerprint": fingerprint, "files": files}, indent=2))
            if entry.exists() or entry.is_symlink():
                os.replace(entry, old)  # whatever is there (folder, file, link) moves aside in one step
            os.replace(tmp, entry)
        except BaseException:
            _remove(tmp)
            raise
        finally:
            if old.exists() or old.is_symlink():
                _remove(old)
    return entry
