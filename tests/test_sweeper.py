"""The dpo_ppo sweeper's grid: a union of per-algorithm arms crossed with shared axes.

Fast and offline: pure expansion, the repository's sweep files, the slurm_gpu launcher preset.
The end-to-end runs through Hydra launchers are in test_sweep_e2e.py.
"""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from dpo_ppo.sweep.grid import expand, format_value, override_dirname
from hydra_plugins.dpo_ppo_sweeper.sweep_group import register_sweeps, sweep_dirs

REPO = Path(__file__).resolve().parents[1]
ARMS = {
    "dpo": {"algorithm": "dpo", "algorithm.beta": [0.01, 0.1, 1]},
    "ppo": {"algorithm": "ppo", "algorithm.kl_target": [3, 12]},
}


def as_sets(jobs):
    return {frozenset(j.overrides) for j in jobs}


def test_union_of_arms_not_a_product():
    jobs = expand(ARMS, {"seed": [0, 1]}, [])
    assert len(jobs) == 3 * 2 + 2 * 2 == 10
    expected = {frozenset({"algorithm=dpo", f"algorithm.beta={b}", f"seed={s}"})
                for b in ("0.01", "0.1", "1") for s in (0, 1)}
    expected |= {frozenset({"algorithm=ppo", f"algorithm.kl_target={t}", f"seed={s}"})
                 for t in (3, 12) for s in (0, 1)}
    assert as_sets(jobs) == expected
    for job in jobs:
        keys = {o.split("=")[0] for o in job.overrides}
        assert ("algorithm.beta" in keys) == (job.arm == "dpo")
        assert ("algorithm.kl_target" in keys) == (job.arm == "ppo")


def test_command_line_replaces_or_adds_shared_axes():
    # a sweep on the command line replaces the shared axis of the same key
    jobs = expand(ARMS, {"seed": [0, 1]}, ["seed=0,1,2"])
    assert len(jobs) == 15 and {o for j in jobs for o in j.overrides if o.startswith("seed=")} == {
        "seed=0", "seed=1", "seed=2"}
    # a single value is an axis of one
    assert len(expand(ARMS, {"seed": [0, 1]}, ["seed=7"])) == 5
    # a new key is a new shared axis; a plain value goes into every job
    jobs = expand(ARMS, {"seed": [0, 1]}, ["algorithm.completion_len=48,100", "model=pythia70m", "+sweep=x"])
    assert len(jobs) == 20
    assert all("model=pythia70m" in j.overrides and "+sweep=x" in j.overrides for j in jobs)


def test_command_line_on_arm_keys():
    # an arm's swept key is replaced in that arm only
    jobs = expand(ARMS, {"seed": [0]}, ["algorithm.beta=0.5,5"])
    assert sorted(o for j in jobs for o in j.overrides if "beta" in o) == ["algorithm.beta=0.5", "algorithm.beta=5"]
    assert sum(j.arm == "ppo" for j in jobs) == 2
    assert not any("beta" in o for j in jobs if j.arm == "ppo" for o in j.overrides)
    # an arm's fixed key selects arms
    jobs = expand(ARMS, {"seed": [0, 1]}, ["algorithm=ppo"])
    assert {j.arm for j in jobs} == {"ppo"} and len(jobs) == 4
    jobs = expand(ARMS, {"seed": [0]}, ["algorithm=ppo,dpo"])
    assert len(jobs) == 5


def test_axes_from_strings_and_values():
    jobs = expand({}, {"seed": "range(0,3)", "x": "a,b", "lr": 1e-6, "flag": True, "tags": "[a,b]"}, [])
    assert len(jobs) == 6
    assert jobs[0].overrides == ["seed=0", "x=a", "lr=1e-06", "flag=True", "tags=[a,b]"]
    # a list element that contains a comma is one value, not a sweep
    jobs = expand({}, {"text": ["a,b", "c"]}, [])
    assert [j.overrides for j in jobs] == [["text='a,b'"], ["text=c"]]
    assert format_value(None) == "null" and format_value([1, "x y"]) == "[1,'x y']"


def test_duplicate_jobs_across_arms_are_dropped():
    arms = {"a": {"algorithm": "dpo", "seed": [0, 1]}, "b": {"algorithm": "dpo", "seed": [1, 2]}}
    assert len(expand(arms, {}, [])) == 3


def test_deleted_arm_is_skipped():
    assert {j.arm for j in expand({**ARMS, "ppo": None}, {"seed": [0]}, [])} == {"dpo"}


# --------------------------------------------------------------------------- the sweep files


def _sweep_node(name: str):
    register_sweeps()
    node = ConfigStore.instance().load(f"sweep/{name}.yaml").node
    return node


def _jobs_of(name: str, arguments=()):
    node = _sweep_node(name)
    sweeper = node.hydra.sweeper
    return expand(sweeper.get("arms") or {}, sweeper.get("params") or {}, list(arguments))


def test_repo_sweeps_are_registered():
    assert REPO / "sweeps" in [d.resolve() for d in sweep_dirs()]
    found = register_sweeps()
    assert {"smoke", "paper", "confound"} <= set(found)
    for name in ("smoke", "paper", "confound"):
        node = _sweep_node(name)
        assert node.name == name, "a sweep writes under multirun/<its name>"
        assert {"override /hydra/sweeper": "dpo_ppo"} in OmegaConf.to_container(node.defaults)


def test_smoke_sweep_jobs():
    jobs = _jobs_of("smoke")
    assert len(jobs) == 8  # 2 DPO learning rates + 2 PPO targets, 2 seeds each
    assert {j.arm for j in jobs} == {"dpo", "ppo"}
    node = _sweep_node("smoke")
    assert node.algorithm.examples <= 256 and node.eval.num_prompts <= 500


def test_paper_sweep_jobs():
    jobs = _jobs_of("paper")
    assert as_sets(jobs) == {frozenset({f"experiment={e}", f"algorithm={a}", "seed=0"})
                             for e in ("paper_run1", "paper_run2") for a in ("dpo", "ppo")}


def test_answer_sweep_has_ppo_at_both_schedules_and_dpo_standing_in_both():
    """55 jobs, 5 seeds; PPO at its own schedule and at compute=matched; DPO at its defaults, whose
    schedule is compute=matched's, so the report compares it with both (docs/findings/embedded.md)."""
    from conftest import compose_cfg

    from dpo_ppo import results as R
    from dpo_ppo.config import as_dict, load
    from dpo_ppo.config.schedule import planned_optimizer_steps

    jobs = _jobs_of("answer")
    assert len(jobs) == 55 and {j.arm for j in jobs} == {"dpo", "ppo", "ppo_matched"}
    assert {o for j in jobs for o in j.overrides if o.startswith("seed=")} == {f"seed={s}" for s in range(5)}
    matched = [j for j in jobs if "compute=matched" in j.overrides]
    assert len(matched) == 15 and {j.arm for j in matched} == {"ppo_matched"}
    dpo = next(j for j in jobs if j.arm == "dpo")
    cfg = load(compose_cfg(["sweep=answer", *dpo.overrides], tiny=False))
    assert cfg.compute.mode == "native" and R.schedule_is_matched(as_dict(cfg))
    ppo = load(compose_cfg(["sweep=answer", *matched[0].overrides], tiny=False))
    native = load(compose_cfg(["sweep=answer", *next(j for j in jobs if j.arm == "ppo").overrides], tiny=False))
    assert planned_optimizer_steps(cfg) == planned_optimizer_steps(ppo) == 32
    assert planned_optimizer_steps(native) == 512


def test_confound_sweep_each_arm_over_its_own_knob():
    jobs = _jobs_of("confound")
    node = _sweep_node("confound").hydra.sweeper
    betas, lrs = node.arms.dpo["algorithm.beta"], node.arms.dpo["algorithm.lr"]
    targets, coefs = node.arms.ppo["algorithm.kl_target"], node.arms.ppo_fixed["algorithm.kl_coef"]
    assert min(targets) == 1 and max(targets) == 16 and len(lrs) == 2 and len(coefs) == 2
    shared = 1
    for values in node.params.values():
        shared *= len(values)
    assert {"algorithm.completion_len", "algorithm.prefix_len", "algorithm.examples", "seed"} <= set(node.params)
    assert len(jobs) == (len(betas) * len(lrs) + len(targets) + len(coefs)) * shared == 360
    for job in jobs:
        text = " ".join(job.overrides)
        assert ("algorithm=dpo" in text) == ("algorithm.beta=" in text)
        assert ("algorithm.kl_target=" in text) + ("algorithm.kl_coef=" in text) == ("algorithm=ppo" in text)
    # narrowing from the command line
    assert len(_jobs_of("confound", ["seed=0", "algorithm=ppo"])) == (len(targets) + len(coefs)) * shared // 3


# --------------------------------------------------------------------------- composition


def _compose(config_dir: Path, overrides):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir), version_base=None):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=True)


def test_sweep_file_selects_the_sweeper_in_a_composed_config(tmp_path):
    (tmp_path / "config.yaml").write_text(
        "defaults:\n  - analysis: full\n  - _self_\n  - sweep: null\nname: default\nseed: 0\nsweep: null\n"
        "algorithm: {name: dpo, examples: 512}\neval: {num_prompts: 2000}\n")
    (tmp_path / "analysis").mkdir()
    (tmp_path / "analysis" / "full.yaml").write_text("fast: false\n")
    (tmp_path / "analysis" / "fast.yaml").write_text("fast: true\n")
    cfg = _compose(tmp_path, ["sweep=smoke"])
    assert cfg.hydra.sweeper._target_.endswith("DpoPpoSweeper")
    assert cfg.name == "smoke" and cfg.sweep == "smoke"
    assert set(cfg.hydra.sweeper.arms) == {"dpo", "ppo"}
    assert cfg.hydra.runtime.choices["analysis"] == "fast" and cfg.analysis.fast
    assert cfg.algorithm.examples == 128 and cfg.eval.num_prompts == 200


def test_real_config_composes_with_each_sweep():
    """The project's own conf/ with every sweep (needs conf/config.yaml to list `- sweep: null`)."""
    from dpo_ppo.config import register_configs

    register_configs()
    try:
        import dpo_ppo.main  # noqa: F401  (registers the dpo_ppo_slug resolver)
    except ImportError:
        pass
    conf = REPO / "conf"
    for name in ("smoke", "paper", "confound"):
        cfg = _compose(conf, [f"sweep={name}"])
        assert cfg.name == name
        assert cfg.hydra.sweeper._target_.endswith("DpoPpoSweeper")
        assert str(cfg.hydra.sweep.dir) == f"multirun/{name}"


def _sbatch_script(tmp_path, monkeypatch, cfg):
    """The sbatch script of an array task of ``cfg``'s launcher, rendered by the launcher's own
    executor (no SLURM needed: a fake srun on PATH)."""
    from hydra.utils import instantiate

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "srun").write_text("#!/bin/sh\n")
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{__import__('os').environ['PATH']}")
    launcher = instantiate(cfg.hydra.launcher)
    launcher.params["submitit_folder"] = str(tmp_path / "sub")
    return launcher, launcher._executor()._executor._make_submission_file_text("python -m dpo_ppo.main", "uid")


def test_slurm_gpu_launcher_preset(tmp_path, monkeypatch):
    """hydra/launcher=slurm_gpu composes and renders an sbatch script with one GPU per array task
    and the W&B environment passed through; one job per task unless jobs_per_gpu says more."""
    (tmp_path / "config.yaml").write_text("name: demo\nseed: 0\n")
    cfg = _compose(tmp_path, ["hydra/launcher=slurm_gpu", f"hydra.searchpath=[file://{REPO / 'conf'}]"])
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["_target_"].endswith("PackedSlurmLauncher")
    assert launcher["gpus_per_node"] == 1 and launcher["timeout_min"] > 0 and launcher["array_parallelism"] > 0
    assert launcher["additional_parameters"]["export"] == "ALL"
    assert any("WANDB_API_KEY" in line for line in launcher["setup"])
    assert launcher["name"] == "demo"
    assert launcher["jobs_per_gpu"] == 1  # an app without hardware.jobs_per_gpu: one job per task

    packed, script = _sbatch_script(tmp_path, monkeypatch, cfg)
    assert packed.jobs_per_task == 1
    assert "#SBATCH --gpus-per-node=1" in script
    assert "#SBATCH --export=ALL" in script
    assert "export WANDB_API_KEY" in script
    assert f"#SBATCH --time={launcher['timeout_min']}" in script
    assert "#SBATCH --ntasks-per-node=1" in script and "--cpus-per-task=8" in script
    assert "jobs_per_gpu" not in script and "stop_grace" not in script  # the launcher's, not sbatch's


def test_slurm_gpu_preset_takes_jobs_per_gpu_from_the_job_config(tmp_path, monkeypatch):
    """hardware.jobs_per_gpu=3, given once: 3 jobs per array task of one GPU (x2 with 2 GPUs), the
    sbatch request unchanged (one task, the CPUs shared by its jobs); a bad value names the key."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    (tmp_path / "config.yaml").write_text("name: demo\nseed: 0\nhardware:\n  jobs_per_gpu: 1\n")
    cfg = _compose(tmp_path, ["hydra/launcher=slurm_gpu", f"hydra.searchpath=[file://{REPO / 'conf'}]",
                              "hardware.jobs_per_gpu=3"])
    packed, script = _sbatch_script(tmp_path, monkeypatch, cfg)
    assert (packed.jobs_per_gpu, packed.jobs_per_task) == (3, 3)
    assert "#SBATCH --ntasks-per-node=1" in script and "#SBATCH --gpus-per-node=1" in script
    cfg = _compose(tmp_path, ["hydra/launcher=slurm_gpu", f"hydra.searchpath=[file://{REPO / 'conf'}]",
                              "hardware.jobs_per_gpu=3", "hydra.launcher.gpus_per_node=2"])
    assert instantiate(cfg.hydra.launcher).jobs_per_task == 6
    cfg = _compose(tmp_path, ["hydra/launcher=slurm_gpu", f"hydra.searchpath=[file://{REPO / 'conf'}]",
                              "hardware.jobs_per_gpu=0"])
    with pytest.raises(InstantiationException, match=r"hardware.jobs_per_gpu.*must be an integer >= 1, got 0"):
        instantiate(cfg.hydra.launcher)


OVERRIDE_LISTS = [
    [],
    ["seed=1"],
    ["seed=1", "algorithm=ppo", "algorithm.kl_target=3"],  # not sorted as given
    ["algorithm.beta=0.1", "logger=none", "device=cpu", "name=x"],  # excluded keys among them
    ["+extra.key=1", "~analysis", "analysis@foo=fast", "++model.lr=2e-4"],  # add, delete, package, force-add
    ["name='a=b'", "data.path=/tmp/x", "eval.tag=\"k=v\"", "list=[1,2]", "dict={a:1,b:2}"],  # '=' and separators in values
    ["b=2", "a=1", "B=0", "a.b=3"],  # string order, not key order
]


def test_override_dirname_matches_hydras_private_function():
    """Ours reproduces Hydra's (private) get_overrides_dirname. Imported here, inside the test: if
    Hydra moves or changes it, this test fails and says so instead of the sweeper guessing wrong
    job folders silently."""
    from hydra._internal.config_loader_impl import get_overrides_dirname
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    exclude = ["logger", "device", "name", "sweep"]
    for lines in OVERRIDE_LISTS:
        overrides = parser.parse_overrides(lines)
        for item_sep, kv_sep in ((",", "="), ("/", ":"), ("__", "-")):
            for keys in (exclude, []):
                ours = override_dirname(overrides, keys, item_sep, kv_sep)
                assert ours == get_overrides_dirname(overrides, keys, item_sep, kv_sep), (lines, item_sep, kv_sep)
    # and what it gives, independently of Hydra: sorted, excluded keys dropped, every '=' replaced
    overrides = parser.parse_overrides(["seed=1", "algorithm=ppo", "device=cpu", "name='a=b'"])
    assert override_dirname(overrides, ["device"], ",", "=") == "algorithm=ppo,name='a=b',seed=1"
    assert override_dirname(overrides, ["device", "name"], "/", ":") == "algorithm:ppo/seed:1"


def test_override_dirname_with_the_repository_naming():
    """The job folder name of the real config's hydra.job.config.override_dirname settings."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    naming = OmegaConf.load(REPO / "conf" / "config.yaml").hydra.job.config.override_dirname
    overrides = OverridesParser.create().parse_overrides(["algorithm=dpo", "seed=0", "logger=none", "sweep=smoke"])
    assert override_dirname(overrides, list(naming.exclude_keys), naming.item_sep, naming.kv_sep) == "algorithm=dpo,seed=0"


def test_the_sweeper_and_the_report_never_import_torch():
    """The sweeper runs in the process that submits a sweep (a login node), the report on a
    laptop: neither may pull in torch. In a fresh interpreter, since this one has torch loaded."""
    import subprocess
    import sys

    code = ("import sys; import hydra_plugins.dpo_ppo_sweeper.sweeper, dpo_ppo.sweep, dpo_ppo.sweep.triage, "
            "dpo_ppo.sweep.state, dpo_ppo.report; "
            # what the sweeper imports when it runs: composing a job, the prepare step, the folder lock
            "import dpo_ppo.config, dpo_ppo.data.cache, dpo_ppo.runtime.joblock; "
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


# --------------------------------------------------------------------------- triage, without a launcher


def _job(tmp_path, overrides=("algorithm=dpo", "seed=0"), results=None):
    from dpo_ppo import results as R
    from dpo_ppo.sweep.grid import SweepJob

    job = SweepJob(arm="dpo", overrides=list(overrides), dir=str(tmp_path))
    if results is not None:
        R.write_json(tmp_path / R.RESULTS_FILE, results)
    return job


def test_triage_skips_finished_jobs_fails_drifted_ones_and_runs_the_rest(tmp_path):
    from dpo_ppo import results as R
    from dpo_ppo.sweep.triage import FINISHED_BEFORE, triage

    done = {"status": R.FINISHED, "overrides": ["seed=0", "algorithm=dpo", "logger=none"], "config": {"a": 1}}
    job = _job(tmp_path, results=done)
    assert not triage(job, exclude=["logger"], config=lambda: {"a": 1})
    assert (job.status, job.note) == (R.SKIPPED, FINISHED_BEFORE)  # excluded keys are not the job's identity

    job = _job(tmp_path)
    assert not triage(job, exclude=["logger"], config=lambda: {"a": 2})
    assert job.status == R.FAILED and job.error.startswith("config drift") and "a" in job.error
    job = _job(tmp_path)
    assert not triage(job, exclude=["logger"], config=None)  # check_drift=false
    assert job.status == R.SKIPPED

    assert triage(_job(tmp_path), force=True)  # force=true re-runs
    assert triage(_job(tmp_path, ("algorithm=dpo", "seed=0", "force=true")))
    assert triage(_job(tmp_path, ("algorithm=dpo", "seed=1")), exclude=["logger"])  # another job's folder
    assert triage(_job(tmp_path), skip_finished=False)
    R.write_json(tmp_path / R.RESULTS_FILE, {**done, "status": R.FAILED})
    assert triage(_job(tmp_path), exclude=["logger"])


def test_outcome_reads_the_public_job_return_then_the_folder(tmp_path, capsys):
    from hydra.core.utils import JobReturn, JobStatus

    from dpo_ppo import results as R
    from dpo_ppo.sweep.triage import outcome, prepare_failure

    def ret(status, value):
        r = JobReturn(overrides=["seed=0"], status=status)
        r.return_value = value
        return r

    job = _job(tmp_path)
    outcome(job, ret(JobStatus.COMPLETED, {"status": R.SKIPPED}), None)
    assert job.status == R.SKIPPED
    outcome(job, ret(JobStatus.FAILED, ValueError("boom")), None)  # the exception return_value re-raises
    assert (job.status, job.error) == (R.FAILED, "ValueError('boom')")
    assert "Error executing job" not in capsys.readouterr().err  # return_value's own stderr line kept out
    outcome(job, ret(JobStatus.COMPLETED, {"status": R.FAILED, "error": "Traceback\nBoom"}), None)
    assert (job.status, job.error) == (R.FAILED, "Boom")
    outcome(job, ret(JobStatus.COMPLETED, None), None)  # no status returned, nothing on disk: it ran
    assert job.status == R.FINISHED

    job = _job(tmp_path, results={"status": R.FAILED, "error": "out of memory"})
    outcome(job, ret(JobStatus.COMPLETED, None), None)
    assert (job.status, job.error) == (R.FAILED, "out of memory")
    outcome(job, None, "the launcher lost it")  # lost: the folder's error first
    assert (job.status, job.error) == (R.FAILED, "out of memory")
    job = _job(tmp_path / "empty")
    outcome(job, None, "the launcher lost it")
    assert (job.status, job.error) == (R.FAILED, "the launcher lost it")
    job = _job(tmp_path, results={"status": R.FINISHED})
    outcome(job, None, "the launcher lost it")  # lost, but its folder says it finished
    assert job.status == R.FINISHED

    assert prepare_failure(ret(JobStatus.COMPLETED, {"status": R.PREPARED}), None) is None
    assert prepare_failure(ret(JobStatus.FAILED, RuntimeError("no hub")), None) == "RuntimeError('no hub')"
    assert prepare_failure(ret(JobStatus.COMPLETED, {"status": R.FINISHED}), None) == "{'status': 'finished'}"
    assert prepare_failure(None, "array died") == "array died"


def test_duplicates_merge_into_the_first_job_unless_their_configs_differ():
    from dpo_ppo.sweep.grid import Merged, merge_duplicates, merged_summary

    arms = {"dpo": {"algorithm": "dpo", "algorithm.beta": [1, 1.0, 1]}}
    merged: list = []
    jobs = expand(arms, {"seed": [0]}, [], merged=merged)
    assert [j.overrides for j in jobs] == [["algorithm=dpo", "algorithm.beta=1", "seed=0"]]
    assert [m.overrides for m in merged] == [["algorithm=dpo", "algorithm.beta=1.0", "seed=0"],
                                             ["algorithm=dpo", "algorithm.beta=1", "seed=0"]]
    lines = merge_duplicates(jobs, merged, [], same_config=lambda mine, theirs: True)
    assert lines == ["algorithm.beta=1.0 as job #0 (algorithm.beta=1)", "a repeat of job #0 (algorithm=dpo "
                     "algorithm.beta=1 seed=0)"]
    assert merged_summary(lines).startswith("2 grid points merged into the job with the same config key")
    assert merged_summary([]) is None
    # 1.0 is not 1 in a string field: launched after all (the exact repeat needs no composing)
    asked = []
    lines = merge_duplicates(jobs, merged, [], same_config=lambda mine, theirs: asked.append(mine) or False)
    assert len(jobs) == 2 and jobs[1].overrides == ["algorithm=dpo", "algorithm.beta=1.0", "seed=0"]
    assert asked == [merged[0].overrides] and lines == ["a repeat of job #0 (algorithm=dpo algorithm.beta=1 seed=0)"]
    assert isinstance(merged[0], Merged)
