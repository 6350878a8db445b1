"""The frozen-tower cache: same features as computing them, refuses to serve once the tower trains or is hooked,
and a run with it trains the same prefix as a run without."""

import pytest
import torch
from safetensors.torch import load_file

from conftest import make_tiny
from mmpt import methods
from mmpt.contract import ContractError
from mmpt.methods import PrefixConfig, VisualPromptConfig
from mmpt.models import load
from mmpt.models.towers import cache_frozen_towers
from mmpt.runconfig import load_run_config
from mmpt.train import run


def _pixels(n, seed):
    return torch.randn(n, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def test_cache_serves_the_towers_features():
    loaded = make_tiny()
    tower = loaded.model.vision
    a, b = _pixels(3, 0), _pixels(2, 1)
    with torch.no_grad():
        expected = tower(torch.cat([a, b]))
    cache = cache_frozen_towers(loaded, [])
    with torch.no_grad():
        first = tower(a)  # 3 misses
        mixed = tower(torch.cat([b[:1], a[1:2], b[1:]]))  # 1 hit, 2 misses
        again = tower(torch.cat([a, b]))  # 5 hits
    assert (cache.hits, cache.misses) == (6, 5)
    # the same image in a batch of another size may differ in the last bits (the tower's own kernels)
    torch.testing.assert_close(first, expected[:3], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mixed[1], expected[1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(again, expected, rtol=1e-5, atol=1e-6)
    wanted = a.clone().requires_grad_(True)  # FGSM: inputs that need a gradient pass through
    tower(wanted).sum().backward()
    assert wanted.grad is not None and cache.hits == 6
    cache.remove()
    assert "forward" not in tower.__dict__ and not cache.entries


def test_cache_refuses_a_tower_that_trains_or_is_hooked():
    loaded = make_tiny()
    cache = cache_frozen_towers(loaded, [])
    visual = methods.apply(loaded, VisualPromptConfig(width=4, image_size=64))
    assert not cache.serves(list(visual.parameters()))
    with pytest.raises(ContractError, match="carries a method's hook"), torch.no_grad():
        loaded.model.vision(_pixels(1, 0))
    visual.remove()
    with torch.no_grad():
        next(loaded.model.vision.parameters()).mul_(1.01)  # e.g. an optimizer step
    with pytest.raises(ContractError, match="changed since its features were cached"), torch.no_grad():
        loaded.model.vision(_pixels(1, 0))
    cache.remove()
    # nothing to cache: a tower the method trains or hooks
    assert cache_frozen_towers(loaded, list(loaded.model.vision.parameters())) is None
    prefix = methods.apply(loaded, PrefixConfig(length=2))
    assert cache_frozen_towers(loaded, list(prefix.parameters())) is not None
    assert cache_frozen_towers(load("llava-tiny-random"), []) is None  # HF families: not (yet) cached


def _config(out, *overrides):
    return load_run_config("configs/quickstart.yaml", [
        f"output_dir={out}", "name=run", "model.name=mmpt-tiny-random", "data.train_size=24", "data.eval_size=8",
        "train.batch_size=4", "train.epochs=2", "eval.batch_size=8", "train.report_to=[csv]",
        "train.precision=fp32", *overrides])


def test_run_with_tower_cache_trains_the_same_prefix(tmp_path):
    cached = run(_config(tmp_path / "a"), progress=False)
    plain = run(_config(tmp_path / "b", "train.cache_frozen_towers=false"), progress=False)
    assert cached["tower_cache"]["hits"] >= 24 + 8  # the second epoch and the evaluation after training
    assert "tower_cache" not in plain
    a = load_file(f"{cached['run_dir']}/prefix.safetensors")
    b = load_file(f"{plain['run_dir']}/prefix.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)
    assert cached["after"]["accuracy"] == plain["after"]["accuracy"]


def _bn_input_gradient(n: int) -> torch.Tensor:
    """Input gradient of an eval-mode BatchNorm2d (random statistics) for a batch of ``n`` whose outgoing gradient
    has the strides ``flatten(2).transpose(1, 2)`` gives; sample 0's, float64."""
    torch.manual_seed(0)
    bn = torch.nn.BatchNorm2d(8).eval().double()
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.5, 2.0)
    with torch.no_grad():
        bn.weight.normal_()
    x = torch.randn(2, 8, 3, 3, dtype=torch.float64)[:n].requires_grad_(True)
    upstream = torch.randn(2, 9, 8, dtype=torch.float64)[:n]
    (bn(x).flatten(2).transpose(1, 2) * upstream).sum().backward()
    return x.grad[0]


def test_the_torch_batchnorm_bug_the_tower_works_around_is_still_there():
    """If this fails, torch fixed its batch-1 BatchNorm2d backward: drop mmpt.models.tiny._ContiguousGrad."""
    assert not torch.allclose(_bn_input_gradient(1), _bn_input_gradient(2))


def test_tower_input_gradient_of_a_batch_of_one_equals_that_sample_in_a_batch_of_two():
    """issue 17: FGSM directions and visual prompts trained at batch size 1 got a wrong pixel gradient through the
    EfficientNet tower (torch's batch-1 BatchNorm2d backward); now batch 1 and batch 2 agree exactly."""
    from mmpt.models.tiny import EfficientNetTower

    torch.manual_seed(0)
    tower = EfficientNetTower(pretrained=False).double().eval()
    with torch.no_grad():
        for module in tower.modules():  # per-channel statistics, as pretrained ones are (defaults hide the bug)
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.normal_(1.0, 0.5)
    for p in tower.parameters():
        p.requires_grad_(False)
    x, other = torch.randn(2, 1, 3, 64, 64, dtype=torch.float64)
    weights = torch.randn(4, 1280, dtype=torch.float64)

    def gradient(batch: torch.Tensor) -> torch.Tensor:
        batch = batch.clone().requires_grad_(True)
        (tower(batch)[:1] * weights).sum().backward()
        return batch.grad[:1]

    torch.testing.assert_close(gradient(x), gradient(torch.cat([x, other])), rtol=1e-9, atol=1e-9)
