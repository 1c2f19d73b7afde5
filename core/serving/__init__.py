"""Models in production: the signed registry, the inference engine (onnxruntime, and the RISC-V NumPy
path in inference/riscv.py) and the prediction API (api)."""
