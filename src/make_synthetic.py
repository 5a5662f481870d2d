"""Write a synthetic data root in the Sartorius competition's layout.

The tool lives in ``cellseg/commands/make_synthetic.py``; this file runs it from a checkout.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cellseg.commands.make_synthetic import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
