"""``mmpt analyze ablate``: what a run's prefix or prompts contribute (PT-PEFT Tables 5, 9, 10).

Each run is evaluated three ways: **intact**; with its prefix/prompt methods' learned vectors **replaced by
Gaussian noise of the same norm** (per ``tokens x width`` matrix: each layer's key or value prefix of each head,
each layer's prompts), and with those methods **removed**. Other methods of the run (LoRA, adapters, heads) stay
as trained, so a PT-PEFT run shows what its prefix still does after the second stage. MLP reparameterizations are
folded first (the noise replaces the prefixes the layers read, not the MLP's weights).

With ranked answers (``eval.candidates``, or ``candidates="answers"``: the distinct answers of the analyzed
samples) the table holds top-1 and top-5 accuracy of the ranking; otherwise the task's main metric.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmpt.analysis.common import PROMPT_METHODS, Result, Subject
from mmpt.data import Sample
from mmpt.plots import fraction_axis
from mmpt.runfolder import save_figure

ABLATED = ("prefix", *PROMPT_METHODS)
"""Methods whose learned vectors an ablation removes or replaces."""


def noise_like(tensor: torch.Tensor, generator: torch.Generator, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Gaussian noise with ``tensor``'s shape whose every ``(tokens, width)`` matrix (last two dims) has the norm of
    the same matrix of ``tensor``. With ``mask`` (a visual prompt's frame: only the masked pixels are seen), the
    noise is zero outside it and the norms are those of the visible part, so the model sees noise of the visible
    frame's norm (norm-matching the whole image and masking afterwards left 0.51-0.68x of it)."""
    noise = torch.randn(tensor.shape, generator=generator, dtype=torch.float64)
    source = tensor.detach().double().cpu()  # the noise is drawn on the CPU (a CPU generator)
    if mask is not None:
        visible = mask.detach().double().cpu().expand_as(source)
        noise, source = noise * visible, source * visible
    if tensor.ndim < 2:
        return (noise * source.norm() / noise.norm()).to(tensor.dtype)
    target = source.norm(dim=(-2, -1), keepdim=True)
    return (noise * target / noise.norm(dim=(-2, -1), keepdim=True).clamp_min(1e-30)).to(tensor.dtype)


def subject_generator(seed: int, label: str) -> torch.Generator:
    """The noise generator of one subject: from ``seed`` and the subject's label, so a run's noise does not depend on
    which runs precede it on the command line."""
    return torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(label.encode())) % 2**63)


def learned_vectors(method: nn.Module) -> list[tuple[str, nn.Parameter, torch.Tensor | None]]:
    """The parameters of a prefix/prompt method that *are* token vectors (not the weights of its layers:
    interaction Linear layers, norms), each with the ``mask`` its module shows it through (a visual prompt's
    frame) or None; an MLP reparameterization is folded first."""
    if hasattr(method, "fold"):
        method.fold()  # type: ignore[operator]
    layers = {id(p) for m in method.modules() if isinstance(m, nn.Linear | nn.LayerNorm | nn.Embedding)
              for p in m.parameters(recurse=False)}
    found = []
    for module in method.modules():
        for name, p in module.named_parameters(recurse=False):
            if id(p) not in layers:
                mask = getattr(module, "mask", None)
                found.append((name, p, mask if isinstance(mask, torch.Tensor) else None))
    if not found:
        raise ValueError(f"{type(method).__name__} holds no token vectors to ablate")
    return found


def _score(subject: Subject, samples: Sequence[Sample], task: str, eval_config: Any, candidates: list[str] | None,
           progress: bool) -> dict[str, float]:
    from mmpt.tasks import evaluate_task, main_metric
    from mmpt.tasks.common import normalize
    from mmpt.tasks.vqa import candidate_scores, top_k

    loaded = subject.loaded
    if candidates is None:
        metric = main_metric(task, eval_config)
        return {metric: evaluate_task(task, loaded.model, loaded.processor, samples, eval_config,
                                      progress=progress).metrics[metric]}
    scores = candidate_scores(loaded.model, loaded.processor, samples, candidates, eval_config.batch_size,
                              progress=progress, candidate_batch_size=eval_config.candidate_batch_size)
    ranked = top_k(scores, candidates, min(5, len(candidates)))
    gold = [normalize(s.target) for s in samples]
    top1 = sum(normalize(r[0]) == g for r, g in zip(ranked, gold, strict=True)) / len(samples)
    top5 = sum(g in {normalize(a) for a in r} for r, g in zip(ranked, gold, strict=True)) / len(samples)
    return {"top1": top1, "top5": top5}


def analyze_ablate(subjects: Sequence[Subject], samples: Sequence[Sample], task: str, eval_config: Any,
                   candidates: list[str] | None = None, seed: int = 0, progress: bool = True) -> Result:
    """Intact / noise / removed metrics of every run subject (a base model, which has nothing to ablate, is
    evaluated once as the reference). Methods are removed from the subjects' models: load them again to reuse."""
    rows: list[dict[str, Any]] = []
    for subject in subjects:
        generator = subject_generator(seed, subject.label)
        ablated = {n: m for n, m in subject.methods.items() if n in ABLATED}
        if subject.run_dir is None or not ablated:
            rows.append({"subject": subject.label, "variant": "as is",
                         **_score(subject, samples, task, eval_config, candidates, progress)})
            continue
        names = "+".join(ablated)
        rows.append({"subject": subject.label, "variant": "intact",
                     **_score(subject, samples, task, eval_config, candidates, progress)})
        saved = []
        with torch.no_grad():
            for method in ablated.values():
                for _, p, mask in learned_vectors(method):
                    saved.append((p, p.detach().clone()))
                    p.copy_(noise_like(p, generator, mask).to(p.device))
        rows.append({"subject": subject.label, "variant": f"{names} -> noise (same norm)",
                     **_score(subject, samples, task, eval_config, candidates, progress)})
        with torch.no_grad():
            for p, value in saved:
                p.copy_(value)
        for method in ablated.values():
            method.remove()
        rows.append({"subject": subject.label, "variant": f"{names} removed",
                     **_score(subject, samples, task, eval_config, candidates, progress)})
    ranked = candidates is not None
    notes = [f"Noise: Gaussian, scaled to the norm of each (tokens x width) matrix it replaces (a visual prompt's "
             f"frame: of its visible part); seed {seed}, drawn per run from the seed and the run's label.",
             "Other methods of a run (LoRA, adapters, heads) stay as trained."]
    if ranked:
        notes.append(f"Ranking over {len(candidates or [])} candidate answers: top-1 and top-5 accuracy.")
    metric_keys = [k for k in rows[0] if k not in ("subject", "variant")]
    return Result("ablate", rows, {}, {"ablate.png": lambda path: _plot(rows, metric_keys, path)}, notes,
                  {"samples": len(samples), "seed": seed, "ranked": ranked})


def _plot(rows: list[dict[str, Any]], metrics: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(6 * len(metrics), 4), squeeze=False)
    labels = [f"{r['subject']}\n{r['variant']}" for r in rows]
    for ax, metric in zip(axes[0], metrics, strict=True):
        ax.barh(range(len(rows)), [r[metric] for r in rows])
        ax.set_yticks(range(len(rows)), labels, fontsize=7)
        ax.invert_yaxis()
        ax.set(xlabel=metric, title=f"ablation: {metric}")
        fraction_axis(ax, metric, axis="x")
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    plt.close(fig)
