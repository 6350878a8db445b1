"""Fault and attack cases against the `mmpt` command line: how many end in a traceback, a silent acceptance, a
wrong result or a read/write outside the run folder (issue 20's harness, rebuilt so it can be re-run).

Every case runs the CLI in a fresh subprocess on a copy of a tiny run (``mmpt-tiny-random``, 2 steps, both
checkpoints kept), so the same script measures any checkout: ``--src OTHER/src`` puts another tree's ``mmpt`` first
on ``PYTHONPATH`` (e.g. a ``git worktree`` of the commit before a fix), and the base runs are trained by the code
under test.

Outcomes, each case judged against what it expects (``refuse``: one line, exit != 0; ``ok``: exit 0):

- ``one-line``: exit != 0, no traceback, the last line of stderr starts with ``mmpt:``;
- ``traceback``: a Python traceback (or exit != 0 without mmpt's one line, or a timeout);
- ``accepted``: exit 0 where a refusal was expected (a silent acceptance);
- ``wrong``: exit 0 but the result is wrong (the fallback's weights, a warning that is missing);
- ``escape``: a file outside the run folder was written, created or read into the output.

    python benchmarks/fault_cases.py --csv results/fault_cases.csv
    git worktree add /tmp/before <commit> && python benchmarks/fault_cases.py --src /tmp/before/src --label before
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

TINY = ["model.name=mmpt-tiny-random", "data.question_types=[yes_no]", "data.eval_question_types=[yes_no]",
        "method={name: prefix, length: 2}", "train.batch_size=4", "train.precision=fp32", "train.lr=0.05",
        "eval.max_new_tokens=2", "data.train_size=8", "data.eval_size=2", "train.max_steps=2", "train.save_every=1",
        "train.warmup_ratio=0"]
HF = ["model.name=mmpt-tiny-random", "method={name: prefix, length: 2}", "train.batch_size=2", "train.max_steps=1",
      "train.precision=fp32", "eval.max_new_tokens=2"]
SECRET = "outside-secret-7f3a"


@dataclass
class Case:
    """One fault: ``setup(case_dir)`` prepares files and returns the CLI arguments (and extra environment)."""

    group: str
    name: str
    setup: Callable[[Path], tuple[list[str], dict[str, str]]]
    expect: str = "refuse"
    check: Callable[[Path, subprocess.CompletedProcess], str] | None = None  # "" or the wrong result seen
    names: str = ""  # what a refusal's line must name (a file, a key), else it is "unclear"


class Harness:
    def __init__(self, src: Path | None, work: Path, timeout: float) -> None:
        self.env = dict(os.environ, PYTHONPATH=str(src) if src else os.environ.get("PYTHONPATH", ""),
                        MMPT_NO_PROGRESS="1", TQDM_DISABLE="1", HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")
        self.work, self.timeout = work, timeout
        self.config = work / "tiny.yaml"  # the defaults; the cases' settings come as overrides
        self.config.write_text("seed: 0\n")

    def mmpt(self, args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        code = "import sys; from mmpt.cli import main; sys.exit(main(sys.argv[1:]))"
        try:
            return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env={**self.env, **(env or {})},
                                  capture_output=True, text=True, errors="replace", timeout=self.timeout)
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess(args, -9, "", f"timeout after {self.timeout:.0f} s")

    def base_runs(self) -> None:
        """A finished prefix run (checkpoint/ and checkpoint.1/ kept), a LoRA run and its PEFT export."""
        for name, method in (("run", "{name: prefix, length: 2}"), ("lora", "{name: lora, r: 4}")):
            done = self.mmpt(["train", "--no-progress", str(self.config), *TINY, f"method={method}", f"output_dir={self.work}",
                              f"name={name}"], self.work)
            if done.returncode != 0:
                raise SystemExit(f"base run {name} failed:\n{done.stderr[-2000:]}")
        done = self.mmpt(["export", str(self.work / "lora"), "--out", str(self.work / "peft")], self.work)
        if done.returncode != 0:
            raise SystemExit(f"export failed:\n{done.stderr[-2000:]}")
        self.adapter = next((self.work / "peft").rglob("adapter_config.json")).parent


def snapshot(folder: Path) -> dict[str, str]:
    """Names and contents (hashed) of everything under ``folder``, links not followed."""
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_symlink() or not path.is_file():
            out[str(path.relative_to(folder))] = "dir" if path.is_dir() else "link"
        else:
            out[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def judge(case: Case, done: subprocess.CompletedProcess, escaped: bool, wrong: str) -> str:
    """The outcome of ``case`` (see the module docstring)."""
    if escaped or SECRET in done.stdout or SECRET in done.stderr:
        return "escape"
    if "Traceback (most recent call last)" in done.stderr or done.returncode < 0:
        return "traceback"
    lines = [x for x in done.stderr.strip().splitlines() if x.strip()]
    if done.returncode != 0:
        if not lines or not lines[-1].startswith("mmpt:"):
            return "traceback"
        return "one-line" if case.names.lower() in lines[-1].lower() else "unclear"
    if wrong:
        return "wrong"
    return "ok" if case.expect == "ok" else "accepted"


# ---------------------------------------------------------------- cases


def _copy(case_dir: Path, source: Path, unfinished: bool = False) -> Path:
    run = case_dir / "run"
    shutil.copytree(source, run, symlinks=True)
    if unfinished:  # resume from checkpoint.1 (step 1 of 2): the resumed run writes everything again
        shutil.rmtree(run / "checkpoint")
        for name in ("metrics.json", "prefix.safetensors"):
            (run / name).unlink(missing_ok=True)
    return run


def _manifest(folder: Path, extra: dict[str, str] | None = None) -> None:
    """Recompute ``folder/manifest.json`` as a deliberate edit would (plus ``extra`` entries)."""
    data = json.loads((folder / "manifest.json").read_text())
    listed = {k: hashlib.sha256((folder / k).read_bytes()).hexdigest() for k in data["sha256"] if (folder / k).is_file()}
    data["sha256"] = {**listed, **(extra or {})}
    (folder / "manifest.json").write_text(json.dumps(data))


def _edit_json(folder: Path, name: str, change: Callable[[dict], object]) -> None:
    path = folder / name
    path.write_text(json.dumps(change(json.loads(path.read_text()))))
    if (folder / "manifest.json").is_file():
        _manifest(folder)


def build_cases(h: Harness) -> list[Case]:
    base, cases = h.work / "run", []

    def resume(run: Path) -> list[str]:
        return ["train", "--no-progress", "--resume", str(run)]

    # A. writes through links during train --resume
    for entry, kind in (("metrics.json", "file"), ("report.md", "file"), ("README.md", "file"),
                        ("curves.png", "file"), ("log.csv", "file"), ("predictions_after.jsonl", "dangling"),
                        ("tensorboard", "dir"), ("checkpoint.1", "dir"), ("best", "dir"), (".mmpt.lock", "loop"),
                        ("config.yaml", "file")):
        def setup(d: Path, entry: str = entry, kind: str = kind) -> tuple[list[str], dict[str, str]]:
            run = _copy(d, base, unfinished=True)
            target = {"file": d / "outside" / "victim.txt", "dangling": d / "outside" / "created.jsonl",
                      "dir": d / "outside" / "linked", "loop": run / entry}[kind]
            if kind == "dir":
                shutil.copytree(run / entry, target) if (run / entry).exists() else target.mkdir()
            if kind == "file" and entry in ("log.csv", "config.yaml"):
                shutil.copy(run / entry, target)
            if (run / entry).is_dir() and not (run / entry).is_symlink():
                shutil.rmtree(run / entry)
            else:
                (run / entry).unlink(missing_ok=True)
            (run / entry).symlink_to(target)
            return resume(run), {}
        cases.append(Case("link write", f"{entry} -> {kind}", setup))

    # B. reads out of the folder
    def analysis_escape(d: Path) -> tuple[list[str], dict[str, str]]:
        folder = d / "analysis"
        folder.mkdir()
        (d / "secret.md").write_text(SECRET)
        (folder / "analysis.json").write_text(json.dumps({"analysis": "../secret", "settings": {}}))
        return ["report", str(folder)], {}

    def manifest_entry(name: str) -> Callable[[Path], tuple[list[str], dict[str, str]]]:
        def setup(d: Path) -> tuple[list[str], dict[str, str]]:
            run = _copy(d, base, unfinished=True)
            target = Path(name) if name.startswith("/") else run / "checkpoint.1" / name
            digest = hashlib.sha256(target.read_bytes()).hexdigest() if name != "/dev/zero" else "0" * 64
            _manifest(run / "checkpoint.1", {name: digest})
            return resume(run), {}
        return setup

    def sweep_escape(d: Path) -> tuple[list[str], dict[str, str]]:
        sweep = d / "sweep"
        sweep.mkdir()
        other = _copy(d, base)
        (sweep / "sweep.json").write_text(json.dumps({"axes": {"seed": ["0"]}, "fixed": [], "smoke": True, "runs": [
            {"name": f"../{other.name}", "values": {"seed": "0"}}]}))
        return ["report", str(sweep)], {}

    cases += [Case("read escape", "analysis.json names ../secret", analysis_escape),
              Case("read escape", "manifest lists ../../ a file outside", manifest_entry("../../outside/victim.txt")),
              Case("read escape", "manifest lists /dev/zero", manifest_entry("/dev/zero")),
              Case("read escape", "sweep.json names a run outside", sweep_escape)]

    # C. edited JSON files mmpt reads back (checksums recomputed)
    metrics_edits = {"after: 'x'": lambda m: {**m, "after": "x"}, "stages: [{}]": lambda m: {**m, "stages": [{}]},
                     "train: 'x'": lambda m: {**m, "train": "x"}, "cost: []": lambda m: {**m, "cost": []}}
    for label, change in metrics_edits.items():
        for command in ("report", "export"):
            def setup(d: Path, change=change, command=command) -> tuple[list[str], dict[str, str]]:
                run = _copy(d, base)
                _edit_json(run, "metrics.json", change)
                return ([command, str(run)] + (["--out", str(d / "peft")] if command == "export" else [])), {}
            cases.append(Case("read back", f"{command}: metrics.json {label}", setup))
    state_edits = {"stage 7": lambda s: {**s, "stage": 7, "step": 0}, "best_score 'abc'": lambda s: {**s, "best_score": "abc"},
                   "seconds 'x'": lambda s: {**s, "seconds": "x"}, "running_loss 'x'": lambda s: {**s, "running_loss": "x"},
                   "metrics []": lambda s: {**s, "metrics": []}, "metrics.stages 'x'": lambda s: {**s, "metrics": {"stages": "x"}},
                   "step 999": lambda s: {**s, "step": 999}}
    for label, change in state_edits.items():
        def setup(d: Path, change=change) -> tuple[list[str], dict[str, str]]:
            run = _copy(d, base, unfinished=True)
            _edit_json(run / "checkpoint.1", "state.json", change)
            return resume(run), {}
        cases.append(Case("read back", f"resume: state.json {label}", setup))

    def score_abc(d: Path) -> tuple[list[str], dict[str, str]]:
        run = _copy(d, base, unfinished=True)
        _edit_json(run / "best", "score.json", lambda s: {**s, "score": "abc"})
        return resume(run), {}

    def sweep_json(text: str) -> Callable[[Path], tuple[list[str], dict[str, str]]]:
        def setup(d: Path) -> tuple[list[str], dict[str, str]]:
            (d / "sweep").mkdir()
            (d / "sweep" / "sweep.json").write_text(text)
            return ["report", str(d / "sweep")], {}
        return setup

    def config_text(text: str, command: str = "report") -> Callable[[Path], tuple[list[str], dict[str, str]]]:
        def setup(d: Path) -> tuple[list[str], dict[str, str]]:
            run = _copy(d, base)
            (run / "config.yaml").write_text(text if text != "CUT" else (run / "config.yaml").read_text()[:700])
            return [command, str(run)], {}
        return setup

    def log_garbage(d: Path) -> tuple[list[str], dict[str, str]]:
        run = _copy(d, base, unfinished=True)
        with open(run / "log.csv", "ab") as f:
            f.write(b"garbage,,x\n\xff\xfe\n")
        return resume(run), {}

    def analysis_without(d: Path) -> tuple[list[str], dict[str, str]]:
        (d / "analysis").mkdir()
        (d / "analysis" / "analysis.json").write_text('{"settings": {}}')
        return ["report", str(d / "analysis")], {}

    def csv_folder(d: Path) -> tuple[list[str], dict[str, str]]:
        return ["report", str(_copy(d, base)), "--csv", str(d)], {}

    cases += [Case("read back", "resume: best/score.json 'abc'", score_abc),
              Case("read back", "report: sweep.json []", sweep_json("[]")),
              Case("read back", "report: sweep.json without axes", sweep_json('{"runs": []}')),
              Case("read back", "report: analysis.json without analysis", analysis_without),
              Case("read back", "report: config.yaml a list", config_text("- a\n- b\n")),
              Case("read back", "report: config.yaml garbled", config_text("a: [b\n")),
              Case("read back", "report --csv a folder", csv_folder),
              Case("read back", "eval: config.yaml cut off", config_text("CUT", "eval"), names="config.yaml"),
              Case("read back", "resume: garbage appended to log.csv", log_garbage, names="log.csv")]

    # D. mmpt import
    def adapter(change: Callable[[dict], object] | None = None, raw: str | None = None,
                drop_b: bool = False) -> Callable[[Path], tuple[list[str], dict[str, str]]]:
        def setup(d: Path) -> tuple[list[str], dict[str, str]]:
            folder = d / "peftdir"
            shutil.copytree(h.adapter, folder)
            path = folder / "adapter_config.json"
            if change is not None:
                path.write_text(json.dumps(change(json.loads(path.read_text()))))
            if raw is not None:
                path.write_text(raw)
            if drop_b:
                from safetensors.torch import load_file, save_file

                weights = load_file(str(folder / "adapter_model.safetensors"))
                save_file({k: v for k, v in weights.items() if "lora_B" not in k}, str(folder / "adapter_model.safetensors"))
            return ["import", str(folder), "--model", "mmpt-tiny-random", "--out", str(d / "lora.safetensors")], {}
        return setup

    def plain_folder(d: Path) -> tuple[list[str], dict[str, str]]:
        (d / "peftdir").mkdir()
        return ["import", str(d / "peftdir"), "--model", "mmpt-tiny-random", "--out", str(d / "lora.safetensors")], {}

    import_edits: dict[str, Callable[[Path], tuple[list[str], dict[str, str]]]] = {
        "a list": adapter(raw="[1, 2]"), "a string": adapter(raw='"lora"'),
        "no r": adapter(lambda c: {k: v for k, v in c.items() if k != "r"}),
        "no lora_alpha": adapter(lambda c: {k: v for k, v in c.items() if k != "lora_alpha"}),
        "r null": adapter(lambda c: {**c, "r": None}), "r [16]": adapter(lambda c: {**c, "r": [16]}),
        "r 16.7": adapter(lambda c: {**c, "r": 16.7}), "r 'abc'": adapter(lambda c: {**c, "r": "abc"}),
        "r 0": adapter(lambda c: {**c, "r": 0}), "r -4": adapter(lambda c: {**c, "r": -4}),
        "lora_alpha NaN": adapter(raw=None, change=lambda c: {**c, "lora_alpha": math.nan}),
        "lora_alpha -32": adapter(lambda c: {**c, "lora_alpha": -32}),
        "nested 10,000 levels": adapter(raw='{"r": ' + "[" * 10000 + "]" * 10000 + "}"),
        "layers_to_transform": adapter(lambda c: {**c, "layers_to_transform": [0]}),
        "layer_replication": adapter(lambda c: {**c, "layer_replication": [[0, 1]]}),
        "exclude_modules": adapter(lambda c: {**c, "exclude_modules": ["q_proj"]}),
        "trainable_token_indices": adapter(lambda c: {**c, "trainable_token_indices": [1, 2]}),
        "lora_A without lora_B": adapter(drop_b=True),
        "a folder without adapter_config.json": plain_folder,
    }
    cases += [Case("import", label, setup, names="lora_B" if "lora_B" in label else "adapter_config.json")
              for label, setup in import_edits.items()]

    # E. hf: data
    def hf_folder(lines: list[str], script: bool = False) -> Callable[[Path], tuple[list[str], dict[str, str]]]:
        def setup(d: Path) -> tuple[list[str], dict[str, str]]:
            from PIL import Image

            folder = d / "data"
            folder.mkdir()
            for i in range(2):
                Image.new("RGB", (16, 16), (40 * i, 90, 200)).save(d / f"{i}.png")
            text = "\n".join(line.replace("IMG", str(d)) for line in lines) + "\n"
            (folder / "train.jsonl").write_bytes(text.encode("utf-8", "surrogatepass"))
            if script:
                (folder / "data.py").write_text(f"open({str(d / 'ran')!r}, 'w').close()\n")
            return ["train", "--no-progress", str(h.config), f"data.dataset=hf:{folder}", *HF, f"output_dir={d}"], {}
        return setup

    row0 = '{"image": "IMG/0.png", "question": "what color?", "answers": "red"}'
    row = '{"image": "IMG/1.png", "question": QUESTION, "answers": ANSWERS}'

    def hf_row(question: str = '"what color?"', answers: str = '"blue"') -> str:
        return row.replace("QUESTION", question).replace("ANSWERS", answers)

    def single_dataset(d: Path) -> tuple[list[str], dict[str, str]]:
        import datasets
        from PIL import Image

        images = [Image.new("RGB", (16, 16), (40 * i, 90, 200)) for i in range(4)]
        datasets.Dataset.from_dict({"image": images, "question": ["q?"] * 4, "answers": ["yes"] * 4}).cast_column(
            "image", datasets.Image()).save_to_disk(str(d / "single"))
        return ["train", "--no-progress", str(h.config), f"data.dataset=hf:{d / 'single'}", *HF, f"output_dir={d}"], {}

    def warned(d: Path, done: subprocess.CompletedProcess) -> str:
        return "" if "split" in done.stderr else "evaluated without saying there is no evaluation split"

    cases += [Case("hf data", "answers: a string and an {answer} object", hf_folder([row0, hf_row(answers='{"answer": "blue"}')]), "ok"),
              Case("hf data", "answers: null", hf_folder([row0, hf_row(answers="null")])),
              Case("hf data", "question: null", hf_folder([row0, hf_row(question="null")])),
              Case("hf data", "a line that is not JSON", hf_folder([row0, "{not json"])),
              Case("hf data", "a lone surrogate", hf_folder([row0, hf_row(question='"what \\ud800?"')])),
              Case("hf data", "a folder with a loading script", hf_folder([row0], script=True),
                   check=lambda d, done: "the script ran" if (d / "ran").exists() else ""),
              Case("hf data", "one saved Dataset (no splits)", single_dataset, "ok", check=warned)]

    # F. predict and chat flags, G. config and analysis options
    def image(d: Path) -> Path:
        from PIL import Image

        Image.new("RGB", (16, 16), (200, 30, 30)).save(d / "x.png")
        return d / "x.png"

    def predict(*extra: str, prompt: str = "what color?") -> Callable[[Path], tuple[list[str], dict[str, str]]]:
        def setup(d: Path) -> tuple[list[str], dict[str, str]]:
            return ["predict", str(image(d)), prompt, "--model", "mmpt-tiny-random", "--no-progress", *extra], {}
        return setup

    def pickle_folder(d: Path) -> tuple[list[str], dict[str, str]]:
        (d / "model").mkdir()
        (d / "model" / "config.json").write_text('{"model_type": "llama"}')
        (d / "model" / "pytorch_model.bin").write_bytes(b"\x80\x04K\x01.")
        return ["predict", str(image(d)), "what?", "--model", str(d / "model"), "--no-progress"], {}

    def jsonl_not_utf8(d: Path) -> tuple[list[str], dict[str, str]]:
        image(d)
        (d / "in.jsonl").write_bytes(b'{"image": "x.png", "prompt": "what \xff?"}\n')
        return ["predict", str(d / "in.jsonl"), "--model", "mmpt-tiny-random", "--no-progress"], {}

    def train(*overrides: str, env: dict[str, str] | None = None) -> Callable[[Path], tuple[list[str], dict[str, str]]]:
        def setup(d: Path) -> tuple[list[str], dict[str, str]]:
            return ["train", "--no-progress", str(h.config), *TINY, f"output_dir={d}", *overrides], dict(env or {})
        return setup

    def cache_file(d: Path) -> tuple[list[str], dict[str, str]]:
        (d / "cache").write_text("x")
        return ["train", "--no-progress", str(h.config), *TINY, f"output_dir={d}"], {"MMPT_CACHE": str(d / "cache")}

    def eps_nan(d: Path) -> tuple[list[str], dict[str, str]]:
        return ["analyze", "fgsm", str(_copy(d, base)), "--eps", "nan", "--out", str(d / "fgsm")], {}

    cases += [Case("predict", "a prompt with a lone surrogate", predict(prompt="what \udc80?")),
              Case("predict", "--num-beams -3", predict("--num-beams", "-3")),
              Case("predict", "--max-new-tokens 100000", predict("--max-new-tokens", "100000")),
              Case("predict", "--batch-size 0", predict("--batch-size", "0")),
              Case("predict", "a 3,000-word prompt on a small-context model", predict(prompt="why " * 3000)),
              Case("predict", "a model folder holding pytorch_model.bin", pickle_folder),
              Case("predict", "a JSONL line that is not UTF-8", jsonl_not_utf8, names="line 1"),
              Case("config", "train.precision=fp16 without a GPU", train("train.precision=fp16")),
              Case("config", "model.name=''", train("model.name=''"), names="model.name"),
              Case("config", "eval.candidates a 5,000-character string", train("eval.candidates=" + "x" * 5000),
                   names="eval.candidates"),
              Case("config", "eval.candidates []", train("eval.candidates=[]"), names="eval.candidates"),
              Case("config", "MMPT_CACHE pointing at a file", cache_file, names="MMPT_CACHE"),
              Case("config", "analyze fgsm --eps nan", eps_nan)]

    # H. the fallback resume saves the weights it trained
    def fallback(d: Path) -> tuple[list[str], dict[str, str]]:
        run = _copy(d, base)
        shutil.rmtree(run / "checkpoint")
        return resume(run), {}

    def same_weights(d: Path, done: subprocess.CompletedProcess) -> str:
        got, want = (d / "run" / "prefix.safetensors").read_bytes(), (base / "prefix.safetensors").read_bytes()
        return "" if got == want else "the saved method file differs from an uninterrupted run's"

    cases.append(Case("fallback", "newest checkpoint removed, resume", fallback, "ok", check=same_weights))
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, help="a tree's src/ to test instead of the installed mmpt")
    parser.add_argument("--label", default="now", help="the label of this checkout in the CSV")
    parser.add_argument("--csv", type=Path, help="append one row per case")
    parser.add_argument("--only", default="", help="run the cases whose group or name contains this")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds a case may run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mmpt-faults-") as tmp:
        harness = Harness(args.src.resolve() if args.src else None, Path(tmp), args.timeout)
        started = time.perf_counter()
        harness.base_runs()
        cases = [c for c in build_cases(harness) if args.only in f"{c.group} {c.name}"]
        rows, counts = [], Counter()
        for i, case in enumerate(cases):
            case_dir = Path(tmp) / f"case{i}"
            (case_dir / "outside" / "dir").mkdir(parents=True)
            (case_dir / "outside" / "victim.txt").write_text(SECRET)
            argv, env = case.setup(case_dir)
            before = snapshot(case_dir / "outside")
            done = harness.mmpt(argv, case_dir, env)
            escaped = snapshot(case_dir / "outside") != before
            wrong = case.check(case_dir, done) if case.check and done.returncode == 0 else ""
            outcome = judge(case, done, escaped, wrong)
            good = outcome == ("ok" if case.expect == "ok" else "one-line")
            counts[outcome] += 1
            last = (done.stderr.strip().splitlines() or [""])[-1][:160]
            print(f"{'  ' if good else '!!'} {outcome:9} {case.group:11} {case.name:45} {last}", flush=True)
            rows.append({"label": args.label, "group": case.group, "case": case.name, "expect": case.expect,
                         "outcome": outcome, "good": good, "exit": done.returncode, "last_line": last})
    bad = sum(1 for r in rows if not r["good"])
    print(f"\n{args.label}: {len(rows)} cases, {len(rows) - bad} as expected, {bad} not: "
          + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + f" ({time.perf_counter() - started:.0f} s)")
    if args.csv:
        new = not args.csv.exists()
        with open(args.csv, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            if new:
                writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
