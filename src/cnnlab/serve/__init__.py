"""Serving a trained run: prediction engines (PyTorch, ONNX Runtime), ONNX export, the Predictor."""
