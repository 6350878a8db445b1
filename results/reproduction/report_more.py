"""Tables and plots of claims 4 and 5 and of the second model (claims 1-2 on mmpt-tiny-gemma3), from the CSVs of
``collect_claim4.py``, ``collect.py claim5`` and ``collect.py g3`` (re-run at any time; reads only this folder).

Claims 4 and 5 share claims 1-3's ``prefix`` arm (16 tokens, every layer; the same settings and seeds) as their
reference. Writes ``claim4_pairs.csv`` / ``claim4.png``, ``claim5_pairs.csv`` / ``claim5.png`` and
``gemma3_claims_1_2_pairs.csv`` / ``gemma3_claim2_accuracy.png``, and prints markdown tables.
"""

from __future__ import annotations

import csv
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import by_arm, pairs, plot, read, table  # noqa: E402

HERE = Path(__file__).resolve().parent

# (the arm's name in the runs, its name here)
CLAIM4 = [("claim4_prefix-length=1", "prefix_len1"), ("claim4_prefix-length=4", "prefix_len4"),
          ("prefix", "prefix_len16"), ("claim4_prefix-length=64", "prefix_len64"),
          ("claim4_prefix_mlp", "prefix_len16_mlp"), ("claim4_prompt", "shallow_prompt16")]
CLAIM4_PAIRS = [("prefix_len4", "prefix_len1"), ("prefix_len16", "prefix_len4"), ("prefix_len64", "prefix_len16"),
                ("prefix_len16_mlp", "prefix_len16"), ("prefix_len16", "shallow_prompt16")]
CLAIM5 = [("claim5_visual", "m2pt_visual_only"), ("claim5_text", "m2pt_text_only"), ("claim5_both", "m2pt_both"),
          ("claim5_prefix_early", "prefix_layers_0_14"), ("claim5_prefix_late", "prefix_layers_15_29"),
          ("prefix", "prefix_all_layers")]
CLAIM5_PAIRS = [("m2pt_text_only", "m2pt_visual_only"), ("m2pt_both", "m2pt_text_only"),
                ("m2pt_both", "m2pt_visual_only"), ("prefix_layers_15_29", "prefix_layers_0_14"),
                ("prefix_all_layers", "prefix_layers_15_29"), ("prefix_all_layers", "prefix_layers_0_14")]
GEMMA3 = [("g3_prefix", "prefix"), ("g3_lora", "lora"), ("g3_full", "full"), ("g3_ptpeft_lora", "ptpeft_lora")]
GEMMA3_PAIRS = [("ptpeft_lora", "lora"), ("ptpeft_lora", "prefix"), ("lora", "prefix"), ("full", "prefix")]


def renamed(files: list[str], names: list[tuple[str, str]]) -> dict[str, dict[int, float]]:
    """Accuracy by seed for each arm of ``names`` found in the CSVs ``files``, under its name here."""
    arms: dict[str, dict[int, float]] = {}
    for name in files:
        if (HERE / name).is_file():
            arms.update(by_arm(read(name)))
    return {new: arms[old] for old, new in names if old in arms}


def summary(arms: dict[str, dict[int, float]]) -> list[dict[str, object]]:
    return [{"arm": arm, "seeds": len(acc), "accuracy": f"{statistics.fmean(acc.values()):.3f}" + (
        f" ± {statistics.stdev(acc.values()):.3f}" if len(acc) > 1 else ""),
        "per seed": " ".join(f"{acc[s]:.3f}" for s in sorted(acc))} for arm, acc in arms.items()]


def report(label: str, files: list[str], names: list[tuple[str, str]], compared: list[tuple[str, str]],
           stem: str, title: str) -> None:
    arms = renamed(files, names)
    if not arms:
        print(f"{label}: no runs collected yet", file=sys.stderr)
        return
    print(f"### {label}\n\n{table(summary(arms))}\n")
    found = pairs(arms, compared)
    if found:
        with (HERE / f"{stem}_pairs.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(found[0]))
            writer.writeheader()
            writer.writerows(found)
        print(f"{table(found)}\n")
    plot(arms, HERE / ("gemma3_claim2_accuracy.png" if stem.startswith("gemma3") else f"{stem}.png"),
         [new for _, new in names], title)


def main() -> int:
    report("claim 4", ["claim4_runs.csv", "claims_1_3_runs.csv"], CLAIM4, CLAIM4_PAIRS, "claim4",
           "Claim 4: prefix length, MLP reparameterization, deep vs shallow")
    report("claim 5", ["claim5_runs.csv", "claims_1_3_runs.csv"], CLAIM5, CLAIM5_PAIRS, "claim5",
           "Claim 5: where the prompts go")
    report("claims 1-2 on mmpt-tiny-gemma3", ["gemma3_claims_1_2_runs.csv"], GEMMA3, GEMMA3_PAIRS,
           "gemma3_claims_1_2", "mmpt-tiny-gemma3, 200 training questions")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
