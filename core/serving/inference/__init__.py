"""Inference: onnxruntime engine and the pure-NumPy RISC-V path (torch-free)."""
