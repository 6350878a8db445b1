"""Training-step cost on the real quickstart batch: mmpt-tiny, 8 easy-VQA questions, every main method.

    python benchmarks/train_step.py [--repeats 5] [--threads 2] [--precision fp32] [--csv results/train_step.csv]

Run it on an idle machine. One process; for each method the variants run interleaved, their order rotated every
repeat, and the median step (forward + backward + AdamW) is reported:

- ``full logits``: the loss the model computes itself over every position's logits (what mmpt trained with before);
- ``label logits``: :func:`mmpt.tasks.objectives.answer_loss`, the LM head only where a label needs it;
- ``label logits + cached tower``: the same with the frozen vision tower's features computed once per image
  (``train.cache_frozen_towers``; only for methods that leave the tower and its input alone).

It also prints what the batch's tokens cost: the step time of rows without the system prompt (the 86-token rows
lose their 16 system-turn tokens), i.e. what each prompt token costs per step.

To time an AVX2-only CPU (no native bf16, no AVX-512) on a newer one, restrict PyTorch's, oneDNN's and MKL's kernels
(MKL runs the fp32 matrix products, ~60% of a step: without its variable a step is ~10% faster than on an AVX2 CPU):
``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 python benchmarks/train_step.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from mmpt import methods, models
from mmpt.data import load_easy_vqa
from mmpt.methods import (
    AdapterConfig,
    DeepPromptConfig,
    FullConfig,
    LoRAConfig,
    MethodConfig,
    PrefixConfig,
    PromptConfig,
)
from mmpt.models.towers import cache_frozen_towers
from mmpt.tasks.common import open_image
from mmpt.tasks.objectives import answer_loss

TEMPLATE = "{question} Answer with one word."
METHODS: list[MethodConfig] = [
    PrefixConfig(length=16),
    PromptConfig(length=16),
    DeepPromptConfig(length=16, tower="lm"),
    LoRAConfig(r=16),
    AdapterConfig(bottleneck=64),
    FullConfig(towers=["lm"]),
]


def quickstart_batch(loaded: models.LoadedModel) -> dict[str, torch.Tensor]:
    """The first 8 training questions of the quickstart (seed 0), as its collator builds them."""
    samples = load_easy_vqa("train", limit=8, seed=0, prompt_template=TEMPLATE)
    return loaded.processor([open_image(s.image) for s in samples], [s.prompt for s in samples],
                            [s.target for s in samples])


def without_leading(batch: dict[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    """The batch with each row's first ``n`` real tokens removed (the system turn), left-padded again: what the
    rows would cost without them (the model sees a prompt it was not trained on; only the timing counts)."""
    rows = [(ids[mask.bool()][n:], labels[mask.bool()][n:])
            for ids, mask, labels in zip(batch["input_ids"], batch["attention_mask"], batch["labels"], strict=True)]
    width = max(len(r[0]) for r in rows)
    out = {"input_ids": torch.zeros(len(rows), width, dtype=torch.long),
           "attention_mask": torch.zeros(len(rows), width, dtype=torch.long),
           "labels": torch.full((len(rows), width), -100, dtype=torch.long), "pixel_values": batch["pixel_values"]}
    for i, (ids, labels) in enumerate(rows):
        out["input_ids"][i, width - len(ids):] = ids
        out["attention_mask"][i, width - len(ids):] = 1
        out["labels"][i, width - len(ids):] = labels
    return out


def step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Callable[[], torch.Tensor],
         autocast: Callable[[], Any]) -> float:
    start = time.perf_counter()
    with autocast():
        loss = loss_fn()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def bench_method(loaded: models.LoadedModel, config: MethodConfig, batches: dict[str, dict[str, torch.Tensor]],
                 repeats: int, autocast: Callable[[], Any]) -> list[dict[str, Any]]:
    model = loaded.model
    method = methods.apply(loaded, config)
    optimizer = torch.optim.AdamW(list(method.parameters()), lr=1e-5)
    model.train()
    batch, short = batches["quickstart"], batches["no system prompt"]
    variants: dict[str, Callable[[], torch.Tensor]] = {
        "full logits": lambda: model(**batch, use_cache=False).loss,
        "label logits": lambda: answer_loss(model, batch),
        "label logits, no system prompt": lambda: answer_loss(model, short),
    }
    cache = None
    if config.name in ("prefix", "prompt", "deep_prompt", "lora", "adapter", "full"):  # the tower stays frozen
        cache = cache_frozen_towers(loaded, list(method.parameters()))
        cache.enabled = False  # switched on for its own variant only

        def cached() -> torch.Tensor:
            cache.enabled = True
            try:
                return answer_loss(model, batch)
            finally:
                cache.enabled = False

        variants["label logits + cached tower"] = cached
    times: dict[str, list[float]] = {k: [] for k in variants}
    names = list(variants)
    for name in names:  # warm-up: optimizer state, first allocations, the tower cache's first fill
        step(model, optimizer, variants[name], autocast)
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            times[name].append(step(model, optimizer, variants[name], autocast))
    if cache is not None:
        cache.remove()
    method.remove()
    trainable = sum(p.numel() for p in method.parameters())
    base = statistics.median(times["full logits"])
    tokens = {k: int(b["attention_mask"].sum()) for k, b in batches.items()}
    rows = []
    for name, values in times.items():
        seconds = statistics.median(values)
        rows.append({"method": config.name, "variant": name, "seconds": seconds, "vs_full_logits": seconds / base,
                     "tokens": tokens["no system prompt" if "system" in name else "quickstart"],
                     "trainable": trainable, "repeats": repeats})
    print(f"  {config.name}: " + ", ".join(f"{r['variant']} {r['seconds']:.3f} s ({r['vs_full_logits']:.2f}x)"
                                           for r in rows), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--methods", default=",".join(c.name for c in METHODS))
    parser.add_argument("--model", default="mmpt-tiny", help="mmpt-tiny, or mmpt-tiny-random for a smoke check")
    parser.add_argument("--csv", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    isa = "/".join(os.environ.get(k, "default") for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA",
                                                            "MKL_ENABLE_INSTRUCTIONS"))
    print(f"torch {torch.__version__}, {args.threads} threads, {args.precision}, ATEN/oneDNN/MKL ISA {isa}, "
          f"{args.repeats} repeats (median)")
    loaded = models.load(args.model)
    full = quickstart_batch(loaded)
    tokenizer = loaded.processor.tokenizer
    system_turn = tokenizer.apply_chat_template([{"role": "system", "content": loaded.processor.system_prompt}],
                                                tokenize=False)  # "<|im_start|>system\n...<|im_end|>\n"
    system_tokens = len(tokenizer(system_turn, add_special_tokens=False)["input_ids"])
    batches = {"quickstart": full, "no system prompt": without_leading(full, system_tokens)}
    shape = tuple(batches["quickstart"]["input_ids"].shape)
    labels = int((batches["quickstart"]["labels"] != -100).sum())
    print(f"batch {shape} ({labels} labelled tokens); without the system prompt "
          f"{tuple(batches['no system prompt']['input_ids'].shape)}")

    def autocast() -> Any:
        if args.precision == "bf16":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    wanted = set(args.methods.split(","))
    rows = []
    for config in METHODS:
        if config.name in wanted:
            rows += bench_method(loaded, config, batches, args.repeats, autocast)
    print("\n| method | variant | seconds | vs full logits |\n| --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['method']} | {r['variant']} | {r['seconds']:.3f} | {r['vs_full_logits']:.3f} |")
    if args.csv is not None:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["method", "variant", "seconds", "vs_full_logits", "tokens",
                                                   "trainable", "repeats", "precision", "isa", "threads"])
            writer.writeheader()
            for r in rows:
                writer.writerow({**r, "precision": args.precision, "isa": isa, "threads": args.threads})


if __name__ == "__main__":
    main()
