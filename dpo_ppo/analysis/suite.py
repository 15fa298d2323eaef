"""The analysis suite: every analysis of the seed paper for one (reference, policy) pair.

``run_analysis`` is what the pipeline's ``analyze`` stage and ``dpo-ppo-analyze`` call.  It returns
(and writes to ``out_dir/analysis.json``)::

    {"scalars":  {"analysis/...": float},           # flat, stable names: W&B summary / report
     "tables":   {name: {"columns": [...], "data": [[...], ...]}},
     "images":   {name: "out_dir/plots/....png"},
     "per_head": {"ablation/policy/zero/lm_loss_increase": [[...]], ...},  # layer x head matrices
     "details":  {...per-layer curves, top heads, prompts, sample completions...},
     "errors":   {analysis: message}}                  # only analyses that failed

``per_head`` holds only 2-D ``[layer][head]`` lists under flat names, so that a report can draw
any of them as a heat map without knowing the analysis.

Each analysis is a module with ``run(ctx) -> Output`` (context.py): ``ANALYSES`` maps the name of
its switch in ``AnalysisConfig`` to that function.  The suite builds the ``Context`` once, runs the
enabled analyses in that order, each timed (``analysis/time_s/NAME``) and with its error caught,
and merges their outputs; scalars get the ``analysis/`` prefix.  A failing analysis contributes
its error and its time, nothing else.  See docs/analyses.md for what each number means.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
import traceback
from pathlib import Path
from typing import Callable, Sequence

import torch

from dpo_ppo.analysis import ablation, activations, heads, over_training, sentiment_attention, weights
from dpo_ppo.analysis.common import evaluating
from dpo_ppo.config.analysis import AnalysisConfig
from dpo_ppo.analysis.context import Context, Output
from dpo_ppo.results import write_atomic

log = logging.getLogger(__name__)

# name (the AnalysisConfig switch) -> run(ctx); the order they run and appear in
ANALYSES: dict[str, Callable[[Context], Output]] = {
    "weights": weights.run,
    "activations": activations.run,
    "ablation": ablation.run,
    "heads": heads.run,
    "sentiment_attention": sentiment_attention.run,
    "heads_over_training": over_training.run,
}


def _as_config(cfg) -> AnalysisConfig:
    if isinstance(cfg, AnalysisConfig):
        return cfg
    if hasattr(cfg, "_metadata"):  # OmegaConf DictConfig
        from omegaconf import OmegaConf

        cfg = OmegaConf.to_container(cfg, resolve=True)
    names = {f.name for f in dataclasses.fields(AnalysisConfig)}
    return AnalysisConfig(**{k: v for k, v in dict(cfg).items() if k in names})


def _finite(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    if isinstance(x, torch.Tensor):
        return _finite(x.tolist())
    return x


def _empty() -> dict:
    return {"scalars": {}, "tables": {}, "images": {}, "per_head": {}, "details": {}, "errors": {}}


def _merge(res: dict, out: Output) -> None:
    """Add one analysis's output to the suite's result; a name two analyses share is a bug."""
    parts = out.parts()
    parts["scalars"] = {f"analysis/{k}": v for k, v in parts["scalars"].items()}
    for part, items in parts.items():
        clash = sorted(set(items) & set(res[part]))
        if clash:
            raise ValueError(f"{part} {clash} already written by another analysis")
    for part, items in parts.items():
        res[part].update(items)


def run_analysis(cfg_analysis, reference, policy, tokenizer, *, texts: list[str], labels: list[int], scorer,
                 out_dir: Path, snapshots: Sequence[Path] = (), device=None, strict: bool = False,
                 reference_cache=None) -> dict:
    """Run the enabled analyses on (reference, policy); write ``out_dir/analysis.json`` and plots.

    ``texts``/``labels`` are held-out reviews (1 = positive); ``scorer.p_positive(texts)`` is the
    sentiment classifier; ``snapshots`` are ``save_pretrained`` folders ``.../ex_{examples:07d}``.
    Neither model is modified (bridges and device moves work on copies; hooks are removed).
    ``strict=True`` re-raises the first failing analysis instead of recording it under ``errors``.
    ``reference_cache(what, compute)``: where the reference's side of the per-model analyses is kept
    between runs (``Context``); None computes it here.
    ``cfg_analysis.batch_size`` must be a number here (a null is resolved by the caller).
    """
    cfg = _as_config(cfg_analysis)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    res = _empty()
    if cfg.enabled:
        ctx = Context.build(cfg, reference, policy, tokenizer, texts=texts, labels=labels, scorer=scorer,
                            out_dir=out_dir, snapshots=snapshots, device=device, reference_cache=reference_cache)
        t0 = time.perf_counter()
        with evaluating(reference, policy, *ctx.models.values()):
            for name, run in ANALYSES.items():
                if not getattr(cfg, name):
                    continue
                log.info("analysis: %s", name)
                start = time.perf_counter()
                try:
                    _merge(res, run(ctx))
                except Exception as e:  # one failing analysis must not take the others down
                    if strict:
                        raise
                    log.error("analysis %s failed: %s\n%s", name, e, traceback.format_exc())
                    res["errors"][name] = f"{type(e).__name__}: {e}"
                res["scalars"][f"analysis/time_s/{name}"] = float(time.perf_counter() - start)
        res["scalars"]["analysis/time_s/total"] = float(time.perf_counter() - t0)
    payload = dict(res, config=dataclasses.asdict(cfg))
    write_atomic(out_dir / "analysis.json", json.dumps(_finite(payload), indent=1))
    return res
