"""Lowering of (factored) checkpoints for deployment: ONNX graphs (onnx_export.py, needs torch) and the
onnxruntime-only runner (runner.py, no torch)."""
