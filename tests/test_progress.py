"""Progress in a log file is plain lines, not carriage-return redraws."""

import io

from dpo_ppo.runtime import progress
from dpo_ppo.runtime.progress import LineBar, plain, tqdm


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_plain_lines_when_not_a_terminal(monkeypatch):
    monkeypatch.setenv("DPO_PPO_PROGRESS_S", "0")
    log = io.StringIO()
    bar = tqdm(range(4), desc="ppo", unit="ex", file=log)
    assert isinstance(bar, LineBar)
    for _ in bar:
        pass
    with tqdm(total=2, desc="eval", file=log, leave=False) as inner:
        inner.update(2)
    text = log.getvalue()
    assert "\r" not in text and "\x1b" not in text and text.endswith("\n")
    lines = text.splitlines()
    assert [line.split("[")[0].strip() for line in lines] == [
        "ppo:  25% 1/4", "ppo:  50% 2/4", "ppo:  75% 3/4", "ppo: 100% 4/4", "eval: 100% 2/2"]


def test_at_most_one_line_per_interval(monkeypatch):
    monkeypatch.setenv("DPO_PPO_PROGRESS_S", "3600")
    log = io.StringIO()
    for _ in tqdm(range(1000), desc="sampling", file=log):
        pass
    assert log.getvalue().splitlines() == [l for l in log.getvalue().splitlines() if "1000/1000" in l]
    assert len(log.getvalue().splitlines()) == 1  # only the closing line


def test_a_terminal_keeps_tqdm_bars():
    tty = _Tty()
    bar = tqdm(range(3), file=tty)
    assert not isinstance(bar, LineBar) and not plain(tty) and plain(io.StringIO())
    list(bar)
    assert "\r" in tty.getvalue()
    progress.configure()  # callable anywhere, whatever the stream
