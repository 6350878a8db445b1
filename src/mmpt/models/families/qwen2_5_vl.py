"""Qwen2.5-VL: Qwen2-VL's layout (packed vision tokens, multimodal RoPE) with windowed attention in most vision
blocks and an RMSNorm/SwiGLU ViT. Real checkpoints: ``Qwen/Qwen2.5-VL-3B-Instruct`` and similar."""

from __future__ import annotations

import torch
from torch import nn

from mmpt.models.families import qwen2_vl
from mmpt.models.family import Family

FAMILY = Family(
    name="qwen2_5_vl",
    model_types=("qwen2_5_vl",),
    hf_class="Qwen2_5_VLForConditionalGeneration",
    towers=qwen2_vl.FAMILY.towers,
    projector="model.visual.merger",
    head="lm_head",
    notes="As Qwen2-VL; vision blocks attend within windows except fullatt_block_indexes.",
)
tiny_inputs = qwen2_vl.tiny_inputs
tiny_row = qwen2_vl.tiny_row


def build_tiny(seed: int = 0, attn_implementation: str = "sdpa") -> nn.Module:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(seed)
    settings = qwen2_vl._config()
    settings["vision_config"] = dict(depth=2, hidden_size=32, out_hidden_size=64, intermediate_size=64,
                                     num_heads=4, patch_size=qwen2_vl.PATCH, spatial_merge_size=qwen2_vl.MERGE,
                                     temporal_patch_size=qwen2_vl.TEMPORAL, in_channels=3, window_size=8,
                                     fullatt_block_indexes=[1])
    config = Qwen2_5_VLConfig(**settings)
    config._attn_implementation = attn_implementation
    return Qwen2_5_VLForConditionalGeneration(config).eval()
