"""dpo-ppo: what DPO and PPO do differently to a language model, measured at matched KL.

The package in the order a job runs (docs/architecture.md): ``config`` (the one way in),
``data`` (reviews, models, scorer, prompts, pairs, cache), ``train`` (sampling, DPO, PPO),
``evaluate``, ``analysis``, ``job`` (one job's stages), ``results`` (the results contract and a
job's identity), ``runtime`` (how a job runs), ``sweep`` (a sweep's grid and triage), ``report``.
"""

__version__ = "0.1.0"
