"""Qwen3-VL: Qwen2-VL's layout (packed vision patches, multimodal RoPE) plus DeepStack: features of several vision
blocks are added to the hidden states of the LM's first layers at the image tokens, so the LM takes two per-token
side inputs, ``visual_pos_masks`` and ``deepstack_visual_embeds`` (:data:`mmpt.contract.TOKEN_SIDE_INPUTS`).

Real checkpoints: ``Qwen/Qwen3-VL-2B-Instruct`` and similar.
"""

from __future__ import annotations

import torch
from torch import nn

from mmpt.models.families import qwen2_vl
from mmpt.models.family import Family

FAMILY = Family(
    name="qwen3_vl",
    model_types=("qwen3_vl",),
    hf_class="Qwen3VLForConditionalGeneration",
    towers=qwen2_vl.FAMILY.towers,  # the same paths; DeepStack is a per-token side input of the LM
    projector="model.visual.merger",
    head="lm_head",
    notes="Packed vision tokens; DeepStack features of vision blocks added to the LM's first layers.",
)
tiny_row = qwen2_vl.tiny_row


def build_tiny(seed: int = 0, attn_implementation: str = "sdpa") -> nn.Module:
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    torch.manual_seed(seed)
    config = Qwen3VLConfig(
        vision_config=dict(depth=2, hidden_size=32, out_hidden_size=64, intermediate_size=64, num_heads=4,
                           patch_size=qwen2_vl.PATCH, spatial_merge_size=qwen2_vl.MERGE,
                           temporal_patch_size=qwen2_vl.TEMPORAL, in_channels=3, num_position_embeddings=16,
                           deepstack_visual_indexes=[0]),
        text_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=16, vocab_size=1000, max_position_embeddings=256,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2,
                         rope_scaling={"rope_type": "default", "mrope_section": [2, 3, 3], "mrope_interleaved": True}),
        image_token_id=qwen2_vl.IMAGE_TOKEN_ID, vision_start_token_id=qwen2_vl.VISION_START_ID,
        vision_end_token_id=qwen2_vl.VISION_END_ID,
    )
    config._attn_implementation = attn_implementation
    return Qwen3VLForConditionalGeneration(config).eval()


def tiny_inputs(model: nn.Module, lengths: list[int], seed: int = 0) -> dict[str, torch.Tensor]:
    return qwen2_vl.tiny_inputs(model, lengths, seed)
