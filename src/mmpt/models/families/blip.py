"""BLIP captioning (ViT + BERT-style text decoder with cross-attention).

Its text attention does not go through transformers' attention interface, so prefixes reach it through the
fallback path (hooks on the key/value projections). Real checkpoints: ``Salesforce/blip-image-captioning-base``.
"""

from __future__ import annotations

import torch
from torch import nn

from mmpt.models.families._tiny import left_padded, random_text
from mmpt.models.family import Family, Tower

FAMILY = Family(
    name="blip",
    model_types=("blip",),
    hf_class="BlipForConditionalGeneration",
    towers={
        "lm": Tower("decoder", "text_decoder", "text_decoder.bert.encoder.layer", "attention.self",
                    "text_decoder.bert", injection="cache",
                    no_input_prompts="its generate() re-feeds tokens it has cached, which would shift them"),
        "vision": Tower("encoder", "vision_model", "vision_model.encoder.layers", "self_attn", injection="none"),
    },
    head="text_decoder.cls",
    notes="BERT-style text decoder: fallback injection on key/value projections.",
)


def build_tiny(seed: int = 0, attn_implementation: str = "eager") -> nn.Module:
    from transformers import BlipConfig, BlipForConditionalGeneration

    torch.manual_seed(seed)
    config = BlipConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8),
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         vocab_size=1000, encoder_hidden_size=32, pad_token_id=0, bos_token_id=30,
                         sep_token_id=31, eos_token_id=31),
    )
    config._attn_implementation = attn_implementation
    return BlipForConditionalGeneration(config).eval()


def tiny_inputs(model: nn.Module, lengths: list[int], seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    rows = [[30] + random_text(n, 40, 900, gen) for n in lengths]
    batch = left_padded(rows, 0)
    batch["pixel_values"] = torch.randn(len(lengths), 3, 32, 32, generator=gen)
    return batch
