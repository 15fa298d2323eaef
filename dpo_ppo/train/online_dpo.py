"""Online DPO on our own prefs stage: ``algorithm=dpo algorithm.rounds=R``.

The ``examples`` training prefixes are split into R equal rounds, in order.  Before round r the
*current* policy samples ``num_completions`` completions for each prefix of the round (keyed
sampling, ``data.prefs.build_prefs`` with the round's place among the prefixes, so round 0 of a
policy that still is the reference gives exactly the offline pairs' rows), the classifier keeps the
best and the worst, and TRL's DPOTrainer (``train.dpo.train_dpo``) takes ``epochs`` passes over the
round's pairs with the loss anchored to the frozen reference, as offline.  Each round fills whole
batches (checked), so the run takes offline DPO's optimizer steps on the same number of examples;
R = 1 is offline DPO (one round sampled by the reference: the same pairs, the same weights, bit
for bit: tests/test_online_dpo.py).

Each round starts a fresh Trainer, so AdamW's moments restart at every round (TRL's experimental
OnlineDPOTrainer keeps one optimizer; at R = 4 over 512 examples that is 8 steps per round).

Files in the job folder: ``online/round_<r>/prefs`` (the round's pairs), ``online/round_<r>/trainer``
(its Trainer checkpoints), ``online/round_<r>/policy`` (the policy after the round: a relaunched
job resumes after the last finished round, and inside a round from its checkpoint).  Snapshots
and the log count examples and steps across rounds.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from dpo_ppo.data.prefs import build_prefs
from dpo_ppo.data.snapshots import save_model_dir
from dpo_ppo.train.dpo import train_dpo

log = logging.getLogger(__name__)


def round_slices(examples: int, rounds: int) -> list[tuple[int, int]]:
    """(first, end) prefix indices of each round: equal consecutive slices."""
    size = examples // rounds
    return [(r * size, (r + 1) * size) for r in range(rounds)]


def train_online_dpo(algo, policy, ref_model, tokenizer, scorer, prompts: list[list[int]], job_dir: Path, *,
                     seed: int = 0, log_fn=None, hw=None, probe=None, probe_every: int | None = None) -> dict:
    """Train ``policy`` in place over ``algo.rounds`` rounds (see the module docstring); returns
    train_dpo's summary summed over the rounds, with ``generated_tokens`` (every round's samples)
    and one entry per round under ``rounds``."""
    from datasets import load_from_disk

    job_dir = Path(job_dir)
    root = job_dir / "online"
    steps = examples = 0
    per_round: list[dict] = []
    gen_batch = hw.gen_batch_size if hw is not None else 256
    for r, (first, end) in enumerate(round_slices(len(prompts), algo.rounds)):
        here = root / f"round_{r}"
        done = here / "round.json"
        if done.is_file():  # finished by an earlier attempt: its policy is the next round's start
            info = json.loads(done.read_text())
            if not (root / f"round_{r + 1}" / "round.json").is_file():
                policy.load_state_dict(type(policy).from_pretrained(str(here / "policy"),
                                                                    dtype=policy.dtype).state_dict())
            log.info("online dpo: round %d already done", r)
        else:
            chunk = prompts[first:end]
            prefs_dir = here / "prefs"
            if not (prefs_dir / "prefs.json").is_file():
                # the checkpoint of a round cut short is trained on the pairs it started with
                autocast = hw.autocast if hw is not None else None
                kwargs = {"autocast": autocast} if autocast is not None else {}
                build_prefs(algo, chunk, policy, tokenizer, scorer, prefs_dir, batch_size=gen_batch, seed=seed,
                            first=first, **kwargs)
            prefs = load_from_disk(str(prefs_dir))
            summary = train_dpo(algo, policy, ref_model, tokenizer, prefs, job_dir, seed=seed + r, log_fn=log_fn,
                                hw=hw, probe=probe, probe_every=probe_every,
                                trainer_dir=here / "trainer", offset=(steps, examples))
            save_model_dir(policy, tokenizer, here / "policy")
            prefs_info = json.loads((prefs_dir / "prefs.json").read_text())
            info = {"round": r, "first": first, "end": end, "steps": summary["steps"],
                    "compute": summary["compute"], "train_loss": summary["train_loss"],
                    "generated_tokens": prefs_info["generated_tokens"],
                    "chosen_minus_rejected": prefs_info["chosen_minus_rejected"],
                    "mean_score": prefs_info["mean_score"]}
            done.write_text(json.dumps(info, indent=1))
            log.info("online dpo: round %d of %d: %d pairs sampled by the policy (mean p(positive) %.3f), "
                     "%d steps", r + 1, algo.rounds, end - first, info["mean_score"], summary["steps"])
        per_round.append(info)
        steps += info["steps"]
        examples += info["compute"]["examples_seen"]
    cost = {key: sum(i["compute"][key] for i in per_round)  # the measured cost, results.json's compute
            for key in ("optimizer_steps", "examples_seen", "trained_tokens")}
    cost["generated_tokens"] = sum(i["generated_tokens"] for i in per_round)
    loss = sum(i["train_loss"] * i["steps"] for i in per_round) / max(1, steps)
    return {"train_loss": loss, "steps": steps, "rounds": per_round, "compute": cost, "resumed_from": None}
