"""Analysis 3: ablate every attention head, one at a time (seed 2.3, 3.3).

What an ablation does.  In a GPT-NeoX block the heads' outputs ``z`` (``[..., n_heads * d_head]``,
head ``h`` in columns ``h*d_head:(h+1)*d_head``) enter the output projection ``attention.dense``
together; ablating head ``h`` of layer ``L`` replaces its slice there by

* ``zero``: zeros (the head writes nothing but the projection's bias), or
* ``mean``: its mean over every real token of the held-out LM texts (one vector per head, the
  same at every position), which removes what the head says about *this* input while keeping
  its average contribution, so that downstream layers see an in-distribution stream.

What is measured, per head and kind, as a change against the unablated model:

* **LM loss**: the token-weighted mean next-token cross-entropy on held-out texts;
* **sentiment objective** (the seed's two losses): completions are sampled from the ablated model
  for a few prompts and scored by the classifier: gradient loss ``mean(1 - p_positive)`` and binary
  loss ``fraction with p_positive < 0.5``.  Sampling noise would swamp the effect of one head with
  a handful of prompts, so every variant samples with *common random numbers*: at step ``t`` of
  prompt ``i`` all variants draw the same Gumbel noise ``g[i, t, :]`` and take
  ``argmax(logits / T + g)``, an exact sample from ``softmax(logits / T)`` (the Gumbel-max trick).
  The unablated model and an ablated one therefore write the same completion wherever the ablation
  does not change the choice, and a delta is the ablation's effect, not a fresh draw.  Scoring
  prompt + completion (the default) is the objective the policy was trained on.

How it is batched.  The naive way runs one full evaluation per (head, kind): ``2 * L * H + 1`` passes
over the texts.  Here the variants are stacked along the batch dimension, so one forward (or one
``generate``) evaluates many ablations, and for the LM loss the blocks below the ablated layer (in
a parallel-residual block such as Pythia's, that block too) run once for all of them: the hooks
that do this are in ``hooks.py``.  ``benchmarks/bench_ablation.py`` measures each step against the
naive loop on the same inputs.  Hooks are removed on exit; the model is never modified.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from dpo_ppo.analysis import plots
from dpo_ppo.analysis.common import batches, blocks, encode, head_dim, model_device, n_heads, n_layers
from dpo_ppo.analysis.context import Context, Output
from dpo_ppo.analysis.hooks import StackedAblation, Variant, expand_after, expand_at, variants_for
from dpo_ppo.runtime.progress import tqdm  # plain lines when stderr is not a terminal
from dpo_ppo.train.sampling import pad_batch, pad_token_id

# --------------------------------------------------------------------------- LM loss


@torch.no_grad()
def head_means(model, seqs: list[list[int]], *, pad: int, batch_size: int = 16) -> dict[int, torch.Tensor]:
    """Each head's mean output z over every real token of ``seqs``: {layer: [H, d_head]}."""
    H, dh = n_heads(model), head_dim(model)
    device = model_device(model)
    sums = {L: torch.zeros(H * dh, dtype=torch.float64) for L in range(n_layers(model))}
    count = 0
    current = {}

    def grab(L):
        def hook(module, args):
            x = args[0]
            m = current["mask"]
            sums[L] += (x.double() * m[..., None]).sum((0, 1)).cpu()
        return hook

    handles = [blocks(model)[L].attention.dense.register_forward_pre_hook(grab(L)) for L in sums]
    try:
        for span in batches(len(seqs), batch_size):
            ids, mask = pad_batch(seqs[span], pad, left=False, device=device)
            current["mask"] = mask.double()
            _base(model)(input_ids=ids, use_cache=False)
            count += int(mask.sum())
    finally:
        for h in handles:
            h.remove()
    return {L: (s / max(count, 1)).float().view(H, dh) for L, s in sums.items()}


def _base(model):
    return getattr(model, "gpt_neox", None) or model.base_model


def _nll(model, ids: torch.Tensor, mask: torch.Tensor, chunk: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row sum of next-token NLL over real targets, and the number of targets.

    ``ids``/``mask`` may have fewer rows than the hidden state (when expanded inside the model);
    they are tiled to match, replicate-major.
    """
    hidden = _base(model)(input_ids=ids, use_cache=False).last_hidden_state
    reps = hidden.shape[0] // ids.shape[0]
    ids, mask = ids.repeat(reps, 1), mask.repeat(reps, 1)
    head = model.get_output_embeddings()
    target_mask = (mask[:, 1:] & mask[:, :-1]).float()
    sums = []
    for span in batches(hidden.shape[0], chunk):
        logits = head(hidden[span, :-1]).float()
        nll = F.cross_entropy(logits.transpose(1, 2), ids[span, 1:], reduction="none")
        sums.append((nll * target_mask[span]).sum(-1))
    return torch.cat(sums).double().cpu(), target_mask.sum(-1).double().cpu()


@torch.no_grad()
def lm_losses(model, seqs: list[list[int]], variants: Sequence[Variant], *, pad: int, means=None,
              batch_size: int = 16, rows: int = 512, naive: bool = False, share_lower: bool = True,
              progress: bool = True) -> torch.Tensor:
    """Mean next-token loss on ``seqs`` of the model under each variant: tensor [len(variants)].

    ``naive=True`` is the reference implementation: one full evaluation per variant.  Otherwise
    variants of the same layer are stacked (up to ``rows`` rows per forward) and, with
    ``share_lower``, the blocks below that layer are run once for all of them.
    """
    device = model_device(model)
    total = torch.zeros(len(variants), dtype=torch.float64)
    count = torch.zeros(len(variants), dtype=torch.float64)
    padded = [pad_batch(seqs[s], pad, left=False, device=device) for s in batches(len(seqs), batch_size)]
    if naive:
        for r, v in enumerate(tqdm(variants, desc="ablation (naive)", leave=False, disable=not progress)):
            with StackedAblation(model, [v], means):
                for ids, mask in padded:
                    s, c = _nll(model, ids, mask)
                    total[r] += s.sum()
                    count[r] += c.sum()
        return total / count
    # group the variants by the layer they ablate (the baseline counts as layer n_layers: nothing shared)
    parallel = bool(getattr(model.config, "use_parallel_residual", False))
    groups: dict[int, list[int]] = {}
    for r, v in enumerate(variants):
        groups.setdefault(n_layers(model) if v is None else v[0], []).append(r)
    jobs = []
    for layer, members in sorted(groups.items()):
        for ids, mask in padded:
            per = max(1, rows // ids.shape[0])
            for span in batches(len(members), per):
                jobs.append((layer, members[span], ids, mask))
    for layer, members, ids, mask in tqdm(jobs, desc="ablation (LM loss)", leave=False, disable=not progress):
        vs = [variants[r] for r in members]
        ablation = StackedAblation(model, vs, means)
        if share_lower and layer < n_layers(model) and parallel:
            # block `layer` and those below run once; its output is expanded and corrected
            with expand_after(model, layer, ablation):
                s, c = _nll(model, ids, mask)
        elif share_lower and 0 < layer < n_layers(model):
            # blocks below `layer` run once, then the batch is tiled and ablated at `layer`
            with ablation, expand_at(model, layer, len(vs)):
                s, c = _nll(model, ids, mask)
        else:
            with ablation:
                s, c = _nll(model, ids.repeat(len(vs), 1), mask.repeat(len(vs), 1))
        b = ids.shape[0]
        total[members] += s.view(len(vs), b).sum(1)
        count[members] += c.view(len(vs), b).sum(1)
    return total / count


# --------------------------------------------------------------------------- sentiment


class SharedGumbelSampler:
    """Logits processor: ``logits / T + g[prompt of the row, step]`` with Gumbel noise shared by all
    rows of the same prompt; under greedy decoding this samples from softmax(logits / T)."""

    def __init__(self, prompt_of_row: torch.Tensor, width: int, n_prompts: int, temperature: float, seed: int):
        self.rows = prompt_of_row
        self.width, self.n_prompts, self.temperature, self.seed = width, n_prompts, temperature, seed
        self._noise: dict[int, torch.Tensor] = {}

    def noise(self, step: int, vocab: int) -> torch.Tensor:
        if step not in self._noise:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
            u = torch.rand(self.n_prompts, vocab, generator=g, dtype=torch.float64)
            self._noise[step] = -torch.log(-torch.log(u.clamp(1e-12, 1 - 1e-12))).float()
        return self._noise[step]

    def __call__(self, input_ids, scores):
        step = input_ids.shape[1] - self.width
        g = self.noise(step, scores.shape[-1]).to(scores.device)
        return scores.float() / self.temperature + g[self.rows.to(scores.device)]


@torch.no_grad()
def sample_completions(model, prompts: list[list[int]], variants: Sequence[Variant], *, pad: int, eos: int,
                       max_new_tokens: int, temperature: float = 1.0, seed: int = 0, means=None,
                       rows: int = 512, naive: bool = False, progress: bool = True) -> list[list[list[int]]]:
    """Completions (token ids, cut after EOS) for every variant and prompt: [variant][prompt] -> ids.

    Common random numbers: the sample of prompt i under any variant uses the same noise.
    """
    from transformers import LogitsProcessorList

    device = model_device(model)
    P = len(prompts)
    ids, mask = pad_batch(prompts, pad, left=True, device=device)
    per = 1 if naive else max(1, rows // P)
    out: list[list[list[int]]] = []
    spans = list(batches(len(variants), per))
    for span in tqdm(spans, desc="ablation (sampling)", leave=False, disable=not progress):
        vs = list(variants[span])
        R = len(vs)
        sampler = SharedGumbelSampler(torch.arange(P).repeat(R), ids.shape[1], P, temperature, seed)
        with StackedAblation(model, vs, means):
            seqs = model.generate(input_ids=ids.repeat(R, 1), attention_mask=mask.repeat(R, 1),
                                  do_sample=False, num_beams=1, max_new_tokens=max_new_tokens,
                                  logits_processor=LogitsProcessorList([sampler]), pad_token_id=pad,
                                  eos_token_id=eos, temperature=None, top_k=None, top_p=None)
        new = seqs[:, ids.shape[1]:].tolist()
        for r in range(R):
            rows_r = []
            for toks in new[r * P:(r + 1) * P]:
                if eos in toks:
                    toks = toks[: toks.index(eos) + 1]
                rows_r.append(toks)
            out.append(rows_r)
    return out


def sentiment_losses(scorer, tokenizer, prompts, completions, *, score_prompt: bool = True) -> dict:
    """Gradient loss mean(1 - p) and binary loss mean(p < 0.5) per variant."""
    texts = []
    for comp in completions:
        for p, c in zip(prompts, comp):
            texts.append(tokenizer.decode((list(p) if score_prompt else []) + list(c), skip_special_tokens=True))
    p = scorer.p_positive(texts).double().view(len(completions), len(prompts))
    return {"p_positive": p.mean(1), "grad_loss": (1 - p).mean(1), "binary_loss": (p < 0.5).double().mean(1)}


# --------------------------------------------------------------------------- the analysis


def ablate_heads(model, tokenizer, *, lm_seqs: list[list[int]], prompts: list[list[int]] | None = None,
                 scorer=None, kinds: Sequence[str] = ("zero", "mean"), completion_len: int = 16,
                 temperature: float = 1.0, score_prompt: bool = True, batch_size: int = 16, rows: int = 512,
                 seed: int = 0, pad: int | None = None, naive: bool = False, share_lower: bool = True,
                 progress: bool = True) -> dict:
    """Every head ablated alone, zero and/or mean: LM loss and (with a scorer) sentiment deltas.

    Returns per kind ``[layer][head]`` matrices ``lm_loss_increase`` and, with a scorer,
    ``grad_loss_delta``/``binary_loss_delta``, plus the unablated baselines.
    """
    pad = pad_token_id(tokenizer) if pad is None else pad
    L, H = n_layers(model), n_heads(model)
    variants = variants_for(model, kinds)
    means = head_means(model, lm_seqs, pad=pad, batch_size=batch_size) if "mean" in kinds else None
    losses = lm_losses(model, lm_seqs, variants, pad=pad, means=means, batch_size=batch_size, rows=rows,
                       naive=naive, share_lower=share_lower, progress=progress)
    base = float(losses[0])
    result = {"lm_loss_base": base, "num_lm_texts": len(lm_seqs), "kinds": {}}
    index = {v: r for r, v in enumerate(variants)}

    def grid(values, kind, minus):
        return [[float(values[index[(l, h, kind)]] - minus) for h in range(H)] for l in range(L)]

    for kind in kinds:
        result["kinds"][kind] = {"lm_loss_increase": grid(losses, kind, base)}
    if scorer is not None and prompts:
        eos = tokenizer.eos_token_id
        comps = sample_completions(model, prompts, variants, pad=pad, eos=eos, max_new_tokens=completion_len,
                                   temperature=temperature, seed=seed, means=means, rows=rows, naive=naive,
                                   progress=progress)
        sent = sentiment_losses(scorer, tokenizer, prompts, comps, score_prompt=score_prompt)
        result["grad_loss_base"] = float(sent["grad_loss"][0])
        result["binary_loss_base"] = float(sent["binary_loss"][0])
        result["num_prompts"] = len(prompts)
        for kind in kinds:
            result["kinds"][kind]["grad_loss_delta"] = grid(sent["grad_loss"], kind, result["grad_loss_base"])
            result["kinds"][kind]["binary_loss_delta"] = grid(sent["binary_loss"], kind, result["binary_loss_base"])
        result["completions_base"] = [tokenizer.decode(c, skip_special_tokens=True) for c in comps[0]]
    return result


def robustness(grid: list[list[float]]) -> dict:
    """Mean and max over heads of a layer x head matrix (the seed's robustness to ablation)."""
    flat = torch.tensor(grid, dtype=torch.float64).flatten()
    arg = int(flat.argmax())
    H = len(grid[0])
    return {"mean": float(flat.mean()), "max": float(flat.max()), "argmax_layer": arg // H, "argmax_head": arg % H}


def _prompts(ctx: Context) -> list[list[int]]:
    """Held-out review prefixes of exactly ``ablation_prefix_len`` tokens (shorter only if too few),
    from texts other than the LM-loss ones."""
    cfg = ctx.cfg
    pool = ctx.order[cfg.ablation_lm_texts:] or ctx.order
    full, _ = encode(ctx.tokenizer, ctx.texts_at(pool), cfg.ablation_prefix_len, min_tokens=cfg.ablation_prefix_len)
    if len(full) < cfg.ablation_prompts:
        short, _ = encode(ctx.tokenizer, ctx.texts_at(pool), cfg.ablation_prefix_len, min_tokens=2)
        full = full + [s for s in short if len(s) < cfg.ablation_prefix_len]
    return full[: cfg.ablation_prompts]


def run(ctx: Context) -> Output:
    """Scalars ``ablation/{model}/...``, table ``ablation``, every ``[layer][head]`` delta matrix,
    heat maps and the baselines (with sample completions) of the policy and, if asked, the reference."""
    cfg, out = ctx.cfg, Output()
    lm_idx = ctx.order[: cfg.ablation_lm_texts]
    lm_seqs, _ = encode(ctx.tokenizer, ctx.texts_at(lm_idx), cfg.max_tokens)
    prompts = None
    if cfg.ablation_sentiment and ctx.scorer is not None:
        prompts = _prompts(ctx)
    names = ["reference", "policy"] if cfg.ablation_reference else ["policy"]
    rows, per_model = [], {}
    for name in names:
        # the reference's ablation is the same in every job of a sweep: computed once (Context)
        r = ctx.for_model(name, "ablation", lambda: ablate_heads(
            ctx.models[name], ctx.tokenizer, lm_seqs=lm_seqs, prompts=prompts,
            scorer=ctx.scorer if prompts else None, kinds=list(cfg.ablation_kinds),
            completion_len=cfg.ablation_completion_len, temperature=cfg.ablation_temperature,
            score_prompt=cfg.ablation_score_prompt, batch_size=cfg.batch_size, rows=cfg.ablation_rows,
            seed=cfg.seed, pad=ctx.pad))
        per_model[name] = r
        out.scalar(f"ablation/{name}/lm_loss_base", r["lm_loss_base"])
        for base in ("grad_loss_base", "binary_loss_base"):
            if base in r:
                out.scalar(f"ablation/{name}/{base}", r[base])
        for kind, grids in r["kinds"].items():
            for metric, grid in grids.items():
                rob = robustness(grid)
                out.scalar(f"ablation/{name}/{kind}/{metric}_mean", rob["mean"])
                out.scalar(f"ablation/{name}/{kind}/{metric}_max", rob["max"])
                if metric != "lm_loss_increase":
                    out.scalar(f"ablation/{name}/{kind}/{metric}_min", min(min(row) for row in grid))
            for L in range(ctx.n_layers):
                for h in range(ctx.n_heads):
                    rows.append([name, kind, L, h] + [grids[m][L][h] if m in grids else None
                                                      for m in ("lm_loss_increase", "grad_loss_delta",
                                                                "binary_loss_delta")])
    out.table("ablation", ["model", "kind", "layer", "head", "lm_loss_increase", "grad_loss_delta",
                           "binary_loss_delta"], rows)
    for name, r in per_model.items():
        for kind, grids in r["kinds"].items():
            for metric, grid in grids.items():
                out.per_head[f"ablation/{name}/{kind}/{metric}"] = grid
    out.details["ablation"] = {name: {k: v for k, v in r.items() if k != "kinds"} for name, r in per_model.items()}
    for metric, label in (("lm_loss_increase", "LM loss increase (nats)"),
                          ("grad_loss_delta", "change in mean(1 - p_positive)")):
        panels = {f"{name} {kind}": per_model[name]["kinds"][kind][metric]
                  for name in names for kind in cfg.ablation_kinds if metric in per_model[name]["kinds"][kind]}
        if panels:
            out.images[f"ablation_{metric}"] = plots.heatmaps(
                panels, ctx.plot_dir / f"ablation_{metric}.png", f"Head ablation: {label}",
                diverging=True, cbar=label)
    return out
