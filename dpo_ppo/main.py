"""The ``dpo-ppo`` entrypoint: one Hydra app that runs one job, or a sweep of them with ``-m``.

    dpo-ppo                                   # the embedded default: DPO, offline, minutes on a CPU
    dpo-ppo algorithm=ppo algorithm.kl_target=3
    dpo-ppo model=pythia70m data=imdb classifier=gpt2_imdb experiment=paper_run2
    dpo-ppo -m sweep=smoke hydra/launcher=joblib
"""

from __future__ import annotations

import hashlib
import logging
import re
import signal
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from dpo_ppo.runtime import gpus
from dpo_ppo.config import load, register_configs
from dpo_ppo.inputs import check_inputs
from dpo_ppo.cli.exits import exit_interrupted, exit_with_one_line, flat, run_cli

log = logging.getLogger("dpo_ppo")

# the config tree: inside the package when installed from a wheel (setup.py ships conf/ as
# dpo_ppo/conf), else at the top of the checkout (an absolute path: Hydra would read "../conf"
# as a module)
_HERE = Path(__file__).resolve().parent
CONF_DIR = str(_HERE / "conf" if (_HERE / "conf" / "config.yaml").is_file() else _HERE.parent / "conf")


def slug(override_dirname: str) -> str:
    """A job folder name from its overrides: readable, filesystem-safe, unique, not too long."""
    text = re.sub(r"[^A-Za-z0-9=,._+-]+", "_", override_dirname or "").strip("_") or "default"
    if len(text) > 120:
        text = f"{text[:100]}..{hashlib.sha1(text.encode()).hexdigest()[:10]}"
    return text


if not OmegaConf.has_resolver("dpo_ppo_slug"):
    OmegaConf.register_new_resolver("dpo_ppo_slug", slug)
gpus.register_resolvers()  # ${dpo_ppo_gpu_jobs:N} (conf/hydra/launcher/joblib_gpu.yaml)
register_configs()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def app(cfg: DictConfig):
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    job_dir = hc.runtime.output_dir
    try:
        # the composed DictConfig becomes the typed Config here, once, and it and what it names are
        # checked before torch is imported: bad input fails in about a second
        typed = load(cfg)
        check_inputs(typed)  # what it names on this machine: devices, local folders, the data
        from dpo_ppo.job import run_job

        try:
            out = run_job(typed, job_dir, overrides=list(hc.overrides.task), raise_errors=False)
        except KeyboardInterrupt:  # Ctrl-C: the job recorded status interrupted
            exit_interrupted(signal.SIGINT, job_dir)
        except BaseException as e:
            if type(e).__name__ != "Interrupted":  # runtime.attempts.Interrupted (SIGTERM): recorded likewise
                raise
            exit_interrupted(e.signum, job_dir)  # type: ignore[attr-defined]
        finally:
            gpus.release()  # the GPU slot the job held (dpo_ppo.runtime.gpus): the process's next job claims again
    except Exception as e:
        if multirun:  # recorded by the job like any other failure; the sweep goes on
            raise
        exit_with_one_line(e, job_dir)
    if out.status == "failed" and not multirun:  # a sweep goes on; a single job says why and exits
        print(f"Job failed: {flat(out.error)} (traceback: {out.job_dir}/traceback.txt)", file=sys.stderr)
        sys.exit(1)
    if out.status == "diverged" and not multirun:  # its numbers went non-finite: one line, no traceback
        print(f"Job {flat(out.error)}", file=sys.stderr)
        sys.exit(1)
    return out


def main() -> None:
    """``dpo-ppo``: bad input ends in one line on stderr, never a Python traceback.  ``--help``
    prints Hydra's listing, then every key's default and help (``config.keys.help_text``); with
    ``algorithm=NAME`` on the line, that algorithm's keys alone."""
    if not any(a in ("--help", "-h") for a in sys.argv[1:]):
        run_cli(app, lambda e: exit_with_one_line(e, None))
        return
    try:
        run_cli(app, lambda e: exit_with_one_line(e, None))
    except SystemExit as e:  # Hydra exits after its help
        if e.code not in (0, None):
            raise
    from dpo_ppo.config.keys import help_text

    print(help_text(overrides=sys.argv[1:]))


if __name__ == "__main__":
    main()
