"""An RLHF problem whose answer is known in closed form, for PPO and DPO (issue 21).

Two prompts, completions of exactly ``LENGTH`` = 3 tokens over ``WORDS`` = 3 words: 27 completions
per prompt, so the reference's, the optimum's and a trained policy's whole sequence distributions
are computed exactly, by enumeration.

- Tokens: ``word_tokenizer(7)``: t0, t1, t2 (completions), t3, t4 (prompts), <eos>, <pad>.  The toy
  GPT-NeoX's weights give every id but t0-t2 a logit of -1e4 (``ban_tokens``), so every completion
  is 3 of those words (``generate``, PPO's and TRL's log-probs all see the same distribution; no
  EOS, no first-token ban).
- Prompts: A = "t3", B = "t4": a prompt word never met in a completion (a prompt of completion words
  repeated, "t0 t0", made "t0 t0" and "t0 t0 t0" the same context to an attention model without
  position embeddings: no policy it can represent was pi*).  Reward r(x, y) = the number of positions where y matches the
  prompt's target (A: t0 t1 t2, B: t2 t1 t0), 0..3; delivered as a scorer delivers it:
  ``reward_fn(texts) -> p_positive`` with logit(p) = r - 1.5 (a constant shift leaves pi* alone).
- For a KL coefficient beta, ``E_pi[r] - beta KL(pi || pi_ref)`` (per prompt) has the unique
  maximiser pi*(y|x) = pi_ref(y|x) exp(r(x,y) / beta) / Z(x) with value beta log Z(x), and for any
  pi, J(pi) = beta log Z - beta KL(pi || pi*).  At beta 0.1, pi* puts 0.9997 on the target.

Nothing here is a test; ``tests/test_known_answers.py`` and ``benchmarks/known_answers.py`` use it.
"""

from __future__ import annotations

import copy
import itertools
import math

import torch

from fixtures import toy_model, word_tokenizer

WORDS, LENGTH = 3, 3
PROMPTS = {"A": [3], "B": [4]}
TARGETS = {"A": (0, 1, 2), "B": (2, 1, 0)}
COMPLETIONS = [list(y) for y in itertools.product(range(WORDS), repeat=LENGTH)]  # 27
SHIFT = 1.5  # logit(p_positive) = r - SHIFT
BANNED = [3, 4, 5, 6]  # t3, t4 (the prompts), <eos>, <pad>: never in a completion


def ban_tokens(model, banned: list[int]) -> None:
    """Give the ids in ``banned`` a logit of -1e4 in the weights themselves, so that every way of
    computing log-probs sees it (TRL's DPOTrainer multiplies the hidden states by the head's weight
    directly, past any module's forward): the final LayerNorm's last hidden unit is a constant 1
    (weight 0, bias 1) and the banned rows of the head read -1e4 from it and nothing else.  Gradient
    hooks keep those entries where they are (zero gradient: AdamW leaves them, decay is 0)."""
    ln, head = model.base_model.final_layer_norm, model.get_output_embeddings()
    last = ln.weight.shape[0] - 1
    with torch.no_grad():
        ln.weight[last], ln.bias[last] = 0.0, 1.0
        head.weight[banned] = 0.0
        head.weight[banned, last] = -1e4
    unit = torch.zeros_like(ln.weight, dtype=torch.bool)
    unit[last] = True
    rows = torch.zeros_like(head.weight, dtype=torch.bool)
    rows[banned] = True
    ln.weight.register_hook(lambda g: g.masked_fill(unit, 0))
    ln.bias.register_hook(lambda g: g.masked_fill(unit, 0))
    head.weight.register_hook(lambda g: g.masked_fill(rows, 0))


def tokenizer():
    return word_tokenizer(WORDS + 4)


def reference(tok, seed: int = 0, hidden: int = 16, layers: int = 1):
    """The reference policy: a random toy GPT-NeoX whose head emits t0, t1, t2 only."""
    model = toy_model(tok, hidden=hidden, layers=layers, heads=2, context=16, seed=seed)
    ban_tokens(model, BANNED)
    return model


def trainable_copy(model):
    """A copy to train, with the hooks that keep the ban (``deepcopy`` is not relied on to copy them)."""
    policy = copy.deepcopy(model)
    ban_tokens(policy, BANNED)
    return policy


def reward(prompt: str, completion) -> float:
    return float(sum(a == b for a, b in zip(completion, TARGETS[prompt])))


def reward_fn(texts: list[str]) -> torch.Tensor:
    """The scorer: text "prompt y1 y2 y3" -> p_positive with logit r - SHIFT."""
    out = []
    for text in texts:
        words = [int(w[1:]) for w in text.split()]
        prompt = next(k for k, v in PROMPTS.items() if v == words[:len(v)])
        out.append(reward(prompt, words[len(PROMPTS[prompt]):]) - SHIFT)
    return torch.sigmoid(torch.tensor(out, dtype=torch.float64)).float()


def rewards() -> dict[str, torch.Tensor]:
    return {k: torch.tensor([reward(k, y) for y in COMPLETIONS], dtype=torch.float64) for k in PROMPTS}


@torch.no_grad()
def sequence_logprobs(model) -> dict[str, torch.Tensor]:
    """log pi(y | x) of all 27 completions of each prompt, exactly (float64 log-softmax)."""
    out = {}
    for name, prompt in PROMPTS.items():
        ids = torch.tensor([prompt + y for y in COMPLETIONS])
        logits = model(input_ids=ids).logits[:, len(prompt) - 1: -1].double()
        logp = logits.log_softmax(-1).gather(-1, ids[:, len(prompt):, None]).squeeze(-1)
        out[name] = logp.sum(1)
    return out


def optimum(ref_logp: dict, beta: float) -> dict[str, torch.Tensor]:
    """log pi*(y | x) = log pi_ref + r / beta - log Z."""
    r = rewards()
    return {k: (ref_logp[k] + r[k] / beta).log_softmax(0) for k in PROMPTS}


def log_z(ref_logp: dict, beta: float) -> dict[str, float]:
    r = rewards()
    return {k: float(torch.logsumexp(ref_logp[k] + r[k] / beta, 0)) for k in PROMPTS}


def kl(logp: torch.Tensor, logq: torch.Tensor) -> float:
    return float((logp.exp() * (logp - logq)).sum())


def objective(logp: dict, ref_logp: dict, beta: float) -> float:
    """J(pi) = E_pi[r] - beta KL(pi || pi_ref), averaged over the two prompts."""
    r = rewards()
    return sum(float((logp[k].exp() * r[k]).sum()) - beta * kl(logp[k], ref_logp[k]) for k in PROMPTS) / len(PROMPTS)


def beta_for_kl(ref_logp: dict, target: float, lo: float = 1e-3, hi: float = 1e3) -> float:
    """beta*(T): the coefficient whose optimum has KL(pi* || pi_ref) = T (mean over prompts), by
    bisection in log beta (the optimum's KL falls as beta grows)."""
    def opt_kl(beta):
        star = optimum(ref_logp, beta)
        return sum(kl(star[k], ref_logp[k]) for k in PROMPTS) / len(PROMPTS)

    for _ in range(100):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if opt_kl(mid) > target else (lo, mid)
    return math.sqrt(lo * hi)


def measure(policy, ref_logp: dict, beta: float) -> dict:
    """Exact figures of a policy against the optimum for ``beta`` (means over the two prompts)."""
    logp = sequence_logprobs(policy)
    star = optimum(ref_logp, beta)
    z = log_z(ref_logp, beta)
    j_star = beta * sum(z.values()) / len(z)
    j_ref, j = objective(ref_logp, ref_logp, beta), objective(logp, ref_logp, beta)
    r = rewards()
    return {"kl_to_opt": sum(kl(logp[k], star[k]) for k in PROMPTS) / len(PROMPTS),
            "kl_to_opt_max": max(kl(logp[k], star[k]) for k in PROMPTS),
            "kl_to_ref": sum(kl(logp[k], ref_logp[k]) for k in PROMPTS) / len(PROMPTS),
            "opt_kl_to_ref": sum(kl(star[k], ref_logp[k]) for k in PROMPTS) / len(PROMPTS),
            "ref_kl_to_opt": sum(kl(ref_logp[k], star[k]) for k in PROMPTS) / len(PROMPTS),
            "j": j, "j_star": j_star, "j_ref": j_ref, "gain": (j - j_ref) / (j_star - j_ref),
            "p_target": {k: float(logp[k][COMPLETIONS.index(list(TARGETS[k]))].exp()) for k in PROMPTS},
            "p_target_opt": {k: float(star[k][COMPLETIONS.index(list(TARGETS[k]))].exp()) for k in PROMPTS}}


def prompt_list(n: int) -> list[list[int]]:
    """n training prefixes, A and B alternating (every rollout of an even size holds both equally)."""
    return [list(PROMPTS["AB"[i % 2]]) for i in range(n)]


def ppo_config(**overrides):
    """The toy's PPO settings: the algorithm's defaults except sizes, lr and the KL settings."""
    from dpo_ppo.config import PPOAlgorithmConfig

    base = dict(examples=8 * 100, rollout_prefixes=8, num_completions=8, completion_len=LENGTH,
                lr=3e-3, batch_size=64, snapshot_every=10 ** 9)
    base.update(overrides)
    return PPOAlgorithmConfig(**base)


def _train_with(trainer, cfg, out_dir, seed: int, model_seed: int, log):
    """``trainer(cfg, policy, ref, tok, prompts, reward_fn, out_dir, ...)`` on the toy from a fresh
    copy of the reference; returns (policy, ref, exact ref log-probs, summary)."""
    tok = tokenizer()
    ref = reference(tok, seed=model_seed)
    policy = trainable_copy(ref)
    ref_logp = sequence_logprobs(ref)
    summary = trainer(cfg, policy, ref, tok, prompt_list(cfg.examples), reward_fn, out_dir, seed=seed,
                      log_fn=(lambda m, step: log.append(m)) if log is not None else None)
    return policy, ref, ref_logp, summary


def train(cfg, out_dir, seed: int = 0, model_seed: int = 0, log=None):
    """The real ``train_ppo`` on the toy; returns (policy, ref, exact ref log-probs, summary)."""
    from dpo_ppo.train.ppo import train_ppo

    return _train_with(train_ppo, cfg, out_dir, seed, model_seed, log)


def preference_pairs(ref_logp: dict, n: int, seed: int = 0):
    """``n`` preference pairs (half per prompt) as the prefs stage saves them (token ids): two
    completions drawn from pi_ref (exactly, from the enumeration; redrawn while equal), the first
    preferred with the Bradley-Terry probability sigmoid(r1 - r2).  DPO's population optimum on such
    pairs, with its beta, is the same pi* as RLHF's at kl_coef = beta."""
    from datasets import Dataset

    g = torch.Generator().manual_seed(seed)
    r = rewards()
    cols = {"prompt_ids": [], "chosen_ids": [], "rejected_ids": []}
    for i in range(n):
        name = "AB"[i % 2]
        probs = ref_logp[name].exp()
        while True:
            a, b = torch.multinomial(probs, 2, replacement=True, generator=g).tolist()
            if a != b:
                break
        first = float(torch.rand((), generator=g, dtype=torch.float64)) < torch.sigmoid(r[name][a] - r[name][b])
        chosen, rejected = (a, b) if first else (b, a)
        cols["prompt_ids"].append(list(PROMPTS[name]))
        cols["chosen_ids"].append(COMPLETIONS[chosen])
        cols["rejected_ids"].append(COMPLETIONS[rejected])
    return Dataset.from_dict(cols)


def train_dpo(beta: float, pairs: int, out_dir, *, seed: int = 0, model_seed: int = 0, **algo_overrides):
    """The project's DPO path (``dpo_ppo.train.dpo.train_dpo``, TRL's DPOTrainer on token pairs) on the
    toy; returns (policy, ref, exact ref log-probs, summary)."""
    from omegaconf import OmegaConf

    from dpo_ppo.train.dpo import train_dpo as run_dpo

    tok = tokenizer()
    ref = reference(tok, seed=model_seed)
    policy = trainable_copy(ref)
    ref_logp = sequence_logprobs(ref)
    algo = OmegaConf.create({"beta": beta, "loss_type": "sigmoid", "label_smoothing": 0.0, "lr": 3e-3,
                             "weight_decay": 0.0, "adam_eps": 1e-8, "max_grad_norm": 1.0, "batch_size": 32,
                             "epochs": 4.0, "prefix_len": 1, "prefix_len_max": None, "completion_len": LENGTH,
                             "snapshot_every": 10 ** 9, **algo_overrides})
    summary = run_dpo(algo, policy, ref, tok, preference_pairs(ref_logp, pairs, seed=seed), out_dir, seed=seed)
    return policy.eval(), ref, ref_logp, summary


def rl_config(name: str = "rloo", **overrides):
    """The toy's RLOO / GRPO settings (TRL's trainers, dpo_ppo.train.rl): 8 prompts x 8 samples per
    step, lr 3e-3, as the PPO settings."""
    from dpo_ppo.config import GRPOAlgorithmConfig, RLOOAlgorithmConfig

    base = dict(examples=8 * 200, batch_size=8, num_completions=8, completion_len=LENGTH, lr=3e-3,
                snapshot_every=10 ** 9, beta=1.0)
    base.update(overrides)
    return (RLOOAlgorithmConfig if name == "rloo" else GRPOAlgorithmConfig)(**base)


def train_rl(cfg, out_dir, seed: int = 0, model_seed: int = 0, log=None):
    """The project's ``train_rl`` (TRL's RLOOTrainer / GRPOTrainer) on the toy; returns (policy, ref,
    exact ref log-probs, summary)."""
    from dpo_ppo.train.rl import train_rl as run_rl

    policy, ref, ref_logp, summary = _train_with(run_rl, cfg, out_dir, seed, model_seed, log)
    return policy.eval(), ref, ref_logp, summary


def group_advantage(probs: torch.Tensor, values: torch.Tensor, group: int = 8, scale: bool = True) -> torch.Tensor:
    """E[A | R = v] for each reward value v: TRL's GRPO advantage A = (R - mean) / (std + 1e-4) of a
    completion whose reward is v, in a group of ``group`` completions of one prompt whose other
    ``group - 1`` rewards are drawn i.i.d. with ``probs`` over ``values`` (mean and Bessel std over the
    whole group, the completion itself included, as ``trl.trainer.utils.nanstd``); without ``scale``,
    A = R - mean, whose expectation is (group - 1) / group (v - E[R]).  Exact, by enumerating the
    other completions' rewards."""
    out = torch.zeros(len(values), dtype=torch.float64)
    for others in itertools.combinations_with_replacement(range(len(values)), group - 1):
        counts = [others.count(i) for i in range(len(values))]
        weight = math.factorial(group - 1)
        for i, n in enumerate(counts):
            weight = weight / math.factorial(n) * float(probs[i]) ** n
        if weight == 0.0:
            continue
        rest = values[list(others)]
        for i, v in enumerate(values):
            g = torch.cat([v.view(1), rest])
            a = v - g.mean()
            out[i] += weight * (a / (g.std() + 1e-4) if scale else a)
    return out


@torch.no_grad()
def grpo_fixed_point(ref, beta: float, scale_rewards: str = "group", group: int = 8, bias_correction: bool = True,
                     iters: int = 200, tol: float = 1e-10) -> dict[str, torch.Tensor]:
    """Where the expected update of TRL 1.16's GRPO loss vanishes on the toy, for a policy free at
    every state (docs/kl_control.md, "GRPO's fixed point"); log-probs of the 27 completions per prompt.

    On-policy (num_iterations 1) the loss of a completion is, per token t (the same 1 / |y| for
    every token: loss_type grpo, bnpo, dr_grpo and dapo agree at a fixed length),
    -A w_t + beta k3_t w_t with w_t = pi(y_t|s_t) / stop_grad(pi(y_t|s_t)) (``use_bias_correction_kl``,
    TRL's default) and k3_t = pi_ref/pi - log(pi_ref/pi) - 1.  Its expected gradient on the logits
    of state s (weighted by the chance of visiting s, which is not differentiated) is
    pi(a|s) (Q(s,a) - V(s)) - beta grad KL(pi(.|s) || pi_ref(.|s)), with Q(s, a) = E_pi[f(R) | s, a]
    and f = ``group_advantage`` (the advantage's expectation given the completion's reward, which
    depends on pi through the other completions of the group).  It vanishes where, at every state,

        pi(a|s) = pi_ref(a|s) exp(Q(s,a) / beta) / Z(s)

    a per-state tilt by the *expected* (not the KL-discounted, soft) reward-to-go: later tokens'
    KL never holds an earlier token back, unlike pi* = pi_ref exp(r / beta) / Z.  Without the
    correction (``bias_correction=False``: E[grad k3] = grad KL(pi_ref || pi) per state) it is
    pi(a|s) = beta pi_ref(a|s) / (lam_s - Q(s,a)), lam_s > max_a Q normalising.  Solved from the
    last token up for a given f; f and pi by a damped iteration to a fixed point."""
    if scale_rewards not in ("group", "none"):
        raise ValueError(f"scale_rewards: {scale_rewards!r} is not modelled; group or none")
    r_all = rewards()
    values = torch.arange(LENGTH + 1, dtype=torch.float64)  # the toy's rewards, 0..LENGTH
    out = {}
    for name, prompt in PROMPTS.items():
        p_ref_at = {}

        def p_ref(prefix: tuple) -> torch.Tensor:
            if prefix not in p_ref_at:
                logits = ref(input_ids=torch.tensor([prompt + list(prefix)])).logits[0, -1].double()
                p = logits.log_softmax(-1)[:WORDS].exp()
                p_ref_at[prefix] = p / p.sum()
            return p_ref_at[prefix]

        def solve(f: torch.Tensor) -> torch.Tensor:
            logp = {}

            def value(prefix: tuple) -> float:
                if len(prefix) == LENGTH:
                    return float(f[int(r_all[name][COMPLETIONS.index(list(prefix))])])
                q = torch.tensor([value(prefix + (a,)) for a in range(WORDS)], dtype=torch.float64)
                if bias_correction:
                    pi = (p_ref(prefix).log() + q / beta).softmax(0)
                else:
                    lo, hi = float(q.max()) + 1e-15, float(q.max()) + beta + 1.0
                    for _ in range(200):
                        lam = 0.5 * (lo + hi)
                        lo, hi = (lam, hi) if float((beta * p_ref(prefix) / (lam - q)).sum()) > 1 else (lo, lam)
                    pi = beta * p_ref(prefix) / (0.5 * (lo + hi) - q)
                    pi = pi / pi.sum()
                for a in range(WORDS):
                    logp[prefix + (a,)] = float(pi[a].log())
                return float((pi * q).sum())

            value(())
            return torch.tensor([sum(logp[tuple(y[:t + 1])] for t in range(LENGTH)) for y in COMPLETIONS],
                                dtype=torch.float64)

        seq = solve(torch.zeros(len(values), dtype=torch.float64))  # f = 0: pi_ref itself
        f = None
        for _ in range(iters):
            probs = torch.stack([seq.exp()[r_all[name] == v].sum() for v in values])
            f_new = group_advantage(probs, values, group, scale_rewards == "group")
            f = f_new if f is None else 0.5 * f + 0.5 * f_new
            seq_new = solve(f)
            done = float((seq_new - seq).abs().max()) < tol
            seq = seq_new
            if done:
                break
        else:
            raise RuntimeError(f"grpo_fixed_point: no fixed point after {iters} iterations (beta {beta}, {name})")
        out[name] = seq
    return out


def measure_grpo(policy, ref, cfg) -> dict:
    """A GRPO-trained policy against GRPO's fixed point for ``cfg`` (its beta, scale_rewards and group
    size) from the reference ``ref``: KL(pi || fixed point) (mean and worse prompt), and the fixed
    point's KL to the reference and p(target), beside the policy's own (``measure``)."""
    point = grpo_fixed_point(ref, cfg.beta, cfg.scale_rewards, cfg.num_completions)
    ref_logp, logp = sequence_logprobs(ref), sequence_logprobs(policy)
    target = {k: COMPLETIONS.index(list(TARGETS[k])) for k in PROMPTS}
    return {"kl_to_fixed": sum(kl(logp[k], point[k]) for k in PROMPTS) / len(PROMPTS),
            "kl_to_fixed_max": max(kl(logp[k], point[k]) for k in PROMPTS),
            "fixed_kl_to_ref": sum(kl(point[k], ref_logp[k]) for k in PROMPTS) / len(PROMPTS),
            "p_target_fixed": {k: float(point[k][target[k]].exp()) for k in PROMPTS}}


class BradleyTerryScorer:
    """The toy's reward as a scorer whose best-of-2 is a Bradley-Terry draw: logit(p_positive) =
    r + Gumbel noise, so of two completions the prefs stage keeps a as chosen with probability
    sigmoid(r_a - r_b) (the difference of two Gumbels is logistic).  It parses the prefs stage's
    joined text ("t3" + "t0 t1 t2": no space after the prompt)."""

    def __init__(self, seed: int = 0):
        self.g = torch.Generator().manual_seed(seed)

    def p_positive(self, texts: list[str]) -> torch.Tensor:
        import re

        logits = torch.logit(reward_fn([" ".join(re.findall(r"t\d", t)) for t in texts]).double()) + SHIFT
        u = torch.rand(len(texts), generator=self.g, dtype=torch.float64).clamp(1e-12, 1 - 1e-12)
        return torch.sigmoid(logits - torch.log(-torch.log(u))).float()
