"""Models as one flat, task-prefixed dict ("fraud.body.0.weight", ...).

``pack``/``unpack_into`` carry only trainable parameters: what travels between nodes and the server.
Buffers (the schema normalizer, the fee calibration) are rebuilt locally or set by the coordinator, so
nodes never send anything derived from their data but weights. ``full_state``/``load_full_state``
carry parameters and buffers: what the coordinator checkpoints.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from torch import nn

from core.errors import ConfigError


def pack(models: dict[str, nn.Module]) -> OrderedDict[str, torch.Tensor]:
    """{"fraud.body.0.weight": tensor, ...} for every task's trainable parameters."""
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for task, model in models.items():
        for name, p in model.named_parameters():
            out[f"{task}.{name}"] = p.detach().cpu().clone()
    return out


def unpack_into(models: dict[str, nn.Module], params: dict[str, torch.Tensor | np.ndarray]) -> None:
    """Load packed parameters into the models; refuse missing keys, extra keys and wrong shapes."""
    expected = {f"{t}.{n}": p for t, m in models.items() for n, p in m.named_parameters()}
    missing = sorted(set(expected) - set(params))
    extra = sorted(set(params) - set(expected))
    if missing or extra:
        raise ConfigError("arrays", f"parameter keys differ: missing {missing[:3]}, unexpected {extra[:3]}")
    with torch.no_grad():
        for key, target in expected.items():
            value = torch.as_tensor(np.asarray(params[key]), dtype=target.dtype)
            if tuple(value.shape) != tuple(target.shape):
                raise ConfigError(f"arrays.{key}", f"shape {tuple(value.shape)}, expected {tuple(target.shape)}")
            if not torch.isfinite(value).all():
                raise ConfigError(f"arrays.{key}", "contains NaN or infinite values")
            target.copy_(value)


def full_state(models: dict[str, nn.Module]) -> dict[str, np.ndarray]:
    """Every task's full state dict (parameters and buffers) as task-prefixed NumPy arrays."""
    return {f"{t}.{k}": v.detach().cpu().numpy() for t, m in models.items() for k, v in m.state_dict().items()}


def load_full_state(models: dict[str, nn.Module], state: dict[str, np.ndarray]) -> None:
    """Load what :func:`full_state` produced (strict: every key of every model must be present)."""
    for task, model in models.items():
        prefix = f"{task}."
        model.load_state_dict({k[len(prefix):]: torch.from_numpy(np.array(v)) for k, v in state.items()
                               if k.startswith(prefix)})
