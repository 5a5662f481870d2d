"""Convert a COCO instance dataset (e.g. LIVECell) into a data root in the competition layout.

The tool lives in ``cellseg/commands/convert_coco.py``; this file runs it from a checkout.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cellseg.commands.convert_coco import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
