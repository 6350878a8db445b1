"""Mistral-3 (Pixtral ViT with 2-D rotary positions + patch merger + Mistral LM).

Real checkpoints: ``mistralai/Mistral-Small-3.1-24B-Instruct-2503`` and similar. Pixtral concatenates the patches
of all images of a batch into one sequence with a block-diagonal mask, and rotates queries and keys by each
patch's 2-D position; vision deep prompts take the identity rotation (no position), as in Qwen2-VL's packed
tower, and every patch sees them.
"""

from __future__ import annotations

import torch
from torch import nn

from mmpt.models.families._tiny import left_padded, random_text
from mmpt.models.family import Family, Tower

FAMILY = Family(
    name="mistral3",
    model_types=("mistral3",),
    hf_class="Mistral3ForConditionalGeneration",
    towers={
        "lm": Tower("decoder", "model.language_model", "model.language_model.layers", "self_attn",
                    "model.language_model"),
        "vision": Tower("encoder", "model.vision_tower", "model.vision_tower.transformer.layers", "attention"),
    },
    projector="model.multi_modal_projector",
    head="lm_head",
    notes="Pixtral ViT (2-D RoPE, all images in one sequence), patch merger, Mistral LM.",
)
IMAGE_TOKEN_ID = 999
NUM_IMAGE_TOKENS = 4  # (32 / 8) ** 2 patches, merged 2 x 2


def build_tiny(seed: int = 0, attn_implementation: str = "sdpa") -> nn.Module:
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration

    torch.manual_seed(seed)
    config = Mistral3Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8, head_dim=8),
        text_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=16, vocab_size=1000, max_position_embeddings=256,
                         pad_token_id=0),
        image_token_index=IMAGE_TOKEN_ID, spatial_merge_size=2, vision_feature_layer=-1,
    )
    config._attn_implementation = attn_implementation
    return Mistral3ForConditionalGeneration(config).eval()


def tiny_inputs(model: nn.Module, lengths: list[int], seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    rows = [[1] + [IMAGE_TOKEN_ID] * NUM_IMAGE_TOKENS + random_text(n, 2, 900, gen) for n in lengths]
    batch = left_padded(rows, 0)
    batch["pixel_values"] = torch.randn(len(lengths), 3, 32, 32, generator=gen)
    batch["image_sizes"] = torch.tensor([[32, 32]] * len(lengths))
    return batch
