"""Stage 5, tuning: Optuna search of the post-processing per cell type on OOF maps, and the tuned-
parameters file.
"""
