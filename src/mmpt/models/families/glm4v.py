"""GLM-4.1V / GLM-4V (ViT over packed patches with 2-D RoPE + merger + GLM-4 LM with multimodal RoPE).

Real checkpoints: ``zai-org/GLM-4.1V-9B-Thinking`` and similar. The layout is Qwen2-VL's (packed vision patches
delimited by ``cu_seqlens``; 3-D positions in the LM), with image start / end tokens around the image tokens.
"""

from __future__ import annotations

import torch
from torch import nn

from mmpt.models.families import qwen2_vl
from mmpt.models.family import Family, Tower

FAMILY = Family(
    name="glm4v",
    model_types=("glm4v",),
    hf_class="Glm4vForConditionalGeneration",
    towers={
        "lm": Tower("decoder", "model.language_model", "model.language_model.layers", "self_attn",
                    "model.language_model"),
        "vision": Tower("encoder", "model.visual", "model.visual.blocks", "attn", packed=True),
    },
    projector="model.visual.merger",
    head="lm_head",
    notes="Packed vision tokens (cu_seqlens), 2-D RoPE in the ViT; multimodal RoPE positions (3, B, L) in the LM.",
)
IMAGE_TOKEN_ID, IMAGE_START_ID, IMAGE_END_ID = qwen2_vl.IMAGE_TOKEN_ID, 997, 998
tiny_row = qwen2_vl.tiny_row  # the same packing: each sample's own patches


def build_tiny(seed: int = 0, attn_implementation: str = "sdpa") -> nn.Module:
    from transformers import Glm4vConfig, Glm4vForConditionalGeneration

    torch.manual_seed(seed)
    config = Glm4vConfig(
        vision_config=dict(depth=2, hidden_size=32, out_hidden_size=64, intermediate_size=64, num_heads=4,
                           patch_size=qwen2_vl.PATCH, spatial_merge_size=qwen2_vl.MERGE,
                           temporal_patch_size=qwen2_vl.TEMPORAL, in_channels=3, image_size=qwen2_vl.SIDE),
        text_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=1000, max_position_embeddings=256, pad_token_id=0,
                         rope_parameters={"rope_type": "default", "mrope_section": [1, 1, 2],
                                          "partial_rotary_factor": 0.5}),
        image_token_id=IMAGE_TOKEN_ID, image_start_token_id=IMAGE_START_ID, image_end_token_id=IMAGE_END_ID,
    )
    config._attn_implementation = attn_implementation
    return Glm4vForConditionalGeneration(config).eval()


def tiny_inputs(model: nn.Module, lengths: list[int], seed: int = 0) -> dict[str, torch.Tensor]:
    return qwen2_vl.packed_inputs(lengths, seed, IMAGE_START_ID, IMAGE_END_ID)
