"""How good a segmentation is: the competition score and the error analysis.

Below every stage, so that training (validation score), tuning (objective) and evaluation share
one definition (docs/design.md section 3).
"""
