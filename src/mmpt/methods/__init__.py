"""Tuning methods: registry, ``apply`` and ``save``/``load`` of method parameters.

``apply(loaded, config)`` injects a method into a :class:`~mmpt.models.LoadedModel`, freezes every base weight
and returns the method, whose ``parameters()`` are the only ones that train.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file, save_file

from mmpt.config import from_dict, to_dict
from mmpt.methods import (  # noqa: F401 - registration
    adapter,
    answer_head,
    deep_prompt,
    lora,
    m2pt,
    prefix,
    projector,
    prompt,
    selection,
    visual_prompt,
)
from mmpt.methods.adapter import AdapterConfig
from mmpt.methods.answer_head import AnswerHeadConfig
from mmpt.methods.base import Method, MethodConfig, MethodEntry, get_method, list_methods, register_method
from mmpt.methods.deep_prompt import DeepPromptConfig
from mmpt.methods.lora import LoRAConfig
from mmpt.methods.m2pt import M2PTConfig
from mmpt.methods.prefix import PrefixConfig
from mmpt.methods.projector import ProjectorConfig
from mmpt.methods.prompt import PromptConfig
from mmpt.methods.selection import BitFitConfig, FullConfig, HeadConfig
from mmpt.methods.visual_prompt import VisualPromptConfig

if TYPE_CHECKING:
    from mmpt.models import LoadedModel


def apply(loaded: LoadedModel, config: MethodConfig, freeze_base: bool = True) -> Method:
    """Inject ``config``'s method into ``loaded.model``; with ``freeze_base`` only the method trains."""
    if freeze_base:
        for p in loaded.model.parameters():
            p.requires_grad_(False)
    entry = get_method(config.name)
    attach_name = f"{ATTACH_PREFIX}{config.name}"
    if hasattr(loaded.model, attach_name):
        raise ValueError(f"method '{config.name}' is already applied to this model; remove it first")
    method = entry.apply(loaded, config)
    for p in method.parameters():
        p.requires_grad_(True)
    if isinstance(method, torch.nn.Module):
        method.train(loaded.model.training)  # e.g. prefix dropout follows the model's mode
    if isinstance(method, torch.nn.Module) and getattr(method, "attach", True):
        # Attach so that .to(device), DDP and optimizer sharding see the method's parameters.
        loaded.model.add_module(attach_name, method)
        method.detach_from_model = lambda: delattr(loaded.model, attach_name)  # type: ignore[attr-defined]
    return method


ATTACH_PREFIX = "mmpt_"


def count_parameters(loaded: LoadedModel, trained: Method | list[Method]) -> dict[str, float]:
    """Parameters trained by ``trained`` (one method or several), the model's total, and the percentage."""
    trained = trained if isinstance(trained, list) else [trained]
    counted = {id(p): p.numel() for m in trained for p in m.parameters()}
    everything = {id(p): p.numel() for p in loaded.model.parameters()} | counted
    total = sum(everything.values())
    trainable = sum(counted.values())
    return {"trainable": trainable, "total": total, "percent": 100.0 * trainable / total}


def fingerprint(model: torch.nn.Module) -> str:
    """A short hash of the base model's parameter names, shapes and a sample of values."""
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        if name.startswith(ATTACH_PREFIX) or f".{ATTACH_PREFIX}" in name:
            continue
        h.update(f"{name}:{tuple(p.shape)}:{p.dtype}".encode())
        flat = p.detach().reshape(-1)
        if flat.numel():
            h.update(flat[:: max(1, flat.numel() // 16)][:16].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def save(method: Method, path: str | Path, base_fingerprint: str = "") -> None:
    """Write method parameters (safetensors) with the method config and base fingerprint as metadata."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in method.state_dict().items()}
    meta = {"config": json.dumps(to_dict(method.config)), "base_fingerprint": base_fingerprint, "format": "mmpt-1"}
    save_file(state, str(path), metadata=meta)


def load(loaded: LoadedModel, path: str | Path, strict_fingerprint: bool = True) -> Method:
    """Apply the method stored at ``path`` to ``loaded`` and load its parameters."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"method checkpoint {path} does not exist")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != "mmpt-1" or "config" not in meta:
        raise ValueError(f"{path} is not an mmpt method checkpoint (no mmpt metadata)")
    raw = json.loads(meta["config"])
    config = from_dict(get_method(raw["name"]).config_cls, raw, "method")
    expected = meta.get("base_fingerprint", "")
    if strict_fingerprint and expected and expected != fingerprint(loaded.model):
        raise ValueError(
            f"{path} was trained on a different base model (fingerprint {expected}, this model "
            f"{fingerprint(loaded.model)}); load the same base or pass strict_fingerprint=False"
        )
    method = apply(loaded, config)
    method.load_state_dict(load_file(str(path), device=str(next(loaded.model.parameters()).device)))
    return method


__all__ = [
    "AdapterConfig", "AnswerHeadConfig", "BitFitConfig", "DeepPromptConfig", "FullConfig", "HeadConfig", "LoRAConfig", "M2PTConfig",
    "Method", "MethodConfig", "MethodEntry", "PrefixConfig", "ProjectorConfig", "PromptConfig", "apply", "count_parameters",
    "VisualPromptConfig", "fingerprint", "get_method", "list_methods", "load", "register_method", "save",
]
