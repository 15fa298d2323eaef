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


@torch.no_grad()
def grpo_fixed_point(ref, beta: float, scale: bool = True, iters: int = 50) -> dict[str, torch.Tensor]:
    """Where GRPO's expected update vanishes on the toy, for a policy free at every state
    (docs/kl_control.md, "GRPO's fixed point"); log-probs of the 27 completions per prompt.

    On-policy (num_iterations 1, ratio 1) TRL's GRPO loss with loss_type grpo and a fixed length is,
    per sequence, (1 / |y|) sum_t [-A ∇log pi(y_t | s_t) + beta ∇k3_t], A = (r - mean) / std over the
    group.  E_{a ~ pi}[∇ k3] = ∇ KL(pi_ref(.|s) || pi(.|s)): the *forward* KL per visited state. Its
    gradient on the logits of state s is (pi - pi_ref); the policy gradient's is pi(a|s) (Q(s,a) -
    V(s)) / sigma.  They cancel where pi(a|s) = c pi_ref(a|s) / (lam_s - Q(s,a)) with c = beta sigma
    and lam_s > max_a Q(s, a) the root of sum_a pi(a|s) = 1 (then V(s) = lam_s - c): solved from the
    last token up, sigma (the reward's std under the fixed point, 1 with scale=False) by iteration."""
    r_all = rewards()
    out = {}
    for name, prompt in PROMPTS.items():
        sigma = 1.0
        for _ in range(iters if scale else 1):
            logp = {}  # completion -> log-prob

            def value(prefix: list) -> float:
                """V(prefix) under the fixed point, filling logp for completions below it."""
                if len(prefix) == LENGTH:
                    return float(r_all[name][COMPLETIONS.index(prefix)])
                q = torch.tensor([value(prefix + [a]) for a in range(WORDS)], dtype=torch.float64)
                logits = ref(input_ids=torch.tensor([prompt + prefix])).logits[0, -1].double()
                p_ref = logits.log_softmax(-1)[:WORDS].exp()
                p_ref = p_ref / p_ref.sum()
                c = beta * sigma
                lo, hi = float(q.max()) + 1e-12, float(q.max()) + c + 1.0
                while float((c * p_ref / (hi - q)).sum()) > 1:
                    hi += hi - lo
                for _ in range(200):
                    lam = 0.5 * (lo + hi)
                    lo, hi = (lam, hi) if float((c * p_ref / (lam - q)).sum()) > 1 else (lo, lam)
                pi = c * p_ref / (0.5 * (lo + hi) - q)
                pi = pi / pi.sum()
                for a in range(WORDS):
                    logp.setdefault(tuple(prefix + [a]), float(pi[a].log()))
                return float((pi * q).sum())

            value([])
            seq = torch.tensor([sum(logp[tuple(y[:t + 1])] for t in range(LENGTH)) for y in COMPLETIONS],
                               dtype=torch.float64)
            p = seq.exp()
            mean = float((p * r_all[name]).sum())
            sigma = math.sqrt(max(float((p * (r_all[name] - mean) ** 2).sum()), 1e-12)) if scale else 1.0
        out[name] = seq
    return out


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
