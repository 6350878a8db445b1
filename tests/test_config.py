from pathlib import Path

import pytest

from mmpt.config import ConfigError
from mmpt.runconfig import load_run_config

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_loads(path):
    config = load_run_config(path)
    assert config.name


def test_overrides_apply_and_are_typed():
    path = Path(__file__).parents[1] / "configs" / "quickstart.yaml"
    config = load_run_config(path, ["train.lr=3e-3", "method.length=32", "data.train_size=null"])
    assert config.train.lr == pytest.approx(3e-3)
    assert config.data.train_size is None
    assert config.method.length == 32


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.lrr=1", "train.lrr: unknown key; did you mean 'lr'?"),
        ("train.batch_size=eight", "train.batch_size: expected an integer, got 'eight'"),
        ("method.length=-4", "method.length: must be a positive number of prefix tokens, got -4"),
        ("method.reparam=lstm", "method.reparam: 'lstm' is not allowed; choose one of 'none', 'mlp'"),
        ("method.name=nope", "method.name: unknown method 'nope'; available:"),
        ("train.betas=[0.9]", "train.betas: expected 2 values, got 1"),
        ("lr", "override 'lr' must look like key=value"),
    ],
)
def test_bad_config_gives_one_clear_message(override, expected):
    path = Path(__file__).parents[1] / "configs" / "quickstart.yaml"
    with pytest.raises(ConfigError) as info:
        load_run_config(path, [override])
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_cli_reports_config_error(capsys):
    from mmpt.cli import main

    path = Path(__file__).parents[1] / "configs" / "quickstart.yaml"
    assert main(["train", str(path), "method.length=0"]) == 2
    err = capsys.readouterr().err
    assert "config error: method.length" in err


def test_cli_accepts_overrides_after_flags_and_rejects_junk(capsys):
    from mmpt.cli import build_parser, main

    args, extra = build_parser().parse_known_args(["train", "c.yaml", "--smoke", "train.lr=1"])
    assert extra == ["train.lr=1"]
    with pytest.raises(SystemExit):
        main(["train", "c.yaml", "--bogus"])
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err
