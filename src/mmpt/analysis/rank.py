"""``mmpt analyze rank``: the effective rank of a model's representation space (PT-PEFT, eqs. 1-5, Table 1, Fig. 4).

For each sample, the hidden states of one layer (default: the last block of the language model) are split into
the feature matrix of its **text tokens** and, separately, of its **image tokens**. Each matrix's singular values
are sorted and normalized to sum to 1 (eq. 2-3) and averaged over the K samples (eq. 4); the cumulative curve of
the average (eq. 5) gives the **effective rank: the fraction of singular values needed to reach 0.9** of it.

Sizes: a ``tokens x width`` matrix has ``min(tokens, width)`` singular values. Image matrices all have the same
size; text matrices differ with the prompt's length. Each normalized spectrum is zero-padded to the longest one
before averaging: a matrix with fewer tokens has exactly zero singular values beyond its own count, so padding
adds nothing that is not there. The fraction is taken of that longest count.

``text`` chooses the text features. ``all`` (the default): every real token that is not an image token, at the
output of block ``layer`` (system prompt and chat-template tokens included). ``paper``: PT-PEFT's definition,
``[sos, w1..wN, eos]`` after the language model's final norm (the last layer's output as the paper reads it): the
prompt's own words located in the sequence, the sequence's first real token as ``sos`` and the token right after
the words as ``eos`` (with a chat template, the end-of-turn token); image features are then read after the final
norm too. A prompt whose tokens cannot be found in the sequence is refused, never approximated.

With ``truncate`` (PT-PEFT Fig. 10), the same layer's output is replaced, for each sample, by its best rank-r
approximation (top-r singular directions over the sample's tokens) and the task metric is measured against r.
Samples are then evaluated one at a time (no padding enters the decomposition); each forward call's token matrix
is truncated, so at generation the prompt is truncated at prefill and every new token (a 1-token matrix) passes
unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from mmpt.analysis.common import Result, Subject, batches, drop_prompt_columns, token_masks, tower_features
from mmpt.data import Sample
from mmpt.models.family import get_submodule
from mmpt.runfolder import save_figure

TEXT_FEATURES = ("all", "paper")
NORM_NAMES = ("norm", "final_layernorm", "final_layer_norm", "ln_f")
"""Names of a decoder's final norm, a direct child of the module that holds its blocks."""


def normalized_spectrum(features: torch.Tensor) -> torch.Tensor:
    """Singular values of a ``(tokens, width)`` matrix, largest first, divided by their sum."""
    if features.ndim != 2 or min(features.shape) == 0:
        raise ValueError(f"need a non-empty (tokens, width) matrix, got shape {tuple(features.shape)}")
    values = torch.linalg.svdvals(features.double())
    total = values.sum()
    if total <= 0:
        raise ValueError("the feature matrix is all zeros: it has no spectrum")
    return values / total


def average_spectra(spectra: Sequence[torch.Tensor]) -> torch.Tensor:
    """The mean of normalized spectra, each zero-padded to the longest (see the module docstring)."""
    if not spectra:
        raise ValueError("no spectra to average")
    width = max(len(s) for s in spectra)
    padded = torch.zeros(len(spectra), width, dtype=torch.float64)
    for i, s in enumerate(spectra):
        padded[i, : len(s)] = s.double()
    return padded.mean(0)


def effective_rank(spectrum: torch.Tensor, threshold: float = 0.9) -> float:
    """The fraction of singular values needed for the cumulative normalized spectrum to reach ``threshold``."""
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    cumulative = torch.cumsum(spectrum.double(), 0) / spectrum.double().sum()
    needed = int((cumulative < threshold - 1e-9).sum()) + 1
    return needed / len(spectrum)


def low_rank(features: torch.Tensor, r: int) -> torch.Tensor:
    """The best rank-``r`` approximation of a ``(tokens, width)`` matrix (its top-r singular directions)."""
    if r >= min(features.shape):
        return features
    u, s, vh = torch.linalg.svd(features.float(), full_matrices=False)
    return ((u[:, :r] * s[:r]) @ vh[:r]).to(features.dtype)


@contextmanager
def truncated_layer(root: nn.Module, layers_path: str, index: int, r: int) -> Iterator[None]:
    """Replace block ``index``'s hidden states by their rank-``r`` approximation, per sample, while inside."""
    block = list(get_submodule(root, layers_path))[index]

    def hook(module: nn.Module, args: Any, output: Any) -> Any:
        hidden = output[0] if isinstance(output, tuple | list) else output
        cut = torch.stack([low_rank(h, r) for h in hidden])
        return (cut, *output[1:]) if isinstance(output, tuple | list) else cut

    handle = block.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def collect_spectra(subject: Subject, samples: Sequence[Sample], tower: str, layer: int, batch_size: int,
                    progress: bool, text: str = "all") -> dict[str, list[torch.Tensor]]:
    """Normalized spectra per sample: ``{"image": [...], "text": [...]}`` (no ``text`` for a vision tower).
    ``text``: ``all`` or ``paper`` (see the module docstring)."""
    spectra: dict[str, list[torch.Tensor]] = {"image": [], "text": []}
    bar = tqdm(total=len(samples), desc=f"rank {subject.label}", unit="sample", disable=not progress, leave=False)
    for chunk, batch in batches(subject, samples, batch_size):
        if text == "paper":
            features, image, words = paper_features(subject, chunk, batch, tower, layer)
            for i in range(len(chunk)):
                spectra["image"].append(normalized_spectrum(features[i][image[i]]))
                spectra["text"].append(normalized_spectrum(features[i][words[i]]))
            bar.update(len(chunk))
            continue
        features, image, text_mask = tower_features(subject, batch, tower, layer)
        for i in range(len(chunk)):
            if image is None:
                spectra["image"].append(normalized_spectrum(features[i]))
                continue
            spectra["image"].append(normalized_spectrum(features[i][image[i]]))
            spectra["text"].append(normalized_spectrum(features[i][text_mask[i]]))
        bar.update(len(chunk))
    bar.close()
    return {k: v for k, v in spectra.items() if v}


def final_norm(root: nn.Module, layers_path: str) -> tuple[str, nn.Module]:
    """The final norm of the decoder whose blocks are at ``layers_path``: a direct child of the blocks' owner named
    one of :data:`NORM_NAMES`. Raises when there is none (mmpt does not guess another module)."""
    owner_path = layers_path.rpartition(".")[0]
    owner = get_submodule(root, owner_path) if owner_path else root
    for name in NORM_NAMES:
        module = getattr(owner, name, None)
        if isinstance(module, nn.Module):
            return f"{owner_path}.{name}".lstrip("."), module
    raise ValueError(f"{type(owner).__name__} at '{owner_path}' has no final norm named {', '.join(NORM_NAMES)}: "
                     "mmpt cannot read the features after it; use --text-features all")


def word_positions(ids: Sequence[int], words: Sequence[int]) -> int:
    """The start of the last occurrence of ``words`` in ``ids``; -1 when they do not occur."""
    n = len(words)
    for start in range(len(ids) - n, -1, -1):
        if list(ids[start : start + n]) == list(words):
            return start
    return -1


def paper_features(subject: Subject, chunk: Sequence[Sample], batch: dict[str, torch.Tensor], tower: str,
                   layer: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PT-PEFT's features: the LM's output after its final norm, with masks of the image tokens and of
    ``[sos, w1..wN, eos]`` (see the module docstring)."""
    loaded = subject.loaded
    name = loaded.family.resolve([tower])[0]
    spec = loaded.family.tower(name)
    if spec.kind != "decoder" or layer != -1:
        raise ValueError(f"--text-features paper reads the language model's last layer after its final norm; got "
                         f"tower '{name}' ({spec.kind}) layer {layer}: use --tower lm --layer -1, or --text-features all")
    tokenizer = getattr(loaded.processor, "tokenizer", None)
    if tokenizer is None:
        raise ValueError(f"{loaded.name}'s processor has no tokenizer: mmpt cannot find the prompt's words; use "
                         "--text-features all")
    _, norm = final_norm(loaded.model, spec.layers)
    outputs: list[torch.Tensor] = []
    handle = norm.register_forward_hook(lambda module, args, output: outputs.append(output.detach()))
    try:
        with torch.no_grad():
            loaded.model(**batch, use_cache=False)
    finally:
        handle.remove()
    if len(outputs) != 1:
        raise RuntimeError(f"the final norm of tower '{name}' ran {len(outputs)} times in one forward; expected once")
    features = outputs[0].float()
    image, real = token_masks(loaded.model, batch)
    extra = features.shape[1] - image.shape[1]
    if extra < 0 or (extra and not any(n in subject.methods for n in ("prompt", "deep_prompt", "m2pt"))):
        raise RuntimeError(f"tower '{name}' returned {features.shape[1]} positions for {image.shape[1]} input tokens "
                           "and no prompt method explains the difference: mmpt cannot align them")
    features = drop_prompt_columns(subject, features, extra) if extra else features
    ids = batch["input_ids"]
    words = torch.zeros_like(image)
    for i, sample in enumerate(chunk):
        first = int(real[i].nonzero()[0]) if bool(real[i].any()) else 0
        row = ids[i].tolist()
        start, found = -1, []
        for text in (sample.prompt, " " + sample.prompt):
            found = tokenizer(text, add_special_tokens=False)["input_ids"]
            start = word_positions(row, found) if found else -1
            if start >= 0:
                break
        end = start + len(found)
        if start < 0 or start <= first or end >= len(row):
            raise ValueError(f"sample {sample.id!r}: its prompt's tokens do not appear inside the model's sequence "
                             f"(the processor changes the text): use --text-features all")
        words[i, [first, *range(start, end), end]] = True
    return features, image, words & ~image


def analyze_rank(subjects: Sequence[Subject], samples: Sequence[Sample], tower: str = "lm", layer: int = -1,
                 threshold: float = 0.9, batch_size: int = 8, truncate: Sequence[int] = (),
                 task: str = "vqa", eval_config: Any = None, progress: bool = True, text: str = "all") -> Result:
    """Effective rank of every subject's text and image features (and, with ``truncate``, the task metric of each
    subject with its features cut to rank r). Ratios are taken to the first subject (the base model). ``text``:
    which features (``all``: every non-image token at block ``layer``; ``paper``: PT-PEFT's [sos, words, eos] after
    the final norm)."""
    from mmpt.analysis import check_options

    check_options({"threshold": threshold, "truncate": truncate})
    if text not in TEXT_FEATURES:
        raise ValueError(f"--text-features must be one of {', '.join(TEXT_FEATURES)}, got {text!r}")
    curves: dict[str, dict[str, list[float]]] = {}
    rows: list[dict[str, Any]] = []
    reference: dict[str, float] = {}
    for subject in subjects:
        spectra = collect_spectra(subject, samples, tower, layer, batch_size, progress, text)
        curves[subject.label] = {}
        for kind, per_sample in spectra.items():
            mean = average_spectra(per_sample)
            rank = effective_rank(mean, threshold)
            reference.setdefault(kind, rank)
            curves[subject.label][kind] = torch.cumsum(mean, 0).tolist()
            rows.append({"subject": subject.label, "tokens": kind, "effective_rank": rank,
                         "ratio_to_" + subjects[0].label: rank / reference[kind],
                         "singular_values": len(mean), "samples": len(per_sample)})
    truncation: list[dict[str, Any]] = []
    if truncate:
        truncation = _truncation(subjects, samples, tower, layer, truncate, task, eval_config, progress)
    plots = {"rank_curves.png": lambda path: _plot_curves(curves, threshold, path)}
    if truncation:
        plots["rank_truncation.png"] = lambda path: _plot_truncation(truncation, path)
    notes = [
        f"Features: output of block {layer} of the `{tower}` tower, per sample; text and image tokens separately; "
        "text = every real token that is not an image token." if text == "all" else
        "Features (PT-PEFT's): the language model's last layer after its final norm, per sample; image tokens, and "
        "text = [sos, prompt words, eos] (sos: the first real token; eos: the token after the words).",
        "Effective rank = fraction of the (zero-padded) singular values needed for the cumulative normalized "
        f"spectrum, averaged over samples, to reach {threshold}.",
        "Ratios are to the first subject (the base model when it is included).",
    ]
    if truncation:
        notes.append("Truncation: the layer's output cut to its top-r singular directions per sample (prefill only).")
    return Result("rank", rows, {"curves": curves}, plots, notes,
                  {"tower": tower, "layer": layer, "text_features": text, "threshold": threshold,
                   "samples": len(samples),
                   "truncate": list(truncate)}, {"truncation": truncation})


def _truncation(subjects: Sequence[Subject], samples: Sequence[Sample], tower: str, layer: int,
                ranks: Sequence[int], task: str, eval_config: Any, progress: bool) -> list[dict[str, Any]]:
    from dataclasses import replace

    from mmpt.tasks import evaluate_task, main_metric

    config = replace(eval_config, batch_size=1)  # one sample per forward: no padding in the decomposition
    metric = main_metric(task, config)
    out = []
    for subject in subjects:
        loaded = subject.loaded
        spec = loaded.family.tower(loaded.family.resolve([tower])[0])
        clean = evaluate_task(task, loaded.model, loaded.processor, samples, config, progress=progress)
        out.append({"subject": subject.label, "rank": "all", metric: clean.metrics[metric]})
        for r in ranks:
            with truncated_layer(loaded.model, spec.layers, layer, r):
                value = evaluate_task(task, loaded.model, loaded.processor, samples, config, progress=progress)
            out.append({"subject": subject.label, "rank": r, metric: value.metrics[metric]})
    return out


def _plot_curves(curves: dict[str, dict[str, list[float]]], threshold: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = list(dict.fromkeys(k for c in curves.values() for k in c))
    fig, axes = plt.subplots(1, len(kinds), figsize=(5 * len(kinds), 4), squeeze=False)
    for ax, kind in zip(axes[0], kinds, strict=True):
        for label, by_kind in curves.items():
            if kind in by_kind:
                y = by_kind[kind]
                ax.plot([(i + 1) / len(y) for i in range(len(y))], y, label=label)
        ax.axhline(threshold, color="grey", linestyle=":", linewidth=1)
        ax.set(title=f"{kind} tokens", xlabel="fraction of singular values", ylabel="cumulative normalized value",
               ylim=(0, 1.02))
        ax.legend()
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    plt.close(fig)


def _plot_truncation(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = [k for k in rows[0] if k not in ("subject", "rank")][0]
    fig, ax = plt.subplots(figsize=(5, 4))
    for label in dict.fromkeys(r["subject"] for r in rows):
        mine = [r for r in rows if r["subject"] == label and r["rank"] != "all"]
        (line,) = ax.plot([r["rank"] for r in mine], [r[metric] for r in mine], marker="o", label=label)
        for r in rows:
            if r["subject"] == label and r["rank"] == "all":  # the untruncated model, for reference
                ax.axhline(r[metric], color=line.get_color(), linestyle="--", linewidth=1)
    ax.set(xscale="log", xlabel="rank r kept (dashed: all)", ylabel=metric, title="rank truncation")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    plt.close(fig)
