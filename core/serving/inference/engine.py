"""The local inference engine: onnxruntime sessions per task, torch-free.

- Execution providers are chosen from what this onnxruntime build offers (TensorRT, CUDA, ROCm, OpenVINO,
  CoreML, then CPU), or forced with ``provider=``; a requested provider that is missing is a clear
  ConfigError naming what is available.
- ``predict_one`` (one row, real time) and ``predict_batch`` (any number of rows, split at
  ``max_batch``) check shape and finiteness and record latency in the PerformanceMonitor.
- Optional dynamic int8 quantization (onnxruntime.quantization) is kept only when, on a validation set,
  its largest output difference stays under ``max_quant_error`` (absolute for probabilities and anomaly
  scores, relative for fee rates); otherwise the float model serves and the reason is recorded.
- Hot swap: a new version's session is built and checked completely before one reference assignment
  replaces the old model; requests in flight finish on the model they started with.
"""

from __future__ import annotations

import json
import math
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from core.bitcoin.features import TASKS
from core.errors import AnyaError, ConfigError, FeatureError
from core.health.performance import PerformanceMonitor

PROVIDERS = {"tensorrt": "TensorrtExecutionProvider", "cuda": "CUDAExecutionProvider",
             "rocm": "ROCMExecutionProvider", "openvino": "OpenVINOExecutionProvider",
             "coreml": "CoreMLExecutionProvider", "cpu": "CPUExecutionProvider"}
PREFERENCE = tuple(PROVIDERS.values())
GRAPH_LEVELS = {"disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
RELATIVE_ERROR_TASKS = ("fee",)  # outputs in sat/vB: quantization error is judged relative to the value


@dataclass(frozen=True)
class EngineSettings:
    """How sessions are built."""

    provider: str | None = None  # None: best available; or tensorrt, cuda, rocm, openvino, coreml, cpu
    intra_threads: int = 1
    inter_threads: int = 1
    graph_optimization: str = "all"
    quantize: bool = False
    max_quant_error: float = 0.01
    max_batch: int = 65_536

    def validate(self) -> EngineSettings:
        if self.provider is not None and self.provider.lower() not in PROVIDERS:
            raise ConfigError("provider", f"{self.provider!r} is not a provider; choose one of {', '.join(PROVIDERS)}")
        for name in ("intra_threads", "inter_threads"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ConfigError(name.replace("_", "-"), f"{v!r} must be a whole number >= 0 (0: onnxruntime's default)")
        if self.graph_optimization not in GRAPH_LEVELS:
            raise ConfigError("graph-optimization", f"{self.graph_optimization!r}: choose one of {', '.join(GRAPH_LEVELS)}")
        if not (math.isfinite(self.max_quant_error) and self.max_quant_error > 0):
            raise ConfigError("max-quant-error", f"{self.max_quant_error!r} must be a positive number")
        if isinstance(self.max_batch, bool) or not isinstance(self.max_batch, int) or self.max_batch < 1:
            raise ConfigError("max-batch", f"{self.max_batch!r} must be a whole number >= 1")
        return self


def choose_providers(requested: str | None = None) -> list[str]:
    """Providers for a session: the requested one (then CPU), or every available one in preference order."""
    available = ort.get_available_providers()
    if requested is None:
        return [p for p in PREFERENCE if p in available] or ["CPUExecutionProvider"]
    name = PROVIDERS.get(requested.lower())
    if name is None:
        raise ConfigError("provider", f"{requested!r} is not a provider; choose one of {', '.join(PROVIDERS)}")
    if name not in available:
        raise ConfigError("provider", f"{requested} ({name}) is not available in this onnxruntime build; available: "
                                      f"{', '.join(available)} (GPU providers need the onnxruntime-gpu package)")
    return [name] if name == "CPUExecutionProvider" else [name, "CPUExecutionProvider"]


@dataclass
class TaskModel:
    """One loaded model: its session and what is known about it."""

    task: str
    version: str
    session: ort.InferenceSession
    input_name: str
    output_name: str
    width: int
    metadata: dict[str, str]
    providers: list[str]
    quantized: bool = False
    quant_note: str = ""
    loaded_at: float = field(default_factory=time.time)
    load_ms: float = 0.0

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: x})[0]

    def info(self) -> dict[str, Any]:
        return {"task": self.task, "version": self.version, "input": self.input_name, "output": self.output_name,
                "width": self.width, "providers": self.providers, "quantized": self.quantized,
                "quantization": self.quant_note, "loaded_at": self.loaded_at, "load_ms": round(self.load_ms, 3),
                "epsilon": self.metadata.get("epsilon"), "run": self.metadata.get("run"),
                "round": self.metadata.get("round")}


def _quantize(model_bytes: bytes) -> bytes:
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_dynamic logs generic "run pre-processing" advice on the root logger
    try:
        with tempfile.TemporaryDirectory() as d:
            src, dst = Path(d) / "f32.onnx", Path(d) / "int8.onnx"
            src.write_bytes(model_bytes)
            quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
            return dst.read_bytes()
    finally:
        root.setLevel(level)


def quantization_error(task: str, reference: np.ndarray, quantized: np.ndarray) -> float:
    """Largest output difference: relative (to max(1, |ref|)) for fee rates, absolute otherwise."""
    diff = np.abs(quantized.astype(np.float64) - reference.astype(np.float64))
    if task in RELATIVE_ERROR_TASKS:
        diff = diff / np.maximum(1.0, np.abs(reference.astype(np.float64)))
    return float(diff.max()) if diff.size else 0.0


class InferenceEngine:
    """Sessions per task, hot-swappable; thread-safe for concurrent predictions and loads."""

    def __init__(self, settings: EngineSettings | None = None, monitor: PerformanceMonitor | None = None) -> None:
        self.settings = (settings or EngineSettings()).validate()
        self.monitor = monitor or PerformanceMonitor()
        self.providers = choose_providers(self.settings.provider)
        self._models: dict[str, TaskModel] = {}
        self._load_lock = threading.Lock()

    # ------------------------------------------------------------------ loading

    def _session(self, model_bytes: bytes) -> ort.InferenceSession:
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.settings.intra_threads
        so.inter_op_num_threads = self.settings.inter_threads
        so.graph_optimization_level = GRAPH_LEVELS[self.settings.graph_optimization]
        so.log_severity_level = 3
        try:
            return ort.InferenceSession(model_bytes, sess_options=so, providers=self.providers)
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable graphs
            raise AnyaError(f"model: onnxruntime cannot load it ({str(exc).splitlines()[0][:200]})") from exc

    def load(self, task: str, model_bytes: bytes, *, version: str = "unversioned",
             validation: np.ndarray | None = None) -> TaskModel:
        """Build, check and swap in a model for ``task``; the previous one serves until the swap."""
        t0 = time.perf_counter()
        session = self._session(model_bytes)
        meta = dict(session.get_modelmeta().custom_metadata_map)
        if meta.get("task", task) != task:
            raise AnyaError(f"model {version}: it is a {meta['task']!r} model, not {task!r}")
        inputs, outputs = session.get_inputs(), session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise AnyaError(f"model {version}: expected one input and one output, got {len(inputs)} and {len(outputs)}")
        width = inputs[0].shape[1] if len(inputs[0].shape) == 2 else None
        if not isinstance(width, int):
            raise AnyaError(f"model {version}: input shape {inputs[0].shape} is not [batch, features]")
        names = json.loads(meta["feature_names"]) if "feature_names" in meta else None
        if names is not None and len(names) != width:
            raise AnyaError(f"model {version}: metadata lists {len(names)} features, the graph takes {width}")
        model = TaskModel(task, version, session, inputs[0].name, outputs[0].name, width, meta, session.get_providers())
        if self.settings.quantize:
            model = self._try_quantize(model, model_bytes, validation)
        probe = np.zeros((1, width), np.float32) if validation is None else validation[:1].astype(np.float32)
        if model.run(probe).shape != (1,):  # a model that cannot answer one row is not swapped in
            raise AnyaError(f"model {version}: output shape for one row is not (1,)")
        model.load_ms = (time.perf_counter() - t0) * 1000.0
        with self._load_lock:
            self._models[task] = model  # one reference assignment: in-flight requests keep the old model
        self.monitor.record("load", model.load_ms / 1000.0)
        return model

    def _try_quantize(self, model: TaskModel, model_bytes: bytes, validation: np.ndarray | None) -> TaskModel:
        if validation is None or len(validation) == 0:
            model.quant_note = "not quantized: no validation rows to bound the error"
            return model
        x = np.ascontiguousarray(validation, dtype=np.float32)
        session = self._session(_quantize(model_bytes))
        qmodel = TaskModel(model.task, model.version, session, model.input_name, model.output_name, model.width,
                           model.metadata, session.get_providers(), quantized=True)
        err = quantization_error(model.task, model.run(x), qmodel.run(x))
        bound = self.settings.max_quant_error
        if err <= bound:
            qmodel.quant_note = f"int8 kept: max error {err:.2e} <= {bound:g} on {len(x):,} validation rows"
            return qmodel
        model.quant_note = f"int8 refused: max error {err:.2e} > {bound:g} on {len(x):,} validation rows"
        return model

    def unload(self, task: str) -> None:
        with self._load_lock:
            self._models.pop(task, None)

    # ------------------------------------------------------------------ predicting

    def model(self, task: str) -> TaskModel:
        """The model serving ``task`` (AnyaError when none is loaded)."""
        m = self._models.get(task)
        if m is None:
            loaded = ", ".join(sorted(self._models)) or "none"
            raise AnyaError(f"task: no model loaded for {task!r} (loaded: {loaded})")
        return m

    def _check(self, m: TaskModel, x: np.ndarray) -> np.ndarray:
        if x.ndim != 2 or x.shape[1] != m.width:
            raise FeatureError("features", f"shape {tuple(x.shape)}: {m.task} takes rows of {m.width} numbers")
        if not np.isfinite(x).all():
            bad = np.argwhere(~np.isfinite(x))[0]
            names = json.loads(m.metadata.get("feature_names", "[]")) or []
            col = names[bad[1]] if bad[1] < len(names) else f"column {bad[1]}"
            raise FeatureError(f"features[{bad[0]}].{col}", "is not a finite number")
        return x

    def predict_batch(self, task: str, rows: np.ndarray) -> np.ndarray:
        """Outputs for ``rows`` (float32 [n, width]); split into chunks of ``max_batch``."""
        m = self.model(task)
        x = self._check(m, np.ascontiguousarray(rows, dtype=np.float32))
        t0 = time.perf_counter()
        step = self.settings.max_batch
        out = m.run(x) if len(x) <= step else np.concatenate([m.run(x[i:i + step]) for i in range(0, len(x), step)])
        self.monitor.record(f"predict.{task}", time.perf_counter() - t0, items=len(x))
        return out

    def predict_one(self, task: str, row: np.ndarray) -> float:
        """The output for one row (``width`` numbers)."""
        m = self.model(task)
        x = self._check(m, np.asarray(row, dtype=np.float32).reshape(1, -1))
        t0 = time.perf_counter()
        out = float(m.run(x)[0])
        self.monitor.record(f"predict.{task}", time.perf_counter() - t0)
        return out

    def models(self) -> dict[str, dict[str, Any]]:
        """What is loaded, per task."""
        return {t: m.info() for t, m in sorted(self._models.items())}

    # ------------------------------------------------------------------ registry

    def load_from_registry(self, registry: Any, ref: str, validation: np.ndarray | None = None) -> TaskModel:
        """Load ``ref`` (e.g. ``fraud@production``) after the registry verified its hash and signature."""
        version, data = registry.load(ref)
        return self.load(version.task, data, version=version.ref, validation=validation)

    def sync(self, registry: Any, tasks: tuple[str, ...] = TASKS,
             validation: dict[str, np.ndarray] | None = None) -> list[str]:
        """Hot-swap every task whose production version differs from the loaded one; returns what changed.

        A version that fails verification or loading is skipped (the loaded one keeps serving); the
        errors are returned as ``"task: message"`` entries prefixed with ``!``.
        """
        changed = []
        for task in tasks:
            try:
                current = registry.get(f"{task}@production")
            except AnyaError:
                continue
            loaded = self._models.get(task)
            if loaded is not None and loaded.version == current.ref:
                continue
            try:
                self.load_from_registry(registry, current.ref, (validation or {}).get(task))
                changed.append(current.ref)
            except AnyaError as exc:
                changed.append(f"!{task}: {exc}")
        return changed
