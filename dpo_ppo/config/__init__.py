"""The job's configuration, one entry point: ``load(composed) -> Config``.

    schema.py       one dataclass per config group (every field with its help) and ``Config``;
                    each checks its own fields (``check``), ``Config.check`` runs them all
    analysis.py     the ``analysis`` group (the seed paper's analyses, their sizes)
    analyze.py      ``AnalyzeConfig``: dpo-ppo-analyze's top config, of the same groups and checks
    fields.py       ``option`` (a field with its help), ``ConfigError`` and the small range checks
    keys.py         keys the schema does not have, and the closest one to suggest
    schedule.py     what the config implies: compute=matched's schedule, optimizer steps, the
                    swept params results.json records, the arm and whether a job is online DPO

``load`` is the only way in: unknown keys first (only the DictConfig still has them), then
``OmegaConf.to_object``, every check, then ``compute=matched``'s schedule.  Past it, code reads
the typed ``Config`` and never edits it.  What the config names on this machine (devices, local
folders, the data) is checked above this package, where the job runs (``dpo_ppo.inputs``): the
config imports nothing of ``data``.  The one line bad input ends in is the CLIs' (``dpo_ppo.cli``).
"""

from __future__ import annotations

from omegaconf import DictConfig

from dpo_ppo.config.analysis import AnalysisConfig
from dpo_ppo.config.analyze import AnalyzeConfig
from dpo_ppo.config.fields import ConfigError, field_help
from dpo_ppo.config.schema import (ALGORITHMS, OFFLINE_HINT, PRECISIONS, AlgorithmConfig, ClassifierConfig,
                                   ComputeConfig, Config, DataConfig, DPOAlgorithmConfig, EvalConfig,
                                   HardwareConfig, LoggerConfig, ModelConfig, PPOAlgorithmConfig, GRPOAlgorithmConfig,
                                   RLOOAlgorithmConfig, as_dict,
                                   register_configs, to_typed)
from dpo_ppo.config.schedule import apply_compute, planned_optimizer_steps  # apply_compute: by load alone

__all__ = ["ALGORITHMS", "OFFLINE_HINT", "PRECISIONS", "AlgorithmConfig", "AnalysisConfig", "AnalyzeConfig",
           "ClassifierConfig",
           "ComputeConfig", "Config", "ConfigError", "DataConfig", "DPOAlgorithmConfig", "EvalConfig",
           "HardwareConfig", "LoggerConfig", "ModelConfig", "PPOAlgorithmConfig", "RLOOAlgorithmConfig",
           "GRPOAlgorithmConfig", "as_dict",
           "field_help", "load", "planned_optimizer_steps", "register_configs", "to_typed"]


def load(cfg) -> Config:
    """The one step from Hydra to the job (the entrypoint, ``run_job``, the sweeper; and to
    dpo-ppo-analyze's ``AnalyzeConfig``, which has no schedule): unknown keys
    (only visible before the conversion), the conversion (``to_typed``), every check
    (``Config.check``), then the schedule ``compute=matched`` implies (``apply_compute``).  ``cfg``
    is the composed DictConfig, or a Config (checked and scheduled as a copy: the caller's object
    is left as it was; a loaded one comes back equal, the schedule is idempotent).  Returns the
    typed config, which nothing edits afterwards; raises ConfigError naming the first bad key."""
    import copy

    from omegaconf import OmegaConf

    if isinstance(cfg, DictConfig):
        from dpo_ppo.config.keys import check_keys

        check_keys(cfg)
        if OmegaConf.get_type(cfg) is AnalyzeConfig:  # dpo-ppo-analyze's: the same groups, no schedule
            analyze = OmegaConf.to_object(cfg)
            analyze.check()
            return analyze
        typed = to_typed(cfg)
    else:
        typed = copy.deepcopy(to_typed(cfg))
    typed.check()  # before the schedule: the checks read what the user asked for
    apply_compute(typed)
    return typed
