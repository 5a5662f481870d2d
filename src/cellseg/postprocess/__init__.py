"""Stage 4, post-processing: probability maps -> one label per cell (deep decoding and the
classical baseline).
"""
