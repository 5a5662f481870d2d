"""Stage 2, model: the Attention UNet++ network, loading it and running it on images (normalise,
pad, heads, TTA), its training targets, losses and schedules, and the whole-image cell-type
classifier.
"""
