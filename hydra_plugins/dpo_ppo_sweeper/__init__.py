"""Hydra sweeper for dpo-ppo: a sweep is a union of per-algorithm grids ("arms") crossed with
shared axes, launched through whatever Hydra launcher is configured.

Importing this package (Hydra does so when it scans ``hydra_plugins``) registers
``hydra/sweeper=dpo_ppo`` and one ``sweep=<name>`` option per ``sweeps/<name>.yaml``.
See sweeps/README.md for the sweep file format.
"""
