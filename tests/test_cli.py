"""The first hour: a fast `mmpt --help`, `--version`, `mmpt models` saying what can train, pictures of a run."""

from __future__ import annotations

import json
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
        load_run_config(None, ["model.name=llava-tiny-random", "method={name: prefix}"])


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


def test_predict_folder_and_jsonl_in_batches(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.jpg", "c.png"):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    out = tmp_path / "out.jsonl"
    args = ["--model", "mmpt-tiny-random", "--max-new-tokens", "2", "--batch-size", "2", "--no-progress"]
    assert main(["predict", str(tmp_path), "what is it?", "--out", str(out), *args]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [Path(r["image"]).name for r in rows] == ["a.png", "b.jpg", "c.png"]
    assert all(r["prompt"] == "what is it?" and isinstance(r["prediction"], str) for r in rows)
    assert main(["predict", str(tmp_path), "--out", str(out), *args]) == 2  # never overwritten
    assert "never overwrites" in capsys.readouterr().err
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"image": "a.png", "prompt": "color?", "id": "q1"}) + "\n"
                         + json.dumps({"image": "c.png"}) + "\n")
    assert main(["predict", str(questions), "shape?", "--out", str(tmp_path / "q-out.jsonl"), *args]) == 0
    rows = [json.loads(line) for line in (tmp_path / "q-out.jsonl").read_text().splitlines()]
    assert [(r["id"], r["prompt"]) for r in rows] == [("q1", "color?"), ("2", "shape?")]
    # the batched answers are the one-by-one answers
    from mmpt.inference import predict_one

    single = predict_one(tmp_path / "a.png", "color?", model="mmpt-tiny-random", max_new_tokens=2)
    assert rows[0]["prediction"] == single


def test_chat_keeps_the_conversation(tmp_path):
    from mmpt.inference import chat

    Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(tmp_path / "x.png")
    seen: list[Sample] = []

    def predictor(samples: list[Sample]) -> list[str]:
        seen.extend(samples)
        return [f"answer {len(seen)}"]

    lines = iter(["hello?", f"/image {tmp_path / 'x.png'}", "what is it?", "and the color?", "/reset", "again?",
                  "/image nope.png", "/quit", "never read"])
    said: list[str] = []
    chat(predictor, None, read=lambda _: next(lines), write=said.append)  # type: ignore[arg-type]
    assert said[1] == "give an image first: /image PATH"
    assert [s.prompt for s in seen] == ["what is it?", "and the color?", "again?"]
    assert seen[1].context == (("what is it?", "answer 1"),) and seen[2].context == ()
    assert said[-1] == "no such image: nope.png"


@pytest.mark.parametrize("command,flags,named", [
    ("predict", ["--num-beams", "-3"], "--num-beams"),
    ("predict", ["--max-new-tokens", "100000"], "--max-new-tokens"),
    ("predict", ["--batch-size", "0"], "--batch-size"),
    ("chat", ["--max-new-tokens", "0"], "--max-new-tokens"),
])
def test_generation_flags_are_bounded_before_any_model_loads(command, flags, named, capsys, monkeypatch):
    import mmpt.models

    def no_load(*args, **kwargs):
        raise AssertionError("a model was loaded before the flags were checked")

    monkeypatch.setattr(mmpt.models, "load", no_load)
    image = ["x.png"]
    assert main([command, *image, "--model", "mmpt-tiny-random", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert named in err and "from 1 to" in err and len(err.splitlines()) == 1
