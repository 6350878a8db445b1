"""Methods that leave mmpt: PEFT adapter export/import and model cards.

``export_peft(run)`` writes one PEFT adapter folder per method that PEFT can run with the same semantics:

- ``lora``: mmpt's LoRA *is* PEFT's ``lora.Linear``; the adapter targets the same modules by their full names, so
  ``PeftModel.from_pretrained(base, folder)`` gives mmpt's logits exactly.
- ``prefix`` on a causal LM that is a module of its own (mmpt-tiny's SmolLM2): PEFT's prefix tuning with the folded
  prefixes. One difference, stated in the model card: PEFT counts the prefix in the positions of the real tokens
  (they start at ``length``), mmpt does not (they start at 0). With position ids shifted by ``length`` mmpt gives
  PEFT's logits exactly.

Other methods (prompts, adapters, M2PT, visual prompts...) have no PEFT equivalent with the same computation and are
refused with the reason. ``import_peft`` reads a PEFT LoRA adapter (safetensors only) into mmpt's ``lora``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from mmpt import methods
from mmpt.integrity import check_finite, save_safetensors, write_manifest
from mmpt.methods.lora.peft_import import PEFT_CONFIG, PEFT_WEIGHTS
from mmpt.methods.lora.peft_import import lora_modules as _lora_modules
from mmpt.runfolder import refuse_links, write_text

if TYPE_CHECKING:
    from mmpt.models import LoadedModel

NOT_EXPORTABLE = {
    "prompt": "PEFT's prompt tuning prepends embeddings at the input only; mmpt's prompts are placed per tower",
    "deep_prompt": "PEFT has no deep (per-layer replaced) prompts",
    "m2pt": "PEFT has no visual + textual prompt combination with an interaction layer",
    "visual_prompt": "PEFT has no visual prompts",
    "adapter": "PEFT's bottleneck adapters are not placed like mmpt's",
    "answer_head": "a classification head over answers is not a PEFT adapter",
    "projector": "the projector is a base-model module: save it with the model instead",
    "bitfit": "PEFT has no BitFit",
    "full": "full fine-tuning is a whole model: save it with save_pretrained",
    "head": "the LM head is a base-model module: save it with the model instead",
}


def lora_state(loaded: LoadedModel, method: Any) -> tuple[dict[str, torch.Tensor], list[str]]:
    """PEFT's adapter state dict (``base_model.model.<module>.lora_A.weight`` ...) and the module names."""
    modules = _lora_modules(loaded, method)
    state: dict[str, torch.Tensor] = {}
    for name, module in modules.items():
        for part in ("lora_A", "lora_B"):
            state[f"base_model.model.{name}.{part}.weight"] = getattr(module, part)["default"].weight.detach().cpu()
    return state, sorted(modules)


def prefix_state(loaded: LoadedModel, method: Any) -> tuple[torch.Tensor, dict[str, Any], str]:
    """PEFT's ``prompt_embeddings`` ``(length, layers * 2 * kv_width)``, its PrefixTuningConfig fields and the LM's
    module path; raises ValueError (with the reason) where PEFT's prefix tuning does not compute the same thing."""
    config = method.config
    towers = loaded.family.resolve(config.towers)
    if list(method.encoders) != ["lm"] or towers != ["lm"] or config.cross_attention:
        raise ValueError("PEFT's prefix tuning prefixes one causal LM's self-attention; this prefix covers "
                         f"towers {list(method.encoders)}")
    path = loaded.family.tower("lm").module
    lm = loaded.model.get_submodule(path)
    if not hasattr(lm, "generate") or lm.get_output_embeddings() is None:
        raise ValueError(f"the language model of '{loaded.family.name}' ({type(lm).__name__}) is not a causal LM of "
                         "its own (it runs inside the VLM's forward), so a PEFT prefix cannot be loaded onto it")
    text_config = lm.config
    if "sliding_attention" in (getattr(text_config, "layer_types", None) or ()):
        raise ValueError("the language model has sliding-window layers: mmpt keeps prefixes visible beyond the "
                         "window, PEFT's cache lets them slide out; the semantics differ")
    method.fold()  # plain prefixes: PEFT's file holds the prompt encoder's output
    prefix = method.encoders["lm"].prefix.detach().cpu()  # (layers, 2, heads, length, head_dim)
    layers, _, heads, length, head_dim = prefix.shape
    if layers != text_config.num_hidden_layers:
        raise ValueError(f"the prefix covers {layers} of {text_config.num_hidden_layers} layers; PEFT's prefix "
                         "tuning needs every layer")
    embeddings = prefix.permute(3, 0, 1, 2, 4).reshape(length, layers * 2 * heads * head_dim).contiguous()
    fields = {"num_virtual_tokens": length, "token_dim": heads * head_dim, "num_layers": layers,
              "num_attention_heads": heads, "num_transformer_submodules": 1}
    return embeddings, fields, path


def export_peft(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Write a PEFT adapter folder (``adapter_config.json``, ``adapter_model.safetensors``, ``README.md``) per
    exportable method of a run (its ``best/`` when it kept one) into ``out_dir`` (default ``<run>/peft``).

    Raises ValueError naming each method PEFT cannot represent and why; an existing ``out_dir`` is never
    overwritten.
    """
    from peft import LoraConfig, PrefixTuningConfig

    from mmpt.inference import load_with_run, model_kwargs, run_methods
    from mmpt.runconfig import load_run_folder_config

    run_dir = Path(run_dir)
    if run_dir.is_dir():
        refuse_links(run_dir)
    out = Path(out_dir) if out_dir is not None else run_dir / "peft"
    if out.exists():
        raise FileExistsError(f"{out} exists; mmpt never overwrites an export: remove it or give --out")
    config = load_run_folder_config(run_dir)
    files = run_methods(run_dir)
    refused = {f.stem: NOT_EXPORTABLE[f.stem] for f in files if f.stem in NOT_EXPORTABLE}
    if refused:
        raise ValueError("cannot export to PEFT: " + "; ".join(f"{k}: {v}" for k, v in refused.items())
                         + " (export a run whose methods are lora and/or prefix)")
    loaded = load_with_run(config.model.name, None, **model_kwargs(config.model))
    metrics = _metrics(run_dir)
    written: list[Path] = []
    for file in files:
        method = methods.load(loaded, file)
        folder = out / method.config.name
        if method.config.name == "lora":
            state, names = lora_state(loaded, method)
            peft_config = LoraConfig(r=method.config.r, lora_alpha=method.config.alpha,
                                     lora_dropout=method.config.dropout, target_modules=names,
                                     base_model_name_or_path=config.model.name)
            how = (f"base = mmpt.models.load({config.model.name!r}).model  # or the checkpoint's model class\n"
                   f"model = PeftModel.from_pretrained(base, {str(folder)!r})")
            note = "Same computation as in mmpt: PEFT's `lora.Linear` on the same modules."
        else:
            embeddings, fields, lm_path = prefix_state(loaded, method)
            state = {"prompt_embeddings": embeddings}
            peft_config = PrefixTuningConfig(task_type="CAUSAL_LM", base_model_name_or_path=config.model.name,
                                             **fields)
            how = (f"lm = mmpt.models.load({config.model.name!r}).model.get_submodule({lm_path!r})\n"
                   f"model = PeftModel.from_pretrained(lm, {str(folder)!r})")
            note = (f"PEFT's prefix tuning on the language model (`{lm_path}`, text only). PEFT gives the real "
                    f"tokens positions {fields['num_virtual_tokens']}, {fields['num_virtual_tokens'] + 1}, ... "
                    "(it counts the prefix); mmpt gives them 0, 1, ... as without a prefix. Logits agree with mmpt "
                    "fed position ids shifted by the prefix length.")
        check_finite(state, str(folder), "the method holds non-finite weights")
        folder.mkdir(parents=True)
        peft_config.save_pretrained(str(folder))
        save_safetensors(state, folder / PEFT_WEIGHTS, {"format": "pt"})  # with its checksum; PEFT reads it as is
        write_text(folder / "README.md", model_card(config, method.config.name, metrics, run_dir, how, note))
        write_manifest(folder, [PEFT_WEIGHTS, PEFT_CONFIG, "README.md"])
        written.append(folder)
        method.remove()
    return written


def push_to_hub(folders: list[Path], repo_id: str, private: bool = True) -> str:
    """Upload exported adapter folders to the Hub repo ``repo_id`` (one subfolder per method); needs network and
    a Hugging Face token. Returns the repo URL. mmpt never needs this: everything else works offline."""
    from huggingface_hub import HfApi

    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise ValueError("--push-to-hub needs network access, but HF_HUB_OFFLINE=1 is set; unset it on a "
                         "connected machine (the exported folders are complete without the Hub)")
    api = HfApi()
    url = api.create_repo(repo_id, private=private, exist_ok=True)
    for folder in folders:
        api.upload_folder(repo_id=repo_id, folder_path=str(folder), path_in_repo=folder.name,
                          commit_message=f"mmpt export: {folder.name}")
    return str(url)


def _metrics(run_dir: Path) -> dict[str, Any]:
    from mmpt.integrity import verified_json
    from mmpt.readback import METRICS, check

    path = run_dir / "metrics.json"
    metrics = verified_json(path, "") if path.is_file() else {}
    problem = check(metrics, METRICS)
    if problem:
        raise ValueError(f"{path}: not the metrics mmpt writes ({problem}); re-run `mmpt eval` on {run_dir}")
    return metrics


def model_card(config: Any, method: str, metrics: dict[str, Any], run_dir: Path, usage: str = "",
               note: str = "") -> str:
    """A model card (README.md with Hugging Face front matter): base model, method, data, metrics, command."""
    from mmpt.config import to_dict

    names = method.split("+")  # a run's card covers all its methods
    chosen = {m.name: m for s in config.stage_list() for m in s.methods if m.name in names}
    after, before = metrics.get("after", {}), metrics.get("before", {})
    rows = "\n".join(f"| {k} | {before.get(k, float('nan')):.4f} | {v:.4f} |" for k, v in sorted(after.items())
                     if isinstance(v, float) and "/" not in k)
    params = metrics.get("parameters", {})
    library = "peft" if usage else "mmpt"
    if not usage:
        usage = f"vlm = mmpt.models.load({config.model.name!r})" + "".join(
            f"\n{n} = mmpt.methods.load(vlm, {str(run_dir / (n + '.safetensors'))!r})" for n in names)
    imports = "from peft import PeftModel\nimport mmpt" if library == "peft" else "import mmpt"
    method_json = "; ".join(json.dumps(to_dict(m)) for m in chosen.values())
    return f"""---
library_name: {library}
base_model: {config.model.name}
tags: [mmpt, {method}, multimodal-prompt-tuning]
---

# `{method}` trained with mmpt on `{config.model.name}`

- **method**: `{method}` {method_json}
- **base model**: `{config.model.name}` (frozen)
- **task / data**: `{config.task}` on `{config.data.dataset}` ({metrics.get('train', {}).get('samples', '?')} training
  samples seen)
- **trainable parameters**: {params.get('trainable', '?')} ({params.get('percent', float('nan')):.4f}% of
  {params.get('total', '?')})
- **command**: `mmpt train {run_dir}/config.yaml` (the resolved config of run `{run_dir.name}`)

## Metrics (evaluation set of the run)

| metric | before | after |
| --- | --- | --- |
{rows}

{note}

## Use

```python
{imports}
{usage}
```
"""
