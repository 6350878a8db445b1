"""The contract with transformers (mmpt.contract): cache by either name, no silent fallback, masks, widths."""

import pytest
import torch
from torch import nn
from transformers import DynamicCache

from mmpt import methods, models
from mmpt.contract import CACHE_NAMES, CallArguments, ContractError, cache_argument, map_masks, tower_width
from mmpt.methods import PrefixConfig, PromptConfig
from mmpt.models.families import FAMILY_MODULES


class _Layer(nn.Module):
    def forward(self, hidden_states, attention_mask=None, cache=None, **kwargs):  # noqa: D102
        return hidden_states


class _OldLayer(nn.Module):
    def forward(self, hidden_states, attention_mask=None, past_key_values=None, **kwargs):  # noqa: D102
        return hidden_states


@pytest.mark.parametrize("layer", [_Layer(), _OldLayer()], ids=["cache", "past_key_values"])
def test_cache_found_by_either_name_by_position_or_keyword(layer):
    cache = DynamicCache()
    name = cache_argument(layer)
    assert name in CACHE_NAMES
    h = torch.zeros(1, 2, 4)
    assert CallArguments(layer, (h, None, cache), {}).cache() is cache
    assert CallArguments(layer, (h,), {name: cache}).cache() is cache
    assert CallArguments(layer, (h,), {}).cache() is None
    call = CallArguments(layer, (h,), {})
    call.set_cache(cache)
    assert call.result()[1] == {name: cache}


def test_cache_under_an_unknown_name_raises():
    call = CallArguments(_Layer(), (torch.zeros(1, 2, 4),), {"kv_store": DynamicCache()})
    with pytest.raises(ContractError, match="kv_store"):
        call.cache()


def test_generation_with_a_renamed_cache_argument_raises_not_silently_wrong():
    """A transformers release that renames the cache argument again: the hooks stop with a clear error."""
    module = FAMILY_MODULES["llava"]
    model = module.build_tiny()
    loaded = models.LoadedModel("llava-tiny", model, None, module.FAMILY)
    for config in (PrefixConfig(length=2, towers=["lm"]), PromptConfig(length=2)):
        method = methods.apply(loaded, config)
        renamers = []
        targets = [m for m in model.modules() if type(m).__name__ in ("LlamaAttention", "LlamaModel")]
        for target in targets:
            def rename(mod, args, kwargs):
                for name in CACHE_NAMES:
                    if kwargs.get(name) is not None:
                        kwargs["kv_store"] = kwargs.pop(name)
                return args, kwargs

            renamers.append(target.register_forward_pre_hook(rename, with_kwargs=True, prepend=True))
        batch = module.tiny_inputs(model, [4])
        with pytest.raises(ContractError, match="kv_store"):
            model.generate(**batch, max_new_tokens=2, do_sample=False)
        for handle in renamers:
            handle.remove()
        method.remove()


def test_map_masks_edits_every_mask_of_a_dict():
    full, sliding = torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2)
    out = map_masks({"full_attention": full, "sliding_attention": sliding, "other": None}, lambda m: m + 1)
    assert torch.equal(out["full_attention"], full + 1) and torch.equal(out["sliding_attention"], sliding + 1)
    assert out["other"] is None
    assert map_masks(None, lambda m: m) is None


def test_tower_width_comes_from_the_config_not_the_first_norm():
    """Gemma3's blocks hold a per-head q_norm before any hidden-width norm."""
    from transformers import Gemma3TextConfig
    from transformers.models.gemma3.modeling_gemma3 import Gemma3TextModel

    config = Gemma3TextConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                              num_key_value_heads=1, head_dim=16, vocab_size=100, sliding_window=8)
    model = Gemma3TextModel(config)
    block = model.layers[0]
    first_norm = next(m for m in block.modules() if type(m).__name__.endswith("RMSNorm"))
    assert first_norm.weight.shape[0] in (16, 64)
    assert tower_width(model, block) == 64
    bare = nn.Module()  # no config: the most frequent norm width
    assert tower_width(bare, block) == 64


def test_tower_width_refuses_a_config_that_does_not_match_the_block():
    class Tower(nn.Module):
        def __init__(self):
            super().__init__()
            self.config = type("C", (), {"hidden_size": 32})()

    block = nn.Sequential(nn.LayerNorm(16), nn.Linear(16, 16))
    with pytest.raises(ContractError, match="hidden size 32"):
        tower_width(Tower(), block)


def test_an_unknown_per_token_input_is_a_contract_error_not_a_crash_inside_transformers():
    """issue 18: Qwen3-VL's `visual_pos_masks` crashed inside transformers when prompts lengthened the sequence;
    side inputs mmpt knows are lengthened, one it does not know is refused by name."""
    from mmpt.contract import CallArguments, ContractError, insert_token_inputs

    class Backbone(torch.nn.Module):
        def forward(self, inputs_embeds=None, attention_mask=None, visual_pos_masks=None, per_layer_inputs=None,
                    pixel_values=None, token_type_ids=None):
            return inputs_embeds

    front = lambda value, rows, axis, name: torch.cat([rows, value], dim=axis)  # noqa: E731
    visual = torch.tensor([[False, True, True, False]])
    call = CallArguments(Backbone(), (), {"visual_pos_masks": visual, "pixel_values": torch.zeros(1, 4, 8, 8)})
    insert_token_inputs(call, 2, 4, front)
    assert call.get("visual_pos_masks").tolist() == [[False, False, False, True, True, False]]  # prompts: no image
    call = CallArguments(Backbone(), (), {"per_layer_inputs": torch.ones(1, 4, 3, 8)})  # Gemma 4
    insert_token_inputs(call, 2, 4, front)
    assert call.get("per_layer_inputs").shape == (1, 6, 3, 8) and call.get("per_layer_inputs")[:, :2].eq(0).all()
    call = CallArguments(Backbone(), (), {"token_type_ids": torch.zeros(1, 4, dtype=torch.long)})
    with pytest.raises(ContractError, match="'token_type_ids' .* looks per-token"):
        insert_token_inputs(call, 2, 4, front)
    call = CallArguments(Backbone(), (), {"visual_pos_masks": torch.ones(1, 5, dtype=torch.bool)})
    with pytest.raises(ContractError, match="'visual_pos_masks' should cover the 4 tokens"):
        insert_token_inputs(call, 2, 4, front)
