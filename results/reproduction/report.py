"""Tables and plots of the reproduction study from its CSVs (re-run at any time; reads only results/reproduction/).

Writes ``claims_1_3_pairs.csv`` (paired differences between arms over the seeds both have: each seed draws its
own training and test questions, shared by every arm) and ``claim2_accuracy.png``, and prints markdown tables.
"""

from __future__ import annotations

import csv
import statistics
from pathlib import Path

HERE = Path(__file__).resolve().parent
ORDER = ["prefix", "lora", "lora_4ep", "adapter", "full", "ptpeft_lora", "ptpeft_full", "parallel_lora",
         "reversed_lora"]
PAIRS = [("ptpeft_lora", "lora"), ("ptpeft_lora", "lora_4ep"), ("ptpeft_lora", "prefix"),
         ("ptpeft_lora", "parallel_lora"), ("ptpeft_lora", "reversed_lora"), ("ptpeft_full", "full"),
         ("ptpeft_full", "prefix"), ("lora", "prefix"), ("full", "prefix")]


def read(name: str) -> list[dict[str, str]]:
    with (HERE / name).open() as f:
        return list(csv.DictReader(f))


def by_arm(rows: list[dict[str, str]], key: str = "accuracy") -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {}
    for row in rows:
        out.setdefault(row["arm"], {})[int(row["seed"])] = float(row[key])
    return out


def pairs(arms: dict[str, dict[int, float]]) -> list[dict[str, object]]:
    """Paired differences a - b over shared seeds; ``exceeds_spread``: every seed's difference has the mean's sign
    and the mean is larger than the differences' standard deviation."""
    out = []
    for a, b in PAIRS:
        seeds = sorted(set(arms.get(a, {})) & set(arms.get(b, {})))
        if not seeds:
            continue
        diffs = [arms[a][s] - arms[b][s] for s in seeds]
        mean = statistics.fmean(diffs)
        std = statistics.stdev(diffs) if len(diffs) > 1 else float("nan")
        same_sign = all(d * mean > 0 for d in diffs)
        out.append({"a": a, "b": b, "seeds": len(seeds), "mean_diff": round(mean, 4), "std_diff": round(std, 4),
                    "diffs": " ".join(f"{d:+.3f}" for d in diffs),
                    "exceeds_spread": bool(len(diffs) > 1 and same_sign and abs(mean) > std)})
    return out


def plot(arms: dict[str, dict[int, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [a for a in ORDER if a in arms]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(names) + 2), 4.5))
    for i, name in enumerate(names):
        values = list(arms[name].values())
        mean = statistics.fmean(values)
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        ax.bar(i, mean, yerr=std, color="tab:blue" if "pt" not in name else "tab:orange", alpha=0.6, capsize=4)
        ax.scatter([i] * len(values), values, color="black", s=12, zorder=3)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set(ylim=(0, 1), ylabel="easy-VQA accuracy (200 test questions)",
           title="mmpt-tiny, 200 training questions\nmean ± std over seeds (dots: seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def table(rows: list[dict[str, object]]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + " --- |" * len(keys)]
    lines += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def main() -> int:
    runs = read("claims_1_3_runs.csv")
    arms = by_arm(runs)
    summary = []
    for name in [a for a in ORDER if a in arms]:
        values = list(arms[name].values())
        summary.append({"arm": name, "seeds": len(values), "accuracy": f"{statistics.fmean(values):.3f}" + (
            f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else ""),
            "per seed": " ".join(f"{arms[name][s]:.3f}" for s in sorted(arms[name]))})
    print(table(summary), end="\n\n")
    found = pairs(arms)
    if found:
        with (HERE / "claims_1_3_pairs.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(found[0]))
            writer.writeheader()
            writer.writerows(found)
        print(table(found))
    plot(arms, HERE / "claim2_accuracy.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
