"""GPU check and benchmark of prefix tuning (run on a CUDA machine; random weights, realistic shapes).

    python benchmarks/gpu_prefix.py [--csv results/gpu_prefix.csv] [--models llama-1.1b,llava-7b]
    python benchmarks/gpu_prefix.py --smoke      # tiny shapes on the CPU: checks the script in seconds

1. Correctness on CUDA for every family's tiny model: prefix with KV cache == without, removal exact, SDPA used.
2. Training-step time, samples/s and peak memory in bf16, mmpt's prefix (64) vs PEFT's ``PrefixTuningConfig``
   (64 virtual tokens), with and without gradient checkpointing (PEFT prefix tuning cannot combine with
   gradient checkpointing: reported as such), with a full-sequence loss and with a task loss (8 labelled tokens
   a row: mmpt computes the LM head only there, :func:`~mmpt.tasks.objectives.answer_loss`; PEFT its full-logit
   loss, as a PEFT user gets it). Two models:

   - ``llama-1.1b``: TinyLlama-1.1B's shape (22 layers, width 2048, 32 heads / 4 KV heads), batch 8 x 1024 tokens;
   - ``llava-7b``: LLaVA-1.5-7B's shape (CLIP ViT-L/14 at 336 px: 576 image tokens; Llama-2-7B: 32 layers, width
     4096), batch 8 x (576 image + 64 text tokens), the prefix in the language model.

Each step is timed after 2 warm-up steps (mean of 4, ``torch.cuda.synchronize`` around each).
"""

from __future__ import annotations

import argparse
import csv
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmpt import methods, models
from mmpt.methods import PrefixConfig
from mmpt.models import Family, LoadedModel, Tower
from mmpt.models.families import FAMILY_MODULES
from mmpt.models.families.llava import FAMILY as LLAVA
from mmpt.tasks.objectives import answer_loss

LLAMA = Family(name="llama", towers={"lm": Tower("decoder", "model", "model.layers", "self_attn", "model")})
IMAGE_TOKEN = 32000


def check_families() -> None:
    """Prefix with and without the KV cache, and its removal, on every family's tiny model on CUDA."""
    for name, module in FAMILY_MODULES.items():
        loaded = models.load(f"{name}-tiny-random", attn_implementation="eager" if name == "blip" else "sdpa")
        model = loaded.model.cuda()
        batch = {k: v.cuda() for k, v in module.tiny_inputs(model, [5, 2, 7]).items()}
        with torch.no_grad():
            base = model(**batch).logits
        method = methods.apply(loaded, PrefixConfig(length=4, towers=["lm"] if name != "florence2" else ["both"]))
        with torch.no_grad():
            for p in method.parameters():
                p.normal_(0, 1.0)
            a = model(**batch, use_cache=False).logits
            b = model(**batch, use_cache=True).logits
        method.remove()
        with torch.no_grad():
            c = model(**batch).logits
        print(f"{name:10s} cuda: cache-vs-no-cache max diff {(a - b).abs().max().item():.2e}; "
              f"removal exact {torch.equal(c, base)}; attn {model.config._attn_implementation}")


def build(kind: str, smoke: bool) -> tuple[nn.Module, Family, int, Callable[[int, torch.device], dict[str, Any]]]:
    """A random-initialised model of ``kind``'s shape (tiny with ``smoke``), its family, batch size, and a
    function giving a batch (``input_ids``, ``labels`` on the last ``n`` tokens or all, ``pixel_values``)."""
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlamaForCausalLM,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )

    lm = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
              num_key_value_heads=4, vocab_size=32000, max_position_embeddings=4096)
    if kind == "llava-7b":
        lm.update(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_key_value_heads=32,
                  vocab_size=32064)
    vision = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                  image_size=336, patch_size=14)
    batch_size, text = (8, 1024) if kind == "llama-1.1b" else (8, 64)
    if smoke:
        lm.update(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2)
        vision.update(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      image_size=56)
        batch_size, text = 2, 32
    torch.manual_seed(0)
    if kind == "llama-1.1b":
        config = LlamaConfig(**lm)
        config._attn_implementation = "sdpa"
        model, family, images = LlamaForCausalLM(config), LLAMA, 0
    elif kind == "llava-7b":
        config = LlavaConfig(vision_config=CLIPVisionConfig(**vision), text_config=LlamaConfig(**lm),
                             image_token_index=IMAGE_TOKEN, vision_feature_layer=-2)
        config._attn_implementation = "sdpa"
        model, family = LlavaForConditionalGeneration(config), LLAVA
        images = (vision["image_size"] // vision["patch_size"]) ** 2
    else:
        raise ValueError(f"unknown model '{kind}'; choose llama-1.1b or llava-7b")

    def batch(labelled: int, device: torch.device) -> dict[str, Any]:
        ids = torch.randint(3, 32000 if not smoke else 1000, (batch_size, images + text), device=device)
        ids[:, 0] = 1
        ids[:, 1:1 + images] = IMAGE_TOKEN
        positions = torch.arange(ids.shape[1], device=device)
        out: dict[str, Any] = {"input_ids": ids, "labels": torch.where(positions >= ids.shape[1] - labelled, ids, -100)
                               if labelled else torch.where(ids == IMAGE_TOKEN, -100, ids)}
        if images:
            size = vision["image_size"]
            out["pixel_values"] = torch.randn(batch_size, 3, size, size, device=device, dtype=model.dtype)
        return out

    return model, family, batch_size, batch


def step_time(kind: str, use_peft: bool, checkpointing: bool, task_loss: bool, device: torch.device,
              dtype: torch.dtype, smoke: bool, prefix: int = 64) -> dict[str, Any]:
    """One configuration: ms/step, samples/s and peak memory (CUDA), or why it failed."""
    model, family, batch_size, make_batch = build(kind, smoke)
    model = model.to(device, dtype)
    row: dict[str, Any] = {"model": kind, "who": "peft prefix" if use_peft else "mmpt prefix",
                           "checkpointing": checkpointing, "loss": "task (8 labels)" if task_loss else "full sequence",
                           "dtype": str(dtype).removeprefix("torch."), "batch": batch_size}
    try:
        if use_peft:
            from peft import PrefixTuningConfig, get_peft_model

            model = get_peft_model(model, PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=prefix))
            params = [p for p in model.parameters() if p.requires_grad]
        else:
            for p in model.parameters():
                p.requires_grad_(False)
            method = methods.apply(LoadedModel(kind, model, None, family), PrefixConfig(length=prefix, towers=["lm"]))
            params = list(method.parameters())
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            if use_peft:
                model.enable_input_require_grads()
        model.train()
        opt = torch.optim.AdamW(params, lr=1e-3)
        batch = make_batch(8 if task_loss else 0, device)
        row["tokens"] = int(batch["input_ids"].numel())
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        times = []
        for i in range(6 if not smoke else 2):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            if task_loss and not use_peft:
                loss = answer_loss(model, batch)
            else:
                loss = model(**batch, use_cache=False).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= (2 if not smoke else 1):
                times.append(time.perf_counter() - start)
        seconds = sum(times) / len(times)
        row.update(ms_per_step=round(1000 * seconds, 1), samples_per_s=round(batch_size / seconds, 2),
                   peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None)
    except Exception as exc:  # noqa: BLE001 - report, don't crash the benchmark
        row["error"] = f"{type(exc).__name__}: {str(exc)[:160]}"
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="llama-1.1b,llava-7b")
    parser.add_argument("--csv", type=Path, default=None)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU, fp32: checks the script runs")
    args = parser.parse_args()
    if args.smoke:
        device, dtype = torch.device("cpu"), torch.float32
        print("smoke: tiny shapes on the CPU (timings mean nothing)")
    else:
        device, dtype = torch.device("cuda"), torch.bfloat16
        print(torch.cuda.get_device_name(), "torch", torch.__version__)
        check_families()
    rows = []
    for kind in args.models.split(","):
        for task_loss in (False, True):
            for checkpointing in (False, True):
                for use_peft in (False, True):
                    row = step_time(kind, use_peft, checkpointing, task_loss, device, dtype, args.smoke)
                    rows.append(row)
                    result = row.get("error") or (f"{row['ms_per_step']:8.1f} ms/step {row['samples_per_s']:7.2f} "
                                                  f"samples/s peak {row['peak_gib']} GiB")
                    print(f"{kind:10s} {row['who']:11s} checkpointing={checkpointing!s:5s} "
                          f"loss={row['loss']:15s}: {result}", flush=True)
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
    if args.csv is not None:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        fields = ["model", "who", "checkpointing", "loss", "dtype", "batch", "tokens", "ms_per_step", "samples_per_s",
                  "peak_gib", "error"]
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
