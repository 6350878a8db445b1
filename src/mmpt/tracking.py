"""Experiment trackers for ``train.report_to``: TensorBoard, Weights & Biases, MLflow (Accelerate's tracker classes)
and ``log.csv``.

Every tracker gets the same step axis as ``log.csv``: optimizer steps counted over the whole run (stage 2 continues
where stage 1 stopped), and the same names: ``train/<stage>/loss``, ``train/<stage>/lr`` (plus e.g. SCST rewards)
and ``eval/<metric>`` (the number of evaluated samples is not a metric and is not logged). ``log.csv`` is always
written (``mmpt train --resume`` and ``curves.png`` read it); ``csv`` may be listed to say so.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

TRACKERS = ("tensorboard", "wandb", "mlflow", "csv")
_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


def missing_packages(names: list[str]) -> list[str]:
    """The trackers among ``names`` whose package is not installed."""
    return [n for n in names if n in _PACKAGES and importlib.util.find_spec(_PACKAGES[n]) is None]


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 0.1}}`` -> ``{"train.lr": 0.1}``; values other than numbers/strings/booleans as text."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value if isinstance(value, int | float | str | bool) else str(value)
    return flat


class Trackers:
    """The run's trackers (main process only).

    Args:
        names: ``train.report_to``.
        out_dir: the run folder (TensorBoard writes to ``out_dir/tensorboard``, MLflow to ``out_dir/mlruns``).
        run_name: the run's name (W&B / MLflow run name).
        config: the resolved run config, stored as hyperparameters.
    """

    def __init__(self, names: list[str], out_dir: Path, run_name: str, config: dict[str, Any]) -> None:
        from accelerate.tracking import MLflowTracker, TensorBoardTracker, WandBTracker

        self.trackers: list[Any] = []
        for name in dict.fromkeys(names):
            if name == "tensorboard":
                tracker: Any = TensorBoardTracker("tensorboard", out_dir)
            elif name == "wandb":
                tracker = WandBTracker(run_name, dir=str(out_dir))
            elif name == "mlflow":
                tracker = MLflowTracker(run_name, logging_dir=str(out_dir / "mlruns"))
            else:
                continue
            tracker.start()
            try:
                tracker.store_init_configuration(flatten(config))
            except Exception as exc:  # noqa: BLE001 - hyperparameters are a convenience; the scalars matter
                log.warning("%s did not take the run's config as hyperparameters: %s", name, exc)
            self.trackers.append(tracker)

    def log(self, values: dict[str, float], step: int) -> None:
        """Log scalars at a global optimizer step."""
        for tracker in self.trackers:
            tracker.log(values, step=step)

    def close(self) -> None:
        """Flush and close every tracker."""
        for tracker in self.trackers:
            tracker.finish()
        self.trackers = []
