"""The training loop: one readable function from config to run folder.

``run(config)`` loads the model, applies the method, evaluates zero-shot, trains with AdamW under Accelerate
(CPU, one or several GPUs via ``accelerate launch``), evaluates again and writes ``runs/<name>/``:
``config.yaml``, ``metrics.json``, ``method.safetensors`` (method parameters only), ``log.csv``, ``report.md``.
"""

from __future__ import annotations

import csv
import json
import math
import random
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from mmpt import methods, models
from mmpt.config import ConfigError, to_dict
from mmpt.data import Sample, easy_vqa_captions, load_easy_vqa, skimage_captions
from mmpt.evaluate import accuracy, open_image, predict
from mmpt.models import VLMProcessor
from mmpt.report import write_report
from mmpt.runconfig import RunConfig, StageConfig


def build_data(config: RunConfig) -> tuple[list[Sample], list[Sample]]:
    """(train, eval) samples for the configured dataset."""
    d = config.data
    if d.dataset == "easy-vqa":
        train = load_easy_vqa("train", d.question_types, d.train_size, config.seed, d.prompt_template)
        evals = load_easy_vqa("test", d.eval_question_types, d.eval_size, config.seed, d.prompt_template)
        return train, evals
    train = easy_vqa_captions("train") + (skimage_captions() if d.include_photos else [])
    random.Random(config.seed).shuffle(train)
    evals = easy_vqa_captions("test")
    random.Random(config.seed).shuffle(evals)
    return train[: d.train_size], evals[: d.eval_size]


class Collator:
    """Opens images and calls the processor: a list of samples -> a training batch."""

    def __init__(self, processor: VLMProcessor) -> None:
        self.processor = processor

    def __call__(self, samples: list[Sample]) -> dict[str, torch.Tensor]:
        return self.processor(
            [open_image(s.image) for s in samples], [s.prompt for s in samples], [s.target for s in samples]
        )


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


def unique_run_dir(config: RunConfig) -> Path:
    """``output_dir/name``, or ``name-2``, ``name-3``... when it exists: earlier runs are never overwritten."""
    base = Path(config.output_dir) / config.name
    path, k = base, 1
    while path.exists():
        k += 1
        path = base.with_name(f"{config.name}-{k}")
    path.mkdir(parents=True)
    return path


def run(config: RunConfig, progress: bool = True) -> dict[str, Any]:
    """Train and evaluate as ``config`` says; returns the metrics also written to ``metrics.json``."""
    stages = config.stage_list()
    precisions = {s.train.precision for s in stages}
    if len(precisions) > 1:
        raise ConfigError(f"train.precision: all stages must share one precision, got {sorted(precisions)}")
    precision = precisions.pop()
    accelerator = Accelerator(
        mixed_precision="no" if precision == "fp32" else precision,
        gradient_accumulation_steps=stages[0].train.grad_accum,
    )
    set_seed(config.seed)
    # the main process picks a fresh folder; the others learn its name (nothing is written twice)
    chosen = [str(unique_run_dir(config)) if accelerator.is_main_process else ""]
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        broadcast_object_list(chosen)
    out_dir = Path(chosen[0])
    main = accelerator.is_main_process
    say = accelerator.print
    say(f"mmpt: run folder {out_dir}")
    if main:
        (out_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False))

    model_kwargs: dict[str, Any] = {"attn_implementation": config.model.attn_implementation}
    if config.model.projector_checkpoint:
        model_kwargs["projector_checkpoint"] = config.model.projector_checkpoint
    loaded = models.load(config.model.name, **model_kwargs)
    loaded.model.to(accelerator.device)
    base_fingerprint = methods.fingerprint(loaded.model)
    train_samples, eval_samples = build_data(config)
    say(f"mmpt: {len(train_samples)} training and {len(eval_samples)} evaluation samples ({config.data.dataset})")

    def evaluate(tag: str) -> dict[str, float]:
        ev = config.eval
        preds = predict(loaded.model, loaded.processor, eval_samples, ev.batch_size, ev.max_new_tokens,
                        accelerator.autocast, progress and main)
        if main:
            with open(out_dir / f"predictions_{tag}.jsonl", "w") as f:
                for s, p in zip(eval_samples, preds, strict=True):
                    row = {"prompt": s.prompt, "target": s.target, "prediction": p, "kind": s.kind}
                    f.write(json.dumps(row) + "\n")
        return accuracy(eval_samples, preds)

    metrics: dict[str, Any] = {"stages": []}
    if config.eval.before and eval_samples:
        metrics["before"] = evaluate("before")
        say(f"mmpt: before training: accuracy {metrics['before']['accuracy']:.3f}")

    applied: dict[str, methods.Method] = {}
    for index, stage in enumerate(stages):
        for method_config in stage.methods:
            if method_config.name not in applied:
                applied[method_config.name] = methods.apply(loaded, method_config, freeze_base=False)
            elif method_config not in (applied[method_config.name].config, type(method_config)()):
                raise ConfigError(
                    f"stages[{index}].methods: '{method_config.name}' was applied in an earlier stage with other "
                    "settings; repeat it exactly or give only its name to keep training it"
                )
        active = [applied[m.name] for m in stage.methods]
        for p in loaded.model.parameters():
            p.requires_grad_(False)
        for method in active:
            for p in method.parameters():
                p.requires_grad_(True)
        counts = methods.count_parameters(loaded, active)
        say(f"mmpt: stage {index + 1}/{len(stages)} '{stage.name}' trains {'+'.join(m.name for m in stage.methods)}: "
            f"{counts['trainable']:,} of {counts['total']:,} parameters ({counts['percent']:.4f}%)")
        stage_metrics = train_stage(accelerator, loaded.model, loaded.processor, active, stage, train_samples,
                                    config.seed + index, out_dir, progress)
        metrics["stages"].append({"name": stage.name, "methods": [m.name for m in stage.methods],
                                  "parameters": counts, **stage_metrics})
    metrics["parameters"] = metrics["stages"][-1]["parameters"]
    metrics["train"] = {k: sum(s[k] for s in metrics["stages"]) for k in ("steps", "samples", "seconds")}
    metrics["train"]["final_loss"] = metrics["stages"][-1]["final_loss"]
    metrics["train"]["samples_per_s"] = metrics["train"]["samples"] / max(metrics["train"]["seconds"], 1e-9)

    if eval_samples:
        metrics["after"] = evaluate("after")
        say(f"mmpt: after training: accuracy {metrics['after']['accuracy']:.3f}")
    if accelerator.is_main_process:
        for name, method in applied.items():
            methods.save(method, out_dir / f"{name}.safetensors", base_fingerprint)
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
        say(write_report(out_dir, config, metrics))
    metrics["run_dir"] = str(out_dir)
    return metrics


def train_stage(
    accelerator: Accelerator,
    model: torch.nn.Module,
    processor: VLMProcessor,
    active: list[methods.Method],
    stage: StageConfig,
    samples: list[Sample],
    seed: int,
    out_dir: Path,
    progress: bool,
) -> dict[str, float]:
    """One stage: AdamW over the active methods' parameters, warm-up then decay, logged to ``log.csv``."""
    tc = stage.train
    loader = DataLoader(
        samples, batch_size=tc.batch_size, shuffle=True, collate_fn=Collator(processor),
        num_workers=tc.num_workers, generator=torch.Generator().manual_seed(seed),
    )
    trainable = [p for m in active for p in m.parameters()]
    optimizer = torch.optim.AdamW(trainable, lr=tc.lr, betas=tc.betas, weight_decay=tc.weight_decay)
    accelerator.gradient_accumulation_steps = tc.grad_accum
    wrapped, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    # sized after prepare() (which shards the loader across processes); stepped once per optimizer step
    steps_per_epoch = math.ceil(len(loader) / tc.grad_accum)
    total = min(tc.max_steps or steps_per_epoch * tc.epochs, steps_per_epoch * tc.epochs)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(tc.schedule, int(tc.warmup_ratio * total), total))

    bar = tqdm(total=total, desc=stage.name, unit="step", disable=not (progress and accelerator.is_main_process))
    main = accelerator.is_main_process
    log_path = out_dir / "log.csv" if main else Path("/dev/null")
    new_log = main and not log_path.exists()
    step, seen, started, running = 0, 0, time.perf_counter(), float("nan")
    wrapped.train()
    with open(log_path, "a", newline="") as log_file:
        log = csv.DictWriter(log_file, fieldnames=["stage", "step", "loss", "lr", "samples_per_s"])
        if new_log:
            log.writeheader()
        while step < total:
            for batch in loader:
                with accelerator.accumulate(wrapped):
                    loss = wrapped(**batch, use_cache=False).loss
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and tc.grad_clip:
                        accelerator.clip_grad_norm_(trainable, tc.grad_clip)
                    optimizer.step()
                    if accelerator.sync_gradients:
                        scheduler.step()
                    optimizer.zero_grad()
                seen += batch["input_ids"].shape[0] * accelerator.num_processes
                running = loss.item() if math.isnan(running) else 0.9 * running + 0.1 * loss.item()
                if not accelerator.sync_gradients:
                    continue
                step += 1
                rate = seen / (time.perf_counter() - started)
                lr = scheduler.get_last_lr()[0]
                bar.set_postfix(loss=f"{running:.4f}", lr=f"{lr:.2e}", samples_s=f"{rate:.1f}")
                bar.update(1)
                if step % tc.log_every == 0 or step == total:
                    log.writerow({"stage": stage.name, "step": step, "loss": running, "lr": lr, "samples_per_s": rate})
                if step >= total:
                    break
    bar.close()
    wrapped.eval()
    seconds = time.perf_counter() - started
    return {"steps": step, "samples": seen, "seconds": round(seconds, 1), "final_loss": running,
            "samples_per_s": seen / max(seconds, 1e-9)}
