"""Every JSON file mmpt reads back, hand-edited: wrong types, missing keys, deep nesting give one line naming
the file and the key, never a traceback and never a silent acceptance (issue 20)."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmpt.integrity import IntegrityError, write_manifest
from mmpt.readback import ANALYSIS, METRICS, SCORE, STATE, SWEEP, Obj, ReadBackError, check, read_checked
from mmpt.runconfig import load_run_config
from mmpt.train import run

VALID = {
    "state": (STATE, {"stage": 0, "step": 2, "epoch": 0, "batches_in_epoch": 2, "seen": 8, "seconds": 1.5,
                      "running_loss": 0.7, "metrics": {"stages": []}, "best_score": None, "best_step": ""}),
    "score": (SCORE, {"metric": "accuracy", "score": 0.5, "tag": "step2"}),
    "metrics": (METRICS, {"before": {"accuracy": 0.0, "n": 2}, "after": {"accuracy": 0.5, "n": 2},
                          "stages": [{"name": "prefix", "methods": ["prefix"]}],
                          "train": {"steps": 2, "samples": 8, "seconds": 1.0, "samples_per_s": 8.0, "final_loss": 0.3},
                          "parameters": {"trainable": 10, "total": 100, "percent": 10.0},
                          "cost": {"wall_seconds": 3.0, "peak_rss_mib": 100.0}, "best": {"tag": "step2"}}),
    "sweep": (SWEEP, {"config": "c.yaml", "axes": {"seed": ["0", "1"]}, "fixed": [], "smoke": True,
                      "runs": [{"name": "r-seed=0", "values": {"seed": "0"}}]}),
    "analysis": (ANALYSIS, {"analysis": "rank", "settings": {"samples": 2}}),
}
WRONG = ["x", [], {}, None, True, 1.5, -1, float("nan")]


def _keys(spec, doc, prefix=()):
    """Every key path the schema checks that the document holds."""
    if isinstance(spec, Obj) and isinstance(doc, dict):
        for key, sub in spec.fields.items():
            if key in doc:
                yield (*prefix, key)
                yield from _keys(sub, doc[key], (*prefix, key))


def _set(doc, path, value):
    out = copy.deepcopy(doc)
    target = out
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return out


@pytest.mark.parametrize("name", list(VALID))
def test_valid_files_pass_and_every_wrong_type_is_named(name, tmp_path):
    spec, doc = VALID[name]
    assert check(doc, spec) == ""
    named = 0
    for path in _keys(spec, doc):
        for wrong in WRONG:
            problem = check(_set(doc, path, wrong), spec)
            if problem:
                named += 1
                assert ".".join(path) in problem and "\n" not in problem
    assert named > 10
    for required in spec.required:
        broken = {k: v for k, v in doc.items() if k != required}
        assert repr(required) in check(broken, spec)
    file = tmp_path / f"{name}.json"
    for text in ("[]", '"x"', "[" * 100_000 + "]" * 100_000, "{"):
        file.write_text(text)
        with pytest.raises(ReadBackError) as info:
            read_checked(file, spec, "restore it")
        assert str(file) in str(info.value) and "\n" not in str(info.value)


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=12)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
          derandomize=True, database=None)
@given(name=st.sampled_from(list(VALID)), value=JSON, key=st.integers(0, 50))
def test_random_documents_and_random_edits_are_one_line_or_valid(name, value, key, tmp_path):
    spec, doc = VALID[name]
    paths = list(_keys(spec, doc))
    for candidate in (value, _set(doc, paths[key % len(paths)], value)):
        file = tmp_path / "f.json"
        file.write_text(json.dumps(candidate))
        try:
            read_checked(file, spec, "restore it")
        except ReadBackError as exc:
            assert "\n" not in str(exc) and str(file) in str(exc)


# --- the files in a real run folder ---------------------------------------------------------------------------

TINY = [
    "model.name=mmpt-tiny-random", "data.question_types=[yes_no]", "data.eval_question_types=[yes_no]",
    "method={name: prefix, length: 2}", "train.batch_size=4", "train.precision=fp32", "train.lr=0.05",
    "eval.max_new_tokens=2", "data.train_size=8", "data.eval_size=2", "train.max_steps=2", "train.save_every=1",
    "train.warmup_ratio=0",
]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    run(load_run_config(None, [*TINY, f"output_dir={out}"]), progress=False)
    return out / "run"


def _edit(folder: Path, name: str, change) -> None:
    """Edit ``folder/name`` (JSON) and recompute the manifest, as a deliberate edit would."""
    path = folder / name
    data = json.loads(path.read_text())
    path.write_text(json.dumps(change(data)))
    listed = json.loads((folder / "manifest.json").read_text())["sha256"]
    write_manifest(folder, list(listed))


METRICS_EDITS = {
    "after: 'x'": lambda m: {**m, "after": "x"},
    "stages: [{}]": lambda m: {**m, "stages": [{}]},
    "train: 'x'": lambda m: {**m, "train": "x"},
    "cost: []": lambda m: {**m, "cost": []},
    "parameters.trainable: 'many'": lambda m: {**m, "parameters": {**m["parameters"], "trainable": "many"}},
}


@pytest.mark.parametrize("edit", list(METRICS_EDITS))
def test_report_and_export_on_edited_metrics_are_one_line(finished, tmp_path, edit):
    from mmpt.interop import export_peft
    from mmpt.report import full_report

    folder = tmp_path / "run"
    shutil.copytree(finished, folder)
    _edit(folder, "metrics.json", METRICS_EDITS[edit])
    for call in (lambda: full_report([folder]), lambda: export_peft(folder, tmp_path / "peft")):
        with pytest.raises(ValueError, match="not the metrics mmpt writes") as info:
            call()
        assert "metrics.json" in str(info.value) and "\n" not in str(info.value)


def test_report_on_a_list_or_garbled_config_and_a_csv_folder_is_one_line(finished, tmp_path):
    from mmpt.report import full_report

    folder = tmp_path / "run"
    shutil.copytree(finished, folder)
    with pytest.raises(ValueError, match="is a folder"):
        full_report([folder], csv_path=tmp_path)
    for text, why in (("- a\n- b\n", "not the config mmpt writes"), ("a: [b\n", "not YAML")):
        (folder / "config.yaml").write_text(text)
        with pytest.raises(ValueError, match=why):
            full_report([folder])


STATE_EDITS = {
    "best_score: 'abc'": lambda s: {**s, "best_score": "abc"},
    "seconds: 'x'": lambda s: {**s, "seconds": "x"},
    "running_loss: 'x'": lambda s: {**s, "running_loss": "x"},
    "metrics: []": lambda s: {**s, "metrics": []},
    "metrics.stages: 'x'": lambda s: {**s, "metrics": {"stages": "x"}},
}


@pytest.mark.parametrize("edit", list(STATE_EDITS))
def test_edited_checkpoint_state_falls_back_or_is_one_line(finished, tmp_path, edit):
    from mmpt.checkpoint import resolve_checkpoint

    folder = tmp_path / "run"
    shutil.copytree(finished, folder)
    _edit(folder / "checkpoint", "state.json", STATE_EDITS[edit])
    used, _ = resolve_checkpoint(folder)
    assert used.name == "checkpoint.1"  # the edited newest one is not trusted
    _edit(folder / "checkpoint.1", "state.json", STATE_EDITS[edit])
    with pytest.raises(IntegrityError, match="no intact checkpoint") as info:
        resolve_checkpoint(folder)
    assert "state.json" in str(info.value) and "\n" not in str(info.value)


def test_state_beyond_the_runs_stages_and_an_edited_best_score_are_one_line(finished, tmp_path):
    from mmpt.checkpoint import read_best

    folder = tmp_path / "run"
    shutil.copytree(finished, folder)
    for name in ("checkpoint", "checkpoint.1"):
        _edit(folder / name, "state.json", lambda s: {**s, "stage": 7, "step": 0})
    with pytest.raises(IntegrityError, match="but the run has 1 stage") as info:
        run(load_run_config(folder / "config.yaml"), progress=False, resume=folder)
    assert "\n" not in str(info.value)
    _edit(folder / "best", "score.json", lambda s: {**s, "score": "abc"})
    with pytest.raises(IntegrityError, match="score: must be a finite number"):
        read_best(folder / "best")


def test_sweep_and_analysis_records_are_checked(tmp_path):
    from mmpt.report import full_report

    sweep = tmp_path / "sweep"
    sweep.mkdir()
    for text, why in (("[]", "must be an object"), ('{"runs": []}', "no 'axes'"),
                      ('{"axes": {"seed": "0"}, "runs": []}', "axes.seed: must be a list")):
        (sweep / "sweep.json").write_text(text)
        with pytest.raises(ReadBackError, match=why):
            full_report([sweep])
    analysis = tmp_path / "analysis"
    analysis.mkdir()
    (analysis / "analysis.json").write_text('{"settings": {}}')
    with pytest.raises(ReadBackError, match="no 'analysis'"):
        full_report([analysis])


def test_a_tampered_but_finite_checkpoint_state_is_refused(finished, tmp_path):
    """step 999 of a 2-step stage, or an optimizer state with another learning rate (checksums recomputed):
    one line, never a resume with exit 0 (issue 20)."""
    from mmpt.integrity import load_tree, save_tree

    def resume(folder: Path) -> None:
        run(load_run_config(folder / "config.yaml"), progress=False, resume=folder)

    base = tmp_path / "base"
    shutil.copytree(finished, base)
    shutil.rmtree(base / "checkpoint")  # resume from checkpoint.1: step 1 of 2 of stage 1, with its optimizer
    assert json.loads((base / "checkpoint.1" / "state.json").read_text())["step"] == 1
    folder = tmp_path / "step"
    shutil.copytree(base, folder)
    _edit(folder / "checkpoint.1", "state.json", lambda s: {**s, "step": 999})
    with pytest.raises(IntegrityError, match="step 999 of stage 'prefix', which has 2 steps"):
        resume(folder)
    folder = tmp_path / "lr"
    shutil.copytree(base, folder)
    path = folder / "checkpoint.1" / "optimizer.safetensors"
    state = load_tree(path, "")
    for group in state["param_groups"]:
        group["lr"], group["initial_lr"] = 1e9, 1e9
    save_tree(state, path)
    listed = json.loads((folder / "checkpoint.1" / "manifest.json").read_text())["sha256"]
    write_manifest(folder / "checkpoint.1", list(listed))
    with pytest.raises(IntegrityError, match="not train.lr=0.05") as info:
        resume(folder)
    assert "\n" not in str(info.value)
    resume(base)  # the untouched state resumes


LOG_EDITS = {
    "garbage line": (b"garbage,,x\n", "does not have the 5 columns"),
    "bytes not UTF-8": (b"\xff\xfe junk\n", "is not UTF-8"),
    "step not a number": (b"prefix,x,0.5,0.01,1.0\n", "step must be an integer"),
    "loss not a number": (b"prefix,9,lots,0.01,1.0\n", "loss must be a number"),
    "a row cut off": (b"prefix,9,0.5", "does not have the 5 columns"),
    "no stage": (b",9,0.5,0.01,1.0\n", "no stage name"),
}


@pytest.mark.parametrize("edit", list(LOG_EDITS))
def test_garbage_in_log_csv_is_one_line_naming_the_line_before_resume_and_in_plots(finished, tmp_path, edit):
    from mmpt.plots import plot_curves

    folder = tmp_path / "run"
    shutil.copytree(finished, folder)
    shutil.rmtree(folder / "checkpoint")  # an unfinished run: resume from checkpoint.1
    log = folder / "log.csv"
    lines = log.read_bytes().count(b"\n")
    appended, why = LOG_EDITS[edit]
    log.write_bytes(log.read_bytes() + appended)
    for call in (lambda: run(load_run_config(folder / "config.yaml"), progress=False, resume=folder),
                 lambda: plot_curves(log, tmp_path / "curves.png")):
        with pytest.raises(ReadBackError, match=why) as info:
            call()
        assert f"log.csv: line {lines + 1}" in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "curves.png").exists()


@given(extra=st.binary(max_size=60))
@settings(max_examples=60, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_random_bytes_appended_to_a_log_read_or_are_one_line(extra, tmp_path):
    from mmpt.readback import read_log_csv

    log = tmp_path / "log.csv"
    log.write_bytes(b"stage,step,loss,lr,samples_per_s\nprefix,1,0.5,0.01,2.0\n" + extra)
    try:
        _, rows = read_log_csv(log)
    except ReadBackError as exc:
        assert "\n" not in str(exc) and "log.csv: line" in str(exc)
    else:  # what reads is what the plots and the resume use: every row complete and numeric
        for row in rows:
            assert row["stage"] and row["step"].isdigit()
            float(row["loss"]), float(row["lr"])


@pytest.mark.parametrize("cut", [0.25, 0.5, 0.75, 0.95, "line"])
def test_a_cut_off_run_config_is_one_line_naming_the_file_in_every_command(finished, tmp_path, cut):
    """A truncated config.yaml (also at a line end, where it still parses): resume, eval, export, analyze and the
    sweep reader all name the file. (A cut that loses only keys at their defaults leaves the config the run
    trained with: nothing to refuse.)"""
    from mmpt.analysis.common import load_subjects
    from mmpt.config import ConfigError
    from mmpt.inference import evaluate_config, run_methods
    from mmpt.interop import export_peft
    from mmpt.runconfig import load_run_folder_config

    folder = tmp_path / "run"
    shutil.copytree(finished, folder)
    text = (folder / "config.yaml").read_text()
    lines = text.splitlines(keepends=True)
    at_lr = next(i for i, line in enumerate(lines) if line.startswith("  lr: "))  # train.lr=0.05, not the default
    kept = "".join(lines[:at_lr]) if cut == "line" else text[: int(len(text) * cut)]
    (folder / "config.yaml").write_text(kept)
    with pytest.raises(ConfigError) as info:  # a cut that still parses lacks sections or differs from the checkpoint
        load_run_folder_config(folder)
    assert str(info.value).startswith(str(folder / "config.yaml"))
    calls = [lambda: run(load_run_folder_config(folder), progress=False, resume=folder),
             lambda: evaluate_config(str(folder)), lambda: run_methods(folder),
             lambda: export_peft(folder, tmp_path / "peft"), lambda: load_subjects([folder])]
    for call in calls:
        with pytest.raises(ConfigError, match="config.yaml(:| differs from).*(edited or cut off|restore it)") as info:
            call()
        assert "\n" not in str(info.value)


def test_resuming_a_finished_run_says_so_and_rewrites_nothing(finished, tmp_path, capsys):
    """issue 19: --resume on a finished run re-evaluated, wrote predictions_after-2.jsonl and replaced the wall
    time in metrics.json; now it returns the run's metrics and touches no file."""
    folder = tmp_path / "run"
    shutil.copytree(finished, folder)

    def files() -> dict[str, tuple[bytes, int]]:
        return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
                for p in sorted(folder.rglob("*")) if p.is_file()}

    before = files()
    metrics = run(load_run_config(folder / "config.yaml"), progress=False, resume=folder)
    assert "finished training and evaluation before; nothing to resume" in capsys.readouterr().out
    assert files() == before
    assert metrics["cost"] == json.loads((folder / "metrics.json").read_text())["cost"]


def test_a_run_saved_before_a_key_existed_still_loads_but_a_real_difference_is_refused(finished, tmp_path):
    """A checkpoint's config.json from an older mmpt lacks keys added since (here: train.group_by_length, at its
    default): eval, export and resume read the run; a value that really differs is still refused."""
    from mmpt.config import ConfigError
    from mmpt.runconfig import load_run_folder_config

    folder = tmp_path / "run"
    shutil.copytree(finished, folder)
    for name in ("checkpoint", "checkpoint.1"):
        _edit(folder / name, "config.json", lambda c: {**c, "train": {k: v for k, v in c["train"].items()
                                                                      if k != "group_by_length"}})
    assert load_run_folder_config(folder).train.group_by_length is False
    for name in ("checkpoint", "checkpoint.1"):
        _edit(folder / name, "config.json", lambda c: {**c, "train": {**c["train"], "lr": 0.5}})
    with pytest.raises(ConfigError, match=r"differs from the config .* train.lr \(0.5 -> 0.05\)"):
        load_run_folder_config(folder)
