"""Stage 6, inference: fold ensemble x TTA -> instances for a competition test folder, any image
folder, or pseudo-labels.
"""
