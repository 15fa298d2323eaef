"""Packaging hook (everything else is in pyproject.toml).

conf/ and sweeps/ stay at the top of the repository, where the project's layout puts them, and
ship inside the wheel as the package data ``dpo_ppo/conf`` and ``dpo_ppo/sweeps``: a
``package_dir`` mapping, which pyproject.toml cannot combine with automatic package discovery.
``dpo_ppo.main`` and the sweeper look there first, then beside the checkout.
"""

from setuptools import find_namespace_packages, setup

CODE = find_namespace_packages(include=["dpo_ppo", "dpo_ppo.*", "hydra_plugins", "hydra_plugins.*"],
                               exclude=["*.__pycache__"])

setup(
    packages=CODE + ["dpo_ppo.conf", "dpo_ppo.sweeps"],
    package_dir={"dpo_ppo.conf": "conf", "dpo_ppo.sweeps": "sweeps"},
    package_data={"dpo_ppo.conf": ["*.yaml", "**/*.yaml"], "dpo_ppo.sweeps": ["*.yaml", "*.md"]},
)
