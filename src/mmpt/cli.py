"""The ``mmpt`` command line.

    mmpt train CONFIG [key=value ...] [--smoke]     train + evaluate, write runs/<name>/
    mmpt train --resume RUN_DIR                     continue an interrupted run
    mmpt eval RUN [key=value ...]                   evaluate a run with its own config (into RUN/eval-<name>)
    mmpt eval CONFIG [key=value ...] [--run RUN]    evaluate zero-shot or with a run's methods
    mmpt predict IMAGE [PROMPT] [--run RUN]         caption an image / answer a question
    mmpt predict FOLDER|FILE.jsonl [PROMPT] --out F every image, batched, into a JSONL file
    mmpt chat [IMAGE] [--run RUN]                   a conversation about an image
    mmpt report RUN [RUN ...] [--csv FILE]          metrics of runs, sweeps and analyses as one report
    mmpt analyze rank|fgsm|ablate|similarity RUN... the papers' analyses (JSON + CSV + PNG + markdown)
    mmpt sweep CONFIG key=v1,v2 [seed=0,1,2]        a grid of runs (existing ones reused)
    mmpt export RUN [--format peft] [--out DIR]     a run's LoRA / prefix as PEFT adapters (+ model cards)
    mmpt import ADAPTER --model M --out FILE        a PEFT LoRA adapter as an mmpt method file
    mmpt export-easy-vqa [OUT]                      easy-VQA in every supported data format
    mmpt pretrain-projector [--model M] [k=v ...]   LLaVA stage 1 for mmpt-tiny(-gemma3) (projector only)
    mmpt models                                     list registered models
    mmpt methods                                    list tuning methods and their knobs
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shutil
import sys
import time
import typing
from pathlib import Path

from mmpt.config import ConfigError

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


def _cmd_train(args: argparse.Namespace) -> int:
    from mmpt.runconfig import load_run_config, load_run_folder_config, smoke

    run_dir = Path(args.resume) if args.resume else None
    if run_dir is not None:
        if args.config is not None or args.overrides or args.smoke:
            raise ConfigError("--resume continues a run with its own config.yaml; give no CONFIG, overrides or --smoke")
        config = load_run_folder_config(run_dir)
    elif args.config is None:
        raise ConfigError("mmpt train needs a CONFIG (e.g. configs/quickstart.yaml) or --resume RUN_DIR")
    else:
        config = load_run_config(args.config, args.overrides)
        config = smoke(config) if args.smoke else config
    from mmpt.train import run  # the heavy imports once the config is checked

    run(config, progress=not args.no_progress, resume=run_dir)
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from mmpt.runconfig import load_run_config

    if args.config is not None and Path(args.config).is_file():  # a config's errors before the heavy imports
        load_run_config(args.config, args.overrides)
    from mmpt.inference import evaluate_config

    metrics = evaluate_config(args.config, args.overrides, args.run, smoke_mode=args.smoke,
                              progress=not args.no_progress, raw_prompt=args.raw_prompt)
    for key, value in metrics.items():
        print(f"{key:28s} {value:.4f}" if isinstance(value, float) else f"{key:28s} {value}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from mmpt.inference import predict_many, predict_one

    _check_generation_flags(args)
    options = dict(model=args.model, run_dir=args.run, task=args.task, max_new_tokens=args.max_new_tokens,
                   num_beams=args.num_beams, raw_prompt=args.raw_prompt)
    if Path(args.image).is_file() and Path(args.image).suffix != ".jsonl":
        print(predict_one(args.image, args.prompt, **options))
        return 0
    out = Path(args.out or (Path(args.image).with_suffix("").name + "-predictions.jsonl"))
    predict_many(args.image, args.prompt, out, progress=not args.no_progress, batch_size=args.batch_size, **options)
    print(f"mmpt: predictions in {out}")
    return 0


def _check_generation_flags(args: argparse.Namespace) -> None:
    """Bound ``predict`` / ``chat`` flags before any model loads (as the config keys they mirror)."""
    from mmpt.config import MAX_BATCH, MAX_TOKENS

    bounds = {"--batch-size": (getattr(args, "batch_size", 1), MAX_BATCH),
              "--max-new-tokens": (args.max_new_tokens, MAX_TOKENS), "--num-beams": (getattr(args, "num_beams", 1), 100)}
    for flag, (value, high) in bounds.items():
        if value is not None and not 1 <= value <= high:
            raise ConfigError(f"{flag}: must be an integer from 1 to {high}, got {value}")


def _cmd_chat(args: argparse.Namespace) -> int:
    from mmpt.inference import Predictor, chat

    _check_generation_flags(args)
    task = args.task or ("instruct" if args.run is None else None)
    chat(Predictor(args.model, args.run, task, args.max_new_tokens, batch_size=1, raw_prompt=args.raw_prompt),
         args.image)
    return 0


def _cmd_completion(args: argparse.Namespace) -> int:
    import shtab

    print(shtab.complete(build_parser(), shell=args.shell))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from mmpt.report import full_report

    print(full_report([Path(r) for r in args.runs], Path(args.csv) if args.csv else None,
                      Path(args.out) if args.out else None))
    return 0


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _cmd_analyze(args: argparse.Namespace) -> int:
    from mmpt.analysis import analyze

    options: dict[str, typing.Any] = {}
    if args.analysis in ("rank", "similarity"):
        options["tower"] = args.tower
    if args.analysis == "rank":
        options.update(layer=args.layer, threshold=args.threshold, truncate=args.truncate or [], text=args.text_features)
    if args.analysis == "fgsm":
        options.update(epsilons=args.eps, target=args.on)
    if args.analysis == "ablate":
        options.update(candidates=args.candidates, seed=args.seed)
    # a folder is a run (sweep runs have '=' in their names); other key=value words override the samples' config
    runs = [r for r in args.runs if "=" not in r or Path(r).is_dir()]
    overrides = [*(r for r in args.runs if r not in runs), *args.overrides]  # key=value before or after flags
    folder = analyze(args.analysis, runs, model=args.model, config=args.config, out=args.out,
                     samples=args.samples, base=not args.no_base, smoke_mode=args.smoke,
                     progress=not args.no_progress, overrides=overrides, **options)
    print((folder / f"{args.analysis}.md").read_text())
    print(f"mmpt: wrote {folder}")
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from mmpt.sweep import run_sweep

    folder = run_sweep(args.config, args.grid, smoke_mode=args.smoke, progress=not args.no_progress)
    from mmpt.report import sweep_section

    print(sweep_section(folder))
    return 0


def _projector_targets() -> dict[str, Path]:
    """The embedded models whose projector ``mmpt pretrain-projector --install`` can replace, and where it lives."""
    from mmpt.models import tiny, tiny_gemma3

    return {"mmpt-tiny": tiny.PROJECTOR_CHECKPOINT, "mmpt-tiny-gemma3": tiny_gemma3.PROJECTOR_CHECKPOINT}


def _cmd_pretrain_projector(args: argparse.Namespace) -> int:
    from safetensors.torch import load_file, save_file

    from mmpt.models import tiny
    from mmpt.runconfig import load_run_config, smoke
    from mmpt.train import run

    if args.install and args.smoke:
        raise ConfigError("--install with --smoke would replace the shipped projector with a 2-step one; drop one")
    path = args.config or CONFIG_DIR / "pretrain_projector.yaml"
    overrides = [f"model.name={args.model}", *args.overrides] if args.model else list(args.overrides)
    config = load_run_config(path, overrides)
    targets = _projector_targets()
    target = targets.get(config.model.name)
    if args.install and target is None:
        raise ConfigError(f"--install: model '{config.model.name}' has no default projector file; --install "
                          f"works for {', '.join(targets)} (drop --install and pass the result as "
                          "model.projector_checkpoint)")
    if args.smoke:
        config = smoke(config)
    metrics = run(config, progress=not args.no_progress)
    trained = Path(metrics["run_dir"]) / "projector.safetensors"
    if args.install and target is not None:
        if target.exists():  # keep every earlier projector: one timestamped backup per install
            backup = target.with_name(f"{target.stem}.{time.strftime('%Y%m%d-%H%M%S')}.safetensors.bak")
            shutil.copy2(target, backup)
            print(f"mmpt: previous projector kept as {backup}")
        target.parent.mkdir(parents=True, exist_ok=True)
        save_file(load_file(trained), str(target), metadata={"source": str(trained)})
        tiny.record_projector(target)
        print(f"mmpt: installed the projector as {target} (SHA-256 recorded in {tiny.PROJECTOR_SUMS.name})")
    else:
        where = f"make them {config.model.name}'s default" if target else "use them with model.projector_checkpoint"
        print(f"mmpt: projector weights in {trained}; add --install to {where}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from mmpt.data.export import export_easy_vqa

    files = export_easy_vqa(args.out, args.train_images, args.test_images, args.seed)
    print(f"mmpt: wrote easy-VQA in every reader's format under {args.out} (see {files['readme']})")
    return 0


def _cmd_export_run(args: argparse.Namespace) -> int:
    from mmpt.interop import export_peft, push_to_hub

    folders = export_peft(args.run, args.out)
    for folder in folders:
        print(f"mmpt: wrote PEFT adapter {folder} (load with peft.PeftModel.from_pretrained; see its README.md)")
    recipe = folders[0].parent / "README.md" if folders else None
    if recipe is not None and recipe.is_file():
        print(f"mmpt: the run's adapters work together: {recipe} has the recipe that loads them as mmpt trained them")
    if args.push_to_hub:
        print(f"mmpt: uploaded to {push_to_hub(folders, args.push_to_hub)}")
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    from mmpt import methods, models

    out = Path(args.out)
    if out.exists():
        raise FileExistsError(f"{out} exists; mmpt never overwrites a method file: give another --out")
    loaded = models.load(args.model)
    method = methods.load(loaded, args.adapter)
    methods.save(method, out, methods.fingerprint(loaded.model))
    print(f"mmpt: wrote {out} ({method.config.name} for {args.model}; load with mmpt.methods.load)")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from mmpt.models import list_models

    if args.describe:
        from mmpt.models.derive import describe_target

        print(describe_target(args.describe))
        return 0

    for entry in list_models():
        towers = ", ".join(f"{k}({t.kind})" for k, t in entry.family.towers.items())
        runnable = f"no: {entry.not_runnable}" if entry.not_runnable else "yes"
        print(f"{entry.name:20s} {entry.description}\n{'':20s} towers: {towers}\n{'':20s} train/eval from the CLI: "
              f"{runnable}")
    return 0


def _cmd_methods(args: argparse.Namespace) -> int:
    from mmpt.methods import list_methods

    for entry in list_methods():
        print(f"{entry.name:12s} {entry.description}")
        hints = typing.get_type_hints(entry.config_cls)
        for f in dataclasses.fields(entry.config_cls):
            if f.name == "name":
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            tp = hints[f.name]
            kind = tp.__name__ if isinstance(tp, type) else str(tp).replace("typing.", "")
            print(f"{'':14s}{f.name} = {default!r}  ({kind})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for docs and tests)."""
    from mmpt import __version__

    parser = argparse.ArgumentParser(prog="mmpt", description="Multimodal prompt tuning for VLMs.")
    parser.add_argument("--version", action="version", version=f"mmpt {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def run_args(p: argparse.ArgumentParser, config_required: bool) -> None:
        if config_required:
            p.add_argument("config", help="YAML config, e.g. configs/quickstart.yaml")
        p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.lr=3e-3 method.length=32")
        p.add_argument("--smoke", action="store_true", help="shrink the config to a few seconds")
        p.add_argument("--no-progress", action="store_true", help="hide progress bars")

    p = sub.add_parser("train", help="train and evaluate a method (writes runs/<name>/)")
    p.add_argument("config", nargs="?", default=None, help="YAML config, e.g. configs/quickstart.yaml")
    run_args(p, False)
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from RUN_DIR/checkpoint")
    p.set_defaults(func=_cmd_train)
    p = sub.add_parser("eval", help="evaluate a run (mmpt eval RUN) or a config (zero-shot, or with --run)")
    p.add_argument("config", nargs="?", default=None,
                   help="a run folder (evaluated with its own config) or a YAML config")
    run_args(p, False)
    p.add_argument("--run", metavar="RUN_DIR", help="apply the methods a run trained (its best/ when present); the "
                                                    "config must name the run's model and task")
    p.add_argument("--raw-prompt", action="store_true",
                   help="with --run: build prompts with the config's template, not the run's")
    p.set_defaults(func=_cmd_eval)
    p = sub.add_parser("predict", help="answer a question about an image, or about every image of a folder/JSONL")
    p.add_argument("image", help="an image file, a folder of images, or a .jsonl file of {image, prompt} rows")
    p.add_argument("prompt", nargs="?", default="Describe the image briefly.", help="question or instruction")
    p.add_argument("--model", default="mmpt-tiny", help="registered model, local folder or cached hub id")
    p.add_argument("--run", metavar="RUN_DIR", help="apply the methods a run trained (its best/ when present)")
    p.add_argument("--task", default=None, choices=["vqa", "caption", "ve", "refexp", "instruct"],
                   help="default: the run's task, else vqa")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--num-beams", type=int, default=None, help="beam size (default: 5 for captions, else 1)")
    p.add_argument("--batch-size", type=int, default=8, help="images per batch (folders and JSONL files)")
    p.add_argument("--out", default=None, help="JSONL output for folders/JSONL (default <name>-predictions.jsonl)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--raw-prompt", action="store_true",
                   help="use the prompt as given (default with --run: put it into the run's prompt template)")
    p.set_defaults(func=_cmd_predict)
    p = sub.add_parser("chat", help="talk about an image with a model (instruction-tuned runs: --run)")
    p.add_argument("image", nargs="?", default=None, help="the image to talk about (or /image PATH later)")
    p.add_argument("--model", default="mmpt-tiny", help="registered model, local folder or cached hub id")
    p.add_argument("--run", metavar="RUN_DIR", help="apply the methods a run trained (its best/ when present)")
    p.add_argument("--task", default=None, choices=["vqa", "caption", "ve", "refexp", "instruct"],
                   help="default: the run's task, else instruct")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--raw-prompt", action="store_true",
                   help="use the prompt as given (default with --run: put it into the run's prompt template)")
    p.set_defaults(func=_cmd_chat)
    p = sub.add_parser("completion", help="print a shell completion script (bash, zsh, tcsh)",
                       description="eval \"$(mmpt completion bash)\" in ~/.bashrc completes mmpt's commands and flags; "
                                   "zsh: mmpt completion zsh > ~/.zfunc/_mmpt (a folder in $fpath)")
    p.add_argument("shell", choices=["bash", "zsh", "tcsh"])
    p.set_defaults(func=_cmd_completion)
    p = sub.add_parser("report", help="one markdown report of runs, sweeps and analyses")
    p.add_argument("runs", nargs="+", help="run folders, sweep folders (sweep.json), analysis folders")
    p.add_argument("--csv", help="also append the runs' rows to this CSV file (e.g. results/runs.csv)")
    p.add_argument("--out", help="also write the report to this markdown file (never overwritten)")
    p.set_defaults(func=_cmd_report)
    p = sub.add_parser("analyze", help="the papers' analyses of runs: rank, fgsm, ablate, similarity")
    p.add_argument("analysis", choices=["rank", "fgsm", "ablate", "similarity"])
    p.add_argument("runs", nargs="*", help="run folders (the base model is added as the reference), and key=value "
                   "overrides of the config whose eval data and settings are used, e.g. eval.candidates=answers.txt")
    p.add_argument("--model", help="base model, without runs (with --config for the data)")
    p.add_argument("--config", help="config whose eval data to read (default: the first run's)")
    p.add_argument("--out", help="output folder (default: <output_dir>/analysis/<analysis>; never overwritten)")
    p.add_argument("--samples", type=int, default=32, help="evaluation samples to analyze (default 32)")
    p.add_argument("--no-base", action="store_true", help="leave the base model out")
    p.add_argument("--tower", default="lm", help="rank/similarity: the tower whose features to read (default lm)")
    p.add_argument("--layer", type=int, default=-1, help="rank: the block whose output to read (default -1: last)")
    p.add_argument("--threshold", type=float, default=0.9, help="rank: cumulative share (default 0.9)")
    p.add_argument("--text-features", choices=["all", "paper"], default="all",
                   help="rank: text tokens = every non-image token at --layer (all, default), or PT-PEFT's [sos, words, "
                   "eos] after the final norm (paper)")
    p.add_argument("--truncate", type=_ints, help="rank: also the task metric with features cut to these ranks")
    p.add_argument("--eps", type=_floats, help="fgsm: epsilons in pixel units (default 0,0.005,0.01,0.02,0.05)")
    p.add_argument("--on", choices=["pixels", "text"], default="pixels",
                   help="fgsm: attack the image pixels (default) or the prompt's text embeddings")
    p.add_argument("--candidates", help="ablate: rank answers from this file, or 'answers' (the samples' answers)")
    p.add_argument("--seed", type=int, default=0, help="ablate: seed of the noise")
    p.add_argument("--smoke", action="store_true", help="4 samples, smallest options: seconds")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=_cmd_analyze, overrides=[])
    p = sub.add_parser("sweep", help="a grid of runs over config values and seeds (existing runs reused)")
    p.add_argument("config", help="YAML config, e.g. configs/quickstart.yaml")
    p.add_argument("grid", nargs="+", help="key=v1,v2,... (one value: a plain override), e.g. method.length=8,16 seed=0,1")
    p.add_argument("--smoke", action="store_true", help="shrink every run to seconds")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=_cmd_sweep)
    p = sub.add_parser("pretrain-projector", help="pretrain mmpt-tiny's projector on captions (LLaVA stage 1)")
    p.add_argument("--config", default=None, help="defaults to configs/pretrain_projector.yaml")
    p.add_argument("--model", default=None, choices=["mmpt-tiny", "mmpt-tiny-gemma3"],
                   help="embedded model whose projector to train (default: the config's, mmpt-tiny); "
                        "mmpt-tiny-gemma3 trains in fp32 on CPUs, at about 1 sample/s on 2 cores")
    p.add_argument("--install", action="store_true", help="make the result the model's default projector")
    run_args(p, False)
    p.set_defaults(func=_cmd_pretrain_projector)
    p = sub.add_parser("export-easy-vqa", help="write easy-VQA as COCO/VQAv2/SNLI-VE/RefCOCO/LLaVA/JSONL files")
    p.add_argument("out", nargs="?", default="data/easyvqa", help="output folder (must not exist or be empty)")
    p.add_argument("--train-images", type=int, default=None, help="easy-VQA train images to use (default 600)")
    p.add_argument("--test-images", type=int, default=None, help="easy-VQA test images to use (default 200)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_export)
    p = sub.add_parser("export", help="write a run's methods as PEFT adapters (LoRA; prefix on a causal LM)")
    p.add_argument("run", help="run folder")
    p.add_argument("--format", choices=["peft"], default="peft")
    p.add_argument("--out", default=None, help="output folder (default RUN/peft; never overwritten)")
    p.add_argument("--push-to-hub", metavar="REPO_ID", default=None,
                   help="also upload the adapters to this (private) Hub repo; needs network and a token")
    p.set_defaults(func=_cmd_export_run)
    p = sub.add_parser("import", help="turn a PEFT LoRA adapter folder into an mmpt method file")
    p.add_argument("adapter", help="PEFT adapter folder (adapter_config.json + adapter_model.safetensors)")
    p.add_argument("--model", required=True, help="the base model it was trained on (registered name or folder)")
    p.add_argument("--out", required=True, help="mmpt method file to write, e.g. lora.safetensors")
    p.set_defaults(func=_cmd_import)
    p = sub.add_parser("models", help="list registered models")
    p.add_argument("--describe", metavar="MODEL", help="what mmpt knows or derives of a registered model, a checkpoint "
                   "folder or a transformers model_type (towers, blocks, attention, projector)")
    p.set_defaults(func=_cmd_models)
    sub.add_parser("methods", help="list tuning methods and their knobs").set_defaults(func=_cmd_methods)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``mmpt`` console script."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may come after flags (`--smoke train.lr=1e-3`): argparse leaves those over
    stray = [a for a in extra if "=" not in a or a.startswith("-")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        if not hasattr(args, "overrides"):
            parser.error(f"'{args.command}' takes no key=value overrides: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    if getattr(args, "no_progress", False):  # also the bars of transformers / hub / datasets (read at their import)
        for variable in ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS"):
            os.environ[variable] = "1"
        if "transformers" in sys.modules:  # imported already (a test, a notebook calling main)
            sys.modules["transformers"].utils.logging.disable_progress_bar()
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"mmpt: config error: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"mmpt: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        run_dir = getattr(exc, "run_dir", None)
        where = (f"; continue from its last checkpoint with `mmpt train --resume {run_dir}`" if run_dir is not None
                 else "")
        print(f"mmpt: interrupted{where}", file=sys.stderr)
        return 130
    except RuntimeError as exc:
        return _runtime_error(exc)


def _runtime_error(exc: RuntimeError) -> int:
    """One line for the runtime failures mmpt expects (divergence, GPU out of memory); others propagate."""
    import torch

    from mmpt.guard import TrainingDiverged

    if isinstance(exc, TrainingDiverged):
        print(f"mmpt: {exc}", file=sys.stderr)
        return 3
    if isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower():
        print("mmpt: error: the accelerator ran out of memory; lower train.batch_size and raise train.grad_accum "
              "to keep the effective batch, use train.precision=bf16, lower eval.batch_size for evaluation, or "
              "enable gradient checkpointing (model.gradient_checkpointing_enable() in the Python API)",
              file=sys.stderr)
        return 3
    raise exc


if __name__ == "__main__":
    sys.exit(main())
