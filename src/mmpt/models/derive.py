"""Zero-line families: a :class:`~mmpt.models.family.Family` read off a loaded transformers VLM's structure.

Most VLMs in transformers 5 share one shape: ``model.language_model`` (what ``get_decoder()`` returns) with a
``ModuleList`` of blocks, a vision tower (``vision_tower`` / ``visual`` / ``vision_model`` ...) with its own blocks,
``model.multi_modal_projector`` (or a merger / connector), and ``lm_head``. :func:`derive_family` finds each of
them, the attention module inside every block (a block without one marks the tower ``mixed``), a tower's
cross-attention, whether a vision tower packs its images (its blocks take ``cu_seqlens``), and whether attention
goes through transformers' attention functions (prefixes need that: ``injection``). Token mixers other than
attention are classified when methods apply (:func:`~mmpt.models.family.token_mixers`).

What cannot be derived is refused with the missing piece named (:class:`DeriveError`), never guessed: an
encoder-decoder LM, no decoder, several candidates of one kind at the same depth. A family file then adds what
introspection cannot know (``docs/adding_a_family.md``).
"""

from __future__ import annotations

import inspect
from collections import Counter

from torch import nn

from mmpt.models.family import Family, Tower, TowerKind, mixer_kind

VISION_NAMES = ("vision_tower", "visual", "vision_model", "vision_encoder", "image_encoder", "vision")
PROJECTOR_NAMES = ("multi_modal_projector", "mm_projector", "connector", "merger", "visual_projection",
                   "vision_projection", "language_projection", "image_to_text_projection", "aligner", "projector",
                   "embed_vision")
BLOCK_LISTS = ("layers", "layer", "blocks", "h")
MAX_DEPTH = 4
POSITIONS_FROM_PADDING = ("its text decoder counts positions from the padding in input_ids; tokens added as "
                          "embeddings would read other positions in a padded batch than alone")
"""Why input prompts are refused on a decoder whose position embedding reads ``input_ids`` (Kosmos-2, XGLM)."""


class DeriveError(ValueError):
    """mmpt cannot read a family off this model's structure; the message names the missing piece."""


def derive_family(model: nn.Module, name: str = "") -> Family:
    """The family of a loaded transformers VLM, read off its structure (module docstring)."""
    config = getattr(model, "config", None)
    model_type = str(getattr(config, "model_type", "") or "")
    label = name or model_type or type(model).__name__
    if getattr(config, "is_encoder_decoder", False):
        raise DeriveError(f"{label}: an encoder-decoder model (its text passes an encoder, then a decoder): mmpt "
                          "cannot tell the towers apart from the structure alone; add a family file (docs/"
                          "adding_a_family.md, Florence-2's is an example)")
    paths = {id(m): n for n, m in model.named_modules()}
    lm_path = _decoder_path(model, paths, label)
    lm = model.get_submodule(lm_path)
    towers = {"lm": _tower(model, lm_path, lm, "decoder", label)}
    if towers["lm"].injection == "none":
        raise DeriveError(f"{label}: the language model's attention ({towers['lm'].layers}.*.{towers['lm'].attention}) "
                          "does not call transformers' attention functions, so mmpt cannot tell how prefixes and "
                          "prompts reach it (BLIP's and GIT's BERT decoders are such); add a family file")
    vision_path = _unique_path(model, VISION_NAMES, exclude=lm_path)
    if vision_path:
        vision = model.get_submodule(vision_path)
        try:
            towers["vision"] = _tower(model, vision_path, vision, "encoder", label)
        except DeriveError:
            if not any(isinstance(m, nn.Conv2d) for m in vision.modules()):
                raise
            towers["vision"] = Tower("cnn", vision_path)  # a convolutional tower: no blocks with attention
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return Family(
        name=name or model_type or type(model).__name__.lower(),
        towers=towers,
        projector=_unique_path(model, PROJECTOR_NAMES, exclude=lm_path) or "",
        head=paths.get(id(head), "") if head is not None else "",
        notes="derived from the model's structure (mmpt.models.derive): no family file",
        model_types=(model_type,) if model_type else (),
        hf_class=type(model).__name__,
    )


def describe(family: Family) -> str:
    """What :func:`derive_family` (or a family file) says about each tower, one line each, for ``mmpt models
    --describe``."""
    lines = [f"family {family.name} ({family.notes or 'family file'})",
             f"  transformers class: {family.hf_class or '-'}; model types: {', '.join(family.model_types) or '-'}",
             f"  projector: {family.projector or '-'}; head: {family.head or '-'}"]
    for tower_name, tower in family.towers.items():
        flags = [f for f in ("packed", "mixed") if getattr(tower, f)]
        lines.append(f"  tower {tower_name}: {tower.kind} at {tower.module}" + (
            f"; blocks {tower.layers}; attention '{tower.attention}'"
            f"{'; cross-attention ' + repr(tower.cross_attention) if tower.cross_attention else ''}; "
            f"injection {tower.injection}" if tower.kind != "cnn" else "") + (f"; {', '.join(flags)}" if flags else "")
            + (f"; no input prompts: {tower.no_input_prompts}" if tower.no_input_prompts else ""))
    return "\n".join(lines)


def _decoder_path(model: nn.Module, paths: dict[int, str], label: str) -> str:
    decoder = None
    for owner in (model, getattr(model, "model", None)):
        getter = getattr(owner, "get_decoder", None)
        if callable(getter):
            try:
                decoder = getter()
            except (AttributeError, NotImplementedError):
                decoder = None
            if isinstance(decoder, nn.Module) and decoder is not model and decoder is not owner:
                break
            decoder = None
    if decoder is None:
        path = _unique_path(model, ("language_model", "text_model", "llm"))
        if not path:
            raise DeriveError(f"{label}: no language model found (neither get_decoder() nor a module named "
                              "language_model / text_model / llm); add a family file (docs/adding_a_family.md)")
        return path
    if id(decoder) not in paths:
        raise DeriveError(f"{label}: get_decoder() returns a module that is not inside the model")
    return paths[id(decoder)]


def _unique_path(model: nn.Module, names: tuple[str, ...], exclude: str = "") -> str:
    """The shallowest module whose last name is one of ``names`` (outside ``exclude``); raises when two are equally
    shallow under different names."""
    found = [(n.count("."), n) for n, _ in model.named_modules()
             if n and n.rsplit(".", 1)[-1] in names and n.count(".") < MAX_DEPTH
             and not (exclude and (n == exclude or n.startswith(exclude + ".")))]
    if not found:
        return ""
    depth = min(d for d, _ in found)
    best = sorted(n for d, n in found if d == depth)
    if len(best) > 1 and not all(b.startswith(best[0] + ".") for b in best[1:]):
        raise DeriveError(f"several candidates for one part at the same depth: {', '.join(best)}; add a family "
                          "file that names the right one (docs/adding_a_family.md)")
    return best[0]


def _blocks(root: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """The longest ``ModuleList`` of blocks under ``root`` named like one (``layers``, ``blocks``...), shallowest
    first."""
    found = [(n.count("."), -len(m), n, m) for n, m in root.named_modules()
             if isinstance(m, nn.ModuleList) and n.rsplit(".", 1)[-1] in BLOCK_LISTS and len(m) > 0
             and n.count(".") < MAX_DEPTH]
    if not found:
        return None
    _, _, path, blocks = min(found, key=lambda f: (f[0], f[1]))
    return path, blocks


def _attention_children(block: nn.Module) -> tuple[list[str], list[str]]:
    """(self-attention, cross-attention) child names of a block, by class and attribute name."""
    own, cross = [], []
    for child_name, child in block.named_children():
        if "attention" not in type(child).__name__.lower() and "attn" not in child_name.lower():
            continue
        if isinstance(child, nn.ModuleList | nn.ModuleDict) or not any(isinstance(m, nn.Linear) for m in child.modules()):
            continue
        if mixer_kind(child) is not None:  # linear attention / SSM named like attention (Qwen3.5's ``linear_attn``)
            continue
        (cross if "cross" in child_name.lower() or "encoder_attn" in child_name.lower() else own).append(child_name)
    return own, cross


def _tower(model: nn.Module, path: str, root: nn.Module, kind: TowerKind, label: str) -> Tower:
    found = _blocks(root)
    if found is None:
        raise DeriveError(f"{label}: no ModuleList of blocks ({', '.join(BLOCK_LISTS)}) under {path}; add a family "
                          "file (docs/adding_a_family.md)")
    layers, blocks = found
    per_block = [_attention_children(b) for b in blocks]
    names = Counter(n for own, _ in per_block for n in own)
    if not names:
        raise DeriveError(f"{label}: no attention module in the blocks of {path}.{layers}; add a family file")
    attention = names.most_common(1)[0][0]
    if len(names) > 1:
        raise DeriveError(f"{label}: the blocks of {path}.{layers} name their attention differently "
                          f"({', '.join(sorted(names))}); add a family file")
    crosses = Counter(n for _, cross in per_block for n in cross)
    mixed = any(attention not in own for own, _ in per_block) or (
        bool(crosses) and any(not cross for _, cross in per_block))
    module = blocks[next(i for i, (own, _) in enumerate(per_block) if attention in own)].get_submodule(attention)
    first = next(iter(blocks))
    packed = "cu_seqlens" in inspect.signature(first.forward).parameters
    return Tower(
        kind=kind,
        module=path,
        layers=f"{path}.{layers}",
        attention=attention,
        # the module that holds the blocks embeds the inputs and returns last_hidden_state (not a ...ForCausalLM)
        backbone=f"{path}.{layers}".rpartition(".")[0] if kind == "decoder" else "",
        cross_attention=crosses.most_common(1)[0][0] if crosses else "",
        injection="interface" if _uses_attention_functions(module) else "none",
        packed=packed,
        mixed=mixed,
        no_input_prompts=POSITIONS_FROM_PADDING if kind == "decoder" and _positions_from_ids(root) else "",
    )


def _positions_from_ids(root: nn.Module) -> bool:
    """Whether a position embedding of the tower takes ``input_ids`` (positions counted past the pad tokens in
    the ids, as Kosmos-2's and XGLM's do): tokens added as embeddings cannot follow that count."""
    for module in root.modules():
        name = type(module).__name__.lower()
        if "position" in name and "rotary" not in name:
            try:
                if "input_ids" in inspect.signature(module.forward).parameters:
                    return True
            except (TypeError, ValueError):
                continue
    return False


def _uses_attention_functions(module: nn.Module) -> bool:
    """Whether the attention module's forward calls transformers' attention functions (what prefixes hook)."""
    try:
        source = inspect.getsource(type(module).forward)
    except (OSError, TypeError):
        return False
    return "ALL_ATTENTION_FUNCTIONS" in source or "attention_interface" in source


def describe_target(target: str) -> str:
    """``mmpt models --describe``: the family of a registered model, a local checkpoint folder or a transformers
    ``model_type``; a folder or model type is built on the meta device (no weights, no memory) and its family is
    the family file's, or derived (:func:`derive_family`), which the first line says."""
    import json
    from pathlib import Path

    import torch
    import transformers

    from mmpt.models import list_models
    from mmpt.models.families import known_family

    entry = next((e for e in list_models() if e.name == target), None)
    if entry is not None:
        return describe(entry.family)
    folder = Path(target).expanduser()
    if folder.is_dir():
        config_file = folder / "config.json"
        if not config_file.is_file():
            raise ValueError(f"{folder} has no config.json; give a checkpoint folder, a registered model or a "
                             "model type")
        config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
        architectures = json.loads(config_file.read_text(encoding="utf-8")).get("architectures") or []
    else:
        try:
            config = transformers.AutoConfig.for_model(target)
        except ValueError:
            raise ValueError(f"{target!r} is not a registered model (mmpt models lists them), a folder, or a "
                             "model type this transformers knows") from None
        architectures = []
    module = known_family(config.model_type)
    if module is not None:
        return describe(module.FAMILY) + "\n  (from its family file)"
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    name = architectures[0] if architectures else MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES.get(config.model_type)
    cls = getattr(transformers, name or "", None)
    if cls is None:
        raise ValueError(f"model type {config.model_type!r}: no transformers class for image-text-to-text models "
                         f"({name or 'none named'}); mmpt loads transformers' own classes only")
    try:
        with torch.device("meta"):
            model = cls._from_config(config)
    except ImportError as exc:  # e.g. a vision tower that needs timm
        first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise ValueError(f"{cls.__name__} cannot be built here: {first}") from None
    return describe(derive_family(model)) + "\n  (derived from the structure: no family file)"
