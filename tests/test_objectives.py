"""Training objectives: the loss from the label positions' logits equals the full computation, for every family
and for methods that lengthen the sequence; the ranking / answer-head / SCST routes slice too."""

import pytest
import torch

from conftest import ANSWERS, PROMPTS, make_tiny, randomize
from mmpt import methods, models
from mmpt.contract import ContractError
from mmpt.methods import (
    AnswerHeadConfig,
    DeepPromptConfig,
    LoRAConfig,
    M2PTConfig,
    PrefixConfig,
    PromptConfig,
)
from mmpt.models.families import FAMILY_MODULES
from mmpt.tasks.objectives import (
    IGNORE_INDEX,
    TrainingError,
    answer_loss,
    build_objective,
    keeps_logits,
    label_tail,
    one_logit,
)


def _nudge(method, seed=5):
    with torch.no_grad():
        for p in method.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(seed)) * 0.1)


def _full_and_sliced(model, batch, params):
    """(loss, gradients) of the model's own full-logit loss and of :func:`answer_loss`."""
    out = []
    for compute in (lambda: model(**batch, use_cache=False).loss, lambda: answer_loss(model, batch)):
        for p in params:
            p.grad = None
        loss = compute()
        loss.backward()
        out.append((loss.detach(), [p.grad.clone() for p in params]))
    return out


def _assert_same(full, sliced):
    """Equal up to fp32 summation order: losses to 1e-5 relative, gradients to 1e-5 of their largest entry."""
    torch.testing.assert_close(sliced[0], full[0], rtol=1e-5, atol=1e-6)
    for a, b in zip(sliced[1], full[1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()) + 1e-8)


TINY_METHODS = [PrefixConfig(length=3), PromptConfig(length=3), DeepPromptConfig(length=2, tower="lm"),
                M2PTConfig(visual_length=1, text_length=2, frame_width=8), LoRAConfig(r=2)]


@pytest.mark.parametrize("config", TINY_METHODS, ids=lambda c: c.name)
def test_sliced_loss_equals_full_loss_on_tiny(config, images):
    """mmpt-tiny: the loss and the method's gradients from the label positions' logits equal the full ones,
    also when the method puts tokens in front (prompt, deep prompt, M2PT)."""
    loaded = make_tiny()
    method = methods.apply(loaded, config)
    _nudge(method)
    batch = loaded.processor(images, PROMPTS, ANSWERS)
    assert keeps_logits(loaded.model)
    _assert_same(*_full_and_sliced(loaded.model, batch, list(method.parameters())))


def test_sliced_loss_with_labels_anywhere(images):
    """Labels in the middle of rows (earlier assistant turns, right padding): the tail reaches back to the first."""
    loaded = make_tiny()
    method = methods.apply(loaded, PrefixConfig(length=2))
    _nudge(method)
    batch = loaded.processor(images, PROMPTS, ANSWERS)
    labels = torch.full_like(batch["input_ids"], IGNORE_INDEX)
    gen = torch.Generator().manual_seed(0)
    picked = torch.rand(labels.shape, generator=gen) < 0.2
    picked[:, :46] = False
    picked[0, 45] = True
    labels[picked & batch["attention_mask"].bool()] = batch["input_ids"][picked & batch["attention_mask"].bool()]
    batch["labels"] = labels
    assert label_tail(labels) == labels.shape[1] - 45 + 1
    _assert_same(*_full_and_sliced(loaded.model, batch, list(method.parameters())))


def test_label_tail_bounds():
    labels = torch.full((2, 6), IGNORE_INDEX)
    with pytest.raises(TrainingError, match="no labelled token"):
        label_tail(labels)
    labels[1, 0] = 5  # a label at position 0 has no predicting logit (transformers ignores it too)
    assert label_tail(labels) == 6
    labels[1, 0], labels[0, 4] = IGNORE_INDEX, 5
    assert label_tail(labels) == 3


def _family_batch(family, model):
    batch = FAMILY_MODULES[family].tiny_inputs(model, [5, 2, 7])
    if model.config.is_encoder_decoder:  # labels are decoder targets
        batch.pop("decoder_input_ids", None)
        gen = torch.Generator().manual_seed(1)
        batch["labels"] = torch.randint(3, 900, (batch["input_ids"].shape[0], 4), generator=gen)
        batch["labels"][0, -1] = IGNORE_INDEX
        return batch
    labels = torch.full_like(batch["input_ids"], IGNORE_INDEX)
    for i, n in enumerate((2, 1, 3)):  # each row's last n tokens are its "answer"
        labels[i, -n:] = batch["input_ids"][i, -n:]
    batch["labels"] = labels
    return batch


@pytest.mark.parametrize("family", sorted(FAMILY_MODULES))
def test_sliced_loss_equals_full_loss_on_families(family):
    """Every registered family: equal loss and prefix gradients; which route it takes is the family's."""
    loaded = models.load(f"{family}-tiny-random")
    randomize(loaded.model, 0.3, 0)
    method = methods.apply(loaded, PrefixConfig(length=2, towers=["decoder"] if family == "florence2" else ["lm"]))
    _nudge(method)
    batch = _family_batch(family, loaded.model)
    # encoder-decoder targets; BLIP's label-smoothed loss; BLIP-2's and InstructBLIP's forwards do not name logits_to_keep
    own_loss = family in ("florence2", "blip", "blip2", "instructblip")
    assert keeps_logits(loaded.model) is not own_loss
    _assert_same(*_full_and_sliced(loaded.model, batch, list(method.parameters())))


def test_model_that_ignores_logits_to_keep_is_refused(images):
    """A forward that takes the argument but returns every position would misalign labels: ContractError."""
    loaded = make_tiny()
    batch = loaded.processor(images, PROMPTS, ANSWERS)
    lm = loaded.model.language_model
    real = lm.forward

    def full_logits(*args, logits_to_keep=0, **kwargs):
        return real(*args, **kwargs)

    lm.forward = full_logits
    try:
        with pytest.raises(ContractError, match="logits_to_keep"):
            answer_loss(loaded.model, batch)
    finally:
        del lm.forward


def test_answer_head_objective_keeps_one_logit(images):
    loaded = make_tiny()
    head = methods.apply(loaded, AnswerHeadConfig(answers=ANSWERS))
    assert one_logit(loaded.model) == {"logits_to_keep": 1}

    class Train:
        scst_samples, scst_max_new_tokens, scst_baseline = 1, 4, "greedy"

    from mmpt.data import Sample

    samples = [Sample(image=im, prompt=p, target=a) for im, p, a in zip(images, PROMPTS, ANSWERS, strict=True)]
    objective = build_objective("classify", "vqa", loaded.processor, {"answer_head": head}, samples, Train())
    batch = objective.collate(samples)
    loss, _ = objective.loss(loaded.model, dict(batch), lambda: torch.autocast("cpu", enabled=False))
    loaded.model(**{k: v for k, v in batch.items() if k != "class_labels"}, use_cache=False)
    expected = torch.nn.functional.cross_entropy(head.logits(), batch["class_labels"])
    torch.testing.assert_close(loss, expected)
    with pytest.raises(TrainingError, match="needs|trains an answer_head"):
        build_objective("classify", "vqa", loaded.processor, {}, samples, Train())
    with pytest.raises(TrainingError, match="scst"):
        build_objective("scst", "vqa", loaded.processor, {}, samples, Train())
