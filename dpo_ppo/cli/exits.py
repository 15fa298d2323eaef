"""The one way both Hydra console scripts (``dpo-ppo``, ``dpo-ppo-analyze``) end on bad input: one
line on stderr naming the key (exit 2), one line and a traceback file for anything else (exit 1),
one line for a stop by SIGTERM/SIGINT (exit 128 + signal).  Hydra's composition errors reach here
through ``run_cli``.  A command line's concern, so it lives with the command lines, not in
``config`` (it knows the sweeper's errors too)."""

from __future__ import annotations

import signal
import sys
from pathlib import Path


def exit_interrupted(signum: int, job_dir: str | None) -> None:
    """A job stopped by SIGTERM/SIGINT: one line, exit 128 + the signal (130, 143), no traceback."""
    where = f": {job_dir} recorded as interrupted; run the same command again to resume it" if job_dir else ""
    print(f"Interrupted by {signal.Signals(signum).name}{where}", file=sys.stderr, flush=True)
    sys.exit(128 + signum)


def flat(text) -> str:
    return " ".join(str(text).split())


def config_error_line(exc: BaseException, keys=None) -> str | None:
    """One line naming the key for a bad config or override (ours or Hydra's), else None.  An
    unknown key is answered with the closest of ``keys`` (an app's own dotted keys, e.g.
    dpo-ppo-analyze's), by default of dpo-ppo's schema."""
    from hydra.errors import HydraException, MissingConfigException, OverrideParseException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

    from dpo_ppo.config.fields import ConfigError
    from dpo_ppo.config.keys import dataclass_fields, schema_keys, unknown_key_message

    from hydra_plugins.dpo_ppo_sweeper.sweep_group import sweep_error_line

    if isinstance(exc, ConfigError):
        return f"Config error: {flat(exc)}"
    sweep_line = sweep_error_line(exc)  # a sweep file that does not parse or lacks the sweeper
    if sweep_line is not None:
        return f"Config error: {flat(sweep_line)}"
    if isinstance(exc, MissingConfigException):
        group, _, option = (exc.missing_cfg_file or "").rpartition("/")
        if group and exc.options:
            return (f"Config error: {group}={option}: no such option; choose one of "
                    f"{', '.join(sorted(exc.options))}")
        return f"Config error: {flat(str(exc).splitlines()[0])}"
    if isinstance(exc, OverrideParseException):
        detail = [ln for ln in exc.message.splitlines()[1:2] if ln.strip()] or exc.message.splitlines()[:1]
        return (f"Config error: override {exc.override!r} does not parse ({flat(detail[0])}); "
                f"write key=value (+key=value adds a key)")
    cause = exc
    while cause is not None:
        if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
            key = cause.full_key
            if isinstance(cause, (ConfigKeyError, ConfigAttributeError)) and "not in" in (cause.msg or ""):
                if keys is not None:
                    return f"Config error: {key}: {unknown_key_message(key, list(keys))}"
                fields = dataclass_fields(getattr(cause, "object_type", None)) or {}
                parent = key.rpartition(".")[0]
                candidates = [f"{parent}.{f}" if parent else f for f in fields]
                candidates += [k for k in schema_keys() if k not in candidates and not k.startswith(f"{parent}.")]
                return f"Config error: {key}: {unknown_key_message(key, candidates)}"
            return f"Config error: {key}: {flat((cause.msg or str(cause)).splitlines()[0])}"
        cause = cause.__cause__  # explicit chaining only (Hydra's "from e"), not any error met on the way
    if isinstance(exc, HydraException):
        return f"Config error: {flat(str(exc).splitlines()[0])}"
    return None


def exit_with_one_line(exc: BaseException, job_dir: str | None = None, keys=None) -> None:
    """Print one line for ``exc`` and exit: 2 for bad input (``config_error_line``; ``keys``: the
    app's own keys to suggest from), 1 for anything else, its traceback in the job folder or a
    temporary file."""
    from hydra_plugins.dpo_ppo_sweeper.sweeper import SweepFailed

    if isinstance(exc, SweepFailed):  # jobs of a sweep failed (each recorded its own error): no config error
        print(str(exc).rstrip(), file=sys.stderr)
        sys.exit(1)
    line = config_error_line(exc, keys)
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
    message = flat(f"{type(exc).__name__}: {exc}")
    if job_dir is None and isinstance(exc, OSError):  # before the job started: Hydra's output folder
        message = (f"cannot create the job folder ({flat(exc)}); point hydra.run.dir (hydra.sweep.dir "
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
        exit_interrupted(signal.SIGINT, None)
    except Exception as e:
        on_error(e)
