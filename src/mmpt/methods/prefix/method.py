"""Deep prefix tuning: parameters, reparameterization, injection and folding."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from mmpt.methods.base import MethodEntry, register_method
from mmpt.methods.kv import KVInjection
from mmpt.methods.prefix.config import PrefixConfig
from mmpt.models.family import attention_modules, get_submodule

if TYPE_CHECKING:
    from mmpt.models import LoadedModel


def _kv_shape(module: nn.Module) -> tuple[int, int]:
    """(num_kv_heads, head_dim) of an attention module, read from its key projection."""
    head_dim = getattr(module, "head_dim", None)
    k_proj = getattr(module, "k_proj", None)
    if head_dim is None or not isinstance(k_proj, nn.Linear):
        raise ValueError(f"cannot read the key/value head layout of {type(module).__name__}")
    return k_proj.out_features // head_dim, head_dim


class PrefixEncoder(nn.Module):
    """Produces the prefixes of a group of same-shaped layers: (layers, 2, heads, length, head_dim).

    With ``reparam: none`` the prefixes are a parameter; with ``mlp`` they come from an embedding through
    Linear-Tanh-Linear (Li & Liang 2021), which :meth:`fold` turns into a plain parameter.
    """

    def __init__(self, layers: int, heads: int, length: int, head_dim: int, config: PrefixConfig) -> None:
        super().__init__()
        self.shape = (layers, 2, heads, length, head_dim)
        self.reparam = config.reparam
        self.dropout = nn.Dropout(config.dropout)
        if config.reparam == "none":
            self.prefix = nn.Parameter(torch.randn(self.shape) * config.init_std)
        else:
            width = layers * 2 * heads * head_dim
            self.embedding = nn.Parameter(torch.randn(length, config.mlp_hidden) * config.init_std)
            self.mlp = nn.Sequential(
                nn.Linear(config.mlp_hidden, config.mlp_hidden), nn.Tanh(), nn.Linear(config.mlp_hidden, width)
            )
            nn.init.normal_(self.mlp[2].weight, std=config.init_std)
            nn.init.zeros_(self.mlp[2].bias)

    def forward(self) -> torch.Tensor:
        if self.reparam == "none":
            out = self.prefix
        else:
            layers, two, heads, length, head_dim = self.shape
            flat = self.mlp(self.embedding)  # (length, layers * 2 * heads * head_dim)
            out = flat.view(length, layers, two, heads, head_dim).permute(1, 2, 3, 0, 4)
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
        del self.embedding, self.mlp
        self.prefix = nn.Parameter(value)
        self.reparam = "none"


class PrefixMethod(nn.Module):
    """Deep prefix tuning applied to a loaded model (see :class:`PrefixConfig`).

    Each chosen tower gets one :class:`PrefixEncoder`; every attention layer reads its slice as extra keys
    and values through :class:`~mmpt.methods.kv.KVInjection`.
    """

    def __init__(self, loaded: LoadedModel, config: PrefixConfig) -> None:
        super().__init__()
        self.config = config
        self.encoders = nn.ModuleDict()
        self.injections: list[KVInjection] = []
        device = next(loaded.model.parameters()).device
        for tower_name in config.towers:
            tower = loaded.family.tower(tower_name)
            if tower.kind == "cnn":
                raise ValueError(
                    f"tower '{tower_name}' of '{loaded.family.name}' is a CNN without attention; prefixes need "
                    f"a transformer tower ({', '.join(k for k, t in loaded.family.towers.items() if t.kind != 'cnn')})"
                )
            modules = attention_modules(loaded.model, tower)
            chosen = self._select_layers(modules, config.layers, tower_name)
            heads, head_dim = _kv_shape(chosen[0])
            if any(_kv_shape(m) != (heads, head_dim) for m in chosen):
                raise ValueError(f"tower '{tower_name}' mixes attention shapes; choose layers of one shape")
            encoder = PrefixEncoder(len(chosen), heads, config.length, head_dim, config).to(device)
            self.encoders[tower_name] = encoder
            if config.init == "text":
                self._init_from_text(loaded, encoder, chosen, config)
            providers = [self._provider(encoder, i) for i in range(len(chosen))]
            backbone = get_submodule(loaded.model, tower.backbone) if tower.backbone else None
            self.injections.append(KVInjection(chosen, providers, backbone))

    @staticmethod
    def _select_layers(modules: list[nn.Module], layers: list[int], tower: str) -> list[nn.Module]:
        if not layers:
            return modules
        n = len(modules)
        bad = [i for i in layers if not -n <= i < n]
        if bad:
            raise ValueError(f"tower '{tower}' has layers 0..{n - 1}; layer(s) {bad} do not exist")
        return [modules[i % n] for i in sorted({i % n for i in layers})]

    @staticmethod
    def _provider(encoder: PrefixEncoder, index: int):  # noqa: ANN205 - closure
        cache: dict[str, torch.Tensor] = {}

        def provide() -> tuple[torch.Tensor, torch.Tensor]:
            # One encoder call per forward pass would be ideal; the MLP is tiny so recomputation is cheap.
            out = encoder()
            cache["last"] = out
            return out[index, 0], out[index, 1]

        return provide

    @torch.no_grad()
    def _init_from_text(
        self, loaded: LoadedModel, encoder: PrefixEncoder, modules: list[nn.Module], config: PrefixConfig
    ) -> None:
        if config.reparam != "none":
            raise ValueError("init: text needs reparam: none (an MLP's output cannot be set directly)")
        tokenizer = loaded.processor.tokenizer
        ids = tokenizer(config.init_text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        reps = -(-config.length // ids.shape[1])
        ids = ids.repeat(1, reps)[:, : config.length].to(encoder.prefix.device)
        captured: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        hooks = []
        for i, m in enumerate(modules):
            def grab(mod: nn.Module, args: tuple, kwargs: dict, out: object, i: int = i) -> None:
                h = kwargs.get("hidden_states", args[0] if args else None)
                k = mod.k_proj(h).view(h.shape[0], h.shape[1], -1, mod.head_dim).transpose(1, 2)
                v = mod.v_proj(h).view(h.shape[0], h.shape[1], -1, mod.head_dim).transpose(1, 2)
                captured[i] = (k[0], v[0])
            hooks.append(m.register_forward_hook(grab, with_kwargs=True))
        for inj in self.injections:
            inj.set_active(False)
        try:
            loaded.model.language_model(input_ids=ids, use_cache=False)
        finally:
            for h in hooks:
                h.remove()
            for inj in self.injections:
                inj.set_active(True)
        for i, (k, v) in captured.items():
            encoder.prefix[i, 0] = k
            encoder.prefix[i, 1] = v

    def fold(self) -> None:
        """Fold MLP reparameterizations into plain prefixes (outputs unchanged)."""
        for encoder in self.encoders.values():
            encoder.fold()

    def remove(self) -> None:
        """Remove all prefixes: the model is exactly as before :func:`apply`."""
        for inj in self.injections:
            inj.remove()
        self.injections = []
        detach = getattr(self, "detach_from_model", None)
        if detach is not None:
            detach()
            del self.detach_from_model

    def set_active(self, active: bool) -> None:
        """Switch the prefixes off or on without removing them."""
        for inj in self.injections:
            inj.set_active(active)


def _apply(loaded: LoadedModel, config: PrefixConfig) -> PrefixMethod:
    return PrefixMethod(loaded, config)


register_method(MethodEntry("prefix", PrefixConfig, _apply, "deep prefix tuning: learned K/V prefixes at every layer"))
