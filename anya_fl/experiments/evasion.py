"""Evasion: valid-feature adversarial inputs that flip the fraud model's decision (a robustness check, not a
privacy attack).

``adversarial_examples`` / ``adversarial_flip_rate`` perturb raw fraud feature rows with FGSM or PGD
(L-infinity) toward the other side of the model's decision threshold, within a budget that keeps every
row valid:

- each continuous column moves by at most ``eps_frac`` times the width of its schema *typical* range,
  measured by default (``space="schema"``) after the schema's normalization transform - log(x + offset)
  for the log columns (sizes, fee rate, BTC amounts, input age), x for the others - so every column may
  move by the same 2 * eps_frac normalized units, and a log column by a bounded *factor*; with
  ``space="raw"`` the width is in raw units (then 2 % of the 10 BTC typical width of an output amount
  is 0.2 BTC, a 20x change of a 0.01 BTC payment, and most decisions flip: see the README);
- the result is clipped to the column's *valid* range;
- counts and flags (``HELD_FIXED``: n_inputs, n_outputs, dust_output_count, rbf_signaling,
  has_locktime, input_age_known) are held fixed, so they stay integral without rounding; the share
  columns (``frac_*``, ``round_output_frac``, ``equal_output_frac``) are treated as continuous in [0, 1];
- cross-column consistency (weight = 4 vsize, min <= max <= total output) is not enforced: the
  schema's check is per column, and that is the check every perturbed row passes (asserted).

Rows flagged illicit (``p >= threshold``) are pushed toward licit (evasion) and the others toward
illicit; PGD starts at the row itself (no random start) and keeps, per row, the iterate that went
furthest toward the other side.

``run_adversarial_check`` trains the standard fraud recipe (``models.tasks`` TASK_SPECS) non-private and
with DP on a normal-size chain and reports flip rates at the validation best-F1 threshold.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from anya_fl.experiments.fraud_rows import DP_DELTA, DP_MAX_GRAD_NORM, fraud_splits
from core import scoring
from core.bitcoin.features import TASK_SCHEMAS
from core.data.datasets import TaskSplits
from core.errors import ConfigError
from models.privacy.accounting import REPORT_ACCOUNTANT
from models.tasks import FraudNet, build_model, infer, task_spec
from models.training import DPConfig, TrainConfig, TrainResult, single_torch_thread, train

SCHEMA = TASK_SCHEMAS["fraud"]
HELD_FIXED = ("n_inputs", "n_outputs", "dust_output_count", "rbf_signaling", "has_locktime", "input_age_known")
METHODS = ("fgsm", "pgd")
BUDGET_SPACES = ("schema", "raw")


def _transform(x: np.ndarray, space: str) -> np.ndarray:
    """Rows in the budget's space, float64: raw, or the schema's normalization transform (log(x + offset)
    for log columns, x otherwise; the same map the models' Normalizer applies before scaling)."""
    xd = np.asarray(x, dtype=np.float64)
    if space == "raw":
        return xd
    return np.where(_LOG_MASK, np.log(np.maximum(xd + _LOG_OFFSET, 1e-12)), xd)


def _untransform(t: np.ndarray, space: str) -> np.ndarray:
    return t if space == "raw" else np.where(_LOG_MASK, np.exp(t) - _LOG_OFFSET, t)


_LOG_MASK = np.array([c.log_offset is not None for c in SCHEMA.columns])
_LOG_OFFSET = np.array([c.log_offset or 0.0 for c in SCHEMA.columns], dtype=np.float64)


def attack_budget(eps_frac: float, space: str = "schema") -> np.ndarray:
    """Per-column L-infinity budget: eps_frac times the width of the column's typical range in ``space``.

    ``space="schema"`` (default) measures the width after the schema's normalization transform, so every
    column may move by the same 2 * eps_frac normalized units (for a log column: a factor of at most
    exp(budget) on x + offset); ``space="raw"`` measures it in raw units. HELD_FIXED columns get 0.
    """
    if space not in BUDGET_SPACES:
        raise ConfigError("space", f"unknown budget space {space!r}; choose one of {', '.join(BUDGET_SPACES)}")
    if not (eps_frac >= 0 and math.isfinite(eps_frac)):
        raise ConfigError("eps_frac", f"must be a finite number >= 0, got {eps_frac!r}")
    typical = np.array([c.typical for c in SCHEMA.columns], dtype=np.float64).T
    lo, hi = _transform(typical[0][None, :], space)[0], _transform(typical[1][None, :], space)[0]
    return np.where(np.isin(SCHEMA.names, HELD_FIXED), 0.0, eps_frac * (hi - lo))


def perturbation_size(x: np.ndarray, x_adv: np.ndarray, space: str = "schema") -> np.ndarray:
    """|x_adv - x| per cell in the budget's space (compare with attack_budget)."""
    return np.abs(_transform(x_adv, space) - _transform(x, space))


def _valid_bounds() -> tuple[np.ndarray, np.ndarray]:
    """The schema's valid ranges in float32, the precision Schema.validate compares in."""
    lo, hi = SCHEMA.valid_bounds()
    return lo.astype(np.float32), hi.astype(np.float32)


def valid_range_violations(x: np.ndarray) -> int:
    """Cells that Schema.validate would reject (non-finite or outside the valid range, compared in float32)."""
    arr = np.asarray(x, dtype=np.float32)
    lo, hi = _valid_bounds()
    return int((~(np.isfinite(arr) & (arr >= lo) & (arr <= hi))).sum())


def _project(x0: np.ndarray, cand: np.ndarray, budget: np.ndarray, space: str) -> np.ndarray:
    """float32 rows within ``budget`` of the valid rows x0 (in ``space``, checked in float64) and valid.

    ``cand`` is in ``space``. The transforms are increasing, so the box maps to an interval per cell.
    """
    t0 = _transform(x0, space)
    t_box = np.clip(np.asarray(cand, dtype=np.float64), t0 - budget, t0 + budget)
    lo32, hi32 = _valid_bounds()
    out = np.clip(_untransform(t_box, space).astype(np.float32), lo32, hi32)  # x0 lies inside the valid ranges
    # float32 rounding may land just outside the box: step one ulp back toward x0, which stays valid
    for _ in range(8):
        over = perturbation_size(x0, out, space) > budget
        if not over.any():
            break
        out[over] = np.nextafter(out[over], x0[over])
    return np.where(budget == 0.0, x0, out)


def _direction_grad(model: nn.Module, x: np.ndarray, sign: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(gradient of sign * logit w.r.t. the raw rows, sign * logit) for each row."""
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).requires_grad_(True)
    obj = model(xt) * torch.from_numpy(sign)
    obj.sum().backward()
    assert xt.grad is not None
    return xt.grad.double().numpy(), obj.detach().double().numpy()


def adversarial_examples(model: nn.Module, x: np.ndarray, *, method: str = "pgd", eps_frac: float = 0.05,
                         steps: int = 10, threshold: float = 0.5, space: str = "schema") -> np.ndarray:
    """Valid perturbed copies of raw fraud rows x, pushed across ``threshold`` (see the module docstring).

    FGSM takes one step of the full budget (``attack_budget(eps_frac, space)``) along the sign of the
    gradient; PGD takes ``steps`` steps of a quarter of the budget, projecting after each, and keeps per
    row the furthest-pushed iterate. The gradient's sign is the same in raw and transformed space (the
    transforms are increasing). Deterministic (no random start).
    """
    if method not in METHODS:
        raise ConfigError("method", f"unknown attack {method!r}; choose one of {', '.join(METHODS)}")
    if method == "pgd" and steps < 1:
        raise ConfigError("steps", f"must be >= 1, got {steps}")
    if not 0.0 <= threshold <= 1.0:
        raise ConfigError("threshold", f"must be in [0, 1], got {threshold!r}")
    budget = attack_budget(eps_frac, space)
    x0 = SCHEMA.validate(x, "x").copy()
    flagged = infer(model, x0) >= threshold
    # push flagged rows down (toward licit) and the others up: maximize sign * logit
    sign = np.where(flagged, -1.0, 1.0).astype(np.float32)
    trainable = [p.requires_grad for p in model.parameters()]
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        if method == "fgsm":
            grad, _ = _direction_grad(model, x0, sign)
            return _project(x0, _transform(x0, space) + budget * np.sign(grad), budget, space)
        cur = x0
        best, best_obj = x0, np.full(len(x0), -np.inf)
        for _ in range(steps):
            grad, obj = _direction_grad(model, cur, sign)
            better = obj > best_obj
            best, best_obj = np.where(better[:, None], cur, best), np.where(better, obj, best_obj)
            cur = _project(x0, _transform(cur, space) + 0.25 * budget * np.sign(grad), budget, space)
        _, obj = _direction_grad(model, cur, sign)
        return np.where((obj > best_obj)[:, None], cur, best)
    finally:
        for p, flag in zip(model.parameters(), trainable, strict=True):
            p.requires_grad_(flag)


def adversarial_flip_rate(model: nn.Module, x: np.ndarray, *, method: str = "pgd", eps_frac: float = 0.05,
                          steps: int = 10, seed: int = 0, threshold: float = 0.5, space: str = "schema",
                          n: int | None = None) -> dict[str, Any]:
    """Share of rows whose decision (``p >= threshold``) an FGSM / PGD perturbation of the valid budget flips.

    ``n`` (optional) attacks a subsample of n rows drawn with ``seed``; otherwise all rows (and the seed is
    unused: the attack itself has no randomness). Returns flip_rate (all rows), flip_rate_illicit (rows
    flagged illicit pushed to licit: evasion), flip_rate_licit (licit rows pushed to illicit), the row
    counts, mean_abs_prob_change, max_budget_use (max |delta| / budget over perturbed columns, in
    ``space``; asserted <= 1) and valid_range_violations (asserted 0: every row passes Schema.validate).
    """
    x = np.asarray(x, dtype=np.float32)
    if n is not None and n < len(x):
        x = x[np.sort(np.random.default_rng(seed).choice(len(x), size=n, replace=False))]
    x_adv = adversarial_examples(model, x, method=method, eps_frac=eps_frac, steps=steps, threshold=threshold,
                                 space=space)
    violations = valid_range_violations(x_adv)
    assert violations == 0, f"{violations} perturbed cells are outside the schema's valid ranges"
    SCHEMA.validate(x_adv, "x_adv")
    budget = attack_budget(eps_frac, space)
    delta = perturbation_size(x, x_adv, space)
    assert (delta <= budget).all(), "a perturbation exceeds its column's budget"
    moved = budget > 0
    p0, p1 = infer(model, x).astype(np.float64), infer(model, x_adv).astype(np.float64)
    flagged = p0 >= threshold
    flipped = flagged != (p1 >= threshold)

    def rate(sel: np.ndarray) -> float:
        return float(flipped[sel].mean()) if sel.any() else 0.0

    return {
        "method": method,
        "eps_frac": eps_frac,
        "budget_space": space,
        "steps": steps if method == "pgd" else 1,
        "threshold": threshold,
        "rows": len(x),
        "flagged_illicit_rows": int(flagged.sum()),
        "licit_rows": int((~flagged).sum()),
        "flip_rate": rate(np.ones(len(x), dtype=bool)),
        "flip_rate_illicit": rate(flagged),
        "flip_rate_licit": rate(~flagged),
        "mean_abs_prob_change": float(np.abs(p1 - p0).mean()) if len(x) else 0.0,
        "max_budget_use": float((delta[:, moved] / budget[moved]).max()) if moved.any() and len(x) else 0.0,
        "valid_range_violations": violations,
    }


def train_standard_fraud(data: TaskSplits, *, seed: int = 0, epsilon: float | None = None,
                         accountant: str = REPORT_ACCOUNTANT) -> tuple[FraudNet, TrainResult]:
    """The standard fraud recipe (TASK_SPECS["fraud"], as train_recipe / the baseline) on data's train split.

    Returns (model, TrainResult).
    """
    spec = task_spec("fraud")
    model = build_model("fraud", seed=seed)
    dp = None if epsilon is None else DPConfig(target_epsilon=epsilon, delta=DP_DELTA, max_grad_norm=DP_MAX_GRAD_NORM,
                                               accountant=accountant)
    cfg = TrainConfig(epochs=spec.epochs, batch_size=spec.batch_size, lr=spec.lr, seed=seed, device="cpu", dp=dp)
    result = train(model, spec.loss, data.x["train"], data.y["train"], cfg)
    return model, result


def run_adversarial_check(seed: int = 0, epsilons: tuple[float, ...] = (8.0,), *, n_transactions: int = 60_000,
                          eps_fracs: tuple[float, ...] = (0.02, 0.05, 0.1), methods: tuple[str, ...] = METHODS,
                          steps: int = 10, space: str = "schema", accountant: str = REPORT_ACCOUNTANT) -> dict[str, Any]:
    """Flip rates of the standard fraud model, non-private and with DP at each epsilon, on the test split.

    Simulates a chain (``n_transactions``, ``seed``), trains the standard fraud recipe (TASK_SPECS["fraud"]:
    its epochs, batch size and learning rate, as the baseline) non-private and with DP-SGD at each target
    epsilon, and attacks every test row with each method and budget at the model's own best-F1 threshold
    on the validation split. Runs on one torch thread; deterministic for a seed.
    """
    t0 = time.perf_counter()
    with single_torch_thread():
        report = _adversarial_check(seed, epsilons, n_transactions, eps_fracs, methods, steps, space, accountant)
    report["seconds"] = time.perf_counter() - t0
    return report


def _adversarial_check(seed: int, epsilons: tuple[float, ...], n_transactions: int, eps_fracs: tuple[float, ...],
                       methods: tuple[str, ...], steps: int, space: str, accountant: str) -> dict[str, Any]:
    data = fraud_splits(n_transactions, seed)
    report: dict[str, Any] = {
        "config": {"seed": seed, "n_transactions": n_transactions, "epsilons": list(epsilons),
                   "eps_fracs": list(eps_fracs), "methods": list(methods), "steps": steps, "budget_space": space,
                   "held_fixed": list(HELD_FIXED), "accountant": accountant},
        "test_rows": int(len(data.y["test"])),
        "models": [],
    }
    for eps in (None, *epsilons):
        model, result = train_standard_fraud(data, seed=seed, epsilon=eps, accountant=accountant)
        threshold = scoring.best_f1_threshold(data.y["val"], infer(model, data.x["val"]))
        attacks = [adversarial_flip_rate(model, data.x["test"], method=m, eps_frac=f, steps=steps, seed=seed,
                                         threshold=threshold, space=space)
                   for m in methods for f in eps_fracs]
        report["models"].append({
            "private": eps is not None,
            "target_epsilon": eps,
            "epsilon": result.epsilon,
            "train_seconds": result.seconds,
            "threshold": threshold,
            "test_pr_auc": scoring.pr_auc(data.y["test"], infer(model, data.x["test"])),
            "attacks": attacks,
        })
    return report
