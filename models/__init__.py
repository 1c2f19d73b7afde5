"""Torch models for the four tasks, the one DP training loop, ONNX export."""
