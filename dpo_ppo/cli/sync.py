"""``dpo-ppo-sync``: upload every offline W&B run of a sweep, once (what it does and why:
``dpo_ppo.runtime.wandb_sync``).

    dpo-ppo-sync multirun/confound             # every job folder (and report/) below it
    dpo-ppo-sync multirun/confound --dry-run   # list what would be uploaded
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from dpo_ppo.runtime.wandb_sync import sync


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="dpo-ppo-sync", description="Upload every offline W&B run of a sweep, once.")
    parser.add_argument("folder", type=Path, help="a sweep folder (multirun/<name>) or a job folder")
    parser.add_argument("--dry-run", action="store_true", help="list what would be synced")
    parser.add_argument("--include-running", action="store_true",
                        help="also sync jobs whose results.json says running (e.g. killed ones)")
    parser.add_argument("--project", help="upload into this project (default: the run's own)")
    parser.add_argument("--entity", help="upload into this entity (default: WANDB_ENTITY / your default)")
    parser.add_argument("--no-lineage", dest="lineage", action="store_false",
                        help="do not declare each run's shared artifacts (base, classifier, prefs, ...) as its "
                             "inputs after the upload (one short resume of each run)")
    args = parser.parse_args(argv)
    if not args.folder.is_dir():
        parser.error(f"{args.folder} is not a folder")
    out = sync(args.folder, dry_run=args.dry_run, include_running=args.include_running, project=args.project,
               entity=args.entity, lineage=args.lineage)
    sys.exit(out.get("returncode", 0))


if __name__ == "__main__":
    main()
