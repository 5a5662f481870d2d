"""Stage 5, tuning: Optuna search of the post-processing per cell type on OOF maps, and the tuned-
parameters file.

Modules: ``eval_sets`` (the OOF maps + truth a study scores), ``scoring`` (a parameter set's
score, in a process pool), ``storage`` (Optuna storages and study names), ``study`` (the search
per cell type and the run), ``summary`` (end-of-run table and plots), ``tuned_params`` (reading
the tuned file at inference).
"""
