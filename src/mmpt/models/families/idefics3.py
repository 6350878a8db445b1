"""Idefics3 / SmolVLM (SigLIP-style ViT + pixel-shuffle connector + Llama).

Real checkpoints: ``HuggingFaceTB/SmolVLM-256M-Instruct``, ``HuggingFaceM4/Idefics3-8B-Llama3``.
"""

from __future__ import annotations

import torch
from torch import nn

from mmpt.models.families._tiny import left_padded, random_text
from mmpt.models.family import Family, Tower

FAMILY = Family(
    name="idefics3",
    model_types=("idefics3", "smolvlm"),
    hf_class="AutoModelForImageTextToText",
    towers={
        "lm": Tower("decoder", "model.text_model", "model.text_model.layers", "self_attn", "model.text_model"),
        "vision": Tower("encoder", "model.vision_model", "model.vision_model.encoder.layers", "self_attn"),
    },
    projector="model.connector",
    head="lm_head",
    notes="Vision transformer with pixel-shuffle connector; SmolVLM shares this layout.",
)
IMAGE_TOKEN_ID = 999
NUM_IMAGE_TOKENS = 4  # 16 patches / scale_factor**2


def build_tiny(seed: int = 0, attn_implementation: str = "sdpa") -> nn.Module:
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, LlamaConfig

    torch.manual_seed(seed)
    config = Idefics3Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8),
        text_config=LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                num_key_value_heads=2, vocab_size=1000, max_position_embeddings=256,
                                pad_token_id=0),
        image_token_id=IMAGE_TOKEN_ID, scale_factor=2,
    )
    config._attn_implementation = attn_implementation
    return Idefics3ForConditionalGeneration(config).eval()


def tiny_inputs(model: nn.Module, lengths: list[int], seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    rows = [[1] + [IMAGE_TOKEN_ID] * NUM_IMAGE_TOKENS + random_text(n, 2, 900, gen) for n in lengths]
    batch = left_padded(rows, 0)
    batch["pixel_values"] = torch.randn(len(lengths), 1, 3, 32, 32, generator=gen)
    return batch
