"""The config of a run (``mmpt train CONFIG``): model, data, method, training and evaluation sections."""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from mmpt.config import (
    MAX_BATCH,
    MAX_SAMPLES,
    MAX_STEPS,
    MAX_TOKENS,
    ConfigError,
    apply_overrides,
    check,
    check_range,
    from_dict,
    read_yaml,
    show,
)
from mmpt.data.keys import OPTIONAL_KEYS, READER_KEYS
from mmpt.method_configs import MethodConfig
from mmpt.runfolder import refuse_links_in_run

# A run name is one folder name: these characters only, at most 100 of them, not starting with '.' or '-'.
NAME_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+=-]*")
NAME_MAX = 100
NAME_RULE = "1 to 100 letters, digits, '.', '_', '-', '+' or '=' (not starting with '.' or '-')"


def projector_checkpoint_models() -> list[str]:
    """Registered models whose builder loads a ``projector_checkpoint`` (a keyword it names; ``**kwargs`` is not
    enough: those go elsewhere, e.g. to the LM config, and would be ignored)."""
    from mmpt.models import list_models

    users = []
    for entry in list_models():
        try:
            params = inspect.signature(entry.builder).parameters
        except (TypeError, ValueError):
            continue
        param = params.get("projector_checkpoint")
        if param is not None and param.kind is not inspect.Parameter.VAR_KEYWORD:
            users.append(entry.name)
    return users


@dataclass
class ModelConfig:
    """Which model to load. ``name`` is a registered model (``mmpt models`` lists them), a local checkpoint folder
    or a cached hub id. ``projector_checkpoint`` replaces the shipped projector weights; only models that load
    one accept it (:func:`projector_checkpoint_models`: ``mmpt-tiny``, ``mmpt-tiny-gemma3``), any other model refuses it."""

    name: str = "mmpt-tiny"
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"
    projector_checkpoint: str = ""

    def validate(self) -> None:
        check(bool(self.name.strip()), "name: empty; give a registered model (mmpt models lists them, e.g. "
              "mmpt-tiny), a local checkpoint folder or a cached hub id")

    def check_registered(self) -> None:
        """The checks that need the model registry (heavy imports): called by :meth:`RunConfig.validate`, after
        every other key of the config is checked, so those errors answer first."""
        from mmpt.models import list_models

        entry = next((e for e in list_models() if e.name == self.name), None)
        check(entry is None or not entry.not_runnable,
              f"name: {show(self.name)} cannot be trained or evaluated from a config: {entry and entry.not_runnable}")
        if self.projector_checkpoint:
            users = projector_checkpoint_models()
            check(self.name in users,
                  f"projector_checkpoint: model {show(self.name)} loads no projector checkpoint (models that do: "
                  f"{', '.join(users) or 'none'}), got {show(self.projector_checkpoint)}; remove "
                  "model.projector_checkpoint or use one of those models")


FORMATS = ("coco-karpathy", "flickr30k-karpathy", "vqav2", "snli-ve", "refcoco", "llava", "jsonl", "hf")
DATASETS = ("easy-vqa", "easy-vqa-captions", "files")


@dataclass
class SourceConfig:
    """Files of one split in a format on disk (``docs/data_formats.md`` shows each format's keys).

    Attributes:
        format: ``coco-karpathy``, ``flickr30k-karpathy``, ``vqav2``, ``snli-ve``, ``refcoco``, ``llava``, ``jsonl``,
            ``hf`` (a Hugging Face dataset: :mod:`mmpt.data.formats.hf`).
        path: the main file (Karpathy JSON, SNLI-VE / generic JSONL, LLaVA JSON), or for ``hf`` a folder saved with
            ``save_to_disk``, a folder of data files, or a hub id in the local cache.
        images: the image folder paths in the files are relative to.
        split: Karpathy split (``train`` includes ``restval``) or RefCOCO split (``val``, ``testA``...).
        questions / annotations: VQAv2's two files (no annotations for test-dev).
        refs / instances: RefCOCO's ``refs(unc).p`` and ``instances.json``.
        prompt_template: how the record's text becomes the prompt (empty: the reader's default).
        limit: keep the first N samples (null: all).
        allow_pickle: RefCOCO: read a ``refs`` pickle from a trusted source (restricted unpickler); else use a ``.json``.
        columns: ``hf``: Sample field -> column name (``image``, ``question``, ``answers``, ``caption``, ``box``,
            ``id``); unmapped fields use their own name.
        box_format: ``hf``: ``xyxy`` (pixels) or ``xywh`` (COCO's ``[x, y, w, h]``).
    """

    format: Literal["coco-karpathy", "flickr30k-karpathy", "vqav2", "snli-ve", "refcoco", "llava", "jsonl", "hf"] = "jsonl"
    path: str = ""
    images: str = ""
    split: str = ""
    questions: str = ""
    annotations: str = ""
    refs: str = ""
    instances: str = ""
    prompt_template: str = ""
    limit: int | None = None
    allow_pickle: bool = False
    columns: dict[str, str] = field(default_factory=dict)
    box_format: Literal["xyxy", "xywh"] = "xyxy"

    def validate(self) -> None:
        needs = [k for k in READER_KEYS[self.format] if (self.format, k) not in OPTIONAL_KEYS]
        missing = [k for k in needs if not getattr(self, k)]
        check(not missing, f"format {self.format} needs {', '.join(needs)}; missing {', '.join(missing)}")
        check(self.limit is None or self.limit > 0, f"limit: must be positive or null, got {self.limit}")


@dataclass
class DataConfig:
    """Training and evaluation data.

    Attributes:
        dataset: ``easy-vqa`` (questions), ``easy-vqa-captions`` (one caption per image, plus the captioned
            scikit-image photos when ``include_photos``), ``files`` (``train`` / ``eval`` below), or
            ``hf:<name or folder>`` (a Hugging Face dataset with the default column names: its ``train`` split, and
            ``validation``, ``val`` or ``test`` for evaluation; VQA prompts use ``prompt_template``).
        train / eval: the files to read when ``dataset: files`` (see :class:`SourceConfig`).
        on_error: ``raise`` stops at the first malformed record or missing image (naming file and record);
            ``skip`` leaves such records out and reports how many.
        train_size / eval_size: samples kept after a seeded shuffle (null keeps all).
        question_types: easy-VQA types used for training (``color``, ``shape``, ``yes_no``).
        eval_question_types: types used for evaluation (defaults to all three).
        prompt_template: turns an easy-VQA question into the prompt; ``{question}`` is replaced.
    """

    dataset: str = "easy-vqa"
    train: SourceConfig | None = None
    eval: SourceConfig | None = None
    on_error: Literal["raise", "skip"] = "raise"
    train_size: int | None = 2000
    eval_size: int | None = 200
    question_types: list[str] = field(default_factory=lambda: ["color", "shape", "yes_no"])
    eval_question_types: list[str] = field(default_factory=lambda: ["color", "shape", "yes_no"])
    prompt_template: str = "{question} Answer with one word."
    include_photos: bool = True

    def validate(self) -> None:
        check(self.dataset in DATASETS or (self.dataset.startswith("hf:") and len(self.dataset) > 3),
              f"dataset: must be one of {', '.join(DATASETS)} or hf:<name or folder>, got {show(self.dataset)}")
        check_range(self, "train_size", 1, MAX_SAMPLES)
        check_range(self, "eval_size", 0, MAX_SAMPLES)
        for split in ("train", "eval"):
            source = getattr(self, split)
            if source is not None:  # SourceConfig.validate checks limit > 0; the cap is checked here
                check_range(source, "limit", 1, MAX_SAMPLES, label=f"{split}.limit")
        check("{question}" in self.prompt_template,
              f"prompt_template: must contain {{question}}, got {show(self.prompt_template)}; "
              "e.g. '{question} Answer with one word.'")
        for key in ("question_types", "eval_question_types"):
            bad = set(getattr(self, key)) - {"color", "shape", "yes_no"}
            check(not bad, f"{key}: unknown type(s) {sorted(bad)}; use color, shape, yes_no")
        if self.dataset == "files":
            check(self.train is not None or self.eval is not None,
                  "dataset: 'files' needs data.train and/or data.eval, e.g. {format: vqav2, questions: ..., ...}")
        else:
            check(self.train is None and self.eval is None,
                  f"train/eval: files are read only with dataset: files (dataset is {self.dataset})")


@dataclass
class TrainConfig:
    """Optimization. The schedule warms up linearly for ``warmup_steps`` (or ``warmup_ratio`` of the steps), then
    decays.

    ``objective``: ``lm`` (cross-entropy on the answer tokens), ``classify`` (cross-entropy of an
    ``answer_head`` method over its answer list), or ``scst`` (self-critical training with a CIDEr-D reward,
    captioning; usually a second stage after ``lm``): ``scst_samples`` captions sampled per image, rewarded by
    CIDEr-D (document frequencies of the training references) minus a ``greedy`` (Rennie et al.) or ``mean``
    (of the other samples) baseline.

    ``report_to``: trackers of the run (the top-level ``train`` section's): ``tensorboard``, ``wandb``, ``mlflow``,
    ``csv`` (``log.csv`` is always written); one step axis, optimizer steps over the whole run (:mod:`mmpt.tracking`).

    ``precision``: ``auto`` (bf16 where the device computes it natively, else fp32: see :mod:`mmpt.precision`),
    ``fp32``, ``bf16`` or ``fp16`` (autocast through Accelerate).

    ``cache_frozen_towers``: keep a frozen, unhooked vision tower's features per image and serve them again
    (exact; mmpt's own VLMs; at most 2 GiB: :mod:`mmpt.models.towers`). ``group_by_length``: batches of samples
    of similar length (less padding where lengths vary: captions, conversations; :mod:`mmpt.data.batching`).
    """

    epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-2
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.99)
    warmup_ratio: float = 0.05
    warmup_steps: int | None = None
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    grad_clip: float | None = 1.0
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    objective: Literal["lm", "classify", "scst"] = "lm"
    scst_samples: int = 5
    scst_baseline: Literal["greedy", "mean"] = "greedy"
    scst_max_new_tokens: int = 20
    num_workers: int = 0
    log_every: int = 10
    eval_every: int | None = None
    save_every: int | None = None
    report_to: list[str] = field(default_factory=lambda: ["tensorboard", "csv"])
    cache_frozen_towers: bool = True
    group_by_length: bool = False

    def validate(self) -> None:
        from mmpt.tracking import TRACKERS, missing_packages

        unknown = [n for n in self.report_to if n not in TRACKERS]
        check(not unknown, f"report_to: unknown tracker(s) {unknown}; choose from {', '.join(TRACKERS)}")
        missing = missing_packages(self.report_to)
        check(not missing, f"report_to: {', '.join(missing)} is not installed; pip install {' '.join(missing)} or "
                           "leave it out of train.report_to")
        check_range(self, "epochs", 1, 10**6)
        check_range(self, "max_steps", 1, MAX_STEPS)
        check_range(self, "batch_size", 1, MAX_BATCH)
        check_range(self, "grad_accum", 1, MAX_BATCH)
        check_range(self, "lr", 0, 10, open_low=True, fix="use a learning rate such as 1e-3")
        check_range(self, "weight_decay", 0, 10)
        check_range(self, "betas", 0, 1, open_high=True, fix="e.g. betas: [0.9, 0.999]")
        check_range(self, "warmup_ratio", 0, 1, open_high=True)
        check_range(self, "warmup_steps", 0, MAX_STEPS)
        check_range(self, "grad_clip", 0, 10**6, open_low=True, fix="use a max gradient norm such as 1.0, or null "
                    "for no clipping")
        check_range(self, "scst_samples", 1, 100)
        check(self.scst_samples >= (2 if self.scst_baseline == "mean" else 1),
              f"scst_samples: must be >= 2 with scst_baseline: mean, got {self.scst_samples}; sample more captions "
              "or use scst_baseline: greedy")
        check_range(self, "scst_max_new_tokens", 1, MAX_TOKENS)
        check_range(self, "num_workers", 0, 256)
        for key in ("log_every", "eval_every", "save_every"):
            check_range(self, key, 1, MAX_STEPS)


@dataclass
class EvalConfig:
    """Evaluation (what is measured depends on the run's ``task``; ``docs/configs.md`` lists the metrics).

    Attributes:
        batch_size: samples per generation batch.
        max_new_tokens: generation length (captions and boxes need more than one-word answers).
        num_beams: beam size; null means the task's default (5 for captions as in OFA, else 1 = greedy).
        candidates: rank these answers by likelihood instead of generating (OFA's all-candidate evaluation):
            a list, or a text file with one answer per line. Visual entailment defaults to yes/maybe/no.
        candidate_batch_size: candidates scored in one forward pass; the image and prompt are computed once per
            sample and shared by all (see ``mmpt.tasks.vqa``), so this can be much larger than ``batch_size``
            (each candidate holds a copy of the prompt's KV cache: chunks are also capped to 40% of free GPU
            memory). Processors that cannot reuse the prompt (BLIP) rank ``batch_size`` full passes at a time.
        before: also evaluate before training (zero-shot).
        metric: the metric that selects the best checkpoint (null: the task's main metric).
        spice: also compute SPICE for captions (needs Stanford CoreNLP; skipped with a warning when missing).
        mme: score yes/no answers MME-style (accuracy and accuracy+ per ``kind`` and image).
    """

    batch_size: int = 16
    max_new_tokens: int = 8
    num_beams: int | None = None
    candidates: list[str] | str | None = None
    candidate_batch_size: int = 128
    before: bool = True
    metric: str | None = None
    spice: bool = False
    mme: bool = False

    def validate(self) -> None:
        check_range(self, "batch_size", 1, MAX_BATCH)
        check_range(self, "max_new_tokens", 1, MAX_TOKENS)
        check_range(self, "num_beams", 1, 100, fix="use a beam size such as 5, or null for the task's default")
        check_range(self, "candidate_batch_size", 1, MAX_BATCH)
        if isinstance(self.candidates, str):
            check(0 < len(self.candidates) <= 1024 and "\n" not in self.candidates,
                  f"candidates: a string names a file of answers (one per line), got {show(self.candidates)}; give "
                  "the answers as a list ([yes, no, ...]) or the path of such a file")
        elif self.candidates is not None:
            check(bool(self.candidates), "candidates: an empty list; give answers to rank, or null to generate")


def _default_method() -> MethodConfig:
    from mmpt.methods import PrefixConfig

    return PrefixConfig()


@dataclass
class StageConfig:
    """One stage of a run: the methods it trains and its optimization settings.

    Methods applied in an earlier stage stay in the model; listing one again (same ``name``) keeps training
    it — PT-PEFT's stage 2 is ``methods: [prefix, lora]``. Keys of ``train`` not given here come from the
    run's top-level ``train`` section.
    """

    name: str = "stage"
    methods: list[MethodConfig] = field(default_factory=lambda: [_default_method()])
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> None:
        check(bool(self.methods), "methods: list at least one method, e.g. [{name: prefix}]")
        names = [m.name for m in self.methods]
        check(len(set(names)) == len(names), f"methods: each method once per stage, got {names}")


@dataclass
class RunConfig:
    """A whole run. ``output_dir/name`` receives its files; an existing run folder is never overwritten.

    ``task`` picks the evaluation: ``vqa`` (answers), ``caption``, ``ve`` (visual entailment), ``refexp``
    (referring expressions: boxes as text) or ``instruct`` (instruction following, optionally MME-style).

    Give either ``method`` (a single stage) or ``stages`` (a list run in order, ``rounds`` times).
    """

    name: str = "run"
    output_dir: str = "runs"
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    task: Literal["vqa", "caption", "ve", "refexp", "instruct"] = "vqa"
    method: MethodConfig | None = None
    stages: list[StageConfig] = field(default_factory=list)
    rounds: int = 1
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def validate(self) -> None:
        check(len(self.name) <= NAME_MAX and NAME_PATTERN.fullmatch(self.name) is not None,
              f"name: must be {NAME_RULE}, got {show(self.name)}; e.g. name: vqa-prefix-16")
        self._validate_output_dir()
        check_range(self, "seed", 0, 2**32 - 1)
        check_range(self, "rounds", 1, 10_000)
        check(self.method is None or not self.stages, "method: give either 'method' or 'stages', not both")
        check(self.method is not None or bool(self.stages), "method: missing; give 'method' or 'stages'")
        try:
            self.model.check_registered()
        except ConfigError as exc:
            raise ConfigError(f"model.{exc}") from None

    def _validate_output_dir(self) -> None:
        """``output_dir`` must be (or be creatable as) a folder: no file in the way, no control characters."""
        fix = "choose a folder (it is created when missing)"
        check(bool(self.output_dir) and self.output_dir.isprintable(),
              f"output_dir: must be a non-empty path without control characters, got {show(self.output_dir)}; {fix}")
        path = Path(self.output_dir)
        try:
            for part in (path, *path.parents):
                if part.exists():
                    check(part.is_dir(), f"output_dir: {str(part)!r} exists and is not a folder, got "
                                         f"{show(self.output_dir)}; {fix}, or move that file away")
                    break
        except OSError as exc:  # e.g. a name too long for the file system
            raise ConfigError(f"output_dir: cannot be used ({exc.strerror}), got {show(self.output_dir)}; {fix}") from None

    def stage_list(self) -> list[StageConfig]:
        """The stages to run, in order (``method`` becomes one stage; ``rounds`` repeats the list)."""
        if self.method is not None:
            return [StageConfig(name=self.method.name, methods=[self.method], train=self.train)]
        return [s for _ in range(self.rounds) for s in self.stages]


def load_run_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read ``path`` (YAML; None for defaults), apply ``key=value`` overrides and validate.

    Raises:
        ConfigError: one line naming the key, for anything wrong in the file or the overrides.
    """
    return parse_run_config(read_yaml(path) if path is not None else {}, overrides)


def parse_run_config(data: dict[str, Any], overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Build and validate a :class:`RunConfig` from nested dicts (a parsed YAML file) and ``key=value`` overrides.

    ``data`` is changed in place (overrides applied, the top-level ``train`` merged into each stage's).
    """
    if not isinstance(data, dict):
        raise ConfigError(f"config: expected a mapping of sections, got {show(data)}; write model:, data:, ...")
    switch_method(data, overrides)
    apply_overrides(data, overrides)
    shared = data.get("train") or {}
    stages = data.get("stages")
    for i, stage in enumerate(stages if isinstance(stages, list) else []):
        if isinstance(stage, dict) and isinstance(shared, dict):
            own = stage.get("train") or {}
            if not isinstance(own, dict):
                raise ConfigError(f"stages[{i}].train: expected a mapping, got {show(own)}; write {{lr: 1e-3, ...}}")
            stage["train"] = {**shared, **own}
    return from_dict(RunConfig, data)


def _smoke_train(train: TrainConfig) -> TrainConfig:
    return replace(train, epochs=1, max_steps=2, batch_size=min(train.batch_size, 2), grad_accum=1, log_every=1,
                   warmup_steps=None, scst_samples=min(train.scst_samples, 2),
                   scst_max_new_tokens=min(train.scst_max_new_tokens, 4))


def smoke(config: RunConfig) -> RunConfig:
    """Shrink any config to seconds: a few samples, two steps per stage, one round, short generations.

    The run goes to ``<output_dir>/smoke/<name>``, so a smoke run never takes the real run's folder name (a smoke
    run's own config, already there, stays there: ``analyze --smoke`` on a smoke run writes beside it).
    """
    out = Path(config.output_dir)
    return replace(
        config,
        output_dir=str(out if out.name == "smoke" else out / "smoke"),
        data=replace(config.data, train_size=8, eval_size=4),
        train=_smoke_train(config.train),
        stages=[replace(s, train=_smoke_train(s.train)) for s in config.stages],
        rounds=1,
        eval=replace(config.eval, batch_size=4, max_new_tokens=min(config.eval.max_new_tokens, 4)),
    )


def model_kwargs(model: ModelConfig) -> dict[str, Any]:
    """Keyword arguments for :func:`mmpt.models.load` from a config's ``model`` section."""
    kwargs: dict[str, Any] = {"attn_implementation": model.attn_implementation}
    if model.projector_checkpoint:
        kwargs["projector_checkpoint"] = model.projector_checkpoint
    return kwargs


def switch_method(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> list[str]:
    """``method.name=X`` on a config whose ``method`` is another method starts from X's defaults: the keys X has
    are kept, the others dropped (and named on stderr), so ``mmpt train configs/quickstart.yaml method.name=lora``
    runs instead of failing on the prefix's ``length``. Returns the dropped keys."""
    import sys
    from dataclasses import fields

    from mmpt.method_configs import method_config_class

    for item in overrides:
        key, _, raw = item.partition("=")
        method = data.get("method")
        if key.strip() != "method.name" or not isinstance(method, dict) or method.get("name") in (None, raw.strip()):
            continue
        try:
            keys = {f.name for f in fields(method_config_class(raw.strip()))}
        except ValueError:
            continue  # validation names the unknown method and the known ones
        dropped = sorted(k for k in method if k not in keys)
        data["method"] = {k: v for k, v in method.items() if k in keys}
        if dropped:
            train = data.get("train") if isinstance(data.get("train"), dict) else {}
            print(f"mmpt: {item}: starts from {raw.strip()}'s defaults; dropped {method.get('name')}'s "
                  f"{', '.join(dropped)} ({raw.strip()} has no such key; `mmpt methods` lists its keys); train.lr "
                  f"stays {train.get('lr', 'the default')} (configs/methods/{raw.strip()}.yaml, where shipped, has a "
                  "starting point for this method)", file=sys.stderr)
        return dropped
    return []


def load_run_folder_config(run_dir: str | Path) -> RunConfig:
    """The config of the run folder ``run_dir`` (its ``config.yaml``, which mmpt wrote whole).

    The folder is checked first (:func:`mmpt.runfolder.refuse_links_in_run`: a run folder, no link inside).

    Raises:
        RunFolderError: the folder is missing, has no ``config.yaml`` or holds a link.
        ConfigError: one line naming ``run_dir/config.yaml`` when the file no longer parses or validates (edited
            or cut off), with the fix.
    """
    path = Path(run_dir) / "config.yaml"
    refuse_links_in_run(Path(run_dir))
    fix = "this run's config.yaml was edited or cut off: restore it (a run with a checkpoint keeps a copy in " \
          "checkpoint/config.json)"
    try:
        data = read_yaml(path)
        missing = [k for k in WRITTEN_SECTIONS if k not in data]
        if missing or ("method" not in data and "stages" not in data):
            raise ConfigError(f"no {', '.join(missing or ['method or stages'])} section (mmpt writes every section)")
        config = parse_run_config(data)
    except ConfigError as exc:
        problem = str(exc)
        problem = problem if problem.startswith(str(path)) else f"{path}: {problem}"
        raise ConfigError(f"{problem}; {fix}") from None
    _check_against_checkpoint(Path(run_dir), config)
    return config


def normalized(data: dict[str, Any]) -> dict[str, Any]:
    """A saved config as this mmpt reads it (keys added since at their defaults), as plain data."""
    import copy

    from mmpt.config import to_dict

    return to_dict(parse_run_config(copy.deepcopy(data)))


WRITTEN_SECTIONS = ("name", "seed", "model", "data", "task", "train", "eval")
"""Top-level keys every ``config.yaml`` mmpt writes holds (and ``method`` or ``stages``)."""


def _check_against_checkpoint(run_dir: Path, config: RunConfig) -> None:
    """A run that kept a checkpoint has the complete config it trained with (``checkpoint/config.json``, under the
    checkpoint's checksums): ``config.yaml`` must say the same, or it was edited or cut off (a cut at a line end
    still parses, with defaults for what was cut). A damaged checkpoint is left to ``train --resume``."""
    from mmpt.checkpoint import check_resume_config
    from mmpt.config import to_dict
    from mmpt.integrity import IntegrityError

    for name in ("checkpoint", "checkpoint.1"):
        folder = run_dir / name
        if (folder / "config.json").is_file():
            try:
                check_resume_config(folder, to_dict(config), normalized)
                return
            except IntegrityError:
                continue
