"""The console scripts' shared ends: how bad input ends (``exits``) and the small commands that are
only a command line over a package (``sync``: ``dpo-ppo-sync`` over ``runtime.wandb_sync``).

    dpo-ppo          dpo_ppo/main.py           one job, or a sweep with -m (a Hydra app)
    dpo-ppo-analyze  dpo_ppo/analysis/cli.py   the analysis suite on saved models (a Hydra app)
    dpo-ppo-report   dpo_ppo/report/cli.py     a sweep folder -> report.md
    dpo-ppo-sync     dpo_ppo/cli/sync.py       upload a sweep's offline W&B runs

This is the top layer of the package (docs/architecture.md): it may import any other, and no
module outside the command lines imports it.
"""
