"""Segment your own images: ``python src/segment.py INPUTS... --exp EXP --out DIR``.

The tool lives in ``cellseg/commands/segment.py``; this file runs it from a checkout.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cellseg.commands.segment import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
