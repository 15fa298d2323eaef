"""The seed paper's analyses of a tuned policy against its reference (docs/analyses.md).

One module per analysis (``weights``, ``activations``, ``ablation``, ``heads``,
``sentiment_attention``), each with ``run(ctx) -> Output`` (``context``); ``suite.run_analysis``
runs the enabled ones (``suite.ANALYSES``) and merges their outputs; ``hooks`` holds the ablation's
forward hooks.  The ``dpo-ppo-analyze`` Hydra app is ``dpo_ppo.cli.analyze``; the ``analysis``
config group is ``dpo_ppo.config.analysis.AnalysisConfig``.
"""
