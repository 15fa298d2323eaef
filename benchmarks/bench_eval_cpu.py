"""CPU cost of the evaluation stage on the embedded default: the code in this checkout, or another.

    python benchmarks/bench_eval_cpu.py                      # this checkout
    PYTHONPATH=/path/to/older/checkout python benchmarks/bench_eval_cpu.py   # the same with older code

Evaluates the embedded default's reference model (from a warm artifact cache, ``--cache``) on the
2000 test prefixes as a job's evaluate stage does (sampling, scoring, KL against a reference; the
policy is the reference itself here: the cost is the same) and prints seconds per part.  Two
threads by default, as the machines here have.  Prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import inspect
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", default=".cache/dpo-ppo", help="a warm artifact cache of the embedded default")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from hydra import compose, initialize_config_dir

    import dpo_ppo.evaluate as E
    from dpo_ppo.job import EVAL_PROMPT_SEED
    from dpo_ppo.main import CONF_DIR
    from dpo_ppo.data.models import load_policy
    from dpo_ppo.data.prompts import make_prefixes
    from dpo_ppo.data.scorer import Scorer
    from datasets import load_from_disk

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=["logger=none", "analysis=none"])
    cache = Path(args.cache)
    def newest(kind: str) -> Path:
        return max((p for p in (cache / kind).iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)

    base, cls = newest("base"), newest("classifier")
    corpus = load_from_disk(str(newest("corpus")))
    ref, tok = load_policy(base, "cpu")
    policy, _ = load_policy(base, "cpu")
    scorer = Scorer.load(cls, "cpu")
    prompts = make_prefixes(corpus["test"]["text"], tok, cfg.eval.num_prompts, cfg.eval.prefix_len, seed=EVAL_PROMPT_SEED)
    eval_cfg = cfg.eval
    kwargs = {}
    params = inspect.signature(E.evaluate_model).parameters
    for name in ("hw", "runtime"):  # the parameter's name now, and before issue 33
        if name in params:
            from dpo_ppo.runtime import hardware

            kwargs[name] = hardware.resolve(cfg, torch.device("cpu"))
            break
    print(f"code: {Path(E.__file__).parents[1]}; {len(prompts)} prompts x {eval_cfg.completion_len} tokens, "
          f"{torch.get_num_threads()} threads")
    for _ in range(args.repeats):
        t0 = time.time()
        metrics, _ = E.evaluate_model(policy, tok, scorer, prompts, eval_cfg, ref_model=ref, desc="eval", **kwargs)
        print(f"evaluate: {time.time() - t0:.1f} s (reward {metrics['p_positive_mean']:.4f}, KL {metrics['kl_to_ref']:.4f}, "
              f"length {metrics['completion_len']:.1f})", flush=True)


if __name__ == "__main__":
    main()
