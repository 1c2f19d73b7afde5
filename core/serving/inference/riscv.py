"""A pure-NumPy executor of the task models' ONNX graphs, for hosts without onnxruntime (RISC-V boards).

It needs only Python's standard library and NumPy - Debian's ``python3`` + ``python3-numpy`` on riscv64 are
enough - and imports nothing from this project, so this one file can be copied onto a board (or into an
emulated root) and run as ``python3 riscv.py MODEL.onnx INPUT.npy OUTPUT.npy [--int8]``.

What is in it:

* a minimal protobuf wire-format reader (varint, 64-bit, length-delimited, 32-bit fields; packed and
  unpacked repeated scalars) for the ONNX messages a model needs: ModelProto, GraphProto, NodeProto,
  AttributeProto, TensorProto, ValueInfoProto, OperatorSetIdProto and StringStringEntryProto (field
  numbers from ``onnx.proto``). Tensors with external data, sparse initializers, subgraph attributes and
  non-default operator domains are refused.
* ``RiscvModel``: checks the operator set at load time (``UnsupportedOperator``, a ``ValueError``, names
  every operator it does not implement) and runs the nodes in graph order (ONNX graphs are topologically
  sorted) over a dict of named values. Operators: see ``SUPPORTED_OPS``; each follows the ONNX spec
  (numpy broadcasting = ONNX multidirectional broadcasting; Gemm alpha/beta/transA/transB; Gather with
  negative indices; ReduceMean/Squeeze/Unsqueeze axes as input (opset >= 13/18) or attribute (older);
  Clip min/max as optional inputs or (opset < 11) attributes; Shape start/end; Expand's bidirectional
  broadcast; a numerically stable Sigmoid).
* ``QTensor`` and an int8 mode (``int8=True``): the weights of every Gemm (and 2-D MatMul) whose weight
  is an initializer are quantized once, per output channel, to **symmetric int8** (zero point 0,
  scale = max|w| / 127, values in [-127, 127]); the activation feeding it is quantized dynamically to
  **asymmetric uint8** by the formula of ONNX ``DynamicQuantizeLinear`` (range widened to include 0,
  scale = (max - min) / 255, zero point = round(-min / scale), round half to even), with one scale per
  row by default (``activations="row"``) or one per batch tensor (``activations="tensor"``). The product
  is integer arithmetic with int32 accumulation, then rescaled and the bias added in float32; every other
  operator stays float32.

  ``"tensor"`` is exactly onnxruntime's ``quantize_dynamic(per_channel=True, weight_type=QInt8)`` scheme
  (outputs agree to ~1e-7), but a row's output then depends on the other rows of its batch, and one
  outlying row coarsens everyone's scale. ``"row"`` makes each row's answer independent of its batch and
  is 2-3x more accurate on the task models (measured on models trained a few hundred steps, 10,000 rows:
  max error vs float32 about 0.015 vs 0.03-0.05 on the fraud probability, 0.6 % vs 1.2-1.4 % on the fee
  rate, 0.003 vs 0.004 on the anomaly score), for the price of per-row min/max (about half the speed).
  NumPy has no int8 GEMM: where it is provably exact the integer product runs as float32 BLAS on
  integer-valued arrays, so int8 here reproduces a quantized deployment's numbers; it is not faster.

Speed: everything is vectorized over the batch (no per-row Python loop). Nothing global is set here, but
``OPENBLAS_NUM_THREADS=1`` in the environment (before NumPy is imported) helps: with OpenBLAS's threads,
small batches pay their start-up and a busy machine makes them spin (10x slower seen on 2 cores). On one
x86 host thread, the fraud model at 4,096 rows runs about 2 M rows/s in float32 (onnxruntime: 2-3 M),
1.1-1.4 M in int8 with per-tensor activations and 0.5-0.6 M with per-row activations.
"""

from __future__ import annotations

import argparse
import struct
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

__all__ = ["OnnxFormatError", "QTensor", "RiscvModel", "SUPPORTED_OPS", "UnsupportedOperator", "main"]


class OnnxFormatError(ValueError):
    """The bytes are not an ONNX model this reader can load (malformed protobuf, external data, ...)."""


class UnsupportedOperator(ValueError):
    """The graph uses operators (or an operator domain) this executor does not implement."""

    def __init__(self, ops: Sequence[str]) -> None:
        self.ops = sorted(set(ops))
        super().__init__(f"unsupported ONNX operator(s): {', '.join(self.ops)} "
                         f"(supported: {', '.join(sorted(SUPPORTED_OPS))})")


# ---------------------------------------------------------------------------------------------------------
# protobuf wire format

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise OnnxFormatError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise OnnxFormatError("varint longer than 10 bytes")


def _signed64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _fields(buf: bytes) -> Iterator[tuple[int, int, object]]:
    """(field number, wire type, value) for each field of one message: int for varints, bytes otherwise."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise OnnxFormatError("field number 0")
        if wire == _VARINT:
            value, pos = _varint(buf, pos)
        elif wire == _LEN:
            n, pos = _varint(buf, pos)
            if pos + n > end:
                raise OnnxFormatError("truncated length-delimited field")
            value, pos = buf[pos : pos + n], pos + n
        elif wire == _I64:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == _I32:
            value, pos = buf[pos : pos + 4], pos + 4
        else:
            raise OnnxFormatError(f"unsupported wire type {wire} (groups are not used by ONNX)")
        if pos > end:
            raise OnnxFormatError("truncated fixed-width field")
        yield field, wire, value


def _ints(wire: int, value: object, out: list[int], signed: bool = True) -> None:
    """Append a repeated int32/int64 (or, ``signed=False``, uint64) field, packed (one length-delimited run
    of varints) or not."""
    conv = _signed64 if signed else int
    if wire == _VARINT:
        out.append(conv(value))  # type: ignore[arg-type]
    elif wire == _LEN:
        buf, pos = value, 0
        while pos < len(buf):  # type: ignore[arg-type]
            v, pos = _varint(buf, pos)  # type: ignore[arg-type]
            out.append(conv(v))
    else:
        raise OnnxFormatError(f"integer field with wire type {wire}")


def _reals(wire: int, value: object, out: list[float], fmt: str) -> None:
    """Append a repeated float ('f', fixed32) or double ('d', fixed64) field, packed or not."""
    size = struct.calcsize("<" + fmt)
    if wire in (_I32, _I64) and len(value) == size:  # type: ignore[arg-type]
        out.append(struct.unpack("<" + fmt, value)[0])  # type: ignore[arg-type]
    elif wire == _LEN and len(value) % size == 0:  # type: ignore[arg-type]
        out.extend(struct.unpack(f"<{len(value) // size}{fmt}", value))  # type: ignore[arg-type]
    else:
        raise OnnxFormatError(f"floating-point field with wire type {wire}")


def _text(value: object) -> str:
    return bytes(value).decode("utf-8")  # type: ignore[arg-type]


# TensorProto.DataType -> numpy dtype (little-endian in raw_data)
_DTYPES: dict[int, np.dtype] = {
    1: np.dtype(np.float32), 2: np.dtype(np.uint8), 3: np.dtype(np.int8), 4: np.dtype(np.uint16),
    5: np.dtype(np.int16), 6: np.dtype(np.int32), 7: np.dtype(np.int64), 9: np.dtype(np.bool_),
    10: np.dtype(np.float16), 11: np.dtype(np.float64), 12: np.dtype(np.uint32), 13: np.dtype(np.uint64),
}
_CAST_TO = dict(_DTYPES)


class TensorProto:
    """The parts of onnx.TensorProto an initializer needs; ``array()`` is its value."""

    def __init__(self, buf: bytes) -> None:
        self.dims: list[int] = []
        self.data_type = 0
        self.name = ""
        self.raw_data: bytes | None = None
        self.float_data: list[float] = []
        self.int32_data: list[int] = []
        self.int64_data: list[int] = []
        self.double_data: list[float] = []
        self.uint64_data: list[int] = []
        self.external = False
        for field, wire, value in _fields(buf):
            if field == 1:
                _ints(wire, value, self.dims)
            elif field == 2:
                self.data_type = int(value)  # type: ignore[arg-type]
            elif field == 4:
                _reals(wire, value, self.float_data, "f")
            elif field == 5:
                _ints(wire, value, self.int32_data)
            elif field == 7:
                _ints(wire, value, self.int64_data)
            elif field == 8:
                self.name = _text(value)
            elif field == 9:
                self.raw_data = bytes(value)  # type: ignore[arg-type]
            elif field == 10:
                _reals(wire, value, self.double_data, "d")
            elif field == 11:
                _ints(wire, value, self.uint64_data, signed=False)
            elif field == 14:
                self.external = int(value) == 1  # type: ignore[arg-type]

    def array(self) -> np.ndarray:
        if self.external:
            raise OnnxFormatError(f"tensor {self.name!r} keeps its data in an external file (not supported)")
        dtype = _DTYPES.get(self.data_type)
        if dtype is None:
            raise OnnxFormatError(f"tensor {self.name!r}: data type {self.data_type} not supported")
        shape = tuple(self.dims)
        if self.raw_data is not None:
            flat = np.frombuffer(self.raw_data, dtype=dtype.newbyteorder("<")).astype(dtype)
        elif self.data_type == 1:
            flat = np.array(self.float_data, dtype=np.float32)
        elif self.data_type == 11:
            flat = np.array(self.double_data, dtype=np.float64)
        elif self.data_type == 7:
            flat = np.array(self.int64_data, dtype=np.int64)
        elif self.data_type in (12, 13):
            flat = np.array(self.uint64_data, dtype=np.uint64).astype(dtype)
        elif self.data_type == 10:  # float16 bit patterns in int32_data
            flat = np.array(self.int32_data, dtype=np.uint16).view(np.float16)
        else:  # int32, int16, int8, uint16, uint8, bool: one element per int32_data entry
            flat = np.array(self.int32_data, dtype=np.int64).astype(dtype)
        count = int(np.prod(shape, dtype=np.int64))
        if flat.size != count:
            raise OnnxFormatError(f"tensor {self.name!r}: {flat.size} values for shape {shape}")
        return flat.reshape(shape)


class AttributeProto:
    """name, type and value (f, i, s, t, floats, ints, strings) of a node attribute."""

    def __init__(self, buf: bytes) -> None:
        self.name = ""
        self.type = 0
        self.f = 0.0
        self.i = 0
        self.s = b""
        self.t: TensorProto | None = None
        self.floats: list[float] = []
        self.ints: list[int] = []
        self.strings: list[bytes] = []
        self.has_graph = False
        for field, wire, value in _fields(buf):
            if field == 1:
                self.name = _text(value)
            elif field == 20:
                self.type = int(value)  # type: ignore[arg-type]
            elif field == 2:
                self.f = struct.unpack("<f", value)[0]  # type: ignore[arg-type]
            elif field == 3:
                self.i = _signed64(value)  # type: ignore[arg-type]
            elif field == 4:
                self.s = bytes(value)  # type: ignore[arg-type]
            elif field == 5:
                self.t = TensorProto(value)  # type: ignore[arg-type]
            elif field in (6, 11):
                self.has_graph = True
            elif field == 7:
                _reals(wire, value, self.floats, "f")
            elif field == 8:
                _ints(wire, value, self.ints)
            elif field == 9:
                self.strings.append(bytes(value))  # type: ignore[arg-type]

    @property
    def value(self) -> object:
        kind = {1: "f", 2: "i", 3: "s", 4: "t", 6: "floats", 7: "ints", 8: "strings"}.get(self.type)
        if kind is None:
            raise OnnxFormatError(f"attribute {self.name!r}: type {self.type} not supported")
        if kind == "t":
            return self.t.array() if self.t is not None else None
        return getattr(self, kind)


class NodeProto:
    def __init__(self, buf: bytes) -> None:
        self.input: list[str] = []
        self.output: list[str] = []
        self.name = ""
        self.op_type = ""
        self.domain = ""
        self.attribute: list[AttributeProto] = []
        for field, _wire, value in _fields(buf):
            if field == 1:
                self.input.append(_text(value))
            elif field == 2:
                self.output.append(_text(value))
            elif field == 3:
                self.name = _text(value)
            elif field == 4:
                self.op_type = _text(value)
            elif field == 5:
                self.attribute.append(AttributeProto(value))  # type: ignore[arg-type]
            elif field == 7:
                self.domain = _text(value)

    def attrs(self) -> dict[str, object]:
        for a in self.attribute:
            if a.has_graph:
                raise UnsupportedOperator([f"{self.op_type} (with a subgraph attribute)"])
        return {a.name: a.value for a in self.attribute}


class ValueInfoProto:
    """name, and the shape from type.tensor_type.shape: ints for fixed dims, the dim_param (or None) else."""

    def __init__(self, buf: bytes) -> None:
        self.name = ""
        self.shape: list[int | str | None] | None = None
        for field, _wire, value in _fields(buf):
            if field == 1:
                self.name = _text(value)
            elif field == 2:  # TypeProto
                for f2, _w2, v2 in _fields(value):  # type: ignore[arg-type]
                    if f2 == 1:  # tensor_type
                        for f3, _w3, v3 in _fields(v2):  # type: ignore[arg-type]
                            if f3 == 2:  # TensorShapeProto
                                self.shape = [_dimension(d) for f4, _w4, d in _fields(v3) if f4 == 1]  # type: ignore[arg-type]


def _dimension(buf: bytes) -> int | str | None:
    for field, _wire, value in _fields(buf):
        if field == 1:
            return _signed64(value)  # type: ignore[arg-type]
        if field == 2:
            return _text(value)
    return None


class GraphProto:
    def __init__(self, buf: bytes) -> None:
        self.node: list[NodeProto] = []
        self.name = ""
        self.initializer: list[TensorProto] = []
        self.input: list[ValueInfoProto] = []
        self.output: list[ValueInfoProto] = []
        self.sparse = 0
        for field, _wire, value in _fields(buf):
            if field == 1:
                self.node.append(NodeProto(value))  # type: ignore[arg-type]
            elif field == 2:
                self.name = _text(value)
            elif field == 5:
                self.initializer.append(TensorProto(value))  # type: ignore[arg-type]
            elif field == 11:
                self.input.append(ValueInfoProto(value))  # type: ignore[arg-type]
            elif field == 12:
                self.output.append(ValueInfoProto(value))  # type: ignore[arg-type]
            elif field == 15:
                self.sparse += 1


def _string_entry(buf: bytes) -> tuple[str, str]:
    key = val = ""
    for field, _wire, value in _fields(buf):
        if field == 1:
            key = _text(value)
        elif field == 2:
            val = _text(value)
    return key, val


def _opset_entry(buf: bytes) -> tuple[str, int]:
    domain, version = "", 0
    for field, _wire, value in _fields(buf):
        if field == 1:
            domain = _text(value)
        elif field == 2:
            version = _signed64(value)  # type: ignore[arg-type]
    return domain, version


class ModelProto:
    def __init__(self, buf: bytes) -> None:
        self.ir_version = 0
        self.producer_name = ""
        self.graph: GraphProto | None = None
        self.opset_import: dict[str, int] = {}
        self.metadata_props: dict[str, str] = {}
        for field, _wire, value in _fields(buf):
            if field == 1:
                self.ir_version = int(value)  # type: ignore[arg-type]
            elif field == 2:
                self.producer_name = _text(value)
            elif field == 7:
                self.graph = GraphProto(value)  # type: ignore[arg-type]
            elif field == 8:
                domain, version = _opset_entry(value)  # type: ignore[arg-type]
                self.opset_import["" if domain == "ai.onnx" else domain] = version
            elif field == 14:
                key, val = _string_entry(value)  # type: ignore[arg-type]
                self.metadata_props[key] = val
        if self.graph is None:
            raise OnnxFormatError("no graph in the model (is this an ONNX file?)")


# ---------------------------------------------------------------------------------------------------------
# int8 tensors


class QTensor:
    """A tensor that is float (``scale is None``) or quantized: ``real = (data - zero_point) * scale``.

    Quantized tensors come in two kinds (see ``quantize``): symmetric int8 (``zero_point`` 0, values in
    [-127, 127]) for weights and asymmetric uint8 (values and ``zero_point`` in [0, 255]) for activations.
    ``scale`` (and an activation's ``zero_point``) is one number per tensor, or an array with one entry per
    index along ``axis`` (per output channel for weights, per row for row-wise activations).
    """

    __slots__ = ("data", "scale", "zero_point", "axis")

    def __init__(self, data: np.ndarray, scale: float | np.ndarray | None = None,
                 zero_point: int | np.ndarray = 0, axis: int | None = None) -> None:
        self.data = data
        self.scale = scale
        self.zero_point = zero_point if isinstance(zero_point, np.ndarray) and zero_point.size > 1 else int(
            np.asarray(zero_point).reshape(-1)[0] if np.size(zero_point) else 0)
        self.axis = axis

    @property
    def quantized(self) -> bool:
        return self.scale is not None

    @staticmethod
    def _along(v: float | np.ndarray, axis: int | None, ndim: int, dtype: type = np.float32) -> np.ndarray:
        """``v`` as an array that broadcasts along ``axis`` of an ``ndim``-dimensional tensor."""
        a = np.asarray(v, dtype=dtype)
        if a.size == 1:
            return a.reshape(())
        if axis is None:
            raise ValueError("a per-channel scale or zero point needs an axis")
        shape = [1] * ndim
        shape[axis] = a.size
        return a.reshape(shape)

    def dequantize(self) -> np.ndarray:
        """The float32 values (a float tensor's data as it is)."""
        if self.scale is None:
            return np.asarray(self.data, dtype=np.float32)
        nd = self.data.ndim
        zp = self._along(self.zero_point, self.axis, nd)
        return ((self.data.astype(np.float32) - zp) * self._along(self.scale, self.axis, nd)).astype(np.float32)

    @classmethod
    def quantize(cls, x: np.ndarray, scale: float | np.ndarray, zero_point: int | np.ndarray | None = None,
                 axis: int | None = None) -> QTensor:
        """Quantize float ``x`` (rounding half to even, as ONNX QuantizeLinear does).

        ``zero_point=None``: symmetric int8, ``clip(round(x / scale), -127, 127)``, zero point 0.
        Otherwise asymmetric uint8, ``clip(round(x / scale) + zero_point, 0, 255)``.
        ``scale`` and ``zero_point`` are scalars or one value per index along ``axis``.
        """
        x = np.asarray(x, dtype=np.float32)
        scaled = np.rint(x / cls._along(scale, axis, x.ndim))
        if zero_point is None:
            return cls(np.clip(scaled, -127, 127).astype(np.int8), scale, 0, axis)
        zp = cls._along(zero_point, axis, x.ndim)
        return cls(np.clip(scaled + zp, 0, 255).astype(np.uint8), scale, zero_point, axis)

    @classmethod
    def symmetric(cls, w: np.ndarray, axis: int = 0) -> QTensor:
        """Per-channel symmetric int8 along ``axis``: scale = max|w| / 127 (1 for an all-zero channel)."""
        w = np.asarray(w, dtype=np.float32)
        reduce = tuple(i for i in range(w.ndim) if i != axis)
        amax = np.max(np.abs(w), axis=reduce) if w.size else np.zeros(w.shape[axis], dtype=np.float32)
        scale = np.where(amax > 0, amax / np.float32(127.0), np.float32(1.0)).astype(np.float32)
        return cls.quantize(w, scale, None, axis)

    @classmethod
    def dynamic(cls, x: np.ndarray, per_row: bool = False) -> QTensor:
        """Asymmetric uint8 as ONNX DynamicQuantizeLinear computes it, for the whole tensor or (``per_row``,
        2-D ``x``) for each row: the range widened to include 0, scale = (max - min) / 255,
        zero point = round(-min / scale)."""
        x = np.asarray(x, dtype=np.float32)
        scale, zp = dynamic_params(x, per_row)
        if per_row:
            return cls.quantize(x, scale.reshape(-1), zp.reshape(-1).astype(np.int32), axis=0)
        return cls.quantize(x, float(scale), int(zp))


def dynamic_params(x: np.ndarray, per_row: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(scale, zero point) of DynamicQuantizeLinear for float32 ``x``: 0-d arrays, or [rows, 1] per row.

    The zero point is returned as float32 holding an integer in [0, 255]."""
    if x.size == 0:
        shape = (x.shape[0], 1) if per_row else ()
        return np.ones(shape, dtype=np.float32), np.zeros(shape, dtype=np.float32)
    zero = np.float32(0.0)
    if per_row:
        lo = np.minimum(x.min(axis=1, keepdims=True), zero)
        hi = np.maximum(x.max(axis=1, keepdims=True), zero)
    else:
        lo, hi = np.minimum(x.min(), zero), np.maximum(x.max(), zero)
    span = (hi - lo).astype(np.float32)
    scale = np.where(span > 0, span / np.float32(255.0), np.float32(1.0)).astype(np.float32)
    zp = np.clip(np.rint(-lo / scale), 0, 255).astype(np.float32)
    return scale, zp


# Largest K for which a dot product of uint8-minus-zero-point (|v| <= 255) and int8 (|w| <= 127) values is
# exact in float32 at every partial sum (< 2**24): there BLAS sgemm on integer-valued float32 arrays gives
# bit-for-bit the int32 accumulation, several times faster than NumPy's BLAS-less integer matmul.
EXACT_F32_MAX_K = (1 << 24) // (255 * 127)


class _Int8Linear:
    """y = alpha * (A' @ W) + beta * C for a constant W: W per-output-channel symmetric int8, A uint8 per
    tensor (or per row) for each call, the product in integers with int32 accumulation, then a float32
    rescale and bias."""

    def __init__(self, w_kn: np.ndarray, alpha: float, beta: float, trans_a: bool, exact_float: bool,
                 per_row: bool) -> None:
        self.wq = QTensor.symmetric(np.ascontiguousarray(w_kn.T), axis=0)  # [N, K], one scale per output
        self.w_i32 = np.ascontiguousarray(self.wq.data.T.astype(np.int32))  # [K, N]
        self.w_f32 = self.w_i32.astype(np.float32)
        self.wsum = self.w_i32.sum(axis=0)  # for the zero-point correction of the int32 path
        self.out_scale = (np.asarray(self.wq.scale, dtype=np.float32) * np.float32(alpha)).astype(np.float32)
        self.beta = np.float32(beta)
        self.trans_a = trans_a
        self.exact_float = exact_float and w_kn.shape[0] <= EXACT_F32_MAX_K
        self.per_row = per_row

    def __call__(self, a: np.ndarray, c: np.ndarray | None = None) -> np.ndarray:
        a = np.asarray(a.T if self.trans_a else a, dtype=np.float32)
        scale, zp = dynamic_params(a, self.per_row)
        if self.exact_float:
            # q - zp for q = clip(round(a / scale) + zp, 0, 255), kept as small integers in float32
            q = np.divide(a, scale)
            np.rint(q, out=q)
            np.maximum(q, -zp, out=q)  # (np.clip with array bounds is 2-3x slower)
            np.minimum(q, np.float32(255.0) - zp, out=q)
            acc = q @ self.w_f32  # every partial sum is an integer below 2**24: exactly the int32 result
        else:
            q8 = np.clip(np.rint(a / scale) + zp, 0, 255).astype(np.uint8)
            # sum_k (q - zp) * w = q @ w - zp * colsum(w), all in int32
            acc32 = q8.astype(np.int32) @ self.w_i32 - zp.astype(np.int32) * self.wsum
            acc = acc32.astype(np.float32)
        acc *= scale * self.out_scale
        if c is not None:
            acc += c if self.beta == 1 else self.beta * c
        return acc


# ---------------------------------------------------------------------------------------------------------
# operators: each builder takes (node attributes, constant inputs or None, opset) and returns a kernel


def _elementwise(fn: Callable) -> Callable:
    return lambda attrs, consts, opset: fn


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if np.issubdtype(np.result_type(a, b), np.integer):  # ONNX integer Div truncates toward zero
        q = np.abs(a) // np.abs(b)
        return np.where((a < 0) ^ (b < 0), -q, q).astype(np.result_type(a, b))
    return np.divide(a, b)


def _pow(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.power(a, b).astype(a.dtype, copy=False)  # the output has the base's type


def _log(x: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(x)


def _exp(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return np.exp(x)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """1 / (1 + e^-x) for x >= 0 and e^x / (1 + e^x) below: no overflow either way."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, np.zeros((), dtype=x.dtype))


def _where(cond: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.where(cond.astype(bool, copy=False), a, b)


def _clip(attrs: dict, consts: list, opset: int) -> Callable:
    lo_attr, hi_attr = attrs.get("min"), attrs.get("max")  # opset < 11

    def clip(x: np.ndarray, lo: np.ndarray | None = None, hi: np.ndarray | None = None) -> np.ndarray:
        lo = lo if lo is not None else lo_attr
        hi = hi if hi is not None else hi_attr
        if lo is not None:
            x = np.maximum(x, np.asarray(lo, dtype=x.dtype))
        if hi is not None:  # applied last: min > max gives max, as the spec says
            x = np.minimum(x, np.asarray(hi, dtype=x.dtype))
        return x

    return clip


def _gather(attrs: dict, consts: list, opset: int) -> Callable:
    axis = int(attrs.get("axis", 0))

    def gather(data: np.ndarray, indices: np.ndarray) -> np.ndarray:
        idx = np.asarray(indices, dtype=np.int64)
        n = data.shape[axis]
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"Gather: index out of range [-{n}, {n})")
        return np.take(data, np.where(idx < 0, idx + n, idx), axis=axis)

    return gather


def _shape(attrs: dict, consts: list, opset: int) -> Callable:
    start, end = int(attrs.get("start", 0)), attrs.get("end")
    stop = None if end is None else int(end)  # Python slicing clamps exactly as ONNX Shape does
    return lambda x: np.array(x.shape[start:stop], dtype=np.int64)


def _expand(x: np.ndarray, shape: np.ndarray) -> np.ndarray:
    return np.broadcast_to(x, np.broadcast_shapes(x.shape, tuple(int(d) for d in shape)))


def _axes(attrs: dict, axes: np.ndarray | None) -> tuple[int, ...] | None:
    if axes is not None:
        return tuple(int(a) for a in np.asarray(axes).reshape(-1))
    if "axes" in attrs:
        return tuple(int(a) for a in attrs["axes"])  # type: ignore[union-attr]
    return None


def _squeeze(attrs: dict, consts: list, opset: int) -> Callable:
    def squeeze(x: np.ndarray, axes: np.ndarray | None = None) -> np.ndarray:
        ax = _axes(attrs, axes)
        if ax is None:
            ax = tuple(i for i, d in enumerate(x.shape) if d == 1)
        return np.squeeze(x, axis=ax)

    return squeeze


def _unsqueeze(attrs: dict, consts: list, opset: int) -> Callable:
    def unsqueeze(x: np.ndarray, axes: np.ndarray | None = None) -> np.ndarray:
        ax = _axes(attrs, axes) or ()
        rank = x.ndim + len(ax)
        return np.expand_dims(x, tuple(a % rank for a in ax))

    return unsqueeze


def _reduce_mean(attrs: dict, consts: list, opset: int) -> Callable:
    keepdims = bool(int(attrs.get("keepdims", 1)))
    noop = bool(int(attrs.get("noop_with_empty_axes", 0)))

    def reduce_mean(x: np.ndarray, axes: np.ndarray | None = None) -> np.ndarray:
        ax = _axes(attrs, axes)
        if not ax:
            if noop:
                return x
            ax = tuple(range(x.ndim))
        return np.mean(x, axis=ax, keepdims=keepdims, dtype=x.dtype)

    return reduce_mean


def _reshape(attrs: dict, consts: list, opset: int) -> Callable:
    allowzero = bool(int(attrs.get("allowzero", 0)))

    def reshape(x: np.ndarray, shape: np.ndarray) -> np.ndarray:
        dims = [int(d) for d in shape]
        if not allowzero:
            dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
        return x.reshape(dims)

    return reshape


def _cast(attrs: dict, consts: list, opset: int) -> Callable:
    to = int(attrs["to"])  # type: ignore[arg-type]
    if to not in _CAST_TO:
        raise UnsupportedOperator([f"Cast(to={to})"])
    dtype = _CAST_TO[to]
    return lambda x: x.astype(dtype)


def _gemm(attrs: dict, consts: list, opset: int, int8: bool = False, exact_float: bool = True,
          per_row: bool = False) -> Callable:
    alpha = float(attrs.get("alpha", 1.0))
    beta = float(attrs.get("beta", 1.0))
    trans_a, trans_b = bool(int(attrs.get("transA", 0))), bool(int(attrs.get("transB", 0)))
    w = consts[1] if len(consts) > 1 else None
    if int8 and w is not None and w.ndim == 2 and np.issubdtype(w.dtype, np.floating):
        linear = _Int8Linear(w.T if trans_b else w, alpha, beta, trans_a, exact_float, per_row)
        return lambda a, b, c=None: linear(a, c)
    a32, b32 = np.float32(alpha), np.float32(beta)

    def gemm(a: np.ndarray, b: np.ndarray, c: np.ndarray | None = None) -> np.ndarray:
        y = np.matmul(a.T if trans_a else a, b.T if trans_b else b)  # a new array: safe to update in place
        if alpha != 1.0:
            y *= a32
        if c is not None:
            if np.broadcast_shapes(y.shape, c.shape) == y.shape:
                y += c if beta == 1.0 else b32 * c
            else:
                y = y + (c if beta == 1.0 else b32 * c)
        return y

    return gemm


def _matmul(attrs: dict, consts: list, opset: int, int8: bool = False, exact_float: bool = True,
            per_row: bool = False) -> Callable:
    w = consts[1] if len(consts) > 1 else None
    if int8 and w is not None and w.ndim == 2 and np.issubdtype(w.dtype, np.floating):
        linear = _Int8Linear(w, 1.0, 1.0, False, exact_float, per_row)

        def matmul_int8(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            lead = a.shape[:-1]
            return linear(a.reshape(-1, a.shape[-1])).reshape(*lead, w.shape[1])

        return matmul_int8
    return lambda a, b: np.matmul(a, b)


_BUILDERS: dict[str, Callable] = {
    "Add": _elementwise(np.add),
    "Sub": _elementwise(np.subtract),
    "Mul": _elementwise(np.multiply),
    "Div": _elementwise(_div),
    "Pow": _elementwise(_pow),
    "Exp": _elementwise(_exp),
    "Log": _elementwise(_log),
    "Sqrt": _elementwise(np.sqrt),
    "Neg": _elementwise(np.negative),
    "Abs": _elementwise(np.abs),
    "Tanh": _elementwise(np.tanh),
    "Sigmoid": _elementwise(_sigmoid),
    "Relu": _elementwise(_relu),
    "Where": _elementwise(_where),
    "Identity": _elementwise(lambda x: x),
    "Expand": _elementwise(_expand),
    "Clip": _clip,
    "Gather": _gather,
    "Shape": _shape,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "ReduceMean": _reduce_mean,
    "Reshape": _reshape,
    "Cast": _cast,
    "Gemm": _gemm,
    "MatMul": _matmul,
}
SUPPORTED_OPS = frozenset(_BUILDERS)
_QUANTIZABLE = frozenset({"Gemm", "MatMul"})


# ---------------------------------------------------------------------------------------------------------
# the model


class RiscvModel:
    """An ONNX task model run with NumPy alone: ``RiscvModel.from_path(p).run(rows)``.

    ``int8=True`` runs every Gemm/MatMul whose weight is an initializer as int8 x uint8 integer arithmetic
    (see the module docstring). ``activations`` picks the activation scale: ``"row"`` (default: one per
    row, so a row's answer does not depend on its batch) or ``"tensor"`` (one per batch, onnxruntime's
    ``quantize_dynamic`` scheme). ``exact_float`` (default) runs the integer product as float32
    BLAS where that is provably exact (K <= 518); otherwise, or with ``exact_float=False``, NumPy's int32
    matmul does it. Both give the same numbers.
    """

    def __init__(self, model: ModelProto, *, int8: bool = False, activations: str = "row",
                 exact_float: bool = True) -> None:
        graph = model.graph
        assert graph is not None
        if activations not in ("tensor", "row"):
            raise ValueError(f"activations must be 'tensor' or 'row', not {activations!r}")
        self.int8 = int8
        self.activations = activations
        self.metadata: dict[str, str] = dict(model.metadata_props)
        self.opset = model.opset_import.get("", 0)
        self.ir_version = model.ir_version
        self.producer = model.producer_name
        if graph.sparse:
            raise OnnxFormatError("sparse initializers are not supported")
        bad = [n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}"
               for n in graph.node if n.domain not in ("", "ai.onnx") or n.op_type not in SUPPORTED_OPS]
        if bad:
            raise UnsupportedOperator(bad)
        self.constants: dict[str, np.ndarray] = {t.name: t.array() for t in graph.initializer}
        inputs = [v for v in graph.input if v.name not in self.constants]
        if len(inputs) != 1 or len(graph.output) != 1:
            raise OnnxFormatError(f"expected one input and one output, got inputs {[v.name for v in inputs]} "
                                  f"and outputs {[v.name for v in graph.output]}")
        self.input_name, self.output_name = inputs[0].name, graph.output[0].name
        self.input_shape = inputs[0].shape  # e.g. ['batch', 22]; None where the graph does not say
        known = set(self.constants) | {self.input_name}
        self.quantized_ops = 0
        self._plan: list[tuple[Callable, list[str], list[str]]] = []
        for node in graph.node:
            missing = [name for name in node.input if name and name not in known]
            if missing:
                raise OnnxFormatError(f"node {node.name or node.op_type} reads {missing} before they are "
                                      "computed (graph not topologically sorted?)")
            attrs = node.attrs()
            consts = [self.constants.get(name) if name else None for name in node.input]
            if node.op_type in _QUANTIZABLE:
                kernel = _BUILDERS[node.op_type](attrs, consts, self.opset, int8=int8, exact_float=exact_float,
                                                 per_row=activations == "row")
                self.quantized_ops += int(int8 and len(consts) > 1 and consts[1] is not None)
            else:
                kernel = _BUILDERS[node.op_type](attrs, consts, self.opset)
            self._plan.append((kernel, list(node.input), list(node.output)))
            known.update(node.output)
        if self.output_name not in known:
            raise OnnxFormatError(f"no node computes the graph output {self.output_name!r}")
        self.op_types = [n.op_type for n in graph.node]

    @classmethod
    def from_bytes(cls, onnx_bytes: bytes, *, int8: bool = False, activations: str = "row",
                   exact_float: bool = True) -> RiscvModel:
        return cls(ModelProto(bytes(onnx_bytes)), int8=int8, activations=activations, exact_float=exact_float)

    @classmethod
    def from_path(cls, path: str | Path, *, int8: bool = False, activations: str = "row",
                  exact_float: bool = True) -> RiscvModel:
        return cls.from_bytes(Path(path).read_bytes(), int8=int8, activations=activations, exact_float=exact_float)

    def run(self, x: np.ndarray) -> np.ndarray:
        """The graph's output for float32 rows ``x`` ([batch, width])."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        shape = self.input_shape
        if shape is not None and (x.ndim != len(shape) or any(
                isinstance(d, int) and d != n for d, n in zip(shape, x.shape, strict=True))):
            raise ValueError(f"input {self.input_name!r} must have shape {shape}, got {list(x.shape)}")
        values: dict[str, np.ndarray] = dict(self.constants)
        values[self.input_name] = x
        for kernel, ins, outs in self._plan:
            args = [values[name] if name else None for name in ins]
            while args and args[-1] is None:  # trailing omitted optional inputs
                args.pop()
            values[outs[0]] = np.asarray(kernel(*args))
        out = values[self.output_name]
        return np.array(out, copy=True) if not out.flags.owndata or not out.flags.writeable else out

    __call__ = run


def main(argv: Sequence[str] | None = None) -> int:
    """``riscv.py MODEL.onnx INPUT.npy OUTPUT.npy [--int8]``: run the model on the rows, save the output."""
    parser = argparse.ArgumentParser(prog="riscv.py", description=__doc__.splitlines()[0])
    parser.add_argument("model", help="ONNX model file")
    parser.add_argument("input", help=".npy file of float32 rows [batch, width]")
    parser.add_argument("output", help=".npy file to write the output to")
    parser.add_argument("--int8", action="store_true", help="int8 Gemm/MatMul (weights per output channel)")
    parser.add_argument("--activations", choices=("row", "tensor"), default="row",
                        help="int8 activation scale: one per row (default) or one per batch tensor (as onnxruntime)")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        start = time.perf_counter()
        model = RiscvModel.from_path(args.model, int8=args.int8, activations=args.activations)
        x = np.load(args.input, allow_pickle=False)
        loaded = time.perf_counter()
        y = model.run(x)
        done = time.perf_counter()
        np.save(args.output, y, allow_pickle=False)
    except (OSError, ValueError, IndexError) as exc:
        print(f"riscv.py: error: {exc}", file=sys.stderr)
        return 2
    mode = f"int8 ({args.activations} activations)" if args.int8 else "float32"
    print(f"riscv.py: {model.metadata.get('task', '?')} {mode} "
          f"{len(x)} rows -> {args.output} (load {loaded - start:.2f} s, run {done - loaded:.2f} s, "
          f"numpy {np.__version__}, python {sys.version.split()[0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
