"""The papers' analyses: hand-computed cases, three families, and the commands end to end on mmpt-tiny-random."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from conftest import randomize
from mmpt import methods, models
from mmpt.analysis.ablate import learned_vectors, noise_like
from mmpt.analysis.common import Subject, tower_features
from mmpt.analysis.fgsm import attack_direction, perturb
from mmpt.analysis.rank import average_spectra, effective_rank, low_rank, normalized_spectrum
from mmpt.analysis.similarity import captured_keys, key_similarity, prefix_keys
from mmpt.cli import main
from mmpt.methods import PrefixConfig
from mmpt.models.families import FAMILY_MODULES
from mmpt.runconfig import load_run_config

FAMILIES = ["llava", "paligemma", "internvl", "gemma3"]


def _matrix(singular: list[float], tokens: int, width: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(tokens, tokens, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(width, width, generator=gen, dtype=torch.float64))
    s = torch.zeros(tokens, width, dtype=torch.float64)
    s[range(len(singular)), range(len(singular))] = torch.tensor(singular, dtype=torch.float64)
    return u @ s @ v.T


def test_effective_rank_of_a_known_spectrum():
    spectrum = normalized_spectrum(_matrix([4, 3, 2, 1], tokens=4, width=8))
    assert spectrum.tolist() == pytest.approx([0.4, 0.3, 0.2, 0.1])
    assert effective_rank(spectrum) == 0.75  # 0.4 + 0.3 + 0.2 reaches 0.9 with 3 of 4 values
    assert effective_rank(spectrum, 0.95) == 1.0
    assert effective_rank(normalized_spectrum(_matrix([1.0] * 10, 10, 12))) == pytest.approx(0.9)  # flat: 9 of 10
    assert effective_rank(normalized_spectrum(_matrix([5.0], 6, 6))) == pytest.approx(1 / 6)  # rank one
    with pytest.raises(ValueError, match="all zeros"):
        normalized_spectrum(torch.zeros(3, 4))


def test_spectra_of_different_sizes_are_zero_padded():
    mean = average_spectra([torch.tensor([0.5, 0.5]), torch.tensor([1.0, 0.0, 0.0])])
    assert mean.tolist() == pytest.approx([0.75, 0.25, 0.0])
    assert effective_rank(mean) == pytest.approx(2 / 3)


def test_low_rank_keeps_the_top_directions():
    x = _matrix([4, 3, 2, 1], 5, 7).float()
    cut = low_rank(x, 2)
    assert torch.linalg.matrix_rank(cut) == 2
    assert torch.linalg.svdvals(cut)[:2].tolist() == pytest.approx([4, 3], abs=1e-4)
    assert low_rank(x, 5) is x


def test_fgsm_at_epsilon_zero_is_the_clean_input_and_steps_are_clipped():
    pixels = torch.zeros(2, 3, 4, 4)
    direction = torch.ones_like(pixels)
    assert perturb(pixels, direction, 0.0) is pixels
    norm = (torch.tensor([0.5, 0.5, 0.5]).view(3, 1, 1), torch.tensor([0.25, 0.5, 0.5]).view(3, 1, 1))
    stepped = perturb(pixels, direction, 0.1, norm)
    assert stepped[:, 0].unique().tolist() == pytest.approx([0.4])  # eps / std in normalized units
    assert stepped[:, 1].unique().tolist() == pytest.approx([0.2])
    assert perturb(pixels, direction, 0.9, norm)[:, 0].max() == pytest.approx(2.0)  # (1 - 0.5) / 0.25: the clip
    with pytest.raises(ValueError, match=">= 0"):
        perturb(pixels, direction, -0.1)


def test_noise_keeps_the_norm_of_every_matrix():
    prefix = torch.randn(2, 2, 3, 4, 5) * torch.arange(1, 4).view(1, 1, 3, 1, 1)
    noise = noise_like(prefix, torch.Generator().manual_seed(0))
    assert noise.shape == prefix.shape and not torch.allclose(noise, prefix)
    torch.testing.assert_close(noise.norm(dim=(-2, -1)), prefix.norm(dim=(-2, -1)))
    assert noise_like(torch.tensor([3.0, 4.0]), torch.Generator()).norm() == pytest.approx(5.0)


def test_frame_noise_has_the_visible_frames_norm_and_runs_draw_their_own_noise():
    """issue 17: frame noise was norm-matched over the whole image and masked afterwards (0.51-0.68x of the visible
    frame's norm), and one generator was shared across runs (a run's noise depended on the runs before it)."""
    from mmpt.analysis.ablate import subject_generator

    frame = torch.randn(3, 32, 32)
    mask = torch.ones(1, 32, 32)
    mask[:, 4:-4, 4:-4] = 0
    noise = noise_like(frame, torch.Generator().manual_seed(0), mask)
    assert (noise * (1 - mask)).abs().max() == 0  # nothing where the model does not look
    torch.testing.assert_close(noise.norm(dim=(-2, -1)), (frame * mask).norm(dim=(-2, -1)))
    first = torch.randn(4, generator=subject_generator(0, "runs/b"))
    subject_generator(0, "runs/a")  # another run drawn before it changes nothing
    assert torch.equal(torch.randn(4, generator=subject_generator(0, "runs/b")), first)
    assert not torch.equal(torch.randn(4, generator=subject_generator(0, "runs/a")), first)


def _family(name: str):
    loaded = models.load(f"{name}-tiny-random", seed=0)
    randomize(loaded.model, 0.3, 0)
    module = FAMILY_MODULES[name]
    return loaded, module.tiny_inputs(loaded.model, [5, 2, 7])


@pytest.mark.parametrize("family", FAMILIES)
def test_rank_features_split_image_and_text_tokens(family):
    loaded, batch = _family(family)
    subject = Subject("base", loaded)
    features, image, text = tower_features(subject, batch, "lm", -1)
    assert features.shape[:2] == batch["input_ids"].shape
    assert bool((image.sum(-1) > 1).all()) and bool((text.sum(-1) > 0).all())
    assert not bool((image & text).any()) and not bool((image | text)[~batch["attention_mask"].bool()].any())
    rank = effective_rank(average_spectra([normalized_spectrum(features[i][image[i]]) for i in range(3)]))
    assert 0 < rank <= 1
    vision, no_image, no_text = tower_features(subject, batch, "vision", -1)
    assert no_image is None and no_text is None and vision.ndim == 3


@pytest.mark.parametrize("family", FAMILIES[:3])
def test_similarity_of_a_prefix_made_from_a_tokens_own_key_is_one(family):
    loaded, batch = _family(family)
    method = methods.apply(loaded, PrefixConfig(length=3))
    keys, modules = prefix_keys(method, "lm")
    with torch.no_grad(), captured_keys(modules) as captured:
        loaded.model(**batch, use_cache=False)
    layer, position = len(modules) - 1, 4
    token_key = captured[layer][0][0, position]
    encoder = method.encoders["lm"]
    heads, head_dim = encoder.prefix.shape[2], encoder.prefix.shape[4]
    with torch.no_grad():
        encoder.prefix[layer, 0, :, 1] = token_key.view(heads, head_dim)
    keys, _ = prefix_keys(method, "lm")
    sim = key_similarity(keys[layer], captured[layer][0][0])
    assert sim[1, position].item() == pytest.approx(1.0, abs=1e-5)
    assert sim[0, position].item() < 0.99


@pytest.mark.parametrize("family", FAMILIES[:3])
def test_fgsm_step_raises_the_loss_and_ablation_noise_changes_the_prefix(family):
    loaded, batch = _family(family)
    method = methods.apply(loaded, PrefixConfig(length=3))
    with torch.no_grad():
        for p in method.parameters():
            p.normal_(0, 1.0, generator=torch.Generator().manual_seed(3))
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    batch = {**batch, "labels": labels}
    model = loaded.model
    direction = attack_direction(model, batch)
    assert direction.shape == batch["pixel_values"].shape and set(direction.unique().tolist()) <= {-1.0, 0.0, 1.0}
    with torch.no_grad():
        clean = model(**batch, use_cache=False).loss
        attacked = model(**{**batch, "pixel_values": perturb(batch["pixel_values"], direction, 1e-3)},
                         use_cache=False).loss
    assert attacked > clean
    with torch.no_grad():
        before = model(**batch, use_cache=False).logits
        for _, p, mask in learned_vectors(method):
            norm = p.norm(dim=(-2, -1))
            p.copy_(noise_like(p, torch.Generator().manual_seed(1), mask))
            torch.testing.assert_close(p.norm(dim=(-2, -1)), norm)
        assert not torch.allclose(model(**batch, use_cache=False).logits, before)


TINY = ["model.name=mmpt-tiny-random", "data.question_types=[yes_no]", "data.eval_question_types=[yes_no]",
        "train.batch_size=4", "train.precision=fp32", "train.lr=0.05", "eval.before=false", "eval.max_new_tokens=2"]


@pytest.fixture(scope="module")
def prefix_run(tmp_path_factory) -> Path:
    from mmpt.train import run

    out = tmp_path_factory.mktemp("analysis")
    config = load_run_config(None, [*TINY, "method={name: prefix, length: 2, reparam: mlp}", f"output_dir={out}",
                                    "data.train_size=8", "data.eval_size=4", "train.max_steps=2"])
    return Path(run(config, progress=False)["run_dir"])


def test_cost_is_recorded(prefix_run):
    cost = json.loads((prefix_run / "metrics.json").read_text())["cost"]
    assert cost["trainable_parameters"] > 0 and 0 < cost["trainable_percent"] < 100
    assert cost["wall_seconds"] >= cost["train_seconds"] > 0
    assert cost["seconds_per_100_samples"] > 0 and cost["peak_rss_mib"] > 100
    assert "gpu_hours" not in cost  # CPU run
    assert "peak memory" in (prefix_run / "report.md").read_text()


@pytest.mark.parametrize("analysis", ["rank", "fgsm", "ablate", "similarity"])
def test_analyze_commands_write_json_csv_png_markdown(prefix_run, analysis, tmp_path, capsys):
    extra = {"rank": ["--truncate", "2"], "ablate": ["--candidates", "answers"], "fgsm": ["--eps", "0,0.05"]}
    out = tmp_path / analysis
    base = [] if analysis in ("rank", "fgsm") else ["--no-base"]  # ablate/similarity: the run alone suffices
    assert main(["analyze", analysis, str(prefix_run), "--smoke", "--samples", "2", "--no-progress", "--out", str(out),
                 *base,
                 *extra.get(analysis, [])]) == 0
    files = {p.name for p in out.iterdir()}
    assert {f"{analysis}.json", f"{analysis}.csv", f"{analysis}.md", "analysis.json", "manifest.json"} <= files
    assert any(name.endswith(".png") for name in files)
    rows = json.loads((out / f"{analysis}.json").read_text())["rows"]
    assert {r["subject"] for r in rows} == ({"base", "run"} if analysis in ("rank", "fgsm") else {"run"})
    if analysis == "fgsm":  # epsilon 0 is the clean evaluation, whichever input is attacked
        clean = next(r["accuracy"] for r in rows if r["subject"] == "run" and r["epsilon"] == 0)
        assert main(["analyze", "fgsm", str(prefix_run), "--smoke", "--samples", "2", "--no-progress", "--no-base",
                     "--on", "text",
                     "--eps", "0,1.0", "--out", str(tmp_path / "text")]) == 0
        text = json.loads((tmp_path / "text" / "fgsm.json").read_text())["rows"]
        assert text[0]["epsilon"] == 0 and text[0]["accuracy"] == clean
        assert "embedding units" in (tmp_path / "text" / "fgsm.md").read_text()
    if analysis == "ablate":
        variants = [r["variant"] for r in rows if r["subject"] == "run"]
        assert variants == ["intact", "prefix -> noise (same norm)", "prefix removed"]
        assert all(0 <= r["top1"] <= r["top5"] <= 1 for r in rows)
    report = tmp_path / "report.md"
    main(["report", str(prefix_run), str(out), "--out", str(report)])
    text = report.read_text()
    assert f"## Analysis: {analysis}" in text and f"]({analysis}/" in text and "| run |" in text


def test_sweep_resumes_and_reports_mean_and_std(tmp_path, capsys):
    config = tmp_path / "sweep.yaml"
    overrides = dict(item.split("=", 1) for item in TINY)
    config.write_text(yaml.safe_dump({"name": "sw", "output_dir": str(tmp_path / "runs"),
                                      "method": {"name": "prefix", "length": 2}}))
    grid = ["seed=0,1", *(f"{k}={v}" for k, v in overrides.items())]
    assert main(["sweep", str(config), *grid, "--smoke", "--no-progress"]) == 0
    folder = tmp_path / "runs" / "smoke" / "sweep-sw-seed"
    runs = sorted(p.name for p in folder.iterdir() if p.is_dir())
    assert runs == ["sw-seed=0", "sw-seed=1"]
    assert "mean" in capsys.readouterr().out
    assert main(["sweep", str(config), *grid, "--smoke", "--no-progress"]) == 0
    assert capsys.readouterr().out.count("finished before, reused") == 2
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == runs
    recorded = (folder / "sweep.json").read_text()
    # another sweep over the same keys (other fixed settings): a folder of its own, the first one untouched
    assert main(["sweep", str(config), *grid, "train.lr=0.01", "--smoke", "--no-progress"]) == 0
    assert "holds another sweep" in capsys.readouterr().out
    assert sorted(p.name for p in (folder.parent / "sweep-sw-seed-2").iterdir() if p.is_dir()) == runs
    assert (folder / "sweep.json").read_text() == recorded
    # the same sweep after its config file changed: refused before anything is recorded or trained
    config.write_text(config.read_text().replace("length: 2", "length: 3"))
    assert main(["sweep", str(config), *grid, "--smoke", "--no-progress"]) == 2
    assert "trained with other settings: method.length (2 -> 3)" in capsys.readouterr().err
    assert (folder / "sweep.json").read_text() == recorded
    # a sweep's run folder (its name holds '=') is a run for mmpt analyze, not an override
    assert main(["analyze", "rank", str(folder / "sw-seed=0"), "--smoke", "--no-progress", "--no-base",
                 "--out", str(tmp_path / "rank")]) == 0
    from mmpt.sweep import parse_grid
    from mmpt.sweep_summary import plot_sweep, summarize

    (rows, metric) = summarize(folder)
    values = [json.loads((folder / f"sw-seed={s}" / "metrics.json").read_text())["after"][metric] for s in (0, 1)]
    assert len(rows) == 1 and rows[0]["runs"] == 2 and rows[0]["mean"] == pytest.approx(sum(values) / 2)
    assert rows[0]["std"] == pytest.approx(abs(values[0] - values[1]) / 2**0.5)
    assert parse_grid(["method.length=8,16", "seed=0,1", "train.lr=0.1"]) == (
        {"method.length": ["8", "16"], "seed": ["0", "1"]}, ["train.lr=0.1"])
    grid_rows = [{"method.length": str(n), "runs": 2, "missing": 0, "mean": m, "std": 0.1}
                 for n, m in ((8, 0.5), (16, 0.7))]
    plot_sweep(grid_rows, "accuracy", tmp_path / "sweep.png")
    assert (tmp_path / "sweep.png").stat().st_size > 1000


def test_bad_analysis_options_stop_with_one_line(prefix_run, tmp_path, capsys):
    for options, message in ((["--eps", "0,-0.1"], "--eps: give finite epsilons in [0, 1]"),
                             (["--eps", "nan"], "--eps: give finite epsilons in [0, 1]"),
                             (["--threshold", "1.5"], "--threshold must be in (0, 1]"),
                             (["--samples", "0"], "--samples must be at least 1")):
        analysis = "fgsm" if "--eps" in options else "rank"
        assert main(["analyze", analysis, str(prefix_run), "--no-progress", "--no-base", *options,
                     "--out", str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x").exists()
    # key=value after the flags overrides the config too
    assert main(["analyze", "rank", str(prefix_run), "--smoke", "--no-progress", "--no-base", "--out",
                 str(tmp_path / "r"), "eval.batch_size=2"]) == 0


def test_prefix_self_similarity_is_the_mean_and_max_over_distinct_prefix_keys():
    """issue 17: PT-PEFT reports the similarity among the prefix tokens themselves (all 16 below 0.09)."""
    from mmpt.analysis.similarity import prefix_self_similarity

    orthogonal = torch.eye(4, 8)
    assert prefix_self_similarity(orthogonal) == (0.0, 0.0)
    keys = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, -1.0]])
    pairs = [0.5**0.5, 0.0, 0.5**0.5]  # |cos| of (0,1), (0,2), (1,2)
    mean, peak = prefix_self_similarity(keys)
    assert mean == pytest.approx(sum(pairs) / 3) and peak == pytest.approx(max(pairs))
    assert prefix_self_similarity(torch.ones(1, 8)) == (0.0, 0.0)


def test_rank_paper_text_features_are_sos_words_eos_after_the_final_norm(prefix_run):
    """issue 17: PT-PEFT's text features are [sos, w1..wN, eos] of the last layer (after the final norm), not every
    non-image token of the last block (system prompt and chat template included)."""
    from mmpt.analysis.common import analysis_config, analysis_samples, batches, load_subjects
    from mmpt.analysis.rank import final_norm, paper_features

    config = analysis_config([prefix_run], None)
    samples = analysis_samples(config, 2)
    subject = load_subjects([prefix_run], base=False)[0]
    chunk, batch = next(batches(subject, samples, 2))
    features, image, words = paper_features(subject, chunk, batch, "lm", -1)
    tokenizer = subject.loaded.processor.tokenizer
    for i, sample in enumerate(chunk):
        picked = batch["input_ids"][i][words[i]].tolist()
        prompt = tokenizer(sample.prompt, add_special_tokens=False)["input_ids"]
        first = int(batch["attention_mask"][i].nonzero()[0])
        assert picked == [int(batch["input_ids"][i][first]), *prompt, tokenizer.convert_tokens_to_ids("<|im_end|>")]
        assert int(image[i].sum()) > 1 and not bool((image[i] & words[i]).any())
    _, all_image, all_text = tower_features(subject, batch, "lm", -1)
    assert bool((all_text.sum(-1) > words.sum(-1) + 5).all())  # "all" also counts the system prompt and template
    path, norm = final_norm(subject.loaded.model, subject.loaded.family.tower("lm").layers)
    assert path.endswith(".norm")
    block_out = tower_features(subject, batch, "lm", -1)[0]
    torch.testing.assert_close(features, norm(block_out).float(), rtol=1e-4, atol=1e-4)  # after the final norm
    with pytest.raises(ValueError, match="last layer after its final norm"):
        paper_features(subject, chunk, batch, "lm", 0)
    assert main(["analyze", "rank", str(prefix_run), "--smoke", "--no-progress", "--text-features", "paper",
                 "--out", str(prefix_run.parent / "rank-paper")]) == 0
    settings = json.loads((prefix_run.parent / "rank-paper" / "analysis.json").read_text())["settings"]
    assert settings["text_features"] == "paper"
