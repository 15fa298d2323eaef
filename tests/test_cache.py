"""Shared artifacts: built once, atomic, corrupt ones rebuilt, concurrent builders wait."""

import json
import multiprocessing as mp
import time
from pathlib import Path

from dpo_ppo.cache import MANIFEST, artifact, spec_key, verify


def _builder(log: Path, delay: float = 0.0):
    def build(path: Path):
        with open(log, "a") as f:
            f.write("built\n")
        time.sleep(delay)
        (path / "weights.bin").write_bytes(b"\x01" * 1000)
        (path / "sub").mkdir()
        (path / "sub" / "meta.json").write_text("{}")
    return build


def test_built_once_and_keyed_by_spec(tmp_path):
    log = tmp_path / "log"
    a = artifact(tmp_path / "c", "clf", {"lr": 1}, _builder(log))
    b = artifact(tmp_path / "c", "clf", {"lr": 1}, _builder(log))
    c = artifact(tmp_path / "c", "clf", {"lr": 2}, _builder(log))
    assert a == b != c
    assert log.read_text().count("built") == 2
    assert a.name == spec_key({"lr": 1}) and json.loads((a / "spec.json").read_text()) == {"lr": 1}
    assert verify(a) is None
    assert not list((tmp_path / "c" / "clf").glob(".tmp-*"))


def test_corrupt_and_half_written_are_rebuilt(tmp_path):
    log = tmp_path / "log"
    a = artifact(tmp_path, "base", {"x": 1}, _builder(log))
    (a / "weights.bin").write_bytes(b"\x02" * 1000)  # same size, other bytes
    assert "checksum" in verify(a)
    a = artifact(tmp_path, "base", {"x": 1}, _builder(log))
    assert (a / "weights.bin").read_bytes() == b"\x01" * 1000
    (a / "weights.bin").write_bytes(b"\x01" * 10)  # truncated
    assert "bytes" in verify(a)
    artifact(tmp_path, "base", {"x": 1}, _builder(log))
    (a / MANIFEST).unlink()  # a folder that never finished
    assert verify(a) == "no manifest (half-written)"
    artifact(tmp_path, "base", {"x": 1}, _builder(log))
    assert log.read_text().count("built") == 4 and verify(a) is None


def test_failed_build_leaves_nothing(tmp_path):
    def bad(path):
        (path / "partial").write_text("x")
        raise RuntimeError("boom")
    try:
        artifact(tmp_path, "prefs", {"k": 1}, bad)
    except RuntimeError:
        pass
    assert [p.name for p in (tmp_path / "prefs").iterdir() if not p.name.endswith(".lock")] == []


def _worker(root, log, out):
    path = artifact(root, "clf", {"shared": True}, _builder(Path(log), delay=1.0))
    Path(out).write_text(str(path))


def test_concurrent_jobs_build_once(tmp_path):
    log = tmp_path / "log"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(tmp_path / "c", str(log), str(tmp_path / f"out{i}")))
             for i in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert log.read_text().count("built") == 1
    assert len({(tmp_path / f"out{i}").read_text() for i in range(3)}) == 1
