"""Resumable training state: method parameters, optimizer, scheduler, RNG and the data position.

A run folder holds at most one ``checkpoint/`` (the latest; replaced atomically, so a crash while saving
leaves the previous one intact) and one ``best/`` (method weights of the best evaluation so far).
``mmpt train --resume RUN_DIR`` continues from ``RUN_DIR/checkpoint``.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from mmpt import methods


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
        shutil.rmtree(old)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    if old.exists():
        shutil.rmtree(old)


def save_methods(
    folder: Path, applied: dict[str, methods.Method], base_fingerprint: str, score: dict[str, Any] | None = None
) -> None:
    """Every applied method's parameters as ``folder/<name>.safetensors`` (and ``score.json``), atomically."""
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for name, method in applied.items():
        methods.save(method, tmp / f"{name}.safetensors", base_fingerprint)
    if score is not None:
        (tmp / "score.json").write_text(json.dumps(score, indent=2))
    _replace_dir(tmp, folder)


def read_best(folder: Path) -> dict[str, Any] | None:
    """``best/score.json`` (metric, score, tag), or None."""
    path = folder / "score.json"
    return json.loads(path.read_text()) if path.is_file() else None


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
) -> None:
    """Write the resumable state to ``folder`` (atomically: the previous checkpoint survives a crash).

    Without an optimizer (between stages, which each start a fresh one) only weights, RNG and state are kept.
    ``rng_states`` holds one :func:`rng_state` per process (index = process rank); default: this process's.
    """
    tmp = folder.with_name(folder.name + ".tmp")
    save_methods(tmp, applied, base_fingerprint)
    if optimizer is not None:
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save(rng_states if rng_states is not None else [rng_state()], tmp / "rng.pt")
    (tmp / "state.json").write_text(json.dumps(asdict(state), indent=2))
    _replace_dir(tmp, folder)


def read_state(folder: Path) -> TrainState:
    """The :class:`TrainState` of a checkpoint folder, with a clear error when there is none."""
    if not (folder / "state.json").is_file() and (folder.with_name(folder.name + ".old") / "state.json").is_file():
        folder.with_name(folder.name + ".old").rename(folder)  # a crash hit between the two renames of a save
    path = folder / "state.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"no checkpoint to resume in {folder.parent}: {path} is missing (checkpoints are written every "
            "train.save_every steps and at the end of each stage)"
        )
    return TrainState(**json.loads(path.read_text()))


def load_method_weights(folder: Path, applied: dict[str, methods.Method]) -> None:
    """Load ``folder/<name>.safetensors`` into each applied method of that name."""
    for name, method in applied.items():
        path = folder / f"{name}.safetensors"
        if not path.is_file():
            raise FileNotFoundError(f"{path} missing: the checkpoint does not match the run's methods")
        device = next(method.parameters()).device
        method.load_state_dict(load_file(str(path), device=str(device)))


def load_optimizer_state(folder: Path, optimizer: torch.optim.Optimizer, scheduler: Any, rank: int = 0) -> None:
    """Restore optimizer, scheduler and (this process's) RNG states saved by :func:`save_checkpoint`."""
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=False))
    scheduler.load_state_dict(torch.load(folder / "scheduler.pt", map_location="cpu", weights_only=False))
    states = torch.load(folder / "rng.pt", map_location="cpu", weights_only=False)
    rng = states[rank] if rank < len(states) else states[0]  # resumed on more processes: reuse rank 0's
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"], torch.cuda.current_device())
