"""Qwen3.5 (Qwen3-VL's packed ViT + a hybrid LM: Gated DeltaNet linear-attention blocks between attention blocks).

Real checkpoints: ``Qwen/Qwen3.5-9B`` and similar. The LM tower is ``mixed``: three of every four blocks mix
tokens by a gated delta rule (a recurrence with a short causal convolution in front), which reads its neighbours
whatever the attention mask says. Prefixes go into the attention blocks only; prompts are placed after each row's
left padding, where the recurrence meets them right before the first real token, as for a sample alone
(:mod:`mmpt.methods.prompt`).
"""

from __future__ import annotations

import torch
from torch import nn

from mmpt.models.families import qwen2_vl
from mmpt.models.family import Family, Tower

FAMILY = Family(
    name="qwen3_5",
    model_types=("qwen3_5",),
    hf_class="Qwen3_5ForConditionalGeneration",
    towers={
        "lm": Tower("decoder", "model.language_model", "model.language_model.layers", "self_attn",
                    "model.language_model", mixed=True),
        "vision": Tower("encoder", "model.visual", "model.visual.blocks", "attn", packed=True),
    },
    projector="model.visual.merger",
    head="lm_head",
    notes="Hybrid LM: Gated DeltaNet (linear attention) and gated attention blocks; packed vision tokens; M-RoPE.",
)
tiny_row = qwen2_vl.tiny_row


def build_tiny(seed: int = 0, attn_implementation: str = "sdpa") -> nn.Module:
    from transformers import Qwen3_5Config, Qwen3_5ForConditionalGeneration

    torch.manual_seed(seed)
    config = Qwen3_5Config(
        vision_config=dict(depth=2, hidden_size=32, out_hidden_size=64, intermediate_size=64, num_heads=4,
                           patch_size=qwen2_vl.PATCH, spatial_merge_size=qwen2_vl.MERGE,
                           temporal_patch_size=qwen2_vl.TEMPORAL, in_channels=3, num_position_embeddings=16),
        text_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=16, vocab_size=1000, max_position_embeddings=256,
                         pad_token_id=0, linear_conv_kernel_dim=4,
                         linear_key_head_dim=8, linear_value_head_dim=8, linear_num_key_heads=2,
                         linear_num_value_heads=4,
                         layer_types=["linear_attention", "full_attention", "linear_attention"],
                         rope_parameters={"rope_type": "default", "mrope_section": [1, 1, 2],
                                          "mrope_interleaved": True, "partial_rotary_factor": 0.5}),
        image_token_id=qwen2_vl.IMAGE_TOKEN_ID, vision_start_token_id=qwen2_vl.VISION_START_ID,
        vision_end_token_id=qwen2_vl.VISION_END_ID,
    )
    config._attn_implementation = attn_implementation
    return Qwen3_5ForConditionalGeneration(config).eval()


def tiny_inputs(model: nn.Module, lengths: list[int], seed: int = 0) -> dict[str, torch.Tensor]:
    return qwen2_vl.tiny_inputs(model, lengths, seed)
