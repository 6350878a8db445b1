"""``answer_head``: VQA as classification — a linear layer over a fixed answer list on pooled hidden states.

The classification-head variant of VQA for encoder-style use (as in VQAv2 classifiers over the 3,129 most frequent
answers): the tower's final hidden states are pooled (the last real token, which under left padding is the last
position, or the mean over real tokens; positions of input prompts are never pooled) and mapped to one logit per answer. With ``train.objective: classify``
the run trains it with cross-entropy (together with any other method of the stage, e.g. a prefix); evaluation
then predicts ``answers[argmax]`` instead of generating.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from mmpt.contract import CallArguments
from mmpt.method_configs import AnswerHeadConfig  # noqa: F401 - torch-free, with every method's config
from mmpt.methods.base import MethodEntry, detach_from_model, register_method
from mmpt.methods.prompt import without_inserted
from mmpt.models.family import get_submodule

if TYPE_CHECKING:
    from mmpt.models import LoadedModel


def answer_list(answers: list[str] | str) -> list[str]:
    """The answers: a list as given, or the lines of a text file (one answer per line)."""
    if isinstance(answers, list):
        return answers
    path = Path(answers)
    if not path.is_file():
        raise FileNotFoundError(f"answer_head.answers: answer list {path} not found (one answer per line)")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


class AnswerHeadMethod(nn.Module):
    """Pools the tower's output on every forward; :meth:`logits` maps the last pooled batch to answer logits."""

    def __init__(self, loaded: LoadedModel, config: AnswerHeadConfig) -> None:
        super().__init__()
        self.config = config
        self.answers = answer_list(config.answers)
        tower = loaded.family.tower(config.tower)
        if not tower.backbone:
            raise ValueError(f"answer_head needs a tower with a backbone module; '{config.tower}' has none")
        backbone = get_submodule(loaded.model, tower.backbone)
        width = backbone.get_input_embeddings().weight.shape[1]
        device = next(backbone.parameters()).device
        self.head = nn.Linear(width, len(self.answers), device=device)
        nn.init.zeros_(self.head.bias)
        nn.init.normal_(self.head.weight, std=0.02)
        self.index = {a: i for i, a in enumerate(self.answers)}
        self._mask: torch.Tensor | None = None
        self._outer_mask: torch.Tensor | None = None
        self._pooled: torch.Tensor | None = None
        self._handles = [
            backbone.register_forward_pre_hook(self._remember_mask, with_kwargs=True),
            backbone.register_forward_hook(self._pool),
        ]
        if loaded.model is not backbone:  # outer models may hand the backbone a 4D mask (PaliGemma)
            self._handles.append(loaded.model.register_forward_pre_hook(self._remember_outer_mask, with_kwargs=True))

    @staticmethod
    def _padding_mask(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
        mask = CallArguments(module, args, kwargs).mask()
        return mask if isinstance(mask, torch.Tensor) and mask.ndim == 2 else None

    def _remember_outer_mask(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self._outer_mask = self._padding_mask(module, args, kwargs)

    def _remember_mask(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        mask = self._padding_mask(module, args, kwargs)
        self._mask = mask if mask is not None else self._outer_mask

    def _pool(self, module: nn.Module, args: tuple[Any, ...], out: Any) -> None:
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        mask = self._mask
        if mask is None:  # no padding: every row ends at the last position
            mask = torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device)
        # input-prompt methods on the same tower put their tokens first (or after each row's padding in towers
        # with convolution mixers). Whichever hook runs first, only the real tokens are pooled: a mask the prompt
        # extended loses its prompt columns, hidden states the prompt has not stripped yet lose their prompt rows
        extra = mask.shape[1] - hidden.shape[1]
        if extra > 0:
            mask = without_inserted(mask, extra)
        elif extra < 0:
            hidden = hidden[:, -extra:]
        mask = mask.to(hidden.device)
        if self.config.pooling == "last":  # the last real token, whichever side the padding is on
            last = mask.shape[1] - 1 - mask.flip(-1).argmax(-1)
            self._pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        else:
            weights = mask.to(hidden.dtype).unsqueeze(-1)
            self._pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)

    def logits(self) -> torch.Tensor:
        """Answer logits for the batch of the latest forward pass."""
        if self._pooled is None:
            raise RuntimeError("answer_head: run the model forward first")
        return self.head(self._pooled.to(self.head.weight.dtype))

    def targets(self, answers: list[str]) -> torch.Tensor:
        """Class indices of ``answers`` (-100 for answers outside the list: ignored by the loss)."""
        return torch.tensor([self.index.get(a, -100) for a in answers], device=self.head.weight.device)

    def remove(self) -> None:
        """Remove the hooks (and the head from the model)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        detach_from_model(self)


register_method(MethodEntry("answer_head", AnswerHeadConfig, AnswerHeadMethod,
                            "VQA as classification: a linear head over a fixed answer list"))
