"""The first hour of a new user (issue 19): smoke analyses land beside the smoke run and `report` finds them; the
messages of predict and export say what is wrong."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmpt.report import full_report
from mmpt.runconfig import load_run_config, smoke


def test_smoke_is_idempotent_so_a_smoke_runs_analysis_lands_beside_it():
    config = smoke(load_run_config(None, ["method={name: prefix}"]))
    assert config.output_dir == str(Path("runs") / "smoke")
    assert smoke(config).output_dir == config.output_dir  # was runs/smoke/smoke


def test_report_on_the_analysis_folder_includes_the_analyses_inside(tmp_path):
    for name in ("rank", "fgsm"):
        folder = tmp_path / "analysis" / name
        folder.mkdir(parents=True)
        (folder / "analysis.json").write_text(json.dumps({"analysis": name, "settings": {}}))
        (folder / f"{name}.md").write_text(f"## {name} section\n")
    text = full_report([tmp_path / "analysis"])
    assert "## fgsm section" in text and "## rank section" in text
    assert "not a run folder" not in text


def test_messages_say_what_is_wrong(tmp_path, capsys):
    from mmpt.cli import main

    assert main(["predict", str(tmp_path / "missing.png"), "what?"]) == 2
    assert f"{tmp_path / 'missing.png'} not found" in capsys.readouterr().err
    assert main(["export", str(tmp_path)]) == 2
    assert f"{tmp_path} is not an mmpt run folder (no config.yaml)" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_no_progress_hides_the_loading_bars_and_predict_labels_its_own(tmp_path):
    import os
    import subprocess
    import sys

    from PIL import Image

    Image.new("RGB", (16, 16), (200, 30, 30)).save(tmp_path / "x.png")
    (tmp_path / "in.jsonl").write_text('{"image": "x.png", "prompt": "what color?"}\n')
    code = "import sys; from mmpt.cli import main; sys.exit(main(sys.argv[1:]))"
    base = [sys.executable, "-c", code, "predict", str(tmp_path / "in.jsonl"), "--model", "mmpt-tiny-random",
            "--max-new-tokens", "2"]
    env = {k: v for k, v in os.environ.items() if "PROGRESS" not in k}
    quiet = subprocess.run([*base, "--no-progress", "--out", str(tmp_path / "a.jsonl")], capture_output=True,
                           text=True, env=env, timeout=300)
    assert quiet.returncode == 0, quiet.stderr[-500:]
    assert "Loading weights" not in quiet.stderr and "it/s" not in quiet.stderr
    shown = subprocess.run([*base, "--out", str(tmp_path / "b.jsonl")], capture_output=True, text=True, env=env,
                           timeout=300)
    assert shown.returncode == 0 and "predict:" in shown.stderr and "eval:" not in shown.stderr


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_shell_completion_script_names_every_command(shell, capsys):
    from mmpt.cli import build_parser, main

    assert main(["completion", shell]) == 0
    script = capsys.readouterr().out
    commands = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction").choices
    assert all(name in script for name in commands) and "--resume" in script and "--raw-prompt" in script
    if shell == "bash":
        import subprocess

        assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0


@pytest.mark.parametrize("argv", [
    ["train", "configs/missing.yaml"],
    ["train", "configs/quickstart.yaml", "train.lrr=1"],
    ["train", "configs/quickstart.yaml", "method.length=0"],
    ["train", "configs/quickstart.yaml", "method.name=lora", "method.r=0"],
    ["train", "configs/quickstart.yaml", "stages=[{methods: [{name: prefix, length: 0}]}]"],
    ["eval", "configs/quickstart.yaml", "eval.batch_size=x"],
    ["train", "configs/quickstart.yaml", "--smoke", "train.lr=nan"],
])
def test_config_errors_answer_before_torch_and_transformers_are_imported(argv):
    """issue 19: every config or CLI error took ~20 s on a busy machine (the heavy imports ran first). The error is
    now found with torch-free modules only (0.2-0.3 s here, was 6-8 s: see the closing note)."""
    import subprocess
    import sys

    root = Path(__file__).parents[1]
    code = ("import sys; from mmpt.cli import main; code = main(sys.argv[1:]); "
            "assert code == 2, code; heavy = [m for m in ('torch', 'transformers') if m in sys.modules]; "
            "assert not heavy, heavy")
    done = subprocess.run([sys.executable, "-c", code, *argv], cwd=root, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-800:]
    assert "mmpt: config error" in done.stderr
