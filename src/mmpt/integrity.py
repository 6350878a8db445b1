"""Integrity of everything a run writes: pickle-free state files, checksums, and finite weights.

- :func:`save_tree` / :func:`load_tree` store nested Python state (optimizer, scheduler and RNG states: dicts,
  lists, tuples, numbers, strings, tensors, NumPy arrays) as ONE safetensors file: tensors as tensors, the
  structure as JSON in the header. Loading builds only those types, so a crafted file cannot run code (unlike
  ``torch.load(weights_only=False)`` or pickle).
- :func:`write_manifest` / :func:`verify_manifest` keep ``manifest.json`` with the SHA-256 of each file in a
  folder (checkpoints, ``best/``, the run folder's method files and ``metrics.json``).
- :func:`check_finite` refuses tensors with NaN or infinity (never saved, never loaded).

Every problem is an :class:`IntegrityError` whose one-line message names the file, what is wrong and what to do.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from mmpt.cache import sha256_file
from mmpt.runfolder import RunFolderError, inside, write_bytes, write_text

MANIFEST = "manifest.json"
TREE_KEY = "mmpt_tree"


class IntegrityError(ValueError):
    """A file mmpt wrote is missing, damaged or holds non-finite numbers; the message says what to do."""


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename (a crash leaves the old file or the new;
    never through a link: :func:`mmpt.runfolder.write_text`)."""
    write_text(path, text)


# --- pickle-free nested state ---------------------------------------------------------------------------------


def _encode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        key = f"t{len(tensors)}"
        tensors[key] = torch.from_numpy(np.ascontiguousarray(obj))
        return {"__ndarray__": key}
    if isinstance(obj, bool | int | str) or obj is None:
        return obj
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else {"__float__": repr(obj)}
    if isinstance(obj, np.generic):
        return _encode(obj.item(), tensors)
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [_encode(v, tensors) for v in obj]
    if isinstance(obj, Mapping):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, tensors) for k, v in obj.items()}
        return {"__items__": [[_encode(k, tensors), _encode(v, tensors)] for k, v in obj.items()]}
    raise TypeError(f"cannot store {type(obj).__name__} in a state file (tensors, numbers, str, list, dict only)")


def _decode(obj: Any, tensors: Mapping[str, torch.Tensor], where: str) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors, where) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if len(obj) == 1:
        (tag, value), = obj.items()
        if tag in ("__tensor__", "__ndarray__"):
            if value not in tensors:
                raise IntegrityError(f"{where}: refers to a tensor '{value}' it does not hold")
            return tensors[value] if tag == "__tensor__" else tensors[value].numpy()
        if tag == "__float__":
            if value not in ("nan", "inf", "-inf"):
                raise IntegrityError(f"{where}: bad float {value!r}")
            return float(value)
        if tag == "__tuple__":
            return tuple(_decode(v, tensors, where) for v in value)
        if tag == "__items__":
            out = {}
            for pair in value:
                k, v = _decode(pair[0], tensors, where), _decode(pair[1], tensors, where)
                out[k if not isinstance(k, list) else tuple(k)] = v
            return out
    return {k: _decode(v, tensors, where) for k, v in obj.items()}


def save_tree(obj: Any, path: Path) -> None:
    """Store nested state (see module docstring) as one safetensors file."""
    tensors: dict[str, torch.Tensor] = {}
    structure = _encode(obj, tensors)
    save_safetensors(tensors, path, {TREE_KEY: json.dumps(structure, separators=(",", ":"))})


# --- safetensors: byte-stable, self-checked -------------------------------------------------------------------

DATA_SHA = "mmpt_data_sha256"


def _split(raw: bytes, path: Path) -> tuple[dict[str, Any], bytes]:
    if len(raw) < 8:
        raise IntegrityError(f"{path}: truncated ({len(raw)} bytes)")
    n = int.from_bytes(raw[:8], "little")
    if n > len(raw) - 8:
        raise IntegrityError(f"{path}: truncated or not a safetensors file (header of {n} bytes)")
    try:
        header = json.loads(raw[8 : 8 + n])
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise IntegrityError(f"{path}: garbled safetensors header") from None
    if not isinstance(header, dict):
        raise IntegrityError(f"{path}: garbled safetensors header")
    return header, raw[8 + n :]


def save_safetensors(tensors: Mapping[str, torch.Tensor], path: Path, metadata: Mapping[str, str]) -> None:
    """``safetensors.torch.save_file`` with a canonical header (sorted keys: the same bytes for the same content,
    whichever process wrote them) and the SHA-256 of the data section in the metadata; written atomically."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.raw")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    save_file({k: tensors[k].detach().cpu().contiguous() for k in sorted(tensors)}, str(tmp), metadata=dict(metadata))
    header, data = _split(tmp.read_bytes(), tmp)
    tmp.unlink()
    meta = {**header.pop("__metadata__", {}), DATA_SHA: hashlib.sha256(data).hexdigest()}
    canonical = {"__metadata__": dict(sorted(meta.items())), **{k: header[k] for k in sorted(header)}}
    head = json.dumps(canonical, separators=(",", ":"), ensure_ascii=False).encode()
    head += b" " * (-len(head) % 8)
    write_bytes(path, len(head).to_bytes(8, "little") + head + data)


def verify_safetensors(path: Path, what: str) -> dict[str, str]:
    """Check a safetensors file's own checksum (when it carries one); returns its metadata."""
    if not path.is_file():
        raise IntegrityError(f"{path}: missing; {what}")
    try:
        header, data = _split(path.read_bytes(), path)
    except IntegrityError as exc:
        raise IntegrityError(f"{exc}; {what}") from None
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict):
        raise IntegrityError(f"{path}: garbled safetensors header; {what}")
    expected = meta.get(DATA_SHA)
    if expected is not None and hashlib.sha256(data).hexdigest() != expected:
        raise IntegrityError(f"{path}: checksum mismatch (the file was damaged or edited); {what}")
    return meta


def load_tree(path: Path, what: str) -> Any:
    """Read a file written by :func:`save_tree`; ``what`` says what to do when it is damaged."""
    tensors = read_safetensors(path, what)
    try:
        with safe_open(str(path), framework="pt") as f:
            structure = json.loads((f.metadata() or {})[TREE_KEY])
    except (KeyError, json.JSONDecodeError) as exc:
        raise IntegrityError(f"{path}: not an mmpt state file ({exc.__class__.__name__}); {what}") from None
    return _decode(structure, tensors, str(path))


def read_safetensors(path: Path, what: str, device: str = "cpu") -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file; a missing or damaged file is one :class:`IntegrityError` line."""
    verify_safetensors(path, what)
    try:
        with safe_open(str(path), framework="pt", device=device) as f:
            return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no items()
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise IntegrityError(f"{path}: damaged safetensors file ({reason}); {what}") from None


# --- checksums --------------------------------------------------------------------------------------------------


def write_manifest(folder: Path, names: Iterable[str]) -> None:
    """Record the SHA-256 of ``folder/<name>`` for each name in ``folder/manifest.json`` (merged with entries
    already there for files that still exist)."""
    path = folder / MANIFEST
    entries: dict[str, str] = {}
    if path.is_file():
        try:
            old = json.loads(path.read_text())
            entries = {k: v for k, v in old.get("sha256", {}).items() if _plain_file(folder, k, path)}
        except (json.JSONDecodeError, AttributeError, OSError):
            entries = {}
    for name in names:
        entries[name] = sha256_file(folder / name)
    atomic_write_text(path, json.dumps({"format": "mmpt-manifest-1", "sha256": dict(sorted(entries.items()))},
                                       indent=1))


def _plain_file(folder: Path, name: str, manifest: Path) -> bool:
    try:
        inside(folder, name, manifest)
    except RunFolderError:
        return False
    return True


def verify_manifest(folder: Path, what: str, names: Iterable[str] | None = None) -> None:
    """Check files of ``folder`` against its manifest (``names``: those files only; default: every entry).

    A folder without a manifest (written before mmpt kept them) passes; a listed file that is missing or whose
    checksum differs raises :class:`IntegrityError` with ``what`` as the advice.
    """
    path = folder / MANIFEST
    if not path.is_file():
        return
    try:
        entries = json.loads(path.read_text())["sha256"]
        if not isinstance(entries, dict):
            raise TypeError
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
        raise IntegrityError(f"{path}: damaged manifest (not the JSON mmpt writes); {what}") from None
    for name in names if names is not None else sorted(entries):
        if name not in entries:
            raise IntegrityError(f"{folder / name}: not listed in {path}; {what}")
        try:  # inside the folder (no '..', absolute path or link), then a plain file (not a device)
            file = inside(folder, name, path, kind=None)
            if not file.exists():
                raise IntegrityError(f"{file}: missing (listed in {MANIFEST}); {what}")
            inside(folder, name, path)
        except RunFolderError as exc:
            raise IntegrityError(f"{exc}; {what}") from None
        if not isinstance(entries[name], str):
            raise IntegrityError(f"{path}: entry {name!r} holds no checksum; {what}")
        if sha256_file(file) != entries[name]:
            raise IntegrityError(f"{file}: checksum differs from {MANIFEST} (the file was damaged or edited); {what}")


def verified_json(path: Path, what: str) -> Any:
    """Parse a JSON file mmpt wrote, checked against its folder's manifest; one-line errors."""
    if not path.is_file():
        raise IntegrityError(f"{path}: missing; {what}")
    if _listed(path):
        verify_manifest(path.parent, what, [path.name])
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IntegrityError(f"{path}: not valid JSON ({exc}); {what}") from None


def verified_checked(path: Path, spec: Any, kind: str, fix: str) -> Any:
    """:func:`verified_json`, then the schema ``spec`` (:func:`mmpt.readback.check`): one
    :class:`IntegrityError` line ``<path>: not the <kind> mmpt writes (<key: problem>); <fix>``."""
    from mmpt.readback import check

    value = verified_json(path, fix)
    problem = check(value, spec)
    if problem:
        raise IntegrityError(f"{path}: not the {kind} mmpt writes ({problem}); {fix}")
    return value


def _listed(path: Path) -> bool:
    """Whether ``path`` is listed in its folder's manifest (True for a damaged manifest, to report it)."""
    if not (path.parent / MANIFEST).is_file():
        return False
    try:
        return path.name in json.loads((path.parent / MANIFEST).read_text()).get("sha256", {})
    except (json.JSONDecodeError, OSError, AttributeError, UnicodeDecodeError):
        return True  # let verify_manifest report the damaged manifest


# --- finite numbers ---------------------------------------------------------------------------------------------


def non_finite(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of floating-point tensors holding NaN or infinity."""
    return [k for k, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def check_finite(tensors: Mapping[str, torch.Tensor], where: str, what: str) -> None:
    """Raise :class:`IntegrityError` when any tensor holds NaN or infinity."""
    bad = non_finite(tensors)
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise IntegrityError(f"{where}: non-finite values (NaN or infinity) in {shown}; {what}")
