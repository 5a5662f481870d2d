"""Stage 5, tuning: Optuna search of the post-processing per cell type on OOF maps.

Modules: ``eval_sets`` (the OOF maps + truth a study scores), ``scoring`` (a parameter set's
score, in a process pool), ``storage`` (Optuna storages and study names), ``study`` (the search
per cell type, the run and its table), ``plots`` (each study's plots). The file it writes,
``postprocess.yaml``, is owned by :mod:`cellseg.postprocess.tuned`.
"""
