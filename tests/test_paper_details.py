"""Method details the papers specify: PT-PEFT's BLIP-2 placement, Houlsby / He adapters, folded prefix files,
M2PT's interaction layer and Xavier prompts, evaluation after every alternating round."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import randomize
from mmpt import methods, models
from mmpt.methods import AdapterConfig, DeepPromptConfig, LoRAConfig, M2PTConfig, PrefixConfig
from mmpt.models.families import FAMILY_MODULES
from mmpt.runconfig import load_run_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _family(name: str):
    loaded = models.load(f"{name}-tiny-random", seed=0)
    randomize(loaded.model, 0.3, 0)
    return loaded, FAMILY_MODULES[name].tiny_inputs(loaded.model, [5, 2, 7])


def _logits(model, batch):
    with torch.no_grad():
        return model(**batch, use_cache=False).logits


@pytest.mark.parametrize("path", sorted((CONFIGS / "papers" / "pt_peft").glob("*.yaml")), ids=lambda p: p.stem)
def test_pt_peft_blip2_configs_place_methods_as_the_paper(path):
    config = load_run_config(path)
    placed: dict = {}
    for stage in config.stage_list():  # a later stage names an applied method to keep training it: the first counts
        for m in stage.methods:
            placed.setdefault(m.name, m)
    assert placed["prefix"].towers == ["qformer", "lm"]
    assert placed["prefix"].length == (16 if config.task == "vqa" else 8)
    loaded, batch = _family("blip2")
    prefix = methods.apply(loaded, PrefixConfig(length=2, towers=placed["prefix"].towers))
    assert set(prefix.encoders) == {"qformer", "lm"}
    lora = methods.apply(loaded, placed["lora"])
    names = list(lora.adapted)
    assert any(n.startswith("vision__") and n.endswith("qkv") for n in names)
    assert any(n.startswith("qformer__") and "attention__attention__query" in n for n in names)
    assert not any("crossattention" in n for n in names)  # the paper adapts the Q-Former's self-attention only
    assert not any(n.startswith("lm__") for n in names)
    assert _logits(loaded.model, batch).isfinite().all()


def test_lora_targets_match_on_dotted_boundaries():
    loaded, _ = _family("blip2")
    everything = methods.apply(loaded, LoRAConfig(towers=["qformer"], targets=["query"]))
    crossed = sum("crossattention" in n for n in everything.adapted)
    everything.remove()
    assert crossed > 0  # a bare name matches every module of that name
    self_only = methods.apply(loaded, LoRAConfig(towers=["qformer"], targets=["attention.attention.query"]))
    assert len(self_only.adapted) == len(everything.adapted) - crossed


@pytest.mark.parametrize("placement", ["houlsby", "parallel_ffn"])
def test_paper_adapter_placements(placement):
    loaded, batch = _family("llava")
    base = _logits(loaded.model, batch)
    method = methods.apply(loaded, AdapterConfig(placement=placement, bottleneck=4, scale=4.0))
    n_blocks = len(loaded.model.model.language_model.layers)
    assert len(method.adapters) == (2 if placement == "houlsby" else 1) * n_blocks
    if placement == "houlsby":
        assert {k.rsplit("_", 1)[-1] for k in method.adapters} == {"attn", "mlp"}
    assert torch.equal(_logits(loaded.model, batch), base)  # zero-initialised up-projections: identity at start
    with torch.no_grad():
        for p in method.parameters():
            p.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(_logits(loaded.model, batch), base)
    method.remove()
    assert torch.equal(_logits(loaded.model, batch), base)


def test_houlsby_refuses_blocks_without_an_mlp_sublayer():
    loaded, _ = _family("blip2")
    with pytest.raises(ValueError, match="MLP sublayer"):
        methods.apply(loaded, AdapterConfig(placement="houlsby", towers=["qformer"]))


def test_prefix_files_are_saved_folded(tmp_path):
    loaded, batch = _family("llava")
    method = methods.apply(loaded, PrefixConfig(length=3, reparam="mlp_type", mlp_hidden=8, init_std=0.5))
    loaded.model.eval()
    expected = _logits(loaded.model, batch)
    methods.save(method, tmp_path / "prefix.safetensors", "", fold=True)
    methods.save(method, tmp_path / "resumable.safetensors", "")
    assert method.config.reparam == "mlp_type"  # saving left the training method as it was
    assert set(load_file(str(tmp_path / "prefix.safetensors"))) == {"encoders.lm.prefix"}
    assert any("mlp" in k for k in load_file(str(tmp_path / "resumable.safetensors")))
    method.remove()
    again = methods.load(loaded, tmp_path / "prefix.safetensors", strict_fingerprint=False)
    assert again.config.reparam == "none"
    torch.testing.assert_close(_logits(loaded.model, batch), expected)


def test_m2pt_fresh_linear_interaction_layer_starts_as_identity():
    loaded = models.load("mmpt-tiny-random")
    batch = loaded.processor([torch.zeros(3, 224, 224)], ["What color?"])
    base = _logits(loaded.model, batch)
    projector = sum(p.numel() for p in loaded.model.projector.parameters())
    method = methods.apply(loaded, M2PTConfig(visual_length=0, text_length=0, interaction="linear"))
    width = method.interaction.in_features
    assert sum(p.numel() for p in method.parameters()) == width * width + width < projector
    torch.testing.assert_close(_logits(loaded.model, batch), base)
    with torch.no_grad():
        method.interaction.weight.mul_(0.5)
    assert not torch.allclose(_logits(loaded.model, batch), base)
    method.remove()
    assert torch.equal(_logits(loaded.model, batch), base)


def test_xavier_prompts():
    loaded, _ = _family("llava")
    method = methods.apply(loaded, DeepPromptConfig(length=6, tower="vision", init="xavier"))
    width = method.prompts.shape[-1]
    bound = (6 / (6 + width)) ** 0.5
    assert method.prompts.abs().max() <= bound
    assert method.prompts.std().item() == pytest.approx(bound / 3**0.5, rel=0.2)


def test_alternating_rounds_are_evaluated_one_by_one(tmp_path):
    from mmpt.train import run

    config = load_run_config(None, [
        "model.name=mmpt-tiny-random", "data.question_types=[yes_no]", "data.eval_question_types=[yes_no]",
        "data.train_size=4", "data.eval_size=2", "train.batch_size=2", "train.precision=fp32", "train.max_steps=1",
        "eval.before=false", "eval.max_new_tokens=2", f"output_dir={tmp_path}", "rounds=3",
        "stages=[{name: prefix, methods: [{name: prefix, length: 2}]}, {name: bitfit, methods: [{name: bitfit}]}]",
    ])
    metrics = run(config, progress=False)
    assert [r["round"] for r in metrics["rounds"]] == [1, 2]  # round 3 is the final "after" evaluation
    assert all("accuracy" in r for r in metrics["rounds"]) and "after" in metrics
    saved = json.loads((Path(metrics["run_dir"]) / "metrics.json").read_text())
    assert len(saved["rounds"]) == 2 and "| round |" in (Path(metrics["run_dir"]) / "report.md").read_text()


@pytest.mark.parametrize("family", ["llava", "gemma3"])
def test_textual_prompts_can_start_above_layer_zero(family):
    loaded, batch = _family(family)
    model = loaded.model
    base = _logits(model, batch)
    n = len(model.model.language_model.layers)
    method = methods.apply(loaded, DeepPromptConfig(length=3, tower="lm", layers=[n - 1], init_scale=1.0))
    with torch.no_grad():
        method.prompts.normal_(0, 1.0, generator=torch.Generator().manual_seed(2))
    prompted = _logits(model, batch)
    assert prompted.shape == base.shape and not torch.allclose(prompted, base)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    cached = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    uncached = model.generate(**inputs, max_new_tokens=3, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)
    model(**batch, use_cache=False).logits.sum().backward()
    assert method.prompts.grad is not None and method.prompts.grad.abs().sum() > 0
    method.remove()
    assert torch.equal(_logits(model, batch), base)
