"""The papers' analyses as functions and commands (``mmpt analyze rank|fgsm|ablate|similarity``).

=============  =============================================================  ==========================
analysis       what it measures                                               paper
=============  =============================================================  ==========================
rank           effective rank of text / image features; rank truncation       PT-PEFT Table 1, Fig. 4, 10
fgsm           task metric under a one-step FGSM attack on the pixels         OFA prompt tuning Fig. 3
ablate         a run with its prefix/prompts intact, noised, removed          PT-PEFT Tables 5, 9, 10
similarity     cosine of prefix keys with image-token and word-token keys     PT-PEFT Fig. 7
=============  =============================================================  ==========================

Each takes :class:`~mmpt.analysis.common.Subject` s (the base model and runs, :func:`load_subjects`) and samples,
and returns a :class:`~mmpt.analysis.common.Result`; :func:`write_result` writes it as JSON + CSV + PNG + markdown.
:func:`analyze` does all of it from run folders, as the command line does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from mmpt.analysis.common import (
    Result,
    Subject,
    analysis_config,
    analysis_samples,
    load_subjects,
    write_result,
)

ANALYSES = ("rank", "fgsm", "ablate", "similarity")


def check_options(options: dict[str, Any]) -> None:
    """One-line errors for out-of-range options (``epsilons``, ``threshold``, ``truncate``)."""
    epsilons = options.get("epsilons")
    if epsilons is not None and (not epsilons or not all(0 <= eps <= 1 for eps in epsilons)):  # NaN fails too
        raise ValueError(f"--eps: give finite epsilons in [0, 1] (pixels in [0, 1]), e.g. 0,0.01,0.05; got "
                         f"{list(epsilons)}")
    if not 0 < options.get("threshold", 0.9) <= 1:
        raise ValueError(f"--threshold must be in (0, 1], got {options['threshold']}")
    if any(r < 1 for r in options.get("truncate") or ()):
        raise ValueError(f"--truncate: ranks must be at least 1, got {list(options['truncate'])}")


def analyze(
    name: str,
    runs: Sequence[str | Path] = (),
    model: str | None = None,
    config: str | Path | None = None,
    out: str | Path | None = None,
    samples: int = 32,
    base: bool = True,
    smoke_mode: bool = False,
    progress: bool = True,
    overrides: Sequence[str] = (),
    **options: Any,
) -> Path:
    """Run analysis ``name`` on the base model and ``runs``; write it into ``out`` (default
    ``<first run's output_dir>/analysis/<name>``; a taken folder gets ``-2``...) and return the folder.

    ``options`` go to the analysis function (e.g. ``layer=-1``, ``epsilons=[0, 0.01]``, ``truncate=[1, 4]``).
    ``smoke_mode`` shrinks the samples to 4 and the options to their smallest useful values.
    """
    from mmpt.analysis.ablate import analyze_ablate
    from mmpt.analysis.fgsm import analyze_fgsm
    from mmpt.analysis.rank import analyze_rank
    from mmpt.analysis.similarity import analyze_similarity
    from mmpt.config import ConfigError
    from mmpt.runconfig import model_kwargs
    from mmpt.tasks import candidates_of

    if name not in ANALYSES:
        raise ConfigError(f"unknown analysis '{name}'; choose one of: {', '.join(ANALYSES)}")
    check_options(options)  # before anything loads
    run_config = analysis_config(runs, config, overrides, smoke_mode)
    count = min(samples, 4) if smoke_mode else samples
    chosen = analysis_samples(run_config, count)
    base_model = model or (run_config.model.name if not runs else None)
    settings = model_kwargs(run_config.model) if base_model == run_config.model.name else {}  # e.g. its projector
    subjects = load_subjects(runs, base_model, base, settings)
    eval_config = run_config.eval
    if name == "rank":
        result = analyze_rank(subjects, chosen, task=run_config.task, eval_config=eval_config, progress=progress,
                              **options)
    elif name == "fgsm":
        epsilons = options.pop("epsilons", None) or ([0.0, 0.03] if smoke_mode else [0.0, 0.005, 0.01, 0.02, 0.05])
        result = analyze_fgsm(subjects, chosen, epsilons, run_config.task, eval_config, progress=progress, **options)
    elif name == "ablate":
        choice = options.pop("candidates", None)  # "answers", an answer file, or None: the run's eval.candidates
        if choice == "answers":
            candidates: list[str] | None = sorted({s.target for s in chosen})
        else:
            chosen_config = eval_config if choice is None else replace(eval_config, candidates=choice)
            candidates = candidates_of(chosen_config, run_config.task)
        result = analyze_ablate(subjects, chosen, run_config.task, eval_config, candidates, progress=progress,
                                **options)
    else:
        result = analyze_similarity(subjects, chosen, progress=progress, **options)
    result.settings = {"runs": [str(r) for r in runs], "model": subjects[0].loaded.name, **result.settings}
    # beside the runs analysed (runs/analysis/<name> for runs/<run>; runs/smoke/analysis/... for smoke runs), or
    # under the config's output_dir when only a config is given
    home = Path(runs[0]).parent if runs else Path(run_config.output_dir)
    folder = Path(out) if out is not None else home / "analysis" / name
    return write_result(result, folder)


__all__ = ["ANALYSES", "Result", "Subject", "analysis_samples", "analyze", "load_subjects", "write_result"]
