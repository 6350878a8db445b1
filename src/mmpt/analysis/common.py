"""What every analysis shares: the models it compares, the samples it reads, where tokens are, and its output.

An analysis compares **subjects**: the base model (the reference) and one model per run folder (the base with
the run's trained methods applied). It reads evaluation samples of the first run's config (or a given config),
and returns a :class:`Result`, which :func:`write_result` turns into a folder of JSON + CSV + PNG + markdown that
``mmpt report`` can collect.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmpt.config import ConfigError
from mmpt.data import Sample
from mmpt.models import LoadedModel
from mmpt.models.family import get_submodule
from mmpt.paths import fresh_dir
from mmpt.report import markdown_table, write_rows
from mmpt.runconfig import RunConfig, load_run_config, load_run_folder_config, model_kwargs
from mmpt.runfolder import refuse_links_in_run, write_text

PROMPT_METHODS = ("prompt", "deep_prompt", "m2pt", "visual_prompt")
"""Methods that add tokens to a tower's sequence (their positions are not the input's tokens)."""


@dataclass
class Subject:
    """One model an analysis looks at: ``label`` (``base`` or the run folder's name), the loaded model, its run
    folder (None for the base) and the methods applied from the run, by name."""

    label: str
    loaded: LoadedModel
    run_dir: Path | None = None
    methods: dict[str, Any] = field(default_factory=dict)


@dataclass
class Result:
    """What an analysis found.

    Attributes:
        name: the analysis (``rank``, ``fgsm``, ``ablate``, ``similarity``).
        rows: the table (one dict per row) written as ``<name>.csv`` and shown in the markdown.
        data: everything else worth keeping (curves, per-layer values), written with ``rows`` as ``<name>.json``.
        plots: PNG file name -> a function drawing it into a path.
        notes: markdown sentences explaining how the numbers were obtained.
        settings: the options the analysis ran with.
        tables: further tables by title (written as ``<name>_<title>.csv`` and shown below the main one).
    """

    name: str
    rows: list[dict[str, Any]]
    data: dict[str, Any] = field(default_factory=dict)
    plots: dict[str, Callable[[Path], None]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def section(result: Result) -> str:
    """The markdown section of a result: settings, table, plots, notes."""
    settings = ", ".join(f"{k}={v}" for k, v in result.settings.items())
    plots = "".join(f"![{Path(name).stem}]({name})\n\n" for name in result.plots)
    notes = "".join(f"- {n}\n" for n in result.notes)
    tables = "".join(f"{title}:\n\n{markdown_table(rows)}\n\n" for title, rows in result.tables.items() if rows)
    return (f"## Analysis: {result.name}\n\nSettings: {settings}\n\n{markdown_table(result.rows)}\n\n{tables}"
            f"{plots}{notes}")


def write_result(result: Result, out_dir: str | Path) -> Path:
    """Write ``result`` into a fresh folder ``out_dir`` (``-2``... when taken): ``analysis.json`` (kind and
    settings), ``<name>.json``, ``<name>.csv``, its PNGs, ``<name>.md``; plus ``manifest.json``. Returns it."""
    from mmpt.integrity import write_manifest

    out = fresh_dir(Path(out_dir))
    write_text(out / "analysis.json", json.dumps({"analysis": result.name, "settings": result.settings}, indent=2))
    write_text(out / f"{result.name}.json",
               json.dumps({"rows": result.rows, **result.tables, **result.data}, indent=2, default=str))
    written = ["analysis.json", f"{result.name}.json"]
    for file, rows in ((f"{result.name}.csv", result.rows),
                       *((f"{result.name}_{t.replace(' ', '_')}.csv", r) for t, r in result.tables.items() if r)):
        write_rows(out / file, rows)
        written.append(file)
    for name, draw in result.plots.items():
        draw(out / name)
        written.append(name)
    write_text(out / f"{result.name}.md", section(result))
    write_manifest(out, [*written, f"{result.name}.md"])
    return out


def load_subjects(runs: Sequence[str | Path], model: str | None = None, base: bool = True,
                  model_settings: dict[str, Any] | None = None) -> list[Subject]:
    """The base model (unless ``base`` is False) and one subject per run folder, all on one base model.

    ``model`` (and its load settings, ``model_settings``: see :func:`mmpt.runconfig.model_kwargs`) is needed only
    without runs; runs must share their base model (their methods fit nothing else) and bring their own settings.
    """
    from mmpt import methods
    from mmpt.inference import load_with_run, run_methods

    configs = [load_run_folder_config(r) for r in runs]
    names = {c.model.name for c in configs}
    if len(names) > 1:
        raise ConfigError(f"the runs were trained on different base models ({', '.join(sorted(names))}); "
                          "analyze runs of one base model together")
    if names:
        if model is not None and model not in names:
            raise ConfigError(f"--model {model} but the runs were trained on {names.pop()}; leave --model out")
        model, kwargs = configs[0].model.name, model_kwargs(configs[0].model)
    elif model is None:
        raise ConfigError("give run folders, or --model (and --config for the data) to analyze a base model alone")
    else:
        kwargs = dict(model_settings or {})
    subjects = [Subject("base", load_with_run(model, None, **kwargs))] if base else []
    for run in runs:
        run_dir = Path(run)
        loaded = load_with_run(model, None, **kwargs)
        applied = {path.stem: methods.load(loaded, path) for path in run_methods(run_dir)}
        loaded.model.eval()
        subjects.append(Subject(run_dir.name, loaded, run_dir, applied))
    if not subjects:
        raise ConfigError("nothing to analyze: give run folders or keep the base model")
    return subjects


def analysis_config(runs: Sequence[str | Path], config: str | Path | None, overrides: Sequence[str] = (),
                    smoke_mode: bool = False) -> RunConfig:
    """The config whose eval data and eval settings an analysis uses: ``config`` if given, else the first run's."""
    from mmpt.runconfig import smoke

    if config is None and not runs:
        raise ConfigError("give run folders or --config (its eval data is what the analysis reads)")
    for run in runs:
        refuse_links_in_run(Path(run))
    path = Path(config) if config is not None else Path(runs[0]) / "config.yaml"
    loaded = load_run_config(path, list(overrides))
    return smoke(loaded) if smoke_mode else loaded


def analysis_samples(config: RunConfig, count: int) -> list[Sample]:
    """The first ``count`` evaluation samples of ``config``'s data (seeded as training does)."""
    from mmpt.data.sources import build_data

    if count < 1:
        raise ConfigError(f"--samples must be at least 1, got {count}")
    data = replace(config.data, eval_size=count if config.data.eval_size is None else min(count, config.data.eval_size))
    _, samples = build_data(data, config.seed)
    if not samples:
        raise ConfigError("the config has no evaluation samples to analyze (give data.eval or eval_size > 0)")
    return samples[:count]


def image_token_id(model: nn.Module) -> int | None:
    """The placeholder id whose positions hold image features in the LM's sequence, if the model has one."""
    for owner in (model, getattr(model, "config", None)):
        for name in ("image_token_id", "image_token_index"):
            value = getattr(owner, name, None)
            if isinstance(value, int):
                return value
    return None


def token_masks(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(image, text) boolean masks over the input sequence of ``batch``: image placeholders, and the other real
    (not padding) tokens. Raises when the sequence holds no image features (e.g. Mllama reads images through
    cross-attention): analyze the vision tower there."""
    ids = batch["input_ids"]
    token = image_token_id(model)
    if token is None:
        raise ValueError(f"{type(model).__name__} declares no image token id: mmpt cannot tell which positions of the "
                         "language model's sequence are image features; analyze --tower vision instead")
    image = ids == token
    real = batch.get("attention_mask", torch.ones_like(ids)).bool()
    per_sample = image.sum(-1)
    if bool((per_sample < 2).any()):
        raise ValueError(f"the language model's sequence holds {int(per_sample.min())} image token(s) for a sample: its "
                         "image features do not enter that sequence (e.g. cross-attention); use --tower vision")
    return image & real, real & ~image


@contextmanager
def captured_output(root: nn.Module, path: str, index: int) -> Iterator[list[torch.Tensor]]:
    """Collect the hidden states (first output) of block ``index`` of the ``ModuleList`` at ``path`` per call."""
    found = list(get_submodule(root, path))
    if not -len(found) <= index < len(found):
        raise ValueError(f"layer {index} does not exist: the tower has layers 0..{len(found) - 1}")
    outputs: list[torch.Tensor] = []

    def hook(module: nn.Module, args: Any, output: Any) -> None:
        hidden = output[0] if isinstance(output, tuple | list) else output
        if not isinstance(hidden, torch.Tensor):
            raise TypeError(f"{type(module).__name__} returned {type(hidden).__name__}, not hidden states")
        outputs.append(hidden.detach())

    handle = found[index].register_forward_hook(hook)
    try:
        yield outputs
    finally:
        handle.remove()


def tower_features(subject: Subject, batch: dict[str, torch.Tensor], tower: str, layer: int
                   ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Hidden states of ``tower``'s block ``layer`` for ``batch`` as ``(features, image_mask, text_mask)``.

    For the ``lm`` (or an encoder-decoder's encoder) tower, the masks say which positions are image features and
    which are text; positions added by prompt methods are dropped. For a vision tower every token is an image token
    (``text_mask`` is None)."""
    loaded = subject.loaded
    name = loaded.family.resolve([tower])[0]
    spec = loaded.family.tower(name)
    if spec.kind == "cnn":
        raise ValueError(f"tower '{name}' of {loaded.family.name} is a CNN: it has no token features to analyze")
    if spec.packed:
        raise ValueError(f"tower '{name}' of {loaded.family.name} packs all images into one sequence; analyze the lm")
    with torch.no_grad(), captured_output(loaded.model, spec.layers, layer) as outputs:
        loaded.model(**batch, use_cache=False)
    if not outputs:
        raise RuntimeError(f"layer {layer} of tower '{name}' was not called by the model's forward")
    features = outputs[0].float()
    if name not in _lm_towers(loaded):
        return features, None, None
    image, text = token_masks(loaded.model, batch)
    extra = features.shape[1] - image.shape[1]
    if extra:
        adds = [n for n in subject.methods if n in PROMPT_METHODS]
        if extra < 0 or not adds:
            raise RuntimeError(f"tower '{name}' returned {features.shape[1]} positions for {image.shape[1]} input tokens "
                               "and no prompt method explains the difference: mmpt cannot align them")
        features = drop_prompt_columns(subject, features, extra)
    return features, image, text


def drop_prompt_columns(subject: Subject, features: torch.Tensor, extra: int) -> torch.Tensor:
    """``features`` of the LM's sequence without the ``extra`` columns prompt methods added: the first ones, or,
    where a prompt was put after each row's padding (towers with convolution / SSM mixers), the columns that
    prompt method recorded at this forward."""
    from mmpt.methods.prompt import PromptMethod

    found: list[PromptMethod] = []
    for method in subject.methods.values():
        for module in method.modules():
            found += [m for m in [module, *getattr(module, "_inner_list", [])] if isinstance(m, PromptMethod)]
    adjacent = [m for m in found if m._adjacent_now]
    if not adjacent:
        return features[:, extra:]  # prompt tokens come first (see mmpt.methods.prompt)
    keep = adjacent[0].real_columns()
    if len(found) > 1 or keep is None or keep.shape[1] != features.shape[1] - extra:
        raise RuntimeError("prompts placed after each row's padding by several methods (or none at this forward): "
                           "mmpt cannot tell which columns are the input's; analyze one prompt method at a time")
    return features.gather(1, keep[..., None].expand(-1, -1, features.shape[-1]))


def _lm_towers(loaded: LoadedModel) -> list[str]:
    try:
        return loaded.family.resolve(["lm"])
    except ValueError:
        return []


def batches(subject: Subject, samples: Sequence[Sample], batch_size: int,
            answers: bool = False) -> Iterator[tuple[list[Sample], dict[str, torch.Tensor]]]:
    """``(chunk, model inputs)`` for consecutive chunks of ``samples``, on the model's device (with ``answers``,
    the targets too, and ``labels`` for the loss)."""
    from mmpt.tasks.common import open_image

    processor = subject.loaded.processor
    if processor is None:
        raise ValueError(f"{subject.loaded.name} has no processor (a random model built from a config): pass model "
                         "inputs to the analysis functions directly")
    device = next(subject.loaded.model.parameters()).device
    for start in range(0, len(samples), batch_size):
        chunk = list(samples[start : start + batch_size])
        batch = processor([open_image(s.image, s) for s in chunk], [s.prompt for s in chunk],
                          [s.target for s in chunk] if answers else None)
        yield chunk, {k: v.to(device) for k, v in batch.items()}
