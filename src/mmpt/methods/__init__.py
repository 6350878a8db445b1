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

from mmpt.config import from_dict, to_dict
from mmpt.integrity import (
    IntegrityError,
    check_finite,
    read_safetensors,
    save_safetensors,
    verify_safetensors,
)
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
from mmpt.methods.base import (
    ATTACH_PREFIX,
    Method,
    MethodConfig,
    MethodEntry,
    apply,
    get_method,
    list_methods,
    register_method,
)
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


def count_parameters(loaded: LoadedModel, trained: Method | list[Method]) -> dict[str, float]:
    """Parameters trained by ``trained`` (one method or several), the model's total, and the percentage."""
    trained = trained if isinstance(trained, list) else [trained]
    counted = {id(p): p.numel() for m in trained for p in m.parameters()}
    everything = {id(p): p.numel() for p in loaded.model.parameters()} | counted
    total = sum(everything.values())
    trainable = sum(counted.values())
    return {"trainable": trainable, "total": total, "percent": 100.0 * trainable / total}


def fingerprint(model: torch.nn.Module) -> str:
    """A short hash of the base model's parameter names, shapes and a sample of values (methods applied to the
    model, including LoRA layers swapped into it, are left out: the same base gives the same fingerprint)."""
    h = hashlib.sha256()
    state = {}
    for name, p in model.state_dict().items():
        if name.startswith(ATTACH_PREFIX) or f".{ATTACH_PREFIX}" in name or ".lora_" in name:
            continue
        state[name.replace(".base_layer.", ".")] = p  # a LoRA-wrapped linear layer: its base weights, as before
    for name, p in sorted(state.items()):
        h.update(f"{name}:{tuple(p.shape)}:{p.dtype}".encode())
        flat = p.detach().reshape(-1)
        if flat.numel():
            h.update(flat[:: max(1, flat.numel() // 16)][:16].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def save(method: Method, path: str | Path, base_fingerprint: str = "", fold: bool = False) -> None:
    """Write method parameters (safetensors) with the method config and base fingerprint as metadata.

    With ``fold``, a method with a reparameterization (a prefix encoder's MLP) is saved as what it produces
    (``method.folded()``): the file then needs no encoder and loads as ``reparam: none`` with identical outputs.
    Checkpoints meant for resuming training keep the encoder (``fold=False``).

    The file carries the SHA-256 of its tensors (checked by :func:`load`) and is byte-identical for the same
    parameters; parameters holding NaN or infinity are refused (:class:`~mmpt.integrity.IntegrityError`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    folded = getattr(method, "folded", None) if fold else None
    raw, config = folded() if folded is not None else (method.state_dict(), method.config)
    state = {k: v.detach().contiguous().cpu() for k, v in raw.items()}
    check_finite(state, f"{path} (not written)", "the weights diverged: lower train.lr or use an earlier checkpoint")
    meta = {"config": json.dumps(to_dict(config)), "base_fingerprint": base_fingerprint, "format": "mmpt-1"}
    save_safetensors(state, path, meta)


def load(loaded: LoadedModel, path: str | Path, strict_fingerprint: bool = True) -> Method:
    """Apply the method stored at ``path`` to ``loaded`` and load its parameters.

    ``path`` is an mmpt method file, or a PEFT LoRA adapter folder (see :func:`mmpt.methods.lora.peft_import.import_peft`).

    Refused with one line: a missing, truncated or damaged file (its checksum), non-finite weights, a file
    without mmpt metadata, and (with ``strict_fingerprint``) one trained on another base model or carrying no
    base-model fingerprint.
    """
    path = Path(path)
    if path.is_dir() and (path / "adapter_config.json").is_file():  # a PEFT adapter folder (LoRA)
        from mmpt.methods.lora.peft_import import import_peft

        return import_peft(loaded, path)
    if path.is_dir():
        raise FileNotFoundError(f"{path} is a folder but not a PEFT adapter (no adapter_config.json); give an mmpt "
                                "method file (<method>.safetensors) or a folder PEFT saved (adapter_config.json + "
                                "adapter_model.safetensors)")
    if not path.is_file():
        raise FileNotFoundError(f"method checkpoint {path} does not exist")
    what = "use another copy (e.g. the run's best/ or checkpoint/) or train it again"
    meta = verify_safetensors(path, what)
    if meta.get("format") != "mmpt-1" or "config" not in meta:
        raise ValueError(f"{path} is not an mmpt method checkpoint (no mmpt metadata)")
    try:
        raw = json.loads(meta["config"])
        config = from_dict(get_method(raw["name"]).config_cls, raw, "method")
    except RecursionError:
        raise IntegrityError(f"{path}: its method config is nested too deeply (not what mmpt writes); {what}") from None
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise IntegrityError(f"{path}: its method config is damaged ({exc!r}); {what}") from None
    expected = meta.get("base_fingerprint", "")
    if strict_fingerprint and not expected:
        raise ValueError(f"{path} records no base-model fingerprint, so mmpt cannot check it fits this model; "
                         "pass strict_fingerprint=False if you know it does")
    if strict_fingerprint and expected != fingerprint(loaded.model):
        raise ValueError(
            f"{path} was trained on a different base model (fingerprint {expected}, this model "
            f"{fingerprint(loaded.model)}); load the same base or pass strict_fingerprint=False"
        )
    device = str(next(loaded.model.parameters()).device)
    tensors = read_safetensors(path, what, device)
    check_finite(tensors, str(path), what)
    method = apply(loaded, config)
    try:
        method.load_state_dict(tensors)
    except RuntimeError as exc:
        method.remove()
        raise IntegrityError(f"{path}: its tensors do not fit the {config.name} method it names; {what}") from exc
    return method


__all__ = [
    "AdapterConfig", "AnswerHeadConfig", "BitFitConfig", "DeepPromptConfig", "FullConfig", "HeadConfig", "LoRAConfig", "M2PTConfig",
    "Method", "MethodConfig", "MethodEntry", "PrefixConfig", "ProjectorConfig", "PromptConfig", "apply", "count_parameters",
    "VisualPromptConfig", "fingerprint", "get_method", "list_methods", "load", "register_method", "save",
]
