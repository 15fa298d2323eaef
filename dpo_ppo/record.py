"""Recording a job: ``results.json`` in its folder and one W&B run.

``results.json`` is rewritten atomically at every stage (status ``running``), and at the end with
status ``finished`` or ``failed`` (with the error and traceback), so a sweep's report can read
finished and unfinished jobs alike.  The W&B run gets the resolved config (plus the swept
hyperparameters at top level as ``params``), training curves as ``train/*``, evaluation and
analysis scalars under their stable names (also in the summary), a table of sample completions
and the analysis plots.  ``read_offline_run`` reads an offline run's ``.wandb`` file back (used by
the tests): a 7-byte header, then LevelDB-log framed protobuf ``Record`` messages.
"""

from __future__ import annotations

import json
import logging
import os
import struct
from pathlib import Path

log = logging.getLogger(__name__)


def write_json(path: Path, data: dict) -> None:
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


class Recorder:
    """One job's results.json plus (optionally) its W&B run."""

    def __init__(self, job_dir: Path, results: dict, logger_cfg, wandb_config: dict, run_name: str):
        self.job_dir = Path(job_dir)
        self.results = results
        self.run = None
        if logger_cfg.enabled and logger_cfg.mode != "disabled":
            import wandb

            self.run = wandb.init(
                project=logger_cfg.project, entity=logger_cfg.entity, mode=logger_cfg.mode,
                dir=str(Path(logger_cfg.dir or self.job_dir).resolve()), group=results["name"],
                job_type=results["algorithm"], name=run_name, config=wandb_config,
                tags=list(logger_cfg.tags) or None, reinit="finish_previous",
            )
            results["wandb"] = {"id": self.run.id, "dir": str(Path(self.run.dir).parent)}
        self.save()

    def save(self) -> None:
        write_json(self.job_dir / "results.json", self.results)

    def log(self, metrics: dict, step: int | None = None) -> None:
        """A training-curve point (W&B history and ``train_log.jsonl``)."""
        with open(self.job_dir / "train_log.jsonl", "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        if self.run is not None:
            self.run.log(metrics)

    def metrics(self, metrics: dict) -> None:
        """Final scalars: kept in results.json, logged once and put in the W&B summary."""
        self.results.setdefault("metrics", {}).update(metrics)
        self.save()
        if self.run is not None:
            self.run.log(metrics)
            for k, v in metrics.items():
                self.run.summary[k] = v

    def table(self, name: str, columns: list[str], rows: list[list]) -> None:
        if self.run is not None:
            import wandb

            self.run.log({name: wandb.Table(columns=columns, data=rows)})

    def images(self, images: dict) -> None:
        if self.run is not None and images:
            import wandb

            self.run.log({f"plots/{k}": wandb.Image(str(v)) for k, v in images.items() if Path(v).exists()})

    def finish(self, status: str, **fields) -> None:
        self.results.update(status=status, **fields)
        self.save()
        if self.run is not None:
            self.run.summary["status"] = status
            if fields.get("error"):
                self.run.summary["error"] = fields["error"]
            self.run.finish(exit_code=0 if status == "finished" else 1)
            self.run = None


# --------------------------------------------------------------------------- reading back


def _records(data: bytes):
    """Yield the payloads of a LevelDB-log framed file (after W&B's 7-byte header)."""
    block, header = 32768, 7
    pos, pending = 7, b""
    while pos + header <= len(data):
        left = block - pos % block
        if left < header:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + header])
        pos += header
        chunk = data[pos:pos + length]
        pos += length
        if kind == 0 and length == 0:
            continue
        if kind == 1:  # FULL
            yield chunk
        elif kind == 2:  # FIRST
            pending = chunk
        elif kind == 3:  # MIDDLE
            pending += chunk
        elif kind == 4:  # LAST
            yield pending + chunk
            pending = b""


def read_offline_run(run_dir: Path, wait_s: float = 20.0) -> dict:
    """Config, history rows, summary and run facts of an offline W&B run folder.

    W&B's service may still be flushing the file for a moment after ``finish()`` returns, so this
    re-reads it for up to ``wait_s`` seconds until the run's exit record is there.
    """
    import time

    deadline = time.time() + wait_s
    while True:
        out = _read_offline_run(Path(run_dir))
        if out["exit_code"] is not None or time.time() > deadline:
            return out
        time.sleep(0.2)


def _read_offline_run(run_dir: Path) -> dict:
    from wandb.proto import wandb_internal_pb2 as pb

    files = list(run_dir.glob("run-*.wandb"))
    if not files:
        raise FileNotFoundError(f"no run-*.wandb in {run_dir}")
    data = files[0].read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{files[0]} is not a W&B log")
    out = {"config": {}, "history": [], "summary": {}, "run": {}, "exit_code": None}
    for payload in _records(data):
        rec = pb.Record()
        rec.ParseFromString(payload)
        which = rec.WhichOneof("record_type")
        if which == "run":
            out["run"] = {"group": rec.run.run_group, "job_type": rec.run.job_type,
                          "project": rec.run.project, "name": rec.run.display_name}
            for item in rec.run.config.update:
                out["config"][item.key] = json.loads(item.value_json)
        elif which == "config":
            for item in rec.config.update:
                out["config"][item.key] = json.loads(item.value_json)
        elif which == "history":
            row = {}
            for item in rec.history.item:
                key = item.key or "/".join(item.nested_key)
                row[key] = json.loads(item.value_json)
            out["history"].append(row)
        elif which == "summary":
            for item in rec.summary.update:
                key = item.key or "/".join(item.nested_key)
                out["summary"][key] = json.loads(item.value_json)
        elif which == "exit":
            out["exit_code"] = rec.exit.exit_code
    return out
