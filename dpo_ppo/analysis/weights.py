"""Analysis 1: mean-square divergence of the tuned parameters from the reference (seed 2.2, 3.2).

Definitions (all in the parameters' own units, no normalisation):

* per tensor ``t``:  ``msd(t) = mean_i (theta_i - theta_ref_i)^2`` over its elements;
* ``msd_weights`` / ``msd_biases``: the same mean pooled over *all elements* of every weight
  (resp. bias) tensor, i.e. ``sum of squared differences / number of elements``, so a big matrix
  counts in proportion to its size.  ``msd_*_tensor_mean`` is the unweighted mean of the
  per-tensor values instead (each tensor counts once, as a bar chart of tensors reads);
* a tensor is a *bias* when its name ends in ``bias`` and a *weight* otherwise (embeddings,
  projections, the unembedding and the LayerNorm gains are weights);
* ``msd_layer{L}``: pooled over every parameter of transformer block ``L`` (``...layers.L....``);
  parameters outside the blocks (embeddings, final LayerNorm, unembedding) appear per tensor;
* over training: the divergence of every snapshot from the reference (cumulative: where training
  has taken the model so far, the seed's "cumulative mean square divergence") and from the
  snapshot before it (the step: how far that stretch of training moved it).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable, Mapping

import torch

from dpo_ppo.analysis import plots
from dpo_ppo.analysis.context import Context, Output
from dpo_ppo.runtime.progress import tqdm  # plain lines when stderr is not a terminal

_LAYER = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer)\.(\d+)\.")
_SNAPSHOT = re.compile(r"ex_(\d+)$")


def param_kind(name: str) -> str:
    return "bias" if name.endswith("bias") else "weight"


def layer_of(name: str) -> int | None:
    m = _LAYER.search(name)
    return int(m.group(1)) if m else None


def parameters(model) -> dict[str, torch.Tensor]:
    """Float copies on the CPU of a model's parameters (buffers such as rotary tables excluded);
    copies, so that later training steps do not change them."""
    return {n: p.detach().float().cpu().clone() for n, p in model.named_parameters()}


def divergence(reference: Mapping[str, torch.Tensor], tuned: Mapping[str, torch.Tensor]) -> dict:
    """Mean-square divergence of ``tuned`` from ``reference`` (two name -> tensor maps).

    Tensors present in only one map or with different shapes are listed under ``skipped``.
    """
    tensors, skipped = [], []
    sums = {"weight": [0.0, 0], "bias": [0.0, 0], "all": [0.0, 0]}
    layers: dict[int, dict[str, list]] = {}
    for name, ref in reference.items():
        if name not in tuned or tuned[name].shape != ref.shape:
            skipped.append(name)
            continue
        diff = tuned[name].float() - ref.float()
        sq = float((diff.double() ** 2).sum())
        numel = diff.numel()
        kind, layer = param_kind(name), layer_of(name)
        tensors.append({"tensor": name, "kind": kind, "layer": -1 if layer is None else layer,
                        "numel": numel, "msd": sq / max(numel, 1)})
        for key in (kind, "all"):
            sums[key][0] += sq
            sums[key][1] += numel
        if layer is not None:
            acc = layers.setdefault(layer, {"weight": [0.0, 0], "bias": [0.0, 0], "all": [0.0, 0]})
            for key in (kind, "all"):
                acc[key][0] += sq
                acc[key][1] += numel
    skipped += [n for n in tuned if n not in reference]

    def ratio(pair):
        return pair[0] / pair[1] if pair[1] else 0.0

    def tensor_mean(kind):
        vals = [t["msd"] for t in tensors if t["kind"] == kind]
        return sum(vals) / len(vals) if vals else 0.0

    return {
        "msd_all": ratio(sums["all"]),
        "msd_weights": ratio(sums["weight"]),
        "msd_biases": ratio(sums["bias"]),
        "msd_weights_tensor_mean": tensor_mean("weight"),
        "msd_biases_tensor_mean": tensor_mean("bias"),
        "layers": {L: {k: ratio(v) for k, v in acc.items()} for L, acc in sorted(layers.items())},
        "tensors": tensors,
        "skipped": skipped,
    }


def snapshot_examples(folder: Path) -> int:
    """``.../snapshots/ex_0002000`` -> 2000 (training examples seen when it was saved)."""
    m = _SNAPSHOT.search(Path(folder).name)
    if not m:
        raise ValueError(f"{folder}: a snapshot folder is named ex_{{examples:07d}}")
    return int(m.group(1))


def find_snapshots(folder: Path) -> list[Path]:
    """The ``ex_*`` folders of ``folder/snapshots`` (a job folder) or of ``folder`` itself, by examples."""
    root = Path(folder) / "snapshots" if (Path(folder) / "snapshots").is_dir() else Path(folder)
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and _SNAPSHOT.search(p.name)), key=snapshot_examples)


def load_parameters(folder: Path) -> dict[str, torch.Tensor]:
    """Parameters of a ``save_pretrained`` folder, named as the in-memory model names them."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    return parameters(model)


def over_training(reference: Mapping[str, torch.Tensor], snapshots: Iterable[Path],
                  final: Mapping[str, torch.Tensor] | None = None, final_examples: int | None = None,
                  loader=load_parameters) -> list[dict]:
    """One row per snapshot (sorted by examples): cumulative and step divergence.

    ``final`` (the finished policy) is appended as the last row when given and not already a
    snapshot at ``final_examples``.
    """
    points = [(snapshot_examples(p), p) for p in snapshots]
    points.sort(key=lambda t: t[0])
    rows, previous = [], reference
    seen = set()
    for examples, folder in tqdm(points, desc="snapshots", unit="snapshot", leave=False, disable=len(points) < 2):
        params = loader(folder)
        rows.append(_row(examples, reference, previous, params))
        previous = params
        seen.add(examples)
    if final is not None and (final_examples is None or final_examples not in seen):
        rows.append(_row(final_examples if final_examples is not None else -1, reference, previous, final))
    return rows


def _row(examples, reference, previous, params) -> dict:
    cum, step = divergence(reference, params), divergence(previous, params)
    row = {"examples": examples, "msd_all": cum["msd_all"], "msd_weights": cum["msd_weights"],
           "msd_biases": cum["msd_biases"], "step_msd_weights": step["msd_weights"],
           "step_msd_biases": step["msd_biases"]}
    for L, v in cum["layers"].items():
        row[f"msd_layer{L}"] = v["all"]
    return row


# --------------------------------------------------------------------------- the analysis


def run(ctx: Context) -> Output:
    """Scalars ``weights/...``, tables ``weights_per_tensor`` (and ``weights_over_training`` with
    snapshots), plots and the per-layer values, of the caller's models (not the device copies)."""
    out = Output()
    ref = parameters(ctx.reference)
    pol = parameters(ctx.policy)
    d = divergence(ref, pol)
    for key in ("msd_all", "msd_weights", "msd_biases", "msd_weights_tensor_mean", "msd_biases_tensor_mean"):
        out.scalar(f"weights/{key}", d[key])
    out.scalar("weights/bias_weight_ratio", d["msd_biases"] / d["msd_weights"] if d["msd_weights"] else float("nan"))
    for L, v in d["layers"].items():
        out.scalar(f"weights/msd_layer{L}", v["all"])
        out.scalar(f"weights/msd_layer{L}_weights", v["weight"])
        out.scalar(f"weights/msd_layer{L}_biases", v["bias"])
    out.table("weights_per_tensor", ["tensor", "kind", "layer", "numel", "msd"],
              [[t["tensor"], t["kind"], t["layer"], t["numel"], t["msd"]] for t in d["tensors"]])
    out.details["weights_per_layer"] = {str(L): v for L, v in d["layers"].items()}
    out.details["weights_skipped"] = d["skipped"]
    out.images["weights_summary"] = plots.bars(
        {"weights": d["msd_weights"], "biases": d["msd_biases"]}, ctx.plot_dir / "weights_summary.png",
        "Mean-square divergence from the reference", "MSD")
    layers = sorted(d["layers"])
    out.images["weights_per_layer"] = plots.lines(
        layers, {k: [d["layers"][L][k] for L in layers] for k in ("weight", "bias", "all")},
        ctx.plot_dir / "weights_per_layer.png", "Divergence per layer", "layer", "MSD")
    if ctx.cfg.snapshots and ctx.snapshots:
        rows = over_training(ref, ctx.snapshots)
        cols = list(rows[0].keys())
        out.table("weights_over_training", cols, [[r[c] for c in cols] for r in rows])
        out.scalar("weights/num_snapshots", len(rows))
        x = [r["examples"] for r in rows]
        out.images["weights_over_training"] = plots.lines(
            x, {"weights (cumulative)": [r["msd_weights"] for r in rows],
                "biases (cumulative)": [r["msd_biases"] for r in rows],
                "weights (step)": [r["step_msd_weights"] for r in rows],
                "biases (step)": [r["step_msd_biases"] for r in rows]},
            ctx.plot_dir / "weights_over_training.png", "Divergence over training", "examples", "MSD")
    return out
