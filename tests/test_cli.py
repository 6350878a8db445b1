"""The first hour: a fast `mmpt --help`, `--version`, `mmpt models` saying what can train, pictures of a run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmpt.cli import main
from mmpt.config import ConfigError
from mmpt.data import Sample
from mmpt.plots import plot_curves, plot_gallery, read_log
from mmpt.runconfig import load_run_config


def test_import_and_help_do_not_load_torch():
    code = ("import sys, mmpt, mmpt.cli\n"
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, sorted(sys.modules)\n"
            "mmpt.cli.build_parser()\n"
            "assert 'torch' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip().startswith("mmpt 0.")


def test_models_say_which_can_train(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "train/eval from the CLI: yes" in out  # mmpt-tiny
    blocks = out.split("\n")
    llava = blocks.index(next(b for b in blocks if b.startswith("llava-tiny-random")))
    assert "no: built from a config without a tokenizer" in blocks[llava + 2]
    with pytest.raises(ConfigError, match="cannot be trained or evaluated from a config"):
        load_run_config(None, ["model.name=llava-tiny-random"])


def test_curves_follow_stages_on_one_axis(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("stage,step,loss,lr,samples_per_s\nprefix,1,2.0,0.1,5\nprefix,2,1.5,0.05,5\n"
                   "lora,1,1.2,0.01,4\nlora,2,1.1,0.005,4\n")
    assert [r["x"] for r in read_log(log)] == [1, 2, 3, 4]
    out = plot_curves(log, tmp_path / "curves.png")
    with Image.open(out) as image:
        assert image.size[0] > 400 and image.size[1] > 300
    (tmp_path / "empty.csv").write_text("stage,step,loss,lr,samples_per_s\n")
    assert plot_curves(tmp_path / "empty.csv", tmp_path / "none.png") is None


def test_gallery_draws_images_and_boxes(tmp_path):
    image = np.zeros((40, 60, 3), dtype=np.uint8)
    samples = [Sample(image, "the red box", "[10, 10, 50, 50]", id="a", box=(6.0, 4.0, 30.0, 20.0),
                      image_size=(60, 40)),
               Sample(image, "what color?", "red", id="b")]
    after = [{"id": "a", "prediction": "[12, 9, 40, 55]"}, {"id": "b", "prediction": "red"}]
    before = [{"id": "a", "prediction": "?"}, {"id": "b", "prediction": "blue"}]
    out = plot_gallery(samples, after, tmp_path / "gallery.png", before)
    with Image.open(out) as picture:
        pixels = np.asarray(picture.convert("RGB")).reshape(-1, 3).astype(int)
    lime = ((pixels[:, 1] > 200) & (pixels[:, 0] < 80) & (pixels[:, 2] < 80)).sum()
    red = ((pixels[:, 0] > 200) & (pixels[:, 1] < 80) & (pixels[:, 2] < 80)).sum()
    assert lime > 20 and red > 20  # the reference and the predicted box are drawn
    with pytest.raises(ValueError, match="row 0 is for sample 'b', not 'a'"):  # rows must follow the samples
        plot_gallery(samples, list(reversed(after)), tmp_path / "bad.png")


def test_smoke_runs_go_to_their_own_folder():
    from mmpt.runconfig import smoke

    config = load_run_config(None, ["output_dir=some/runs", "method={name: prefix}"])
    assert Path(smoke(config).output_dir) == Path("some/runs/smoke")
