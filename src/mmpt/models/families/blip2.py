"""BLIP-2 (ViT + Q-Former + OPT). Real checkpoints: ``Salesforce/blip2-opt-2.7b`` and similar."""

from __future__ import annotations

import torch
from torch import nn

from mmpt.models.families._tiny import left_padded, random_text
from mmpt.models.family import Family, Tower

FAMILY = Family(
    name="blip2",
    model_types=("blip-2",),
    hf_class="Blip2ForConditionalGeneration",
    towers={
        "lm": Tower("decoder", "language_model", "language_model.model.decoder.layers", "self_attn",
                    "language_model.model.decoder"),
        "vision": Tower("encoder", "vision_model", "vision_model.encoder.layers", "self_attn"),
        "qformer": Tower("encoder", "qformer", "qformer.encoder.layer", "attention.attention"),
    },
    projector="language_projection",
    head="language_model.lm_head",
    notes="OPT LM with learned positions; Q-Former self-attention is a tower of its own.",
)
IMAGE_TOKEN_ID = 998
NUM_IMAGE_TOKENS = 4


def build_tiny(seed: int = 0, attn_implementation: str = "sdpa") -> nn.Module:
    from transformers import Blip2Config, Blip2ForConditionalGeneration, OPTConfig

    torch.manual_seed(seed)
    config = Blip2Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8),
        qformer_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                            encoder_hidden_size=32, vocab_size=1000),
        text_config=OPTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, ffn_dim=128,
                              vocab_size=1000, word_embed_proj_dim=64, pad_token_id=1, bos_token_id=2,
                              eos_token_id=2),
        num_query_tokens=NUM_IMAGE_TOKENS, image_token_index=IMAGE_TOKEN_ID,
    )
    config._attn_implementation = attn_implementation
    return Blip2ForConditionalGeneration(config).eval()


def tiny_inputs(model: nn.Module, lengths: list[int], seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    rows = [[IMAGE_TOKEN_ID] * NUM_IMAGE_TOKENS + [2] + random_text(n, 3, 900, gen) for n in lengths]
    batch = left_padded(rows, 1)
    batch["pixel_values"] = torch.randn(len(lengths), 3, 32, 32, generator=gen)
    return batch
