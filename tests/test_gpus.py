"""GPU placement (dpo_ppo.runtime.gpus) on a CPU machine: the GPUs are faked by naming them, the slots
are real lock files in a temporary folder, claimed by threads and by processes."""

import logging
import multiprocessing as mp
import threading

import pytest
import torch

from dpo_ppo.runtime import gpus


@pytest.fixture
def slots(tmp_path, monkeypatch):
    monkeypatch.setenv(gpus.SLOTS_ENV, str(tmp_path / "slots"))
    gpus.release()
    yield tmp_path / "slots"
    gpus.release()


def fake_gpus(monkeypatch, n):
    ids = [f"gpu-fake{i}" for i in range(n)]
    monkeypatch.setattr(gpus, "gpu_ids", lambda: list(ids))
    monkeypatch.setattr(gpus, "visible_gpu_count", lambda: n)
    monkeypatch.setattr(gpus, "_set_current", lambda gpu: None)
    return ids


def test_no_gpu_is_the_cpu_and_claims_nothing(slots, monkeypatch):
    fake_gpus(monkeypatch, 0)
    c = gpus.claim(4)
    assert c.gpu is None and c.device == "cpu" and not c.held
    assert gpus.job_device(4) == torch.device("cpu")
    assert not slots.exists() or not list(slots.iterdir())


def test_jobs_spread_over_the_gpus_then_share_them(slots, monkeypatch):
    fake_gpus(monkeypatch, 2)
    claims = [gpus.claim(2) for _ in range(4)]
    # least-loaded first: alternate between the two GPUs, two slots each
    assert [c.gpu for c in claims] == [0, 1, 0, 1]
    assert sorted((c.gpu, c.slot) for c in claims) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert not any(c.extra for c in claims)
    assert gpus.holders(slots, "gpu-fake0") == 2 and gpus.holders(slots, "gpu-fake1") == 2
    for c in claims:
        c.release()
    assert gpus.holders(slots, "gpu-fake0") == 0


def test_a_released_slot_is_reused(slots, monkeypatch):
    fake_gpus(monkeypatch, 2)
    a, b = gpus.claim(1), gpus.claim(1)
    assert {a.gpu, b.gpu} == {0, 1}
    b.release()
    c = gpus.claim(1)
    assert (c.gpu, c.slot, c.extra) == (b.gpu, 0, False)  # the freed GPU, not an extra slot beside a
    a.release()
    c.release()


def test_all_slots_taken_shares_the_least_loaded_gpu_and_warns(slots, monkeypatch, caplog):
    fake_gpus(monkeypatch, 2)
    regular = [gpus.claim(1) for _ in range(2)]
    with caplog.at_level(logging.WARNING, logger="dpo_ppo"):
        extra = gpus.claim(1)
    assert extra.extra and extra.held and extra.slot == 1
    assert "all 2 GPU slots are taken" in caplog.text and "hardware.jobs_per_gpu" in caplog.text
    # the extra job counts: the next one goes to the other GPU
    another = gpus.claim(1)
    assert another.extra and another.gpu != extra.gpu
    for c in regular + [extra, another]:
        c.release()


def test_threads_claiming_at_once_get_different_gpus(slots, monkeypatch):
    fake_gpus(monkeypatch, 4)
    barrier = threading.Barrier(4)
    got = []

    def take():
        barrier.wait()
        got.append(gpus.claim(1))

    threads = [threading.Thread(target=take) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(c.gpu for c in got) == [0, 1, 2, 3] and not any(c.extra for c in got)
    for c in got:
        c.release()


def _claim_in_process(barrier, queue, done):
    barrier.wait()
    c = gpus.claim(1)
    queue.put((c.gpu, c.slot, c.extra))
    done.wait(30)  # hold it until every process has claimed


def test_processes_claiming_at_once_get_different_gpus_and_exit_frees_the_slot(slots, monkeypatch):
    fake_gpus(monkeypatch, 3)
    ctx = mp.get_context("fork")  # the children keep the faked GPUs
    barrier, queue, done = ctx.Barrier(3), ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_claim_in_process, args=(barrier, queue, done)) for _ in range(3)]
    for p in procs:
        p.start()
    try:
        got = [queue.get(timeout=30) for _ in procs]
        assert sorted(g for g, _, _ in got) == [0, 1, 2] and not any(e for _, _, e in got)
        with gpus.claim(1) as extra:
            assert extra.extra  # all three taken
    finally:
        done.set()
        for p in procs:
            p.join(30)
    # the processes ended without releasing: the OS freed their locks
    assert [gpus.holders(slots, f"gpu-fake{i}") for i in range(3)] == [0, 0, 0]
    with gpus.claim(1) as again:
        assert not again.extra


def test_job_device_keeps_the_process_slot_until_released(slots, monkeypatch):
    fake_gpus(monkeypatch, 2)
    current = []
    monkeypatch.setattr(gpus, "_set_current", current.append)
    other = gpus.claim(1)  # another job holds GPU 0
    assert other.gpu == 0
    assert gpus.job_device(1) == torch.device("cuda", 1) and current == [1]
    first = gpus.current_claim()
    assert gpus.job_device(1) == torch.device("cuda", 1) and gpus.current_claim() is first  # the next job of the process
    gpus.release()
    assert gpus.current_claim() is None and gpus.holders(slots, "gpu-fake1") == 0
    other.release()


def test_bad_jobs_per_gpu_names_the_key(slots, monkeypatch):
    fake_gpus(monkeypatch, 1)
    for bad in (0, -1, "two", 1.5, True):
        with pytest.raises(ValueError, match="hardware.jobs_per_gpu"):
            gpus.claim(bad)
    assert gpus.concurrent_jobs("3") == 3


def test_concurrent_jobs_is_jobs_per_gpu_times_visible_gpus(monkeypatch):
    monkeypatch.setattr(gpus, "visible_gpu_count", lambda: 0)
    assert gpus.concurrent_jobs(3) == 3  # no GPU: the jobs of one "GPU", on the CPU
    monkeypatch.setattr(gpus, "visible_gpu_count", lambda: 2)
    assert gpus.concurrent_jobs(3) == 6


def test_joblib_gpu_preset_runs_jobs_per_gpu_times_gpus(monkeypatch):
    from conftest import compose_cfg
    from hydra import compose, initialize_config_dir
    from dpo_ppo.main import CONF_DIR

    monkeypatch.setattr(gpus, "visible_gpu_count", lambda: 2)
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=joblib_gpu", "hardware.jobs_per_gpu=3"],
                      return_hydra_config=True)
    assert cfg.hydra.launcher.n_jobs == 6
    assert "joblib" in cfg.hydra.launcher._target_
    assert compose_cfg(["hardware=gpu80"]).hardware.jobs_per_gpu == 4  # the preset of 4 jobs per card


def test_device_auto_without_cuda_is_the_cpu():
    from dpo_ppo.runtime.gpus import resolve_device

    assert not torch.cuda.is_available()  # this test machine
    assert resolve_device("auto", 4) == torch.device("cpu")
    assert resolve_device("cuda:1", 4) == torch.device("cuda", 1)  # an explicit device is taken as it is
