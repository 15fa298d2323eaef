import sys

from dpo_ppo.report.cli import main

sys.exit(main())
