"""summary.json (the report) is written through results.write_atomic: a write cut short (a full
disk, a kill) leaves the previous file whole, never half of one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sweepfab import write_job

from dpo_ppo import results as R


def test_a_report_cut_short_while_writing_summary_json_leaves_the_previous_one_whole(tmp_path, monkeypatch):
    from dpo_ppo.report.build import build_report

    for seed in range(2):
        for algorithm, knob in (("dpo", 0.1), ("ppo", 6)):
            write_job(tmp_path, algorithm, knob, seed, {R.KL: 1.0 + seed, R.REWARD: 0.6, R.REF_REWARD: 0.4})
    build_report(tmp_path, figures=False)
    before = (tmp_path / "report" / "summary.json").read_text()
    json.loads(before)

    real = Path.write_text

    def cut_short(self, text, *args, **kwargs):
        if self.name.startswith("summary.json"):
            real(self, text[: len(text) // 2], *args, **kwargs)
            raise OSError(28, "No space left on device")
        return real(self, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", cut_short)
    with pytest.raises(OSError):
        build_report(tmp_path, figures=False)
    assert (tmp_path / "report" / "summary.json").read_text() == before
    assert [p.name for p in (tmp_path / "report").glob("summary.json*")] == ["summary.json"]  # no half file beside it
