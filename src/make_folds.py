"""Write ``<data-dir>/folds.csv``: folds stratified by cell type, grouped by sample_id.

The tool lives in ``cellseg/commands/make_folds.py``; this file runs it from a checkout.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cellseg.commands.make_folds import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
