"""The command lines: how bad input ends (``exits``), and the commands that are only a command line
over the packages below (``analyze``: ``dpo-ppo-analyze`` over ``analysis``; ``sync``:
``dpo-ppo-sync`` over ``runtime.wandb_sync``).

    dpo-ppo          dpo_ppo/main.py           one job, or a sweep with -m (a Hydra app)
    dpo-ppo-analyze  dpo_ppo/cli/analyze.py    the analysis suite on saved models (a Hydra app)
    dpo-ppo-report   dpo_ppo/report/cli.py     a sweep folder -> report.md
    dpo-ppo-sync     dpo_ppo/cli/sync.py       upload a sweep's offline W&B runs

This is the top layer of the package (docs/architecture.md): it may import any other, and no
module outside the command lines imports it.
"""
