"""The one training loop for every task: plain Adam or Opacus DP-SGD, with resumable privacy accounting.

DP-SGD is built from Opacus parts (``GradSampleModule``, ``DPOptimizer`` and an accountant from
``opacus.accountants``) wired exactly as ``PrivacyEngine.make_private`` wires them, with three differences
that make the loop exact, reproducible and fast:

- Poisson sampling is done here (each row joins a step independently with probability
  ``q = batch_size / n``, the distribution of Opacus' ``UniformWithReplacementSampler``) from a seeded
  generator; ``make_private`` would use ``q = 1 / ceil(n / batch_size)`` and the global RNG, and collate
  row by row.
- An empty Poisson batch still takes a noise-only optimizer step (Opacus supports zero-row per-sample
  gradients), so the accountant counts every step of the mechanism it analyses.
- Training runs on a deep copy of the caller's model; the trained weights are loaded back, so the
  caller's module never carries Opacus hooks, ``grad_sample`` attributes or ``_module.`` keys.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from opacus.accountants import IAccountant, create_accountant
from opacus.grad_sample import GradSampleModule
from opacus.optimizers import DPOptimizer
from opacus.validators import ModuleValidator
from torch import Tensor

from core.errors import ConfigError
from models.privacy import accounting
from models.privacy.accounting import ACCOUNTANTS, DEFAULT_ACCOUNTANT, epsilon_spent
from models.privacy.budget import BudgetExhausted, choose_sigma

__all__ = ["BudgetExhausted", "DPConfig", "TrainConfig", "TrainResult", "epsilon_spent", "predict", "resolve_device",
           "single_torch_thread", "train"]


@dataclass
class DPConfig:
    """Differential privacy settings; set exactly one of target_epsilon / noise_multiplier."""

    target_epsilon: float | None = None  # cumulative budget including any resumed history
    noise_multiplier: float | None = None
    max_grad_norm: float = 1.0
    delta: float = 1e-5
    accountant: str = DEFAULT_ACCOUNTANT  # "rdp" | "prv" | "gdp" (Opacus accountants)


@dataclass
class TrainConfig:
    """Training settings shared by all tasks."""

    epochs: int = 5
    batch_size: int = 256  # expected batch size; DP sample_rate = batch_size / n
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0
    device: str = "auto"  # "auto" (cuda if available else cpu) | "cpu" | "cuda"
    dp: DPConfig | None = None
    proximal_mu: float = 0.0  # FedProx: after each step pull weights toward the starting (global) weights


@dataclass
class TrainResult:
    """What one train() call did; privacy fields are None without DP."""

    steps: int
    epochs: int
    train_loss: float
    seconds: float
    epsilon: float | None
    delta: float | None
    accountant: str | None
    noise_multiplier: float | None
    sample_rate: float | None
    accountant_state: dict | None  # JSON-serializable; pass back in to resume accounting


# ----------------------------------------------------------------------------------------- device


def resolve_device(name: str) -> torch.device:
    """Map "auto" | "cpu" | "cuda" | "cuda:N" to a torch.device; ConfigError if CUDA is asked for but absent."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError("device", f"{name!r} requested but CUDA is not available")
        try:
            dev = torch.device(name)
        except RuntimeError as exc:
            raise ConfigError("device", f"invalid device {name!r}") from exc
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError("device", f"{name!r} requested but only {torch.cuda.device_count()} GPU(s) exist")
        return dev
    raise ConfigError("device", f"expected 'auto', 'cpu' or 'cuda', got {name!r}")


# ------------------------------------------------------------------------------------- validation


def _as_arrays(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Check shapes and finiteness; return float32 copies-or-views of x and y."""
    x = np.require(x, dtype=np.float32, requirements=["C", "W"])
    y = np.require(y, dtype=np.float32, requirements=["C", "W"])
    if x.ndim != 2:
        raise ConfigError("x", f"expected a 2-D array (rows, features), got shape {x.shape}")
    if x.shape[0] == 0:
        raise ConfigError("x", "no rows to train on")
    if y.ndim not in (1, 2) or y.shape[0] != x.shape[0]:
        raise ConfigError("y", f"expected {x.shape[0]} rows like x (shape {x.shape}), got shape {y.shape}")
    if not np.isfinite(x).all():
        raise ConfigError("x", "contains NaN or infinite values")
    if not np.isfinite(y).all():
        raise ConfigError("y", "contains NaN or infinite values")
    return x, y


def _validate_config(config: TrainConfig) -> None:
    """Raise ConfigError naming the first invalid setting."""
    if config.epochs < 1:
        raise ConfigError("epochs", f"must be >= 1, got {config.epochs}")
    if config.batch_size < 1:
        raise ConfigError("batch_size", f"must be >= 1, got {config.batch_size}")
    if not config.lr > 0 or not math.isfinite(config.lr):
        raise ConfigError("lr", f"must be > 0, got {config.lr}")
    if not config.weight_decay >= 0:
        raise ConfigError("weight_decay", f"must be >= 0, got {config.weight_decay}")
    if not config.proximal_mu >= 0 or not math.isfinite(config.proximal_mu):
        raise ConfigError("proximal_mu", f"must be >= 0, got {config.proximal_mu}")
    dp = config.dp
    if dp is None:
        return
    if dp.accountant not in ACCOUNTANTS:
        raise ConfigError("accountant", f"expected one of {', '.join(ACCOUNTANTS)}, got {dp.accountant!r}")
    if not 0.0 < dp.delta < 1.0:
        raise ConfigError("delta", f"must be in (0, 1), got {dp.delta}")
    if not dp.max_grad_norm > 0 or not math.isfinite(dp.max_grad_norm):
        raise ConfigError("max_grad_norm", f"must be > 0, got {dp.max_grad_norm}")
    if (dp.target_epsilon is None) == (dp.noise_multiplier is None):
        raise ConfigError("target_epsilon", "set exactly one of target_epsilon and noise_multiplier")
    if dp.target_epsilon is not None and (not dp.target_epsilon > 0 or not math.isfinite(dp.target_epsilon)):
        raise ConfigError("target_epsilon", f"must be > 0, got {dp.target_epsilon}")
    if dp.noise_multiplier is not None and (not dp.noise_multiplier > 0 or not math.isfinite(dp.noise_multiplier)):
        raise ConfigError("noise_multiplier", f"must be > 0, got {dp.noise_multiplier}")


# --------------------------------------------------------------------------------------- training


def _seeds(seed: int) -> tuple[int, int, int]:
    """Three independent 63-bit seeds (torch global, batch sampling, DP noise) derived from one seed."""
    a, b, c = np.random.SeedSequence(seed).generate_state(3, dtype=np.uint64)
    mask = (1 << 63) - 1
    return int(a) & mask, int(b) & mask, int(c) & mask


def _poisson_batch(rng: np.random.Generator, n: int, q: float) -> Tensor:
    """Row indices of one Poisson-sampled batch: every row joins independently with probability q.

    Drawn as a Binomial(n, q) size and then a uniform subset of that size, which has exactly the
    distribution of n independent Bernoulli(q) draws but costs O(batch) instead of O(n) per step.
    """
    k = int(rng.binomial(n, q))
    return torch.from_numpy(rng.choice(n, size=k, replace=False).astype(np.int64))


def _match(out: Tensor, yb: Tensor) -> Tensor:
    """Let a (b, 1) model head meet a (b,) target instead of broadcasting to (b, b)."""
    if out.ndim == 2 and out.shape[1] == 1 and yb.ndim == 1:
        return out.squeeze(1)
    return out


def train(
    model: torch.nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    x: np.ndarray,
    y: np.ndarray,
    config: TrainConfig,
    accountant_state: dict | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Train `model` in place with Adam (optionally DP-SGD via Opacus); return loss, steps and privacy spent.

    `loss_fn(output, target)` must reduce by mean. y is (n,) or (n, d); a (n, 1) output is squeezed to
    match a (n,) target. `accountant_state` from a previous TrainResult makes epsilon cumulative.
    `on_epoch(epoch, mean_loss)` is called after each epoch (epoch counts from 1). The model ends on the
    CPU in eval mode, with plain state_dict keys and no Opacus hooks or attributes.
    """
    t0 = time.perf_counter()
    _validate_config(config)
    x, y = _as_arrays(x, y)
    dp = config.dp
    if dp is None and accountant_state is not None:
        raise ConfigError("accountant_state", "given without DP: a non-private run would void the recorded budget")
    history = accounting.load_history(accountant_state, dp.accountant) if dp is not None else []
    device = resolve_device(config.device)
    n = x.shape[0]

    q = min(1.0, config.batch_size / n)
    steps_per_epoch = max(1, round(1.0 / q)) if dp is not None else math.ceil(n / config.batch_size)
    steps = steps_per_epoch * config.epochs

    work = copy.deepcopy(model).train()  # trained here, loaded back into `model` at the end
    params = [p for p in work.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("model", "has no trainable parameters")
    if dp is not None:
        errors = ModuleValidator.validate(work, strict=False)
        if errors:
            raise ConfigError("model", f"not trainable with Opacus DP-SGD: {errors[0]}")
    sigma = choose_sigma(dp, history, q, steps) if dp is not None else None

    s_torch, s_sample, s_noise = _seeds(config.seed)
    fork_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices), warnings.catch_warnings():
        # seed dropout etc. without touching the caller's RNG; Opacus' full backward hooks always
        # trigger torch's "no inputs require gradients" warning, which says nothing about our data
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        torch.manual_seed(s_torch)
        work.to(device)
        params = [p for p in work.parameters() if p.requires_grad]
        optimizer: torch.optim.Optimizer = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
        xt = torch.from_numpy(x).to(device)
        yt = torch.from_numpy(y).to(device)
        sampler = np.random.default_rng(s_sample)

        net: torch.nn.Module = work
        acc: IAccountant | None = None
        if dp is not None:
            assert sigma is not None
            net = GradSampleModule(work, batch_first=True, loss_reduction="mean", strict=True)
            optimizer = DPOptimizer(
                optimizer,
                noise_multiplier=sigma,
                max_grad_norm=dp.max_grad_norm,
                expected_batch_size=max(1, round(q * n)),
                loss_reduction="mean",
                generator=torch.Generator(device=device).manual_seed(s_noise),
                secure_mode=False,
            )
            acc = create_accountant(dp.accountant)
            acc.history = list(history)
            optimizer.attach_step_hook(acc.get_optimizer_hook_fn(sample_rate=q))

        anchor = [p.detach().clone() for p in params] if config.proximal_mu > 0 else None

        def proximal_step() -> None:
            # FedProx's proximal term as a proximal update: it depends only on the global weights (no
            # data), so it sits outside the DP mechanism and costs no privacy.
            if anchor is not None:
                with torch.no_grad():
                    for p, a in zip(params, anchor, strict=True):
                        p.add_(p - a, alpha=-config.lr * config.proximal_mu)

        last_loss = float("nan")
        for epoch in range(1, config.epochs + 1):
            loss_sum = torch.zeros((), device=device)
            n_batches = 0
            if dp is None:
                order = torch.from_numpy(sampler.permutation(n)).to(device)
                batches = (order[i : i + config.batch_size] for i in range(0, n, config.batch_size))
            else:
                batches = (_poisson_batch(sampler, n, q).to(device) for _ in range(steps_per_epoch))
            for idx in batches:
                optimizer.zero_grad(set_to_none=True)
                if idx.numel() == 0:
                    # Empty Poisson batch: a noise-only DP step (clipped sum is zero) that the accountant counts.
                    for p in params:
                        p.grad_sample = torch.zeros((0, *p.shape), device=p.device, dtype=p.dtype)
                    optimizer.step()
                    proximal_step()
                    continue
                xb, yb = xt[idx], yt[idx]
                loss = loss_fn(_match(net(xb), yb), yb)
                loss.backward()
                optimizer.step()
                proximal_step()
                loss_sum += loss.detach()
                n_batches += 1
            last_loss = float(loss_sum) / n_batches if n_batches else float("nan")
            if on_epoch is not None:
                on_epoch(epoch, last_loss)
        optimizer.zero_grad(set_to_none=True)

    trained = {k: v.detach().to("cpu") for k, v in work.state_dict().items()}
    del net, optimizer, work
    model.to("cpu")
    model.load_state_dict(trained)
    model.eval()

    if dp is None or acc is None:
        return TrainResult(
            steps, config.epochs, last_loss, time.perf_counter() - t0, None, None, None, None, None, None
        )
    new_history: accounting.History = [(float(s), float(r), int(k)) for s, r, k in acc.history]
    spent = accounting.epsilon(dp.accountant, new_history, dp.delta)
    return TrainResult(
        steps=steps,
        epochs=config.epochs,
        train_loss=last_loss,
        seconds=time.perf_counter() - t0,
        epsilon=spent,
        delta=dp.delta,
        accountant=dp.accountant,
        noise_multiplier=sigma,
        sample_rate=q,
        accountant_state=accounting.dump_history(new_history, dp.accountant),
    )


@torch.no_grad()
def predict(model: torch.nn.Module, x: np.ndarray, batch_size: int = 8192, device: str = "auto") -> np.ndarray:
    """Model outputs for x as float32 NumPy, in batches, in eval mode; a (n, 1) output comes back as (n,).

    The model's device and train/eval mode are restored afterwards.
    """
    if batch_size < 1:
        raise ConfigError("batch_size", f"must be >= 1, got {batch_size}")
    x = np.require(x, dtype=np.float32, requirements=["C", "W"])
    if x.ndim != 2:
        raise ConfigError("x", f"expected a 2-D array (rows, features), got shape {x.shape}")
    dev = resolve_device(device)
    first = next(model.parameters(), None)
    home = first.device if first is not None else torch.device("cpu")
    was_training = model.training
    model.to(dev).eval()
    try:
        xt = torch.from_numpy(x)
        chunks = [model(xt[i : i + batch_size].to(dev)).float().cpu() for i in range(0, max(len(x), 1), batch_size)]
        out = torch.cat(chunks)
    finally:
        model.to(home).train(was_training)
    if out.ndim == 2 and out.shape[1] == 1:
        out = out.squeeze(1)
    return out.numpy()


@contextlib.contextmanager
def single_torch_thread() -> Iterator[None]:
    """Run torch on one CPU thread, then restore the previous setting.

    These MLPs are far too small to gain from intra-op threads: on a 2-core machine shared with other
    work, two threads made a training step 100x slower than one (126 ms vs 0.9 ms measured). One thread
    also makes timings independent of the machine's core count.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
