"""Zero-line families (issue 18): a family read off a transformers VLM's structure, and refused where it cannot be."""

from __future__ import annotations

import pytest
import torch

from conftest import randomize
from mmpt import methods, models
from mmpt.cli import main
from mmpt.methods import LoRAConfig, PrefixConfig, PromptConfig
from mmpt.models import families
from mmpt.models.derive import DeriveError, derive_family
from mmpt.models.families import FAMILY_MODULES

NEEDS_A_FILE = {  # family -> what the derivation says is missing
    "blip": "does not call transformers' attention functions",
    "git": "does not call transformers' attention functions",
    "florence2": "encoder-decoder",
}


@pytest.mark.parametrize("family", sorted(FAMILY_MODULES))
def test_every_shipped_family_is_derived_as_its_file_says_or_refused_with_the_reason(family):
    """With its family file removed, each shipped family's language model (what prefix, prompt, deep_prompt on the
    LM, LoRA, adapter, BitFit and head read) and vision tower are derived exactly as the file has them."""
    model = FAMILY_MODULES[family].build_tiny()
    if family in NEEDS_A_FILE:
        with pytest.raises(DeriveError, match=NEEDS_A_FILE[family]):
            derive_family(model)
        return
    derived, shipped = derive_family(model), FAMILY_MODULES[family].FAMILY
    for name, tower in derived.towers.items():
        assert tower == shipped.towers[name], name
    assert derived.towers["lm"] == shipped.towers["lm"]
    assert (derived.projector, derived.head) == (shipped.projector, shipped.head)


def test_a_checkpoint_without_a_family_file_loads_derived_and_tunes_exactly_as_with_one(tmp_path, monkeypatch):
    shipped = models.load("llava-tiny-random")
    randomize(shipped.model, 0.3, 0)
    shipped.model.save_pretrained(tmp_path)
    monkeypatch.setattr(families, "MODEL_TYPES", {k: v for k, v in families.MODEL_TYPES.items() if k != "llava"})
    loaded = models.load(str(tmp_path))
    assert "derived" in loaded.family.notes and loaded.family.towers == shipped.family.towers
    batch = FAMILY_MODULES["llava"].tiny_inputs(shipped.model, [5, 2, 7])
    for config in (PrefixConfig(length=2), PromptConfig(length=2), LoRAConfig(r=2)):
        outputs = []
        for target in (shipped, loaded):
            torch.manual_seed(0)
            method = methods.apply(target, config)
            with torch.no_grad():
                for p in method.parameters():
                    p.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
                outputs.append(target.model(**batch, use_cache=False).logits)
            method.remove()
        torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=0)


def test_models_describe_derives_a_model_type_on_the_meta_device(capsys):
    assert main(["models", "--describe", "cohere2_vision"]) == 0
    out = capsys.readouterr().out
    assert "derived from the structure" in out and "blocks model.language_model.layers; attention 'self_attn'" in out
    assert main(["models", "--describe", "llava-tiny-random"]) == 0
    assert "tower vision: encoder at model.vision_tower" in capsys.readouterr().out


def test_two_families_claiming_one_model_type_fail_registration(monkeypatch):
    monkeypatch.setitem(FAMILY_MODULES, "llava_again", FAMILY_MODULES["llava"])
    with pytest.raises(ValueError, match="model type 'llava' is claimed by family 'llava' and by 'llava'"):
        families._index_model_types()


def test_token_mixers_are_classified_and_prefixes_say_which_layers_they_skip(caplog):
    from mmpt.models.family import reads_neighbours, token_mixers

    expected = {"lfm2_vl": ["convolution", "attention", "convolution"], "llava": ["attention", "attention"],
                "gemma3": ["sliding attention", "sliding attention", "attention"],
                "mllama": ["attention", "cross-attention", "attention"]}
    for family, mixers in expected.items():
        loaded = models.load(f"{family}-tiny-random")
        lm = loaded.family.tower("lm")
        assert token_mixers(loaded.model, lm) == mixers
        assert reads_neighbours(loaded.model, lm) == (family == "lfm2_vl")
    with caplog.at_level("INFO", logger="mmpt"):
        methods.apply(loaded := models.load("lfm2_vl-tiny-random"), PrefixConfig(length=2))
    assert "layers [0, 2] have no self-attention (convolution): prefixes go to layers [1]" in caplog.text
    assert loaded.family.tower("lm").mixed
