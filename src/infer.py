"""Predict the test images and write ``submission.csv``: ``python src/infer.py``.

The tool lives in ``cellseg/commands/infer.py``; this file runs it from a checkout.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cellseg.commands.infer import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
