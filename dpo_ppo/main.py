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
from dpo_ppo.config import ConfigError, load, register_configs

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
        # the composed DictConfig becomes the typed Config here, once, and is checked before torch
        # is imported: bad input fails in about a second
        typed = load(cfg)
        from dpo_ppo.job import run_job

        try:
            out = run_job(typed, job_dir, overrides=list(hc.overrides.task), raise_errors=False)
        except KeyboardInterrupt:  # Ctrl-C: the job recorded status interrupted
            _exit_interrupted(signal.SIGINT, job_dir)
        except BaseException as e:
            if type(e).__name__ != "Interrupted":  # job.Interrupted (SIGTERM): recorded likewise
                raise
            _exit_interrupted(e.signum, job_dir)  # type: ignore[attr-defined]
        finally:
            gpus.release()  # the GPU slot the job held (dpo_ppo.runtime.gpus): the process's next job claims again
    except Exception as e:
        if multirun:  # recorded by the job like any other failure; the sweep goes on
            raise
        _exit_with_one_line(e, job_dir)
    if out["status"] == "failed" and not multirun:  # a sweep goes on; a single job says why and exits
        print(f"Job failed: {_flat(out['error'])} (traceback: {out['job_dir']}/traceback.txt)", file=sys.stderr)
        sys.exit(1)
    return out


# --------------------------------------------------------------------------- errors: one line each


def _exit_interrupted(signum: int, job_dir: str | None) -> None:
    """A job stopped by SIGTERM/SIGINT: one line, exit 128 + the signal (130, 143), no traceback."""
    where = f": {job_dir} recorded as interrupted; run the same command again to resume it" if job_dir else ""
    print(f"Interrupted by {signal.Signals(signum).name}{where}", file=sys.stderr, flush=True)
    sys.exit(128 + signum)


def _flat(text) -> str:
    return " ".join(str(text).split())


def config_error_line(exc: BaseException) -> str | None:
    """One line naming the key for a bad config or override (ours or Hydra's), else None."""
    from hydra.errors import HydraException, MissingConfigException, OverrideParseException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

    from dpo_ppo.config import _dataclass_fields, schema_keys, unknown_key_message

    from hydra_plugins.dpo_ppo_sweeper.config import sweep_error_line

    if isinstance(exc, ConfigError):
        return f"Config error: {_flat(exc)}"
    sweep_line = sweep_error_line(exc)  # a sweep file that does not parse or lacks the sweeper
    if sweep_line is not None:
        return f"Config error: {_flat(sweep_line)}"
    if isinstance(exc, MissingConfigException):
        group, _, option = (exc.missing_cfg_file or "").rpartition("/")
        if group and exc.options:
            return (f"Config error: {group}={option}: no such option; choose one of "
                    f"{', '.join(sorted(exc.options))}")
        return f"Config error: {_flat(str(exc).splitlines()[0])}"
    if isinstance(exc, OverrideParseException):
        detail = [ln for ln in exc.message.splitlines()[1:2] if ln.strip()] or exc.message.splitlines()[:1]
        return (f"Config error: override {exc.override!r} does not parse ({_flat(detail[0])}); "
                f"write key=value (+key=value adds a key)")
    cause = exc
    while cause is not None:
        if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
            key = cause.full_key
            if isinstance(cause, (ConfigKeyError, ConfigAttributeError)) and "not in" in (cause.msg or ""):
                fields = _dataclass_fields(getattr(cause, "object_type", None)) or {}
                parent = key.rpartition(".")[0]
                candidates = [f"{parent}.{f}" if parent else f for f in fields]
                candidates += [k for k in schema_keys() if k not in candidates and not k.startswith(f"{parent}.")]
                return f"Config error: {key}: {unknown_key_message(key, candidates)}"
            return f"Config error: {key}: {_flat((cause.msg or str(cause)).splitlines()[0])}"
        cause = cause.__cause__  # explicit chaining only (Hydra's "from e"), not any error met on the way
    if isinstance(exc, HydraException):
        return f"Config error: {_flat(str(exc).splitlines()[0])}"
    return None


def _exit_with_one_line(exc: BaseException, job_dir: str | None) -> None:
    """Print one line for ``exc`` and exit; the traceback goes to the job folder, or a temp file."""
    from hydra_plugins.dpo_ppo_sweeper.sweeper import SweepFailed

    if isinstance(exc, SweepFailed):  # jobs of a sweep failed (each recorded its own error): no config error
        print(str(exc).rstrip(), file=sys.stderr)
        sys.exit(1)
    line = config_error_line(exc)
    if line is not None:
        print(line, file=sys.stderr)
        sys.exit(2)
    import tempfile
    import traceback

    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    where = None
    if job_dir and Path(job_dir).is_dir():
        try:
            where = Path(job_dir) / "traceback.txt"
            where.write_text(text)
        except OSError:
            where = None
    if where is None:
        fd, name = tempfile.mkstemp(prefix="dpo-ppo-", suffix="-traceback.txt")
        with open(fd, "w") as f:
            f.write(text)
        where = name
    message = _flat(f"{type(exc).__name__}: {exc}")
    if job_dir is None and isinstance(exc, OSError):  # before the job started: Hydra's output folder
        message = (f"cannot create the job folder ({_flat(exc)}); point hydra.run.dir (hydra.sweep.dir "
                   f"for -m) at a writable folder")
    print(f"Error: {message} (traceback: {where})", file=sys.stderr)
    sys.exit(1)


def run_cli(app, on_error) -> None:
    """Run the Hydra ``app`` of a console script so that bad input ends in one line: Hydra's
    composition errors are raised to here (``HYDRA_FULL_ERROR=1``) instead of printed by Hydra,
    and ``on_error(exc)`` prints that line and exits.  A user who set ``HYDRA_FULL_ERROR``
    keeps Hydra's full traces."""
    import os

    if os.environ.get("HYDRA_FULL_ERROR"):
        app()
        return
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        app()
    except KeyboardInterrupt:  # Ctrl-C before or after a job (during one, the app exits itself)
        _exit_interrupted(signal.SIGINT, None)
    except Exception as e:
        on_error(e)


def main() -> None:
    """``dpo-ppo``: bad input ends in one line on stderr, never a Python traceback."""
    run_cli(app, lambda e: _exit_with_one_line(e, None))


if __name__ == "__main__":
    main()
