"""train_log.jsonl after a resume: the relaunched attempt replaces what the killed one logged past
its checkpoint, so every step is there once (fast; the slow end-to-end check is test_resume.py)."""

import json

from omegaconf import OmegaConf

from dpo_ppo.runtime.record import Recorder

OFF = OmegaConf.create({"enabled": False, "mode": "disabled", "project": "p", "entity": None, "dir": None,
                        "tags": []})


def _recorder(job_dir):
    return Recorder(job_dir, {"name": "t", "algorithm": "dpo"}, OFF, {}, run_name="t")


def _rows(job_dir):
    return [json.loads(line) for line in (job_dir / "train_log.jsonl").read_text().splitlines()]


def test_relaunch_replaces_the_rows_the_killed_attempt_logged_past_its_checkpoint(tmp_path):
    first = _recorder(tmp_path)
    for step in (1, 2, 3, 4, 5, 6):  # checkpoint at 4; killed after logging 6 ...
        first.log({"train/loss": 1.0 / step}, step)
    with open(tmp_path / "train_log.jsonl", "a") as f:
        f.write('{"step": 7, "train/lo')  # ... in the middle of writing 7
    second = _recorder(tmp_path)  # resumes from the checkpoint at 4
    for step in (5, 6, 7, 8):
        second.log({"train/loss": 10.0 + step}, step)
    second.log({"train/train_runtime": 3.0}, 8)  # the end-of-run row at the last step stays
    rows = _rows(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6, 7, 8, 8]
    assert [r.get("train/loss") for r in rows] == [1.0, 0.5, 1 / 3, 0.25, 15.0, 16.0, 17.0, 18.0, None]


def test_a_relaunch_past_training_keeps_the_last_steps_row(tmp_path):
    """Killed after the last step's row: the relaunch resumes at the last checkpoint and logs only
    the end-of-run summary row at that step, which must not wipe the step's loss row."""
    first = _recorder(tmp_path)
    for step in (1, 2):
        first.log({"train/loss": float(step)}, step)
    second = _recorder(tmp_path)
    second.log({"train/train_runtime": 1.0}, 2)
    assert [(r["step"], sorted(r)) for r in _rows(tmp_path)] == [
        (1, ["step", "train/loss"]), (2, ["step", "train/loss"]), (2, ["step", "train/train_runtime"])]


def test_ppo_steps_in_examples(tmp_path):
    first = _recorder(tmp_path)
    for examples in (16, 32, 48):  # state saved at 32, killed after the update at 48
        first.log({"train/kl": examples + 0.5}, examples)
    second = _recorder(tmp_path)
    for examples in (48, 64):
        second.log({"train/kl": examples + 0.25}, examples)
    assert [(r["step"], r["train/kl"]) for r in _rows(tmp_path)] == [(16, 16.5), (32, 32.5), (48, 48.25), (64, 64.25)]
