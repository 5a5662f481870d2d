"""Stage 4, training one fold: augmented batches, the training loop and its callbacks, out-of-fold
(OOF) maps for tuning.
"""
