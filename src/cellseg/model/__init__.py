"""Stage 2, model: the Attention UNet++ network, its training targets and losses, and the whole-
image cell-type classifier.
"""
