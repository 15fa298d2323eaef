"""Shared artifacts: built once, atomic, corrupt ones rebuilt, concurrent builders wait."""

import json
import multiprocessing as mp
import time
from pathlib import Path

from dpo_ppo.data.cache import MANIFEST, artifact, spec_key, verify


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


def _slow_build(root, started):
    def build(path: Path):
        (path / "partial.bin").write_bytes(b"\x00" * 100)
        Path(started).write_text("building")
        time.sleep(60)
    artifact(root, "clf", {"killed": True}, build)


def test_a_build_killed_with_kill_9_leaves_a_temp_folder_the_next_builder_removes(tmp_path):
    ctx = mp.get_context("spawn")
    started = tmp_path / "started"
    proc = ctx.Process(target=_slow_build, args=(tmp_path / "c", str(started)))
    proc.start()
    deadline = time.time() + 60
    while not started.exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.kill()  # SIGKILL: no except/finally runs
    proc.join()
    root = tmp_path / "c" / "clf"
    assert len(list(root.glob(".tmp-*"))) == 1  # what kill -9 leaves
    path = artifact(tmp_path / "c", "clf", {"killed": True}, _builder(tmp_path / "log"))
    assert verify(path) is None and not (path / "partial.bin").exists()
    assert sorted(p.name for p in root.iterdir() if not p.name.endswith(".lock")) == [path.name]


def test_stale_temp_folders_of_other_keys_are_left_to_their_own_builders(tmp_path):
    other = tmp_path / "clf" / f".tmp-{spec_key({'other': 1})}-deadbeef"
    other.mkdir(parents=True)
    artifact(tmp_path, "clf", {"mine": 1}, _builder(tmp_path / "log"))
    assert other.exists()  # it may be a live build of another key, under that key's lock


def test_dataset_artifacts_are_read_without_writing_into_them(tmp_path):
    from datasets import Dataset, DatasetDict

    from dpo_ppo.data.cache import load_dataset_artifact

    def build(path: Path):
        DatasetDict({"train": Dataset.from_dict({"text": [f"t{i}" for i in range(50)], "label": [i % 2 for i in range(50)]})}
                    ).save_to_disk(str(path))

    path = artifact(tmp_path, "corpus", {"n": 50}, build)
    files = sorted(p for p in path.rglob("*"))
    ds = load_dataset_artifact(path)
    train = ds["train"].shuffle(seed=0).map(lambda b: {"n": [len(t) for t in b["text"]]}, batched=True)
    train = train.filter(lambda r: r["label"] == 1).rename_column("label", "labels")
    assert len(train) == 25 and sum(train["labels"]) == 25
    assert sorted(p for p in path.rglob("*")) == files and verify(path) is None
