"""Pseudo-label unlabelled images with a trained experiment: ``python src/pseudo_label.py``.

The tool lives in ``cellseg/commands/pseudo_label.py``; this file runs it from a checkout.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cellseg.commands.pseudo_label import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
