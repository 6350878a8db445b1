"""The ``mmpt`` command line.

    mmpt train CONFIG [key=value ...] [--smoke]     train + evaluate, write runs/<name>/
    mmpt pretrain-projector [key=value ...]         LLaVA stage 1 for mmpt-tiny (projector only)
    mmpt models                                     list registered models
    mmpt methods                                    list tuning methods and their knobs
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shutil
import sys
import time
import typing
from pathlib import Path

from mmpt.config import ConfigError

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


def _cmd_train(args: argparse.Namespace) -> int:
    from mmpt.runconfig import load_run_config, smoke
    from mmpt.train import run

    config = load_run_config(args.config, args.overrides)
    if args.smoke:
        config = smoke(config)
    run(config, progress=not args.no_progress)
    return 0


def _cmd_pretrain_projector(args: argparse.Namespace) -> int:
    from safetensors.torch import load_file, save_file

    from mmpt.models.tiny import PROJECTOR_CHECKPOINT
    from mmpt.runconfig import load_run_config, smoke
    from mmpt.train import run

    if args.install and args.smoke:
        raise ConfigError("--install with --smoke would replace the shipped projector with a 2-step one; drop one")
    path = args.config or CONFIG_DIR / "pretrain_projector.yaml"
    config = load_run_config(path, args.overrides)
    if args.smoke:
        config = smoke(config)
    metrics = run(config, progress=not args.no_progress)
    trained = Path(metrics["run_dir"]) / "projector.safetensors"
    if args.install:
        target = PROJECTOR_CHECKPOINT
        if target.exists():  # keep every earlier projector: one timestamped backup per install
            backup = target.with_name(f"{target.stem}.{time.strftime('%Y%m%d-%H%M%S')}.safetensors.bak")
            shutil.copy2(target, backup)
            print(f"mmpt: previous projector kept as {backup}")
        target.parent.mkdir(parents=True, exist_ok=True)
        save_file(load_file(trained), str(target), metadata={"source": str(trained)})
        print(f"mmpt: installed the projector as {target}")
    else:
        print(f"mmpt: projector weights in {trained}; add --install to make them mmpt-tiny's default")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from mmpt.models import list_models

    for entry in list_models():
        towers = ", ".join(f"{k}({t.kind})" for k, t in entry.family.towers.items())
        print(f"{entry.name:20s} {entry.description}\n{'':20s} towers: {towers}")
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
    parser = argparse.ArgumentParser(prog="mmpt", description="Multimodal prompt tuning for VLMs.")
    sub = parser.add_subparsers(dest="command", required=True)

    def run_args(p: argparse.ArgumentParser, config_required: bool) -> None:
        if config_required:
            p.add_argument("config", help="YAML config, e.g. configs/quickstart.yaml")
        p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.lr=3e-3 method.length=32")
        p.add_argument("--smoke", action="store_true", help="shrink the config to a few seconds")
        p.add_argument("--no-progress", action="store_true", help="hide progress bars")

    p = sub.add_parser("train", help="train and evaluate a method (writes runs/<name>/)")
    run_args(p, True)
    p.set_defaults(func=_cmd_train)
    p = sub.add_parser("pretrain-projector", help="pretrain mmpt-tiny's projector on captions (LLaVA stage 1)")
    p.add_argument("--config", default=None, help="defaults to configs/pretrain_projector.yaml")
    p.add_argument("--install", action="store_true", help="make the result mmpt-tiny's shipped projector")
    run_args(p, False)
    p.set_defaults(func=_cmd_pretrain_projector)
    sub.add_parser("models", help="list registered models").set_defaults(func=_cmd_models)
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
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"mmpt: config error: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as exc:
        print(f"mmpt: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
