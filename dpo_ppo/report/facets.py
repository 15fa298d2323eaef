"""Which runs a comparison pools: facets.

A facet is the runs of one value of every shared axis (``results.FACET_KEYS``, and the overrides
params do not say) on which the two algorithms can be compared; an axis whose values the two
never share, or one ``--pool`` names, is pooled over instead, and every facet says so. The
arms beyond DPO and PPO (which runs an arm holds, which two arms a section compares) are
``report.arms``; the matched-KL estimate of one facet is ``report.estimator``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from dpo_ppo import results as R
from dpo_ppo.report.load import LABELS, Run, finished

OVERRIDES = "overrides"  # pseudo facet key: overrides params do not say (experiment=..., model=...)
FACETS = R.FACET_KEYS + (OVERRIDES,)
PAIR = ("ppo", "dpo")  # the default comparison: effect = PAIR[0] - PAIR[1] (PPO - DPO)
RUN_CONDITIONS = {"experiment=paper_run1": "run 1", "experiment=paper_run2": "run 2"}  # the seed's two rounds


def label(algorithm: str) -> str:
    return LABELS.get(algorithm, str(algorithm).upper())


def facet_value(run: Run, key: str) -> Any:
    if key == OVERRIDES:  # an algorithm's own settings (algorithm.*) place runs; they are no shared axis
        return " ".join(o for o in run.extra_overrides() if not o.startswith("algorithm."))
    value = run.params.get(key)
    if key == "compute" and value == "native" and R.schedule_is_matched(run.config):
        return None  # its own schedule is matched's: it stands in both facets (DPO at its defaults)
    return tuple(value) if isinstance(value, list) else value


@dataclass
class Facet:
    values: Dict[str, Any]  # split keys and the value this facet has
    pooled: Dict[str, Dict[str, List[Any]]]  # pooled keys: algorithm -> its distinct values
    runs: Dict[str, List[Run]]

    def label(self) -> str:
        """The facet's name: its split keys' values ("all runs" without any)."""
        return ", ".join(f"{k}={_text(v)}" for k, v in self.values.items()) or "all runs"

    def condition(self) -> Optional[str]:
        """The seed's run condition this facet holds ("run 1" / "run 2": experiment=paper_run1/2),
        None when the sweep does not say."""
        text = str(self.values.get(OVERRIDES, ""))
        return next((c for o, c in RUN_CONDITIONS.items() if o in text.split()), None)

    def side(self, algorithm: str) -> List[Run]:
        return self.runs.get(algorithm, [])

    def pooled_text(self) -> str:
        """What the facet pools over, per algorithm ('' when nothing)."""
        return "; ".join(f"{k} (" + ", ".join(f"{label(a)} {'/'.join(map(_text, v))}" for a, v in per.items() if v)
                         + ")" for k, per in self.pooled.items())


def _text(value: Any) -> str:
    return "none" if value == "" else str(value)


def make_facets(runs: Sequence[Run], pool: Sequence[str] = (), pair: Tuple[str, str] = PAIR
                ) -> Tuple[List[Facet], List[str]]:
    """Facets of the finished runs, and notes on what was split, pooled or not applicable.

    A facet key whose values differ splits the runs, unless the two algorithms share no value of
    it (then no facet could compare them) or ``pool`` names it: then the runs are pooled over it
    and every facet says so. An algorithm without the key (None: DPO has no value model) joins
    every facet of it. Runs with status ``diverged`` join the facets they match (on the finished
    runs' values) so that every comparison they would have entered counts and names them."""
    done = finished(runs)
    diverged = [r for r in runs if r.status == R.DIVERGED and r.algorithm]
    split: List[str] = []
    pooled: Dict[str, Dict[str, List[Any]]] = {}
    notes: List[str] = []
    for key in FACETS:
        per = {a: sorted({facet_value(r, key) for r in done if r.algorithm == a} - {None}, key=str)
               for a in R.ALGORITHMS}
        values = set().union(*per.values())
        if len(values) <= 1:
            continue
        one, two = per.get(pair[1], []), per.get(pair[0], [])
        if key in pool:
            pooled[key] = per
            notes.append(f"pooled over {key} as asked (--pool)")
        elif one and two and not set(one) & set(two):
            pooled[key] = per
            notes.append(f"pooled over {key}: {label(pair[1])} and {label(pair[0])} runs share no value of it")
        else:
            split.append(key)
    combos = sorted({tuple(facet_value(r, k) for k in split) for r in done}, key=str)
    # a run without a value for a split key (not applicable: DPO has no value model) joins every
    # facet that agrees with it on the other keys; its own combination is dropped when covered
    combos = [c for c in combos if not any(
        d != c and all(x is None or x == y for x, y in zip(c, d)) for d in combos)]
    facets = []
    for combo in combos:
        values = {k: v for k, v in zip(split, combo) if v is not None}
        members: Dict[str, List[Run]] = {a: [] for a in R.ALGORITHMS}
        for r in done + diverged:
            if all(facet_value(r, k) in (None, v) for k, v in values.items()):
                members.setdefault(r.algorithm or "", []).append(r)
        facets.append(Facet(values, pooled, members))
    return facets, notes
