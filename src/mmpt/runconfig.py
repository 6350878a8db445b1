"""The config of a run (``mmpt train CONFIG``): model, data, method, training and evaluation sections."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from mmpt.config import ConfigError, apply_overrides, check, from_dict, read_yaml
from mmpt.methods import MethodConfig, PrefixConfig


@dataclass
class ModelConfig:
    """Which model to load. ``name`` is a registered model (``mmpt models`` lists them)."""

    name: str = "mmpt-tiny"
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"
    projector_checkpoint: str = ""


FORMATS = ("coco-karpathy", "flickr30k-karpathy", "vqav2", "snli-ve", "refcoco", "llava", "jsonl")


@dataclass
class SourceConfig:
    """Files of one split in a format on disk (``docs/data_formats.md`` shows each format's keys).

    Attributes:
        format: ``coco-karpathy``, ``flickr30k-karpathy``, ``vqav2``, ``snli-ve``, ``refcoco``, ``llava``, ``jsonl``.
        path: the main file (Karpathy JSON, SNLI-VE / generic JSONL, LLaVA JSON).
        images: the image folder paths in the files are relative to.
        split: Karpathy split (``train`` includes ``restval``) or RefCOCO split (``val``, ``testA``...).
        questions / annotations: VQAv2's two files (no annotations for test-dev).
        refs / instances: RefCOCO's ``refs(unc).p`` and ``instances.json``.
        prompt_template: how the record's text becomes the prompt (empty: the reader's default).
        limit: keep the first N samples (null: all).
    """

    format: Literal["coco-karpathy", "flickr30k-karpathy", "vqav2", "snli-ve", "refcoco", "llava", "jsonl"] = "jsonl"
    path: str = ""
    images: str = ""
    split: str = ""
    questions: str = ""
    annotations: str = ""
    refs: str = ""
    instances: str = ""
    prompt_template: str = ""
    limit: int | None = None

    def validate(self) -> None:
        from mmpt.data.sources import OPTIONAL_KEYS, READER_KEYS

        needs = [k for k in READER_KEYS[self.format] if (self.format, k) not in OPTIONAL_KEYS]
        missing = [k for k in needs if not getattr(self, k)]
        check(not missing, f"format {self.format} needs {', '.join(needs)}; missing {', '.join(missing)}")
        check(self.limit is None or self.limit > 0, f"limit: must be positive or null, got {self.limit}")


@dataclass
class DataConfig:
    """Training and evaluation data.

    Attributes:
        dataset: ``easy-vqa`` (questions), ``easy-vqa-captions`` (one caption per image, plus the captioned
            scikit-image photos when ``include_photos``), or ``files`` (``train`` / ``eval`` below).
        train / eval: the files to read when ``dataset: files`` (see :class:`SourceConfig`).
        on_error: ``raise`` stops at the first malformed record or missing image (naming file and record);
            ``skip`` leaves such records out and reports how many.
        train_size / eval_size: samples kept after a seeded shuffle (null keeps all).
        question_types: easy-VQA types used for training (``color``, ``shape``, ``yes_no``).
        eval_question_types: types used for evaluation (defaults to all three).
        prompt_template: turns an easy-VQA question into the prompt; ``{question}`` is replaced.
    """

    dataset: Literal["easy-vqa", "easy-vqa-captions", "files"] = "easy-vqa"
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
        check(self.train_size is None or self.train_size > 0, f"train_size: must be positive, got {self.train_size}")
        check(self.eval_size is None or self.eval_size >= 0, f"eval_size: must be >= 0, got {self.eval_size}")
        check("{question}" in self.prompt_template, "prompt_template: must contain {question}")
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
    precision: Literal["fp32", "bf16", "fp16"] = "bf16"
    objective: Literal["lm", "classify", "scst"] = "lm"
    scst_samples: int = 5
    scst_baseline: Literal["greedy", "mean"] = "greedy"
    scst_max_new_tokens: int = 20
    num_workers: int = 0
    log_every: int = 10
    eval_every: int | None = None
    save_every: int | None = None

    def validate(self) -> None:
        check(self.epochs > 0, f"epochs: must be positive, got {self.epochs}")
        check(self.max_steps is None or self.max_steps > 0, f"max_steps: must be positive, got {self.max_steps}")
        check(self.batch_size > 0, f"batch_size: must be positive, got {self.batch_size}")
        check(self.grad_accum > 0, f"grad_accum: must be positive, got {self.grad_accum}")
        check(self.lr > 0, f"lr: must be positive, got {self.lr}")
        check(0 <= self.warmup_ratio < 1, f"warmup_ratio: must be in [0, 1), got {self.warmup_ratio}")
        check(self.warmup_steps is None or self.warmup_steps >= 0, "warmup_steps: must be >= 0 or null")
        check(self.scst_samples >= (2 if self.scst_baseline == "mean" else 1),
              f"scst_samples: must be >= 1 (>= 2 with scst_baseline: mean), got {self.scst_samples}")
        check(self.scst_max_new_tokens > 0, "scst_max_new_tokens: must be positive")
        check(all(0 <= b < 1 for b in self.betas), f"betas: each must be in [0, 1), got {self.betas}")
        check(self.grad_clip is None or self.grad_clip > 0, "grad_clip: must be positive or null")
        for key in ("log_every", "eval_every", "save_every"):
            value = getattr(self, key)
            check(value is None or value > 0, f"{key}: must be a positive number of steps or null, got {value}")


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
            sample and shared by all (see ``mmpt.ranking``), so this can be much larger than ``batch_size``
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
        check(self.batch_size > 0, f"batch_size: must be positive, got {self.batch_size}")
        check(self.max_new_tokens > 0, f"max_new_tokens: must be positive, got {self.max_new_tokens}")
        check(self.num_beams is None or self.num_beams > 0, f"num_beams: must be positive, got {self.num_beams}")
        check(self.candidate_batch_size > 0,
              f"candidate_batch_size: must be positive, got {self.candidate_batch_size}")


@dataclass
class StageConfig:
    """One stage of a run: the methods it trains and its optimization settings.

    Methods applied in an earlier stage stay in the model; listing one again (same ``name``) keeps training
    it — PT-PEFT's stage 2 is ``methods: [prefix, lora]``. Keys of ``train`` not given here come from the
    run's top-level ``train`` section.
    """

    name: str = "stage"
    methods: list[MethodConfig] = field(default_factory=lambda: [PrefixConfig()])
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
        check(bool(self.name) and "/" not in self.name, f"name: must be a plain folder name, got {self.name!r}")
        check(self.method is None or not self.stages, "method: give either 'method' or 'stages', not both")
        check(self.method is not None or bool(self.stages), "method: missing; give 'method' or 'stages'")
        check(self.rounds > 0, f"rounds: must be positive, got {self.rounds}")

    def stage_list(self) -> list[StageConfig]:
        """The stages to run, in order (``method`` becomes one stage; ``rounds`` repeats the list)."""
        if self.method is not None:
            return [StageConfig(name=self.method.name, methods=[self.method], train=self.train)]
        return [s for _ in range(self.rounds) for s in self.stages]


def load_run_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read ``path`` (YAML; None for defaults), apply ``key=value`` overrides and validate."""
    data = read_yaml(path) if path is not None else {}
    apply_overrides(data, overrides)
    shared = data.get("train") or {}
    for i, stage in enumerate(data.get("stages") or []):
        if isinstance(stage, dict) and isinstance(shared, dict):
            own = stage.get("train") or {}
            if not isinstance(own, dict):
                raise ConfigError(f"stages[{i}].train: expected a mapping, got {own!r}")
            stage["train"] = {**shared, **own}
    return from_dict(RunConfig, data)


def _smoke_train(train: TrainConfig) -> TrainConfig:
    return replace(train, epochs=1, max_steps=2, batch_size=min(train.batch_size, 4), grad_accum=1, log_every=1,
                   warmup_steps=None, scst_samples=min(train.scst_samples, 2),
                   scst_max_new_tokens=min(train.scst_max_new_tokens, 4))


def smoke(config: RunConfig) -> RunConfig:
    """Shrink any config to seconds: a few samples, two steps per stage, one round, short generations."""
    return replace(
        config,
        data=replace(config.data, train_size=8, eval_size=4),
        train=_smoke_train(config.train),
        stages=[replace(s, train=_smoke_train(s.train)) for s in config.stages],
        rounds=1,
        eval=replace(config.eval, batch_size=4, max_new_tokens=min(config.eval.max_new_tokens, 4)),
    )
