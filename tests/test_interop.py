"""PEFT export and import: the exported adapter gives mmpt's logits in PEFT, an imported one gives PEFT's in mmpt."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import yaml
from peft import LoraConfig, PeftModel, get_peft_model

from mmpt import methods
from mmpt.config import to_dict
from mmpt.interop import export_peft
from mmpt.models import load
from mmpt.runconfig import load_run_config

IDS = torch.tensor([[5, 17, 99, 3, 42, 8, 61, 23]])


def _run_folder(tmp_path: Path, method_yaml: str, setup=None) -> tuple[Path, object, object]:
    """A finished-looking run folder of mmpt-tiny-random with one trained (here: randomized) method."""
    config = load_run_config(None, ["model.name=mmpt-tiny-random", f"method={method_yaml}",
                                    f"output_dir={tmp_path}", "name=exported"])
    loaded = load("mmpt-tiny-random")
    method = methods.apply(loaded, config.method)
    with torch.no_grad():
        for p in method.parameters():
            p.normal_(0, 0.2, generator=torch.Generator().manual_seed(p.numel()))
    run_dir = tmp_path / "exported"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
    methods.save(method, run_dir / f"{config.method.name}.safetensors", methods.fingerprint(loaded.model))
    return run_dir, loaded, method


def _lm_logits(model, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS, attention_mask=torch.ones_like(IDS), **kwargs).logits


def test_lora_export_gives_mmpt_logits_in_peft(tmp_path):
    run_dir, loaded, _ = _run_folder(tmp_path, "{name: lora, r: 4, dropout: 0.0}")
    loaded.model.eval()
    mine = _lm_logits(loaded.model)
    folder = export_peft(run_dir)[0]
    assert folder == run_dir / "peft" / "lora"
    card = (folder / "README.md").read_text()
    assert "base_model: mmpt-tiny-random" in card and "PeftModel.from_pretrained" in card
    base = load("mmpt-tiny-random").model.eval()
    plain = _lm_logits(base)
    peft_model = PeftModel.from_pretrained(base, str(folder)).eval()
    theirs = _lm_logits(peft_model)
    assert (mine - plain).abs().max() > 1e-3  # the adapter matters, so agreement below means something
    torch.testing.assert_close(theirs, mine, atol=1e-5, rtol=0)
    with pytest.raises(FileExistsError, match="never overwrites"):
        export_peft(run_dir)


def test_prefix_export_matches_with_peft_positions(tmp_path):
    run_dir, loaded, method = _run_folder(tmp_path, "{name: prefix, length: 3, reparam: mlp, mlp_hidden: 8}")
    loaded.model.eval()
    lm = loaded.model.language_model
    shifted = torch.arange(3, 3 + IDS.shape[1])[None]
    mine = _lm_logits(lm, position_ids=shifted)  # mmpt's prefix, real tokens at PEFT's positions
    unshifted = _lm_logits(lm)
    [folder] = export_peft(run_dir)
    cfg = json.loads((folder / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "PREFIX_TUNING" and cfg["num_virtual_tokens"] == 3
    assert "positions" in (folder / "README.md").read_text()
    fresh = copy.deepcopy(load("mmpt-tiny-random").model.language_model).eval()
    theirs = _lm_logits(PeftModel.from_pretrained(fresh, str(folder)).eval())
    torch.testing.assert_close(theirs, mine, atol=1e-5, rtol=0)
    assert (theirs - unshifted).abs().max() > 1e-4  # PEFT's position shift is real: mmpt's own positions differ


def test_methods_without_peft_equivalent_are_refused(tmp_path):
    run_dir, _, _ = _run_folder(tmp_path, "{name: prompt, length: 2}")
    with pytest.raises(ValueError, match="prompt: PEFT's prompt tuning"):
        export_peft(run_dir)
    assert not (run_dir / "peft").exists()


def _peft_lora_folder(tmp_path: Path, **options) -> tuple[Path, torch.Tensor]:
    base = load("mmpt-tiny-random").model.eval()
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                 lora_dropout=0.0, **options))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3, generator=torch.Generator().manual_seed(len(name)))
    peft_model.eval()
    folder = tmp_path / "adapter"
    peft_model.save_pretrained(str(folder))
    return folder, _lm_logits(peft_model)


def test_peft_lora_imports_with_peft_logits(tmp_path):
    folder, theirs = _peft_lora_folder(tmp_path)
    loaded = load("mmpt-tiny-random")
    plain = _lm_logits(loaded.model.eval())
    method = methods.load(loaded, folder)
    assert method.config.name == "lora" and method.config.targets == ["q_proj", "v_proj"]
    mine = _lm_logits(loaded.model.eval())
    assert (theirs - plain).abs().max() > 1e-3
    torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=0)
    # and as an mmpt method file, through the CLI
    from mmpt.cli import main

    assert main(["import", str(folder), "--model", "mmpt-tiny-random", "--out", str(tmp_path / "lora.safetensors")]) == 0
    again = load("mmpt-tiny-random")
    methods.load(again, tmp_path / "lora.safetensors")
    torch.testing.assert_close(_lm_logits(again.model.eval()), theirs, atol=1e-5, rtol=0)


def test_peft_import_refuses_what_it_cannot_represent(tmp_path):
    folder, _ = _peft_lora_folder(tmp_path, use_rslora=True)
    with pytest.raises(ValueError, match="use_rslora"):
        methods.load(load("mmpt-tiny-random"), folder)
    (folder / "adapter_model.safetensors").rename(folder / "adapter_model.bin")
    with pytest.raises(ValueError, match="pickle"):
        methods.load(load("mmpt-tiny-random"), folder)


BAD_ADAPTER_CONFIGS = {
    "a list": ([], "not the object"),
    "a string": ("lora", "not the object"),
    "no r": ({"r": None}, "'r'"),
    "no lora_alpha": ({"lora_alpha": None}, "'lora_alpha'"),
    "r null": ({"r": "null"}, "r must be a whole number"),
    "r list": ({"r": [16]}, "r must be a whole number"),
    "r 16.7": ({"r": 16.7}, "r must be a whole number"),
    "r text": ({"r": "abc"}, "r must be a whole number"),
    "r 0": ({"r": 0}, "r: must be"),
    "r -4": ({"r": -4}, "r: must be"),
    "r huge": ({"r": 2**63}, "r: must be"),
    "alpha NaN": ({"lora_alpha": float("nan")}, "lora_alpha: must be"),
    "alpha Infinity": ({"lora_alpha": float("inf")}, "lora_alpha: must be"),
    "alpha -32": ({"lora_alpha": -32}, "lora_alpha: must be"),
    "alpha text": ({"lora_alpha": "x"}, "lora_alpha must be a number"),
    "dropout 1.5": ({"lora_dropout": 1.5}, "lora_dropout: must be"),
    "layers_to_transform": ({"layers_to_transform": [0]}, "layers_to_transform"),
    "layer_replication": ({"layer_replication": [[0, 1]]}, "layer_replication"),
    "exclude_modules": ({"exclude_modules": ["q_proj"]}, "exclude_modules"),
    "trainable_token_indices": ({"trainable_token_indices": [1, 2]}, "trainable_token_indices"),
    "use_dora": ({"use_dora": True}, "use_dora"),
    "an option of a later PEFT": ({"lora_future_trick": 3}, "lora_future_trick"),
    "another PEFT type": ({"peft_type": "IA3"}, "LoRA adapters only"),
}


@pytest.fixture(scope="module")
def adapter_folder(tmp_path_factory) -> Path:
    folder, _ = _peft_lora_folder(tmp_path_factory.mktemp("peft"))
    return folder


@pytest.mark.parametrize("case", list(BAD_ADAPTER_CONFIGS))
def test_peft_import_checks_every_adapter_setting(adapter_folder, tmp_path, case):
    """adapter_config.json with wrong types, ranges or options that change the computation: one line naming the
    file and the key, never a traceback, never a silent import (issue 20)."""
    import shutil

    folder = tmp_path / "adapter"
    shutil.copytree(adapter_folder, folder)
    change, expected = BAD_ADAPTER_CONFIGS[case]
    cfg = json.loads((folder / "adapter_config.json").read_text())
    if isinstance(change, dict):
        for key, value in change.items():
            if value is None:
                cfg.pop(key)
            else:
                cfg[key] = None if value == "null" else value
    else:
        cfg = change
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError) as info:
        methods.load(load("mmpt-tiny-random"), folder)
    message = str(info.value)
    assert expected in message and "adapter_config.json" in message and "\n" not in message


def test_peft_import_refuses_deep_nesting_half_adapters_and_plain_folders(adapter_folder, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    from mmpt.cli import main

    folder = tmp_path / "adapter"
    shutil.copytree(adapter_folder, folder)
    (folder / "adapter_config.json").write_text("[" * 10000 + "]" * 10000)
    with pytest.raises(ValueError, match="nested too deeply"):
        methods.load(load("mmpt-tiny-random"), folder)
    shutil.copy(adapter_folder / "adapter_config.json", folder / "adapter_config.json")
    weights = load_file(str(folder / "adapter_model.safetensors"))
    save_file({k: v for k, v in weights.items() if "lora_B" not in k}, str(folder / "adapter_model.safetensors"))
    with pytest.raises(ValueError, match="has only lora_A"):
        methods.load(load("mmpt-tiny-random"), folder)
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(FileNotFoundError, match="not a PEFT adapter"):
        methods.load(load("mmpt-tiny-random"), plain)
    assert main(["import", str(folder), "--model", "mmpt-tiny-random", "--out", str(tmp_path / "x.safetensors")]) != 0
    assert not (tmp_path / "x.safetensors").exists()


def test_push_to_hub_uploads_each_adapter(tmp_path, monkeypatch):
    import huggingface_hub

    from mmpt.interop import push_to_hub

    calls = []
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda self, repo_id, **kw: calls.append(("create", repo_id, kw)) or f"https://hf.co/{repo_id}")
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", lambda self, **kw: calls.append(("upload", kw["path_in_repo"])))
    folders = [tmp_path / "lora", tmp_path / "prefix"]
    with pytest.raises(ValueError, match="HF_HUB_OFFLINE=1"):  # the test session is offline
        push_to_hub(folders, "me/adapters")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert push_to_hub(folders, "me/adapters") == "https://hf.co/me/adapters"
    assert calls == [("create", "me/adapters", {"private": True, "exist_ok": True}), ("upload", "lora"),
                     ("upload", "prefix")]


def _randomized(method) -> None:
    with torch.no_grad():
        for p in method.parameters():
            p.normal_(0, 0.2, generator=torch.Generator().manual_seed(p.numel()))


def test_lora_export_for_the_plain_lm_loads_onto_its_own_class(tmp_path):
    """lora-lm/ names the modules as the LM's transformers class has them: PeftModel.from_pretrained on the plain
    LlamaForCausalLM (saved and re-loaded by transformers) gives mmpt's logits (issue 19)."""
    from transformers import AutoModelForCausalLM

    run_dir, loaded, _ = _run_folder(tmp_path, "{name: lora, r: 4, dropout: 0.0}")
    mine = _lm_logits(loaded.model.eval().language_model)
    folders = export_peft(run_dir)
    assert [f.name for f in folders] == ["lora", "lora-lm"]
    cfg = json.loads((folders[1] / "adapter_config.json").read_text())
    assert all(t.startswith("model.layers.") for t in cfg["target_modules"])
    assert "LlamaForCausalLM" in (folders[1] / "README.md").read_text()
    load("mmpt-tiny-random").model.language_model.save_pretrained(tmp_path / "lm")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "lm").eval()
    base = _lm_logits(plain)
    theirs = _lm_logits(PeftModel.from_pretrained(plain, str(folders[1])).eval())
    assert (mine - base).abs().max() > 1e-3
    torch.testing.assert_close(theirs, mine, atol=1e-5, rtol=0)


def test_a_lora_peft_trained_on_the_plain_lm_imports_with_the_mapping_said(tmp_path, caplog):
    from transformers import AutoModelForCausalLM

    load("mmpt-tiny-random").model.language_model.save_pretrained(tmp_path / "lm")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "lm").eval()
    peft_model = get_peft_model(plain, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3, generator=torch.Generator().manual_seed(len(name)))
    peft_model.eval().save_pretrained(str(tmp_path / "adapter"))
    theirs = _lm_logits(peft_model)
    loaded = load("mmpt-tiny-random")
    with caplog.at_level("WARNING", logger="mmpt"):
        methods.load(loaded, tmp_path / "adapter")
    assert "plain language model (model.layers.0.self_attn.q_proj); mapped to" in caplog.text
    torch.testing.assert_close(_lm_logits(loaded.model.eval().language_model), theirs, atol=1e-5, rtol=0)


def test_an_adapter_for_another_model_is_refused_naming_both_namings(tmp_path):
    folder, _ = _peft_lora_folder(tmp_path)
    config = json.loads((folder / "adapter_config.json").read_text())
    from safetensors.torch import load_file, save_file

    weights = load_file(str(folder / "adapter_model.safetensors"))
    save_file({k.replace("language_model.model.layers", "transformer.h"): v for k, v in weights.items()},
              str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"not in the blocks of mmpt-tiny .* or, for the language model "
                                         r"alone, model.layers.N: give --model the model"):
        methods.load(load("mmpt-tiny-random"), folder)


def test_lora_round_trips_with_a_hugging_face_family_class_both_ways(tmp_path, base_tokenizer):
    """llava: mmpt's export loads onto LlavaForConditionalGeneration as transformers loads it, and a LoRA PEFT
    trained on that class imports into mmpt, both with equal logits (issue 19)."""
    from transformers import LlavaForConditionalGeneration

    from test_hf_processor import build

    model, hp = build(base_tokenizer, "llava")
    model.save_pretrained(tmp_path / "llava")
    hp.hf.save_pretrained(tmp_path / "llava")
    config = load_run_config(None, [f"model.name={tmp_path / 'llava'}", "method={name: lora, r: 4, dropout: 0.0}",
                                    f"output_dir={tmp_path}", "name=exported"])
    loaded = load(str(tmp_path / "llava"))
    method = methods.apply(loaded, config.method)
    _randomized(method)
    mine = _lm_logits(loaded.model.eval())
    run_dir = tmp_path / "exported"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
    methods.save(method, run_dir / "lora.safetensors", methods.fingerprint(loaded.model))
    [folder] = export_peft(run_dir)  # the LM runs inside LLaVA's forward: no lora-lm/
    hf = LlavaForConditionalGeneration.from_pretrained(tmp_path / "llava").eval()
    theirs = _lm_logits(PeftModel.from_pretrained(hf, str(folder)).eval())
    assert (theirs - _lm_logits(LlavaForConditionalGeneration.from_pretrained(tmp_path / "llava").eval())).abs().max() > 1e-3
    torch.testing.assert_close(theirs, mine, atol=1e-5, rtol=0)

    trained = get_peft_model(LlavaForConditionalGeneration.from_pretrained(tmp_path / "llava"),
                             LoraConfig(r=4, lora_alpha=8, target_modules=r".*language_model.*\.(q_proj|v_proj)"))
    with torch.no_grad():
        for name, p in trained.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3, generator=torch.Generator().manual_seed(len(name)))
    trained.eval().save_pretrained(str(tmp_path / "adapter"))
    again = load(str(tmp_path / "llava"))
    methods.load(again, tmp_path / "adapter")
    torch.testing.assert_close(_lm_logits(again.model.eval()), _lm_logits(trained), atol=1e-5, rtol=0)


def test_prefix_export_says_whether_peft_generate_keeps_the_prefix(tmp_path):
    """The card's generation sentence is measured at export: it must agree with what PEFT's generate() does."""
    run_dir, _, _ = _run_folder(tmp_path, "{name: prefix, length: 3}")
    [folder] = export_peft(run_dir)
    lm = copy.deepcopy(load("mmpt-tiny-random").model.language_model).eval()
    model = PeftModel.from_pretrained(lm, str(folder)).eval()
    mask = torch.ones_like(IDS)
    with torch.no_grad():
        forward = model(input_ids=IDS, attention_mask=mask).logits[:, -1]
        first = model.generate(input_ids=IDS, attention_mask=mask, max_new_tokens=1, do_sample=False,
                               output_logits=True, return_dict_in_generate=True).logits[0]
    keeps = torch.allclose(first, forward, atol=1e-3, rtol=1e-3)
    card = (folder / "README.md").read_text()
    assert ("keeps the prefix" in card) == keeps and ("ignores this prefix" in card) == (not keeps)


def test_a_pt_peft_export_is_one_folder_whose_recipe_reproduces_mmpt(tmp_path):
    """prefix then LoRA: lora-lm/ + prefix/ loaded as the top README says give mmpt's logits (positions shifted
    by the prefix length, as the prefix card says)."""
    from peft import PeftModel as Peft

    config = load_run_config(None, [
        "model.name=mmpt-tiny-random", f"output_dir={tmp_path}", "name=ptpeft",
        "stages=[{name: p, methods: [{name: prefix, length: 3}]}, "
        "{name: l, methods: [prefix, {name: lora, r: 4, dropout: 0.0}]}]"])
    loaded = load("mmpt-tiny-random")
    stages = config.stage_list()  # stage 2's "prefix" keeps training stage 1's (length 3)
    applied = [methods.apply(loaded, stages[0].methods[0]), methods.apply(loaded, stages[1].methods[1])]
    for method in applied:
        _randomized(method)
    run_dir = tmp_path / "ptpeft"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
    for method in applied:
        methods.save(method, run_dir / f"{method.config.name}.safetensors", methods.fingerprint(loaded.model))
    lm = loaded.model.eval().language_model
    mine = _lm_logits(lm, position_ids=torch.arange(3, 3 + IDS.shape[1])[None])
    folders = export_peft(run_dir)
    assert sorted(f.name for f in folders) == ["lora", "lora-lm", "prefix"]
    recipe = (tmp_path / "ptpeft" / "peft" / "README.md").read_text()
    assert "both adapters are needed" in recipe and "load_adapter" in recipe
    assert '"length": 3' in (run_dir / "peft" / "prefix" / "README.md").read_text()
    fresh = copy.deepcopy(load("mmpt-tiny-random").model.language_model).eval()
    fresh.load_adapter(str(run_dir / "peft" / "lora-lm"))
    theirs = _lm_logits(Peft.from_pretrained(fresh, str(run_dir / "peft" / "prefix")).eval())
    torch.testing.assert_close(theirs, mine, atol=1e-5, rtol=0)
