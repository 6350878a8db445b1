"""Cost of mmpt's hooks on CPU: training steps and greedy generation, against PEFT and full fine-tuning.

    python benchmarks/hook_cost.py [--repeats 3] [--threads 2] [--csv results/hook_cost.csv]

Run it on an idle machine (nothing else running). One process, all variants interleaved in each repeat, the
median reported. Model: SmolLM2-135M's shape (Llama, 30 layers, width 576, 9 heads / 3 KV heads, vocabulary
49,152), random weights, fp32, SDPA.

Training (batch 8, sequence 128, AdamW, one optimizer step; the order of the variants rotates every repeat, use
``--repeats 6`` so that each variant takes each position once): mmpt ``prefix`` (64 tokens), PEFT prefix tuning
(64 virtual tokens), PEFT LoRA r16 on q/k/v, mmpt ``lora`` r16 on q/k/v, full fine-tuning, mmpt ``prefix`` with
gradient checkpointing. Peak memory: the largest resident set size sampled every 2 ms during a step, minus the
resident set size before it (what the step adds on top of the loaded models).

Generation (greedy, 64 new tokens, 16-token prompt, batch 1 and 8): the base model, mmpt ``prefix`` with an MLP
reparameterization, the same folded into plain prefixes, PEFT prefix tuning.

Training is measured twice: with a full-sequence loss (every token labelled: the same computation for every
variant) and with the task loss mmpt trains with (2 labelled tokens at the end of each row; mmpt and full
fine-tuning compute the LM head only there, PEFT's models their full-logit loss, as a PEFT user gets it).

Targets (issues 9 and 16): mmpt prefix step <= 0.9x PEFT prefix; frozen-base methods <= 0.72x full fine-tuning;
folded prefix generation <= 1.05x the base model per token.
"""

from __future__ import annotations

import argparse
import copy
import csv
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from mmpt import methods
from mmpt.methods import LoRAConfig, PrefixConfig
from mmpt.models import Family, LoadedModel, Tower
from mmpt.tasks.objectives import answer_loss

LLAMA = Family(name="llama", towers={"lm": Tower("decoder", "model", "model.layers", "self_attn", "model")})
SHAPE = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
             num_key_value_heads=3, vocab_size=49152, max_position_embeddings=2048, tie_word_embeddings=True)
QKV = ["q_proj", "k_proj", "v_proj"]


def base_model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(**SHAPE)
    config._attn_implementation = "sdpa"
    return LlamaForCausalLM(config)


class PeakRSS:
    """Largest resident set size seen by a sampling thread while the block runs (bytes above the start)."""

    def __enter__(self) -> PeakRSS:
        self.process = psutil.Process()
        self.start = self.process.memory_info().rss
        self.peak = self.start
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.002)

    def __exit__(self, *exc: object) -> None:
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)

    @property
    def added_mb(self) -> float:
        return (self.peak - self.start) / 2**20


def mmpt_variant(base: LlamaForCausalLM, config: Any, checkpointing: bool = False) -> tuple[torch.nn.Module, list]:
    model = copy.deepcopy(base)
    method = methods.apply(LoadedModel("llama", model, None, LLAMA), config)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model, list(method.parameters())


def peft_variant(base: LlamaForCausalLM, config: Any) -> tuple[torch.nn.Module, list]:
    from peft import get_peft_model

    model = get_peft_model(copy.deepcopy(base), config)
    return model, [p for p in model.parameters() if p.requires_grad]


def full_variant(base: LlamaForCausalLM) -> tuple[torch.nn.Module, list]:
    model = copy.deepcopy(base)
    return model, list(model.parameters())


def training_variants(base: LlamaForCausalLM) -> dict[str, tuple[torch.nn.Module, list]]:
    from peft import LoraConfig as PeftLoraConfig
    from peft import PrefixTuningConfig

    return {
        "mmpt prefix 64": mmpt_variant(base, PrefixConfig(length=64)),
        "PEFT prefix 64": peft_variant(base, PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=64)),
        "PEFT LoRA r16 qkv": peft_variant(base, PeftLoraConfig(task_type="CAUSAL_LM", r=16, lora_alpha=32,
                                                               lora_dropout=0.05, target_modules=QKV)),
        "mmpt lora r16 qkv": mmpt_variant(base, LoRAConfig(r=16, targets=QKV)),
        "full fine-tuning": full_variant(base),
        "mmpt prefix 64 + checkpointing": mmpt_variant(base, PrefixConfig(length=64), checkpointing=True),
    }


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: dict[str, torch.Tensor],
               sliced: bool = False) -> None:
    model.train()
    loss = answer_loss(model, batch) if sliced else model(**batch, use_cache=False).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def measure(fn: Callable[[], None]) -> tuple[float, float]:
    with PeakRSS() as rss:
        start = time.perf_counter()
        fn()
        seconds = time.perf_counter() - start
    return seconds, rss.added_mb


def bench_training(base: LlamaForCausalLM, repeats: int, task_loss: bool = False) -> list[dict[str, Any]]:
    """Full-sequence loss (every token labelled), or with ``task_loss`` the loss mmpt trains with: 2 labelled
    tokens at the end of each row (an answer and its end token), mmpt and full fine-tuning computing the LM head
    only there (:func:`~mmpt.tasks.objectives.answer_loss`), PEFT's models their own full-logit loss."""
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, SHAPE["vocab_size"], (8, 128), generator=gen)
    labels = ids if not task_loss else torch.where(torch.arange(128) >= 126, ids, torch.full_like(ids, -100))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    variants = training_variants(base)
    sliced = {k: task_loss and not k.startswith("PEFT") for k in variants}
    optimizers = {k: torch.optim.AdamW(params, lr=1e-4) for k, (_, params) in variants.items()}
    benchmark = "train step, task loss (batch 8 x 128)" if task_loss else "train step (batch 8 x 128)"
    for name, (model, _) in variants.items():  # warm-up: first-step allocations, optimizer state
        train_step(model, optimizers[name], batch, sliced[name])
    times: dict[str, list[float]] = {k: [] for k in variants}
    memory: dict[str, list[float]] = {k: [] for k in variants}
    names = list(variants)
    for r in range(repeats):
        # rotate the order every repeat: the first step after another variant's pays for re-faulting the memory
        # glibc handed back (up to +25% measured), so no variant may always sit in the same position
        for name in names[r % len(names):] + names[: r % len(names)]:
            model = variants[name][0]
            seconds, added = measure(lambda m=model, o=optimizers[name], c=sliced[name]: train_step(m, o, batch, c))
            times[name].append(seconds)
            memory[name].append(added)
        print(f"  {benchmark}: repeat {r + 1}/{repeats} done", flush=True)
    return [{"benchmark": benchmark, "variant": k, "seconds": statistics.median(times[k]),
             "peak_added_mb": statistics.median(memory[k]),
             "trainable": sum(p.numel() for p in variants[k][1])} for k in variants]


def bench_generation(base: LlamaForCausalLM, repeats: int) -> list[dict[str, Any]]:
    from peft import PrefixTuningConfig

    mlp, _ = mmpt_variant(base, PrefixConfig(length=64, reparam="mlp", mlp_hidden=512))
    folded, _ = mmpt_variant(base, PrefixConfig(length=64, reparam="mlp", mlp_hidden=512))
    methods_of = [m for m in folded.modules() if hasattr(m, "fold")]
    for method in methods_of:
        method.fold()
    peft, _ = peft_variant(base, PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=64))
    variants = {"base": base, "mmpt prefix 64 (mlp)": mlp, "mmpt prefix 64 folded": folded, "PEFT prefix 64": peft}
    rows = []
    for batch_size in (1, 8):
        gen = torch.Generator().manual_seed(2)
        ids = torch.randint(3, SHAPE["vocab_size"], (batch_size, 16), generator=gen)
        kw = dict(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=64, min_new_tokens=64,
                  do_sample=False)
        times: dict[str, list[float]] = {k: [] for k in variants}
        with torch.no_grad():
            for model in variants.values():
                model.eval()
                model.generate(**{**kw, "max_new_tokens": 4, "min_new_tokens": 4})  # warm-up
            names = list(variants)
            for r in range(repeats):
                for name in names[r % len(names):] + names[: r % len(names)]:  # rotated, as for training
                    model = variants[name]
                    start = time.perf_counter()
                    model.generate(**kw)
                    times[name].append(time.perf_counter() - start)
        rows += [{"benchmark": f"generate 64 tokens, batch {batch_size}", "variant": k,
                  "seconds": statistics.median(v), "ms_per_token": 1000 * statistics.median(v) / 64}
                 for k, v in times.items()]
        print(f"  generation batch {batch_size} done", flush=True)
    return rows


def ratios(rows: list[dict[str, Any]]) -> list[tuple[str, float, float, bool]]:
    """(target, measured ratio, bound, met) for the issue's three targets."""
    t = {(r["benchmark"], r["variant"]): r["seconds"] for r in rows}
    out = []
    for train, loss in (("train step (batch 8 x 128)", "full-sequence loss"),
                        ("train step, task loss (batch 8 x 128)", "task loss")):
        if (train, "mmpt prefix 64") not in t:
            continue
        out.append((f"mmpt prefix step / PEFT prefix step ({loss})",
                    t[train, "mmpt prefix 64"] / t[train, "PEFT prefix 64"], 0.9))
        for variant in ("mmpt prefix 64", "PEFT prefix 64", "PEFT LoRA r16 qkv", "mmpt lora r16 qkv"):
            out.append((f"{variant} step / full fine-tuning step ({loss})",
                        t[train, variant] / t[train, "full fine-tuning"], 0.72))
    for b in (1, 8):
        g = f"generate 64 tokens, batch {b}"
        if (g, "base") not in t:
            continue
        out.append((f"folded prefix / base per token (batch {b})", t[g, "mmpt prefix 64 folded"] / t[g, "base"], 1.05))
    return [(name, value, bound, value <= bound) for name, value, bound in out]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--csv", type=Path, default=None)
    parser.add_argument("--no-generation", action="store_true", help="training steps only")
    parser.add_argument("--smoke", action="store_true", help="a 2-layer model, 1 repeat: checks the script runs")
    args = parser.parse_args()
    if args.smoke:
        SHAPE.update(num_hidden_layers=2, vocab_size=512, hidden_size=72, intermediate_size=96)
        args.repeats = 1
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, {args.repeats} repeats (median)")
    base = base_model()
    rows = bench_training(base, args.repeats) + bench_training(base, args.repeats, task_loss=True)
    if not args.no_generation:
        rows += bench_generation(base, args.repeats)
    print("\n| benchmark | variant | seconds | ms/token | peak MB added | trainable |\n| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['benchmark']} | {r['variant']} | {r['seconds']:.3f} | {r.get('ms_per_token', float('nan')):.1f} | "
              f"{r.get('peak_added_mb', float('nan')):.0f} | {r.get('trainable', '')} |")
    print("\n| target | ratio | bound | met |\n| --- | --- | --- | --- |")
    for name, value, bound, met in ratios(rows):
        print(f"| {name} | {value:.3f} | <= {bound} | {'yes' if met else 'no'} |")
    if args.csv is not None:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["benchmark", "variant", "seconds", "ms_per_token", "peak_added_mb",
                                                   "trainable"])
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
