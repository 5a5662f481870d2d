"""Stage 7, evaluation: a submission scored against truth, and the experiment report. The metric
and the error analysis themselves sit below the stages (:mod:`cellseg.metrics`).
"""
