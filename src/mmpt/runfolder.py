"""A run folder is untrusted input: it may come from someone else, or have been edited by hand.

mmpt never writes through, reads through or deletes a symbolic link inside a run folder, and never follows a path
found inside one of its files out of the folder:

- :func:`refuse_links` checks a run folder before a command reads or writes it (``train --resume``, ``eval``,
  ``report``, ``analyze``, ``export``, ``predict --run``): a link anywhere inside is refused with one line that
  names it. (The run folder itself may be a link, e.g. ``runs/`` on another disk.)
- :func:`write_text`, :func:`writing` and :func:`save_figure` write a new file beside the target, opened with
  ``O_EXCL | O_NOFOLLOW``, and rename it into place: the rename replaces a link that appeared meanwhile instead of
  writing into what it points to, and a crash leaves the old file or the new one.
- :func:`inside` turns a file name read from a manifest, ``analysis.json`` or ``sweep.json`` into a path,
  refusing absolute paths, ``..``, links and anything that is not a plain file or folder of the run.
- :func:`remove_tree` deletes a folder mmpt made, refusing a link.

Every refusal is a :class:`RunFolderError` (a ``ValueError``: the CLI prints its one line).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import IO, Any

FIX = "replace it by a copy of what it points to (cp -L) or remove it"


class RunFolderError(ValueError):
    """A run folder holds a link or names a path outside itself; the message names it and the fix."""


def refuse_links(folder: Path) -> None:
    """Raise :class:`RunFolderError` naming the first symbolic link inside ``folder`` (files and folders, at any
    depth; links are not followed)."""
    folder = Path(folder)
    for root, dirs, files in os.walk(folder, followlinks=False):
        for name in sorted(dirs + files):
            path = Path(root) / name
            if path.is_symlink():
                raise RunFolderError(f"{path}: a symbolic link inside a run folder; mmpt never reads or writes "
                                     f"through links there (it could change or reveal a file elsewhere): {FIX}")


def refuse_links_in_run(folder: Path) -> None:
    """:func:`refuse_links` for a folder that must be a run: first one line when it is none (missing, a file, no
    ``config.yaml``), so a wrong argument such as ``/tmp`` is named at once instead of walked."""
    folder = Path(folder)
    if not folder.is_dir():
        raise RunFolderError(f"run folder {folder} {'is a file' if folder.exists() else 'does not exist'}; give a "
                             "folder that mmpt train wrote (runs/<name>)")
    if not os.path.lexists(folder / "config.yaml"):
        raise RunFolderError(f"{folder} is not an mmpt run folder (no config.yaml): give a folder that mmpt train "
                             "wrote (runs/<name>)")
    refuse_links(folder)


def inside(folder: Path, name: object, source: Path, kind: str | None = "file") -> Path:
    """``folder / name`` for a ``name`` read from ``source`` (a file of the run): a relative path of plain names
    (no ``..``, not absolute), no link on the way, and an existing regular file (``kind="file"``) or folder
    (``kind="folder"``; ``None``: whatever exists there, or nothing). Raises :class:`RunFolderError` naming
    ``source`` and the entry."""
    where = f"{source}: entry {str(name)[:200]!r}"
    if not isinstance(name, str) or not name or "\x00" in name:
        raise RunFolderError(f"{where} is not a file name; {source} was edited or damaged: remove it or restore it")
    parts = PurePosixPath(name.replace(os.sep, "/")).parts
    if PurePosixPath(name).is_absolute() or Path(name).is_absolute() or ".." in parts or not parts:
        raise RunFolderError(f"{where} points outside {folder}; mmpt reads only files inside a run folder: "
                             f"remove the entry (or the file {source.name})")
    path = Path(folder)
    for part in parts:
        path = path / part
        if path.is_symlink():
            raise RunFolderError(f"{where}: {path} is a symbolic link; {FIX}")
    if (kind == "file" and not path.is_file()) or (kind == "folder" and not path.is_dir()) or (
            kind is None and path.exists() and not (path.is_file() or path.is_dir())):
        raise RunFolderError(f"{where}: {path} is not a {kind or 'file'} of the run folder; restore it or remove "
                             "the entry")
    return path


def plain_name(name: object, source: Path) -> str:
    """``name`` read from ``source`` if it is one plain file or folder name (no separator, not ``.``/``..``);
    raises :class:`RunFolderError` otherwise (a sweep's run names, which may not exist yet)."""
    if (not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name
            or "\x00" in name):
        raise RunFolderError(f"{source}: entry {str(name)[:200]!r} is not a plain folder name inside "
                             f"{source.parent}; mmpt reads only folders inside it: remove the entry")
    return name


def _refuse_link(path: Path) -> None:
    if path.is_symlink():
        raise RunFolderError(f"{path}: a symbolic link where mmpt writes its own file; {FIX}")


@contextmanager
def writing(path: Path, mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a new temporary file beside ``path`` (never following a link), yield it, then rename it onto
    ``path``. ``path`` itself must not be a link. On an error the temporary file is removed and ``path`` kept."""
    path = Path(path)
    _refuse_link(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    try:
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through :func:`writing` (atomic, never through a link)."""
    with writing(path, "w", encoding="utf-8") as f:
        f.write(text)


def write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through :func:`writing`."""
    with writing(path, "wb") as f:
        f.write(data)


def save_figure(fig: Any, path: Path, **kwargs: Any) -> None:
    """``fig.savefig`` into ``path`` through :func:`writing` (the format from the suffix)."""
    path = Path(path)
    with writing(path, "wb") as f:
        fig.savefig(f, format=path.suffix.lstrip(".") or "png", **kwargs)


def remove_tree(path: Path) -> None:
    """``shutil.rmtree`` of a folder mmpt made; a link there is refused (never deleted through)."""
    path = Path(path)
    _refuse_link(path)
    shutil.rmtree(path)
