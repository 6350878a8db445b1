"""Loading real Hugging Face VLM checkpoints from a local folder or the local HF cache (never the network)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn


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


def load_pretrained(folder: Path, **kwargs: Any) -> tuple[nn.Module, Any, str]:
    """(model, processor or None, model_type) for the checkpoint in ``folder``; offline only.

    The processor is the checkpoint's ``AutoProcessor`` wrapped in :class:`~mmpt.models.hf_processor.HFProcessor`
    (mmpt's processor interface); None when the folder has no full multimodal processor.
    """
    import transformers

    from mmpt.models.families import family_for_model_type

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
    family = family_for_model_type(model_type).FAMILY
    cls = getattr(transformers, family.hf_class)
    pickled = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pt"))
    if not any(folder.glob("*.safetensors")):
        raise ValueError(f"{folder} holds no .safetensors weights" + (
            f" (only {', '.join(pickled[:3])}: pickle files, which can run code and which mmpt never loads); convert "
            "them to safetensors where you trust them (model.save_pretrained(..., safe_serialization=True))"
            if pickled else "; give a folder saved with save_pretrained()"))
    model = cls.from_pretrained(folder, local_files_only=True, use_safetensors=True, **kwargs)
    try:
        processor = transformers.AutoProcessor.from_pretrained(folder, local_files_only=True)
    except Exception:  # noqa: BLE001 - a checkpoint without processor files still tunes from tensors
        processor = None
    if isinstance(processor, transformers.ProcessorMixin):
        from mmpt.models.hf_processor import HFProcessor

        processor = HFProcessor(processor, family.name)
    else:
        processor = None  # a bare tokenizer or image processor cannot build multimodal batches
    return model.eval(), processor, model_type
