"""Torch models for the three tasks, the one DP training loop, ONNX export."""
