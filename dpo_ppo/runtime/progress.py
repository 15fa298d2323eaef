"""Progress that suits where the output goes.

On a terminal: tqdm's usual bars.  Anywhere else (a SLURM log, a file, a pipe) tqdm's
carriage-return redraws pile up into one unreadable line, so ``tqdm`` here returns a bar that
writes one plain line per update, at most every ``DPO_PPO_PROGRESS_S`` seconds (60 by default),
plus a last line when a bar that is kept (``leave``) closes:

    ppo:  40% 205/512 [02:01<03:02, 1.69ex/s]

``plain()`` tells call sites that drive their own bars (the HF Trainer's ``disable_tqdm``) which
world they are in; ``configure()`` turns off the libraries' own bars in a log (hub downloads,
``datasets.map``, TRL's passes).
"""

from __future__ import annotations

import os
import sys

from tqdm.auto import tqdm as _auto_tqdm
from tqdm.std import tqdm as _std_tqdm


def interval_s() -> float:
    return float(os.environ.get("DPO_PPO_PROGRESS_S", 60))


def plain(stream=None) -> bool:
    """True when ``stream`` (default: stderr, where tqdm writes) is not a terminal."""
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    try:
        return not (isatty and isatty())
    except ValueError:  # a closed stream
        return True


class _Lines:
    """The stream a plain bar writes to: whole lines only (tqdm's lone '\\r' and '\\n' dropped)."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        if text.strip("\r\n"):
            self.stream.write(text)

    def flush(self) -> None:
        getattr(self.stream, "flush", lambda: None)()


class LineBar(_std_tqdm):
    """A tqdm bar that prints plain lines instead of redrawing itself."""

    def __init__(self, *args, **kwargs):
        kwargs["mininterval"] = max(float(kwargs.get("mininterval") or 0), interval_s())
        kwargs["maxinterval"] = max(float(kwargs.get("maxinterval") or 0), kwargs["mininterval"])
        kwargs["dynamic_ncols"] = False
        kwargs.setdefault("ncols", 100)
        kwargs["position"] = None
        kwargs.setdefault("disable", False)  # explicit: TQDM_DISABLE (see configure) is for the others
        kwargs["file"] = _Lines(kwargs.get("file") or sys.stderr)
        self._closing = False
        self._printed_n = 0
        super().__init__(*args, **kwargs)
        if not self.disable and self.bar_format is None:  # no bar drawing in a log (a disabled bar has no format)
            self.bar_format = ("{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
                               if self.total else "{desc}: {n_fmt} [{elapsed}, {rate_fmt}{postfix}]")

    def display(self, msg=None, pos=None):
        if msg == "" or (self.n == self._printed_n and msg is None):  # nothing to clear, nothing new
            return True
        self._printed_n = self.n
        self.fp.write((msg if msg is not None else self.__str__()).strip() + "\n")
        self.fp.flush()
        return True

    def close(self):
        self._closing = True
        super().close()


def tqdm(*args, **kwargs):
    """``tqdm.auto.tqdm`` on a terminal, a ``LineBar`` elsewhere."""
    if plain(kwargs.get("file")):
        return LineBar(*args, **kwargs)
    return _auto_tqdm(*args, **kwargs)


def configure() -> None:
    """In a log, silence the libraries' own bars (hub downloads, datasets.map, TRL's reference
    log-probs pass, which reads TQDM_DISABLE)."""
    if not plain():
        return
    os.environ.setdefault("TQDM_DISABLE", "1")
    try:
        from datasets.utils.logging import disable_progress_bar

        disable_progress_bar()
    except ImportError:
        pass
    try:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    except ImportError:
        pass
