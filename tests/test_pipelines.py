"""The training loop on a tiny random model: resume, DDP equivalence, CLI commands."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mmpt.runconfig import load_run_config
from mmpt.train import Run, run

TINY = [
    "model.name=mmpt-tiny-random", "data.question_types=[yes_no]", "data.eval_question_types=[yes_no]",
    "method={name: prefix, length: 2}", "train.batch_size=4", "train.precision=fp32", "train.lr=0.05",
    "train.log_every=1", "eval.before=false", "eval.max_new_tokens=2",
]


def _config(tmp_path: Path, *extra: str):
    return load_run_config(None, [*TINY, f"output_dir={tmp_path}", *extra])


def _weights(run_dir: Path, name: str = "prefix") -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / f"{name}.safetensors"))


def _losses(run_dir: Path) -> list[float]:
    with open(run_dir / "log.csv") as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


def test_resume_continues_exactly(tmp_path, monkeypatch):
    extra = ("data.train_size=20", "data.eval_size=2", "train.epochs=2", "train.max_steps=6", "train.save_every=2",
             "train.eval_every=3")
    straight = run(_config(tmp_path / "a", *extra), progress=False)

    saved = Run.checkpoint

    def interrupted(self, optimizer=None, scheduler=None):
        if optimizer is not None and self.state.step == 4:  # a crash at step 4: steps 3-4 are logged, not saved
            raise KeyboardInterrupt
        saved(self, optimizer, scheduler)

    monkeypatch.setattr(Run, "checkpoint", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(_config(tmp_path / "b", *extra), progress=False)
    monkeypatch.setattr(Run, "checkpoint", saved)
    run_dir = tmp_path / "b" / "run"
    assert not (run_dir / "metrics.json").exists()
    resumed = run(load_run_config(run_dir / "config.yaml"), progress=False, resume=run_dir)

    a, b = _weights(Path(straight["run_dir"])), _weights(run_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # 2 epochs crossed, data order kept
    assert _losses(run_dir) == pytest.approx(_losses(Path(straight["run_dir"])))  # no repeated rows
    with open(run_dir / "log.after-checkpoint.csv") as f:  # the interrupted attempt's rows are kept aside
        assert [int(r["step"]) for r in csv.DictReader(f)] == [3, 4]
    assert resumed["train"]["steps"] == 6 and resumed["after"] == straight["after"]
    assert (run_dir / "best" / "prefix.safetensors").is_file()
    assert (run_dir / "predictions_s1-step3.jsonl").is_file()


def test_resume_without_checkpoint_says_so(tmp_path):
    (tmp_path / "config.yaml").write_text("method: prefix\n")
    with pytest.raises(FileNotFoundError, match="no checkpoint to resume"):
        run(load_run_config(tmp_path / "config.yaml"), progress=False, resume=tmp_path)


def test_ddp_on_two_cpu_processes_matches_one_process(tmp_path):
    """torchrun, 2 gloo processes x batch 2 == 1 process x batch 4: the same samples per step, and DDP
    averages the two halves' gradients (yes/no answers: every sample has the same number of label tokens);
    the sharded evaluation gives the same predictions as one process."""
    common = ["data.train_size=16", "data.eval_size=5", "train.max_steps=3", "train.warmup_ratio=0"]
    single = run(_config(tmp_path, *common, "name=single"), progress=False)
    config = tmp_path / "c.yaml"
    config.write_text("method: {name: prefix, length: 2}\n")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
               "-m", "mmpt.cli", "train", str(config), "--no-progress", *TINY, *common, "train.batch_size=2",
               f"output_dir={tmp_path}", "name=ddp"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert metrics["train"]["samples"] == 12  # 3 steps x 2 processes x 2
    assert not (tmp_path / "ddp-2").exists()  # one run folder, written by the main process only
    a, b = _weights(Path(single["run_dir"])), _weights(tmp_path / "ddp")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    # evaluation sharded over the 2 processes (3 + 2 samples), gathered back in order
    rows = [(Path(single["run_dir"]) / "predictions_after.jsonl").read_text(),
            (tmp_path / "ddp" / "predictions_after.jsonl").read_text()]
    assert rows[0] == rows[1] and len(rows[0].splitlines()) == 5


def test_rewind_log_with_repeated_stage_names(tmp_path):
    from mmpt.train import rewind_log

    path = tmp_path / "log.csv"
    rows = [("a", 10), ("a", 20), ("b", 10), ("a", 10), ("a", 20), ("a", 30), ("b", 10)]  # rounds: a, b, a, b
    path.write_text("stage,step,loss,lr\n" + "".join(f"{n},{s},1.0,0.01\n" for n, s in rows))
    assert rewind_log(path, ["a", "b", "a", "b"], stage=2, step=10) == 3  # resume round 2's 'a' at step 10
    with open(path) as f:
        assert [(r["stage"], int(r["step"])) for r in csv.DictReader(f)] == rows[:4]
    with open(tmp_path / "log.after-checkpoint.csv") as f:
        assert [(r["stage"], int(r["step"])) for r in csv.DictReader(f)] == rows[4:]
    assert rewind_log(path, ["a", "b", "a", "b"], stage=2, step=10) == 0  # nothing left to move
