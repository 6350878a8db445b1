"""Everything a run writes: no code from a checkpoint, damaged files, numeric guard, locks, kills (issue 12)."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import make_tiny
from mmpt import methods
from mmpt.checkpoint import resolve_checkpoint
from mmpt.config import ConfigError
from mmpt.guard import NumericGuard, TrainingDiverged
from mmpt.integrity import IntegrityError, load_tree, save_tree
from mmpt.methods import PrefixConfig
from mmpt.runconfig import load_run_config
from mmpt.train import Run, RunLocked, run

TINY = [
    "model.name=mmpt-tiny-random", "data.question_types=[yes_no]", "data.eval_question_types=[yes_no]",
    "method={name: prefix, length: 2}", "train.batch_size=4", "train.precision=fp32", "train.lr=0.05",
    "train.log_every=1", "eval.before=false", "eval.max_new_tokens=2", "data.train_size=16", "data.eval_size=2",
    "train.max_steps=4", "train.save_every=2", "train.warmup_ratio=0", "train.epochs=3",
]


def _config(out: Path, *extra: str):
    return load_run_config(None, [*TINY, f"output_dir={out}", *extra])


@pytest.fixture(scope="module")
def interrupted_run(tmp_path_factory) -> Path:
    """A run stopped by Ctrl-C right after its step-4 checkpoint would have been replaced: it holds
    ``checkpoint/`` (step 4 of 6) and ``checkpoint.1/`` (step 2)."""
    out = tmp_path_factory.mktemp("runs")
    saved = Run.checkpoint

    def stop_after_step_4(self, optimizer=None, scheduler=None):
        saved(self, optimizer, scheduler)
        if optimizer is not None and self.state.step == 4:
            raise KeyboardInterrupt

    Run.checkpoint = stop_after_step_4
    try:
        with pytest.raises(KeyboardInterrupt):
            run(_config(out, "train.max_steps=6"), progress=False)
    finally:
        Run.checkpoint = saved
    return out / "run"


def _copy(run_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(run_dir, target)
    return target


def _resume(run_dir: Path) -> dict:
    return run(load_run_config(run_dir / "config.yaml"), progress=False, resume=run_dir)


# --- no code runs from a checkpoint ---------------------------------------------------------------------------


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_crafted_pickle_in_a_checkpoint_is_never_executed(interrupted_run, tmp_path):
    run_dir = _copy(interrupted_run, tmp_path)
    marker = tmp_path / "pwned"
    for folder in ("checkpoint", "checkpoint.1"):
        (run_dir / folder / "optimizer.pt").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(IntegrityError, match="pickle files") as info:
        _resume(run_dir)
    assert not marker.exists()
    assert "\n" not in str(info.value)


def test_state_files_hold_no_code_and_round_trip_exactly(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    state = {"optimizer": optimizer.state_dict(), "python": __import__("random").getstate(),
             "numpy": np.random.get_state(), "torch": torch.get_rng_state(), "inf": float("inf")}
    save_tree(state, tmp_path / "s.safetensors")
    back = load_tree(tmp_path / "s.safetensors", "")
    assert back["python"] == state["python"] and torch.equal(back["torch"], state["torch"])
    assert back["numpy"][0] == "MT19937" and np.array_equal(back["numpy"][1], state["numpy"][1])
    assert back["optimizer"]["param_groups"] == state["optimizer"]["param_groups"]
    for k, v in state["optimizer"]["state"][0].items():
        assert torch.equal(back["optimizer"]["state"][0][k], v)
    assert back["inf"] == float("inf")
    # whatever the JSON structure says, only plain data is built (no class is looked up)
    crafted = {"__reduce__": "os.system", "py/object": "os.system", "args": ["touch x"]}
    save_tree(crafted, tmp_path / "c.safetensors")
    assert load_tree(tmp_path / "c.safetensors", "") == crafted


# --- damaged files: a one-line error or a fallback --------------------------------------------------------------


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: max(1, path.stat().st_size // 2)])


def _zero(path: Path) -> None:
    path.write_bytes(b"")


def _garble_header(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[8:16] = b"\x00\xff{[}]\x01\x02"
    path.write_bytes(bytes(raw))


def _flip_last_byte(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))


def _garble_text(path: Path) -> None:
    path.write_text("{not json")


DAMAGE = {"truncated": _truncate, "zero-bytes": _zero, "garbled-header": _garble_header, "flipped-byte": _flip_last_byte}
CHECKPOINT_FILES = ["prefix.safetensors", "optimizer.safetensors", "scheduler.safetensors", "rng.safetensors"]


@pytest.mark.parametrize("damage", sorted(DAMAGE))
@pytest.mark.parametrize("name", CHECKPOINT_FILES)
def test_damaged_newest_checkpoint_falls_back_to_the_previous(interrupted_run, tmp_path, name, damage, caplog):
    run_dir = _copy(interrupted_run, tmp_path)
    DAMAGE[damage](run_dir / "checkpoint" / name)
    folder, state = resolve_checkpoint(run_dir)
    assert folder.name == "checkpoint.1" and state.step == 2
    assert "resuming from the previous checkpoint" in caplog.text and name in caplog.text


@pytest.mark.parametrize("name", ["state.json", "config.json", "manifest.json"])
def test_damaged_checkpoint_json_falls_back(interrupted_run, tmp_path, name):
    run_dir = _copy(interrupted_run, tmp_path)
    _garble_text(run_dir / "checkpoint" / name)
    assert resolve_checkpoint(run_dir)[0].name == "checkpoint.1"


def test_missing_manifest_falls_back(interrupted_run, tmp_path):
    run_dir = _copy(interrupted_run, tmp_path)
    (run_dir / "checkpoint" / "manifest.json").unlink()
    assert resolve_checkpoint(run_dir)[0].name == "checkpoint.1"


def test_resume_after_fallback_finishes_the_run(interrupted_run, tmp_path):
    run_dir = _copy(interrupted_run, tmp_path)
    _flip_last_byte(run_dir / "checkpoint" / "prefix.safetensors")
    metrics = _resume(run_dir)
    assert metrics["train"]["steps"] == 6
    weights = load_file(str(run_dir / "prefix.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_fallback_resume_saves_the_weights_it_trained(interrupted_run, tmp_path):
    """Resumed from checkpoint.1 (the newest is gone): the final method file is the state trained from there,
    bit-identical to an uninterrupted run, never checkpoint.1's older weights reloaded after training."""
    run_dir = _copy(interrupted_run, tmp_path)
    shutil.rmtree(run_dir / "checkpoint")
    assert resolve_checkpoint(run_dir)[0].name == "checkpoint.1"
    _resume(run_dir)
    straight = run(_config(tmp_path / "straight", "train.max_steps=6"), progress=False)
    a = load_file(str(Path(straight["run_dir"]) / "prefix.safetensors"))
    b = load_file(str(run_dir / "prefix.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_every_checkpoint_damaged_is_one_line(interrupted_run, tmp_path):
    run_dir = _copy(interrupted_run, tmp_path)
    _zero(run_dir / "checkpoint" / "state.json")
    _truncate(run_dir / "checkpoint.1" / "optimizer.safetensors")
    with pytest.raises(IntegrityError, match="no intact checkpoint") as info:
        _resume(run_dir)
    assert "\n" not in str(info.value) and "state.json" in str(info.value)


@pytest.mark.parametrize("edit", ["train:\n  lr: 0.02\n", "truncate"])
def test_resume_refuses_an_edited_or_truncated_config(interrupted_run, tmp_path, edit):
    run_dir = _copy(interrupted_run, tmp_path)
    path = run_dir / "config.yaml"
    text = path.read_text()
    if edit == "truncate":  # a valid config without its train: section
        import yaml

        data = yaml.safe_load(text)
        del data["train"]
        path.write_text(yaml.safe_dump(data))
        expected = "train.batch_size"
    else:
        path.write_text(text.replace("lr: 0.05", "lr: 0.02"))
        expected = "train.lr (0.05 -> 0.02)"
    with pytest.raises(ConfigError, match="differs from the config") as info:
        _resume(run_dir)
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_second_resume_of_the_same_folder_is_refused(interrupted_run, tmp_path):
    from filelock import FileLock

    run_dir = _copy(interrupted_run, tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from filelock import FileLock; "
                               f"l = FileLock({str(run_dir / '.mmpt.lock')!r}); l.acquire(); print('held', flush=True); "
                               "time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLocked, match="another mmpt process is training"):
            _resume(run_dir)
    finally:
        holder.kill()
        holder.wait()
    lock = FileLock(str(run_dir / ".mmpt.lock"), timeout=0)
    lock.acquire()  # released by the killed holder
    lock.release()


# --- method files and run outputs -----------------------------------------------------------------------------


def _saved_prefix(tmp_path: Path):
    loaded = make_tiny()
    method = methods.apply(loaded, PrefixConfig(length=2))
    path = tmp_path / "prefix.safetensors"
    methods.save(method, path, methods.fingerprint(loaded.model))
    method.remove()
    return loaded, method, path


def test_method_files_are_checked_on_load(tmp_path):
    loaded, method, path = _saved_prefix(tmp_path)
    good = path.read_bytes()
    _flip_last_byte(path)
    with pytest.raises(IntegrityError, match="checksum mismatch"):
        methods.load(loaded, path)
    for damage in (_truncate, _zero, _garble_header):
        path.write_bytes(good)
        damage(path)
        with pytest.raises(IntegrityError) as info:
            methods.load(loaded, path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)
    path.write_bytes(good)
    methods.load(loaded, path).remove()


def test_non_finite_weights_are_never_saved_nor_loaded(tmp_path):
    loaded, method, path = _saved_prefix(tmp_path)
    again = methods.apply(loaded, PrefixConfig(length=2))
    with torch.no_grad():
        next(again.parameters()).fill_(float("nan"))
    with pytest.raises(IntegrityError, match="non-finite"):
        methods.save(again, tmp_path / "nan.safetensors", methods.fingerprint(loaded.model))
    assert not (tmp_path / "nan.safetensors").exists()
    again.remove()
    # a NaN file made outside mmpt (its checksum recomputed) is refused on load
    from safetensors import safe_open

    from mmpt.integrity import save_safetensors

    with safe_open(str(path), framework="pt") as f:
        meta = {k: v for k, v in f.metadata().items() if k != "mmpt_data_sha256"}
        tensors = {k: torch.full_like(f.get_tensor(k), float("nan")) for k in f.keys()}  # noqa: SIM118
    save_safetensors(tensors, path, meta)
    with pytest.raises(IntegrityError, match="non-finite"):
        methods.load(loaded, path)


def test_method_file_without_fingerprint_is_refused_unless_asked(tmp_path):
    loaded, method, path = _saved_prefix(tmp_path)
    methods.save(method, tmp_path / "nofp.safetensors")
    with pytest.raises(ValueError, match="no base-model fingerprint"):
        methods.load(loaded, tmp_path / "nofp.safetensors")
    methods.load(loaded, tmp_path / "nofp.safetensors", strict_fingerprint=False).remove()


def test_method_files_are_byte_stable_across_processes(tmp_path):
    code = ("import sys, torch; from mmpt.integrity import save_safetensors; "
            "save_safetensors({'b': torch.ones(3), 'a': torch.arange(4.0)}, __import__('pathlib').Path(sys.argv[1]), "
            "{'config': '{}', 'base_fingerprint': 'x', 'format': 'mmpt-1', 'z': 'y'})")
    files = [tmp_path / f"{i}.safetensors" for i in range(2)]
    for f in files:
        subprocess.run([sys.executable, "-c", code, str(f)], check=True)
    assert len({f.read_bytes() for f in files}) == 1


def test_report_on_a_damaged_metrics_file_is_one_line(interrupted_run, tmp_path):
    from mmpt.report import collect_runs

    run_dir = _copy(interrupted_run, tmp_path)
    _resume(run_dir)
    (run_dir / "metrics.json").write_text((run_dir / "metrics.json").read_text().replace('"steps"', '"stepz"'))
    with pytest.raises(IntegrityError, match="metrics.json: checksum differs"):
        collect_runs([run_dir])


# --- numeric guard, interruptions ------------------------------------------------------------------------------


def test_non_finite_steps_are_skipped_then_stop_the_run(tmp_path, monkeypatch):
    import mmpt.train as train

    real = train.training_loss
    calls = {"n": 0}

    def sometimes_nan(objective, wrapped, batch, autocast):
        calls["n"] += 1
        loss, extra = real(objective, wrapped, batch, autocast)
        return (loss * float("nan") if calls["n"] == 2 else loss), extra

    monkeypatch.setattr(train, "training_loss", sometimes_nan)
    metrics = run(_config(tmp_path / "a"), progress=False)
    assert metrics["stages"][0]["nonfinite_steps_skipped"] == 1
    weights = load_file(str(Path(metrics["run_dir"]) / "prefix.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())

    monkeypatch.setattr(train, "training_loss", lambda *a: (real(*a)[0] * float("inf"), {}))
    with pytest.raises(TrainingDiverged, match="5 steps in a row") as info:
        run(_config(tmp_path / "b", "train.max_steps=8", "train.save_every=3"), progress=False)
    assert "--resume" in str(info.value)
    run_dir = tmp_path / "b" / "run"
    assert not (run_dir / "prefix.safetensors").exists()  # nothing non-finite written
    ckpt = load_file(str(run_dir / "checkpoint" / "prefix.safetensors"))
    assert all(torch.isfinite(w).all() for w in ckpt.values())


def test_diverging_loss_is_flagged(caplog):
    guard = NumericGuard("s", "runs/x")
    for step, loss in enumerate([5.0] * 10 + [6.0, 8.0, 11.0], start=1):
        guard.watch(loss, step)
    assert guard.summary()["loss_diverging_from_step"] == 13 and "diverging" in caplog.text


def test_ctrl_c_prints_one_line_with_the_resume_command(monkeypatch, capsys, tmp_path):
    import mmpt.train as train
    from mmpt.cli import main

    def interrupted(config, progress=True, resume=None):
        raise train.Interrupted(tmp_path / "r")

    monkeypatch.setattr(train, "run", interrupted)
    assert main(["train", "--resume", str(tmp_path / "r")]) in (2, 130)
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1


def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path):
    """A real process killed with SIGKILL after a checkpoint, resumed with the CLI: the same final weights."""
    args = [*TINY, "train.max_steps=8", "train.save_every=2", "data.train_size=32"]
    config = tmp_path / "c.yaml"
    config.write_text("method: {name: prefix, length: 2}\n")
    cli = [sys.executable, "-m", "mmpt.cli", "train", str(config), "--no-progress"]
    # the uninterrupted run goes alongside (separate processes: the same results, less waiting)
    straight = subprocess.Popen([*cli, *args, f"output_dir={tmp_path}", "name=straight"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
    killed = subprocess.Popen([*cli, *args, f"output_dir={tmp_path}", "name=killed"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    state = tmp_path / "killed" / "checkpoint" / "state.json"
    deadline = time.time() + 240
    while time.time() < deadline and killed.poll() is None:
        if state.is_file() and json.loads(state.read_text() or "{}").get("step", 0) >= 4:
            break
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not (tmp_path / "killed" / "metrics.json").exists(), "finished before the kill; nothing was tested"
    subprocess.run([*cli[:3], "train", "--no-progress", "--resume", str(tmp_path / "killed")], check=True,
                   capture_output=True, timeout=300)
    _, err = straight.communicate(timeout=300)
    assert straight.returncode == 0, err.decode()[-2000:]
    a = load_file(str(tmp_path / "straight" / "prefix.safetensors"))
    b = load_file(str(tmp_path / "killed" / "prefix.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_question_longer_than_the_context_is_one_line_or_skipped(tmp_path, monkeypatch):
    from mmpt.data import DataError
    from mmpt.train import fit_context

    loaded = make_tiny()
    limit = loaded.model.config.max_position_embeddings
    from mmpt.data import Sample

    long = Sample(image="x.png", prompt="word " * (limit + 10), target="yes", id="q-long")
    short = Sample(image="x.png", prompt="what color?", target="red", id="q-short")
    with pytest.raises(DataError, match="q-long") as info:
        fit_context(loaded, [short, long], "raise", "data.train")
    assert "\n" not in str(info.value)
    assert fit_context(loaded, [short, long], "skip", "data.train") == [short]
