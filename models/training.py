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
import functools
import math
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from opacus.accountants import IAccountant, create_accountant
from opacus.grad_sample import GradSampleModule
from opacus.optimizers import DPOptimizer
from opacus.validators import ModuleValidator
from torch import Tensor

from core.errors import AnyaError, ConfigError

ACCOUNTANTS = ("prv", "rdp", "gdp")
_SIGMA_MIN = 0.3  # below this PRV gets very slow (minutes) and the privacy is meaningless anyway
_SIGMA_MAX = 1e6  # as opacus.accountants.utils.MAX_SIGMA
_EPS_REL_TOL = 0.005  # target_epsilon search stops once epsilon is within 0.5 % below the target


class BudgetExhausted(AnyaError):
    """The privacy budget (target_epsilon) is already spent by the resumed accountant history."""

    def __init__(self, target_epsilon: float, spent_epsilon: float, detail: str = "") -> None:
        self.target_epsilon = target_epsilon
        self.spent_epsilon = spent_epsilon
        msg = f"target_epsilon: budget {target_epsilon:g} exhausted, epsilon already spent {spent_epsilon:.4g}"
        super().__init__(msg + (f" ({detail})" if detail else ""))


@dataclass
class DPConfig:
    """Differential privacy settings; set exactly one of target_epsilon / noise_multiplier."""

    target_epsilon: float | None = None  # cumulative budget including any resumed history
    noise_multiplier: float | None = None
    max_grad_norm: float = 1.0
    delta: float = 1e-5
    accountant: str = "prv"  # "prv" | "rdp" | "gdp" (Opacus accountants)


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


History = list[tuple[float, float, int]]


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


# ------------------------------------------------------------------------------------- accounting


def _load_history(state: dict | None, accountant: str) -> History:
    """Parse an accountant_state dict (as returned in TrainResult) into an Opacus history list."""
    if state is None:
        return []
    if not isinstance(state, dict) or "history" not in state or "mechanism" not in state:
        raise ConfigError("accountant_state", "expected a dict with 'mechanism' and 'history' from a TrainResult")
    if state["mechanism"] != accountant:
        raise ConfigError(
            "accountant_state",
            f"recorded by the {state['mechanism']!r} accountant, cannot resume with accountant {accountant!r}",
        )
    history: History = []
    try:
        for sigma, q, steps in state["history"]:
            history.append((float(sigma), float(q), int(steps)))
    except (TypeError, ValueError) as exc:
        raise ConfigError("accountant_state", f"malformed history: {exc}") from exc
    if any(not (s > 0 and 0 < q <= 1 and k >= 1) for s, q, k in history):
        raise ConfigError("accountant_state", "history entries must be (noise_multiplier > 0, 0 < q <= 1, steps >= 1)")
    if accountant == "gdp" and len(history) > 1:
        raise ConfigError("accountant_state", "a gdp history holds a single (noise_multiplier, q, steps) entry")
    return history


def epsilon_spent(accountant_state: dict | None, delta: float) -> float:
    """Epsilon already spent according to a saved accountant state (0 for none)."""
    if accountant_state is None:
        return 0.0
    mechanism = str(accountant_state.get("mechanism", ""))
    return _epsilon(mechanism, _load_history(accountant_state, mechanism), delta)


def _dump_history(history: History, accountant: str) -> dict[str, Any]:
    """JSON-serializable accountant state; same keys as Opacus' IAccountant.state_dict()."""
    return {"mechanism": accountant, "history": [[float(s), float(q), int(k)] for s, q, k in history]}


def _extend(history: History, sigma: float, q: float, steps: int) -> History:
    """History after `steps` more steps at (sigma, q), merged the way Opacus accountants merge."""
    if history and history[-1][0] == sigma and history[-1][1] == q:
        return [*history[:-1], (sigma, q, history[-1][2] + steps)]
    return [*history, (sigma, q, steps)]


RDP_ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))  # = RDPAccountant.DEFAULT_ALPHAS


def _epsilon(accountant: str, history: History, delta: float) -> float:
    """Epsilon of `history` at `delta` from a fresh Opacus accountant (0 for an empty history)."""
    return _epsilon_cached(accountant, tuple(history), delta) if history else 0.0


@functools.lru_cache(maxsize=1024)
def _rdp_curve(sigma: float, q: float, steps: int) -> np.ndarray:
    """RDP of one history entry at Opacus' default orders (what RDPAccountant sums over its history)."""
    from opacus.accountants.analysis import rdp as rdp_analysis

    return np.asarray(rdp_analysis.compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=RDP_ORDERS))


@functools.lru_cache(maxsize=256)
def _epsilon_cached(accountant: str, history: tuple[tuple[float, float, int], ...], delta: float) -> float:
    """Memoized: the sigma search and the final report often ask for the same history (PRV costs ~0.1-1 s).

    RDP is computed exactly as Opacus' RDPAccountant does (sum of per-entry RDP curves, then the
    conversion to (epsilon, delta)), with each entry's curve cached: a federated node's history grows
    by one entry per round and the sigma search re-evaluates only the new entry.
    """
    if accountant == "rdp":
        from opacus.accountants.analysis import rdp as rdp_analysis

        total = sum(_rdp_curve(s, q, k) for s, q, k in history)
        eps, _ = rdp_analysis.get_privacy_spent(orders=RDP_ORDERS, rdp=total, delta=delta)
        return float(eps)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # gdp "experimental", RDP alpha-range and PRV overflow warnings
        acc = create_accountant(accountant)
        acc.history = list(history)
        return float(acc.get_epsilon(delta=delta))


def _solve_sigma(f: Callable[[float], float], target: float, start: float) -> tuple[float, float]:
    """Smallest-ish sigma with f(sigma) <= target, f(sigma) >= (1 - tol) * target where reachable.

    f is epsilon as a decreasing function of sigma. Brackets from `start`, then interpolates in
    log-log space (safeguarded false position), which converges in a handful of accountant calls.
    """
    hi = max(min(start, _SIGMA_MAX), _SIGMA_MIN)
    f_hi = f(hi)
    while f_hi > target:
        f_prev = f_hi
        hi = min(hi * 2.0, _SIGMA_MAX)
        f_hi = f(hi)
        # more noise no longer helps (a resumed history's own epsilon, or the accountant's resolution)
        if f_hi > target and (hi >= _SIGMA_MAX or f_hi > 0.999 * f_prev):
            raise ConfigError("target_epsilon", f"{target:g} is too small to reach with any noise multiplier")
    if f_hi >= (1.0 - _EPS_REL_TOL) * target:
        return hi, f_hi
    lo, f_lo = hi, f_hi
    while f_lo <= target:
        if lo <= _SIGMA_MIN:
            return lo, f_lo  # even the least noise we allow stays under the target
        hi, f_hi = lo, f_lo
        lo = max(lo / 1.25, _SIGMA_MIN)
        f_lo = f(lo)
    # invariant: lo < hi, f(lo) > target >= f(hi)
    for _ in range(60):
        if f_hi >= (1.0 - _EPS_REL_TOL) * target or hi / lo - 1.0 < 1e-9:
            break
        t = 0.5
        if math.isfinite(f_lo) and f_lo > 0 and f_hi > 0:
            a, b = math.log(f_lo / target), math.log(f_hi / target)
            t = min(max(a / (a - b), 0.05), 0.95)
        mid = math.exp(math.log(lo) + t * (math.log(hi) - math.log(lo)))
        f_mid = f(mid)
        if f_mid > target:
            lo, f_lo = mid, f_mid
        else:
            hi, f_hi = mid, f_mid
    return hi, f_hi


def _choose_sigma(dp: DPConfig, history: History, q: float, steps: int) -> float:
    """Noise multiplier for this run: given directly, or solved so the cumulative epsilon meets the target."""
    if dp.accountant == "gdp" and history and dp.noise_multiplier is None:
        sigma = history[-1][0]  # gdp cannot compose different noise levels: keep the recorded one
    elif dp.noise_multiplier is not None:
        sigma = float(dp.noise_multiplier)
    else:
        sigma = None
    if dp.accountant == "gdp" and history and (history[-1][0] != sigma or history[-1][1] != q):
        raise ConfigError(
            "accountant",
            f"gdp needs a constant noise multiplier and sample rate across resumed runs "
            f"(recorded {history[-1][0]:g}, {history[-1][1]:g}; now {sigma}, {q:g}); use prv or rdp",
        )
    if dp.target_epsilon is None:
        assert sigma is not None
        return sigma
    target = float(dp.target_epsilon)
    spent = _epsilon(dp.accountant, history, dp.delta)
    if spent >= (1.0 - _EPS_REL_TOL) * target:  # a run that aimed at this target stops within the tolerance
        raise BudgetExhausted(target, spent)
    if sigma is not None:  # gdp resume: noise is fixed, only check that this run fits
        after = _epsilon(dp.accountant, _extend(history, sigma, q, steps), dp.delta)
        if after > target:
            raise BudgetExhausted(target, spent, f"{steps} more steps would reach {after:.4g}")
        return sigma

    def f(s: float) -> float:
        return _epsilon(dp.accountant, _extend(history, s, q, steps), dp.delta)

    start = 1.0
    if dp.accountant == "prv":
        # RDP's epsilon is a looser bound than PRV's and ~20x cheaper: its sigma starts the PRV search
        # close to (just above) the answer. Only a hint: RDP may rate a resumed history above the target.
        if _epsilon("rdp", history, dp.delta) < target:
            try:
                start, _ = _solve_sigma(lambda s: _epsilon("rdp", _extend(history, s, q, steps), dp.delta), target, 1.0)
            except ConfigError:
                start = 1.0
    try:
        sigma, _ = _solve_sigma(f, target, start)
    except ConfigError:
        if history:  # what is left after the resumed history is below the accountant's resolution
            raise BudgetExhausted(target, spent, "the rest cannot be spent at any noise level") from None
        raise
    return sigma


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
    history = _load_history(accountant_state, dp.accountant) if dp is not None else []
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
    sigma = _choose_sigma(dp, history, q, steps) if dp is not None else None

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
    new_history: History = [(float(s), float(r), int(k)) for s, r, k in acc.history]
    epsilon = _epsilon(dp.accountant, new_history, dp.delta)
    return TrainResult(
        steps=steps,
        epochs=config.epochs,
        train_loss=last_loss,
        seconds=time.perf_counter() - t0,
        epsilon=epsilon,
        delta=dp.delta,
        accountant=dp.accountant,
        noise_multiplier=sigma,
        sample_rate=q,
        accountant_state=_dump_history(new_history, dp.accountant),
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
