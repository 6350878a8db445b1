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


def pairs(arms: dict[str, dict[int, float]], compared: list[tuple[str, str]] = PAIRS) -> list[dict[str, object]]:
    """Paired differences a - b over shared seeds for each ``(a, b)`` of ``compared``; ``exceeds_spread``: every
    seed's difference has the mean's sign and the mean is larger than the differences' standard deviation."""
    out = []
    for a, b in compared:
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


def plot(arms: dict[str, dict[int, float]], path: Path, order: list[str] = ORDER,
         title: str = "mmpt-tiny, 200 training questions") -> None:
    """Bars of mean ± std over seeds (dots: the seeds) for the arms of ``order`` that ``arms`` has."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [a for a in order if a in arms]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(names) + 2), 4.5))
    for i, name in enumerate(names):
        values = list(arms[name].values())
        mean = statistics.fmean(values)
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        ax.bar(i, mean, yerr=std, color="tab:blue" if "pt" not in name else "tab:orange", alpha=0.6, capsize=4)
        ax.scatter([i] * len(values), values, color="black", s=12, zorder=3)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set(ylim=(0, 1), ylabel="easy-VQA accuracy (200 test questions)",
           title=f"{title}\nmean ± std over seeds (dots: seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def table(rows: list[dict[str, object]]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + " --- |" * len(keys)]
    lines += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def fgsm_drops(path: Path) -> list[dict[str, object]]:
    """Claim 3: per arm and epsilon, the accuracy lost to the attack (clean - attacked) per seed, and the paired
    difference of each prompt-tuned arm's loss minus full fine-tuning's (negative: the prompt-tuned model loses
    less, as the claim says). Writes ``claim3_fgsm_drops.csv`` and ``claim3_fgsm.png``."""
    rows = list(csv.DictReader(path.open()))
    acc: dict[str, dict[int, dict[float, float]]] = {}
    for row in rows:
        acc.setdefault(row["arm"], {}).setdefault(int(row["seed"]), {})[float(row["epsilon"])] = float(row["accuracy"])
    out: list[dict[str, object]] = []
    epsilons = sorted({e for seeds in acc.values() for s in seeds.values() for e in s if e > 0})
    drop = {arm: {s: {e: v[0.0] - v[e] for e in epsilons if e in v} for s, v in seeds.items() if 0.0 in v}
            for arm, seeds in acc.items()}
    for arm in [a for a in ORDER if a in drop]:
        for e in epsilons:
            values = [d[e] for d in drop[arm].values() if e in d]
            line: dict[str, object] = {"arm": arm, "epsilon": e, "seeds": len(values),
                                       "drop_mean": round(statistics.fmean(values), 4),
                                       "drop_std": round(statistics.stdev(values), 4) if len(values) > 1 else "",
                                       "per seed": " ".join(f"{d[e]:.3f}" for _, d in sorted(drop[arm].items()))}
            if arm != "full" and "full" in drop:
                seeds = sorted(set(drop[arm]) & set(drop["full"]))
                diffs = [drop[arm][s][e] - drop["full"][s][e] for s in seeds]
                mean = statistics.fmean(diffs)
                std = statistics.stdev(diffs) if len(diffs) > 1 else float("nan")
                line.update({"minus_full_mean": round(mean, 4), "minus_full_std": round(std, 4),
                             "minus_full_exceeds_spread": bool(len(diffs) > 1 and all(d * mean > 0 for d in diffs)
                                                               and abs(mean) > std)})
            out.append(line)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for arm in [a for a in ORDER if a in acc]:
        grid = [0.0, *epsilons]
        curves = [[v[e] for e in grid] for v in acc[arm].values() if all(e in v for e in grid)]
        means = [statistics.fmean(c[i] for c in curves) for i in range(len(grid))]
        stds = [statistics.stdev(c[i] for c in curves) if len(curves) > 1 else 0.0 for i in range(len(grid))]
        ax.errorbar(grid, means, yerr=stds, marker="o", capsize=3, label=f"{arm} ({len(curves)} seeds)")
    ax.set(xlabel="FGSM epsilon (pixels in [0, 1])", ylabel="accuracy (64 test questions)",
           title="Claim 3: accuracy under FGSM, mean ± std over seeds")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(HERE / "claim3_fgsm.png", dpi=100)
    plt.close(fig)
    return out


def main() -> int:
    if (HERE / "claim3_fgsm.csv").is_file():
        drops = fgsm_drops(HERE / "claim3_fgsm.csv")
        with (HERE / "claim3_fgsm_drops.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in drops for k in r)))
            writer.writeheader()
            writer.writerows(drops)
        print(table([{k: r.get(k, "") for k in dict.fromkeys(k for r in drops for k in r)} for r in drops]),
              end="\n\n")
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
