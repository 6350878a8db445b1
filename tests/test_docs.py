"""Every code block of README.md and docs/*.md, so the docs cannot drift from the code.

- ``python`` blocks run (in a scratch folder that sees the repo's ``configs/``), top to bottom per file;
- ``yaml`` blocks load as run configs (a block of data sources, ``train: {format: ...}``, as the ``data:`` section);
- ``bash`` blocks: every ``mmpt ...`` command (also after ``-m mmpt.cli``) goes through the real argument parser,
  its CONFIG and ``key=value`` overrides through config validation, and the listing commands (``models``,
  ``methods``, ``--help``) run; every ``make`` target exists in the Makefile. Training commands themselves run in
  test_default_model.py / test_tasks.py (smoke mode).

Blocks without a language (sample output) are not code.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest
import yaml

from mmpt.cli import build_parser, main
from mmpt.runconfig import load_run_config, parse_run_config

ROOT = Path(__file__).parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
RUNS = {"models", "methods"}


def blocks(language: str) -> list[tuple[str, str]]:
    found = []
    for path in DOCS:
        for i, match in enumerate(FENCE.finditer(path.read_text())):
            if match.group(1) == language:
                found.append((f"{path.name}#{i}", match.group(2)))
    return found


@pytest.mark.parametrize(("where", "code"), blocks("python"), ids=[w for w, _ in blocks("python")])
def test_python_block_runs(where, code, tmp_path, monkeypatch):
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, where, "exec"), {"__name__": "__doc_block__"})  # noqa: S102 - our own docs


@pytest.mark.parametrize(("where", "text"), blocks("yaml"), ids=[w for w, _ in blocks("yaml")])
def test_yaml_block_is_a_valid_config(where, text):
    block = yaml.safe_load(text)
    assert isinstance(block, dict), where
    if all(isinstance(v, dict) and "format" in v for v in block.values()):  # data sources: the data: section
        block = {"data": {"dataset": "files", **block}}
    # a block shows some sections: the rest comes from the quickstart config, as in a user's file built from it
    data = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())
    for key, value in block.items():
        data[key] = {**data[key], **value} if isinstance(data.get(key), dict) and key != "method" else value
    if "stages" in block:
        data.pop("method", None)
    parse_run_config(data)


def _commands() -> list[tuple[str, list[str]]]:
    found = []
    for where, text in blocks("bash"):
        for line in text.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if not line or line.startswith("#"):
                continue
            words = shlex.split(line)
            if words[0] == "mmpt":
                found.append((where, words[1:]))
            elif "mmpt.cli" in words:
                found.append((where, words[words.index("mmpt.cli") + 1:]))
            elif words[0] == "make":
                found.append((where, words))
    return found


@pytest.mark.parametrize(("where", "words"), _commands(), ids=[f"{w}:{' '.join(c)[:40]}" for w, c in _commands()])
def test_shell_command_is_valid(where, words, capsys):
    if words[0] == "make":
        targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))
        assert set(words[1:]) <= targets, f"{where}: make {' '.join(words[1:])}"
        return
    if words[0].startswith("-"):  # mmpt --version / --help
        with pytest.raises(SystemExit) as exc:
            main(words)
        assert exc.value.code == 0 and capsys.readouterr().out
        return
    args, extra = build_parser().parse_known_args(words)
    extra = [w for w in extra if "=" in w]
    if args.command in RUNS:
        assert main(words) == 0
        assert capsys.readouterr().out
        return
    config = getattr(args, "config", None)
    placeholder = any(w.isupper() for w in words)  # CONFIG, RUN: a pattern, not a command to check further
    if args.command == "sweep" and not placeholder:  # the grid and every point's config must be valid
        from mmpt.sweep import parse_grid

        axes, fixed = parse_grid(args.grid)
        for key, values in axes.items():
            for value in values:
                load_run_config(ROOT / config, [*fixed, f"{key}={value}"])
        return
    if args.command in ("train", "eval") and config and not placeholder and Path(config).suffix != "":
        cwd = os.getcwd()
        os.chdir(ROOT)
        try:
            load_run_config(config, [*getattr(args, "overrides", []), *extra])
        finally:
            os.chdir(cwd)


def test_help_of_every_command_runs(capsys):
    for command in ["", *build_parser()._subparsers._group_actions[0].choices]:  # noqa: SLF001
        with pytest.raises(SystemExit) as exc:
            main([command, "--help"] if command else ["--help"])
        assert exc.value.code == 0
    assert "usage: mmpt" in capsys.readouterr().out


def _sections(text: str) -> dict[str, set[str]]:
    """Words inside backticks per ``## `` section of a markdown file."""
    out: dict[str, set[str]] = {}
    current = ""
    for line in text.splitlines():
        if line.startswith("## "):
            current = line[3:].strip().strip("`")
        for span in re.findall(r"`([^`]+)`", line):
            out.setdefault(current, set()).update(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", span))
    return out


def test_every_config_key_is_documented_in_configs_md():
    """issue 19: walk the config dataclasses (run sections and every registered method's config): each key is
    named in its section of docs/configs.md."""
    from dataclasses import fields

    from mmpt.methods import list_methods
    from mmpt.runconfig import DataConfig, EvalConfig, ModelConfig, RunConfig, SourceConfig, TrainConfig

    sections = _sections((Path(__file__).parents[1] / "docs" / "configs.md").read_text())
    wanted = {"Top level": [f.name for f in fields(RunConfig) if f.name not in ("model", "data", "method", "train",
                                                                               "eval", "stages")],
              "model": [f.name for f in fields(ModelConfig)], "data": [f.name for f in fields(DataConfig)]
              + [f.name for f in fields(SourceConfig)], "train": [f.name for f in fields(TrainConfig)],
              "eval": [f.name for f in fields(EvalConfig)], "stages` and `rounds": ["stages", "rounds"],
              "method": [f.name for entry in list_methods() for f in fields(entry.config_cls)]
              + [entry.name for entry in list_methods()]}
    missing = [f"{section}.{key}" for section, keys in wanted.items() for key in keys
               if key not in sections.get(section, set())]
    assert not missing, f"keys not in docs/configs.md: {missing}"
