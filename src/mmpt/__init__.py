"""mmpt: multimodal prompt tuning for vision-language models.

Public entry points::

    import mmpt
    vlm = mmpt.models.load("mmpt-tiny")                 # offline default VLM
    handle = mmpt.methods.apply(vlm, PrefixConfig(length=16))
    metrics = mmpt.fit("configs/quickstart.yaml", ["train.lr=3e-3"])   # a whole run, as `mmpt train`

Submodules are imported on first use, so ``import mmpt`` (and ``mmpt --help``) stays fast.
"""

from __future__ import annotations

import copy
import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mmpt import methods, models
    from mmpt.runconfig import RunConfig

__all__ = ["methods", "models", "fit", "__version__"]
__version__ = "0.1.0"
_LAZY = ("methods", "models", "data", "analysis", "tasks")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return importlib.import_module(f"mmpt.{name}")
    raise AttributeError(f"module 'mmpt' has no attribute {name!r}")


def fit(
    config: str | Path | RunConfig | dict[str, Any] | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    smoke: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Train and evaluate a run, exactly as ``mmpt train`` does; returns its metrics (also in ``metrics.json``).

    (Called ``fit`` because ``mmpt.train`` is the training module.)

    Args:
        config: a YAML file, a :class:`~mmpt.runconfig.RunConfig`, a nested dict shaped like the YAML, or None for
            the defaults.
        overrides: ``key=value`` strings, e.g. ``["method.length=32", "train.lr=3e-3"]``.
        smoke: shrink the run to seconds (into ``<output_dir>/smoke/<name>``).
        progress: show progress bars.

    The run folder is ``metrics["run_dir"]``.
    """
    from mmpt.runconfig import RunConfig, load_run_config, parse_run_config
    from mmpt.runconfig import smoke as shrink
    from mmpt.train import run

    if isinstance(config, RunConfig):
        if overrides:
            raise ValueError("overrides apply to a YAML file or a dict; edit the RunConfig with dataclasses.replace")
        resolved = config
    elif isinstance(config, dict):
        resolved = parse_run_config(copy.deepcopy(config), overrides)  # the caller's dict stays as it is
    else:
        resolved = load_run_config(config, overrides)
    return run(shrink(resolved) if smoke else resolved, progress=progress)
