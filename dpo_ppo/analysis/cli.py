"""``dpo-ppo-analyze``: run the analysis suite on saved models, without training.

Re-analyse a finished job (reads ``JOB/results.json``: ``artifacts.reference``, ``artifacts.policy``,
``artifacts.classifier``, ``artifacts.corpus``; snapshots from ``JOB/snapshots/ex_*``)::

    dpo-ppo-analyze --job multirun/smoke/algorithm=dpo --preset fast

or name the pieces (several ``--policy`` are analysed one after the other, each into its own
subfolder of ``--out``)::

    dpo-ppo-analyze --reference REF --policy POL [--policy POL2] --scorer CLS --data CORPUS|synthetic \\
        --out DIR [--preset full|fast|PATH.yaml] [--set ablation_prompts=4 --set heads=false]

Models are ``save_pretrained`` folders (with their tokenizer); the scorer is a folder with a HF
sequence classifier and its tokenizer (positive label 1); the corpus is a ``save_to_disk`` folder
whose ``test`` split has ``text`` and ``label`` columns, or ``synthetic`` for the embedded corpus.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from dpo_ppo.analysis.config import AnalysisConfig
from dpo_ppo.results import RESULTS_FILE, read_results

log = logging.getLogger("dpo_ppo.analyze")


def _conf_dirs() -> list[Path]:
    here = Path(__file__).resolve()
    return [here.parents[2] / "conf" / "analysis", here.parents[1] / "conf" / "analysis"]


def load_preset(preset: str, overrides: list[str] = ()) -> AnalysisConfig:
    """conf/analysis/<preset>.yaml (or a yaml path) merged onto the schema, then ``KEY=VALUE`` overrides."""
    from omegaconf import OmegaConf

    path = Path(preset)
    if not path.suffix:
        path = next((d / f"{preset}.yaml" for d in _conf_dirs() if (d / f"{preset}.yaml").exists()), None)
    base = OmegaConf.structured(AnalysisConfig)
    if path is None or not path.exists():
        if preset != "full":
            raise SystemExit(f"dpo-ppo-analyze: preset {preset!r} not found in {[str(d) for d in _conf_dirs()]}")
        merged = base  # the schema's defaults are the full preset
    else:
        data = OmegaConf.load(path)
        if "defaults" in data:
            data.pop("defaults")
        merged = OmegaConf.merge(base, data)
    if overrides:
        merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(list(overrides)))
    return OmegaConf.to_object(merged)


def check(cfg: AnalysisConfig) -> None:
    from omegaconf import OmegaConf

    from dpo_ppo.analysis.config import validate
    from dpo_ppo.config import ConfigError

    try:
        validate(OmegaConf.create({"analysis": OmegaConf.structured(cfg)}))
    except ConfigError as e:
        raise SystemExit(f"dpo-ppo-analyze: {e}") from None


def load_lm(path, device):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).to(device).eval()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError):
        tokenizer = None
    return model, tokenizer


class _Scorer:
    """Fallback when dpo_ppo.scorer is unavailable: p(label 1) of a saved sequence classifier."""

    def __init__(self, path, device):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.model = AutoModelForSequenceClassification.from_pretrained(str(path)).to(device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model.config.pad_token_id = self.tokenizer.pad_token_id

    @torch.no_grad()
    def p_positive(self, texts):
        out = []
        for i in range(0, len(texts), 64):
            enc = self.tokenizer(list(texts[i:i + 64]), padding=True, truncation=True, max_length=256,
                                 return_tensors="pt").to(self.model.device)
            out.append(torch.softmax(self.model(**enc).logits.float(), -1)[:, 1].cpu())
        return torch.cat(out) if out else torch.zeros(0)


def load_scorer(path, device):
    try:
        from dpo_ppo.scorer import Scorer
    except ImportError:
        return _Scorer(path, device)
    return Scorer.load(path, device)


def load_test_split(data: str) -> tuple[list[str], list[int]]:
    if data == "synthetic":
        from dpo_ppo.config import DataConfig
        from dpo_ppo.corpus import make_synthetic

        d = DataConfig()
        ds = make_synthetic(d.num_reviews, d.test_fraction, d.seed)["test"]
    else:
        from datasets import DatasetDict, load_from_disk

        ds = load_from_disk(str(data))
        if isinstance(ds, DatasetDict):
            if "test" not in ds:
                raise SystemExit(f"dpo-ppo-analyze: {data} has no 'test' split (found {list(ds)})")
            ds = ds["test"]
    return list(ds["text"]), [int(y) for y in ds["label"]]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="dpo-ppo-analyze", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--job", type=Path, help="a job folder with results.json (fills the paths below)")
    p.add_argument("--reference", help="reference model folder")
    p.add_argument("--policy", action="append", default=[], help="tuned model folder (repeatable)")
    p.add_argument("--scorer", help="sentiment classifier folder")
    p.add_argument("--data", help="corpus folder (save_to_disk, test split) or 'synthetic'")
    p.add_argument("--snapshots", type=Path, help="folder of ex_* snapshots (default with --job: JOB/snapshots)")
    p.add_argument("--out", type=Path, help="output folder (default with --job: JOB/reanalysis-PRESET)")
    p.add_argument("--preset", default="full", help="full | fast | none | a yaml file (default: full)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override an analysis setting, e.g. --set ablation_prompts=4")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda when available)")
    p.add_argument("--quiet", action="store_true", help="do not print the scalars")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    from dpo_ppo.analysis.suite import run_analysis
    from dpo_ppo.analysis.weights import find_snapshots

    reference, policies, scorer_path, data = args.reference, list(args.policy), args.scorer, args.data
    snapshots_dir, out = args.snapshots, args.out
    if args.job is not None:
        results = read_results(args.job)
        if results is None:
            p.error(f"--job: no readable {RESULTS_FILE} in {args.job}")
        art = results.get("artifacts", {})
        reference = reference or art.get("reference")
        policies = policies or ([art["policy"]] if art.get("policy") else [])
        scorer_path = scorer_path or art.get("classifier")
        data = data or art.get("corpus")
        snapshots_dir = snapshots_dir or args.job
        out = out or args.job / f"reanalysis-{Path(args.preset).stem}"
    missing = [name for name, v in (("--reference", reference), ("--policy", policies), ("--scorer", scorer_path),
                                    ("--data", data), ("--out", out)) if not v]
    if missing:
        p.error(f"missing {', '.join(missing)} (or give --job)")
    cfg = load_preset(args.preset, args.overrides)
    check(cfg)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    texts, labels = load_test_split(data)
    ref_model, ref_tok = load_lm(reference, device)
    scorer = load_scorer(scorer_path, device)
    snapshots = find_snapshots(snapshots_dir) if snapshots_dir is not None else []
    names = [Path(x).name or f"policy{i}" for i, x in enumerate(policies)]
    names = [n if names.count(n) == 1 else f"{n}-{i}" for i, n in enumerate(names)]
    for name, path in zip(names, policies):
        policy, pol_tok = load_lm(path, device)
        tokenizer = pol_tok or ref_tok
        if tokenizer is None:
            p.error(f"no tokenizer in {path} or {reference}")
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        target = Path(out) if len(policies) == 1 else Path(out) / name
        res = run_analysis(cfg, ref_model, policy, tokenizer, texts=texts, labels=labels, scorer=scorer,
                           out_dir=target, snapshots=snapshots if len(policies) == 1 else (), device=device)
        if not args.quiet:
            for key, value in res["scalars"].items():
                print(f"{key}\t{value:.6g}")
        for part, err in res["errors"].items():
            print(f"dpo-ppo-analyze: {part} failed: {err}", file=sys.stderr)
        print(f"dpo-ppo-analyze: {name}: {len(res['scalars'])} scalars, {len(res['images'])} plots -> "
              f"{target / 'analysis.json'}", file=sys.stderr)
        del policy
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
