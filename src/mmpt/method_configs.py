"""Every built-in method's config, and their base :class:`MethodConfig`, importable without torch.

``mmpt.runconfig`` parses and checks a whole config with only this module, so a config or CLI error answers in
a fraction of a second instead of after the ~5 s of importing torch and transformers (measured: `mmpt train
configs/quickstart.yaml method.length=0` 0.27 s, was 7.8 s). Each method's code (its folder or module under
:mod:`mmpt.methods`) imports its config from here and registers both; a method registered from elsewhere adds its
config with :func:`register_config` (``register_method`` does). :func:`mmpt.config.from_dict` converts method
sections after all others.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from mmpt.config import (
    MAX_IMAGE_SIZE,
    MAX_LAYERS,
    MAX_TOKENS,
    MAX_WIDTH,
    check,
    check_range,
    register_resolver,
)


@dataclass
class MethodConfig:
    """Base of every method's config; ``name`` selects the method in YAML (``method: {name: prefix, ...}``)."""

    name: str = ""

    def validate(self) -> None:
        """Check value ranges; raise ``ConfigError`` naming the key."""


def method_config_class(name: str) -> type[MethodConfig]:
    """The config class of method ``name`` (the built-in ones, and any registered with
    :func:`mmpt.methods.register_method`); ValueError lists the known methods."""
    if name not in CONFIGS:
        raise ValueError(f"unknown method '{name}'; available: {', '.join(sorted(CONFIGS))}")
    return CONFIGS[name]


def register_config(name: str, cls: type[MethodConfig]) -> None:
    """Make method ``name``'s config class known to config parsing (:func:`mmpt.methods.register_method` calls
    this)."""
    CONFIGS[name] = cls


register_resolver(MethodConfig, method_config_class)

# Names of query/key/value projections across families (Llama/BART/CLIP: *_proj; BERT-style: query/key/value).
DEFAULT_TARGETS = ["q_proj", "k_proj", "v_proj", "query", "key", "value"]


@dataclass
class PrefixConfig(MethodConfig):
    """Deep prefix tuning (Li & Liang 2021; OFA prompt tuning; PT-PEFT stage 1).

    Attributes:
        length: prefix tokens per layer (the OFA paper recommends 64 for OFA; 10..120 studied).
        towers: towers to inject into, by family tower name (``lm``, ``vision``, ``encoder``, ``decoder``...).
            For encoder-decoder families ``lm`` means both: the OFA paper's depth presets are
            ``[encoder]``, ``[decoder]`` and ``[encoder, decoder]``.
        cross_attention: also prefix the cross-attention of decoder towers that have it.
        layers: layer indices (negative counts from the end); empty means every layer.
        reparam: ``none`` (prefixes are the parameters), ``mlp`` (an embedding through a 2-layer MLP, Li &
            Liang 2021) or ``mlp_type`` (PT-PEFT's prefix encoder: embedding + a learned prefix-type embedding,
            LayerNorm, then the MLP). Both fold into plain prefixes with :meth:`PrefixMethod.fold`.
        mlp_hidden: hidden width of the reparameterization MLP.
        init: ``random`` (normal with ``init_std``) or ``text`` (keys/values the frozen model computes for
            ``init_text``, repeated or cut to ``length``).
        init_std: standard deviation of random initialization.
        init_text: text used when ``init: text``.
        dropout: dropout on the prefix keys/values during training.
    """

    name: str = "prefix"
    length: int = 16
    towers: list[str] = field(default_factory=lambda: ["lm"])
    layers: list[int] = field(default_factory=list)
    cross_attention: bool = False
    reparam: Literal["none", "mlp", "mlp_type"] = "none"
    mlp_hidden: int = 512
    init: Literal["random", "text"] = "random"
    init_std: float = 0.02
    init_text: str = ""
    dropout: float = 0.0

    def validate(self) -> None:
        check_range(self, "length", 1, MAX_TOKENS, fix="use a number of prefix tokens such as 16")
        check_range(self, "layers", -MAX_LAYERS, MAX_LAYERS - 1, fix="give layer indices such as [0, 1, -1]")
        check_range(self, "mlp_hidden", 1, MAX_WIDTH)
        check_range(self, "init_std", 0, 10, open_low=True)
        check_range(self, "dropout", 0, 1, open_high=True)
        check(len(self.towers) > 0, "towers: name at least one tower, e.g. [lm]")
        check(self.init != "text" or bool(self.init_text), "init_text: give a text when init is 'text'")


@dataclass
class PromptConfig(MethodConfig):
    """Shallow prompt tuning.

    Attributes:
        length: number of prompt embeddings.
        tower: the decoder tower whose input receives them.
        init_scale: standard deviation of the random initialization, in units of the embedding table's.
    """

    name: str = "prompt"
    length: int = 16
    tower: str = "lm"
    init_scale: float = 1.0

    def validate(self) -> None:
        check_range(self, "length", 1, MAX_TOKENS)
        check_range(self, "init_scale", 0, 10, open_low=True)


@dataclass
class DeepPromptConfig(MethodConfig):
    """Deep prompts.

    Attributes:
        length: prompt tokens per layer.
        tower: which tower (``vision``, ``lm``, ``qformer``, ``encoder``...).
        layers: layer indices (negative counts from the end); empty means every layer.
        init_scale: standard deviation of the ``normal`` initialization (0.02 for ViTs).
        init: ``normal`` (``init_scale``) or ``xavier`` (Xavier/Glorot uniform over each layer's ``length x width``
            matrix, M2PT's initialization).
        propagate_init: decoder towers whose chosen layers include layer 0: start every later layer's prompts from
            the hidden states layer 0's prompts reach there (an untrained deep prompt then acts as a shallow one;
            see :mod:`mmpt.methods.deep_prompt`). False: every layer's prompts are drawn by ``init``.
    """

    name: str = "deep_prompt"
    length: int = 8
    tower: str = "vision"
    layers: list[int] = field(default_factory=list)
    init_scale: float = 0.02
    init: Literal["normal", "xavier"] = "normal"
    propagate_init: bool = True

    def validate(self) -> None:
        check_range(self, "length", 1, MAX_TOKENS)
        check_range(self, "layers", -MAX_LAYERS, MAX_LAYERS - 1, fix="give layer indices such as [0, 1, -1]")
        check_range(self, "init_scale", 0, 10, open_low=True)


@dataclass
class VisualPromptConfig(MethodConfig):
    """Pixel-space padding prompt.

    Attributes:
        width: border width in pixels (the paper uses 30 at 224 px).
        image_size: side of the (square) images the tower receives.
        tower: the vision tower.
    """

    name: str = "visual_prompt"
    width: int = 30
    image_size: int = 224
    tower: str = "vision"

    def validate(self) -> None:
        check_range(self, "image_size", 8, MAX_IMAGE_SIZE)
        check_range(self, "width", 1, (self.image_size - 1) // 2,
                    fix=f"the frame must leave an image inside image_size={self.image_size} px")


@dataclass
class M2PTConfig(MethodConfig):
    """M2PT.

    Attributes:
        visual_length / text_length: prompt tokens per layer in the vision tower / the LM (0 disables).
        visual_layers / text_layers: layer indices (empty = all; the paper's "location" ablation; textual prompts may
            start at any LM layer, see :mod:`mmpt.methods.deep_prompt`).
        train_projector: train the interaction layer too (the paper does).
        interaction: which interaction layer: ``projector`` (the model's own projector, trained) or ``linear`` (a
            fresh ``width x width`` linear projection after the projector, M2PT's ``f_in``; it starts as the
            identity, so the untrained method leaves the image features as they were; the projector stays frozen).
        init: prompt initialization: ``xavier`` (the paper's) or ``normal`` (std 0.02), at every layer.
        text_propagate_init: start the LM's later-layer prompts from what layer 0's prompts become there instead
            (``deep_prompt``'s ``propagate_init``; off: the paper draws every layer's prompts with Xavier).
        frame_width: pixel frame width used when the vision tower is a CNN.
        image_size: image side for the pixel frame.
    """

    name: str = "m2pt"
    visual_length: int = 10
    text_length: int = 10
    visual_layers: list[int] = field(default_factory=list)
    text_layers: list[int] = field(default_factory=list)
    train_projector: bool = True
    interaction: Literal["projector", "linear"] = "projector"
    init: Literal["xavier", "normal"] = "xavier"
    text_propagate_init: bool = False
    frame_width: int = 16
    image_size: int = 224

    def validate(self) -> None:
        check_range(self, "visual_length", 0, MAX_TOKENS)
        check_range(self, "text_length", 0, MAX_TOKENS)
        for key in ("visual_layers", "text_layers"):
            check_range(self, key, -MAX_LAYERS, MAX_LAYERS - 1, fix="give layer indices such as [0, 1, -1]")
        check_range(self, "image_size", 8, MAX_IMAGE_SIZE)
        check_range(self, "frame_width", 1, (self.image_size - 1) // 2,
                    fix=f"the frame must leave an image inside image_size={self.image_size} px")
        check(self.interaction == "projector" or self.train_projector,
              "interaction: 'linear' is a trained interaction layer; it needs train_projector: true")
        check(self.visual_length + self.text_length > 0 or self.train_projector,
              f"visual_length: m2pt has nothing to train, got visual_length={self.visual_length}, text_length="
              f"{self.text_length}, train_projector=false; give a prompt length or train_projector: true")


@dataclass
class LoRAConfig(MethodConfig):
    """LoRA through PEFT's ``lora.Linear`` layers.

    Attributes:
        r, alpha, dropout: rank, scaling numerator and dropout (PT-PEFT: 16, 32, 0.05).
        targets: ``nn.Linear`` modules inside the chosen towers' blocks to adapt: a module name (``q_proj``:
            every module of that name) or the end of its dotted path inside the block
            (``attention.attention.query``: the Q-Former's self-attention query, not ``crossattention.attention.query``).
        towers: towers whose blocks are searched (``lm`` by default).
    """

    name: str = "lora"
    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    towers: list[str] = field(default_factory=lambda: ["lm"])

    def validate(self) -> None:
        check_range(self, "r", 1, MAX_TOKENS, fix="use a rank such as 16")
        check_range(self, "alpha", 0, 10**4, open_low=True, fix="use a scaling numerator such as 32 (often 2 * r)")
        check_range(self, "dropout", 0, 1, open_high=True)
        check(bool(self.targets), "targets: name at least one module, e.g. [q_proj, v_proj]")


@dataclass
class AdapterConfig(MethodConfig):
    """Bottleneck adapters (down-projection, activation, zero-initialised up-projection).

    Attributes:
        placement: where adapters sit in each block:

            - ``sequential``: one after the block, ``h = block(x); h = h + A(h)`` (Pfeiffer-like position);
            - ``houlsby``: two per block (Houlsby et al. 2019, PT-PEFT's sequential adapter): on the output of the
              attention sublayer and of the MLP sublayer, each ``f(x) + A(f(x))``, before the residual addition;
            - ``parallel``: one beside the whole block, ``h = block(x) + s * A(x)``;
            - ``parallel_ffn``: beside the MLP sublayer, ``mlp(x) + s * A(x)`` on the MLP's own input (He et al.
              2022's scaled parallel adapter, PT-PEFT's parallel adapter; the paper uses ``s = 4``).
        bottleneck: hidden size of the adapter.
        scale: ``s`` for parallel adapters.
        towers: towers whose blocks get adapters.
    """

    name: str = "adapter"
    placement: Literal["sequential", "houlsby", "parallel", "parallel_ffn"] = "sequential"
    bottleneck: int = 64
    scale: float = 1.0
    towers: list[str] = field(default_factory=lambda: ["lm"])

    def validate(self) -> None:
        check_range(self, "bottleneck", 1, MAX_WIDTH)
        check_range(self, "scale", 0, 100, open_low=True)


@dataclass
class AnswerHeadConfig(MethodConfig):
    """Classification head over a fixed answer list.

    Attributes:
        answers: the answer vocabulary: a list, or a text file with one answer per line.
        tower: the tower whose final hidden states are pooled (``lm`` or an encoder).
        pooling: ``last`` (the last real token) or ``mean`` (over real tokens).
    """

    name: str = "answer_head"
    answers: list[str] | str = field(default_factory=list)
    tower: str = "lm"
    pooling: Literal["last", "mean"] = "last"

    def validate(self) -> None:
        check(bool(self.answers), "answers: give the answer list (e.g. [yes, no, red]) or a file of answers")
        if isinstance(self.answers, list):
            check(len(set(self.answers)) == len(self.answers), "answers: each answer once")


@dataclass
class ProjectorConfig(MethodConfig):
    """Train the model's projector; nothing is injected."""

    name: str = "projector"


@dataclass
class BitFitConfig(MethodConfig):
    """BitFit (Ben Zaken et al. 2022): train only bias terms (of ``towers``; empty = whole model)."""

    name: str = "bitfit"
    towers: list[str] = field(default_factory=list)


@dataclass
class FullConfig(MethodConfig):
    """Full fine-tuning of ``towers`` (empty = whole model).

    PT-PEFT keeps the word embeddings and the output head frozen: ``freeze_embeddings`` / ``freeze_head``.
    """

    name: str = "full"
    towers: list[str] = field(default_factory=list)
    freeze_embeddings: bool = False
    freeze_head: bool = False


@dataclass
class HeadConfig(MethodConfig):
    """Train only the output layer (the family's ``head``)."""

    name: str = "head"


CONFIGS: dict[str, type[MethodConfig]] = {c.name: c for c in (  # type: ignore[misc]
    PrefixConfig, PromptConfig, DeepPromptConfig, VisualPromptConfig, M2PTConfig, LoRAConfig, AdapterConfig,
    AnswerHeadConfig, ProjectorConfig, BitFitConfig, FullConfig, HeadConfig)}
"""Method configs by name: the built-in ones, then any :func:`register_config` adds (the registry,
:mod:`mmpt.methods`, registers the built-ins' same classes)."""
