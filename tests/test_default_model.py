"""The embedded default VLM (real weights) and the quickstart job in smoke mode."""

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mmpt.data import load_easy_vqa

ROOT = Path(__file__).parents[1]


def test_default_model_loads_offline_and_generates(real_model):
    sample = load_easy_vqa("test", limit=1)[0]
    batch = real_model.processor([Image.open(sample.image)], [sample.prompt])
    assert batch["input_ids"].shape[1] > 49
    ids = real_model.model.generate(**batch, max_new_tokens=6, do_sample=False,
                                    pad_token_id=real_model.processor.pad_token_id)
    assert ids.shape[1] >= 1
    text = real_model.processor.decode(ids)[0]
    assert isinstance(text, str) and text


def test_vision_tower_is_pretrained_and_frozen_batchnorm(real_model):
    tower = real_model.model.vision
    tower.train()
    assert not tower.net.training
    x = real_model.processor.image_transform(np.zeros((64, 64, 3), dtype=np.uint8))
    feats = tower(x[None])
    assert feats.shape == (1, 49, 1280)
    assert torch.isfinite(feats).all()


def test_quickstart_smoke(tmp_path):
    from mmpt.cli import main

    code = main(["train", str(ROOT / "configs" / "quickstart.yaml"), "--smoke", "--no-progress",
                 f"output_dir={tmp_path}"])
    assert code == 0
    run = tmp_path / "smoke" / "quickstart"  # smoke runs never take the real run's folder
    for name in ("config.yaml", "metrics.json", "prefix.safetensors", "report.md", "README.md", "log.csv",
                 "curves.png", "gallery.png"):
        assert (run / name).is_file(), name
    assert "![gallery](gallery.png)" in (run / "report.md").read_text()
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.0 <= metrics["after"]["accuracy"] <= 1.0 and metrics["train"]["steps"] == 2
    # the analyses on the default model (the suite's other analysis tests use tiny random models)
    for analysis in ("rank", "fgsm"):
        out = tmp_path / "analysis" / analysis
        assert main(["analyze", analysis, str(run), "--smoke", "--samples", "2", "--no-progress", "--out", str(out),
                     *(["--no-base"] if analysis == "fgsm" else [])]) == 0
        rows = json.loads((out / f"{analysis}.json").read_text())["rows"]
        assert {r["subject"] for r in rows} == ({"base", "quickstart"} if analysis == "rank" else {"quickstart"})
        assert all(0 < r["effective_rank"] <= 1 for r in rows) if analysis == "rank" else len(rows) == 2
    # a second run never overwrites the first (the same config on the random model: fast)
    assert main(["train", str(ROOT / "configs" / "quickstart.yaml"), "--smoke", "--no-progress",
                 f"output_dir={tmp_path}", "model.name=mmpt-tiny-random", "train.precision=fp32"]) == 0
    assert (tmp_path / "smoke" / "quickstart-2" / "metrics.json").is_file()


def test_pt_peft_stages_smoke(tmp_path):
    from mmpt.cli import main

    code = main(["train", str(ROOT / "configs" / "pt_peft_tiny.yaml"), "--smoke", "--no-progress",
                 f"output_dir={tmp_path}", "eval.before=false"])
    assert code == 0
    run = tmp_path / "smoke" / "pt-peft-tiny"
    metrics = json.loads((run / "metrics.json").read_text())
    assert [s["methods"] for s in metrics["stages"]] == [["prefix"], ["prefix", "lora"]]
    first, second = (s["parameters"]["trainable"] for s in metrics["stages"])
    assert second > first  # LoRA adds trainable parameters; the prefix keeps training
    assert (run / "prefix.safetensors").is_file() and (run / "lora.safetensors").is_file()
    # PT-PEFT's ablation and prefix similarity on the default model: the prefix goes, LoRA stays
    for analysis in ("ablate", "similarity"):
        out = tmp_path / "analysis" / analysis
        assert main(["analyze", analysis, str(run), "--smoke", "--samples", "2", "--no-base", "--no-progress",
                     "--out", str(out)]) == 0
    variants = [r["variant"] for r in json.loads((tmp_path / "analysis" / "ablate" / "ablate.json").read_text())["rows"]]
    assert variants == ["intact", "prefix -> noise (same norm)", "prefix removed"]
    layers = json.loads((tmp_path / "analysis" / "similarity" / "similarity.json").read_text())["rows"]
    assert len(layers) == 30 and all(-1 <= r["image_mean"] <= 1 for r in layers)  # SmolLM2-135M: 30 layers
