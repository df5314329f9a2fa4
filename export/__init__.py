"""Checkpoints to ONNX (and TensorRT engines where present), with parity checks and model cards."""
