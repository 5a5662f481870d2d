"""Export a trained experiment: ``python src/export.py --exp EXP --out DIR``.

The tool lives in ``cellseg/commands/export.py``; this file runs it from a checkout.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cellseg.commands.export import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
