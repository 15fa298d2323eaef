"""The logic of a sweep, apart from Hydra's plugin surface (hydra_plugins/dpo_ppo_sweeper/, a thin
shell over this): ``grid`` (arms x shared axes as job overrides, one job per config), ``triage``
(before launching: finished before, config drift, running elsewhere, the prepare step's cover;
after: a launched job's outcome) and ``state`` (counts, sweep.json, the lines the sweeper logs).
Torch-free: the sweeper runs in the process that submits the sweep."""

from dpo_ppo.sweep.grid import Axis, Merged, SweepJob, expand, format_value, job_signature, override_dirname

__all__ = ["Axis", "Merged", "SweepJob", "expand", "format_value", "job_signature", "override_dirname"]
