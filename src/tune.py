"""Tune post-processing per cell type on out-of-fold predictions: ``python src/tune.py``.

The tool lives in ``cellseg/commands/tune.py``; this file runs it from a checkout.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cellseg.commands.tune import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
