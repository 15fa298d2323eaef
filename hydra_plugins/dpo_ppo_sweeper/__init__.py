"""Hydra sweeper for dpo-ppo: a sweep is a union of per-algorithm grids ("arms") crossed with
shared axes, launched through whatever Hydra launcher is configured.

A thin Hydra shell: ``sweeper.py`` (the plugin: plan, triage, prepare, launch in batches),
``launchers.py`` (packed_local / packed_slurm: N jobs per array task) and ``sweep_group.py``
(what the plugin stores in Hydra's ConfigStore: ``hydra/sweeper=dpo_ppo`` and the ``sweep``
group). The logic (grid, triage, sweep.json) is dpo_ppo.sweep.

Importing this package (Hydra does so when it scans ``hydra_plugins``) registers
``hydra/sweeper=dpo_ppo`` and one ``sweep=<name>`` option per ``sweeps/<name>.yaml``.
See sweeps/README.md for the sweep file format.
"""
