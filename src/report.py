"""Visual report of an experiment: ``python src/report.py --exp demo``.

The tool lives in ``cellseg/commands/report.py``; this file runs it from a checkout.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cellseg.commands.report import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
