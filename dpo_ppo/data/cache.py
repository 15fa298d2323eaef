"""Shared artifacts (corpus, base model, classifier, preference data), built once per config.

An artifact lives at ``<cache>/<kind>/<key>/`` where ``key`` hashes exactly the config it depends
on.  It is built in a temporary folder beside its final place and moved there with one
``os.replace``, under a file lock, so that parallel jobs of a sweep wait for the first builder
instead of building twice or reading half a folder.  A ``MANIFEST.json`` written last lists every
file with its size and SHA-256; a folder whose files do not match it (truncated, edited, half
copied) is rebuilt, never silently used.

A finished artifact is never written to again: datasets are opened with ``load_dataset_artifact``
(in memory, so ``map``/``shuffle`` keep their cache files off the artifact), and the temporary
folders of builds that were killed (``kill -9`` runs no cleanup) are removed under the lock by the
next builder of the same key.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Callable

from filelock import FileLock

from dpo_ppo.results import write_atomic

log = logging.getLogger(__name__)

MANIFEST = "MANIFEST.json"


def spec_key(spec: dict) -> str:
    blob = json.dumps(spec, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(root: Path) -> None:
    files = {str(p.relative_to(root)): {"size": p.stat().st_size, "sha256": _sha256(p)} for p in _files(root)}
    write_atomic(root / MANIFEST, json.dumps(files, indent=1))


def verify(root: Path) -> str | None:
    """None when ``root`` is a complete artifact, else what is wrong with it."""
    manifest = root / MANIFEST
    if not manifest.is_file():
        return "no manifest (half-written)"
    try:
        files = json.loads(manifest.read_text())
    except json.JSONDecodeError:
        return "unreadable manifest"
    for rel, meta in files.items():
        p = root / rel
        if not p.is_file():
            return f"missing {rel}"
        if p.stat().st_size != meta["size"]:
            return f"{rel} has {p.stat().st_size} bytes, manifest says {meta['size']}"
        if _sha256(p) != meta["sha256"]:
            return f"{rel} does not match its checksum"
    return None


def artifact(cache_dir: str | Path, kind: str, spec: dict, build: Callable[[Path], None]) -> Path:
    """Path of the artifact ``kind`` for ``spec``, building it with ``build(tmp_dir)`` if needed."""
    root = Path(cache_dir).expanduser().resolve() / kind
    root.mkdir(parents=True, exist_ok=True)
    key = spec_key(spec)
    final = root / key
    if final.exists() and verify(final) is None:
        log.info("%s: cached at %s", kind, final)
        return final
    with FileLock(str(root / f"{key}.lock")):
        if final.exists():
            problem = verify(final)
            if problem is None:  # another job built it while we waited
                log.info("%s: built by another job, cached at %s", kind, final)
                return final
            log.warning("%s: %s is corrupt (%s); rebuilding", kind, final, problem)
            shutil.rmtree(final)
        for stale in root.glob(f".tmp-{key}-*"):  # only a lock holder builds this key: a killed one
            log.warning("%s: removing %s, left by a build that was killed", kind, stale.name)
            shutil.rmtree(stale, ignore_errors=True)
        tmp = root / f".tmp-{key}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        t0 = time.time()
        try:
            build(tmp)
            (tmp / "spec.json").write_text(json.dumps(spec, indent=1, sort_keys=True, default=str))
            write_manifest(tmp)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.info("%s: built in %.1f s at %s", kind, time.time() - t0, final)
    return final


def load_dataset_artifact(path: str | Path):
    """A ``save_to_disk`` artifact, read into memory: ``map``, ``shuffle`` and TRL's tokenization
    then keep their results in memory instead of writing ``cache-*.arrow`` files into the
    finished, checksummed folder."""
    from datasets import load_from_disk

    return load_from_disk(str(path), keep_in_memory=True)


# --------------------------------------------------------------------------- what each artifact depends on


def artifact_specs(cfg, precision: str = "fp32") -> dict:
    """Exactly the config each shared artifact depends on; ``precision`` is the resolved one
    (fp32 | bf16) of the stages that train or sample (batch sizes never enter: they change speed,
    not results).  Reads attributes and ``as_dict``, so a composed DictConfig gives the same specs.
    Torch-free: the sweeper's prepare step reads the keys without importing torch."""
    from dpo_ppo.config.analysis import REFERENCE_ANALYSIS_VERSION
    from dpo_ppo.config import as_dict
    from dpo_ppo.results import without_late_defaults

    corpus = {"data": as_dict(cfg.data)}
    numerics = {} if precision == "fp32" else {"precision": precision}  # fp32 keys = the older caches'
    base = {"model": as_dict(cfg.model), "corpus": corpus if cfg.model.source == "embedded" else None,
            **(numerics if cfg.model.source == "embedded" else {})}
    classifier = {"classifier": without_late_defaults("classifier", as_dict(cfg.classifier)), "corpus": corpus,
                  "tokenizer": base if cfg.classifier.source == "embedded" else None,
                  **(numerics if cfg.classifier.finetune else {})}
    algo = cfg.algorithm
    prefs = {"base": base, "classifier": classifier, "corpus": corpus, "seed": cfg.seed,
             **{k: getattr(algo, k) for k in ("examples", "num_completions", "prefix_len", "prefix_len_max",
                                     "completion_len", "temperature", "top_k")}, **numerics}
    eval_spec = {k: v for k, v in as_dict(cfg.eval).items() if k != "batch_size"}
    ref_eval = {"base": base, "classifier": classifier, "corpus": corpus, "eval": eval_spec, **numerics}
    # the reference's side of the per-model analyses (Job.reference_cache): the reference, the
    # held-out texts, the scorer and the analysis settings; the analysis's "what" is added per call
    analysis = (None if cfg.analysis is None else
                {k: v for k, v in as_dict(cfg.analysis).items() if k not in ("name", "batch_size", "device")})
    ref_analysis = {"base": base, "classifier": classifier, "corpus": corpus, "analysis": analysis,
                    "code": REFERENCE_ANALYSIS_VERSION, **numerics}
    return {"corpus": corpus, "base": base, "classifier": classifier, "prefs": prefs, "ref_eval": ref_eval,
            "ref_analysis": ref_analysis}
