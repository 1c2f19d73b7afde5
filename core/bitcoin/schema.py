"""Feature columns and schemas: units, valid and typical ranges, validation and normalization.

``core.bitcoin.features`` builds the transaction and mempool schemas from these; the telemetry schema
(``core.bitcoin.network.telemetry_schema``) too.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.errors import FeatureError

NORM_CLIP = 6.0  # normalized features are clipped to +-6 typical half-widths (here and in the models)


@dataclass(frozen=True)
class Column:
    """One feature column: name, unit, meaning, valid and typical range, transform."""

    name: str
    unit: str
    description: str
    valid: tuple[float, float]
    typical: tuple[float, float]
    log_offset: float | None = None  # normalize log(x + offset) when set, else x


@dataclass(frozen=True)
class Schema:
    """An ordered set of columns with validation and schema-derived normalization."""

    name: str
    columns: tuple[Column, ...]

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def width(self) -> int:
        return len(self.columns)

    def index(self, name: str) -> int:
        return self.names.index(name)

    @functools.cached_property
    def _valid_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        # computed once per schema and kept on the instance: functools.cache would hash the whole frozen
        # dataclass (every column) at each call, about 10 us per request
        return (np.array([c.valid[0] for c in self.columns], dtype=np.float64),
                np.array([c.valid[1] for c in self.columns], dtype=np.float64))

    @functools.cached_property
    def _valid_bounds32(self) -> tuple[np.ndarray, np.ndarray]:
        return self._valid_bounds[0].astype(np.float32), self._valid_bounds[1].astype(np.float32)

    def valid_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(lo, hi) of every column's valid range, as float64 arrays (shared: do not modify)."""
        return self._valid_bounds

    def validate(self, rows: np.ndarray, what: str = "rows") -> np.ndarray:
        """Return ``rows`` as float32 (n, width); raise FeatureError naming the first bad cell.

        This is the one input rule: a value outside its column's valid range (or not finite) is refused.
        float64 rows are checked before narrowing, so 1e39 is named as out of range rather than as an
        overflow of float32; other rows are checked as float32.
        """
        arr = np.asarray(rows)
        if arr.dtype != np.float64:
            arr = arr.astype(np.float32, copy=False)
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.ndim != 2 or arr.shape[1] != self.width:
            raise FeatureError(what, f"expected shape (n, {self.width}) for {self.name}, got {tuple(arr.shape)}")
        lo, hi = self._valid_bounds if arr.dtype == np.float64 else self._valid_bounds32
        ok = (arr >= lo) & (arr <= hi)  # False for NaN and +-inf as well: every bound is finite
        if not ok.all():
            finite = np.isfinite(arr)
            r, c = (int(v[0]) for v in np.nonzero(~ok))
            col = self.columns[c]
            val = float(arr[r, c])
            why = "is not a finite number" if not finite[r, c] else f"{val:g} is outside the valid range [{col.valid[0]:g}, {col.valid[1]:g}] {col.unit}"
            raise FeatureError(f"{what}[{r}].{col.name}", why)
        return arr.astype(np.float32, copy=False)

    @functools.cached_property
    def _normalization(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        mask = np.array([c.log_offset is not None for c in self.columns])
        offset = np.array([c.log_offset or 0.0 for c in self.columns], dtype=np.float64)

        def t(v: float, c: Column) -> float:
            return math.log(v + c.log_offset) if c.log_offset is not None else v

        lo = np.array([t(c.typical[0], c) for c in self.columns])
        hi = np.array([t(c.typical[1], c) for c in self.columns])
        loc = (lo + hi) / 2.0
        scale = np.maximum((hi - lo) / 2.0, 1e-6)
        return mask, offset.astype(np.float32), loc.astype(np.float32), scale.astype(np.float32)

    def normalization(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(log_mask, log_offset, loc, scale) so that z = (t(x) - loc) / scale maps typical to [-1, 1].

        The arrays are shared (computed once per schema): copy before modifying.
        """
        return self._normalization

    def normalize(self, rows: np.ndarray, clip: float = NORM_CLIP) -> np.ndarray:
        """NumPy twin of the models' Normalizer: clipped z-scores from the typical ranges."""
        mask, offset, loc, scale = self.normalization()
        x = np.asarray(rows, dtype=np.float64)
        t = np.where(mask, np.log(np.maximum(x + offset, 1e-12)), x)
        return np.clip((t - loc) / scale, -clip, clip).astype(np.float32)

    def out_of_distribution(self, rows: np.ndarray, clip: float = NORM_CLIP, limit: int = 3) -> list[list[str]]:
        """Per row of *valid* rows (see :meth:`validate`), why it lies outside what the models were built for.

        A value so far outside its column's typical range that the models' normalizer clips it (|z| >
        ``clip``, so the model cannot tell it from the clip value) is named, at most ``limit`` per row; an
        empty list means in distribution. Values outside the valid range are refused by :meth:`validate`,
        never flagged here.
        """
        mask, offset, loc, scale = self.normalization()
        x = np.asarray(rows, dtype=np.float64)
        t = np.where(mask, np.log(np.maximum(x + offset, 1e-12)), x)
        clipped = np.abs((t - loc) / scale) > clip
        out: list[list[str]] = [[] for _ in range(len(x))]
        for r, c in zip(*np.nonzero(clipped), strict=True):
            if len(out[r]) < limit:
                col = self.columns[c]
                out[r].append(f"{col.name} {x[r, c]:g} far outside the typical range {col.typical[0]:g}.."
                              f"{col.typical[1]:g} {col.unit}")
        return out

    def describe(self) -> list[dict[str, Any]]:
        return [
            {"name": c.name, "unit": c.unit, "description": c.description, "valid": list(c.valid), "typical": list(c.typical)}
            for c in self.columns
        ]
