"""Deep prefix tuning: parameters, reparameterization, injection and folding."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from mmpt.method_configs import PrefixConfig
from mmpt.methods.base import MethodEntry, detach_from_model, register_method
from mmpt.methods.kv import KVInjection, kv_layout, projections
from mmpt.models.family import Tower, attention_layers, blocks, get_submodule, token_mixers

log = logging.getLogger("mmpt")

if TYPE_CHECKING:
    from mmpt.models import LoadedModel


class PrefixEncoder(nn.Module):
    """Produces the prefixes of a group of same-shaped layers: (layers, 2, heads, length, head_dim).

    ``reparam: none``: the prefixes are a parameter. ``mlp``: an embedding through Linear-Tanh-Linear (Li &
    Liang 2021). ``mlp_type``: embedding + a learned prefix-type embedding, LayerNorm, then the MLP (PT-PEFT's
    prefix encoder). :meth:`fold` turns either MLP into a plain parameter with identical output.
    """

    def __init__(self, layers: int, heads: int, length: int, head_dim: int, config: PrefixConfig) -> None:
        super().__init__()
        self.shape = (layers, 2, heads, length, head_dim)
        self.reparam = config.reparam
        self.dropout = nn.Dropout(config.dropout)
        if config.reparam == "none":
            self.prefix = nn.Parameter(torch.randn(self.shape) * config.init_std)
            return
        hidden = config.mlp_hidden
        self.embedding = nn.Parameter(torch.randn(length, hidden) * config.init_std)
        if config.reparam == "mlp_type":
            self.type_embedding = nn.Parameter(torch.zeros(hidden))
            self.norm = nn.LayerNorm(hidden)
        self.mlp = nn.Sequential(
            nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, layers * 2 * heads * head_dim)
        )
        nn.init.normal_(self.mlp[2].weight, std=config.init_std)
        nn.init.zeros_(self.mlp[2].bias)

    def forward(self) -> torch.Tensor:
        if self.reparam == "none":
            return self.dropout(self.prefix)
        x = self.embedding
        if self.reparam == "mlp_type":
            x = self.norm(x + self.type_embedding)
        layers, two, heads, length, head_dim = self.shape
        out = self.mlp(x).view(length, layers, two, heads, head_dim).permute(1, 2, 3, 0, 4)
        return self.dropout(out)

    @torch.no_grad()
    def fold(self) -> None:
        """Replace the reparameterization by the prefixes it currently produces (identical outputs)."""
        if self.reparam == "none":
            return
        was_training = self.training
        self.eval()
        value = self.forward().detach().clone().contiguous()
        self.train(was_training)
        for name in ("embedding", "type_embedding", "norm", "mlp"):
            if hasattr(self, name):
                delattr(self, name)
        self.prefix = nn.Parameter(value)
        self.reparam = "none"


class PrefixMethod(nn.Module):
    """Deep prefix tuning applied to a loaded model (see :class:`PrefixConfig`).

    Each chosen tower (and, with ``cross_attention``, each decoder's cross-attention) gets one
    :class:`PrefixEncoder`; every chosen attention layer reads its slice as extra keys and values through
    :class:`~mmpt.methods.kv.KVInjection`.
    """

    def __init__(self, loaded: LoadedModel, config: PrefixConfig) -> None:
        super().__init__()
        self.config = config
        self.encoders = nn.ModuleDict()
        self.injections: list[KVInjection] = []
        self._hooks: list[Any] = []
        family = loaded.family
        device = next(loaded.model.parameters()).device
        try:
            for tower_name in family.resolve(config.towers):
                tower = family.tower(tower_name)
                self._check(tower, tower_name, loaded)
                self._inject(loaded, tower, tower_name, cross=False, device=device)
                if config.cross_attention and tower.cross_attention:
                    self._inject(loaded, tower, f"{tower_name}_cross", cross=True, device=device)
        except BaseException:
            self.remove()
            raise

    @staticmethod
    def _check(tower: Tower, name: str, loaded: LoadedModel) -> None:
        family = loaded.family
        usable = [k for k, t in family.towers.items() if t.kind != "cnn" and t.injection != "none"]
        if tower.kind == "cnn":
            raise ValueError(
                f"tower '{name}' of '{family.name}' is a CNN without attention; prefixes need one of: "
                f"{', '.join(usable)}"
            )
        if tower.injection == "none":
            raise ValueError(
                f"tower '{name}' of '{family.name}' computes attention outside transformers' attention "
                f"functions and without a KV cache, so mmpt cannot inject into it; prefixes work on: "
                f"{', '.join(usable)}"
            )

    def _inject(self, loaded: LoadedModel, tower: Tower, key: str, cross: bool, device: torch.device) -> None:
        config = self.config
        chosen = self._select_layers(loaded, tower, cross, config.layers, key)
        # layers whose keys/values differ in shape (Gemma 4's global layers: other head counts and widths) get an
        # encoder each, named '<tower>@<heads>x<head_dim>' (the tower's name alone where all have one shape)
        groups: dict[tuple[int, int], list[nn.Module]] = {}
        for module in chosen:
            groups.setdefault(kv_layout(module), []).append(module)
        if len(groups) > 1:
            log.info("prefix: tower '%s' has attention of %d shapes (heads x head_dim %s): one encoder per shape",
                     key, len(groups), ", ".join(f"{h}x{d}" for h, d in groups))
        tower_module = get_submodule(loaded.model, tower.module)
        mode = "cache" if tower.injection == "cache" else "interface"
        for (heads, head_dim), modules in groups.items():
            name = key if len(groups) == 1 else f"{key}@{heads}x{head_dim}"
            encoder = PrefixEncoder(len(modules), heads, config.length, head_dim, config).to(device)
            self.encoders[name] = encoder
            if config.init == "text":
                self._init_from_text(loaded, encoder, modules, config)
            memo = _Memo(encoder)
            # the encoder runs once per forward of the tower, not once per layer
            self._hooks.append(tower_module.register_forward_pre_hook(lambda *_, m=memo: m.clear()))
            self._hooks.append(tower_module.register_forward_hook(lambda *_, m=memo: m.clear()))
            self.injections.append(KVInjection(modules, [memo.provider(i) for i in range(len(modules))], cross, mode))

    @staticmethod
    def _select_layers(
        loaded: LoadedModel, tower: Tower, cross: bool, layers: list[int], key: str
    ) -> list[nn.Module]:
        """The attention modules of the chosen layers (indices count every block, negative from the end)."""
        found = dict(attention_layers(loaded.model, tower, cross))
        if not layers:
            skipped = [i for i in range(len(blocks(loaded.model, tower))) if i not in found]
            if skipped and not cross:  # e.g. LFM2's convolution blocks: no keys or values to extend
                mixers = token_mixers(loaded.model, tower)
                log.info("prefix: tower '%s' layers %s have no self-attention (%s): prefixes go to layers %s",
                         key, skipped, ", ".join(sorted({mixers[i] for i in skipped})), list(found))
            return list(found.values())
        n = len(blocks(loaded.model, tower))
        bad = [i for i in layers if not -n <= i < n]
        if bad:
            raise ValueError(f"tower '{key}' has layers 0..{n - 1}; layer(s) {bad} do not exist")
        chosen = sorted({i % n for i in layers})
        lacking = [i for i in chosen if i not in found]
        if lacking:
            kind = "cross-attention" if cross else "self-attention"
            raise ValueError(f"tower '{key}': layer(s) {lacking} have no {kind}; layers with one: "
                             f"{', '.join(map(str, found))}")
        return [found[i] for i in chosen]

    @torch.no_grad()
    def _init_from_text(
        self, loaded: LoadedModel, encoder: PrefixEncoder, modules: list[nn.Module], config: PrefixConfig
    ) -> None:
        """Set each layer's prefix to the keys/values its projections give for ``init_text``'s embeddings.

        The text's token embeddings are passed through each chosen layer's key/value projections (no
        rotation), a cheap stand-in for running the text through the frozen model.
        """
        if config.reparam != "none":
            raise ValueError("init: text needs reparam: none (an MLP's output cannot be set directly)")
        tokenizer = getattr(loaded.processor, "tokenizer", loaded.processor)
        if tokenizer is None:
            raise ValueError("init: text needs a tokenizer; this model was loaded without a processor")
        ids = tokenizer(config.init_text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        ids = ids.repeat(1, -(-config.length // ids.shape[1]))[:, : config.length]
        embed = loaded.model.get_input_embeddings()
        hidden = embed(ids.to(embed.weight.device))
        for i, module in enumerate(modules):
            k_proj, v_proj = projections(module)
            if k_proj.in_features != hidden.shape[-1]:
                raise ValueError("init: text works for towers whose width equals the text embeddings")
            heads, head_dim = kv_layout(module)
            for j, proj in enumerate((k_proj, v_proj)):
                out = proj(hidden)[0].view(config.length, heads, head_dim).transpose(0, 1)
                encoder.prefix[i, j] = out

    def fold(self) -> None:
        """Fold MLP reparameterizations into plain prefixes (outputs unchanged); saves then hold plain prefixes."""
        for encoder in self.encoders.values():
            encoder.fold()
        self.config = replace(self.config, reparam="none")

    @torch.no_grad()
    def folded(self) -> tuple[dict[str, torch.Tensor], PrefixConfig]:
        """The state and config of this method with every encoder folded (see :meth:`fold`), leaving it as is:
        what :func:`mmpt.methods.save` writes with ``fold=True``."""
        state = {}
        for key, encoder in self.encoders.items():
            was_training = encoder.training
            encoder.eval()
            state[f"encoders.{key}.prefix"] = encoder().detach().clone()
            encoder.train(was_training)
        return state, replace(self.config, reparam="none")

    def remove(self) -> None:
        """Remove all prefixes: the model is exactly as before :func:`mmpt.methods.apply`."""
        for inj in self.injections:
            inj.remove()
        for hook in self._hooks:
            hook.remove()
        self.injections, self._hooks = [], []
        detach_from_model(self)

    def set_active(self, active: bool) -> None:
        """Switch the prefixes off or on without removing them."""
        for inj in self.injections:
            inj.set_active(active)


class _Memo:
    """Runs a :class:`PrefixEncoder` at most once between two ``clear()`` calls; layers read their slices."""

    def __init__(self, encoder: PrefixEncoder) -> None:
        self.encoder = encoder
        self.value: torch.Tensor | None = None

    def clear(self) -> None:
        self.value = None

    def provider(self, index: int) -> Callable[[], tuple[torch.Tensor, torch.Tensor]]:
        def provide() -> tuple[torch.Tensor, torch.Tensor]:
            if self.value is None:
                self.value = self.encoder()
            return self.value[index, 0], self.value[index, 1]

        return provide


register_method(MethodEntry("prefix", PrefixConfig, PrefixMethod, "deep prefix tuning: learned K/V prefixes at every layer"))
