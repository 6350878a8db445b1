"""Methods that leave mmpt: PEFT adapter export/import and model cards.

``export_peft(run)`` writes PEFT adapter folders for the methods PEFT can run with the same semantics:

- ``lora``: mmpt's LoRA *is* PEFT's ``lora.Linear``; ``lora/`` targets the same modules by their full names in the
  model mmpt loads (for a Hugging Face family, its transformers class), so ``PeftModel.from_pretrained(base,
  folder)`` gives mmpt's logits exactly; ``lora-lm/`` is the same adapter for the language model alone when that is
  a causal LM of its own (mmpt-tiny's SmolLM2), named as its transformers class names its modules.
- ``prefix`` on such a causal LM: PEFT's prefix tuning with the folded prefixes. One difference, stated in the model
  card: PEFT counts the prefix in the positions of the real tokens (they start at ``length``), mmpt does not (they
  start at 0). With position ids shifted by ``length`` mmpt gives PEFT's logits exactly. Whether PEFT's
  ``generate()`` keeps the prefix is measured at export and written in the card (with transformers 5.24 / peft
  0.21.2 it does not).
- both (PT-PEFT): a ``README.md`` beside the folders with the recipe that loads them together.

Other methods (prompts, adapters, M2PT, visual prompts...) have no PEFT equivalent with the same computation and are
refused with the reason. ``import_peft`` reads a PEFT LoRA adapter (safetensors only) into mmpt's ``lora``.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from mmpt import methods
from mmpt.integrity import check_finite, save_safetensors, write_manifest
from mmpt.methods.lora.peft_import import PEFT_CONFIG, PEFT_WEIGHTS
from mmpt.methods.lora.peft_import import lora_modules as _lora_modules
from mmpt.runfolder import write_text

if TYPE_CHECKING:
    from mmpt.models import LoadedModel

log = logging.getLogger("mmpt")

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


def standalone_lm(loaded: LoadedModel) -> tuple[str, Any] | None:
    """The language model's module path and module when it is a causal LM of its own (a transformers
    ``*ForCausalLM`` with ``generate`` and an output head, as mmpt-tiny's SmolLM2), else None (it runs inside the
    VLM's forward)."""
    if "lm" not in loaded.family.towers:
        return None
    path = loaded.family.tower("lm").module
    lm = loaded.model.get_submodule(path) if path else loaded.model
    if not path or not hasattr(lm, "generate") or lm.get_output_embeddings() is None:
        return None
    return path, lm


def lm_source(loaded: LoadedModel, lm: Any) -> str:
    """Where the standalone LM's weights come from (its ``from_pretrained`` name or folder), or a description."""
    return str(getattr(lm.config, "_name_or_path", "") or f"the language model of {loaded.family.name}")


def prefix_state(loaded: LoadedModel, method: Any) -> tuple[torch.Tensor, dict[str, Any], str]:
    """PEFT's ``prompt_embeddings`` ``(length, layers * 2 * kv_width)``, its PrefixTuningConfig fields and the LM's
    module path; raises ValueError (with the reason) where PEFT's prefix tuning does not compute the same thing."""
    config = method.config
    towers = loaded.family.resolve(config.towers)
    if list(method.encoders) != ["lm"] or towers != ["lm"] or config.cross_attention:
        raise ValueError("PEFT's prefix tuning prefixes one causal LM's self-attention; this prefix covers "
                         f"towers {list(method.encoders)}")
    found = standalone_lm(loaded)
    if found is None:
        lm = loaded.model.get_submodule(loaded.family.tower("lm").module)
        raise ValueError(f"the language model of '{loaded.family.name}' ({type(lm).__name__}) is not a causal LM of "
                         "its own (it runs inside the VLM's forward), so a PEFT prefix cannot be loaded onto it")
    path, lm = found
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
    """Write PEFT adapter folders (``adapter_config.json``, ``adapter_model.safetensors``, ``README.md``) for the
    exportable methods of a run (its ``best/`` when it kept one) into ``out_dir`` (default ``<run>/peft``):

    - ``lora/``: module names of the model mmpt loads (``mmpt.models.load(name).model``; for a Hugging Face
      family, its transformers class);
    - ``lora-lm/``: when the LoRA adapts only a language model that is a causal LM of its own (mmpt-tiny's
      SmolLM2), the same adapter named as that LM's transformers class has its modules (``model.layers.N...``),
      for ``PeftModel.from_pretrained(AutoModelForCausalLM..., folder)``;
    - ``prefix/``: PEFT prefix tuning on that LM;
    - with LoRA and a prefix (PT-PEFT), a ``README.md`` at the top with the recipe that combines both.

    Raises ValueError naming each method PEFT cannot represent and why; an existing ``out_dir`` is never
    overwritten.
    """
    from mmpt.inference import load_with_run, model_kwargs, run_methods
    from mmpt.runconfig import load_run_folder_config

    run_dir = Path(run_dir)
    config = load_run_folder_config(run_dir)  # a run folder without links, its config intact
    out = Path(out_dir) if out_dir is not None else run_dir / "peft"
    if out.exists():
        raise FileExistsError(f"{out} exists; mmpt never overwrites an export: remove it or give --out")
    files = run_methods(run_dir)
    refused = {f.stem: NOT_EXPORTABLE[f.stem] for f in files if f.stem in NOT_EXPORTABLE}
    if refused:
        raise ValueError("cannot export to PEFT: " + "; ".join(f"{k}: {v}" for k, v in refused.items())
                         + " (export a run whose methods are lora and/or prefix)")
    loaded = load_with_run(config.model.name, None, **model_kwargs(config.model))
    card = CardInfo(config, _metrics(run_dir), run_dir)
    adapters: list[Adapter] = []
    for file in files:
        method = methods.load(loaded, file)
        if method.config.name == "lora":
            adapters += lora_adapters(loaded, method, out, card)
        else:
            adapters.append(prefix_adapter(loaded, method, out, card))
        method.remove()
    for adapter in adapters:
        check_finite(adapter.state, str(adapter.folder), "the method holds non-finite weights")
    for adapter in adapters:
        adapter.folder.mkdir(parents=True)
        adapter.config.save_pretrained(str(adapter.folder))
        save_safetensors(adapter.state, adapter.folder / PEFT_WEIGHTS, {"format": "pt"})  # PEFT reads it as is
        if adapter.method == "prefix":
            adapter.note += "\n\n" + prefix_generation_note(loaded.model.get_submodule(adapter.lm_path),
                                                             adapter.folder)
        write_text(adapter.folder / "README.md", model_card(config, adapter.method, card.metrics, run_dir,
                                                            adapter.usage, adapter.note))
        write_manifest(adapter.folder, [PEFT_WEIGHTS, PEFT_CONFIG, "README.md"])
    combined = {a.folder.name: a for a in adapters}
    if "prefix" in combined and "lora-lm" in combined:
        write_text(out / "README.md", pt_peft_card(config, out, combined["lora-lm"], combined["prefix"]))
    return [a.folder for a in adapters]


@dataclass
class CardInfo:
    """What every model card of one export says about the run."""

    config: Any
    metrics: dict[str, Any]
    run_dir: Path


@dataclass
class Adapter:
    """One PEFT adapter folder to write: its PEFT config, tensors and model card text."""

    folder: Path
    method: str
    config: Any
    state: dict[str, torch.Tensor]
    usage: str
    note: str
    lm_path: str = ""
    lm_source: str = ""
    prefix_length: int = 0


def lora_adapters(loaded: LoadedModel, method: Any, out: Path, card: CardInfo) -> list[Adapter]:
    """``lora/`` (the model mmpt loads) and, when the LoRA adapts only a standalone causal LM, ``lora-lm/``."""
    from peft import LoraConfig

    name = card.config.model.name
    state, names = lora_state(loaded, method)
    cfg = method.config

    def config(targets: list[str], base: str) -> Any:
        return LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets,
                          base_model_name_or_path=base)

    folder = out / "lora"
    adapters = [Adapter(folder, "lora", config(names, name), state,
                        f"base = mmpt.models.load({name!r}).model  # for a Hugging Face family: its transformers "
                        f"class\nmodel = PeftModel.from_pretrained(base, {str(folder)!r})",
                        "Same computation as in mmpt: PEFT's `lora.Linear` on the same modules, named as in the "
                        "model mmpt loads. For the language model alone, use `lora-lm/` beside this folder "
                        "(written when the LoRA adapts only the language model).")]
    found = standalone_lm(loaded)
    if found is not None and all(n.startswith(found[0] + ".") for n in names):
        path, lm = found
        source = lm_source(loaded, lm)
        strip = len(path) + 1
        lm_state = {k.replace(f"base_model.model.{path}.", "base_model.model.", 1): v for k, v in state.items()}
        folder = out / "lora-lm"
        adapters.append(Adapter(
            folder, "lora", config([n[strip:] for n in names], source), lm_state,
            f"lm = AutoModelForCausalLM.from_pretrained({source!r})  # {type(lm).__name__}\n"
            f"# or: lm = mmpt.models.load({name!r}).model.get_submodule({path!r})\n"
            f"model = PeftModel.from_pretrained(lm, {str(folder)!r})",
            f"The LoRA on the language model alone: `{type(lm).__name__}` from `{source}` (inside `{name}` it is "
            f"the module `{path}`), its modules named as that class has them (`{names[0][strip:]}`, ...). Text in, "
            "text out: the images of the VLM do not reach it.", path, source))
    return adapters


def prefix_adapter(loaded: LoadedModel, method: Any, out: Path, card: CardInfo) -> Adapter:
    """``prefix/``: PEFT prefix tuning on the standalone LM (refused with the reason elsewhere)."""
    from peft import PrefixTuningConfig

    name = card.config.model.name
    embeddings, fields, lm_path = prefix_state(loaded, method)
    lm = loaded.model.get_submodule(lm_path)
    source = lm_source(loaded, lm)
    folder = out / "prefix"
    length = fields["num_virtual_tokens"]
    return Adapter(
        folder, "prefix", PrefixTuningConfig(task_type="CAUSAL_LM", base_model_name_or_path=source, **fields),
        {"prompt_embeddings": embeddings},
        f"lm = AutoModelForCausalLM.from_pretrained({source!r})  # {type(lm).__name__}\n"
        f"# or: lm = mmpt.models.load({name!r}).model.get_submodule({lm_path!r})\n"
        f"model = PeftModel.from_pretrained(lm, {str(folder)!r})",
        f"PEFT's prefix tuning on the language model (`{lm_path}` of `{name}`, text only). PEFT gives the real "
        f"tokens positions {length}, {length + 1}, ... (it counts the prefix); mmpt gives them 0, 1, ... as without "
        "a prefix. Logits agree with mmpt fed position ids shifted by the prefix length.", lm_path, source, length)


def prefix_generation_note(lm: Any, folder: Path) -> str:
    """Whether PEFT's ``generate()`` keeps the exported prefix with the installed transformers and peft, measured
    on ``lm``: its first generated step must give the logits of PEFT's own forward pass. A card sentence either
    way; a warning when it does not (with transformers 5.24 / peft 0.21.2 it equals the base model)."""
    import peft
    import transformers
    from peft import PeftModel

    versions = f"transformers {transformers.__version__}, peft {peft.__version__}"
    ids = torch.arange(1, 9).unsqueeze(0).to(next(lm.parameters()).device)
    mask = torch.ones_like(ids)
    model = PeftModel.from_pretrained(lm, str(folder)).eval()  # wraps the LM; prefix tuning changes no module
    with torch.no_grad():
        forward = model(input_ids=ids, attention_mask=mask).logits[:, -1].float()
        generated = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=1, do_sample=False,
                                   output_logits=True, return_dict_in_generate=True).logits[0].float()
    if torch.allclose(generated, forward, atol=1e-3, rtol=1e-3):
        return (f"**Generation** (measured at export with {versions}): `PeftModel.generate()` keeps the prefix; its "
                "first step gives the logits of the forward pass.")
    log.warning("%s: PEFT's generate() ignores this prefix with %s (its first step is not the forward pass's); "
                "the adapter's forward pass is right, see its README.md", folder, versions)
    return (f"**Warning: PEFT's `generate()` ignores this prefix** (measured at export with {versions}: the first "
            "generated step does not give the forward pass's logits, it gives the base model's). The forward pass "
            "is right: score or decode with `model(...)` step by step, or generate with mmpt "
            "(`mmpt predict --run`).")


def pt_peft_card(config: Any, out: Path, lora: Adapter, prefix: Adapter) -> str:
    """The recipe for a PT-PEFT export (prefix, then LoRA with the prefix still trained): both adapters are the
    model; this loads them together on the language model."""
    return f"""# PT-PEFT export of `{config.name}`: both adapters are needed

The run trained a prefix and a LoRA (`{' -> '.join(s.name for s in config.stage_list())}`); the model is the
language model with both. PEFT cannot hold a prefix and a LoRA in one `PeftModel`, so the LoRA goes into the model
first (transformers' `load_adapter` puts PEFT's LoRA layers in place, unmerged: no rounding), then the prefix
wraps it:

```python
from peft import PeftModel
from transformers import AutoModelForCausalLM

lm = AutoModelForCausalLM.from_pretrained({lora.lm_source!r})
# or: lm = mmpt.models.load({config.model.name!r}).model.get_submodule({lora.lm_path!r})
lm.load_adapter({str(lora.folder)!r})
model = PeftModel.from_pretrained(lm, {str(prefix.folder)!r})
```

This gives mmpt's logits for position ids shifted by the prefix length ({prefix.prefix_length}), as `prefix/README.md`
explains (tested in mmpt's `tests/test_interop.py`). `lora-lm/` and `prefix/` hold the two adapters; `lora/` is the
same LoRA named for the model mmpt loads.
"""


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
    from mmpt.integrity import verified_checked
    from mmpt.readback import METRICS

    path = run_dir / "metrics.json"
    return verified_checked(path, METRICS, "metrics", f"re-run `mmpt eval` on {run_dir}") if path.is_file() else {}


def model_card(config: Any, method: str, metrics: dict[str, Any], run_dir: Path, usage: str = "",
               note: str = "") -> str:
    """A model card (README.md with Hugging Face front matter): base model, method, data, metrics, command."""
    from mmpt.config import to_dict

    names = method.split("+")  # a run's card covers all its methods
    chosen: dict[str, Any] = {}
    for stage in config.stage_list():  # a later stage naming a method again keeps training the first one's
        for m in stage.methods:
            if m.name in names:
                chosen.setdefault(m.name, m)
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
