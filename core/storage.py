"""Atomic file writes: temp file in the same directory, fsync, rename, fsync the directory.

Every piece of state anya-fl keeps on disk goes through here, so a crash leaves either the old file
or the new one, never a torn one.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, mode: int = 0o644) -> Path:
    """Write ``data`` to ``path`` atomically and durably, with permission bits ``mode``."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            os.fchmod(fh.fileno(), mode)  # mkstemp creates 0600; set the final mode before the file appears
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return target


def remove_stale_temp_files(path: str | os.PathLike[str]) -> int:
    """Delete temp files a killed :func:`atomic_write_bytes` left beside ``path``; returns how many."""
    target = Path(path)
    n = 0
    for tmp in target.parent.glob(f".{target.name}.*.tmp"):
        try:
            tmp.unlink()
            n += 1
        except FileNotFoundError:
            pass
    return n


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically."""
    return atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n").encode())


def atomic_write_npz(path: str | os.PathLike[str], arrays: dict[str, np.ndarray]) -> Path:
    """Write named arrays as a compressed .npz atomically."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return atomic_write_bytes(path, buf.getvalue())


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot serialize {type(obj).__name__} to JSON")
