import json
import shutil

import pytest

from mmpt import cache
from mmpt.models import tiny


def _writer(calls):
    def build(out):
        calls.append(out)
        (out / "weights.bin").write_bytes(b"abc" * 1000)

    return build


def test_cached_build_reuses_and_rebuilds_when_damaged(tmp_path):
    calls = []
    entry = cache.cached_build("thing", {"v": 1}, _writer(calls), root=tmp_path)
    assert len(calls) == 1
    assert cache.cached_build("thing", {"v": 1}, _writer(calls), root=tmp_path) == entry
    assert len(calls) == 1  # reused
    data = bytearray((entry / "weights.bin").read_bytes())
    data[10] ^= 0xFF  # same size, wrong checksum
    (entry / "weights.bin").write_bytes(bytes(data))
    cache.cached_build("thing", {"v": 1}, _writer(calls), root=tmp_path)
    assert len(calls) == 2
    assert (entry / "weights.bin").read_bytes() == b"abc" * 1000
    cache.cached_build("thing", {"v": 2}, _writer(calls), root=tmp_path)  # new source -> rebuild
    assert len(calls) == 3


def test_failed_build_leaves_no_entry(tmp_path):
    def broken(out):
        (out / "partial").write_text("x")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        cache.cached_build("thing", {}, broken, root=tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [".thing.lock"]  # no entry, no temporary folder


def test_concurrent_builders_build_once(tmp_path):
    import threading
    import time

    calls = []

    def slow(out):
        calls.append(out)
        time.sleep(0.3)
        (out / "weights.bin").write_bytes(b"abc" * 1000)

    entries = []
    threads = [threading.Thread(target=lambda: entries.append(cache.cached_build("thing", {}, slow, root=tmp_path)))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(entries) == 3 and len(set(entries)) == 1
    assert (entries[0] / "weights.bin").read_bytes() == b"abc" * 1000


def test_default_lm_cache_is_reused(monkeypatch, real_model):
    # real_model built (or found) the cache; a second lookup must not de-quantize again.
    monkeypatch.setattr(tiny, "_dequantize", lambda *a: pytest.fail("cache was rebuilt"))
    folder = tiny.smollm2_folder()
    assert json.loads((folder / "manifest.json").read_text())["files"]["model.safetensors"]["size"] > 1e8


@pytest.mark.slow
def test_corrupted_lm_cache_is_rebuilt(tmp_path, real_model):
    source = tiny.smollm2_folder()
    copy = tmp_path / tiny.LM_CACHE_NAME
    shutil.copytree(source, copy)
    weights = copy / "model.safetensors"
    with open(weights, "r+b") as f:
        f.seek(1_000_000)
        f.write(b"\x00" * 4096)
    rebuilt = tiny.smollm2_folder(cache_root=tmp_path)
    assert cache.sha256_file(rebuilt / "model.safetensors") == cache.sha256_file(source / "model.safetensors")
