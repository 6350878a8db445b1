"""Metrics against hand computations and the reference implementations (pycocoevalcap's COCOEvalCap path,
GT-Vision-Lab's vqaEval rules, MME's calculation.py rules)."""

from __future__ import annotations

import math
import shutil
import urllib.error

import pytest
from pycocoevalcap import eval as coco_eval

from mmpt.tasks import caption as metrics  # the caption metrics' module (Meteor, shutil patched below)
from mmpt.tasks.caption import caption_scores
from mmpt.tasks.instruct import mme_scores, parse_mme_answer
from mmpt.tasks.refexp import box_iou, grounding_scores
from mmpt.tasks.vqa import (
    normalize_vqa_answer,
    vqa_accuracy,
    vqa_scores,
)

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="caption metrics need Java")

# ------------------------------------------------------------------------------------------------ captions
PREDICTIONS = {
    "1": "A man is riding a horse.",
    "2": "",  # an empty generation must not break tokenization or any scorer
    "3": "A white plate with broccoli and rice.",
}
REFERENCES = {
    "1": ["A man rides a horse.", "A person riding a brown horse on a field."],
    "2": ["Two dogs play in the snow.", "Dogs playing."],
    "3": ["A plate with broccoli and rice.", "Food on a white\nplate."],
}


class _Coco:
    """The two members of a COCO object that COCOEvalCap reads."""

    def __init__(self, captions: dict[str, list[str]]) -> None:
        self.imgToAnns = {k: [{"image_id": k, "caption": c} for c in texts] for k, texts in captions.items()}

    def getImgIds(self) -> list[str]:  # noqa: N802 (pycocotools' name)
        return list(self.imgToAnns)


class _NoSpice:
    def compute_score(self, gts, res):
        return 0.0, []

    def method(self) -> str:
        return "SPICE"


class _FakeMeteor:
    """Stands in for METEOR (a 6 s Java start) where a test is about the other metrics."""

    def compute_score(self, gts, res):
        return 0.25, [0.25] * len(gts)

    def method(self) -> str:
        return "METEOR"


# METEOR of PREDICTIONS vs REFERENCES from COCOEvalCap.evaluate() itself (pycocoevalcap 1.2, meteor-1.5.jar),
# pinned so that the file starts the METEOR JVM (about 6 s) once.
COCO_EVAL_CAP_METEOR = 0.3288704075741632


@pytest.fixture(scope="module")
def caption_run():
    """Our scores (real METEOR, its instances recorded) and COCOEvalCap's on the same inputs."""
    started = []

    class RecordingMeteor(metrics.Meteor):
        def __init__(self) -> None:
            super().__init__()
            started.append(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(metrics, "Meteor", RecordingMeteor)
        ours = caption_scores(PREDICTIONS, REFERENCES)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(coco_eval, "Spice", _NoSpice)  # SPICE needs CoreNLP, downloaded on first use
        mp.setattr(coco_eval, "Meteor", _FakeMeteor)  # pinned above instead
        ref = coco_eval.COCOEvalCap(_Coco(REFERENCES), _Coco({k: [v] for k, v in PREDICTIONS.items()}))
        ref.evaluate()
    return ours, {**ref.eval, "METEOR": COCO_EVAL_CAP_METEOR}, started


@needs_java
def test_caption_scores_match_coco_eval_cap(caption_run):
    ours, ref, _ = caption_run
    names = {
        "bleu1": "Bleu_1", "bleu2": "Bleu_2", "bleu3": "Bleu_3", "bleu4": "Bleu_4",
        "meteor": "METEOR", "rouge_l": "ROUGE_L", "cider": "CIDEr",
    }  # fmt: skip
    for ours_name, ref_name in names.items():
        assert ours[ours_name] == pytest.approx(ref[ref_name], rel=1e-9), ours_name
        assert isinstance(ours[ours_name], float)
    assert ours["n"] == 3 and "spice" not in ours
    assert 0 < ours["bleu4"] < ours["bleu1"] < 1 and 0 < ours["meteor"] < 1 and ours["cider"] > 0


@needs_java
def test_meteor_process_is_closed(caption_run):
    _, _, started = caption_run
    assert len(started) == 1
    assert started[0].meteor_p.poll() is not None  # ended, not left for the garbage collector


@pytest.fixture
def fake_meteor(monkeypatch):
    monkeypatch.setattr(metrics, "Meteor", _FakeMeteor)


@needs_java
def test_perfect_and_disjoint_captions(fake_meteor):
    refs = {"a": ["a man rides a brown horse", "someone on a horse"], "b": ["two dogs play in the snow"]}
    perfect = caption_scores({"a": "A man rides a brown horse.", "b": "Two dogs play in the snow"}, refs)
    for k in range(1, 5):
        assert perfect[f"bleu{k}"] == pytest.approx(1.0, abs=1e-6)
    assert perfect["rouge_l"] == pytest.approx(1.0)
    assert perfect["meteor"] == 0.25  # the stand-in
    disjoint = caption_scores({"a": "purple elephants", "b": "green"}, refs)
    for name in ("bleu1", "bleu2", "bleu3", "bleu4", "rouge_l", "cider"):
        assert disjoint[name] == pytest.approx(0.0, abs=1e-6), name


@needs_java
def test_bleu_by_hand(fake_meteor):
    # Unigram..trigram precision 3/3, 2/2, 1/1; brevity penalty exp(1 - 6/3) = exp(-1).
    s = caption_scores({"x": "The cat sat"}, {"x": ["the cat sat on the mat"]})
    assert s["bleu1"] == pytest.approx(math.exp(-1), rel=1e-6)
    assert s["bleu3"] == pytest.approx(math.exp(-1), rel=1e-6)
    assert s["cider"] == 0.0  # one id: every idf is log(1) = 0


@needs_java
def test_cider_d_by_hand(fake_meteor):
    # 2 ids, one reference each; every n-gram has idf log(2) - log(max(1, df)) = log(2).
    # "red car" vs itself: cosine 1 for 1- and 2-grams, 0 for 3-/4-grams -> mean 0.5 -> x10 = 5.
    # "blue sea" vs "blue sky": unigram cosine 1/2, the rest 0 -> 0.125 -> 1.25. Corpus: (5 + 1.25) / 2.
    s = caption_scores({"p": "Red car.", "q": "blue sea"}, {"p": ["red car"], "q": ["blue sky"]})
    assert s["cider"] == pytest.approx(3.125)


@needs_java
def test_all_empty_captions_do_not_crash(fake_meteor):
    s = caption_scores({"p": "", "q": " "}, {"p": [""], "q": ["..."]})
    assert s["cider"] == 0.0 and s["n"] == 2


def test_mismatched_ids_are_named():
    with pytest.raises(ValueError, match=r"without references: b.*without a prediction: c"):
        caption_scores({"a": "x", "b": "y"}, {"a": ["x"], "c": ["z"]})
    with pytest.raises(ValueError, match="empty reference list: a"):
        caption_scores({"a": "x"}, {"a": []})


def test_missing_java_is_explained(monkeypatch):
    monkeypatch.setattr(metrics.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match=r"need Java \(install with `sudo apt-get install -y default-jre"):
        caption_scores({"a": "x"}, {"a": ["x"]})


@needs_java
def test_spice_unavailable_warns(fake_meteor, monkeypatch):
    class NoCoreNLP:
        def __init__(self) -> None:
            raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(metrics, "Spice", NoCoreNLP)
    with pytest.warns(UserWarning, match="SPICE skipped: it needs Stanford CoreNLP .*Name or service"):
        s = caption_scores({"a": "a dog"}, {"a": ["a dog"]}, spice=True)
    assert "spice" not in s and s["bleu1"] == pytest.approx(1.0, abs=1e-6)

    class FakeSpice:
        def compute_score(self, gts, res):
            return 0.5, []

    monkeypatch.setattr(metrics, "Spice", FakeSpice)
    assert caption_scores({"a": "a dog"}, {"a": ["a dog"]}, spice=True)["spice"] == 0.5


def test_no_captions():
    s = caption_scores({}, {})
    assert s["n"] == 0 and math.isnan(s["cider"])


# ----------------------------------------------------------------------------------------------------- VQA
def test_vqa_leave_one_out():
    others = ["1", "3", "4", "5", "6", "7", "8"]
    assert vqa_accuracy("2", ["2"] * 3 + others) == pytest.approx(0.9)  # (7 * 1 + 3 * 2/3) / 10
    assert vqa_accuracy("2", ["2"] + others + ["9", "0"]) == pytest.approx(0.3)  # 9 * (1/3) / 10
    assert vqa_accuracy("2", ["2"] * 4 + others[:6]) == 1.0
    assert vqa_accuracy("2", ["2", "2", "9"] + others) == pytest.approx((8 * 2 / 3 + 2 * 1 / 3) / 10)
    assert vqa_accuracy("11", ["2"] * 3 + others) == 0.0
    assert vqa_accuracy("cat", ["cat"]) == 1.0 and vqa_accuracy("dog", ["cat"]) == 0.0
    with pytest.raises(ValueError):
        vqa_accuracy("cat", [])


def test_vqa_normalization():
    assert normalize_vqa_answer("Two") == "2"
    assert normalize_vqa_answer("none") == "0"
    assert normalize_vqa_answer("the dog.") == "dog"
    assert normalize_vqa_answer(" yes.\n") == "yes"
    assert normalize_vqa_answer("dont") == "don't"
    assert normalize_vqa_answer("3.5") == "3.5"
    assert normalize_vqa_answer("1,000") == "1000"  # digit,digit: every listed punctuation deleted
    assert normalize_vqa_answer("red, blue") == "red blue"  # touches a space: deleted
    assert normalize_vqa_answer("red,blue") == "red blue"  # otherwise: replaced by a space
    assert normalize_vqa_answer("red,blue 1,2") == "redblue 12"
    assert normalize_vqa_answer("An Apple!") == "apple"
    mixed = ["2"] * 4 + ["3"] * 6
    assert vqa_accuracy("Two", mixed) == 1.0
    assert vqa_accuracy("the dog.", ["dog"] * 5 + ["cat"] * 5) == 1.0
    assert vqa_accuracy("yes.", ["yes"] * 9 + ["no"]) == 1.0


def test_vqa_identical_answers_skip_normalization():
    # vqaEval.py processes answers and prediction only when the answers are not all the same.
    assert vqa_accuracy("two", ["2"] * 10) == 0.0
    assert vqa_accuracy("Yes", ["yes"] * 10) == 0.0
    assert vqa_accuracy(" yes\n", ["yes"] * 10) == 1.0  # only \n/\t and the ends
    assert vqa_accuracy("Yes", ["yes"] * 9 + ["no"]) == 1.0


def test_vqa_scores_per_kind():
    answers = [["2"] * 10, ["yes"] * 10, ["red"] * 3 + ["blue"] * 7]
    s = vqa_scores(["2", "no", "red"], answers, ["number", "yes/no", "other"])
    assert s["vqa_accuracy"] == pytest.approx((1 + 0 + 0.9) / 3)
    assert s["vqa_accuracy/number"] == 1.0 and s["vqa_accuracy/yes/no"] == 0.0
    assert s["vqa_accuracy/other"] == pytest.approx(0.9) and s["n"] == 3
    with pytest.raises(ValueError):
        vqa_scores(["a"], [])


# --------------------------------------------------------------------------------------------------- boxes
def test_box_iou_by_hand():
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_iou((0, 0, 10, 10), (10, 0, 20, 10)) == 0.0  # touching edges
    assert box_iou((0, 0, 10, 10), (30, 30, 40, 40)) == 0.0
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)  # half of each overlaps
    assert box_iou((0, 0, 10, 10), (0, 0, 5, 10)) == 0.5
    assert box_iou((5, 5, 5, 9), (0, 0, 10, 10)) == 0.0  # degenerate box


def test_grounding_scores():
    gold = [(0, 0, 10, 10)] * 4
    predicted = [(0, 0, 10, 10), (0, 0, 5, 10), (0, 0, 4, 10), None]  # IoU 1, exactly 0.5, 0.4, unparsed
    s = grounding_scores(predicted, gold)
    assert s["acc@0.5"] == 0.5 and s["unparsed"] == 1 and s["n"] == 4
    assert s["miou"] == pytest.approx((1 + 0.5 + 0.4 + 0) / 4)
    with pytest.raises(ValueError):
        grounding_scores([None], [])


# ----------------------------------------------------------------------------------------------------- MME
def test_mme_parsing():
    assert parse_mme_answer("Yes, there is") == "yes"
    assert parse_mme_answer(" NO.") == "no"
    assert parse_mme_answer("Not sure") == "no"  # "no" within the first 4 characters, as officially
    assert parse_mme_answer("The answer is yes") == "other"


def test_mme_scores_by_hand():
    records = [
        ("existence", "i1", "yes", "yes"),
        ("existence", "i1", "No", "no"),  # i1: both right
        ("existence", "i2", "Yes, there is", "yes"),
        ("existence", "i2", "yes", "no"),  # i2: one right
        ("count", "i3", "no", "yes"),
        ("count", "i3", "I think so", "no"),  # "other": wrong
    ]
    s = mme_scores(records)
    assert s["mme/existence/acc"] == 0.75 and s["mme/existence/acc_plus"] == 0.5
    assert s["mme/existence/score"] == pytest.approx(125.0)
    assert s["mme/count/acc"] == 0.0 and s["mme/count/score"] == 0.0
    assert s["mme/acc"] == 0.5 and s["mme/acc_plus"] == pytest.approx(1 / 3)
    assert s["mme/score"] == pytest.approx(125.0) and s["mme/perception"] == pytest.approx(125.0)
    assert "mme/cognition" not in s and s["n"] == 6
    with pytest.raises(ValueError, match="yes/no"):
        mme_scores([("count", "i", "yes", "maybe")])
