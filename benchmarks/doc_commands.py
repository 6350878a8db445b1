"""Run every `mmpt` command of README.md and docs/ as a new user would, in order, and time each.

The commands are read from the ```bash blocks (as tests/test_docs.py reads them) and run in a working folder
(default: a fresh clone of this repository under /tmp) with the repository's `.venv`. Names the docs use as
examples are created first: `image.jpg` / `photo.jpg` (an easy-VQA test image), `photos/` (two of them),
`questions.jsonl`, `my-peft-lora` (the LoRA PEFT export of an earlier command). `chat` reads two lines from stdin.

With `--smoke` (the default; `--full` runs them as written, hours on 2 cores) commands that train or analyse get
`--smoke`, and run folders are looked up under `runs/smoke/` where smoke mode writes them. Skipped: `make demo` /
`make test` (timed on their own), commands with placeholders (CONFIG, $NODE_RANK), multi-process launches
(`accelerate launch`, `torchrun`; tests/test_reliability_runs.py runs 2 CPU processes) and `pretrain-projector
--install` in smoke mode (mmpt refuses to install a 2-step projector).

    python benchmarks/doc_commands.py --csv results/doc_commands.csv
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
TRAINS = {"train", "sweep", "pretrain-projector", "analyze", "eval"}


def commands() -> list[tuple[str, str, list[str]]]:
    """(file, line, words) of every mmpt / make / launcher command in the docs' bash blocks, in reading order."""
    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for match in FENCE.finditer(path.read_text()):
            if match.group(1) != "bash":
                continue
            for line in match.group(2).replace("\\\n", " ").splitlines():
                line = line.split(" #")[0].strip()
                if line and not line.startswith("#"):
                    found.append((path.name, line, shlex.split(line)))
    return found


def skip_reason(words: list[str], smoke: bool) -> str:
    """Why a command is not run here ("" when it is)."""
    if words[0] == "make":
        return "timed on its own (make demo: docs/benchmarks.md; make test: CI)"
    if words[0] in ("accelerate", "torchrun"):
        return "multi-process launch (tests/test_reliability_runs.py runs 2 CPU processes)"
    if words[0] not in ("mmpt", "eval"):
        return "not an mmpt command"
    if any(w.isupper() or (w.startswith("$") and not w.startswith("$(")) for w in words):
        return "a pattern with placeholders"
    if smoke and words[1:3] == ["pretrain-projector", "--install"]:
        return "mmpt refuses to install a smoke (2-step) projector"
    return ""


def prepare(work: Path) -> None:
    """The example inputs the docs name."""
    from easy_vqa import get_test_image_paths

    images = sorted(get_test_image_paths().values())[:2]
    for name in ("image.jpg", "photo.jpg"):
        shutil.copy(images[0], work / name)
    (work / "photos").mkdir(exist_ok=True)
    for image in images:
        shutil.copy(image, work / "photos" / Path(image).name)
    (work / "questions.jsonl").write_text("".join(json.dumps({"image": f"photos/{Path(p).name}",
                                                              "prompt": "what color is the shape?"}) + "\n"
                                                  for p in images))


def adapt(words: list[str], line: str, work: Path, smoke: bool) -> list[str]:
    """The command as run: `mmpt` from the venv, `--smoke` added, run folders under runs/smoke/, globs expanded;
    the shell's `eval "$(mmpt completion bash)"` through bash (then `complete -p mmpt` must list it)."""
    venv = ROOT / ".venv" / "bin"
    if words[0] == "eval":
        return ["bash", "-c", f"PATH={venv}:$PATH; {line} && complete -p mmpt"]
    out = [str(venv / "mmpt"), *words[1:]]
    if smoke:
        runs_folder = len(words) > 2 and words[2].startswith("runs/")
        if words[1] in TRAINS and "--resume" not in words and "--smoke" not in words and not runs_folder:
            out.append("--smoke")
        if words[1] == "analyze" and "--smoke" not in out:
            out.append("--smoke")
        out = [re.sub(r"^runs/(?!smoke/)", "runs/smoke/", w) for w in out]
    expanded = []
    for word in out:
        matches = sorted(str(p.relative_to(work)) for p in work.glob(word)) if "*" in word else []
        expanded += matches or [word]
    return expanded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, help="working folder (default: a fresh clone under /tmp)")
    parser.add_argument("--full", action="store_true", help="run training commands as written (hours)")
    parser.add_argument("--csv", type=Path, help="write one row per command")
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args()
    smoke = not args.full
    work = args.work or Path(tempfile.mkdtemp(prefix="mmpt-docs-")) / "clone"
    if not work.exists():
        subprocess.run(["git", "clone", "-q", str(ROOT), str(work)], check=True)
    prepare(work)
    rows, later = [], []
    started = time.perf_counter()
    queue = list(commands())
    while queue:
        source, line, words = queue.pop(0)
        if words[:2] == ["mmpt", "import"] and (work / "runs/smoke/lora").is_dir() and not (work / "my-peft-lora").exists():
            # the user's own PEFT LoRA: here the export of the LoRA run an earlier command trained
            subprocess.run([str(ROOT / ".venv/bin/mmpt"), "export", "runs/smoke/lora", "--out", "exported-lora"],
                           cwd=work, capture_output=True, check=True)
            shutil.copytree(work / "exported-lora" / "lora-lm", work / "my-peft-lora")
        why = skip_reason(words, smoke)
        if why:
            rows.append({"source": source, "command": line, "seconds": "", "exit": "", "result": f"skipped: {why}"})
            print(f"skip  {line[:90]}  ({why})", flush=True)
            continue
        argv = adapt(words, line, work, smoke)
        feed = "what color is the shape?\n/quit\n" if words[1:2] == ["chat"] else ""
        begun = time.perf_counter()
        try:
            done = subprocess.run(argv, cwd=work, input=feed, capture_output=True, text=True, timeout=args.timeout)
            code = done.returncode
            tail = (done.stderr.strip().splitlines() or done.stdout.strip().splitlines() or [""])[-1]
        except subprocess.TimeoutExpired:
            code, tail = -9, f"timeout after {args.timeout:.0f} s"
        seconds = time.perf_counter() - begun
        missing = code != 0 and any(m in tail for m in ("does not exist", "not an mmpt run folder", "not found"))
        if missing and (source, line) not in later:  # a run another doc section trains: try again at the end
            later.append((source, line))
            queue.append((source, line, words))
            print(f"later {line[:90]}  ({tail[:80]})", flush=True)
            continue
        shown = " ".join(["mmpt", *argv[1:]]) if words[0] == "mmpt" else line
        rows.append({"source": source, "command": shown, "seconds": f"{seconds:.1f}", "exit": code,
                     "result": tail[:200]})
        print(f"{code:4} {seconds:6.1f} s  {shown[:100]}  | {tail[:100]}", flush=True)
    ran = [r for r in rows if r["exit"] != ""]
    failed = [r for r in ran if r["exit"] != 0]
    print(f"\n{len(rows)} commands: {len(ran)} run ({len(failed)} failed), {len(rows) - len(ran)} skipped; "
          f"{time.perf_counter() - started:.0f} s in {work}")
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
