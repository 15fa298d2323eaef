"""The job's configuration, one entry point: ``load(composed) -> Config``.

    schema.py       one dataclass per config group (every field with its help) and ``Config``;
                    each checks its own fields (``check``), ``Config.check`` runs them all
    analysis.py     the ``analysis`` group (the seed paper's analyses, their sizes)
    fields.py       ``option`` (a field with its help), ``ConfigError`` and the small range checks
    keys.py         keys the schema does not have, and the closest one to suggest
    environment.py  checks that look outside the config: devices, writable folders, local
                    model / classifier / data folders
    schedule.py     what the config implies: compute=matched's schedule, optimizer steps, the
                    swept params results.json records
    errors.py       the one line (and exit code) both console scripts end bad input with

``load`` is the only way in: unknown keys first (only the DictConfig still has them), then
``OmegaConf.to_object`` and every check.  Past it, code reads the typed ``Config``.
"""

from __future__ import annotations

from omegaconf import DictConfig

from dpo_ppo.config.analysis import AnalysisConfig
from dpo_ppo.config.fields import ConfigError, field_help
from dpo_ppo.config.schema import (ALGORITHMS, OFFLINE_HINT, PRECISIONS, AlgorithmConfig, ClassifierConfig,
                                   ComputeConfig, Config, DataConfig, DPOAlgorithmConfig, EvalConfig,
                                   HardwareConfig, LoggerConfig, ModelConfig, PPOAlgorithmConfig, GRPOAlgorithmConfig,
                                   RLOOAlgorithmConfig, as_dict,
                                   register_configs, to_typed)
from dpo_ppo.config.schedule import apply_compute, planned_optimizer_steps

__all__ = ["ALGORITHMS", "OFFLINE_HINT", "PRECISIONS", "AlgorithmConfig", "AnalysisConfig", "ClassifierConfig",
           "ComputeConfig", "Config", "ConfigError", "DataConfig", "DPOAlgorithmConfig", "EvalConfig",
           "HardwareConfig", "LoggerConfig", "ModelConfig", "PPOAlgorithmConfig", "RLOOAlgorithmConfig",
           "GRPOAlgorithmConfig", "apply_compute", "as_dict",
           "field_help", "load", "planned_optimizer_steps", "register_configs", "to_typed"]


def load(cfg) -> Config:
    """The entrypoint's one step from Hydra to the job: unknown keys (only visible before the
    conversion), the conversion (``to_typed``), every check (``Config.check``).  ``cfg`` is the
    composed DictConfig (a Config is checked as it is).  Returns the typed config; raises
    ConfigError naming the first bad key."""
    if isinstance(cfg, DictConfig):
        from dpo_ppo.config.keys import check_keys

        check_keys(cfg)
    typed = to_typed(cfg)
    typed.check()
    return typed
