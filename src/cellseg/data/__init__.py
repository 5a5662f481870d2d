"""Stage 1, data: the competition's files (RLE, data root, folds) and the data made or converted
for it (synthetic cells, COCO/LIVECell).
"""
