"""Stage 8, deployment: the offline Kaggle package and exports (SavedModel, ONNX) for other tools.
"""
