"""The grid of a sweep: per-algorithm grids ("arms") crossed with shared axes, as job overrides.

    arms:   {dpo: {algorithm: dpo, algorithm.beta: [0.1, 1]},
             ppo: {algorithm: ppo, algorithm.kl_target: [3, 12]}}
    params: {seed: [0, 1]}
      -> 2 x 2 DPO jobs + 2 x 2 PPO jobs; no PPO job ever carries a beta.

Command-line overrides join the grid (``dpo-ppo -m sweep=confound seed=0,1 model=pythia70m``):
  * a key an arm lists as an axis (``algorithm.beta=0.3,3``) replaces that axis in the arms that
    list it, and never reaches the other arms;
  * a key an arm fixes (``algorithm=dpo``) selects the arms whose fixed value it names; the
    others are dropped (``~hydra.sweeper.arms.ppo`` drops an arm by name: ``check_arms``);
  * any other key adds or replaces a shared axis (a single value is an axis of one).

Grid points that set the same values (``job_signature``) are one job (``expand``,
``merge_duplicates``). Everything here is a function of the sweep file and the command line:
Hydra's override grammar, no launcher, no config composition, no torch.
"""

import itertools
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException
from omegaconf import DictConfig, ListConfig

from dpo_ppo import results as R


@dataclass
class Axis:
    """One override key and the values it takes, each as a complete override string."""

    key: str  # without +/~ prefix: what command-line overrides are matched on
    overrides: List[str]
    swept: bool  # given as a list / sweep expression (vs one fixed value)

    @property
    def values(self) -> List[str]:
        return [o.split("=", 1)[1] if "=" in o else "" for o in self.overrides]


@dataclass
class SweepJob:
    """One job of a sweep: its arm and overrides (``expand``), then what the sweeper learns of it."""

    arm: str
    overrides: List[str]
    # filled in by the sweeper
    dir: Optional[str] = None
    status: str = R.PENDING  # R.PENDING | R.FINISHED | R.SKIPPED | R.FAILED
    error: Optional[str] = None
    note: Optional[str] = None  # why a job was skipped (finished before, running elsewhere)


_PLAIN = re.compile(r"[A-Za-z0-9_.\-+/:@$]+")


def format_value(value: Any) -> str:
    """A Python/YAML value as a value in Hydra's override grammar."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple, ListConfig)):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    if isinstance(value, (dict, DictConfig)):
        return "{" + ",".join(f"{k}:{format_value(v)}" for k, v in value.items()) + "}"
    text = str(value)
    if _PLAIN.fullmatch(text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def override_dirname(overrides: Sequence[Override], exclude_keys: Sequence[str], item_sep: str,
                     kv_sep: str) -> str:
    """``hydra.job.override_dirname`` of a job: what Hydra names a job folder by, from the public
    settings of ``hydra.job.config.override_dirname`` (``kv_sep``, ``item_sep``, ``exclude_keys``).

    The overrides as typed (``input_line``), those whose key or group is excluded left out, sorted
    as strings and joined by ``item_sep``; then every ``=`` of the result becomes ``kv_sep`` (also
    one inside a value, as Hydra does).  Hydra computes it in a private function; our copy of the
    rule is checked against that function in tests/test_sweeper.py, so a change in Hydra shows.
    """
    excluded = set(exclude_keys)
    kept = sorted(o.input_line for o in overrides if o.key_or_group not in excluded)
    return item_sep.join(kept).replace("=", kv_sep)


def _parse(parser: OverridesParser, line: str) -> Override:
    (override,) = parser.parse_overrides([line])
    return override


def axis_from_override(override: Override) -> Axis:
    """An axis from a parsed override: a discrete sweep (``a=1,2``) sweeps, anything else is fixed."""
    key = override.get_key_element()
    if override.is_sweep_override():
        if not override.is_discrete_sweep():
            raise HydraException(f"dpo_ppo sweeper: cannot sweep an interval ({override.input_line})")
        values = list(override.sweep_string_iterator())
        return Axis(override.key_or_group, [f"{key}={v}" for v in values], swept=True)
    if override.is_delete():
        return Axis(override.key_or_group, [override.input_line], swept=False)
    return Axis(override.key_or_group, [f"{key}={override.get_value_element_as_str()}"], swept=False)


def axis_from_config(parser: OverridesParser, key: str, value: Any) -> Axis:
    """An axis from a sweep-file entry: a list sweeps its elements, a string is read with the
    override grammar ("0,1", "range(3)", "[1,2]" is one list value), anything else is fixed."""
    if isinstance(value, (list, tuple, ListConfig)):
        if len(value) == 0:
            raise HydraException(f"dpo_ppo sweeper: axis '{key}' has no values")
        axis = axis_from_override(_parse(parser, f"{key}={format_value(value[0])}"))
        axis.overrides = [axis_from_override(_parse(parser, f"{key}={format_value(v)}")).overrides[0]
                          for v in value]
        axis.swept = True
        return axis
    if isinstance(value, str):
        return axis_from_override(_parse(parser, f"{key}={value}" if value else f"{key}=''"))
    return axis_from_override(_parse(parser, f"{key}={format_value(value)}"))


def check_arms(arms: Mapping[str, Any], hydra_overrides: Iterable[str]) -> None:
    """An arm left null in the sweep file launches nothing: say so instead of dropping it
    (``hydra.sweeper.arms.NAME=null`` or ``~hydra.sweeper.arms.NAME`` among ``hydra_overrides``,
    the command line's ``hydra.*`` overrides, drops an arm on purpose)."""
    on_purpose = set()
    for line in hydra_overrides:
        key, _, value = str(line).partition("=")
        if value.strip() == "null" or key.startswith("~"):
            on_purpose.add(key.lstrip("~+"))
    for arm_name, arm in (arms or {}).items():
        if arm is None and f"hydra.sweeper.arms.{arm_name}" not in on_purpose:
            raise HydraException(
                f"dpo_ppo sweeper: arm '{arm_name}' is empty (null) in hydra.sweeper.arms, so it would "
                f"launch no job: give it its keys (e.g. algorithm: {arm_name}) or remove it "
                f"(~hydra.sweeper.arms.{arm_name} on the command line)")


# --------------------------------------------------------------------------- one job per config


def _canonical(value: Any) -> Any:
    """A parsed override value as what it sets: ``1``, ``1.0`` and ``1e0`` are one number (a
    bool stays a bool, a string a string: ``'1'`` is not ``1``)."""
    if value is None or isinstance(value, (bool, str)):
        return (type(value).__name__, value)
    if isinstance(value, float) and value.is_integer() and abs(value) < 2 ** 53:
        return ("num", int(value))
    if isinstance(value, (int, float)):
        return ("num", value)
    if isinstance(value, (list, tuple)):
        return ("list", tuple(_canonical(v) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple(sorted((str(k), _canonical(v)) for k, v in value.items())))
    return (type(value).__name__, str(value))


def _setting(parser: OverridesParser, line: str) -> Tuple[str, Any]:
    """(key, canonical value) of one override; ("~", key) for a deletion."""
    try:
        override = _parse(parser, line)
    except Exception:  # reported when the job is composed; here it is just itself
        return ("raw", line)
    if override.is_delete():
        return ("~", override.key_or_group)
    return (override.key_or_group, _canonical(override.value()))


def job_signature(overrides: Sequence[str], parser: OverridesParser, exclude: Sequence[str] = (),
                  memo: Optional[Dict[str, Tuple[str, Any]]] = None) -> Tuple:
    """What a job's overrides set, for finding grid points that are one job: each key (``+``
    dropped) with its value as Hydra's grammar types it (``_canonical``), the keys in
    ``exclude`` (where and how a job runs, not what it computes) left out, sorted. ``memo``
    keeps each distinct override parsed once across the jobs of a sweep."""
    excluded = set(exclude)
    memo = {} if memo is None else memo
    out = []
    for line in overrides:
        if line not in memo:
            memo[line] = _setting(parser, line)
        setting = memo[line]
        if setting[0] not in excluded and not (setting[0] == "~" and setting[1] in excluded):
            out.append(setting)
    return tuple(sorted(out, key=repr))


@dataclass
class Merged:
    """A grid point dropped because it sets what an earlier job sets (``expand``)."""

    arm: str
    overrides: List[str]
    kept: int  # index of the job that runs for it


def expand(
    arms: Mapping[str, Mapping[str, Any]],
    params: Mapping[str, Any],
    arguments: Sequence[str],
    parser: Optional[OverridesParser] = None,
    exclude: Sequence[str] = (),
    merged: Optional[List[Merged]] = None,
) -> List[SweepJob]:
    """The jobs of a sweep: for each arm, the product of its axes and the shared axes.

    ``arguments`` are command-line overrides (see the module docstring for how they combine).
    Within an arm the first axis varies slowest; arms keep their order. Grid points that set the
    same values (``job_signature``: ``beta=1`` and ``beta=1.0``, ``seed: [0, 0]``, or two
    values of a key in ``exclude``) are one job: the first is kept, the others are appended to
    ``merged`` (when given) for the caller to confirm (``merge_duplicates``). A key that both an
    arm and ``params`` set is an error: one of the two would be dropped silently.
    """
    parser = parser or OverridesParser.create()
    shared: Dict[str, Axis] = {}
    for key, value in (params or {}).items():
        axis = axis_from_config(parser, str(key), value)
        shared[axis.key] = axis
    cli = [axis_from_override(o) for o in parser.parse_overrides(list(arguments))]

    arm_axes: List[Tuple[str, Dict[str, Axis]]] = []
    for arm_name, arm in list((arms or {}).items()) or [("", {})]:
        if arm is None:  # an arm deleted by setting it to null
            continue
        own: Dict[str, Axis] = {}
        for key, value in arm.items():
            axis = axis_from_config(parser, str(key), value)
            own[axis.key] = axis
        both = sorted(set(own) & set(shared))
        if both:
            raise HydraException(
                f"dpo_ppo sweeper: {', '.join(both)} is set both in arm '{arm_name}' and in params "
                f"(hydra.sweeper.arms.{arm_name}.{both[0]} and hydra.sweeper.params.{both[0]}); the arm's "
                f"value would silently replace the shared axis: keep it in one of the two")
        arm_axes.append((arm_name, own))
    arm_keys = {key for _, own in arm_axes for key in own}

    jobs: List[SweepJob] = []
    seen: Dict[Tuple, int] = {}
    memo: Dict[str, Tuple[str, Any]] = {}
    for arm_name, own in arm_axes:
        arm_shared = dict(shared)
        keep = True
        for axis in cli:
            if axis.key in own:
                mine = own[axis.key]
                if mine.swept:
                    own[axis.key] = axis  # replace this arm's axis
                elif not set(axis.values) & set(mine.values):
                    keep = False  # a fixed key names another value: not this arm
            elif axis.key not in arm_keys:  # another arm's key (beta) never reaches this arm
                arm_shared[axis.key] = axis
        if not keep:
            continue
        axes = list(own.values()) + [a for k, a in arm_shared.items() if k not in own]
        for combo in itertools.product(*[a.overrides for a in axes]):
            signature = job_signature(combo, parser, exclude, memo)
            if signature in seen:
                if merged is not None:
                    merged.append(Merged(arm=arm_name, overrides=list(combo), kept=seen[signature]))
                continue
            seen[signature] = len(jobs)
            jobs.append(SweepJob(arm=arm_name, overrides=list(combo)))
    return jobs


def merge_duplicates(jobs: List[SweepJob], merged: Sequence[Merged], exclude: Iterable[str],
                     same_config: Callable[[Sequence[str], Sequence[str]], bool]) -> List[str]:
    """Confirm the grid points ``expand`` merged, and say which were merged (one line each, for
    sweep.json's ``merged``). Where a point's overrides are not the same strings as its kept
    job's (outside ``exclude``), ``same_config(mine, theirs)`` decides (the sweeper compares
    config keys: in a string field ``1`` and ``1.0`` differ); a point that is not the same config
    is appended to ``jobs`` and launched after all. (The one definition of "the same job" is
    ``results.same_job``; ``job_signature`` is only a cheap first guess at it.)"""
    exclude = list(exclude)
    lines: List[str] = []
    for m in merged:
        kept = jobs[m.kept]
        exact = R.folder_key(m.overrides, exclude) == R.folder_key(kept.overrides, exclude)
        if not exact and not same_config(m.overrides, kept.overrides):
            jobs.append(SweepJob(arm=m.arm, overrides=list(m.overrides)))
            continue
        mine = [o for o in m.overrides if o not in kept.overrides]
        theirs = [o for o in kept.overrides if o not in m.overrides]
        lines.append(f"{' '.join(mine)} as job #{m.kept} ({' '.join(theirs)})" if mine or theirs
                     else f"a repeat of job #{m.kept} ({' '.join(kept.overrides)})")
    return lines


def merged_summary(lines: Sequence[str], shown_at_most: int = 10) -> Optional[str]:
    """One log line for the merged grid points (``merge_duplicates``); None when there are none."""
    if not lines:
        return None
    counts = dict.fromkeys(lines, 0)
    for line in lines:
        counts[line] += 1
    shown = [f"{line}{f' x{n}' if n > 1 else ''}" for line, n in counts.items()]
    if len(shown) > shown_at_most:
        shown = shown[:shown_at_most] + [f"... and {len(shown) - shown_at_most} more (sweep.json: merged)"]
    return (f"{len(lines)} grid point{'s' if len(lines) > 1 else ''} merged into the job with the same "
            f"config key (launched once): " + "; ".join(shown))
