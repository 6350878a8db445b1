"""Fresh folder and file names: what a run writes never replaces what an earlier one wrote."""

from __future__ import annotations

from pathlib import Path

from mmpt.runconfig import RunConfig


def fresh_dir(path: Path) -> Path:
    """Create ``path``, or ``path-2``, ``path-3``... when it exists (what is there is never overwritten)."""
    out, k = path, 1
    while out.exists():
        k += 1
        out = path.with_name(f"{path.name}-{k}")
    out.mkdir(parents=True)
    return out


def unique_run_dir(config: RunConfig) -> Path:
    """``output_dir/name``, or ``name-2``, ``name-3``... when it exists: earlier runs are never overwritten."""
    return fresh_dir(Path(config.output_dir) / config.name)


def fresh_file(path: Path) -> Path:
    """``path``, or ``stem-2.ext``... when it exists (a resumed run never overwrites what it wrote before)."""
    k, out = 1, path
    while out.exists():
        k += 1
        out = path.with_name(f"{path.stem}-{k}{path.suffix}")
    return out
