"""PEFT LoRA adapter folders read into mmpt's ``lora`` (:func:`import_peft`). Lives with the method, apart from
:mod:`mmpt.interop` (export, model cards), so that ``mmpt.methods.load`` reads PEFT folders without importing the
inference code export needs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from mmpt.integrity import IntegrityError, check_finite

if TYPE_CHECKING:
    from mmpt.methods.base import Method
    from mmpt.models import LoadedModel

PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_CONFIG = "adapter_config.json"


def lora_modules(loaded: LoadedModel, method: Any) -> dict[str, Any]:
    """Full module name -> PEFT ``lora.Linear`` of an applied mmpt ``lora`` method."""
    mine = {id(lora) for _, _, _, lora in method._swapped}
    return {name: module for name, module in loaded.model.named_modules() if id(module) in mine}



# adapter_config.json keys that mmpt reads (r, lora_alpha, lora_dropout), or that do not change what a saved adapter
# computes (bookkeeping; initialisation schemes, whose result is in the weights; target_modules, which the
# weights' names say exactly). Every other key must hold its default (null, false, {}, [] or "none"): anything
# else changes the computation in a way mmpt's LoRA does not reproduce, and is refused by name.
KNOWN_KEYS = {"peft_type", "task_type", "auto_mapping", "peft_version", "base_model_name_or_path", "revision",
              "inference_mode", "r", "lora_alpha", "lora_dropout", "target_modules", "init_lora_weights",
              "loftq_config", "eva_config", "corda_config", "lora_ga_config", "megatron_core", "qalora_group_size"}
MAX_CONFIG_BYTES = 1 << 20


def read_adapter_config(path: Path) -> tuple[int, float, float]:
    """``(r, lora_alpha, lora_dropout)`` of a PEFT ``adapter_config.json``, checked: a JSON object of LoRA
    settings, each of the right type and range, no option that changes the computation beyond mmpt's LoRA.
    Every problem is one line naming the file, the key and the fix."""
    from mmpt.methods.lora import LoRAConfig

    fix = "re-save the adapter with PEFT (LoraConfig)"
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise IntegrityError(f"{path}: {path.stat().st_size:,} bytes, not an adapter config (PEFT writes ~1 KB); {fix}")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        why = "nested too deeply" if isinstance(exc, RecursionError) else f"not valid JSON ({exc})"
        raise IntegrityError(f"{path}: {why}; {fix}") from None
    if not isinstance(cfg, dict):
        raise IntegrityError(f"{path}: a JSON {type(cfg).__name__}, not the object of settings PEFT writes; {fix}")
    if cfg.get("peft_type") != "LORA":
        raise ValueError(f"{path}: PEFT type {str(cfg.get('peft_type'))[:40]!r}; mmpt imports LoRA adapters only")
    bad = sorted(k for k, v in cfg.items() if k not in KNOWN_KEYS and v not in (None, False, {}, [], "none"))
    if bad:
        shown = ", ".join(f"{k}={json.dumps(cfg[k])[:40]}" for k in bad[:4])
        raise ValueError(f"{path}: uses {shown}, which mmpt's LoRA does not support (it would compute something "
                         "else); merge or convert the adapter without them")
    for key in ("r", "lora_alpha"):
        if key not in cfg:
            raise IntegrityError(f"{path}: no {key!r}; {fix}")
    r, alpha, dropout = cfg["r"], cfg["lora_alpha"], cfg.get("lora_dropout", 0.0)
    if isinstance(r, bool) or not isinstance(r, int):
        raise IntegrityError(f"{path}: r must be a whole number such as 16, got {json.dumps(r)[:40]}; {fix}")
    for key, value in (("lora_alpha", alpha), ("lora_dropout", dropout)):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise IntegrityError(f"{path}: {key} must be a number, got {json.dumps(value)[:40]}; {fix}")
    try:
        LoRAConfig(r=r, alpha=float(alpha), dropout=float(dropout)).validate()
    except ValueError as exc:
        named = str(exc).replace("alpha:", "lora_alpha:", 1).replace("dropout:", "lora_dropout:", 1)
        raise IntegrityError(f"{path}: {named}") from None
    return r, float(alpha), float(dropout)


def import_peft(loaded: LoadedModel, folder: str | Path) -> Method:
    """Apply a PEFT LoRA adapter folder to ``loaded`` as mmpt's ``lora`` (same computation as PEFT's).

    Refused with the reason: other PEFT types, options mmpt's LoRA does not have (DoRA, rsLoRA, per-module ranks,
    biases, modules_to_save), a ``.bin`` (pickle) weights file, and modules outside the model's towers.
    """
    from mmpt.integrity import read_safetensors
    from mmpt.methods.base import apply
    from mmpt.methods.lora import LoRAConfig

    folder = Path(folder)
    cfg_file, weights = folder / PEFT_CONFIG, folder / PEFT_WEIGHTS
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{folder} is not a PEFT adapter folder (no {PEFT_CONFIG})")
    if not weights.is_file():
        pickled = folder / "adapter_model.bin"
        raise ValueError(f"{folder} has no {PEFT_WEIGHTS}" + (" (only adapter_model.bin, a pickle, which mmpt never "
                         "loads: convert it with safetensors where you trust it)" if pickled.exists() else ""))
    r, alpha, dropout = read_adapter_config(cfg_file)
    tensors = read_safetensors(weights, "re-export the adapter", "cpu")
    check_finite(tensors, str(weights), "the adapter holds non-finite weights")
    by_module: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if not key.startswith("base_model.model.") or not key.endswith((".lora_A.weight", ".lora_B.weight")):
            raise ValueError(f"{weights}: unexpected tensor {key!r} (not a LoRA A/B weight)")
        name, part = key[len("base_model.model."):].rsplit(".", 2)[0], key.rsplit(".", 2)[1]
        by_module.setdefault(name, {})[part] = value
    halves = sorted(name for name, parts in by_module.items() if len(parts) != 2)
    if halves:
        raise ValueError(f"{weights}: module {halves[0]} has only {next(iter(by_module[halves[0]]))} (a LoRA "
                         "adapter needs lora_A and lora_B for each module); the file is incomplete: re-export it")
    by_module = _named_for(loaded, by_module, folder)
    towers, leaves = set(), set()
    for name in by_module:
        towers.add(_tower_of(loaded, name))
        leaves.add(name.rsplit(".", 1)[-1])
    config = LoRAConfig(r=r, alpha=alpha, dropout=dropout, targets=sorted(leaves), towers=sorted(towers))
    method = apply(loaded, config)
    modules = lora_modules(loaded, method)
    missing = sorted(set(by_module) - set(modules))
    if missing:
        method.remove()
        raise ValueError(f"{folder}: modules {missing[:3]} are not linear layers mmpt's LoRA can adapt")
    with torch.no_grad():
        for name, module in modules.items():
            parts = by_module.get(name)
            if parts is None:  # adapted by mmpt's selection but not by the adapter: stays a no-op (B = 0)
                module.lora_B["default"].weight.zero_()
                continue
            for part, value in parts.items():
                target = getattr(module, part)["default"].weight
                if target.shape != value.shape:
                    method.remove()
                    raise ValueError(f"{folder}: {name}.{part} has shape {tuple(value.shape)}, the model needs "
                                     f"{tuple(target.shape)} (an adapter for another model?)")
                target.copy_(value)
    return method


def _tower_of(loaded: LoadedModel, name: str) -> str | None:
    """The tower whose blocks hold module ``name`` (a full name in ``loaded.model``), or None."""
    return next((t for t, spec in loaded.family.towers.items() if spec.layers and name.startswith(spec.layers + ".")),
                None)


def _named_for(loaded: LoadedModel, by_module: dict[str, Any], folder: Path) -> dict[str, Any]:
    """The adapter's modules by their full names in ``loaded.model``: as they are when they name the model mmpt
    loads, or prefixed by the language model's path when the adapter was trained on the plain language model
    (``model.layers.N...`` of SmolLM2 inside mmpt-tiny's ``language_model``), which is logged. Anything else is
    refused naming the module and both namings mmpt accepts."""
    import logging

    if all(_tower_of(loaded, name) for name in by_module):
        return by_module
    lm = loaded.family.towers.get("lm")
    if lm is not None and lm.module and all(_tower_of(loaded, f"{lm.module}.{n}") == "lm" for n in by_module):
        first = next(iter(by_module))
        logging.getLogger("mmpt").warning(
            "%s: names the modules of the plain language model (%s); mapped to %s's %s.* (%d modules)",
            folder, first, loaded.family.name, lm.module, len(by_module))
        return {f"{lm.module}.{n}": v for n, v in by_module.items()}
    outside = next(n for n in by_module if not _tower_of(loaded, n))
    blocks = ", ".join(f"{spec.layers}.N" for spec in loaded.family.towers.values() if spec.layers)
    plain = f"; or, for the language model alone, {lm.layers[len(lm.module) + 1:]}.N" if lm and lm.module else ""
    raise ValueError(f"{folder}: module {outside} is not in the blocks of {loaded.family.name} (an adapter for "
                     f"another model?); mmpt's LoRA adapts tower blocks, named {blocks}{plain}: give --model the "
                     "model the adapter was trained on")
