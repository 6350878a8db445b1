"""Frozen towers computed once: a vision tower that nothing trains or hooks gives the same features for the same
pixels, so its output per image is kept and served again (later questions on the same image, later epochs,
the evaluation after training).

Exact by construction, and checked: an entry is keyed by the bytes of the image's pixel row, and the cache serves
only while the tower is frozen (no parameter requires a gradient), carries no hook of a method (visual prompts,
deep prompts in the tower) and runs in eval mode (mmpt-tiny's EfficientNet always does). Inputs that need a
gradient (FGSM attacks) pass through. If any of that changes while the cache is installed, the next forward
raises :class:`~mmpt.contract.ContractError` instead of serving stale features.

Installed by the training loop for ``train.cache_frozen_towers: true`` (the default) on mmpt's own VLMs, whose
tower maps ``(B, 3, H, W)`` pixels to ``(B, N, D)`` features row by row.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from mmpt.contract import ContractError

if TYPE_CHECKING:
    from mmpt.models import LoadedModel

DEFAULT_BUDGET = 2 << 30
"""Bytes of features a cache keeps at most (2 GiB: ~8,500 mmpt-tiny images); later images are computed as usual."""


class TowerCache:
    """Serves a frozen tower's per-image outputs from memory; see the module docstring.

    Attributes:
        hits, misses: rows served from the cache / computed.
        enabled: switch serving off (and on) without removing the cache.
    """

    def __init__(self, tower: nn.Module, name: str, budget: int = DEFAULT_BUDGET) -> None:
        self.tower, self.name, self.budget = tower, name, budget
        self.entries: dict[bytes, torch.Tensor] = {}
        self.bytes = 0
        self.hits = self.misses = 0
        self.enabled = True
        self._versions = _versions(tower)
        self._forward = tower.forward
        tower.forward = self._cached_forward  # an instance attribute: remove() deletes it, the class is untouched

    def _check(self) -> None:
        changed = [n for n, v in _versions(self.tower).items() if self._versions.get(n) != v]
        hooked = [n or "(the tower)" for n, m in self.tower.named_modules() if _hooked_module(m)]
        training = [n for n, m in self.tower.named_modules() if n and m.training]
        if changed or hooked or training:
            why = (f"weight {changed[0]} changed since its features were cached" if changed else
                   f"module {hooked[0]} carries a method's hook" if hooked else
                   f"module {training[0]} is in train mode (dropout, batch statistics)")
            raise ContractError(f"the cached '{self.name}' tower is no longer frozen and untouched ({why}); its "
                                "cached features would be stale. Remove the cache (train.cache_frozen_towers=false) "
                                "before training or hooking the tower")

    def _cached_forward(self, pixel_values: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if not self.enabled or args or kwargs or not isinstance(pixel_values, torch.Tensor) or (
                pixel_values.requires_grad):
            return self._forward(pixel_values, *args, **kwargs)
        self._check()
        keys = [_key(row) for row in pixel_values]
        missing = [i for i, k in enumerate(keys) if k not in self.entries]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if missing:
            computed = self._forward(pixel_values[missing])
            if not isinstance(computed, torch.Tensor) or computed.shape[0] != len(missing):
                raise ContractError(f"the '{self.name}' tower returned {type(computed).__name__} "
                                    f"{tuple(getattr(computed, 'shape', ()))} for {len(missing)} images; the tower "
                                    "cache needs one feature row per image")
            fresh = dict(zip((keys[i] for i in missing), computed.detach(), strict=True))
            if len(missing) == len(keys):
                self._store(fresh)
                return computed
            self._store(fresh)
        else:
            fresh = {}
        return torch.stack([fresh[k] if k in fresh else self.entries[k] for k in keys])

    def _store(self, rows: dict[bytes, torch.Tensor]) -> None:
        for key, row in rows.items():
            size = row.numel() * row.element_size()
            if key not in self.entries and self.bytes + size <= self.budget:
                self.entries[key] = row
                self.bytes += size

    def serves(self, trainable: Iterable[nn.Parameter]) -> bool:
        """Whether the cache may go on serving while ``trainable`` trains: none of them is the tower's and no
        method hooks it (its weights have not changed since the entries were computed: the caller removes the
        cache before a stage that trains the tower)."""
        owned = {id(p) for p in self.tower.parameters()}
        return not any(id(p) in owned for p in trainable) and not _hooked(self.tower)

    def clear(self) -> None:
        """Forget every cached row."""
        self.entries.clear()
        self.bytes = 0

    def remove(self) -> None:
        """Give the tower its own forward back and free the cache."""
        if self.tower.__dict__.get("forward") == self._cached_forward:
            del self.tower.forward
        self.clear()


def _versions(tower: nn.Module) -> dict[str, int]:
    """Each parameter's and buffer's in-place version counter: any update (an optimizer step, ``load_state_dict``)
    moves it."""
    return {n: t._version for n, t in [*tower.named_parameters(), *tower.named_buffers()]}


def _hooked_module(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks)


def _hooked(tower: nn.Module) -> bool:
    return any(_hooked_module(m) for m in tower.modules())


def _key(row: torch.Tensor) -> bytes:
    """A digest of one image's pixels (shape, dtype and bytes)."""
    data = row.detach().contiguous().cpu()
    digest = hashlib.blake2b(str((tuple(data.shape), data.dtype)).encode(), digest_size=20)
    digest.update(data.view(torch.uint8).numpy().tobytes() if data.dtype == torch.bfloat16 else data.numpy().tobytes())
    return digest.digest()


def cache_frozen_towers(loaded: LoadedModel, trainable: Iterable[nn.Parameter],
                        budget: int = DEFAULT_BUDGET) -> TowerCache | None:
    """A :class:`TowerCache` on the vision tower of one of mmpt's own VLMs when nothing in ``trainable`` (the
    parameters about to train) belongs to it and no method hooks it; None where it does not apply (another
    model class, a trained or hooked tower)."""
    from mmpt.models.vlm import VisionLanguageModel

    model = loaded.model
    if not isinstance(model, VisionLanguageModel):
        return None
    tower = model.vision
    owned = {id(p) for p in tower.parameters()}
    if any(id(p) in owned for p in trainable):
        return None
    if _hooked(tower):
        return None
    if "forward" in tower.__dict__:  # already cached or patched by someone else
        return None
    return TowerCache(tower, "vision", budget)
