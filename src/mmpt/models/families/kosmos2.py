"""Kosmos-2 (CLIP-style ViT + latent-query resampler + a Magneto-style text decoder; grounding by location tokens).

Real checkpoints: ``microsoft/kosmos-2-patch14-224``. The text decoder places the image features itself, at the
positions ``image_embeds_position_mask`` marks: a per-token side input that tokens a method adds extend with
"no image" (:data:`mmpt.contract.TOKEN_SIDE_INPUTS`). Its positions come from the padding in ``input_ids``
(offset by the pad id), which tokens added as embeddings cannot follow: input prompts are refused, prefixes (which
add no tokens) work. transformers' own Kosmos-2 counts the positions of generated tokens past the padding, so
its left-padded batched generation (with a KV cache) differs from each sample alone, whatever mmpt does; the method
matrix records those checks as not made.
"""

from __future__ import annotations

import torch
from torch import nn

from mmpt.models.derive import POSITIONS_FROM_PADDING
from mmpt.models.families._tiny import left_padded, random_text
from mmpt.models.family import Family, Tower

FAMILY = Family(
    name="kosmos2",
    model_types=("kosmos-2",),
    hf_class="Kosmos2ForConditionalGeneration",
    towers={
        "lm": Tower("decoder", "text_model", "text_model.model.layers", "self_attn", "text_model.model",
                    no_input_prompts=POSITIONS_FROM_PADDING),
        "vision": Tower("encoder", "vision_model", "vision_model.model.encoder.layers", "self_attn"),
    },
    projector="image_to_text_projection",
    head="text_model.lm_head",
    notes="Image features written at the tokens image_embeds_position_mask marks; sinusoidal text positions.",
)
BOS, PAD, EOS, BOI, EOI = 0, 1, 2, 3, 4  # <s>, <pad>, </s>, <image>, </image>
NUM_IMAGE_TOKENS = 4  # the resampler's latent queries


def build_tiny(seed: int = 0, attn_implementation: str = "sdpa") -> nn.Module:
    from transformers import Kosmos2Config, Kosmos2ForConditionalGeneration

    torch.manual_seed(seed)
    config = Kosmos2Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8),
        text_config=dict(embed_dim=64, ffn_dim=128, layers=2, attention_heads=4, vocab_size=1000,
                         max_position_embeddings=256, pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS),
        latent_query_num=NUM_IMAGE_TOKENS,
    )
    config._attn_implementation = attn_implementation
    return Kosmos2ForConditionalGeneration(config).eval()


def tiny_inputs(model: nn.Module, lengths: list[int], seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    image = [BOI] + [5] * NUM_IMAGE_TOKENS + [EOI]  # the processor's layout; the ids under the mask are replaced
    rows = [[BOS] + image + random_text(n, 6, 900, gen) for n in lengths]
    marks = [[0, 0] + [1] * NUM_IMAGE_TOKENS + [0] * (1 + n) for n in lengths]
    batch = left_padded(rows, PAD, extra={"image_embeds_position_mask": marks})
    batch["pixel_values"] = torch.randn(len(lengths), 3, 32, 32, generator=gen)
    return batch
