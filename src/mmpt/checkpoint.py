"""Resumable training state: method parameters, optimizer, scheduler, RNG and the data position.

A run folder holds ``checkpoint/`` (the latest), ``checkpoint.1/`` (the one before: a damaged newest checkpoint
falls back to it with a warning) and ``best/`` (method weights of the best evaluation so far). Every file is
pickle-free (safetensors + JSON) and listed with its SHA-256 in the folder's ``manifest.json``, checked on load.
``mmpt train --resume RUN_DIR`` continues from the newest intact checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmpt import methods
from mmpt.config import ConfigError
from mmpt.integrity import (
    IntegrityError,
    check_finite,
    load_tree,
    read_safetensors,
    save_tree,
    verified_checked,
    verified_json,
    verify_manifest,
    write_manifest,
)
from mmpt.readback import SCORE, STATE, check
from mmpt.runfolder import remove_tree

log = logging.getLogger("mmpt")


@dataclass
class TrainState:
    """Where a run is: stage, optimizer step within it, epoch, batches consumed in that epoch, and the
    metrics gathered so far (evaluations, finished stages, best score)."""

    stage: int = 0
    step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    seen: int = 0
    seconds: float = 0.0
    running_loss: float | None = None
    metrics: dict[str, Any] = field(default_factory=lambda: {"stages": []})
    best_score: float | None = None
    best_step: str = ""


def _replace_dir(tmp: Path, final: Path) -> None:
    old = final.with_name(final.name + ".old")
    if old.exists():
        remove_tree(old)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    if old.exists():
        remove_tree(old)


def _write_methods(folder: Path, applied: dict[str, methods.Method], base_fingerprint: str,
                   fold: bool = False) -> list[str]:
    names = []
    for name, method in applied.items():
        methods.save(method, folder / f"{name}.safetensors", base_fingerprint, fold=fold)
        names.append(f"{name}.safetensors")
    return names


def save_methods(
    folder: Path, applied: dict[str, methods.Method], base_fingerprint: str, score: dict[str, Any] | None = None,
    fold: bool = False,
) -> None:
    """Every applied method's parameters as ``folder/<name>.safetensors`` (and ``score.json``), with a manifest of
    checksums, atomically (``fold``: reparameterizations folded, for inference). Non-finite weights are refused
    (:class:`~mmpt.integrity.IntegrityError`)."""
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        remove_tree(tmp)
    tmp.mkdir(parents=True)
    names = _write_methods(tmp, applied, base_fingerprint, fold)
    if score is not None:
        (tmp / "score.json").write_text(json.dumps(score, indent=2))
        names.append("score.json")
    write_manifest(tmp, names)
    _replace_dir(tmp, folder)


def read_best(folder: Path) -> dict[str, Any] | None:
    """``best/score.json`` (metric, score, tag), or None; checked against ``best/manifest.json``."""
    path = folder / "score.json"
    if not path.is_file():
        return None
    return verified_checked(path, SCORE, "score file", f"delete {folder} to let the run choose a new best, or keep "
                            "it and ignore it")


def rng_state() -> dict[str, Any]:
    """This process's Python, NumPy, torch (and CUDA) random states."""
    rng = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state(torch.cuda.current_device())
    return rng


def save_checkpoint(
    folder: Path,
    applied: dict[str, methods.Method],
    base_fingerprint: str,
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any,
    state: TrainState,
    rng_states: list[dict[str, Any]] | None = None,
    config: dict[str, Any] | None = None,
) -> None:
    """Write the resumable state to ``folder`` atomically, keeping the previous one as ``<folder>.1``.

    Files: the methods' safetensors, ``optimizer.safetensors``, ``scheduler.safetensors``, ``rng.safetensors``
    (pickle-free, see :mod:`mmpt.integrity`), ``state.json``, ``config.json`` (the run config this state was
    trained with, checked on resume) and ``manifest.json`` (SHA-256 of each). Without an optimizer (between
    stages, which each start a fresh one) only weights, RNG, state and config are kept. ``rng_states`` holds one
    :func:`rng_state` per process (index = process rank); default: this process's.
    """
    tmp = folder.with_name(f".{folder.name}.tmp")
    if tmp.exists():
        remove_tree(tmp)
    tmp.mkdir(parents=True)
    names = _write_methods(tmp, applied, base_fingerprint)
    if optimizer is not None:
        save_tree(optimizer.state_dict(), tmp / "optimizer.safetensors")
        save_tree(scheduler.state_dict(), tmp / "scheduler.safetensors")
        names += ["optimizer.safetensors", "scheduler.safetensors"]
    save_tree(rng_states if rng_states is not None else [rng_state()], tmp / "rng.safetensors")
    (tmp / "state.json").write_text(json.dumps(asdict(state), indent=2))
    (tmp / "config.json").write_text(json.dumps(config or {}, indent=2))
    names += ["rng.safetensors", "state.json", "config.json"]
    write_manifest(tmp, names)
    previous = folder.with_name(f"{folder.name}.1")
    if previous.exists():
        remove_tree(previous)  # a crash from here on leaves `folder` (or, after the next rename, `previous`)
    if folder.exists():
        folder.rename(previous)
    tmp.rename(folder)
    legacy = folder.with_name(folder.name + ".old")
    if legacy.exists():
        remove_tree(legacy)


def _candidates(run_dir: Path) -> list[Path]:
    """Checkpoint folders of a run, newest first (``.old``: left by mmpt versions before ``.1``)."""
    return [run_dir / name for name in ("checkpoint", "checkpoint.1", "checkpoint.old") if (run_dir / name).is_dir()]


def _read_state_json(folder: Path) -> TrainState:
    path = folder / "state.json"
    raw = verified_json(path, "")
    known = {f.name for f in fields(TrainState)}
    if not isinstance(raw, dict) or set(raw) - known or "step" not in raw:
        unknown = sorted(set(raw) - known) if isinstance(raw, dict) else []
        raise IntegrityError(f"{path}: not the state mmpt writes" + (f" (unknown keys {unknown})" if unknown else ""))
    problem = check(raw, STATE)
    if problem:
        raise IntegrityError(f"{path}: not the state mmpt writes ({problem})")
    try:
        state = TrainState(**raw)
    except TypeError as exc:
        raise IntegrityError(f"{path}: not the state mmpt writes ({exc})") from None
    if not all(isinstance(getattr(state, k), int) and getattr(state, k) >= 0
               for k in ("stage", "step", "epoch", "batches_in_epoch", "seen")):
        raise IntegrityError(f"{path}: stage/step/epoch counters must be non-negative integers")
    return state


def check_checkpoint(folder: Path) -> TrainState:
    """Verify one checkpoint folder (manifest checksums, pickle-free files, state) and return its state."""
    legacy = [p.name for p in folder.glob("*.pt")]
    if legacy:
        raise IntegrityError(
            f"{folder}: holds {', '.join(sorted(legacy))}, pickle files from an mmpt before 0.2 that mmpt no "
            "longer loads (a pickle can run code); start the run again, or use its method files / best/ as they are"
        )
    if not (folder / "manifest.json").is_file():
        raise IntegrityError(f"{folder}: no manifest.json (the save was interrupted or the folder was edited)")
    verify_manifest(folder, "")
    return _read_state_json(folder)


def resolve_checkpoint(run_dir: Path) -> tuple[Path, TrainState]:
    """The newest intact checkpoint of ``run_dir`` and its state.

    A damaged newest checkpoint falls back to the one before (``checkpoint.1``) with a warning; when none is
    intact, one :class:`IntegrityError` line lists why.
    """
    problems = []
    for folder in _candidates(run_dir):
        try:
            state = check_checkpoint(folder)
        except IntegrityError as exc:
            problems.append(str(exc).rstrip("; "))
            continue
        if problems:
            log.warning("%s; resuming from the previous checkpoint %s instead (step %d of stage %d)",
                        problems[0], folder, state.step, state.stage + 1)
        return folder, state
    if not problems:
        raise FileNotFoundError(
            f"no checkpoint to resume in {run_dir}: {run_dir / 'checkpoint'} is missing (checkpoints are written "
            "every train.save_every steps and at the end of each stage)"
        )
    raise IntegrityError(f"no intact checkpoint in {run_dir}: " + " | ".join(problems) +
                         "; start the run again, or use best/ or the method files it has")


def config_differences(saved: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts (``key (old -> new)``)."""
    out = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key, "<missing>"), current.get(key, "<missing>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key} ({a!r} -> {b!r})")
    return out


def check_resume_config(folder: Path, current: dict[str, Any],
                        normalize: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> None:
    """Stop when the run's ``config.yaml`` no longer matches the config the checkpoint was trained with.

    ``normalize`` (:func:`mmpt.runconfig.normalized`) reads the saved config as this mmpt would, so keys a newer
    mmpt added (at their defaults) are no difference; a saved config it cannot read is compared as it is."""
    saved = verified_json(folder / "config.json", "")
    if not saved:  # written by an mmpt that did not record it
        return
    if normalize is not None:
        with contextlib.suppress(ValueError):  # unreadable by this mmpt: compared as saved
            saved = normalize(saved)
    diff = config_differences(saved, json.loads(json.dumps(current)))
    if diff:
        shown = ", ".join(diff[:4]) + (f" and {len(diff) - 4} more" if len(diff) > 4 else "")
        raise ConfigError(
            f"{folder.parent / 'config.yaml'} differs from the config {folder} was trained with: {shown}; restore "
            f"it (the checkpoint's copy is {folder / 'config.json'}) or start a new run with the new settings"
        )


def load_method_weights(folder: Path, applied: dict[str, methods.Method]) -> None:
    """Load ``folder/<name>.safetensors`` into each applied method of that name (finite, matching shapes)."""
    what = "resume from the previous checkpoint or start again"
    for name, method in applied.items():
        path = folder / f"{name}.safetensors"
        device = next(method.parameters()).device
        tensors = read_safetensors(path, f"the checkpoint does not match the run's methods; {what}", str(device))
        check_finite(tensors, str(path), what)
        try:
            method.load_state_dict(tensors)
        except RuntimeError as exc:
            first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
            raise IntegrityError(f"{path}: does not fit the run's {name} method ({first}); {what}") from None


def load_optimizer_state(folder: Path, optimizer: torch.optim.Optimizer, scheduler: Any, rank: int = 0) -> None:
    """Restore optimizer, scheduler and (this process's) RNG states saved by :func:`save_checkpoint`."""
    what = "resume from the previous checkpoint or start again"
    try:
        optimizer.load_state_dict(load_tree(folder / "optimizer.safetensors", what))
        scheduler.load_state_dict(load_tree(folder / "scheduler.safetensors", what))
        states = load_tree(folder / "rng.safetensors", what)
        rng = states[rank] if rank < len(states) else states[0]  # resumed on more processes: reuse rank 0's
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"], torch.cuda.current_device())
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as exc:
        if isinstance(exc, IntegrityError):
            raise
        raise IntegrityError(f"{folder}: optimizer/scheduler/RNG state does not fit this run ({exc}); {what}") from None
