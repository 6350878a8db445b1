"""Numeric guard of the training loop: non-finite steps are skipped and counted, a run of them stops training,
and a diverging loss is flagged."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable

import torch

log = logging.getLogger("mmpt")

MAX_NONFINITE_IN_ROW = 5
"""Optimizer steps in a row with a non-finite loss or gradient after which training stops."""
DIVERGENCE_FACTOR = 2.0
"""The smoothed loss is flagged as diverging when it exceeds its lowest value so far by this factor."""


class TrainingDiverged(RuntimeError):
    """Training produced non-finite losses or gradients too many steps in a row."""


def gradients_finite(params: Iterable[torch.Tensor]) -> bool:
    """Whether every gradient is finite (one reduction over all of them)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return True
    return bool(torch.isfinite(torch.stack([g.detach().float().abs().sum() for g in grads]).sum()))


class NumericGuard:
    """Counts skipped steps of one stage, stops after ``limit`` in a row, warns once when the loss diverges."""

    def __init__(self, stage: str, run_dir: str, limit: int = MAX_NONFINITE_IN_ROW) -> None:
        self.stage, self.run_dir, self.limit = stage, run_dir, limit
        self.skipped = 0
        self.in_row = 0
        self.lowest = math.inf
        self.diverged_at: int | None = None

    def step_ok(self, finite: bool, step: int) -> bool:
        """Record one optimizer step; raise :class:`TrainingDiverged` after ``limit`` non-finite ones in a row."""
        if finite:
            self.in_row = 0
            return True
        self.skipped += 1
        self.in_row += 1
        log.warning("stage '%s' step %d: non-finite loss or gradient, step skipped (%d so far)", self.stage, step,
                    self.skipped)
        if self.in_row >= self.limit:
            raise TrainingDiverged(
                f"training stopped: {self.in_row} steps in a row of stage '{self.stage}' (up to step {step}) had a "
                f"non-finite loss or gradient; lower train.lr (or raise train.grad_clip / use fp32) and resume "
                f"from the last good checkpoint with `mmpt train --resume {self.run_dir}`, or start again"
            )
        return False

    def watch(self, running: float, step: int) -> None:
        """Flag (once) a smoothed loss that rose far above its lowest value."""
        if not math.isfinite(running):
            return
        self.lowest = min(self.lowest, running)
        if self.diverged_at is None and step >= 10 and running > DIVERGENCE_FACTOR * self.lowest + 1e-3:
            self.diverged_at = step
            log.warning("stage '%s' step %d: the loss is diverging (%.4f, lowest %.4f); lower train.lr", self.stage,
                        step, running, self.lowest)

    def summary(self) -> dict[str, int | None]:
        """What to record in ``metrics.json`` for the stage."""
        return {"nonfinite_steps_skipped": self.skipped, "loss_diverging_from_step": self.diverged_at}
