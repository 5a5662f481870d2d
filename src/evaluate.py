"""Score a submission against annotations: ``python src/evaluate.py --submission FILE --truth CSV``.

The tool lives in ``cellseg/commands/evaluate.py``; this file runs it from a checkout.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cellseg.commands.evaluate import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
