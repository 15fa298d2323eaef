"""dpo-ppo-report: a sweep folder -> report/report.md that answers the seed paper's questions.

    dpo-ppo-report multirun/confound                       # the whole sweep
    dpo-ppo-report multirun/paper --compare JOB_A JOB_B    # plus the paper's side-by-side plots
    dpo-ppo-report multirun/confound --pool examples --fdr holm --no-wandb

It reads every job folder (results.json, train_log.jsonl, eval_rows.csv; see dpo_ppo.results) and
the sweeper's sweep.json for jobs not started yet, then writes into PATH/report/:
  report.md        the claims table (the seed's findings, DPO vs PPO at matched KL, with a verdict),
                   the reward-KL frontier, training curves, a short matched-KL section; an appendix
                   with one figure per claim, progress and cost, configurations, every metric
  *.png            the figures
  runs.csv         one row per job: status, params, metrics, compute
  matched_kl.csv   every metric at matched KL, per facet
  summary.json     all of the above as data
  wandb/           the report's W&B run (job_type "report", group = the sweep name; the same run
                   each time the report is re-made), offline unless --wandb-mode online

Package layout: load (reading the sweep), facets and arms (which runs a comparison pools), estimator
(the matched-KL difference: the joint fit, its noise, its bands), stats (t-intervals, sup-t, FDR),
claims (the seed's list), verdicts (each claim's test and verdict rule), render (the words: report.md
and summary.json's records), figures (the PNGs), build (the steps: read, compute, draw, write),
wandb_run (the report's W&B run), dashboard (the sweep's W&B workspace), cli (the command, its exits).
"""

from dpo_ppo.report.build import Report, ReportError, build_report
from dpo_ppo.report.cli import main
from dpo_ppo.report.facets import make_facets
from dpo_ppo.report.load import Run, configurations, finished, load_run, load_sweep, metric_names
from dpo_ppo.report.stats import JointModel, Stat, benjamini_hochberg, holm, mean_ci
from dpo_ppo.report.verdicts import claims_table
from dpo_ppo.report.wandb_run import log_to_wandb, report_run_id

__all__ = ["main", "Report", "ReportError", "build_report", "log_to_wandb", "report_run_id", "load_sweep", "load_run", "Run", "finished",
           "configurations", "metric_names", "make_facets", "claims_table", "mean_ci", "Stat",
           "JointModel", "benjamini_hochberg", "holm"]
