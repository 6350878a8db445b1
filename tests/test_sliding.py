"""Sliding-window attention (Gemma 3 style): prefixes and prompts never slide out of the window."""

import pytest
import torch

from conftest import randomize
from mmpt import methods, models
from mmpt.methods import DeepPromptConfig, PrefixConfig, PromptConfig
from mmpt.models.families import gemma3
from mmpt.models.families._tiny import with_positions

WINDOW = 4


def _all_sliding(attn: str = "sdpa"):
    """A tiny Gemma 3 whose two text layers all slide (window 4): a token 8+ positions back is out of reach."""
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3TextConfig,
        SiglipVisionConfig,
    )

    torch.manual_seed(0)
    config = Gemma3Config(
        vision_config=SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=4, image_size=32, patch_size=8),
        text_config=Gemma3TextConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=1, head_dim=16, vocab_size=1000,
                                     pad_token_id=0, sliding_window=WINDOW,
                                     layer_types=["sliding_attention", "sliding_attention"]),
        mm_tokens_per_image=gemma3.NUM_IMAGE_TOKENS, image_token_index=gemma3.IMAGE_TOKEN_ID,
        boi_token_index=gemma3.BOI_TOKEN_ID, eoi_token_index=gemma3.EOI_TOKEN_ID,
    )
    config._attn_implementation = attn
    model = randomize(Gemma3ForConditionalGeneration(config).eval(), 0.3)
    return models.LoadedModel("gemma3-sliding", model, None, gemma3.FAMILY)


def _last_logits(model, batch):
    with torch.no_grad():
        return model(**batch, use_cache=False).logits[:, -1]


def test_the_window_really_slides():
    loaded = _all_sliding()
    batch = gemma3.tiny_inputs(loaded.model, [20])
    changed = {k: v.clone() for k, v in batch.items()}
    changed["input_ids"][0, 0] = 5  # the first token, far out of reach of the last one
    assert torch.equal(_last_logits(loaded.model, batch), _last_logits(loaded.model, changed))


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("config", [PrefixConfig(length=3, towers=["lm"]), PromptConfig(length=3),
                                    DeepPromptConfig(length=2, tower="lm")], ids=lambda c: c.name)
def test_injected_tokens_stay_visible_beyond_the_window(config, attn):
    loaded = _all_sliding(attn)
    batch = gemma3.tiny_inputs(loaded.model, [20, 14])
    method = methods.apply(loaded, config)
    forward = with_positions(batch, "gemma3")  # as mmpt's processor gives them (generate() counts its own)
    first = _last_logits(loaded.model, forward)
    with torch.no_grad():
        for p in method.parameters():
            p.normal_(0, 1.0, generator=torch.Generator().manual_seed(3))
    assert not torch.allclose(_last_logits(loaded.model, forward), first), "the far-away tokens were not seen"
    kw = dict(max_new_tokens=12, do_sample=False)  # generation runs far past the window
    cached = loaded.model.generate(**batch, **kw)
    assert torch.equal(cached, loaded.model.generate(**batch, use_cache=False, **kw))
    method.remove()
    assert not any(hasattr(m, "_mmpt_pins") for m in loaded.model.modules())
    assert loaded.model.config.text_config._attn_implementation == attn
