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


# --- damaged entries of every shape are rebuilt -------------------------------------------------------------------

WEIGHTS = b"abc" * 1000


def _tiny_builder(calls):
    def build(out):
        calls.append(out)
        (out / "weights.bin").write_bytes(WEIGHTS)
        (out / "sub").mkdir()
        (out / "sub" / "config.json").write_text('{"dim": 4}')

    return build


def _replace_with_file(entry):
    shutil.rmtree(entry)
    entry.write_bytes(b"not a folder")


def _replace_with_link(entry):
    elsewhere = entry.with_name("elsewhere")
    shutil.move(entry, elsewhere)  # an intact copy, but reached through a link
    entry.symlink_to(elsewhere, target_is_directory=True)


def _manifest(entry, edit):
    manifest = json.loads((entry / "manifest.json").read_text())
    edit(manifest)
    (entry / "manifest.json").write_text(json.dumps(manifest))


def _truncate(path, size=100):
    with open(path, "r+b") as f:
        f.truncate(size)


DAMAGE = {
    "entry is a file": _replace_with_file,
    "entry is a link": _replace_with_link,
    "entry is empty": lambda e: [shutil.rmtree(e), e.mkdir()],
    "stray extra file": lambda e: (e / "extra.bin").write_bytes(b"x"),
    "stray file in a subfolder": lambda e: (e / "sub" / "extra.json").write_text("{}"),
    "stray link": lambda e: (e / "link.bin").symlink_to(e / "weights.bin"),
    "missing manifest": lambda e: (e / "manifest.json").unlink(),
    "manifest is a folder": lambda e: [(e / "manifest.json").unlink(), (e / "manifest.json").mkdir()],
    "manifest is not JSON": lambda e: (e / "manifest.json").write_text('{"fingerprint": {"v": 1}, "fi'),
    "manifest is not UTF-8": lambda e: (e / "manifest.json").write_bytes(b"\xff\xfe\x00{"),
    "manifest is a list": lambda e: (e / "manifest.json").write_text("[]"),
    "manifest without files": lambda e: _manifest(e, lambda m: m.pop("files")),
    "manifest with a bad record": lambda e: _manifest(e, lambda m: m["files"].update({"weights.bin": {"size": "3"}})),
    "manifest naming a file outside": lambda e: _manifest(e, lambda m: m["files"].update(
        {"../outside.bin": m["files"]["weights.bin"]})),
    "manifest of another source": lambda e: _manifest(e, lambda m: m.update(fingerprint={"v": 0})),
    "truncated file": lambda e: _truncate(e / "weights.bin"),
    "truncated file in a subfolder": lambda e: _truncate(e / "sub" / "config.json", 3),
    "altered file": lambda e: (e / "weights.bin").write_bytes(WEIGHTS[:-1] + b"X"),
    "missing file": lambda e: (e / "weights.bin").unlink(),
    "file replaced by a folder": lambda e: [(e / "weights.bin").unlink(), (e / "weights.bin").mkdir()],
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_entry_of_any_shape_is_rebuilt(tmp_path, damage):
    calls = []
    entry = cache.cached_build("thing", {"v": 1}, _tiny_builder(calls), root=tmp_path)
    assert cache.entry_problem(entry, {"v": 1}) is None
    DAMAGE[damage](entry)
    assert cache.entry_problem(entry, {"v": 1}) is not None  # detected
    rebuilt = cache.cached_build("thing", {"v": 1}, _tiny_builder(calls), root=tmp_path)
    assert rebuilt == entry and len(calls) == 2
    assert entry.is_dir() and not entry.is_symlink()
    assert sorted(p.relative_to(entry).as_posix() for p in entry.rglob("*")) == [
        "manifest.json", "sub", "sub/config.json", "weights.bin"]
    assert (entry / "weights.bin").read_bytes() == WEIGHTS
    assert cache.cached_build("thing", {"v": 1}, _tiny_builder(calls), root=tmp_path) == entry
    assert len(calls) == 2  # the rebuilt entry is reused
    leftovers = {p.name for p in tmp_path.iterdir()} - {"thing", ".thing.lock", "elsewhere"}
    assert not leftovers  # no temporary folder and no moved-aside old entry


# --- temporary folders of killed builds are removed ---------------------------------------------------------------


def _leftover(root, name, size=1 << 20):
    folder = root / name
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"\0" * size)
    return folder


@pytest.mark.parametrize("entry_state", ["missing", "intact"])
def test_stale_temp_folders_are_removed_on_next_build_or_load(tmp_path, entry_state):
    calls = []
    if entry_state == "intact":
        cache.cached_build("thing", {}, _writer(calls), root=tmp_path)
    stale = [_leftover(tmp_path, ".thing.tmp-4194303-abc_123x"), _leftover(tmp_path, ".thing-k3j_9zq1")]  # pid, legacy
    others = [_leftover(tmp_path, ".thing-2.tmp-1-abcdefgh"), _leftover(tmp_path, ".thing.tmp-1.tmp-2-abcdefgh"),
              _leftover(tmp_path, "thing-notes")]  # another entry's temporaries, and a user's folder
    cache.cached_build("thing", {}, _writer(calls), root=tmp_path)
    assert len(calls) == 1  # built once (missing) or reused (intact)
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in others)


KILLED_BUILD = """
import importlib.util, sys, time
from pathlib import Path
spec = importlib.util.spec_from_file_location("standalone_cache", sys.argv[1])
cache = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cache)

def build(out):
    (out / "model.safetensors").write_bytes(b"\\0" * (4 << 20))
    Path(sys.argv[3]).write_text(str(out))
    time.sleep(60)

cache.cached_build("thing", {}, build, root=Path(sys.argv[2]))
"""


def test_sigkill_during_build_leaves_nothing_behind_after_next_build(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    root, ready = tmp_path / "cache", tmp_path / "ready"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_BUILD, cache.__file__, str(root), str(ready)])
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the build process did not start"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    temp = root / ready.read_text()
    assert temp.is_dir() and f".thing.tmp-{proc.pid}-" in temp.name  # what SIGKILL leaves behind
    calls = []
    entry = cache.cached_build("thing", {}, _writer(calls), root=root)
    assert len(calls) == 1 and not temp.exists()
    assert {p.name for p in root.iterdir()} == {"thing", ".thing.lock"} and entry.is_dir()
