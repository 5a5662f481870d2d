"""cellseg: Attention UNet++ cell instance segmentation for the Sartorius competition format."""

__version__ = "0.1.0"
