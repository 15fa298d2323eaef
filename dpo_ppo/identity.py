"""A job's identity is its full resolved config, not only the overrides that name its folder.

The folder name comes from the command-line overrides, so after an edit to a sweep file or a
default the same folder would be found again and its results reused (or its checkpoint resumed)
under another config.  ``config_hash`` hashes the config without the keys that do not change a
result (``VOLATILE``: logger, device, threads, ...); ``config_diff`` names the keys that differ
between the config a folder's results were made with and the config asked for now.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Iterable

from dpo_ppo.results import EXCLUDED_KEYS

# top-level keys that do not change a job's results: those left out of the job folder names
# (results.EXCLUDED_KEYS, = hydra.job.config.override_dirname.exclude_keys), and prepare
# (a dotted key stays dotted unless its whole group is excluded: eval.batch_size, not eval)
VOLATILE = tuple(dict.fromkeys([k.split(".")[0] if k.split(".")[0] in EXCLUDED_KEYS else k
                                for k in EXCLUDED_KEYS] + ["prepare"]))


# keys added after jobs had recorded their configs, with the default that keeps the older
# behaviour: at that default they are left out of a job's identity (and of the artifact keys,
# ``without_late_defaults``), so a folder or cache made before them is still the same job
LATE_DEFAULTS = {"classifier": {"negative_label": None}}


def without_late_defaults(group: str, values: dict) -> dict:
    """``values`` of config group ``group`` without the LATE_DEFAULTS keys at their default."""
    late = LATE_DEFAULTS.get(group, {})
    return {k: v for k, v in values.items() if not (k in late and v == late[k])}


def identity(config: dict, volatile: Iterable[str] = VOLATILE) -> dict:
    """``config`` without the volatile keys (top-level like ``logger`` or dotted like
    ``eval.batch_size``) and without late keys at their default (LATE_DEFAULTS)."""
    volatile = set(volatile)
    out = {}
    for k, v in config.items():
        if k in volatile:
            continue
        nested = {key.split(".", 1)[1] for key in volatile if key.startswith(f"{k}.")}
        out[k] = {ck: cv for ck, cv in v.items() if ck not in nested} if nested and isinstance(v, dict) else v
        if isinstance(out[k], dict):
            out[k] = without_late_defaults(k, out[k])
    return out


def config_hash(config: dict) -> str:
    blob = json.dumps(identity(config), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _flat(node: Any, prefix: str = "") -> dict:
    if isinstance(node, dict):
        out: dict = {}
        for k, v in node.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out if out or not prefix else {prefix[:-1]: {}}
    return {prefix[:-1]: node}


_MISSING = object()


def config_diff(old: dict, new: dict) -> list[str]:
    """``key: old -> new`` for every leaf that differs (volatile keys left out), sorted."""
    a, b = _flat(identity(old)), _flat(identity(new))
    lines = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key, _MISSING), b.get(key, _MISSING)
        if x != y:
            show = lambda v: "(absent)" if v is _MISSING else json.dumps(v, default=str)  # noqa: E731
            lines.append(f"{key}: {show(x)} -> {show(y)}")
    return lines


class ConfigDrift(RuntimeError):
    """A job folder holds results (or a checkpoint) made under another config."""

    def __init__(self, job_dir, diff: list[str]):
        self.diff = diff
        shown = "; ".join(diff[:12]) + (f"; ... and {len(diff) - 12} more" if len(diff) > 12 else "")
        super().__init__(f"config drift: {job_dir} holds results made with another config "
                         f"({len(diff)} key{'s' if len(diff) != 1 else ''} differ: {shown}). "
                         f"force=true re-runs the job from scratch under the new config")
