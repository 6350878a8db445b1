"""CPU threads and ``torch.compile`` on the quickstart's training step (mmpt-tiny, prefix 16, 8 questions, the
task loss of :func:`mmpt.tasks.objectives.answer_loss`).

    python benchmarks/compile_threads.py [--repeats 5] [--skip-compile]

Two questions, each answered in one process with the variants interleaved (order rotated every repeat, median):

- **threads**: the same step with ``torch.set_num_threads(n)`` for n = 1 .. the machine's cores;
- **compile**: the eager step against ``torch.compile`` of the language model (inductor, default mode): the first
  compiled step's time (compilation included), the steady step, and the loss difference. mmpt's prefix runs
  through transformers' attention-function registry and forward hooks; graph breaks are counted with
  ``torch._dynamo.explain`` on the forward.

Answers decide whether mmpt offers ``train.compile`` (it pays only when compilation is repaid within a run) and what
the docs say about threads. Run on an idle machine; add ``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2
MKL_ENABLE_INSTRUCTIONS=AVX2`` to time an AVX2-only CPU on a newer one.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from train_step import quickstart_batch, step  # noqa: E402

from mmpt import methods, models  # noqa: E402
from mmpt.methods import PrefixConfig  # noqa: E402
from mmpt.tasks.objectives import answer_loss  # noqa: E402


def interleaved(variants: dict[str, Callable[[], float]], repeats: int) -> dict[str, float]:
    """Median seconds of each variant, the order rotated every repeat."""
    names, times = list(variants), {k: [] for k in variants}
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            times[name].append(variants[name]())
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-compile", action="store_true")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    print(f"torch {torch.__version__}, {cores} cores, ATEN_CPU_CAPABILITY="
          f"{os.environ.get('ATEN_CPU_CAPABILITY', 'default')}, {args.repeats} repeats (median)", flush=True)
    loaded = models.load("mmpt-tiny")
    model = loaded.model
    batch = quickstart_batch(loaded)
    method = methods.apply(loaded, PrefixConfig(length=16))
    optimizer = torch.optim.AdamW(list(method.parameters()), lr=1e-5)
    model.train()
    nothing = contextlib.nullcontext

    def eager() -> torch.Tensor:
        return answer_loss(model, batch)

    step(model, optimizer, eager, nothing)  # warm-up

    def with_threads(n: int) -> Callable[[], float]:
        def run() -> float:
            torch.set_num_threads(n)
            return step(model, optimizer, eager, nothing)
        return run

    threads = interleaved({f"{n} threads": with_threads(n) for n in range(1, cores + 1)}, args.repeats)
    print("threads: " + ", ".join(f"{k} {v:.3f} s" for k, v in threads.items()), flush=True)
    torch.set_num_threads(cores)
    if args.skip_compile:
        return

    lm = model.language_model
    compiled_lm = torch.compile(lm)

    def compiled() -> torch.Tensor:
        model.language_model = compiled_lm
        try:
            return answer_loss(model, batch)
        finally:
            model.language_model = lm

    with torch.no_grad():
        model.eval()
        reference = answer_loss(model, batch).item()
        start = time.perf_counter()
        value = compiled().item()
        print(f"compile: first forward (compilation) {time.perf_counter() - start:.1f} s; loss eager {reference:.6f} "
              f"compiled {value:.6f} (difference {abs(reference - value):.2e})", flush=True)
        model.train()
    start = time.perf_counter()
    step(model, optimizer, compiled, nothing)
    print(f"compile: first training step (backward compilation) {time.perf_counter() - start:.1f} s", flush=True)
    timed = interleaved({"eager": lambda: step(model, optimizer, eager, nothing),
                         "compiled": lambda: step(model, optimizer, compiled, nothing)}, args.repeats)
    saving = timed["eager"] - timed["compiled"]
    print(f"compile: steady step eager {timed['eager']:.3f} s, compiled {timed['compiled']:.3f} s "
          f"({timed['compiled'] / timed['eager']:.3f}x)", flush=True)
    try:
        explanation = torch._dynamo.explain(lm)(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        print(f"compile: {explanation.graph_count} graphs, {explanation.graph_break_count} graph breaks", flush=True)
    except Exception as exc:  # the explanation is informative only; the timing above stands
        print(f"compile: graph-break count unavailable ({type(exc).__name__}: {exc})", flush=True)
    if saving > 0:
        print(f"compile: repaid after {1 / saving:.0f} steps per second of compilation", flush=True)


if __name__ == "__main__":
    main()
