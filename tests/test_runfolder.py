"""A run folder is untrusted input (issue 20): no write or read through a link, no path out of the folder."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from mmpt.integrity import IntegrityError, verify_manifest, write_manifest
from mmpt.runconfig import load_run_config
from mmpt.runfolder import RunFolderError, inside, refuse_links, remove_tree, write_text
from mmpt.train import run

TINY = [
    "model.name=mmpt-tiny-random", "data.question_types=[yes_no]", "data.eval_question_types=[yes_no]",
    "method={name: prefix, length: 2}", "train.batch_size=4", "train.precision=fp32", "train.lr=0.05",
    "eval.before=false", "eval.max_new_tokens=2", "data.train_size=8", "data.eval_size=2", "train.max_steps=2",
    "train.save_every=1", "train.warmup_ratio=0",
]
SENTINEL = "the user's own file\n"
ENTRIES = ["metrics.json", "report.md", "README.md", "curves.png", "predictions_after.jsonl", "log.csv",
           "config.yaml", "prefix.safetensors", "manifest.json", ".mmpt.lock", "checkpoint", "checkpoint.1", "best",
           "best/prefix.safetensors", "checkpoint/state.json"]
LINKS = ["outside file", "outside folder", "dangling", "itself"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    run(load_run_config(None, [*TINY, f"output_dir={out}"]), progress=False)
    folder = out / "run"
    assert (folder / "checkpoint").is_dir() and (folder / "best").is_dir() and (folder / "metrics.json").is_file()
    return folder


def _link(run_dir: Path, entry: str, kind: str, outside: Path) -> Path:
    """Replace ``run_dir/entry`` by a link of ``kind``; returns the outside thing it points to (or would)."""
    path = run_dir / entry
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
    target = {"outside file": outside / "secret.txt", "outside folder": outside / "folder",
              "dangling": outside / "nothing-here", "itself": path}[kind]
    path.symlink_to(target)
    return target


def _outside(tmp_path: Path) -> Path:
    outside = tmp_path / "outside"
    (outside / "folder").mkdir(parents=True)
    (outside / "secret.txt").write_text(SENTINEL)
    (outside / "folder" / "mine.txt").write_text(SENTINEL)
    return outside


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_refuse_links_names_any_link_at_any_depth(tmp_path):
    outside = _outside(tmp_path)
    for entry in ["a.json", "sub", "sub/deeper.json"]:
        for kind in LINKS:
            folder = tmp_path / f"run-{entry.replace('/', '_')}-{kind.replace(' ', '_')}"
            (folder / "sub").mkdir(parents=True)
            (folder / "sub" / "deeper.json").write_text("{}")
            (folder / "a.json").write_text("{}")
            _link(folder, entry, kind, outside)
            with pytest.raises(RunFolderError, match="symbolic link") as info:
                refuse_links(folder)
            assert str(folder / entry) in str(info.value) and "\n" not in str(info.value)
    clean = tmp_path / "clean"
    clean.mkdir()
    (clean / "x.json").write_text("{}")
    refuse_links(clean)  # no link: nothing to say
    linked_run = tmp_path / "linked-run"
    linked_run.symlink_to(clean)
    refuse_links(linked_run)  # the run folder itself may be a link (runs/ on another disk)


def _resume(run_dir: Path) -> None:
    from mmpt.cli import main

    code = main(["train", "--resume", str(run_dir), "--no-progress"])
    if code:
        raise RunFolderError(f"exit code {code}")


def _eval(run_dir: Path) -> None:
    from mmpt.inference import evaluate_config

    evaluate_config(None, run_dir=run_dir, progress=False)


def _report(run_dir: Path) -> None:
    from mmpt.report import full_report

    full_report([run_dir])


def _export(run_dir: Path) -> None:
    from mmpt.interop import export_peft

    export_peft(run_dir, run_dir.parent / f"export-{run_dir.name}")


def _analyze(run_dir: Path) -> None:
    from mmpt.analysis import analyze

    analyze("rank", [run_dir], out=run_dir.parent / f"analysis-{run_dir.name}", samples=2, progress=False)


COMMANDS: dict[str, Callable[[Path], None]] = {"train --resume": _resume, "eval": _eval, "report": _report,
                                               "export": _export, "analyze": _analyze}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_refuses_a_link_in_the_run_folder(finished, tmp_path, command, capsys):
    """The symlink matrix: each file and folder a run holds, linked to an outside file / folder / nothing /
    itself: one line naming it, nothing outside written or read."""
    outside = _outside(tmp_path)
    before = _snapshot(outside)
    failures = []
    for entry in ENTRIES:
        for kind in LINKS:
            run_dir = tmp_path / f"case-{len(failures)}-{entry.replace('/', '_')}-{kind.replace(' ', '_')}"
            shutil.rmtree(run_dir, ignore_errors=True)
            shutil.copytree(finished, run_dir, symlinks=True)
            if entry.startswith("best/") or entry.startswith("checkpoint/"):
                assert (run_dir / entry).is_file()
            _link(run_dir, entry, kind, outside)
            capsys.readouterr()
            try:
                COMMANDS[command](run_dir)
            except RunFolderError as exc:
                said = capsys.readouterr().err.strip() if command == "train --resume" else str(exc)
                if str(run_dir / entry) not in said or "symbolic link" not in said or "\n" in said:
                    failures.append(f"{entry} ({kind}): {said}")
            except BaseException as exc:  # noqa: BLE001 - collect, then fail with the list
                failures.append(f"{entry} ({kind}): {type(exc).__name__}: {exc}")
            else:
                failures.append(f"{entry} ({kind}): accepted")
            shutil.rmtree(run_dir)
    assert not failures, failures
    assert _snapshot(outside) == before
    assert sorted(p.name for p in outside.iterdir()) == ["folder", "secret.txt"]


def test_manifest_entries_must_be_plain_files_inside(tmp_path):
    outside = _outside(tmp_path)
    folder = tmp_path / "best"
    folder.mkdir()
    (folder / "prefix.safetensors").write_bytes(b"weights")
    write_manifest(folder, ["prefix.safetensors"])
    verify_manifest(folder, "use another copy")
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "link.bin").symlink_to(outside / "secret.txt")
    for name in ["../outside/secret.txt", str(outside / "secret.txt"), "/dev/zero", "link.bin", "sub/../../x"]:
        entries = {**manifest["sha256"], name: "0" * 64}
        (folder / "manifest.json").write_text(json.dumps({**manifest, "sha256": entries}))
        with pytest.raises(IntegrityError) as info:
            verify_manifest(folder, "use another copy")
        assert "\n" not in str(info.value) and ("outside" in str(info.value) or "link" in str(info.value)
                                                or "not a file" in str(info.value))
    # rewriting the manifest keeps only plain files inside the folder
    write_manifest(folder, ["prefix.safetensors"])
    assert list(json.loads((folder / "manifest.json").read_text())["sha256"]) == ["prefix.safetensors"]


def test_report_never_reads_an_analysis_file_outside_the_folder(tmp_path):
    from mmpt.report import full_report

    outside = _outside(tmp_path)
    (outside / "secret.md").write_text("TOP SECRET\n")
    folder = tmp_path / "analysis"
    folder.mkdir()
    (folder / "analysis.json").write_text(json.dumps({"analysis": "../outside/secret"}))
    with pytest.raises(RunFolderError, match="points outside"):
        full_report([folder])
    (folder / "analysis.json").write_text(json.dumps({"analysis": str(outside / "secret")}))
    with pytest.raises(RunFolderError, match="points outside"):
        full_report([folder])


def test_sweep_names_only_runs_inside_it(tmp_path):
    from mmpt.sweep_summary import summarize

    folder = tmp_path / "sweep"
    folder.mkdir()
    for name in ["../elsewhere", "/etc", "..", "a/b"]:
        (folder / "sweep.json").write_text(json.dumps({"axes": {"seed": ["0"]}, "runs": [
            {"name": name, "values": {"seed": "0"}}]}))
        with pytest.raises(RunFolderError, match="not a plain folder name"):
            summarize(folder)


def test_writes_replace_never_follow(tmp_path):
    outside = _outside(tmp_path)
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "metrics.json").symlink_to(outside / "secret.txt")
    with pytest.raises(RunFolderError, match="symbolic link"):
        write_text(folder / "metrics.json", "{}")
    # a temporary name planted as a link beforehand is removed, not written through
    (folder / f".report.md.{os.getpid()}.tmp").symlink_to(outside / "secret.txt")
    write_text(folder / "report.md", "# report\n")
    assert (folder / "report.md").read_text() == "# report\n" and not (folder / "report.md").is_symlink()
    assert (outside / "secret.txt").read_text() == SENTINEL
    (folder / "checkpoint").symlink_to(outside / "folder")
    with pytest.raises(RunFolderError, match="symbolic link"):
        remove_tree(folder / "checkpoint")
    assert (outside / "folder" / "mine.txt").read_text() == SENTINEL
    with pytest.raises(RunFolderError, match="symbolic link"):
        inside(folder, "checkpoint", folder / "manifest.json", kind="folder")
