"""The projectors in ``mmpt/checkpoints`` are checked against their recorded SHA-256 before they load."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mmpt.models import tiny


def test_every_shipped_projector_matches_its_recorded_sha256() -> None:
    shipped = sorted(p.name for p in tiny.CHECKPOINT_DIR.glob("*.safetensors"))
    assert tiny.PROJECTOR_CHECKPOINT.name in shipped
    assert sorted(tiny.projector_sums()) == shipped  # every file recorded, nothing recorded that is not there
    for name in shipped:
        tiny.check_projector(tiny.CHECKPOINT_DIR / name)


def _projector(folder: Path) -> Path:
    path = folder / "p.safetensors"
    save_file({"w": torch.arange(6.0).reshape(2, 3)}, str(path))
    return path


def test_a_changed_projector_is_refused_naming_the_file_and_the_fix(tmp_path: Path) -> None:
    path, sums = _projector(tmp_path), tmp_path / "SHA256SUMS.json"
    tiny.record_projector(path, sums)
    tiny.check_projector(path, sums)  # as recorded: loads
    data = bytearray(path.read_bytes())
    data[-1] ^= 1  # one flipped bit in the weights
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"p\.safetensors is damaged or was replaced by hand.*--install"):
        tiny.check_projector(path, sums)
    tiny.record_projector(path, sums)  # what `mmpt pretrain-projector --install` does after writing a new one
    tiny.check_projector(path, sums)


def test_an_unrecorded_projector_loads_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = _projector(tmp_path)
    with caplog.at_level(logging.WARNING, logger="mmpt.models.tiny"):
        tiny.check_projector(path, tmp_path / "SHA256SUMS.json")
    assert "no recorded SHA-256" in caplog.text


@pytest.mark.parametrize("content", ["{not json", '["a"]', '{"p.safetensors": 3}', "\udcff"])
def test_a_damaged_checksum_file_is_one_clear_error(tmp_path: Path, content: str) -> None:
    path, sums = _projector(tmp_path), tmp_path / "SHA256SUMS.json"
    sums.write_bytes(content.encode("utf-8", "surrogateescape"))
    with pytest.raises(ValueError, match="SHA256SUMS.json .*reinstall mmpt"):
        tiny.check_projector(path, sums)


def test_loading_mmpt_tiny_checks_its_projector(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sums = tmp_path / "SHA256SUMS.json"
    sums.write_text(json.dumps({tiny.PROJECTOR_CHECKPOINT.name: "0" * 64}))
    monkeypatch.setattr(tiny, "PROJECTOR_SUMS", sums)
    with pytest.raises(ValueError, match="mmpt-tiny-projector.safetensors is damaged"):
        tiny.load_tiny()
