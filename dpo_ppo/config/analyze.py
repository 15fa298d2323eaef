"""The top config of ``dpo-ppo-analyze`` (conf/analyze.yaml): the same ``analysis`` and ``hardware``
groups as ``dpo-ppo`` (their dataclasses and checks, schema.py and analysis.py), the top-level
``device`` and ``precision`` of dpo-ppo's ``Config`` with the same checks, and the keys that name
what to analyse.  ``config.load`` turns it into this dataclass and checks it; whether the folders
it names hold a job, models and a corpus is ``dpo_ppo.cli.analyze.check``'s question (it reads
results.json and the folders, above this package)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from omegaconf import MISSING

from dpo_ppo.config.analysis import AnalysisConfig
from dpo_ppo.config.fields import check_device_name, choice, option
from dpo_ppo.config.schema import PRECISIONS, HardwareConfig


@dataclass
class AnalyzeConfig:
    """``dpo-ppo-analyze``: the analysis suite on saved models, without training."""

    analysis: AnalysisConfig = option(MISSING, "which analyses, at what sizes (group analysis: full, fast, none)")
    hardware: HardwareConfig = option(MISSING, "batch sizes from the device; a null analysis.batch_size comes "
                                               "from it (group hardware: auto, cpu, gpu80)")
    job: Optional[str] = option(None, "a job folder with results.json: fills reference, policy, scorer, corpus "
                                      "and the snapshots")
    reference: Optional[str] = option(None, "the reference model folder (save_pretrained, with its tokenizer)")
    policy: Any = option(None, "the tuned model folder, or a list of them (each analysed into its own "
                               "subfolder of out_dir); one without a tokenizer uses the reference's")
    scorer: Optional[str] = option(None, "the sentiment classifier folder (positive label 1)")
    corpus: Optional[str] = option(None, "a save_to_disk folder whose test split has text and label columns, or "
                                         "synthetic for the embedded corpus")
    snapshots: Optional[str] = option(None, "a folder of ex_* snapshots (with job: JOB/snapshots)")
    out_dir: Optional[str] = option(None, "where the analysis goes (with job: JOB/reanalysis-<analysis.name>)")
    device: str = option("auto", "auto (cuda when there is one, else cpu), cpu, cuda, cuda:N or mps")
    precision: str = option("auto", "auto | fp32 | bf16, as dpo-ppo's precision")
    quiet: bool = option(False, "do not print the scalars")

    def check(self) -> None:
        """The groups' own checks and dpo-ppo's device and precision checks; raises ConfigError
        naming the first bad key."""
        if self.analysis.enabled:
            self.analysis.check("analysis")
        self.hardware.check("hardware")
        choice("precision", self.precision, PRECISIONS)
        check_device_name("device", self.device)
        if self.analysis.device is not None:
            check_device_name("analysis.device", self.analysis.device)
