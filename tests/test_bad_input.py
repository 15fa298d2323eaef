"""Bad input, run through the real ``dpo-ppo`` entrypoint: each fails before any stage with one
line on stderr that names the key, no Python traceback, and nothing new in the cache."""

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

DPO_PPO = str(Path(sys.executable).with_name("dpo-ppo"))


def _folders(root: Path) -> dict:
    """Local folders that are wrong in one way each (planted: we know what each one lacks)."""
    from datasets import Dataset, DatasetDict

    empty = root / "empty"
    empty.mkdir()
    no_label = root / "no_label"
    DatasetDict({split: Dataset.from_dict({"text": ["good", "bad"], "stars": [5, 1]})
                 for split in ("train", "test")}).save_to_disk(str(no_label))
    no_test = root / "no_test"
    DatasetDict({"train": Dataset.from_dict({"text": ["good"], "label": [1]})}).save_to_disk(str(no_test))
    config_only = root / "config_only"
    config_only.mkdir()
    (config_only / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    causal_lm = root / "causal_lm"  # looks complete, but is no sequence classifier
    causal_lm.mkdir()
    (causal_lm / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    (causal_lm / "model.safetensors").write_bytes(b"")
    (causal_lm / "tokenizer.json").write_text("{}")
    a_file = root / "a_file"
    a_file.write_text("not a folder")
    return {"empty": empty, "no_label": no_label, "no_test": no_test, "config_only": config_only,
            "causal_lm": causal_lm, "a_file": a_file}


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


# (overrides, what the one line must contain: the key first, then any further words)
CASES = [
    (["+algorithm.lerning_rate=1e-5"], ["algorithm.lerning_rate", "closest valid key is algorithm.lr"]),
    (["+lerning_rate=1e-5"], ["lerning_rate", "closest valid key is algorithm.lr"]),
    (["algorithm.lerning_rate=1e-5"], ["algorithm.lerning_rate", "closest valid key is algorithm.lr"]),
    (["+analysis.extra.depth=1"], ["analysis.extra", "closest valid key is analysis."]),
    (["algorithm.kl_target=3"], ["algorithm.kl_target", "algorithm=ppo"]),
    (["algorithm=ppo", "algorithm.beta=0.5"], ["algorithm.beta", "algorithm=dpo"]),
    (["algorithm.lr=nan"], ["algorithm.lr", "finite"]),
    (["algorithm.lr=inf"], ["algorithm.lr", "finite"]),
    (["algorithm.beta=nan"], ["algorithm.beta", "finite"]),
    (["eval.temperature=-inf"], ["eval.temperature", "finite"]),
    (["seed=-5"], ["seed", "[0, 2^32-1]"]),
    (["seed=4294967296"], ["seed", "[0, 2^32-1]"]),
    (["device=tpu"], ["device", "auto, cpu, cuda, cuda:N or mps"]),
    (["device=cuda:99"], ["device", "cuda:99"]),
    (["analysis.device=gpu"], ["analysis.device"]),
    (["algorithm=foo"], ["algorithm=foo", "dpo, ppo"]),
    (["algorithm.beta=high"], ["algorithm.beta", "'high'"]),
    (["seed=abc"], ["seed", "'abc'"]),
    (["algorithm.beta=-1"], ["algorithm.beta", "> 0"]),
    (["model.num_heads=3"], ["model.num_heads", "hidden_size"]),
    (["foo"], ["'foo'", "key=value"]),
    (["hydra.run.dir={a_file}/job"], ["hydra.run.dir", "Not a directory"]),
    (["cache_dir={a_file}/cache"], ["cache_dir", "is a file"]),
    (["classifier.source={empty}"], ["classifier.source", "empty folder"]),
    (["model.source={config_only}"], ["model.source", "model weights", "tokenizer"]),
    (["data.source={no_label}"], ["data.source", "'label' column"]),
    (["data.source={no_test}"], ["data.source", "'test' split"]),
    (["classifier.source={causal_lm}", "classifier.finetune=false"], ["classifier.source", "not a sequence classifier"]),
]
if not _cuda_available():  # the case: a CUDA device asked for where there is none
    CASES.append((["device=cuda"], ["device", "no CUDA device"]))


def _run(case, tmp: Path, folders: dict, index: int):
    overrides, expected = case
    run_dir, cache = tmp / f"run{index}", tmp / f"cache{index}"
    args = [o.format(root=tmp, **folders) for o in overrides]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.run([DPO_PPO, f"hydra.run.dir={run_dir}", f"cache_dir={cache}", "logger=none", *args],
                          capture_output=True, text=True, timeout=120, env=env)
    return proc, run_dir, cache, expected


def test_bad_inputs_fail_with_one_line_naming_the_key(tmp_path):
    assert len(CASES) >= 20
    folders = _folders(tmp_path)
    before = {p: p.read_bytes() for p in folders.values() if p.is_file()}
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda ic: _run(ic[1], tmp_path, folders, ic[0]), enumerate(CASES)))
    failures = []
    for (overrides, _), (proc, run_dir, cache, expected) in zip(CASES, results):
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        problems = []
        if proc.returncode == 0:
            problems.append("exit status 0")
        if len(lines) != 1:
            problems.append(f"{len(lines)} lines on stderr")
        elif not all(word in lines[0] for word in expected):
            problems.append(f"line lacks {expected}")
        if "Traceback" in proc.stderr + proc.stdout:
            problems.append("a traceback reached the terminal")
        if cache.exists():
            problems.append(f"cache touched: {sorted(p.name for p in cache.rglob('*'))}")
        if (run_dir / "results.json").exists():
            problems.append("a stage started (results.json written)")
        if problems:
            failures.append(f"{overrides}: {'; '.join(problems)}\n  stderr: {proc.stderr.strip()[-400:]}")
    assert not failures, "\n".join(failures)
    assert {p: p.read_bytes() for p in before} == before  # the file under cache_dir/hydra.run.dir is intact


def test_unwritable_output_folder_puts_the_traceback_in_a_temp_file_the_line_names(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = subprocess.run([DPO_PPO, f"hydra.run.dir={blocker}/job", f"cache_dir={tmp_path}/cache", "logger=none"],
                          capture_output=True, text=True, timeout=120)
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 1 and line.startswith("Error: cannot create the job folder")
    where = Path(line.rsplit("(traceback: ", 1)[1].rstrip(")"))
    try:
        assert "Traceback" in where.read_text() and "NotADirectoryError" in where.read_text()
    finally:
        where.unlink()


def test_an_unexpected_error_in_a_job_puts_its_traceback_in_the_job_folder(tmp_path, capsys):
    import pytest

    from dpo_ppo.main import _exit_with_one_line

    def fail():
        raise RuntimeError("wandb could not start\nsecond line")

    try:
        fail()
    except RuntimeError as e:
        with pytest.raises(SystemExit) as exited:
            _exit_with_one_line(e, str(tmp_path))
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert err == (f"Error: RuntimeError: wandb could not start second line "
                   f"(traceback: {tmp_path / 'traceback.txt'})\n")
    assert "in fail" in (tmp_path / "traceback.txt").read_text()
