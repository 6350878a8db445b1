"""Descriptions of model families: which towers a VLM has and where their attention layers live.

A family is data, not code: methods read it to find where to inject. Adding a family means writing one
``Family`` (see ``docs/adding_a_family.md``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from torch import nn

TowerKind = Literal["decoder", "encoder", "cnn"]


@dataclass(frozen=True)
class Tower:
    """One tower of a VLM.

    Attributes:
        kind: ``decoder`` (causal self-attention with a KV cache), ``encoder`` (bidirectional self-attention)
            or ``cnn`` (no attention).
        module: dotted path of the tower's root module inside the model.
        layers: dotted path of its ``ModuleList`` of blocks (transformer towers).
        attention: path of the self-attention module inside one block, e.g. ``self_attn``.
        backbone: dotted path of the module that owns the blocks and embeds the inputs (where prompt
            methods prepend tokens).
        cross_attention: path of the cross-attention module inside one block (encoder-decoder decoders).
        injection: how key/value tokens reach its attention: ``interface`` (transformers' attention
            functions), ``cache`` (fallback for modules that append to a ``past_key_values`` cache themselves) or ``none`` (not possible,
            e.g. fused QKV projections computed outside the interface).
        no_input_prompts: why prompt methods (``prompt``, ``deep_prompt`` on this tower, ``m2pt``'s text prompts)
            may not add tokens to its input; empty where they may. Set where the model's own ``generate()``
            re-feeds tokens it has cached (BLIP's BERT decoder), or where the tower derives its positions from
            the padding in ``input_ids`` (Kosmos-2): added tokens would shift, or read other positions in a padded
            batch than alone. Those methods are then refused at ``apply()`` with this reason.
        packed: the blocks take the hidden states of all images packed as ``(tokens, dim)`` with ``cu_seqlens``
            marking where each image starts (Qwen2-VL's vision tower) instead of ``(batch, tokens, dim)``.
        mixed: blocks differ in their attention (Mllama: self-attention layers and cross-attention layers);
            a block lacking ``attention`` (or ``cross_attention``) simply has none of that kind, and layer
            indices still count every block.
    """

    kind: TowerKind
    module: str
    layers: str = ""
    attention: str = ""
    backbone: str = ""
    cross_attention: str = ""
    injection: Literal["interface", "cache", "none"] = "interface"
    no_input_prompts: str = ""
    packed: bool = False
    mixed: bool = False


@dataclass(frozen=True)
class Family:
    """A model family: its towers by name (``lm``, ``vision``, ``encoder``, ...) and the projector path."""

    name: str
    towers: dict[str, Tower]
    projector: str = ""
    head: str = ""
    notes: str = ""
    model_types: tuple[str, ...] = ()
    hf_class: str = ""
    aliases: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def tower(self, name: str) -> Tower:
        """The tower called ``name``; a clear error lists the towers that exist."""
        if name not in self.towers:
            raise ValueError(
                f"model family '{self.name}' has no tower '{name}'; it has: {', '.join(sorted(self.towers))}"
            )
        return self.towers[name]

    def resolve(self, names: list[str]) -> list[str]:
        """Tower names with presets expanded (e.g. Florence-2's ``lm`` -> ``encoder``, ``decoder``)."""
        out: list[str] = []
        for name in names:
            for tower in self.aliases.get(name, (name,)):
                self.tower(tower)
                if tower not in out:
                    out.append(tower)
        return out


def get_submodule(root: nn.Module, path: str) -> nn.Module:
    """``root.get_submodule(path)`` with an error that names the missing path."""
    try:
        return root.get_submodule(path) if path else root
    except AttributeError as exc:
        raise ValueError(f"module path '{path}' not found in {type(root).__name__}: {exc}") from exc


def blocks(root: nn.Module, tower: Tower) -> list[nn.Module]:
    """The blocks (layers) of a transformer tower, in order."""
    if tower.kind == "cnn":
        raise ValueError(f"tower '{tower.module}' is a CNN and has no transformer layers")
    return list(get_submodule(root, tower.layers))


def hooked_blocks(root: nn.Module, tower: Tower, method: str) -> list[nn.Module]:
    """The blocks of a tower for a method that hooks each block's call (``deep_prompt``, ``adapter``): refused when
    the ``layers`` path holds containers (a ModuleList of stages, e.g. Florence-2's DaViT), which are never called,
    so hooks on them would silently do nothing."""
    found = blocks(root, tower)
    containers = [i for i, b in enumerate(found) if isinstance(b, nn.ModuleList | nn.ModuleDict)]
    if containers:
        raise ValueError(f"{method} hooks every block of the tower at {tower.module}, but its layers "
                         f"({tower.layers}) are {type(found[containers[0]]).__name__}s of stages that are never "
                         "called themselves (e.g. a hierarchical windowed vision tower): it cannot apply there")
    return found


def attention_layers(root: nn.Module, tower: Tower, cross: bool = False) -> list[tuple[int, nn.Module]]:
    """``(block index, module)`` of the self-attention (or, with ``cross``, cross-attention) of each block that
    has one, in layer order; every block has one unless the tower is ``mixed``."""
    path = tower.cross_attention if cross else tower.attention
    if not path:
        kind = "cross-attention" if cross else "attention"
        raise ValueError(f"tower '{tower.module}' declares no {kind} modules")
    found = []
    for i, block in enumerate(blocks(root, tower)):
        try:
            found.append((i, block.get_submodule(path)))
        except AttributeError:
            if not tower.mixed:
                raise ValueError(f"module path '{path}' not found in block {i} of '{tower.layers}'") from None
    return found


def attention_modules(root: nn.Module, tower: Tower, cross: bool = False) -> list[nn.Module]:
    """The self-attention (or, with ``cross``, cross-attention) modules of the tower's blocks, in layer order."""
    return [module for _, module in attention_layers(root, tower, cross)]


def tower_width(root: nn.Module, tower: Tower) -> int:
    """Hidden size of a transformer tower's blocks (from its config; see :func:`mmpt.contract.tower_width`)."""
    from mmpt.contract import tower_width as width

    return width(get_submodule(root, tower.module), blocks(root, tower)[0])


MIXER_PATTERNS = (
    ("ssm", ("mamba", "ssm", "s4", "rwkv", "mixer")),
    ("linear attention", ("linearattention", "linear_attention", "deltanet", "gla", "retention", "lightning")),
)
"""Lower-case class-name fragments of token mixers that are not softmax attention (checked after ``Conv1d``)."""


def mixer_kind(module: nn.Module) -> str | None:
    """``convolution`` (a ``Conv1d``), ``ssm`` or ``linear attention`` (by class name, :data:`MIXER_PATTERNS`) for a
    module that mixes tokens by something other than softmax attention; None otherwise."""
    if isinstance(module, nn.Conv1d):
        return "convolution"
    name = type(module).__name__.lower()
    return next((k for k, fragments in MIXER_PATTERNS if any(f in name for f in fragments)), None)


def token_mixers(root: nn.Module, tower: Tower) -> list[str]:
    """What mixes tokens in each block of a transformer tower: ``attention`` / ``sliding attention`` (the tower's
    ``attention`` module), ``cross-attention``, ``convolution`` (a ``Conv1d`` over the sequence), ``ssm``, ``linear
    attention`` (by class name), or ``unknown``; a block with several mixers lists them joined by ``+``.

    Mixers other than attention read their neighbours in the sequence whatever the attention mask says, so
    methods that add tokens must put them next to the real tokens there (:mod:`mmpt.methods.prompt`)."""
    from mmpt.contract import is_sliding

    out = []
    for block in blocks(root, tower):
        kinds: list[str] = []
        attention = _child(block, tower.attention)
        if attention is not None:
            kinds.append("sliding attention" if is_sliding(attention) else "attention")
        elif _child(block, tower.cross_attention) is not None:
            kinds.append("cross-attention")
        for module in block.modules():
            kind = mixer_kind(module)
            if kind is not None and kind not in kinds and not (attention is not None and module is attention):
                kinds.append(kind)
        out.append("+".join(kinds) or "unknown")
    return out


def reads_neighbours(root: nn.Module, tower: Tower) -> bool:
    """Whether some block of the tower mixes tokens by something other than (cross-)attention (see
    :func:`token_mixers`): then the padding mask does not hide what stands next to a token."""
    if tower.kind == "cnn":
        return False
    attention_only = {"attention", "sliding attention", "cross-attention"}
    return any(set(kind.split("+")) - attention_only for kind in token_mixers(root, tower))


def _child(block: nn.Module, path: str) -> nn.Module | None:
    if not path:
        return None
    try:
        return block.get_submodule(path)
    except AttributeError:
        return None
