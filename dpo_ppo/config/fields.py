"""What every config dataclass uses to document and check its own fields.

``ConfigError`` and the small range checks live here, below every other module of the config
package (``schema`` and ``analysis`` build on them, ``dpo_ppo.data.sources`` raises
``ConfigError``).  Nothing here imports from the package.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Optional


DEVICES = "auto, cpu, cuda, cuda:N or mps"  # what a device key takes (inputs.check_device: is it here)
DEVICE_PATTERN = r"cpu|cuda(:\d+)?|mps"


class ConfigError(ValueError):
    """A config value is out of range; the message names the key and what is allowed."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"{key}: {message}")


_NO_DEFAULT: Any = dataclasses.MISSING


def option(default: Any = _NO_DEFAULT, help: str = "", *, factory: Optional[Callable[[], Any]] = None):
    """A dataclass field with its help text beside it (``field_help(cls, name)`` reads it back):
    what it means, its unit and the values it takes."""
    if not help:
        raise TypeError("every config field needs a help text")
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


def field_help(cls, name: str) -> str:
    """The help text of field ``name`` of dataclass ``cls`` ("" when it has none)."""
    return next((f.metadata.get("help", "") for f in dataclasses.fields(cls) if f.name == name), "")


def finite(key: str, value) -> None:
    """NaN compares false with everything (``lr < 0`` lets it through): refuse it first."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(key, f"must be a finite number, got {value}")


def positive(key: str, value, allow_zero: bool = False) -> None:
    """``value`` > 0 (>= 0 with ``allow_zero``); None (an unset optional) passes."""
    if value is None:
        return
    finite(key, value)
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(key, f"must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def choice(key: str, value, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(key, f"must be one of {', '.join(map(str, allowed))}; got {value!r}")


def check_device_name(key: str, name, allow_auto: bool = True) -> None:
    """``name`` is a device name (``DEVICES``); whether this machine has it is
    ``dpo_ppo.inputs.check_device``'s question, asked where the job runs."""
    import re

    if name == "auto" and allow_auto:
        return
    if not re.fullmatch(DEVICE_PATTERN, str(name)):
        raise ConfigError(key, f"must be {DEVICES}; got {name!r}")


def local_path(source: str):
    """The folder ``source`` (a model, classifier or data key) names, or None for a hub id (or a
    built-in name such as embedded)."""
    from pathlib import Path

    path = Path(source).expanduser()
    if path.exists() or source.startswith(("/", "./", "../", "~")) or source in (".", ".."):
        return path
    return None
