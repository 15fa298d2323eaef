"""The seed paper's analyses of a tuned policy against its reference (docs/analyses.md).

One module per analysis (``weights``, ``activations``, ``ablation``, ``heads``,
``sentiment_attention``), each with ``run(ctx) -> Output`` (``context``); ``suite.run_analysis``
runs the enabled ones (``suite.ANALYSES``) and merges their outputs; ``hooks`` holds the ablation's
forward hooks; ``cli.main`` is the ``dpo-ppo-analyze`` Hydra app; ``config.AnalysisConfig`` is the
``analysis`` config group.  Kept import-light: dpo_ppo.config imports ``analysis.config``.
"""
