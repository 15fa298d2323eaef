"""What every analysis gets (``Context``) and what it gives back (``Output``).

The suite builds one ``Context`` per (reference, policy) pair and hands it to each enabled
analysis's ``run(ctx) -> Output``.  An ``Output`` holds only that analysis's results, under the
names they will have in ``analysis.json`` (scalars without the suite's ``analysis/`` prefix).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

from dpo_ppo.analysis.common import boot_bridge, n_heads, n_layers, on_device, shuffled_indices
from dpo_ppo.config.analysis import AnalysisConfig
from dpo_ppo.runtime import gpus
from dpo_ppo.train.sampling import pad_token_id

MODELS = ("reference", "policy")


@dataclass
class Context:
    """The inputs of one suite run, built once and shared by every analysis.

    ``reference``/``policy`` are the caller's models (read, never changed); ``models`` the same two
    on ``device`` (the caller's own where they already live there, else copies).  ``order`` is the
    held-out texts' indices shuffled with ``cfg.seed``.  ``bridge(name)`` boots a TransformerLens
    bridge of ``models[name]`` the first time an analysis asks for it.

    ``reference_cache(what, compute)``, when given, returns ``compute()``'s value for the reference's
    side of analysis ``what`` from wherever the caller keeps it (a job: the sweep's shared cache,
    ``Job.reference_cache``), computing it only the first time.  Every job of a sweep analyses the
    same reference on the same texts, so its ablation, head scores and attention are computed once.
    Analyses reach it through ``for_model``.
    """

    cfg: AnalysisConfig
    reference: Any
    policy: Any
    models: dict
    tokenizer: Any
    texts: list
    labels: list
    scorer: Any
    out_dir: Path
    snapshots: list
    device: torch.device
    pad: int
    order: list
    n_layers: int
    n_heads: int
    reference_cache: Optional[Callable[[str, Callable[[], Any]], Any]] = None
    _bridges: dict = field(default_factory=dict, repr=False)

    @classmethod
    def build(cls, cfg: AnalysisConfig, reference, policy, tokenizer, *, texts: Sequence[str],
              labels: Sequence[int], scorer, out_dir: Path, snapshots: Sequence[Path] = (),
              device=None, reference_cache=None) -> "Context":
        L, H = n_layers(policy), n_heads(policy)
        if (n_layers(reference), n_heads(reference)) != (L, H):
            raise ValueError(f"reference ({n_layers(reference)}x{n_heads(reference)}) and policy ({L}x{H}) "
                             f"differ in shape")
        device = gpus.resolve_device(device if device is not None else cfg.device, model=policy)
        texts = list(texts)
        return cls(cfg=cfg, reference=reference, policy=policy,
                   models={"reference": on_device(reference, device), "policy": on_device(policy, device)},
                   tokenizer=tokenizer, texts=texts, labels=[int(y) for y in labels], scorer=scorer,
                   out_dir=Path(out_dir), snapshots=list(snapshots or ()), device=device, pad=pad_token_id(tokenizer),
                   order=shuffled_indices(len(texts), cfg.seed), n_layers=L, n_heads=H,
                   reference_cache=reference_cache)

    @property
    def plot_dir(self) -> Path:
        return self.out_dir / "plots"

    def bridge(self, name: str):
        """The TransformerBridge of ``models[name]`` (booted once, on a copy)."""
        if name not in self._bridges:
            self._bridges[name] = boot_bridge(self.models[name], self.tokenizer, self.device)
        return self._bridges[name]

    def for_model(self, name: str, what: str, compute: Callable[[], Any]) -> Any:
        """``compute()``, model ``name``'s side of analysis ``what``.  The reference's comes from
        ``reference_cache`` when there is one (``compute`` must then depend on nothing but the
        reference, the held-out texts, the scorer and ``cfg``: that is what the cache's key holds);
        the policy's is always computed."""
        if name != "reference" or self.reference_cache is None:
            return compute()
        return self.reference_cache(what, compute)

    def texts_at(self, indices: Sequence[int]) -> list[str]:
        return [self.texts[i] for i in indices]


@dataclass
class Output:
    """One analysis's results: the parts of ``analysis.json`` it fills (see suite.py)."""

    scalars: dict = field(default_factory=dict)
    tables: dict = field(default_factory=dict)
    images: dict = field(default_factory=dict)
    per_head: dict = field(default_factory=dict)
    details: dict = field(default_factory=dict)

    PARTS = ("scalars", "tables", "images", "per_head", "details")

    def scalar(self, name: str, value) -> None:
        self.scalars[name] = float(value)

    def table(self, name: str, columns: list, data: list) -> None:
        self.tables[name] = {"columns": columns, "data": data}

    def parts(self) -> dict:
        return {part: getattr(self, part) for part in self.PARTS}

