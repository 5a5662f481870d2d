"""Stage 3, post-processing: probability maps -> one label per cell (deep decoding and the
classical baseline), the tuning search space, and the tuned-parameters file
(``postprocess.yaml``, :mod:`cellseg.postprocess.tuned`). Below training, whose per-epoch score
decodes maps.
"""
