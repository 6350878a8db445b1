"""Every task end to end on the tiny random model, with easy-VQA exported into each real data format;
plus the eval / predict / report commands and a check that every shipped config loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmpt.cli import main
from mmpt.runconfig import load_run_config, smoke
from mmpt.train import run

ROOT = Path(__file__).parents[1]
TINY = ["model.name=mmpt-tiny-random", "train.precision=fp32", "eval.before=false"]
EXPECTED = {
    "caption": ["bleu1", "bleu4", "meteor", "rouge_l", "cider"],
    "caption_scst": ["cider", "bleu4"],
    "vqa": ["accuracy", "vqa_accuracy"],
    "ve": ["accuracy"],
    "refexp": ["acc@0.5", "miou", "unparsed"],
    "instruct": ["accuracy", "mme/acc", "mme/acc_plus", "mme/score"],
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    pytest.importorskip("mmpt.data.export")
    from mmpt.data.export import export_easy_vqa

    out = tmp_path_factory.mktemp("formats") / "easyvqa"
    export_easy_vqa(out, train_images=12, test_images=8)
    return out


def _localized(config: str, data_dir: Path, tmp_path: Path) -> Path:
    """A copy of a shipped config whose data paths point at ``data_dir``."""
    text = (ROOT / "configs" / "default" / config).read_text().replace("data/easyvqa", str(data_dir))
    path = tmp_path / config
    path.write_text(text)
    return path


@pytest.mark.parametrize("task", sorted(EXPECTED))
def test_task_end_to_end(task, exported, tmp_path):
    config = smoke(load_run_config(_localized(f"{task}.yaml", exported, tmp_path), [*TINY, f"output_dir={tmp_path}"]))
    metrics = run(config, progress=False)
    after = metrics["after"]
    assert all(key in after for key in EXPECTED[task]), sorted(after)
    if task == "caption_scst":  # the CIDEr-D reward stage ran after cross-entropy
        assert [s["name"] for s in metrics["stages"]] == ["ce", "scst"] and metrics["stages"][1]["steps"] == 2
    assert all(0.0 <= after[k] <= (200.0 if "score" in k else 10.0) for k in EXPECTED[task])
    lines = (Path(metrics["run_dir"]) / "predictions_after.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert len(rows) == after["n"] and all(isinstance(r["prediction"], str) for r in rows)
    if task == "ve":  # ranked among the three labels
        assert {r["prediction"] for r in rows} <= {"yes", "maybe", "no"}


def test_eval_predict_report_commands(exported, tmp_path, capsys):
    config = _localized("vqa.yaml", exported, tmp_path)
    args = [str(config), "--smoke", "--no-progress", *TINY, f"output_dir={tmp_path}"]
    assert main(["train", *args]) == 0
    run_dir = tmp_path / "smoke" / "vqa-default"
    assert main(["eval", *args, "--run", str(run_dir)]) == 0
    evaluated = json.loads((run_dir / "eval-vqa-default" / "metrics.json").read_text())  # inside the run
    trained = json.loads((run_dir / "metrics.json").read_text())["after"]
    # the best checkpoint (the only evaluation here: after training) reproduces the run's own numbers
    assert evaluated["accuracy"] == trained["accuracy"] and evaluated["vqa_accuracy"] == trained["vqa_accuracy"]
    # `mmpt eval RUN`: the run's own config, no CONFIG needed; a second evaluation never overwrites the first
    assert main(["eval", str(run_dir), "--no-progress"]) == 0
    again = json.loads((run_dir / "eval-vqa-default-2" / "metrics.json").read_text())
    assert again["accuracy"] == trained["accuracy"]
    # a config that does not match the run is refused before anything loads
    capsys.readouterr()
    assert main(["eval", *args, "task=caption", "--run", str(run_dir)]) == 2
    assert "was trained with 'vqa'" in capsys.readouterr().err
    image = next((exported / "images" / "test").iterdir())
    capsys.readouterr()
    assert main(["predict", str(image), "What color is the shape?", "--run", str(run_dir),
                 "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.endswith("\n")  # the answer line (a random tiny model may say anything)
    csv_path = tmp_path / "runs.csv"
    failed = tmp_path / "failed-run"  # a run that died after writing its config: left out, named, not fatal
    failed.mkdir()
    (failed / "config.yaml").write_text("task: vqa\n")
    assert main(["report", str(run_dir), str(failed), str(tmp_path / "smoke"), "--csv", str(csv_path)]) == 0
    out = capsys.readouterr().out
    assert "vqa_accuracy" in out and csv_path.read_text().startswith("run,")
    assert "Left out:" in out and "failed-run (no metrics.json" in out and "smoke (not a run folder)" in out
    assert main(["report", str(failed)]) == 2


def test_bad_data_paths_fail_clearly(tmp_path, capsys):
    config = ROOT / "configs" / "default" / "vqa.yaml"
    assert main(["train", str(config), "--smoke", *TINY, f"output_dir={tmp_path}",
                 f"data.train.questions={tmp_path / 'nope.json'}"]) == 2
    assert "VQAv2 questions file not found" in capsys.readouterr().err
    assert not (tmp_path / "smoke" / "vqa-default").exists()  # no empty run folder left behind


@pytest.mark.parametrize("path", sorted(p.relative_to(ROOT / "configs") for p in (ROOT / "configs").rglob("*.yaml")),
                         ids=str)
def test_every_config_loads(path):
    config = load_run_config(ROOT / "configs" / path)
    assert config.stage_list() and smoke(config).stage_list()


def test_vqa_classification_head(tmp_path):
    """VQA as classification: prefix + answer_head trained with cross-entropy over the answer list."""
    answers = ["yes", "no", "red", "green", "blue", "black", "gray", "yellow", "teal", "brown", "circle",
               "rectangle", "triangle"]
    overrides = [*TINY, f"output_dir={tmp_path}", "train.objective=classify", "train.lr=0.05", "train.epochs=15",
                 "train.schedule=constant", "data.train_size=4", "data.eval_size=8", "train.log_every=1",
                 "stages=[{name: cls, methods: [{name: prefix, length: 2}, "
                 f"{{name: answer_head, answers: [{', '.join(answers)}]}}]}}]"]
    metrics = run(load_run_config(None, overrides), progress=False)
    run_dir = Path(metrics["run_dir"])
    rows = [json.loads(line) for line in (run_dir / "predictions_after.jsonl").read_text().splitlines()]
    assert rows and all(r["prediction"] in answers for r in rows)
    assert (run_dir / "answer_head.safetensors").is_file()
    losses = [float(line.split(",")[2]) for line in (run_dir / "log.csv").read_text().splitlines()[1:]]
    assert losses[-1] < 0.7 * losses[0]  # it fits 4 training answers: the (smoothed) cross-entropy goes down


def test_classify_objective_needs_a_head(tmp_path, capsys):
    assert main(["train", str(ROOT / "configs" / "quickstart.yaml"), "--smoke", *TINY, f"output_dir={tmp_path}",
                 "train.objective=classify"]) == 2
    assert "add {name: answer_head" in capsys.readouterr().err


def test_unreadable_images_stop_naming_the_record_or_are_skipped(tmp_path, capsys, caplog):
    import numpy as np
    from PIL import Image

    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "good.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")  # found when the data is read
    (tmp_path / "truncated.png").write_bytes((tmp_path / "good.png").read_bytes()[:200])  # found when loaded

    def train(rows, *extra):
        (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
        source = f"{{format: jsonl, path: {tmp_path / 'd.jsonl'}, images: {tmp_path}}}"
        good = tmp_path / "good.jsonl"
        good.write_text(json.dumps({"image": "good.png", "prompt": "what is it?", "target": "x"}) + "\n")
        evals = f"{{format: jsonl, path: {good}, images: {tmp_path}}}"
        return main(["train", str(ROOT / "configs" / "quickstart.yaml"), "--smoke", "--no-progress", *TINY,
                     f"output_dir={tmp_path / 'runs'}", "data.dataset=files", f"data.train={source}",
                     f"data.eval={evals}", "eval.before=false", *extra])

    row = {"prompt": "what is it?", "target": "x"}
    assert train([{**row, "image": "broken.png", "id": "rec-7"}]) == 2
    err = capsys.readouterr().err
    assert "broken.png" in err and "line 1" in err and "on_error: skip" in err
    assert train([{**row, "image": "truncated.png", "id": "rec-8"}]) == 2
    err = capsys.readouterr().err
    assert "truncated.png" in err and "rec-8" in err
    rows = [{**row, "image": name, "id": f"r{i}"} for i, name in enumerate(["good.png", "broken.png",
                                                                            "truncated.png", "good.png"])]
    assert train(rows, "data.on_error=skip", "train.batch_size=1") == 0  # a batch of only the damaged image
    assert "skipped 1 record(s)" in caplog.text and "broken.png" in caplog.text
    assert "truncated.png" in caplog.text and "trained on record" in caplog.text


def test_unknown_eval_metric_fails_before_training(tmp_path, capsys):
    assert main(["train", str(ROOT / "configs" / "quickstart.yaml"), "--smoke", *TINY, f"output_dir={tmp_path}",
                 "eval.metric=cider"]) == 2
    assert "measures accuracy, vqa_accuracy, not 'cider'" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
