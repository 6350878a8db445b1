"""Every method x every family x {sdpa, eager}: which apply, which refuse with a message, which fail.

    python benchmarks/method_matrix.py [--csv results/method_matrix.csv] [--families llava,gemma3]
    python benchmarks/method_matrix.py --derived --csv results/method_matrix_derived.csv

For each tiny random family model and method config it checks the invariants the test matrix checks: the method
changes the output once its parameters move; only its parameters are trainable; greedy generation with the KV
cache equals generation without; a left-padded sample's logits at every generated step equal the sample's alone
(where the base model's do); removal restores the logits bit for bit. A ``ValueError`` raised by
``methods.apply`` is a refusal (its message is recorded); anything else, or a broken invariant, is a failure.

``--derived`` removes the family files: each model gets the family derived from its structure
(:mod:`mmpt.models.derive`), and only the language-model methods run (prefix, prompt, deep prompt on the LM,
LoRA, adapters, BitFit, head); a family that cannot be derived is one ``needs a file`` row with the reason.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path
from typing import Any

import torch

from mmpt import methods, models
from mmpt.analysis.common import image_token_id
from mmpt.methods import (
    AdapterConfig,
    BitFitConfig,
    DeepPromptConfig,
    FullConfig,
    HeadConfig,
    LoRAConfig,
    M2PTConfig,
    PrefixConfig,
    ProjectorConfig,
    PromptConfig,
    VisualPromptConfig,
)
from mmpt.models.derive import DeriveError, derive_family
from mmpt.models.families import FAMILY_MODULES
from mmpt.models.families._tiny import tiny_row, with_positions

CONFIGS: dict[str, Any] = {
    "prefix/lm": PrefixConfig(length=3, towers=["lm"]),
    "prefix/vision": PrefixConfig(length=3, towers=["vision"]),
    "prompt": PromptConfig(length=3),
    "deep_prompt/lm": DeepPromptConfig(length=2, tower="lm"),
    "deep_prompt/vision": DeepPromptConfig(length=2, tower="vision"),
    "visual_prompt": VisualPromptConfig(width=2),
    "m2pt": M2PTConfig(visual_length=1, text_length=2, frame_width=2),
    "lora": LoRAConfig(r=2),
    "adapter/sequential": AdapterConfig(bottleneck=4, placement="sequential"),
    "adapter/parallel": AdapterConfig(bottleneck=4, placement="parallel"),
    "bitfit": BitFitConfig(),
    "full/lm": FullConfig(towers=["lm"]),
    "head": HeadConfig(),
    "projector": ProjectorConfig(),
}


def randomize(model: torch.nn.Module, std: float = 0.3) -> None:
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, std, generator=gen)


LM_METHODS = ("prefix/lm", "prompt", "deep_prompt/lm", "lora", "adapter/sequential", "adapter/parallel", "bitfit",
              "head")


def no_image_token(model: torch.nn.Module) -> dict[str, Any]:
    """Generation kwargs that keep a random tiny model from generating its image placeholder (the model would
    then expect image features for it)."""
    token = image_token_id(model)
    return {"suppress_tokens": [token]} if token is not None else {}


def cached_matches_uncached(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> bool:
    """Greedy generation of the batch with the KV cache: the same tokens and, at every step, the same logits (1e-4)
    as without."""
    kw = dict(max_new_tokens=4, do_sample=False, return_dict_in_generate=True, output_logits=True,
              **no_image_token(model))
    cached, uncached = model.generate(**inputs, **kw), model.generate(**inputs, use_cache=False, **kw)
    return torch.equal(cached.sequences, uncached.sequences) and all(
        torch.allclose(a, b, atol=1e-4) for a, b in zip(cached.logits, uncached.logits, strict=True))


def padded_matches_alone(model: torch.nn.Module, module: Any, inputs: dict[str, torch.Tensor]) -> bool:
    """Sample 1 of the left-padded batch: the same greedy tokens and, at every step, the same logits (1e-4) as
    the sample alone."""
    row = getattr(module, "tiny_row", tiny_row)(inputs, 1)
    kw = dict(max_new_tokens=3, do_sample=False, return_dict_in_generate=True, output_logits=True,
              **no_image_token(model))
    batch, one = model.generate(**inputs, **kw), model.generate(**row, **kw)
    tokens = batch.sequences[1] if model.config.is_encoder_decoder else batch.sequences[1, -one.sequences.shape[1]:]
    return torch.equal(tokens, one.sequences[0]) and all(
        torch.allclose(b[1], o[0], atol=1e-4) for b, o in zip(batch.logits, one.logits, strict=True))


def check(family: str, name: str, config: Any, attn: str, derived: bool = False) -> tuple[str, str]:
    """("passed" | "refused" | "failed" | "n/a", detail)."""
    module = FAMILY_MODULES[family]
    try:
        loaded = models.load(f"{family}-tiny-random", attn_implementation=attn)
    except ValueError as exc:  # transformers itself lacks this attention implementation for the family
        return "n/a", str(exc).splitlines()[0][:120]
    if derived:
        loaded.family = derive_family(loaded.model)  # DeriveError: the caller records "needs a file"
    randomize(loaded.model)
    model = loaded.model
    batch = module.tiny_inputs(model, [5, 2, 7])
    gen_inputs = {k: v for k, v in batch.items() if k != "decoder_input_ids"}
    batch = with_positions(batch, family)  # forward passes get the position ids mmpt's processor gives
    with torch.no_grad():
        base = model(**batch).logits
    padding_exact = padded_matches_alone(model, module, gen_inputs)  # BART's learned positions: not even the base
    cache_exact = cached_matches_uncached(model, gen_inputs)  # Kosmos-2: not even the base, once padded
    note = "; ".join(f"{what} not checked: the base model's own {how} differs" for what, how, exact in (
        ("padded-vs-alone", "padded generation", padding_exact),
        ("cache-vs-no-cache", "cached generation", cache_exact)) if not exact)
    if family == "florence2" and name in ("prompt", "deep_prompt/lm"):
        config = type(config)(**{**vars(config), "tower": "decoder"})
    pixels = batch.get("pixel_values")
    if name in ("visual_prompt", "m2pt") and pixels is not None and pixels.dim() >= 4:
        config = type(config)(**{**vars(config), "image_size": pixels.shape[-1]})
    try:
        method = methods.apply(loaded, config)
    except ValueError as exc:
        return "refused", str(exc).splitlines()[0]
    try:
        trained = {id(p) for p in method.parameters()}
        if not trained or any(p.requires_grad != (id(p) in trained) for p in model.parameters()):
            return "failed", "trainable parameters are not exactly the method's"
        with torch.no_grad():
            for p in method.parameters():
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(5)) * 0.5)
            moved = model(**batch, use_cache=False).logits
        if torch.allclose(moved, base):
            return "failed", "no effect on the logits"
        kw = dict(max_new_tokens=4, do_sample=False, **no_image_token(model))
        if cache_exact and not torch.equal(model.generate(**gen_inputs, **kw),
                                           model.generate(**gen_inputs, use_cache=False, **kw)):
            return "failed", "generation with the KV cache differs from without"
        if padding_exact and not padded_matches_alone(model, module, gen_inputs):
            return "failed", "a left-padded sample's logits differ from the sample's alone"
        method.remove()
        if name in ("bitfit", "full/lm", "head", "projector"):  # they train base weights in place
            return "passed", note
        if family == "blip":  # BLIP's own generate() leaves state in the HF model: compare after a fresh load
            return "passed", "removal not compared (BLIP's generate() changes the model itself)"
        with torch.no_grad():
            if not torch.equal(model(**batch).logits, base):
                return "failed", "removal did not restore the logits exactly"
        return "passed", note
    except Exception as exc:  # noqa: BLE001 - a matrix: every failure is recorded, not raised
        return "failed", f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--csv", type=Path, default=None)
    parser.add_argument("--families", default="")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--derived", action="store_true", help="families derived from the models, LM methods")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    families = args.families.split(",") if args.families else sorted(FAMILY_MODULES)
    configs = {k: v for k, v in CONFIGS.items() if k in LM_METHODS} if args.derived else CONFIGS
    rows = []
    start = time.perf_counter()
    for family in families:
        if args.derived:
            try:
                derive_family(FAMILY_MODULES[family].build_tiny())
            except DeriveError as exc:
                rows.append({"family": family, "attn": "-", "method": "-", "outcome": "needs a file",
                             "detail": str(exc).splitlines()[0]})
                print(f"{family}: needs a file", flush=True)
                continue
        for attn in ("sdpa",) if args.derived else ("sdpa", "eager"):
            for name, config in configs.items():
                outcome, detail = check(family, name, config, attn, args.derived)
                rows.append({"family": family, "attn": attn, "method": name, "outcome": outcome, "detail": detail})
                if outcome == "failed":
                    print(f"FAILED {family} {attn} {name}: {detail}", file=sys.stderr, flush=True)
        print(f"{family}: done ({time.perf_counter() - start:.0f} s)", flush=True)
    counts = {k: sum(r["outcome"] == k for r in rows) for k in ("passed", "refused", "failed", "n/a", "needs a file")}
    print(f"\n{len(families)} families x {len(configs)} method configs x {1 if args.derived else 2} attention "
          f"implementation(s): {len(rows)} rows: {counts['passed']} passed, {counts['refused']} refused with a "
          f"message, {counts['failed']} failed, {counts['n/a']} n/a (transformers has no such attention "
          f"implementation for the family), {counts['needs a file']} families need a family file "
          f"({time.perf_counter() - start:.0f} s)")
    for r in rows:
        if r["outcome"] == "refused":
            print(f"  refused: {r['family']} {r['attn']} {r['method']}: {r['detail']}")
    if args.csv is not None:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["family", "attn", "method", "outcome", "detail"])
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
