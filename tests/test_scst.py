"""SCST: CIDEr-D with corpus document frequencies, and the self-critical loss on mmpt-tiny-random."""

import numpy as np
import pytest
import torch
from pycocoevalcap.cider.cider import Cider

from conftest import make_tiny
from mmpt import methods
from mmpt.data import Sample
from mmpt.tasks.caption import (
    CiderD,
    SCSTCollator,
    append_continuations,
    group_by_image,
    scst_loss,
    sequence_log_probs,
    tokenize,
    trim_at_eos,
)

REFS = {
    "1": ["a dog runs on the grass", "a brown dog running in a field", "the dog is playing outside"],
    "2": ["a man rides a bike down the street", "a person cycling on a road"],
    "3": ["two cats sleep on a red couch", "cats lying on a sofa", "a pair of cats asleep on the couch"],
    "4": ["a plate of food with vegetables", "a dish of rice and vegetables on a table"],
}
HYPS = {"1": "a dog running on grass", "2": "a man on a bike", "3": "a cat on a red couch", "4": "a plate"}
CAPTIONS = [["a red square on a white background", "a red box"],
            ["a blue circle", "a round blue shape in the middle"]]


def test_cider_d_matches_pycocoevalcap():
    ids = list(REFS)
    _, expected = Cider().compute_score(REFS, {i: [HYPS[i]] for i in ids})
    scores = CiderD(REFS.values()).scores([HYPS[i] for i in ids], [REFS[i] for i in ids])
    np.testing.assert_allclose(scores, expected, atol=1e-6)
    assert scores.max() > 0
    # a larger df corpus: pycocoevalcap scoring every corpus image gives the same per-image scores
    corpus = {**REFS, "5": ["a dog on a couch", "a red bike"], "6": ["a man and a dog", "the street at night"]}
    hyps = {**HYPS, "5": "a dog", "6": "a man"}
    _, expected = Cider().compute_score(corpus, {i: [hyps[i]] for i in corpus})
    scores = CiderD(corpus.values()).scores([hyps[i] for i in ids], [REFS[i] for i in ids])
    np.testing.assert_allclose(scores, expected[: len(ids)], atol=1e-6)


def test_cider_d_corpus_df_and_tokenization():
    scorer = CiderD(REFS.values())
    refs = [REFS["1"], REFS["1"], REFS["1"]]
    scores = scorer.scores([REFS["1"][0], "zebra xylophone quantum", ""], refs)
    assert scores[0] > scores[1] == 0 and scores[2] == 0
    # the reward of a caption does not depend on what else is scored with it
    alone = scorer.scores([HYPS["1"]], [REFS["1"]])[0]
    assert alone > 0 and alone == scorer.scores([HYPS["1"], HYPS["2"]], [REFS["1"], REFS["2"]])[0]
    assert tokenize("A Dog's  toy, RED.") == "a dog s toy red"
    assert scorer.scores(["A dog runs on the grass!"], [REFS["1"]])[0] == scores[0]


def test_group_by_image_and_collator(images):
    samples = [Sample(images[0], "describe", c, image_id=7) for c in CAPTIONS[0]]
    samples.append(Sample(images[1], "describe", CAPTIONS[1][0], image_id=8, answers=tuple(CAPTIONS[1])))
    grouped = group_by_image(samples)
    assert [s.references for s in grouped] == [tuple(CAPTIONS[0]), tuple(CAPTIONS[1])]
    batch = SCSTCollator(make_tiny().processor)(grouped)
    assert batch["references"] == CAPTIONS and "labels" not in batch and batch["pixel_values"].shape[0] == 2


def test_append_continuations_labels_only_the_continuation():
    ids = torch.tensor([[0, 0, 5, 6], [7, 8, 9, 4]])
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    conts = trim_at_eos(torch.tensor([[11, 2, 2], [12, 13, 14]]), eos_token_id=2)
    assert conts == [[11, 2], [12, 13, 14]]
    out = append_continuations(ids, mask, conts, pad_token_id=0)
    assert out["input_ids"].tolist() == [[0, 0, 0, 5, 6, 11, 2], [7, 8, 9, 4, 12, 13, 14]]
    assert out["attention_mask"].tolist() == [[0, 0, 0, 1, 1, 1, 1], [1] * 7]
    assert out["labels"].tolist() == [[-100] * 5 + [11, 2], [-100] * 4 + [12, 13, 14]]


@pytest.fixture
def setup(images):
    loaded = make_tiny()
    method = methods.apply(loaded, methods.PrefixConfig(length=2))
    loaded.model.train()
    inputs = loaded.processor(images[:2], ["describe the image.", "describe the image."])
    return loaded, method, inputs, CiderD(CAPTIONS)


@pytest.mark.parametrize("baseline", ["greedy", "mean"])
def test_scst_loss_trains_only_the_method(setup, baseline):
    loaded, method, inputs, scorer = setup
    # random captions all score 0 against real references: give distinct rewards so there is a signal
    scorer.scores = lambda hyps, refs: np.arange(len(hyps), dtype=float)
    loaded.model.vision.eval()  # a frozen tower kept in eval mode stays so
    torch.manual_seed(0)
    loss, stats = scst_loss(loaded.model, loaded.processor, inputs, CAPTIONS, scorer, num_samples=2,
                            max_new_tokens=4, baseline=baseline)
    assert loss.dim() == 0 and torch.isfinite(loss) and loss.grad_fn is not None and loss.item() != 0
    assert stats["reward"] == 1.5 and 1 <= stats["length"] <= 4
    assert stats["baseline"] == (0.5 if baseline == "greedy" else 1.5)
    assert loaded.model.language_model.training and not loaded.model.vision.training  # modes restored
    loss.backward()
    trained = {id(p) for p in method.parameters()}
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in method.parameters())
    assert all(p.grad is None for p in loaded.model.parameters() if id(p) not in trained)


def test_equal_rewards_give_no_signal_with_mean_baseline(setup):
    loaded, method, inputs, scorer = setup
    scorer.scores = lambda hyps, refs: np.full(len(hyps), 0.7)
    loss, stats = scst_loss(loaded.model, loaded.processor, inputs, CAPTIONS, scorer, num_samples=3,
                            max_new_tokens=4, baseline="mean")
    assert abs(loss.item()) < 1e-12 and stats["reward"] == pytest.approx(stats["baseline"]) == 0.7
    loss.backward()
    assert all(p.grad is None or p.grad.abs().max() < 1e-10 for p in method.parameters())


def test_log_probs_match_cross_entropy(setup):
    """The teacher-forced log-probability of a caption equals minus the model's own summed CE loss."""
    loaded, _, inputs, _ = setup
    loaded.model.eval()
    answer = loaded.processor.answer_ids("a red box")
    teacher = append_continuations(inputs["input_ids"], inputs["attention_mask"], [answer, answer], 2)
    with torch.no_grad():
        lp = sequence_log_probs(loaded.model, teacher, inputs["pixel_values"])
        prompts = ["describe the image."] * 2
        reference = loaded.processor(list(inputs["pixel_values"]), prompts, ["a red box"] * 2)
        assert torch.equal(reference["labels"], teacher["labels"])
        ce = loaded.model(**reference).loss * len(answer) * 2
    assert float(-lp.sum()) == pytest.approx(float(ce), rel=1e-4)
