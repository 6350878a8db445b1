"""PaliGemma (SigLIP + linear projector + Gemma, bidirectional attention over image + prompt).

Real checkpoints: ``google/paligemma-3b-pt-224`` and similar.
"""

from __future__ import annotations

import torch
from torch import nn

from mmpt.models.families._tiny import left_padded, random_text
from mmpt.models.family import Family, Tower

FAMILY = Family(
    name="paligemma",
    model_types=("paligemma",),
    hf_class="PaliGemmaForConditionalGeneration",
    towers={
        "lm": Tower("decoder", "model.language_model", "model.language_model.layers", "self_attn",
                    "model.language_model"),
        "vision": Tower("encoder", "model.vision_tower", "model.vision_tower.encoder.layers", "self_attn"),
    },
    projector="model.multi_modal_projector",
    head="lm_head",
    notes="Prefix-LM: token_type_ids 0 mark the bidirectional image+prompt part.",
)
IMAGE_TOKEN_ID = 999
NUM_IMAGE_TOKENS = 16


def build_tiny(seed: int = 0, attn_implementation: str = "sdpa") -> nn.Module:
    from transformers import GemmaConfig, PaliGemmaConfig, PaliGemmaForConditionalGeneration

    torch.manual_seed(seed)
    config = PaliGemmaConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8, projection_dim=64),
        text_config=GemmaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                num_key_value_heads=1, head_dim=16, vocab_size=1000, pad_token_id=0),
        image_token_index=IMAGE_TOKEN_ID, projection_dim=64,
    )
    config._attn_implementation = attn_implementation
    return PaliGemmaForConditionalGeneration(config).eval()


def tiny_inputs(model: nn.Module, lengths: list[int], seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    rows = [[IMAGE_TOKEN_ID] * NUM_IMAGE_TOKENS + [2] + random_text(n, 3, 900, gen) for n in lengths]
    batch = left_padded(rows, 0)
    batch["pixel_values"] = torch.randn(len(lengths), 3, 32, 32, generator=gen)
    # as PaliGemma's processor makes them: 0 marks the image + prompt prefix (bidirectional attention there)
    batch["token_type_ids"] = torch.zeros_like(batch["input_ids"])
    return batch
