"""A non-editable install works outside the checkout: the wheel carries conf/ and sweeps/.

Builds the wheel offline from this checkout, installs it (no dependencies, no index) into a fresh
venv that sees this environment's libraries only as a plain path (so the checkout's editable
install cannot leak in), and runs ``dpo-ppo --cfg job`` from an unrelated folder."""

import glob
import os
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_install_finds_configs_and_sweeps_outside_the_checkout(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(REPO),
                    "-w", str(dist)], check=True, cwd=REPO, timeout=300)
    (wheel,) = glob.glob(str(dist / "dpo_ppo-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in ("dpo_ppo/conf/config.yaml", "dpo_ppo/conf/hydra/launcher/slurm_gpu.yaml",
                 "dpo_ppo/conf/logger/wandb.yaml", "dpo_ppo/sweeps/smoke.yaml", "dpo_ppo/sweeps/confound.yaml",
                 "hydra_plugins/dpo_ppo_sweeper/sweeper.py", "dpo_ppo/main.py"):
        assert path in names, path
    # every yaml of conf/ and sweeps/ is in the wheel
    for folder in ("conf", "sweeps"):
        for f in (REPO / folder).rglob("*.yaml"):
            assert f"dpo_ppo/{f.relative_to(REPO)}" in names, f

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    libs = subprocess.run([str(py), "-c", "import site; print(site.getsitepackages()[0])"], check=True,
                          capture_output=True, text=True).stdout.strip()
    # this environment's libraries (torch, hydra, ...) as a plain path entry: no .pth files of it
    # run, so the checkout's editable install of dpo_ppo stays invisible
    (Path(libs) / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    # --ignore-installed: through deps.pth pip sees the checkout's editable dpo_ppo as installed and
    # would skip the wheel
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--ignore-installed", wheel], check=True,
                   timeout=300)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    where = subprocess.run([str(py), "-c", "import dpo_ppo.main as m; print(m.__file__); print(m.CONF_DIR)"],
                           cwd=outside, env=env, capture_output=True, text=True, check=True).stdout.split()
    assert where[0].startswith(libs) and where[1] == str(Path(libs) / "dpo_ppo" / "conf")
    job = subprocess.run([str(venv / "bin" / "dpo-ppo"), "--cfg", "job", "algorithm=ppo"], cwd=outside, env=env,
                         capture_output=True, text=True, timeout=300)
    assert job.returncode == 0, job.stderr[-3000:]
    assert "name: ppo" in job.stdout and "kl_target:" in job.stdout
    sweep = subprocess.run([str(venv / "bin" / "dpo-ppo"), "--cfg", "job", "sweep=smoke"], cwd=outside, env=env,
                           capture_output=True, text=True, timeout=300)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    assert "name: smoke" in sweep.stdout and "sweep: smoke" in sweep.stdout
    assert not list(outside.iterdir()) or all(p.name == "outputs" for p in outside.iterdir())
    # every console script of pyproject.toml starts from the wheel (dpo-ppo-analyze and dpo-ppo-sync
    # live in dpo_ppo/cli/)
    for script, expected in (("dpo-ppo-analyze", "  policy = null"), ("dpo-ppo-sync", "usage: dpo-ppo-sync"),
                             ("dpo-ppo-report", "usage:")):
        out = subprocess.run([str(venv / "bin" / script), "--help"], cwd=outside, env=env, capture_output=True,
                             text=True, timeout=300)
        assert out.returncode == 0 and expected in out.stdout, (script, out.stderr[-3000:])
