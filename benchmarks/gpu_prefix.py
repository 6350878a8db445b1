"""GPU check and benchmark of prefix injection (run on a CUDA machine; random weights, realistic shapes).

    python benchmarks/gpu_prefix.py

1. Correctness on CUDA for every family's tiny model: prefix with KV cache == without, removal exact, SDPA used.
2. Training-step time and peak memory of a 1.1B-parameter-shaped Llama (random weights, bf16) with mmpt's
   prefix vs PEFT's PrefixTuningConfig, with and without gradient checkpointing (PEFT cannot combine prefix
   tuning with gradient checkpointing: reported as such), with a full-sequence loss and with a task loss (8
   labelled tokens a row: mmpt computes the LM head only there).
"""

from __future__ import annotations

import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from mmpt import methods, models
from mmpt.methods import PrefixConfig
from mmpt.models import Family, LoadedModel, Tower
from mmpt.models.families import FAMILY_MODULES
from mmpt.tasks.objectives import answer_loss

LLAMA = Family(name="llama", towers={"lm": Tower("decoder", "model", "model.layers", "self_attn", "model")})


def check_families() -> None:
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


def step_time(use_peft: bool, checkpointing: bool, prefix: int = 64, batch: int = 8, seq: int = 1024,
              task_loss: bool = False) -> str:
    """ms/step and peak memory; with ``task_loss`` only the last 8 tokens of each row are labelled and mmpt computes
    the LM head only there (:func:`~mmpt.tasks.objectives.answer_loss`), PEFT its full-logit loss."""
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                         num_key_value_heads=4, vocab_size=32000, max_position_embeddings=4096)
    config._attn_implementation = "sdpa"
    model = LlamaForCausalLM(config).to("cuda", torch.bfloat16)
    if use_peft:
        from peft import PrefixTuningConfig, get_peft_model

        model = get_peft_model(model, PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=prefix))
        params = [p for p in model.parameters() if p.requires_grad]
    else:
        for p in model.parameters():
            p.requires_grad_(False)
        method = methods.apply(LoadedModel("llama", model, None, LLAMA), PrefixConfig(length=prefix))
        params = list(method.parameters())
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if use_peft:
            model.enable_input_require_grads()
    model.train()
    opt = torch.optim.AdamW(params, lr=1e-3)
    ids = torch.randint(0, 32000, (batch, seq), device="cuda")
    labels = torch.where(torch.arange(seq, device="cuda") >= seq - 8, ids, -100) if task_loss else ids
    torch.cuda.reset_peak_memory_stats()
    try:
        times = []
        for i in range(6):
            torch.cuda.synchronize()
            t = time.perf_counter()
            if task_loss and not use_peft:
                loss = answer_loss(model, {"input_ids": ids, "labels": labels})
            else:
                loss = model(input_ids=ids, labels=labels, use_cache=False).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            torch.cuda.synchronize()
            if i >= 2:
                times.append(time.perf_counter() - t)
        ms = 1000 * sum(times) / len(times)
        mem = torch.cuda.max_memory_allocated() / 2**30
        return f"{ms:8.1f} ms/step  peak {mem:6.2f} GiB  ({batch * seq / (ms / 1000):,.0f} tokens/s)"
    except Exception as exc:  # noqa: BLE001 - report, don't crash the benchmark
        return f"failed: {type(exc).__name__}: {str(exc)[:120]}"


def main() -> None:
    print(torch.cuda.get_device_name(), "torch", torch.__version__)
    check_families()
    for task_loss in (False, True):
        for checkpointing in (False, True):
            for use_peft in (False, True):
                who = "peft prefix" if use_peft else "mmpt prefix"
                result = step_time(use_peft, checkpointing, task_loss=task_loss)
                print(f"{who:12s} checkpointing={checkpointing!s:5s} task_loss={task_loss!s:5s}: {result}")
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
