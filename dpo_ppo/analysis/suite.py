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

See docs/analyses.md for what each number means.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
import traceback
from pathlib import Path
from typing import Sequence

import torch

from dpo_ppo.analysis import ablation as abl
from dpo_ppo.analysis import activations as act
from dpo_ppo.analysis import heads as hds
from dpo_ppo.analysis import plots
from dpo_ppo.analysis import sentiment_attention as sat
from dpo_ppo.analysis import weights as wts
from dpo_ppo.analysis.common import (boot_bridge, encode, evaluating, n_heads, n_layers, on_device, pad_id,
                                     resolve_device, select_balanced, shuffled_indices)
from dpo_ppo.analysis.config import AnalysisConfig

log = logging.getLogger(__name__)

MODELS = ("reference", "policy")


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


class _Suite:
    def __init__(self, cfg: AnalysisConfig, reference, policy, tokenizer, texts, labels, scorer, out_dir: Path,
                 snapshots, device, strict: bool):
        self.cfg, self.tokenizer, self.scorer = cfg, tokenizer, scorer
        self.texts, self.labels = list(texts), [int(y) for y in labels]
        self.out_dir, self.plot_dir = Path(out_dir), Path(out_dir) / "plots"
        self.snapshots = list(snapshots or ())
        self.strict = strict
        self.device = resolve_device(device if device is not None else cfg.device, policy)
        self.originals = {"reference": reference, "policy": policy}
        self.models = {"reference": on_device(reference, self.device), "policy": on_device(policy, self.device)}
        self.pad = pad_id(tokenizer)
        self.order = shuffled_indices(len(self.texts), cfg.seed)
        self._bridges = {}
        self.res = {"scalars": {}, "tables": {}, "images": {}, "per_head": {}, "details": {}, "errors": {}}
        L, H = n_layers(policy), n_heads(policy)
        if (n_layers(reference), n_heads(reference)) != (L, H):
            raise ValueError(f"reference ({n_layers(reference)}x{n_heads(reference)}) and policy ({L}x{H}) "
                             f"differ in shape")
        self.L, self.H = L, H

    # ------------------------------------------------------------------ plumbing

    def scalar(self, name: str, value) -> None:
        self.res["scalars"][f"analysis/{name}"] = float(value)

    def table(self, name: str, columns: list[str], data: list[list]) -> None:
        self.res["tables"][name] = {"columns": columns, "data": data}

    def bridge(self, name: str):
        if name not in self._bridges:
            self._bridges[name] = boot_bridge(self.models[name], self.tokenizer, self.device)
        return self._bridges[name]

    def texts_at(self, indices: Sequence[int]) -> list[str]:
        return [self.texts[i] for i in indices]

    def run(self, name: str, fn) -> None:
        t0 = time.perf_counter()
        try:
            fn()
        except Exception as e:  # one failing analysis must not take the others down
            if self.strict:
                raise
            log.error("analysis %s failed: %s\n%s", name, e, traceback.format_exc())
            self.res["errors"][name] = f"{type(e).__name__}: {e}"
        self.scalar(f"time_s/{name}", time.perf_counter() - t0)

    # ------------------------------------------------------------------ 1. weights

    def weights(self) -> None:
        ref = wts.parameters(self.originals["reference"])
        pol = wts.parameters(self.originals["policy"])
        d = wts.divergence(ref, pol)
        for key in ("msd_all", "msd_weights", "msd_biases", "msd_weights_tensor_mean", "msd_biases_tensor_mean"):
            self.scalar(f"weights/{key}", d[key])
        self.scalar("weights/bias_weight_ratio", d["msd_biases"] / d["msd_weights"] if d["msd_weights"] else float("nan"))
        for L, v in d["layers"].items():
            self.scalar(f"weights/msd_layer{L}", v["all"])
            self.scalar(f"weights/msd_layer{L}_weights", v["weight"])
            self.scalar(f"weights/msd_layer{L}_biases", v["bias"])
        self.table("weights_per_tensor", ["tensor", "kind", "layer", "numel", "msd"],
                   [[t["tensor"], t["kind"], t["layer"], t["numel"], t["msd"]] for t in d["tensors"]])
        self.res["details"]["weights_per_layer"] = {str(L): v for L, v in d["layers"].items()}
        self.res["details"]["weights_skipped"] = d["skipped"]
        self.res["images"]["weights_summary"] = plots.bars(
            {"weights": d["msd_weights"], "biases": d["msd_biases"]}, self.plot_dir / "weights_summary.png",
            "Mean-square divergence from the reference", "MSD")
        layers = sorted(d["layers"])
        self.res["images"]["weights_per_layer"] = plots.lines(
            layers, {k: [d["layers"][L][k] for L in layers] for k in ("weight", "bias", "all")},
            self.plot_dir / "weights_per_layer.png", "Divergence per layer", "layer", "MSD")
        if self.cfg.snapshots and self.snapshots:
            rows = wts.over_training(ref, self.snapshots)
            cols = list(rows[0].keys())
            self.table("weights_over_training", cols, [[r[c] for c in cols] for r in rows])
            self.scalar("weights/num_snapshots", len(rows))
            x = [r["examples"] for r in rows]
            self.res["images"]["weights_over_training"] = plots.lines(
                x, {"weights (cumulative)": [r["msd_weights"] for r in rows],
                    "biases (cumulative)": [r["msd_biases"] for r in rows],
                    "weights (step)": [r["step_msd_weights"] for r in rows],
                    "biases (step)": [r["step_msd_biases"] for r in rows]},
                self.plot_dir / "weights_over_training.png", "Divergence over training", "examples", "MSD")

    # ------------------------------------------------------------------ 2. activations

    def activations(self) -> None:
        cfg = self.cfg
        idx = select_balanced(self.labels, cfg.activation_prompts, cfg.seed)
        seqs, kept = encode(self.tokenizer, self.texts_at(idx), cfg.max_tokens)
        labels = [self.labels[idx[k]] for k in kept]
        r = act.activation_divergence(self.bridge("reference"), self.bridge("policy"), seqs, labels,
                                      pad=self.pad, batch_size=cfg.batch_size)
        rows = []
        for site, metrics in r["sites"].items():
            for metric, subsets in metrics.items():
                for subset, per_layer in subsets.items():
                    self.scalar(f"activations/{site}/{metric}_{subset}_mean", _mean(per_layer))
                    for L, v in enumerate(per_layer):
                        self.scalar(f"activations/{site}/{metric}_{subset}_layer{L}", v)
                        rows.append([site, metric, subset, L, v])
        self.table("activations", ["site", "metric", "subset", "layer", "value"], rows)
        lens_rows = []
        for subset, per_layer in r["logit_lens_kl"].items():
            suffix = "" if subset == "all" else f"_{subset}"
            for L, v in enumerate(per_layer):
                self.scalar(f"activations/logit_lens_kl{suffix}_layer{L}", v)
                lens_rows.append([subset, L, v])
            self.scalar(f"activations/logit_lens_kl{suffix}_mean", _mean(per_layer))
        self.scalar("activations/output_kl", r["logit_lens_kl"]["all"][-1])
        for subset, n in r["num_prompts"].items():
            self.scalar(f"activations/num_prompts_{subset}", n)
        self.table("logit_lens", ["subset", "layer", "kl"], lens_rows)
        self.res["details"]["activations"] = r
        layers = list(range(self.L))
        for metric in ("cos", "kl"):
            series = {f"{site} {subset}": r["sites"][site][metric][subset]
                      for site in act.SITES for subset in act.SUBSETS}
            self.res["images"][f"activations_{metric}"] = plots.lines(
                layers, series, self.plot_dir / f"activations_{metric}.png",
                "Cosine similarity to the reference" if metric == "cos" else "KL(softmax(tuned) || softmax(ref))",
                "layer", metric)
        self.res["images"]["logit_lens_kl"] = plots.lines(
            layers, r["logit_lens_kl"], self.plot_dir / "logit_lens_kl.png", "Logit-lens KL(tuned || reference)",
            "layer", "nats per token")

    # ------------------------------------------------------------------ 3. ablation

    def ablation(self) -> None:
        cfg = self.cfg
        lm_idx = self.order[: cfg.ablation_lm_texts]
        lm_seqs, _ = encode(self.tokenizer, self.texts_at(lm_idx), cfg.max_tokens)
        prompts = None
        if cfg.ablation_sentiment and self.scorer is not None:
            prompts = self._ablation_prompts()
        names = ["reference", "policy"] if cfg.ablation_reference else ["policy"]
        rows, per_model = [], {}
        for name in names:
            r = abl.ablate_heads(self.models[name], self.tokenizer, lm_seqs=lm_seqs, prompts=prompts,
                                 scorer=self.scorer if prompts else None, kinds=list(cfg.ablation_kinds),
                                 completion_len=cfg.ablation_completion_len, temperature=cfg.ablation_temperature,
                                 score_prompt=cfg.ablation_score_prompt, batch_size=cfg.batch_size,
                                 rows=cfg.ablation_rows, seed=cfg.seed, pad=self.pad)
            per_model[name] = r
            self.scalar(f"ablation/{name}/lm_loss_base", r["lm_loss_base"])
            for base in ("grad_loss_base", "binary_loss_base"):
                if base in r:
                    self.scalar(f"ablation/{name}/{base}", r[base])
            for kind, grids in r["kinds"].items():
                for metric, grid in grids.items():
                    rob = abl.robustness(grid)
                    self.scalar(f"ablation/{name}/{kind}/{metric}_mean", rob["mean"])
                    self.scalar(f"ablation/{name}/{kind}/{metric}_max", rob["max"])
                    if metric != "lm_loss_increase":
                        self.scalar(f"ablation/{name}/{kind}/{metric}_min", min(min(row) for row in grid))
                for L in range(self.L):
                    for h in range(self.H):
                        rows.append([name, kind, L, h] + [grids[m][L][h] if m in grids else None
                                                          for m in ("lm_loss_increase", "grad_loss_delta",
                                                                    "binary_loss_delta")])
        self.table("ablation", ["model", "kind", "layer", "head", "lm_loss_increase", "grad_loss_delta",
                                "binary_loss_delta"], rows)
        for name, r in per_model.items():
            for kind, grids in r["kinds"].items():
                for metric, grid in grids.items():
                    self.res["per_head"][f"ablation/{name}/{kind}/{metric}"] = grid
        self.res["details"]["ablation"] = {
            name: {k: v for k, v in r.items() if k != "kinds"} for name, r in per_model.items()}
        for metric, label in (("lm_loss_increase", "LM loss increase (nats)"),
                              ("grad_loss_delta", "change in mean(1 - p_positive)")):
            panels = {f"{name} {kind}": per_model[name]["kinds"][kind][metric]
                      for name in names for kind in cfg.ablation_kinds if metric in per_model[name]["kinds"][kind]}
            if panels:
                self.res["images"][f"ablation_{metric}"] = plots.heatmaps(
                    panels, self.plot_dir / f"ablation_{metric}.png", f"Head ablation: {label}",
                    diverging=True, cbar=label)

    def _ablation_prompts(self) -> list[list[int]]:
        """Held-out review prefixes of exactly ``ablation_prefix_len`` tokens (shorter only if too few)."""
        cfg = self.cfg
        pool = self.order[cfg.ablation_lm_texts:] or self.order
        full, _ = encode(self.tokenizer, self.texts_at(pool), cfg.ablation_prefix_len, min_tokens=cfg.ablation_prefix_len)
        if len(full) < cfg.ablation_prompts:
            short, _ = encode(self.tokenizer, self.texts_at(pool), cfg.ablation_prefix_len, min_tokens=2)
            full = full + [s for s in short if len(s) < cfg.ablation_prefix_len]
        return full[: cfg.ablation_prompts]

    # ------------------------------------------------------------------ 4. heads

    def heads(self) -> None:
        cfg = self.cfg
        idx = self.order[: cfg.head_texts]
        text_seqs, _ = encode(self.tokenizer, self.texts_at(idx), cfg.max_tokens, prepend_bos=cfg.prepend_bos)
        vocab = min(len(self.tokenizer), self.models["policy"].config.vocab_size)
        random_seqs = hds.repeated_random_tokens(self.tokenizer, cfg.head_random_seqs, cfg.head_random_len,
                                                 seed=cfg.seed, vocab=vocab)
        scores = {name: hds.detect_all(self.bridge(name), text_seqs=text_seqs, random_seqs=random_seqs,
                                       pad=self.pad, batch_size=cfg.batch_size) for name in MODELS}
        rows = []
        per = {name: {t: s.tolist() for t, s in scores[name].items()} for name in MODELS}
        per["change"] = {}
        for t in hds.HEAD_TYPES:
            delta = scores["policy"][t] - scores["reference"][t]
            per["change"][t] = delta.tolist()
            for name in MODELS:
                s = scores[name][t]
                self.scalar(f"heads/{name}/{t}_max", s.max())
                top = int(s.flatten().argmax())
                self.scalar(f"heads/{name}/{t}_top_layer", top // self.H)
                self.scalar(f"heads/{name}/{t}_top_head", top % self.H)
                for L in range(self.L):
                    for h in range(self.H):
                        rows.append([name, t, L, h, float(s[L, h])])
            self.scalar(f"heads/{t}_max_abs_change", delta.abs().max())
            self.scalar(f"heads/{t}_mean_abs_change", delta.abs().mean())
            self.res["images"][f"heads_{t}"] = plots.heatmaps(
                {name: scores[name][t].tolist() for name in MODELS}, self.plot_dir / f"heads_{t}.png",
                f"{t.replace('_', '-')} head score", cbar="score")
        self.res["images"]["heads_change"] = plots.heatmaps(
            per["change"], self.plot_dir / "heads_change.png", "Head score change (policy - reference)",
            diverging=True, cbar="change")
        self.table("heads", ["model", "type", "layer", "head", "score"], rows)
        for group, grids in per.items():
            for t, grid in grids.items():
                self.res["per_head"][f"heads/{group}/{t}"] = grid

    # ------------------------------------------------------------------ 5. sentiment attention

    def sentiment_attention(self) -> None:
        cfg = self.cfg
        prepared = sat.prepare_prompts(self.tokenizer, list(cfg.sentiment_prompts), prepend_bos=cfg.prepend_bos)
        att = {name: sat.attention_to_token(self.bridge(name), prepared) for name in MODELS}
        ref, pol = att["reference"]["mean"], att["policy"]["mean"]
        delta = pol - ref
        top = sat.top_changes(ref, pol, cfg.top_heads)
        for name in MODELS:
            m = att[name]["mean"]
            self.scalar(f"sentiment_attention/{name}/max_attention", m.max())
            self.scalar(f"sentiment_attention/{name}/mean_attention", m.mean())
            best = int(m.flatten().argmax())
            self.scalar(f"sentiment_attention/{name}/top_layer", best // self.H)
            self.scalar(f"sentiment_attention/{name}/top_head", best % self.H)
        self.scalar("sentiment_attention/max_abs_change", delta.abs().max())
        self.scalar("sentiment_attention/mean_abs_change", delta.abs().mean())
        self.scalar("sentiment_attention/top_change", top[0]["change"])
        self.scalar("sentiment_attention/top_change_layer", top[0]["layer"])
        self.scalar("sentiment_attention/top_change_head", top[0]["head"])
        rows = []
        for name in MODELS:
            for i, item in enumerate(prepared):
                for L in range(self.L):
                    for h in range(self.H):
                        rows.append([item["prompt"], name, L, h, float(att[name]["per_prompt"][i, L, h])])
        self.table("sentiment_attention", ["prompt", "model", "layer", "head", "attention"], rows)
        self.table("sentiment_attention_top", ["rank", "layer", "head", "reference", "policy", "change"],
                   [[k, t["layer"], t["head"], t["reference"], t["tuned"], t["change"]] for k, t in enumerate(top)])
        for key, grid in (("reference", ref), ("policy", pol), ("change", delta)):
            self.res["per_head"][f"sentiment_attention/{key}"] = grid.tolist()
        self.res["details"]["sentiment_attention"] = {
            "top_changes": top,
            "prompts": [{"prompt": p["prompt"], "word": p["word"], "position": p["position"], "tokens": p["tokens"],
                         "reference": att["reference"]["per_prompt"][i].tolist(),
                         "policy": att["policy"]["per_prompt"][i].tolist()} for i, p in enumerate(prepared)]}
        self.res["images"]["sentiment_attention"] = plots.heatmaps(
            {"reference": ref.tolist(), "policy": pol.tolist()}, self.plot_dir / "sentiment_attention.png",
            "Attention from later tokens to the sentiment word", cbar="attention")
        self.res["images"]["sentiment_attention_change"] = plots.heatmaps(
            {"policy - reference": delta.tolist()}, self.plot_dir / "sentiment_attention_change.png",
            "Change in attention to the sentiment word", diverging=True, cbar="change")
        layer = cfg.attention_layer
        if layer < 0:
            layer = top[0]["layer"] if abs(top[0]["change"]) > 0 else self.L - 1
        if layer >= self.L:
            log.warning("analysis.attention_layer=%d but the model has %d layers; plotting the last", layer, self.L)
            layer = self.L - 1
        self.scalar("sentiment_attention/plotted_layer", layer)
        for i, item in enumerate(prepared):
            key = f"attention_L{layer}_p{i}"
            self.res["images"][key] = plots.attention_patterns(
                {name: att[name]["patterns"][i][layer].numpy() for name in MODELS}, item["tokens"],
                self.plot_dir / f"{key}.png", f"Layer {layer} attention: {item['text']!r} (red: {item['word']!r})",
                mark=item["position"])
            _circuitsvis(item["tokens"], {name: att[name]["patterns"][i][layer] for name in MODELS},
                         self.plot_dir / f"{key}.html")


def _mean(values) -> float:
    vals = [v for v in values if v == v]
    return sum(vals) / len(vals) if vals else float("nan")


def _circuitsvis(tokens, patterns: dict, path: Path) -> None:
    """An interactive page per model, only if circuitsvis happens to be installed (not a dependency)."""
    try:
        import circuitsvis as cv
    except Exception:
        return
    try:
        labels = [t.replace("Ġ", " ") for t in tokens]
        parts = [f"<h3>{name}</h3>{cv.attention.attention_patterns(tokens=labels, attention=p)}"
                 for name, p in patterns.items()]
        path.write_text("<html><body>" + "\n".join(parts) + "</body></html>")
    except Exception as e:  # a visualisation must never fail the analysis
        log.warning("circuitsvis page %s not written: %s", path, e)


def run_analysis(cfg_analysis, reference, policy, tokenizer, *, texts: list[str], labels: list[int], scorer,
                 out_dir: Path, snapshots: Sequence[Path] = (), device=None, strict: bool = False) -> dict:
    """Run the enabled analyses on (reference, policy); write ``out_dir/analysis.json`` and plots.

    ``texts``/``labels`` are held-out reviews (1 = positive); ``scorer.p_positive(texts)`` is the
    sentiment classifier; ``snapshots`` are ``save_pretrained`` folders ``.../ex_{examples:07d}``.
    Neither model is modified (bridges and device moves work on copies; hooks are removed).
    ``strict=True`` re-raises the first failing analysis instead of recording it under ``errors``.
    """
    cfg = _as_config(cfg_analysis)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not cfg.enabled:
        res = {"scalars": {}, "tables": {}, "images": {}, "per_head": {}, "details": {}, "errors": {}}
    else:
        suite = _Suite(cfg, reference, policy, tokenizer, texts, labels, scorer, out_dir, snapshots, device, strict)
        t0 = time.perf_counter()
        with evaluating(reference, policy, *suite.models.values()):
            for name in ("weights", "activations", "ablation", "heads", "sentiment_attention"):
                if getattr(cfg, name):
                    log.info("analysis: %s", name)
                    suite.run(name, getattr(suite, name))
        suite.scalar("time_s/total", time.perf_counter() - t0)
        res = suite.res
    payload = dict(res, config=dataclasses.asdict(cfg))
    (out_dir / "analysis.json").write_text(json.dumps(_finite(payload), indent=1))
    return res
