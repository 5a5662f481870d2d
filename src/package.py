"""Package a trained experiment for the offline Kaggle kernel: ``python src/package.py --exp NAME``.

The tool lives in ``cellseg/commands/package.py``; this file runs it from a checkout.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cellseg.commands.package import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
