"""train.report_to: trackers through Accelerate, one step axis (optimizer steps over the whole run) as log.csv."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from mmpt.config import ConfigError
from mmpt.runconfig import load_run_config
from mmpt.train import run

TWO_STAGES = [
    "model.name=mmpt-tiny-random", "data.question_types=[yes_no]", "data.eval_question_types=[yes_no]",
    "data.train_size=8", "data.eval_size=2", "train.batch_size=4", "train.precision=fp32", "train.log_every=1",
    "train.max_steps=2", "eval.max_new_tokens=2", "train.report_to=[tensorboard, csv]",
    "stages=[{name: first, methods: [{name: prefix, length: 2}]}, {name: second, methods: [prefix]}]",
]


def test_tensorboard_steps_follow_log_csv_across_stages(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    metrics = run(load_run_config(None, [*TWO_STAGES, f"output_dir={tmp_path}"]), progress=False)
    run_dir = Path(metrics["run_dir"])
    with open(run_dir / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["stage"], int(r["step"])) for r in rows] == [("first", 1), ("first", 2), ("second", 1), ("second", 2)]
    acc = EventAccumulator(str(run_dir / "tensorboard"))  # the scalars (hyperparameters go to a subfolder)
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert [e.step for e in acc.Scalars("train/first/loss")] == [1, 2]
    assert [e.step for e in acc.Scalars("train/second/loss")] == [3, 4]  # continues where stage 1 stopped
    assert [round(e.value, 5) for e in acc.Scalars("train/second/loss")] == [round(float(r["loss"]), 5)
                                                                             for r in rows[2:]]
    assert [e.step for e in acc.Scalars("eval/accuracy")] == [0, 4]  # before and after training
    assert "eval/n" not in tags  # a sample count is not a metric


@pytest.mark.parametrize(("value", "message"), [("[tensorbord]", "unknown tracker"),
                                                ("[wandb]", "wandb is not installed")])
def test_report_to_is_checked(value, message):
    pytest.importorskip("tensorboard")
    if value == "[wandb]":
        import importlib.util

        if importlib.util.find_spec("wandb") is not None:
            pytest.skip("wandb is installed here")
    with pytest.raises(ConfigError, match=message):
        load_run_config(None, [f"train.report_to={value}"])
