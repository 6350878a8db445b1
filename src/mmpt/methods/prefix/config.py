"""Configuration of deep prefix tuning."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from mmpt.config import MAX_LAYERS, MAX_TOKENS, MAX_WIDTH, check, check_range
from mmpt.methods.base import MethodConfig


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
