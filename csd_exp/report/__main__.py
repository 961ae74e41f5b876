"""``python -m csd_exp.report``: the same as the ``csd-exp-report`` console script."""

import sys

from csd_exp.report.cli import main

sys.exit(main())
