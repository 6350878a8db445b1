"""The training loop: one readable function from config to run folder.

``run(config)`` loads the model, applies each stage's methods, evaluates zero-shot, trains with AdamW under
Accelerate (CPU, one or several GPUs or machines via ``accelerate launch`` / ``torchrun``), evaluates every
``train.eval_every`` steps and at the end, and writes ``runs/<name>/``: ``config.yaml``, ``metrics.json``,
``<method>.safetensors`` (final method parameters), ``best/`` (the best evaluation's), ``checkpoint/`` (for
``--resume``), ``log.csv``, ``tensorboard/``, ``predictions_<tag>.jsonl`` and ``report.md``.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DataLoaderConfiguration, gather_object, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from mmpt import methods, models
from mmpt.checkpoint import (
    TrainState,
    check_resume_config,
    load_method_weights,
    load_optimizer_state,
    read_best,
    resolve_checkpoint,
    rng_state,
    save_checkpoint,
    save_methods,
)
from mmpt.config import ConfigError, to_dict
from mmpt.cost import run_cost
from mmpt.data import Sample
from mmpt.data.batching import LengthGroupedSampler
from mmpt.data.sources import build_data
from mmpt.data.validate import fit_context
from mmpt.guard import NumericGuard, gradients_finite
from mmpt.integrity import IntegrityError, verified_checked, write_manifest
from mmpt.models import VLMProcessor
from mmpt.models.hf_processor import HFProcessor
from mmpt.models.towers import TowerCache, cache_frozen_towers
from mmpt.paths import fresh_file, unique_run_dir
from mmpt.precision import resolve_precision
from mmpt.readback import METRICS, read_log_csv
from mmpt.report import pictures, write_report
from mmpt.runconfig import RunConfig, StageConfig, model_kwargs, normalized
from mmpt.runfolder import refuse_links_in_run, write_text, writing
from mmpt.tasks import TASK_METRICS, evaluation, main_metric, predict_task
from mmpt.tasks.objectives import Objective, TrainingError, build_objective
from mmpt.tracking import Trackers

log = logging.getLogger("mmpt")


def training_loss(objective: Objective, wrapped: torch.nn.Module, batch: dict[str, Any],
                  autocast: Any) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss of one batch under the stage's objective (:mod:`mmpt.tasks.objectives`) and extra statistics."""
    return objective.loss(wrapped, batch, autocast)


def lr_lambda(schedule: str, warmup: int, total: int) -> Any:
    """Multiplier of the base learning rate at each optimizer step."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        if schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return max(0.0, 1.0 - progress)

    return f


def rewind_log(path: Path, stage_names: list[str], stage: int, step: int) -> int:
    """Before a resume: move the ``log.csv`` rows written after the checkpoint (stage index ``stage``, step
    ``step``) to ``log.after-checkpoint.csv`` (``-2``... when that exists), so the resumed run's rows follow
    the checkpoint's without duplicates and nothing is lost. Returns the number of rows moved."""
    if not path.exists():
        return 0
    fields, rows = read_log_csv(path)

    # rows are in training order: a new stage starts where the name changes or the step goes back (stage
    # names may repeat: rounds, the default name)
    index, previous, late = -1, ("", 0), []
    for row in rows:
        name, at = row["stage"], row["step"]
        if index < 0 or name != previous[0] or int(at) <= previous[1]:
            index += 1
        if index >= len(stage_names) or stage_names[index] != name:
            log.warning("log.csv does not follow the run's stages; left as it is (rows may repeat after resume)")
            return 0
        previous = (name, int(at))
        late.append((index, int(at)) > (stage, step))
    moved = [r for r, is_late in zip(rows, late, strict=True) if is_late]
    if not moved:
        return 0
    for target, kept in ((fresh_file(path.with_name("log.after-checkpoint.csv")), moved),
                         (path.with_suffix(".csv.tmp"), [r for r, is_late in zip(rows, late, strict=True)
                                                         if not is_late])):
        with writing(target, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(kept)
    path.with_suffix(".csv.tmp").replace(path)
    return len(moved)


def check_metric(config: RunConfig) -> None:
    """Fail before training when ``eval.metric`` names nothing the task measures."""
    metric = config.eval.metric
    if metric is None or "/" in metric:  # per-kind metrics depend on the data; checked at evaluation
        return
    known = TASK_METRICS[config.task] | ({"mme/acc", "mme/acc_plus", "mme/score"} if config.eval.mme else set())
    if metric not in known:
        raise ConfigError(f"eval.metric: task {config.task} measures {', '.join(sorted(known))}, not '{metric}'")


def has_accelerator() -> bool:
    """Whether a GPU (CUDA/ROCm), Apple MPS or Intel XPU device is available."""
    xpu = getattr(torch, "xpu", None)
    return torch.cuda.is_available() or torch.backends.mps.is_available() or bool(xpu and xpu.is_available())


@dataclass
class Run:
    """Everything the stages of one run share."""

    config: RunConfig
    accelerator: Accelerator
    loaded: models.LoadedModel
    out_dir: Path
    eval_samples: list[Sample]
    base_fingerprint: str
    state: TrainState
    progress: bool
    applied: dict[str, methods.Method] = field(default_factory=dict)
    trackers: Trackers | None = None
    resume_dir: Path | None = None  # the checkpoint folder a resume continues from
    towers: TowerCache | None = None  # frozen vision features per image (train.cache_frozen_towers)

    def cache_towers(self, enabled: bool, trainable: list[torch.nn.Parameter]) -> None:
        """Keep, start or drop the frozen-tower cache for what runs next (training ``trainable``): an existing
        cache goes on only while nothing trains or hooks the tower; a stage that trains it drops the cache, and
        a later frozen stage starts a fresh one."""
        # DDP broadcasts the model's weights and buffers in place when it wraps the model and before each
        # forward: the cache's version check would (rightly) refuse features computed before; one process only
        enabled = enabled and self.accelerator.num_processes == 1
        if self.towers is not None and not (enabled and self.towers.serves(trainable)):
            self.drop_towers()
        if enabled and self.towers is None:
            self.towers = cache_frozen_towers(self.loaded, trainable)

    def drop_towers(self) -> None:
        """Remove the frozen-tower cache, counting its hits into ``metrics.json`` (``tower_cache``)."""
        if self.towers is None:
            return
        counts = self.state.metrics.setdefault("tower_cache", {"hits": 0, "misses": 0})
        counts["hits"] += self.towers.hits
        counts["misses"] += self.towers.misses
        counts["peak_mb"] = max(counts.get("peak_mb", 0.0), round(self.towers.bytes / 2**20, 1))
        self.towers.remove()
        self.towers = None

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def global_step(self) -> int:
        """Optimizer steps over the whole run: the finished stages' plus the current stage's."""
        return sum(s["steps"] for s in self.state.metrics.get("stages", [])) + self.state.step

    def evaluate(self, tag: str) -> dict[str, float]:
        """Evaluate, write ``predictions_<tag>.jsonl``, log to TensorBoard, keep ``best/`` up to date."""
        cfg, acc, samples = self.config, self.accelerator, self.eval_samples
        model, processor, show = self.loaded.model, self.loaded.processor, self.progress and self.main
        if acc.num_processes > 1:  # each process predicts its share; the metrics see all predictions
            with acc.split_between_processes(list(range(len(samples)))) as share:
                mine = predict_task(cfg.task, model, processor, [samples[i] for i in share], cfg.eval,
                                    acc.autocast, show)
                pairs = gather_object(list(zip(share, mine, strict=True)))
            predictions = [p for _, p in sorted(pairs)]
        else:
            predictions = predict_task(cfg.task, model, processor, samples, cfg.eval, acc.autocast, show)
        result = evaluation(cfg.task, samples, predictions, cfg.eval)
        metric = main_metric(cfg.task, cfg.eval)
        score = result.metrics.get(metric, float("nan"))
        if metric not in result.metrics:  # e.g. a per-kind metric this evaluation set lacks: keep going
            log.warning("eval.metric '%s' was not measured (have %s); best/ is not updated", metric,
                        ", ".join(sorted(result.metrics)))
        if self.main:
            with writing(fresh_file(self.out_dir / f"predictions_{tag}.jsonl")) as f:
                for row in result.rows:
                    f.write(json.dumps(row, default=str) + "\n")
            if self.trackers is not None:
                self.trackers.log({f"eval/{k}": v for k, v in result.metrics.items() if k != "n"}, self.global_step)
            better = metric in result.metrics and (self.state.best_score is None or score > self.state.best_score)
            if tag != "before" and self.applied and better:
                save_methods(self.out_dir / "best", self.applied, self.base_fingerprint,
                             {"metric": metric, "score": score, "tag": tag}, fold=True)
                self.state.best_score, self.state.best_step = score, tag
        self.accelerator.print(f"mmpt: eval {tag}: {metric} {score:.4f}")
        return result.metrics

    def checkpoint(self, optimizer: torch.optim.Optimizer | None = None, scheduler: Any = None) -> None:
        """Save the resumable state to ``checkpoint/`` (written by the main process, with every process's RNG)."""
        states = [rng_state()]
        if self.accelerator.num_processes > 1:
            states = gather_object(states)  # in rank order
        if self.main:
            save_checkpoint(self.out_dir / "checkpoint", self.applied, self.base_fingerprint, optimizer, scheduler,
                            self.state, states, to_dict(self.config))
        self.accelerator.wait_for_everyone()


def run(config: RunConfig, progress: bool = True, resume: str | Path | None = None) -> dict[str, Any]:
    """Train and evaluate as ``config`` says; returns the metrics also written to ``metrics.json``.

    With ``resume`` (a run folder), continue that run from its ``checkpoint/`` in the same folder.
    """
    stages = config.stage_list()
    precisions = {s.train.precision for s in stages}
    if len(precisions) > 1:
        raise ConfigError(f"train.precision: all stages must share one precision, got {sorted(precisions)}")
    precision = resolve_precision(precisions.pop())
    # several runs in one Python process (notebooks, tests) may differ in precision: start from a fresh
    # accelerator state; the process group of a distributed launch (PartialState) is kept
    AcceleratorState._reset_state()
    accelerator = Accelerator(
        cpu=not has_accelerator(),  # lets torchrun / accelerate launch start several CPU processes (gloo)
        mixed_precision="no" if precision == "fp32" else precision,
        gradient_accumulation_steps=stages[0].train.grad_accum,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    set_seed(config.seed)
    if resume is not None:
        refuse_links_in_run(Path(resume))  # a run folder is untrusted input (mmpt.runfolder)
    lock = RunLock(Path(resume)) if resume is not None and accelerator.is_main_process else None
    try:
        resume_dir, state = resolve_checkpoint(Path(resume)) if resume is not None else (None, TrainState())
        if resume_dir is not None:
            check_resume_config(resume_dir, to_dict(config), normalized)
            check_resume_state(resume_dir, state, len(config.stage_list()))
            if (Path(resume) / "log.csv").is_file():
                read_log_csv(Path(resume) / "log.csv")  # a hand-edited log fails before data and model load
            done = finished_metrics(Path(resume), state, len(config.stage_list()))
            if done is not None:
                return done
        train_samples, eval_samples = build_data(config.data, config.seed)  # bad data fails before any folder
        if not train_samples:
            raise ConfigError("data: no training samples; give data.train (mmpt eval evaluates without training)")
        check_metric(config)
        if resume is not None:
            out_dir = Path(resume)
        else:  # the main process picks a fresh folder; the others learn its name (nothing is written twice)
            chosen = [str(unique_run_dir(config)) if accelerator.is_main_process else ""]
            if accelerator.num_processes > 1:
                from accelerate.utils import broadcast_object_list

                broadcast_object_list(chosen)
            out_dir = Path(chosen[0])
            lock = RunLock(out_dir) if accelerator.is_main_process else None
        try:
            return _train_in(config, accelerator, out_dir, state, resume_dir, train_samples, eval_samples, progress)
        except KeyboardInterrupt:
            raise Interrupted(out_dir) from None
    finally:
        if lock is not None:
            lock.release()


def finished_metrics(run_dir: Path, state: TrainState, stages: int) -> dict[str, Any] | None:
    """A run whose training ended and whose ``metrics.json`` (written last) is there is finished: ``--resume``
    says so and rewrites nothing (re-evaluation is ``mmpt eval``); returns its metrics. None when there is work
    left: training, or the final evaluation and files of a run interrupted after its last step."""
    if state.stage < stages or not (run_dir / "metrics.json").is_file():
        return None
    metrics = verified_checked(run_dir / "metrics.json", METRICS, "metrics", "re-evaluate the run with mmpt eval")
    print(f"mmpt: {run_dir} finished training and evaluation before; nothing to resume, nothing rewritten "
          f"(re-evaluate with `mmpt eval {run_dir}`, train again with `mmpt train {run_dir}/config.yaml`)")
    return {**metrics, "run_dir": str(run_dir)}


def check_learning_rates(folder: Path, optimizer: torch.optim.Optimizer, scheduler: Any, lr: float) -> None:
    """The restored optimizer and scheduler must train with the config's ``train.lr`` (as base rate; the current
    rate at most that): a checkpoint whose state says otherwise was edited and would train with another rate."""
    rates = [g.get("initial_lr", lr) for g in optimizer.param_groups] + list(getattr(scheduler, "base_lrs", []))
    current = [g["lr"] for g in optimizer.param_groups]
    if any(not math.isclose(r, lr, rel_tol=1e-6) for r in rates) or any(not 0 <= c <= lr * (1 + 1e-6)
                                                                          for c in current):
        raise IntegrityError(f"{folder}: its optimizer/scheduler state trains with learning rate(s) "
                             f"{sorted(set(rates + current))[:3]}, not train.lr={lr}; the state was edited: resume "
                             "from checkpoint.1 by removing checkpoint/, or start again")


def check_resume_state(folder: Path, state: TrainState, stages: int) -> None:
    """The checkpoint's position must fit the run: a stage within its stages, one finished-stage record per
    finished stage (a hand-edited ``state.json`` otherwise resumes into a wrong place or fails late)."""
    path = folder / "state.json"
    if state.stage > stages or (state.stage == stages and state.step):
        raise IntegrityError(f"{path}: stage {state.stage + 1} (step {state.step}) but the run has {stages} stage(s); "
                             "the file was edited: restore it, or resume from checkpoint.1 by removing checkpoint/")
    recorded = len(state.metrics.get("stages", []))
    if recorded != state.stage:
        raise IntegrityError(f"{path}: {recorded} finished stage(s) recorded in metrics.stages for stage index "
                             f"{state.stage}; the file was edited: restore it, or resume from checkpoint.1 by "
                             "removing checkpoint/")


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a run: carries the run folder so the CLI can say how to resume."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__(str(run_dir))
        self.run_dir = run_dir


class RunLocked(FileExistsError):
    """Another process is training in the run folder."""


class RunLock:
    """An exclusive lock on a run folder (``.mmpt.lock``), held while a process trains in it; released when
    the process ends, however it ends."""

    def __init__(self, run_dir: Path) -> None:
        from filelock import FileLock, Timeout

        self._lock = FileLock(str(run_dir / ".mmpt.lock"), timeout=0)
        try:
            self._lock.acquire()
        except Timeout:
            raise RunLocked(f"another mmpt process is training in {run_dir} (it holds {run_dir / '.mmpt.lock'}); "
                            "wait for it to finish or stop it, then resume") from None

    def release(self) -> None:
        self._lock.release()


def _train_in(
    config: RunConfig,
    accelerator: Accelerator,
    out_dir: Path,
    state: TrainState,
    resume_dir: Path | None,
    train_samples: list[Sample],
    eval_samples: list[Sample],
    progress: bool,
) -> dict[str, Any]:
    """The body of :func:`run` once the run folder is chosen and locked."""
    started = time.perf_counter()
    stages = config.stage_list()
    resume = out_dir if resume_dir is not None else None
    main = accelerator.is_main_process
    say = accelerator.print
    say(f"mmpt: run folder {out_dir}" + (f" (resuming stage {state.stage + 1}, step {state.step})" if resume else ""))
    if accelerator.num_processes > 1:
        say(f"mmpt: {accelerator.num_processes} processes ({accelerator.distributed_type.value})")
    if main and resume is None:
        write_text(out_dir / "config.yaml", yaml.safe_dump(to_dict(config), sort_keys=False))

    loaded = models.load(config.model.name, **model_kwargs(config.model))
    if not isinstance(loaded.processor, VLMProcessor | HFProcessor):
        raise ConfigError(f"model.name: {config.model.name} has no mmpt processor; training and evaluation "
                          "pipelines need a processor (a checkpoint folder saved with its processor files)")
    loaded.model.to(accelerator.device)
    train_samples = fit_context(loaded, train_samples, config.data.on_error, "data.train")
    eval_samples = fit_context(loaded, eval_samples, config.data.on_error, "data.eval", config.eval.max_new_tokens)
    say(f"mmpt: {len(train_samples)} training and {len(eval_samples)} evaluation samples ({config.data.dataset}), "
        f"task {config.task}")
    if resume is not None and main:
        moved = rewind_log(out_dir / "log.csv", [s.name for s in stages], state.stage, state.step)
        if moved:
            say(f"mmpt: {moved} log.csv row(s) written after the checkpoint moved to log.after-checkpoint*.csv")
    if resume is not None:  # best/ may be newer than the checkpoint
        best = read_best(out_dir / "best")
        if best is not None and (state.best_score is None or best["score"] > state.best_score):
            state.best_score, state.best_step = best["score"], best["tag"]
    ctx = Run(config, accelerator, loaded, out_dir, eval_samples, methods.fingerprint(loaded.model), state,
              progress, trackers=Trackers(config.train.report_to, out_dir, config.name, to_dict(config)) if main else None,
              resume_dir=resume_dir)
    metrics = state.metrics
    ctx.cache_towers(stages[0].train.cache_frozen_towers, [])
    if config.eval.before and eval_samples and "before" not in metrics:
        metrics["before"] = ctx.evaluate("before")

    checkpoint_dir = resume_dir or out_dir / "checkpoint"
    # a resume of a run whose training had finished only evaluates: its weights come from the checkpoint it
    # resumed. Decided now: once this process saves a checkpoint, the folder it resumed from (checkpoint.1 after a
    # fallback) may hold an older state, which must never be reloaded over the weights trained here
    finished_before = resume is not None and state.stage >= len(stages)
    for index, stage in enumerate(stages):
        if resume is not None and index == state.stage and state.step == 0:
            load_method_weights(checkpoint_dir, ctx.applied)  # the methods of the stages already finished
        for method_config in stage.methods:
            if method_config.name not in ctx.applied:
                ctx.applied[method_config.name] = methods.apply(loaded, method_config, freeze_base=False)
            elif method_config not in (ctx.applied[method_config.name].config, type(method_config)()):
                raise ConfigError(
                    f"stages[{index}].methods: '{method_config.name}' was applied in an earlier stage with other "
                    "settings; repeat it exactly or give only its name to keep training it"
                )
        if index < state.stage:
            continue  # finished before the interruption; its weights come with the checkpoint below
        if resume is not None and index == state.stage and state.step > 0:
            load_method_weights(checkpoint_dir, ctx.applied)  # the interrupted stage's methods
        active = [ctx.applied[m.name] for m in stage.methods]
        for p in loaded.model.parameters():
            p.requires_grad_(False)
        for method in active:
            for p in method.parameters():
                p.requires_grad_(True)
        ctx.cache_towers(stage.train.cache_frozen_towers, [p for m in active for p in m.parameters()])
        counts = methods.count_parameters(loaded, active)
        say(f"mmpt: stage {index + 1}/{len(stages)} '{stage.name}' trains {'+'.join(m.name for m in stage.methods)}: "
            f"{counts['trainable']:,} of {counts['total']:,} parameters ({counts['percent']:.4f}%)")
        stage_metrics = train_stage(ctx, index, stage, active, train_samples,
                                    resuming=resume is not None and index == state.stage and state.step > 0)
        metrics["stages"].append({"name": stage.name, "methods": [m.name for m in stage.methods],
                                  "parameters": counts, **stage_metrics})
        per_round = len(config.stages) or 1  # PT-PEFT Table 9: alternating rounds are evaluated one by one
        if config.rounds > 1 and (index + 1) % per_round == 0 and index + 1 < len(stages) and eval_samples:
            number = (index + 1) // per_round
            metrics.setdefault("rounds", []).append({"round": number, **ctx.evaluate(f"round{number}")})
        # a finished stage is a checkpoint too: a resume after it starts the next stage
        state.stage, state.step, state.epoch, state.batches_in_epoch = index + 1, 0, 0, 0
        ctx.checkpoint()
    if finished_before:
        load_method_weights(checkpoint_dir, ctx.applied)  # training had finished: evaluate its weights
    metrics["parameters"] = metrics["stages"][-1]["parameters"]
    metrics["train"] = {k: sum(s[k] for s in metrics["stages"]) for k in ("steps", "samples", "seconds")}
    metrics["train"]["final_loss"] = metrics["stages"][-1]["final_loss"]
    metrics["train"]["samples_per_s"] = metrics["train"]["samples"] / max(metrics["train"]["seconds"], 1e-9)

    if eval_samples:
        metrics["after"] = ctx.evaluate("after")
        metrics["best"] = {"tag": state.best_step, main_metric(config.task, config.eval): state.best_score}
    ctx.drop_towers()
    metrics["cost"] = run_cost(metrics["parameters"], metrics["train"], time.perf_counter() - started,
                               accelerator.num_processes, accelerator.device.type)
    if main:
        for name, method in ctx.applied.items():
            methods.save(method, out_dir / f"{name}.safetensors", ctx.base_fingerprint, fold=True)
        write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2))
        write_manifest(out_dir, [*(f"{name}.safetensors" for name in ctx.applied), "metrics.json"])
        say(write_report(out_dir, config, metrics, pictures(out_dir, eval_samples)))
        if ctx.trackers is not None:
            ctx.trackers.close()
    accelerator.wait_for_everyone()
    metrics["run_dir"] = str(out_dir)
    return metrics


def train_stage(
    ctx: Run,
    index: int,
    stage: StageConfig,
    active: list[methods.Method],
    samples: list[Sample],
    resuming: bool = False,
) -> dict[str, float]:
    """One stage: AdamW over the active methods' parameters, warm-up then decay, logged to ``log.csv``."""
    tc, accelerator, state = stage.train, ctx.accelerator, ctx.state
    if not samples:
        raise ConfigError("data: no training samples; give data.train (or a packaged dataset)")
    try:
        objective = build_objective(tc.objective, ctx.config.task, ctx.loaded.processor, ctx.applied, samples, tc,
                                    ctx.config.data.on_error)
    except TrainingError as exc:
        raise ConfigError(str(exc)) from None
    sampler = LengthGroupedSampler(objective.samples, tc.batch_size, ctx.config.seed + index) \
        if tc.group_by_length else None
    loader = DataLoader(
        objective.samples, batch_size=tc.batch_size, shuffle=sampler is None, sampler=sampler,
        collate_fn=objective.collate, num_workers=tc.num_workers,
        generator=torch.Generator().manual_seed(ctx.config.seed + index),
    )
    trainable = [p for m in active for p in m.parameters()]
    optimizer = torch.optim.AdamW(trainable, lr=tc.lr, betas=tc.betas, weight_decay=tc.weight_decay)
    accelerator.gradient_accumulation_steps = tc.grad_accum
    wrapped, optimizer, loader = accelerator.prepare(ctx.loaded.model, optimizer, loader)
    # sized after prepare() (which shards the loader across processes); stepped once per optimizer step
    steps_per_epoch = math.ceil(len(loader) / tc.grad_accum)
    total = min(tc.max_steps or steps_per_epoch * tc.epochs, steps_per_epoch * tc.epochs)
    warmup = tc.warmup_steps if tc.warmup_steps is not None else int(tc.warmup_ratio * total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(tc.schedule, min(warmup, total), total))
    if resuming:
        folder = ctx.resume_dir or ctx.out_dir / "checkpoint"
        if state.step > total:
            raise IntegrityError(f"{folder / 'state.json'}: step {state.step} of stage '{stage.name}', which has "
                                 f"{total} steps; the file was edited: restore it, or resume from checkpoint.1 by "
                                 "removing checkpoint/")
        load_optimizer_state(folder, optimizer, scheduler, accelerator.process_index)
        check_learning_rates(folder, optimizer, scheduler, tc.lr)

    main = ctx.main
    bar = tqdm(total=total, initial=state.step, desc=stage.name, unit="step", disable=not (ctx.progress and main))
    log_path = ctx.out_dir / "log.csv" if main else Path("/dev/null")
    new_log = main and not log_path.exists()
    if not resuming:
        state.seen, state.seconds, state.running_loss = 0, 0.0, None
    running = float("nan") if state.running_loss is None else state.running_loss  # smoothed loss, as logged
    started, seen_before, seconds_before = time.perf_counter(), state.seen, state.seconds
    wrapped.train()
    guard = NumericGuard(stage.name, str(ctx.out_dir))

    with open(log_path, "a", newline="") as log_file:
        writer = csv.DictWriter(log_file, fieldnames=["stage", "step", "loss", "lr", "samples_per_s"])
        if new_log:
            writer.writeheader()
        while state.step < total:
            loader.set_epoch(state.epoch)
            batches = accelerator.skip_first_batches(loader, state.batches_in_epoch) if state.batches_in_epoch else loader
            for batch in batches:
                with accelerator.accumulate(wrapped):
                    loss, extra = training_loss(objective, wrapped, batch, accelerator.autocast)
                    accelerator.backward(loss)
                    # a non-finite loss or gradient skips the optimizer step (counted; several in a row stop)
                    finite = not accelerator.sync_gradients or guard.step_ok(
                        gradients_finite(trainable), state.step + 1)
                    if finite:
                        if accelerator.sync_gradients and tc.grad_clip:
                            accelerator.clip_grad_norm_(trainable, tc.grad_clip)
                        optimizer.step()
                        if accelerator.sync_gradients:
                            scheduler.step()
                    optimizer.zero_grad()
                state.batches_in_epoch += 1
                state.seen += batch["input_ids"].shape[0] * accelerator.num_processes
                value = loss.item()
                if math.isfinite(value):
                    running = value if math.isnan(running) else 0.9 * running + 0.1 * value
                if not accelerator.sync_gradients:
                    continue
                state.step += 1
                guard.watch(running, state.step)
                state.running_loss = running
                state.seconds = seconds_before + time.perf_counter() - started
                rate = (state.seen - seen_before) / max(time.perf_counter() - started, 1e-9)
                lr = scheduler.get_last_lr()[0]
                bar.set_postfix(loss=f"{running:.4f}", lr=f"{lr:.2e}", samples_s=f"{rate:.1f}")
                bar.update(1)
                if state.step % tc.log_every == 0 or state.step == total:
                    writer.writerow({"stage": stage.name, "step": state.step, "loss": running, "lr": lr,
                                     "samples_per_s": rate})
                    log_file.flush()  # `tail -f log.csv` follows a running job
                    if ctx.trackers is not None:  # e.g. SCST reward / baseline / sample length in extra
                        ctx.trackers.log({f"train/{stage.name}/{k}": v for k, v in
                                          {"loss": running, "lr": lr, **extra}.items()}, ctx.global_step)
                if tc.eval_every and state.step % tc.eval_every == 0 and state.step < total and ctx.eval_samples:
                    state.metrics.setdefault("evals", []).append(
                        {"stage": stage.name, "step": state.step, **ctx.evaluate(f"s{index + 1}-step{state.step}")})
                    wrapped.train()
                if tc.save_every and state.step % tc.save_every == 0 and state.step < total:
                    ctx.checkpoint(optimizer, scheduler)
                if state.step >= total:
                    break
            else:  # epoch finished
                state.epoch, state.batches_in_epoch = state.epoch + 1, 0
    bar.close()
    wrapped.eval()
    seconds = seconds_before + time.perf_counter() - started
    return {"steps": state.step, "samples": state.seen, "seconds": round(seconds, 1), "final_loss": running,
            "samples_per_s": state.seen / max(seconds, 1e-9), **guard.summary()}
