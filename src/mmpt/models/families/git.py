"""GIT (CLIP ViT + projection + a BERT-style decoder over [image tokens | text], Microsoft's GenerativeImage2Text).

Real checkpoints: ``microsoft/git-base-coco`` and similar. The text decoder computes attention itself and
appends to its cache (injection route ``cache``); image tokens are concatenated in front of the text inside the
model, so prompts sit between the image and the text.
"""

from __future__ import annotations

import torch
from torch import nn

from mmpt.models.families._tiny import left_padded, random_text
from mmpt.models.family import Family, Tower

FAMILY = Family(
    name="git",
    model_types=("git",),
    hf_class="GitForCausalLM",
    towers={
        "lm": Tower("decoder", "git.encoder", "git.encoder.layer", "attention.self", "git",
                    injection="cache"),
        "vision": Tower("encoder", "git.image_encoder", "git.image_encoder.vision_model.encoder.layers",
                        "self_attn"),
    },
    projector="git.visual_projection",
    head="output",
    notes="Decoder over [image tokens | prompt | text]; image tokens attend bidirectionally.",
)
NUM_IMAGE_TOKENS = 17  # (32 / 8) ** 2 patches + CLS


def build_tiny(seed: int = 0, attn_implementation: str = "sdpa") -> nn.Module:
    from transformers import GitConfig, GitForCausalLM

    torch.manual_seed(seed)
    config = GitConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8),
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, vocab_size=1000,
        max_position_embeddings=256, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    # transformers implements GIT with eager attention only (it refuses sdpa): the tiny model is always eager
    config._attn_implementation = "eager"
    return GitForCausalLM(config).eval()


def tiny_inputs(model: nn.Module, lengths: list[int], seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    rows = [[1] + random_text(n, 3, 900, gen) for n in lengths]
    batch = left_padded(rows, 0)
    batch["pixel_values"] = torch.randn(len(lengths), 3, 32, 32, generator=gen)
    return batch
