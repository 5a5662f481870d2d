"""Stage 7, evaluation: the competition metric, error analysis, submission scoring, figures and
the experiment report.
"""
