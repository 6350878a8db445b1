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
    try:
        cfg = json.loads(cfg_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IntegrityError(f"{cfg_file}: not valid JSON ({exc})") from None
    if cfg.get("peft_type") != "LORA":
        raise ValueError(f"{folder}: PEFT type {cfg.get('peft_type')!r}; mmpt imports LoRA adapters only")
    unsupported = {"use_dora": False, "use_rslora": False, "rank_pattern": {}, "alpha_pattern": {}, "bias": "none",
                   "modules_to_save": None, "fan_in_fan_out": False, "lora_bias": False, "target_parameters": None}
    bad = [k for k, ok in unsupported.items() if cfg.get(k, ok) not in (ok, None, {}, [], False)]
    if bad:
        raise ValueError(f"{folder}: uses {', '.join(bad)}, which mmpt's LoRA does not support")
    tensors = read_safetensors(weights, "re-export the adapter", "cpu")
    check_finite(tensors, str(weights), "the adapter holds non-finite weights")
    by_module: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if not key.startswith("base_model.model.") or not key.endswith((".lora_A.weight", ".lora_B.weight")):
            raise ValueError(f"{weights}: unexpected tensor {key!r} (not a LoRA A/B weight)")
        name, part = key[len("base_model.model."):].rsplit(".", 2)[0], key.rsplit(".", 2)[1]
        by_module.setdefault(name, {})[part] = value
    towers, leaves = set(), set()
    for name in by_module:
        tower = next((t for t, spec in loaded.family.towers.items() if spec.layers and name.startswith(spec.layers + ".")),
                     None)
        if tower is None:
            raise ValueError(f"{folder}: module {name} is outside the blocks of {loaded.family.name}'s towers "
                             f"({', '.join(loaded.family.towers)}); mmpt's LoRA adapts tower blocks only")
        towers.add(tower)
        leaves.add(name.rsplit(".", 1)[-1])
    config = LoRAConfig(r=int(cfg["r"]), alpha=float(cfg["lora_alpha"]),
                                dropout=float(cfg.get("lora_dropout", 0.0)), targets=sorted(leaves),
                                towers=sorted(towers))
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
