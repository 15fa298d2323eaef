"""Keys the schema does not have, and what to suggest instead: ``check_keys`` (any depth of the
composed config), ``unknown_key_message`` (whose key it is, or the closest one by name or alias).
``dpo_ppo.cli.exits.config_error_line`` words them for both console scripts."""

from __future__ import annotations

import dataclasses

from omegaconf import DictConfig, OmegaConf

from dpo_ppo.config.fields import ConfigError
from dpo_ppo.config.schema import ALGORITHM_SCHEMAS, Config

# other names users reach for; a typo of one of them suggests the real key
_ALIASES = {"lr": ("learning_rate",), "examples": ("num_examples", "n_examples"),
            "epochs": ("num_epochs", "num_train_epochs"), "kl_target": ("target_kl",),
            "batch_size": ("bs", "batch"), "num_completions": ("completions",),
            "completion_len": ("max_new_tokens", "completion_length"), "prefix_len": ("prompt_len",)}


def dataclass_fields(obj_type) -> dict | None:
    if obj_type is None or not dataclasses.is_dataclass(obj_type):
        return None
    return {f.name: f for f in dataclasses.fields(obj_type)}


def schema_keys(schema=Config) -> list[str]:
    """Every key of ``schema`` (dpo-ppo's ``Config``, or dpo-ppo-analyze's ``AnalyzeConfig``),
    dotted (every algorithm's keys under ``algorithm``)."""
    import typing

    any_fields = {"algorithm": tuple(ALGORITHM_SCHEMAS.values())} if schema is Config else {}
    keys = []
    for name, hint in typing.get_type_hints(schema).items():
        keys.append(name)
        for sub in any_fields.get(name, (hint,)):
            for child in dataclass_fields(sub) or {}:
                if f"{name}.{child}" not in keys:
                    keys.append(f"{name}.{child}")
    return keys


def closest_key(key: str, candidates) -> str:
    """The valid key nearest to ``key``: by its last part (or an alias of it), then by its parent."""
    import difflib

    parent, _, name = key.rpartition(".")

    def score(cand: str) -> float:
        c_parent, _, c_name = cand.rpartition(".")
        names = (c_name, *_ALIASES.get(c_name, ()))
        best = max(difflib.SequenceMatcher(None, name.lower(), n).ratio() for n in names)
        return best + (0.15 if c_parent == parent else 0.0)

    # a key under a group is matched within that group; on a tie the algorithm's key wins: that
    # is where the knobs people mistype live
    siblings = [c for c in candidates if parent and c.rpartition(".")[0] == parent]
    ordered = sorted(siblings or candidates, key=lambda c: not c.startswith("algorithm."))
    return max(ordered, key=score)


def check_keys(cfg: DictConfig) -> None:
    """Every key of the composed config must be in the schema, at any depth (``+key=`` adds keys
    the schema does not know; Hydra lets them through, and the conversion would drop them)."""
    valid, unknown = [], []

    def walk(node: DictConfig, prefix: str) -> None:
        fields = dataclass_fields(OmegaConf.get_type(node))
        for key in node.keys():
            full = f"{prefix}.{key}" if prefix else str(key)
            if fields is not None and key not in fields:
                unknown.append(full)
                continue
            valid.append(full)
            child = node._get_node(key)
            if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
                walk(child, full)

    walk(cfg, "")
    if unknown:
        raise ConfigError(unknown[0], unknown_key_message(unknown[0], valid))


def unknown_key_message(key: str, candidates) -> str:
    """What to say about a key the schema does not have: whose key it is, or the closest one."""
    parent, _, name = key.rpartition(".")
    if parent == "algorithm":
        for algo, schema in ALGORITHM_SCHEMAS.items():
            if name in dataclass_fields(schema) and key not in candidates:
                return f"not a key of this algorithm; it belongs to algorithm={algo}"
    return f"not a key of the config; the closest valid key is {closest_key(key, candidates)}"


def chosen_options(overrides) -> dict[str, str]:
    """``group=option`` choices on a command line (``algorithm=ppo``), for ``help_text``."""
    chosen = {}
    for arg in overrides:
        key, sep, value = str(arg).lstrip("+~").partition("=")
        if sep and "." not in key and "/" not in key and value and not value.startswith(("[", "{")):
            chosen[key] = value
    return chosen


def help_text(width: int = 100, schema=Config, overrides=()) -> str:
    """Every key of ``schema`` (dpo-ppo's ``Config``, dpo-ppo-analyze's ``AnalyzeConfig``) with its
    default and the help beside its field (``option(default, help)``), group by group: what
    ``--help`` adds below Hydra's listing, as TRL's argument parser shows its fields' help.  Each
    algorithm's keys stand under its own name; an ``algorithm=NAME`` among ``overrides`` (the
    command line, ``dpo-ppo algorithm=ppo --help``) keeps that algorithm's alone."""
    import textwrap
    import typing

    from dpo_ppo.config.schema import GROUPS

    def default(f) -> str:
        if f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            value = f.default_factory()  # type: ignore[misc]
        else:
            return "(required)"
        return "null" if value is None else repr(value) if isinstance(value, str) else str(value)

    def block(prefix: str, cls) -> list[str]:
        out = []
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints.get(f.name)) or f.name == "algorithm" and cls is Config:
                continue
            text = f.metadata.get("help", "")
            out.append(f"  {prefix}{f.name} = {default(f)}")
            out += textwrap.wrap(text, width, initial_indent="      ", subsequent_indent="      ")
        return out

    files = "schema.py, analysis.py" if schema is Config else "analyze.py, schema.py, analysis.py"
    lines = [f"== Keys: schema default and meaning (dpo_ppo/config/{files}; the values this",
             "command composes to are the Config above) ==", "", "top level:"]
    lines += block("", schema)
    algorithms = {cls: name for name, cls in ALGORITHM_SCHEMAS.items()}
    groups = typing.get_type_hints(schema)
    wanted = chosen_options(overrides).get("algorithm")
    for name, cls in GROUPS.items():
        if cls in algorithms:
            if schema is not Config or wanted is not None and wanted != algorithms[cls]:
                continue
            group, title = "algorithm", f"algorithm={algorithms[cls]}"
        elif groups.get(name) is cls:
            group, title = name, name
        else:
            continue
        lines += ["", f"{title}: {(cls.__doc__ or '').strip().splitlines()[0]}"]
        lines += block(f"{group}.", cls)
    if schema is Config and wanted in ALGORITHM_SCHEMAS:
        others = ", ".join(f"algorithm={a}" for a in ALGORITHM_SCHEMAS if a != wanted)
        lines += ["", f"(the other algorithms' keys: {others} --help)"]
    return "\n".join(lines)
