"""ONNX export of the task models: raw features in, the task's answer out.

Each graph takes ``features`` (float32, [batch, width], dynamic batch) and returns the user-facing value:
``fraud_probability``, ``fee_rate_sat_vb`` (calibrated), ``anomaly_score``, ``attack_probability`` or
``success_probability``. Normalization (schema typical ranges, log columns, clipping) and the fee model's
conformal offsets are inside the graph, so an inference engine needs no preprocessing. ``metadata_props`` carry the task, version, feature names,
schema version, epsilon/delta and the training run and round.
"""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from core.bitcoin.features import SCHEMA_VERSION
from core.errors import AnyaError
from models.tasks import infer, task_spec

INPUT_NAME = "features"
OPSET = 18


class _Answer(nn.Module):
    """Wraps a task model so that forward returns its user-facing output (``model.infer``)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.model.infer(features)


def export_onnx(task: str, model: nn.Module, metadata: Mapping[str, Any] | None = None) -> bytes:
    """The ONNX bytes of ``model`` (a ``task`` model on CPU), checked by ``onnx.checker``."""
    spec = task_spec(task)
    model = model.to("cpu").eval()
    example = torch.zeros(2, spec.schema.width, dtype=torch.float32)
    wrapper = _Answer(model).eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            wrapper, (example,), dynamo=True, opset_version=OPSET, input_names=[INPUT_NAME],
            output_names=[spec.output_name],
            dynamic_shapes={"features": {0: torch.export.Dim("batch", min=1)}}, verbose=False,
        )
    program.optimize()
    proto = program.model_proto
    meta = {"task": task, "input": INPUT_NAME, "output": spec.output_name,
            "feature_names": json.dumps(list(spec.schema.names)), "schema_version": str(SCHEMA_VERSION)}
    for key, value in (metadata or {}).items():
        meta[str(key)] = value if isinstance(value, str) else json.dumps(value)
    del proto.metadata_props[:]
    for key, value in sorted(meta.items()):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "anya-fl"
    onnx.checker.check_model(proto, full_check=True)
    buf = io.BytesIO()
    onnx.save_model(proto, buf)
    return buf.getvalue()


def parity(task: str, model: nn.Module, onnx_bytes: bytes, x: np.ndarray) -> float:
    """Largest absolute difference between torch and onnxruntime on rows ``x`` (the export check)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    got = sess.run(None, {INPUT_NAME: np.ascontiguousarray(x, dtype=np.float32)})[0]
    want = infer(model, x)
    if got.shape != want.shape:
        raise AnyaError(f"export of {task}: onnxruntime output shape {got.shape} != torch {want.shape}")
    return float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64)))) if len(x) else 0.0
