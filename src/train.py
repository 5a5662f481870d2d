"""Train one fold of the Attention UNet++: ``python src/train.py --fold 0``.

The tool lives in ``cellseg/commands/train.py``; this file runs it from a checkout.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cellseg.commands.train import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
