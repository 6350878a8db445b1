"""Time all-candidate ranking on the embedded default model: prompt reuse vs one full forward per candidate.

    python benchmarks/rank_candidates.py [--candidates 500] [--samples 2] [--full-samples 1]

Candidates are distinct words from the SmolLM2 vocabulary (a stand-in for VQAv2's 3,129-answer list, which is
not bundled). Prints seconds per sample for both ways, the largest score difference between them on the samples
ranked both ways, and the extrapolated cost of 3,129 candidates.
"""

from __future__ import annotations

import argparse
import time

import torch

from mmpt.data import Sample
from mmpt.data.easyvqa import load_easy_vqa
from mmpt.models import load
from mmpt.tasks.vqa import candidate_scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=500)
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--full-samples", type=int, default=1, help="samples also ranked the slow way")
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()

    loaded = load("mmpt-tiny")
    tok = loaded.processor.tokenizer
    words = [w.lstrip("Ġ") for w in tok.convert_ids_to_tokens(range(1000, 30000))]
    candidates = sorted({w for w in words if w.isalpha() and len(w) > 2})[: args.candidates]
    samples: list[Sample] = load_easy_vqa("test")[: args.samples]
    print(f"device: {next(loaded.model.parameters()).device}, threads: {torch.get_num_threads()}, "
          f"{len(candidates)} candidates, batch {args.batch_size}")

    t0 = time.perf_counter()
    fast = candidate_scores(loaded.model, loaded.processor, samples, candidates, progress=False, reuse_prompt=True,
                            candidate_batch_size=args.batch_size)
    per_fast = (time.perf_counter() - t0) / len(samples)
    n = min(args.full_samples, len(samples))
    t0 = time.perf_counter()
    full = candidate_scores(loaded.model, loaded.processor, samples[:n], candidates, 16, progress=False,
                            reuse_prompt=False)
    per_full = (time.perf_counter() - t0) / max(n, 1)
    print(f"prompt reuse: {per_fast:.2f} s/sample ({per_fast * 3129 / len(candidates):.1f} s at 3,129 answers)")
    print(f"full forward: {per_full:.2f} s/sample ({per_full * 3129 / len(candidates):.1f} s at 3,129 answers)")
    print(f"speed-up: {per_full / per_fast:.1f}x; max |score difference|: {(fast[:n] - full).abs().max():.2e}")


if __name__ == "__main__":
    main()
