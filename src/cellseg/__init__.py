"""cellseg: Attention UNet++ cell instance segmentation for the Sartorius competition format."""

__version__ = "0.1.0"

import os as _os

# albumentations asks PyPI for a newer version on import; the Kaggle kernel runs offline and
# nothing here should touch the network.
_os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
