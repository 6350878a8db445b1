"""Mllama (Llama 3.2 Vision): a tiled ViT, and a Llama LM whose decoder interleaves self-attention layers with
cross-attention layers that read the image states (no image tokens in the text).

Real checkpoints: ``meta-llama/Llama-3.2-11B-Vision-Instruct`` and similar. The LM tower is ``mixed``: prefixes go
into its self-attention layers (and, with ``cross_attention: true``, its cross-attention layers); layer indices
count every decoder layer.
"""

from __future__ import annotations

import torch
from torch import nn

from mmpt.models.families._tiny import left_padded, random_text
from mmpt.models.family import Family, Tower

FAMILY = Family(
    name="mllama",
    model_types=("mllama",),
    hf_class="MllamaForConditionalGeneration",
    towers={
        "lm": Tower("decoder", "model.language_model", "model.language_model.layers", "self_attn",
                    "model.language_model", cross_attention="cross_attn", mixed=True),
        "vision": Tower("encoder", "model.vision_model", "model.vision_model.transformer.layers", "self_attn"),
    },
    projector="model.multi_modal_projector",
    head="lm_head",
    notes="Self- and cross-attention decoder layers; text tokens after <|image|> attend to the image.",
)
IMAGE_TOKEN_ID = 999


def build_tiny(seed: int = 0, attn_implementation: str = "sdpa") -> nn.Module:
    from transformers import MllamaConfig, MllamaForConditionalGeneration

    torch.manual_seed(seed)
    config = MllamaConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_global_layers=1,
                           num_attention_heads=4, image_size=16, patch_size=8, max_num_tiles=1,
                           vision_output_dim=64, intermediate_layers_indices=[0], supported_aspect_ratios=[[1, 1]]),
        text_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=1000, cross_attention_layers=[1],
                         max_position_embeddings=256, pad_token_id=0, bos_token_id=1, eos_token_id=2),
        image_token_index=IMAGE_TOKEN_ID,
    )
    config._attn_implementation = attn_implementation
    model = MllamaForConditionalGeneration(config).eval()
    with torch.no_grad():  # cross-attention gates start at 0 (tanh gate): open them so images matter in tests
        for name, p in model.named_parameters():
            if name.endswith(("cross_attn_attn_gate", "cross_attn_mlp_gate")):
                p.fill_(1.0)
    return model


def tiny_inputs(model: nn.Module, lengths: list[int], seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    rows = [[IMAGE_TOKEN_ID, 1] + random_text(n, 3, 900, gen) for n in lengths]
    batch = left_padded(rows, 0)
    b = len(lengths)
    batch["pixel_values"] = torch.randn(b, 1, 1, 3, 16, 16, generator=gen)
    batch["aspect_ratio_ids"] = torch.ones(b, 1, dtype=torch.long)
    batch["aspect_ratio_mask"] = torch.ones(b, 1, 1, dtype=torch.long)
    # every real token from the image token on attends to the one image (its one tile)
    batch["cross_attention_mask"] = batch["attention_mask"][:, :, None, None].clone()
    return batch
