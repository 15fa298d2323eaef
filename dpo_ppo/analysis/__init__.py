"""The seed paper's analyses of a tuned policy against its reference (docs/analyses.md).

``suite.run_analysis`` runs them all; ``cli.main`` is ``dpo-ppo-analyze``; ``config.AnalysisConfig``
is the ``analysis`` config group.  Kept import-light: dpo_ppo.config imports ``analysis.config``.
"""
