"""Using trained runs: evaluate a config (``mmpt eval``) and answer one question (``mmpt predict``)."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from mmpt import methods, models
from mmpt.config import ConfigError
from mmpt.data import Sample
from mmpt.data.formats.common import text_problem
from mmpt.data.sample import DataError
from mmpt.data.sources import build_data, fill_prompt, prompt_format, with_prompt_format
from mmpt.data.validate import fit_context
from mmpt.integrity import write_manifest
from mmpt.paths import unique_run_dir
from mmpt.runconfig import EvalConfig, load_run_config, load_run_folder_config, model_kwargs, smoke
from mmpt.runfolder import write_text, writing
from mmpt.tasks import evaluate_task, predict_task


def run_methods(run_dir: str | Path) -> list[Path]:
    """The method files of a run, in the order its stages applied them (``best/`` when the run kept one)."""
    run_dir = Path(run_dir)
    config = load_run_folder_config(run_dir)
    names = list(dict.fromkeys(m.name for stage in config.stage_list() for m in stage.methods))
    best = run_dir / "best"
    if best.is_dir():  # the model as it was at the best evaluation (maybe an earlier stage: fewer methods)
        present = [best / f"{n}.safetensors" for n in names if (best / f"{n}.safetensors").is_file()]
        if present:
            return present
    missing = [n for n in names if not (run_dir / f"{n}.safetensors").is_file()]
    if missing:
        raise FileNotFoundError(f"{run_dir} lacks {', '.join(n + '.safetensors' for n in missing)}: the run did not "
                                "finish (resume it with mmpt train --resume)")
    return [run_dir / f"{n}.safetensors" for n in names]


def load_with_run(model: str, run_dir: str | Path | None, **kwargs: Any) -> models.LoadedModel:
    """Load ``model`` and apply the methods trained in ``run_dir`` (checked against the base fingerprint)."""
    loaded = models.load(model, **kwargs)
    loaded.model.to("cuda" if torch.cuda.is_available() else "cpu")
    if run_dir is not None:
        for path in run_methods(run_dir):
            methods.load(loaded, path)
    loaded.model.eval()
    return loaded


def evaluate_config(
    config_path: str | Path | None,
    overrides: list[str] | tuple[str, ...] = (),
    run_dir: str | Path | None = None,
    smoke_mode: bool = False,
    progress: bool = True,
    raw_prompt: bool = False,
) -> dict[str, Any]:
    """Evaluate a config's model (with ``run_dir``'s methods) on its eval data.

    ``config_path`` may be None (or the run folder itself) with ``run_dir``: the run's own config is used. A config
    given with a run must name the run's model and task; its prompts are built with the run's prompt template
    (``"{question} Answer with one word."`` put around a VQAv2 question; said on stderr) unless ``raw_prompt``.
    Results go to a fresh folder: ``<run>/eval-<name>`` with a run, else ``<output_dir>/<name>-eval``; each holds
    ``metrics.json`` and ``predictions.jsonl``.
    """
    if config_path is not None and Path(config_path).is_dir():  # `mmpt eval RUN`
        if run_dir is not None and Path(run_dir).resolve() != Path(config_path).resolve():
            raise ConfigError(f"two runs given: {config_path} and --run {run_dir}; give one")
        config_path, run_dir = None, config_path
    if config_path is None and run_dir is None:
        raise ConfigError("mmpt eval needs a run folder (mmpt eval runs/quickstart) or a CONFIG (zero-shot)")
    if config_path is None:
        load_run_folder_config(run_dir)  # type: ignore[arg-type]  # the folder and its own file, checked as they are
        config = load_run_config(Path(run_dir) / "config.yaml", overrides)  # type: ignore[arg-type]
    else:
        config = load_run_config(config_path, overrides)
        if run_dir is not None:
            run_config = load_run_folder_config(run_dir)
            _check_matches(config, run_config, Path(config_path), Path(run_dir))
            if not raw_prompt:
                data = with_prompt_format(config.data, prompt_format(run_config.data))
                if data != config.data:
                    print(f"mmpt: prompts built with {run_dir}'s template {prompt_format(run_config.data)!r} "
                          f"(not {prompt_format(config.data)!r}; --raw-prompt keeps the config's)", file=sys.stderr)
                    config = replace(config, data=data)
    if smoke_mode:
        config = smoke(config)
    loaded = load_with_run(config.model.name, run_dir, **model_kwargs(config.model))
    _, samples = build_data(config.data, config.seed)
    if not samples:
        raise ConfigError("data: no evaluation samples (give data.eval, or eval_size > 0)")
    samples = fit_context(loaded, samples, config.data.on_error, "data.eval", config.eval.max_new_tokens)
    result = evaluate_task(config.task, loaded.model, loaded.processor, samples, config.eval, progress=progress)
    if run_dir is not None:
        out = unique_run_dir(replace(config, output_dir=str(run_dir), name=f"eval-{config.name}"))
    else:
        out = unique_run_dir(replace(config, name=f"{config.name}-eval"))
    write_text(out / "metrics.json", json.dumps({"run": str(run_dir or ""), **result.metrics}, indent=2))
    write_manifest(out, ["metrics.json"])
    with writing(out / "predictions.jsonl") as f:
        for row in result.rows:
            f.write(json.dumps(row, default=str) + "\n")
    return {"folder": str(out), **result.metrics}


def _check_matches(config: Any, run_config: Any, config_path: Path, run_dir: Path) -> None:
    """A config evaluated with a run must use the run's base model and task (its methods fit nothing else)."""
    for key, given, trained in (("model.name", config.model.name, run_config.model.name),
                                ("task", config.task, run_config.task)):
        if given != trained:
            raise ConfigError(f"{key}: {config_path} says {given!r} but {run_dir} was trained with {trained!r}; "
                              f"evaluate with the run's own config (mmpt eval {run_dir}) or pass {key}={trained}")


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class Predictor:
    """A model (with a run's methods) ready to answer: the run's base model, task and answer candidates.

    Args:
        model: registered model, folder or cached hub id (ignored with ``run_dir``: the run's own base is used).
        run_dir: apply this run's trained methods (its ``best/`` when present).
        task: default the run's task, else ``vqa``.
    """

    def __init__(self, model: str = "mmpt-tiny", run_dir: str | Path | None = None, task: str | None = None,
                 max_new_tokens: int = 32, num_beams: int | None = None, batch_size: int = 8,
                 raw_prompt: bool = False) -> None:
        kwargs: dict[str, Any] = {}
        self.eval_config = EvalConfig(batch_size=batch_size, max_new_tokens=max_new_tokens, num_beams=num_beams)
        self.template = ""  # how the run built its prompts from a question (prompt_format); "" = as given
        if run_dir is not None:  # the run's own base model, task, answer candidates and prompt template
            run_config = load_run_folder_config(run_dir)
            model, kwargs = run_config.model.name, model_kwargs(run_config.model)
            task = task or run_config.task
            self.eval_config = replace(self.eval_config, candidates=run_config.eval.candidates)
            self.template = "" if raw_prompt or task != run_config.task else prompt_format(run_config.data)
            fill_prompt(self.template, "")  # a template with several placeholders: one line now, before loading
        self.task = task or "vqa"
        self.loaded = load_with_run(model, run_dir, **kwargs)

    def prompt(self, text: str) -> str:
        """The prompt the model sees for the user's ``text``: the run's template filled (``"{question} Answer with
        one word."``), its fixed prompt (captions), or ``text`` as given (no run, ``raw_prompt``, JSONL/LLaVA data)."""
        return fill_prompt(self.template, text)

    def __call__(self, samples: list[Sample], progress: bool = False) -> list[str]:
        """Answers for ``samples``, batched: an answer head, ranked candidates or generation, as the run's
        evaluation does it. Each prompt must be valid text and fit the model's context with the tokens to
        generate (one-line :class:`~mmpt.data.sample.DataError` otherwise)."""
        for sample in samples:
            problem = text_problem(sample.prompt)
            if problem:
                raise DataError(f"input {sample.id or sample.image}: the prompt is not valid text: {problem}")
        samples = [replace(s, prompt=self.prompt(s.prompt)) for s in samples]
        samples = fit_context(self.loaded, samples, "raise", "input", self.eval_config.max_new_tokens)
        return predict_task(self.task, self.loaded.model, self.loaded.processor, samples, self.eval_config,
                            progress=progress, label="predict")


def predict_one(
    image: str | Path,
    prompt: str,
    model: str = "mmpt-tiny",
    run_dir: str | Path | None = None,
    task: str | None = None,
    max_new_tokens: int = 32,
    num_beams: int | None = None,
    raw_prompt: bool = False,
) -> str:
    """The model's answer (or caption, box, label) for one image and prompt (put into the run's prompt template
    unless ``raw_prompt``)."""
    if not Path(image).is_file():
        raise FileNotFoundError(f"image {image} not found")
    predictor = Predictor(model, run_dir, task, max_new_tokens, num_beams, batch_size=1, raw_prompt=raw_prompt)
    return predictor([Sample(Path(image), prompt, "")])[0]


def read_inputs(source: str | Path, prompt: str) -> list[Sample]:
    """Samples from a folder of images (each with ``prompt``) or a JSONL file of ``{"image", "prompt"}`` rows
    (images relative to the file; ``prompt`` is the default for rows without one)."""
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"{source} not found; give an image, a folder of images or a .jsonl file of "
                                "{image, prompt} rows")
    if source.is_dir():
        images = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise FileNotFoundError(f"{source} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        return [Sample(p, prompt, "", id=p.name) for p in images]
    if source.suffix != ".jsonl":
        raise ValueError(f"{source}: give an image, a folder of images or a .jsonl file of {{image, prompt}} rows")
    samples = []
    for n, raw in enumerate(source.read_bytes().splitlines(), 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"{source} line {n}: not UTF-8 text (byte {exc.start}); save the file as UTF-8") from None
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            image = source.parent / row["image"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"{source} line {n}: not a JSON object with an 'image' ({exc!r})") from None
        if not image.is_file():
            raise FileNotFoundError(f"{source} line {n}: image {image} not found")
        samples.append(Sample(image, str(row.get("prompt", prompt)), "", id=str(row.get("id", n))))
    return samples


def predict_many(source: str | Path, prompt: str, out: str | Path, progress: bool = True, **predictor: Any) -> Path:
    """Answer every image of a folder or JSONL file in batches; write ``out`` (JSONL: id, image, prompt,
    prediction). An existing ``out`` is never overwritten."""
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists; mmpt never overwrites predictions: give another --out")
    samples = read_inputs(source, prompt)
    answers = Predictor(**predictor)(samples, progress=progress)
    out.parent.mkdir(parents=True, exist_ok=True)
    with writing(out) as f:
        for sample, answer in zip(samples, answers, strict=True):
            f.write(json.dumps({"id": sample.id, "image": str(sample.image), "prompt": sample.prompt,
                                "prediction": answer}) + "\n")
    return out


def chat(predictor: Predictor, image: str | Path | None, read: Any = input, write: Any = print) -> None:
    """An interactive conversation about an image: each question sees the earlier turns. Commands:
    ``/image PATH`` (a new image, a new conversation), ``/reset``, ``/quit`` (or end of input)."""
    history: list[tuple[str, str]] = []
    current = Path(image) if image is not None else None
    write("mmpt chat: ask about the image; /image PATH, /reset, /quit")
    template = getattr(predictor, "template", "")  # a Predictor, or any callable on samples
    if template:
        write(f"(each question goes into the run's prompt template {template!r}; --raw-prompt sends it as typed)")
    while True:
        try:
            line = read("> ").strip()
        except EOFError:
            return
        if not line:
            continue
        if line in ("/quit", "/exit"):
            return
        if line == "/reset":
            history = []
            continue
        if line.startswith("/image"):
            path = Path(line.removeprefix("/image").strip())
            if not path.is_file():
                write(f"no such image: {path}")
                continue
            current, history = path, []
            continue
        if current is None:
            write("give an image first: /image PATH")
            continue
        answer = predictor([Sample(current, line, "", context=tuple(history))])[0]
        history.append((line, answer))
        write(answer)
