"""The one prediction contract: the Predictor protocol, its PyTorch and ONNX implementations, the loader."""
