"""``mmpt analyze similarity``: what learned prefixes resemble (PT-PEFT Fig. 7).

Per layer with a prefix, the cosine similarity between each learned prefix key and the keys of the sample's image
tokens and of its word (text) tokens. Keys are compared as the layer's key projection gives them (all key/value
heads together), before any rotary position embedding: prefix keys carry no position either. The table holds,
per layer, the mean and the max similarity to image tokens and to word tokens (over prefix positions, tokens and
samples), and the similarity among the prefix keys themselves (``prefix_mean`` / ``prefix_max`` of the absolute
cosine over distinct prefix positions: PT-PEFT reports all 16 below 0.09); the heatmaps show the mean per
(layer, prefix position).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from mmpt.analysis.common import Result, Subject, batches, token_masks
from mmpt.data import Sample
from mmpt.methods.kv import projections
from mmpt.runfolder import save_figure


def prefix_keys(method: Any, tower: str) -> tuple[torch.Tensor, list[nn.Module]]:
    """The prefix keys of ``tower`` as ``(layers, length, kv_heads * head_dim)`` and the attention modules (one per
    layer) that read them."""
    encoders = getattr(method, "encoders", None)
    if encoders is None or tower not in encoders:
        have = ", ".join(encoders) if encoders is not None else "none"
        raise ValueError(f"no prefix on tower '{tower}' (prefixes on: {have})")
    index = list(encoders).index(tower)
    with torch.no_grad():
        value = encoders[tower]().detach().float()  # (layers, 2, heads, length, head_dim); a Parameter as is
    keys = value[:, 0].permute(0, 2, 1, 3).flatten(2)  # (layers, length, heads * head_dim)
    return keys, method.injections[index].modules


@contextmanager
def captured_keys(modules: Sequence[nn.Module]) -> Iterator[list[list[torch.Tensor]]]:
    """The key projection's output of each module, per call: ``captured[layer]`` is a list of (B, T, kv width)."""
    captured: list[list[torch.Tensor]] = [[] for _ in modules]
    handles = []
    for i, module in enumerate(modules):
        k_proj = key_projection(module)
        handles.append(k_proj.register_forward_hook(lambda m, a, out, i=i: captured[i].append(out.detach().float())))
    try:
        yield captured
    finally:
        for h in handles:
            h.remove()


def key_projection(module: nn.Module) -> nn.Module:
    """The key projection of an attention module, as the model calls it (a LoRA-wrapped one included: the keys
    then carry the LoRA update, as the model's own do)."""
    for name in ("k_proj", "key"):
        found = getattr(module, name, None)
        if isinstance(found, nn.Module):
            return found
    projections(module)  # raises the error naming what the module has instead
    raise AssertionError("unreachable")


def key_similarity(prefix: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every prefix key ``(P, D)`` with every token key ``(T, D)``: ``(P, T)``."""
    return torch.nn.functional.normalize(prefix, dim=-1) @ torch.nn.functional.normalize(tokens, dim=-1).T


def prefix_self_similarity(keys: torch.Tensor) -> tuple[float, float]:
    """Mean and max absolute cosine similarity between distinct prefix keys ``(P, D)`` of one layer (0 for P = 1)."""
    if keys.shape[0] < 2:
        return 0.0, 0.0
    sim = key_similarity(keys, keys).double().abs()
    off = sim[~torch.eye(keys.shape[0], dtype=torch.bool)]
    return float(off.mean()), float(off.max())


def analyze_similarity(subjects: Sequence[Subject], samples: Sequence[Sample], tower: str = "lm",
                       batch_size: int = 8, progress: bool = True) -> Result:
    """Prefix-key similarities of every subject with a ``prefix`` method on ``tower``."""
    rows: list[dict[str, Any]] = []
    maps: dict[str, dict[str, list[list[float]]]] = {}
    for subject in subjects:
        method = subject.methods.get("prefix")
        if method is None:
            continue
        name = subject.loaded.family.resolve([tower])[0]
        if name not in subject.loaded.family.resolve(["lm"]):
            raise ValueError(f"similarity compares prefix keys with the image and word tokens of the language model's "
                             f"sequence; tower '{tower}' is not it (use --tower lm)")
        keys, modules = prefix_keys(method, name)
        sums = {k: torch.zeros(keys.shape[:2], dtype=torch.float64) for k in ("image", "text")}
        counts = {"image": 0, "text": 0}
        peak = {k: torch.full((keys.shape[0],), -1.0, dtype=torch.float64) for k in ("image", "text")}
        bar = tqdm(total=len(samples), desc=f"similarity {subject.label}", unit="sample", disable=not progress,
                   leave=False)
        for chunk, batch in batches(subject, samples, batch_size):
            image, text = token_masks(subject.loaded.model, batch)
            with torch.no_grad(), captured_keys(modules) as captured:
                subject.loaded.model(**batch, use_cache=False)
            for layer, calls in enumerate(captured):
                token_keys = calls[0][:, -image.shape[1]:]  # positions added by prompt methods come first
                for i in range(len(chunk)):
                    for kind, mask in (("image", image[i]), ("text", text[i])):
                        sim = key_similarity(keys[layer], token_keys[i][mask]).double().cpu()
                        sums[kind][layer] += sim.sum(-1)
                        peak[kind][layer] = max(peak[kind][layer], sim.max())
                        if layer == 0:
                            counts[kind] += int(mask.sum())
            bar.update(len(chunk))
        bar.close()
        means = {k: sums[k] / max(counts[k], 1) for k in sums}  # (layers, length)
        maps[subject.label] = {k: v.tolist() for k, v in means.items()}
        for layer in range(keys.shape[0]):
            self_mean, self_max = prefix_self_similarity(keys[layer])
            rows.append({"subject": subject.label, "layer": layer,
                         "image_mean": float(means["image"][layer].mean()), "image_max": float(peak["image"][layer]),
                         "text_mean": float(means["text"][layer].mean()), "text_max": float(peak["text"][layer]),
                         "prefix_mean": self_mean, "prefix_max": self_max})
    if not rows:
        raise ValueError("none of the runs has a prefix method: similarity compares learned prefix keys")
    notes = ["Keys: the layer's key projection output (all key/value heads), before rotary position embeddings.",
             "mean: over prefix positions, tokens of that kind and samples; max: the largest single similarity.",
             "prefix_mean / prefix_max: |cosine| between distinct prefix keys of a layer (PT-PEFT: all below 0.09 for "
             "16 prefix tokens)."]
    return Result("similarity", rows, {"heatmaps": maps},
                  {"similarity.png": lambda path: _plot(maps, path)}, notes,
                  {"tower": tower, "samples": len(samples)})


def _plot(maps: dict[str, dict[str, list[list[float]]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(maps), 2, figsize=(9, 3.5 * len(maps)), squeeze=False)
    scale = max(0.05, max(abs(v) for m in maps.values() for k in m.values() for row in k for v in row))
    for row, (label, by_kind) in zip(axes, maps.items(), strict=True):
        for ax, kind in zip(row, ("image", "text"), strict=True):  # one symmetric colour scale for all panels
            shown = ax.imshow(by_kind[kind], aspect="auto", cmap="coolwarm", vmin=-scale, vmax=scale)
            ax.set(title=f"{label}: prefix keys vs {kind} tokens", xlabel="prefix position", ylabel="layer")
            fig.colorbar(shown, ax=ax)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    plt.close(fig)
