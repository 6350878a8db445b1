"""Loading real Hugging Face VLM checkpoints from a local folder or the local HF cache (never the network)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from mmpt.models.family import Family


def resolve_local(name_or_path: str) -> Path | None:
    """A local checkpoint folder for a path or a hub id already in the HF cache; None when neither exists."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if "/" not in name_or_path or name_or_path.startswith((".", "/", "~")):
        return None
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name_or_path, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached (or hub library missing): report as not found
        return None


def load_pretrained(folder: Path, **kwargs: Any) -> tuple[nn.Module, Any, Family]:
    """(model, processor or None, family) for the checkpoint in ``folder``; offline only.

    A ``model_type`` no family file covers is loaded with the transformers class its ``architectures`` names and
    gets a family derived from its structure (:func:`mmpt.models.derive.derive_family`).

    The processor is the checkpoint's ``AutoProcessor`` wrapped in :class:`~mmpt.models.hf_processor.HFProcessor`
    (mmpt's processor interface); None when the folder has no full multimodal processor.
    """
    import transformers

    from mmpt.models.derive import derive_family
    from mmpt.models.families import known_family

    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{folder} has no config.json; give a folder saved with save_pretrained()")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8", errors="replace"))
    except (json.JSONDecodeError, RecursionError):
        raise ValueError(f"{config_file}: not a JSON model config; give a folder saved with save_pretrained()") from None
    if not isinstance(config, dict):
        raise ValueError(f"{config_file}: not a model config (a JSON object); give a folder saved with save_pretrained()")
    model_type = str(config.get("model_type", ""))
    module = known_family(model_type)
    cls = getattr(transformers, module.FAMILY.hf_class) if module is not None else _architecture(config, config_file)
    pickled = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pt"))
    if not any(folder.glob("*.safetensors")):
        raise ValueError(f"{folder} holds no .safetensors weights" + (
            f" (only {', '.join(pickled[:3])}: pickle files, which can run code and which mmpt never loads); convert "
            "them to safetensors where you trust them (model.save_pretrained(..., safe_serialization=True))"
            if pickled else "; give a folder saved with save_pretrained()"))
    model = cls.from_pretrained(folder, local_files_only=True, use_safetensors=True, **kwargs)
    family = module.FAMILY if module is not None else derive_family(model)  # DeriveError names what is missing
    try:
        processor = transformers.AutoProcessor.from_pretrained(folder, local_files_only=True)
    except Exception:  # noqa: BLE001 - a checkpoint without processor files still tunes from tensors
        processor = None
    if isinstance(processor, transformers.ProcessorMixin):
        from mmpt.models.hf_processor import HFProcessor, chat_strategy

        processor = HFProcessor(processor, family.name, None if module is not None else chat_strategy(model.config))
    else:
        processor = None  # a bare tokenizer or image processor cannot build multimodal batches
    return model.eval(), processor, family


def _architecture(config: dict[str, Any], config_file: Path) -> Any:
    """The transformers class a config's ``architectures`` names (top-level in transformers)."""
    import transformers

    names = config.get("architectures") or []
    if not (isinstance(names, list) and names and isinstance(names[0], str)):
        raise ValueError(f"{config_file}: model type {config.get('model_type')!r} has no family file and the config "
                         "names no 'architectures' class to load it with; add a family file (docs/adding_a_family.md)")
    cls = getattr(transformers, names[0], None)
    if cls is None:
        raise ValueError(f"{config_file}: architectures names {names[0]!r}, which this transformers "
                         f"({transformers.__version__}) does not have; mmpt runs no code from a checkpoint "
                         "(trust_remote_code), so only transformers' own classes load")
    return cls
