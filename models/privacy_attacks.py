"""Attacks on the fraud model: membership inference (privacy) and valid-feature adversarial flips (robustness).

* ``membership_inference`` is the loss-threshold attack of Yeom et al. (2018): training members tend to have
  a lower loss than non-members, so the negative per-example loss is the attack's membership score. We
  report its ROC-AUC (0.5 = no leakage) and its best-threshold advantage (max TPR - FPR), over all rows
  and per label. ``run_membership_check`` makes the comparison meaningful: a fraud model trained on a big
  training set generalizes and leaks next to nothing either way, so the check trains an unregularized
  model on a *small* training set for many epochs (it memorizes), and the same model on the same rows and
  epochs with DP-SGD, and attacks both. Non-members come from the same (train) time period as the
  members, with the same illicit count, so the attack sees membership and not a shift between periods.
  On this data the leak shows in the illicit rows (``attack_auc_illicit``); over all rows, which are
  mostly easy licit ones, a single loss threshold stays at chance even for the overfit model.

* ``adversarial_examples`` / ``adversarial_flip_rate`` perturb raw fraud feature rows with FGSM or PGD
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

from core import scoring
from core.bitcoin.features import TASK_SCHEMAS
from core.data.chain import ChainConfig, simulate_chain
from core.data.datasets import TaskSplits, task_arrays
from core.errors import ConfigError
from models.tasks import FraudNet, build_model, fraud_loss, infer, task_spec
from models.training import DPConfig, TrainConfig, TrainResult, single_torch_thread, train

SCHEMA = TASK_SCHEMAS["fraud"]
HELD_FIXED = ("n_inputs", "n_outputs", "dust_output_count", "rbf_signaling", "has_locktime", "input_age_known")
METHODS = ("fgsm", "pgd")
BUDGET_SPACES = ("schema", "raw")

# the overfitting regime of run_membership_check: an unregularized MLP trained for many epochs on few rows.
# FraudNet's own width already memorizes 2,000 rows (train loss ~0.001); wider nets (128, 64) and (256, 128)
# gave the same attack AUC at 1.5-3x the DP-SGD cost, so the default width is kept.
MEMBERSHIP_HIDDEN = (64, 32)
MEMBERSHIP_BATCH = 256
MEMBERSHIP_LR = 2e-3
DP_DELTA = 1e-5
DP_MAX_GRAD_NORM = 1.0


# ------------------------------------------------------------------------------------------ helpers


@torch.no_grad()
def _logits(model: nn.Module, x: np.ndarray, batch_size: int = 65_536) -> np.ndarray:
    model.eval()
    outs = [model(torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size], dtype=np.float32)))
            for i in range(0, len(x), batch_size)]
    return torch.cat(outs).double().numpy() if outs else np.zeros(0)


def per_example_loss(model: nn.Module, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Binary cross-entropy of the fraud model's logit for each row (float64)."""
    z = _logits(model, x)
    yy = np.asarray(y, dtype=np.float64)
    # numerically stable BCE with logits: max(z, 0) - z y + log(1 + exp(-|z|))
    return np.maximum(z, 0.0) - z * yy + np.log1p(np.exp(-np.abs(z)))


def max_advantage(is_member: np.ndarray, score: np.ndarray) -> float:
    """max over thresholds t of TPR - FPR for "member if score >= t" (0 for "flag nothing")."""
    y = np.asarray(is_member, dtype=bool)
    s = np.asarray(score, dtype=np.float64)
    order = np.argsort(s, kind="mergesort")[::-1]
    s_sorted, y_sorted = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s_sorted)), s_sorted.size - 1]  # end of each tie group
    tps = np.cumsum(y_sorted)[last]
    fps = (last + 1) - tps
    return float(max(0.0, np.max(tps / y.sum() - fps / (~y).sum())))


def _fraud_data(n_transactions: int, seed: int) -> TaskSplits:
    """Fraud rows of a simulated chain; refuses a chain too short to put both labels in every split."""
    data = task_arrays(simulate_chain(ChainConfig(n_transactions=n_transactions, seed=seed)))["fraud"]
    for split, y in data.y.items():
        if y.sum() == 0 or y.sum() == len(y):
            raise ConfigError("n_transactions", f"{n_transactions:,} transactions leave the {split} split "
                              f"{len(y)} rows, {int(y.sum())} illicit; simulate more")
    return data




def _fraud_net(hidden: tuple[int, ...], seed: int) -> FraudNet:
    """A FraudNet of the given width, initialized from ``seed`` without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return FraudNet(hidden=hidden)


# ----------------------------------------------------------------------------- membership inference


def _attack_stats(loss_in: np.ndarray, loss_out: np.ndarray) -> dict[str, float]:
    is_member = np.r_[np.ones(len(loss_in), dtype=bool), np.zeros(len(loss_out), dtype=bool)]
    score = -np.r_[loss_in, loss_out]
    return {
        "attack_auc": scoring.roc_auc(is_member, score),
        "attack_advantage": max_advantage(is_member, score),
        "member_loss": float(loss_in.mean()),
        "nonmember_loss": float(loss_out.mean()),
    }


def membership_inference(model: nn.Module, x_train: np.ndarray, y_train: np.ndarray, x_out: np.ndarray,
                         y_out: np.ndarray, *, n: int = 5000, seed: int = 0) -> dict[str, Any]:
    """Loss-threshold membership inference (Yeom et al. 2018) against a fraud model.

    Draws min(n, len(x_train), len(x_out)) members from (x_train, y_train) and as many non-members from
    (x_out, y_out), without replacement, with ``seed``; the attack scores each row by its negative
    binary cross-entropy. Returns, over all sampled rows: attack_auc (ROC-AUC of member vs non-member;
    0.5 = no leakage), attack_advantage (best-threshold TPR - FPR), member_loss / nonmember_loss (means),
    n (rows per side); and the same four per label, with suffix ``_illicit`` / ``_licit`` (the attack
    restricted to the rows of that label, i.e. a per-label threshold; None where a side has no such
    rows), with n_illicit_members / n_illicit_nonmembers.
    """
    m = min(int(n), len(x_train), len(x_out))
    if m < 1:
        raise ConfigError("n", f"needs at least one member and one non-member row (got n={n}, "
                          f"{len(x_train)} members, {len(x_out)} non-members)")
    rng = np.random.default_rng(seed)
    i_in = np.sort(rng.choice(len(x_train), size=m, replace=False))
    i_out = np.sort(rng.choice(len(x_out), size=m, replace=False))
    y_in, y_o = np.asarray(y_train)[i_in], np.asarray(y_out)[i_out]
    loss_in = per_example_loss(model, x_train[i_in], y_in)
    loss_out = per_example_loss(model, x_out[i_out], y_o)
    out: dict[str, Any] = {**_attack_stats(loss_in, loss_out), "n": m}
    for label, cls in (("illicit", 1), ("licit", 0)):
        a, b = loss_in[y_in == cls], loss_out[y_o == cls]
        stats = _attack_stats(a, b) if len(a) and len(b) else dict.fromkeys(_STAT_KEYS)
        out.update({f"{k}_{label}": v for k, v in stats.items()})
        if label == "illicit":
            out["n_illicit_members"], out["n_illicit_nonmembers"] = len(a), len(b)
    return out


_STAT_KEYS = ("attack_auc", "attack_advantage", "member_loss", "nonmember_loss")


def _stratified_members(y: np.ndarray, n_train: int, illicit_share: float | None,
                        seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint index sets of n_train rows each with the same illicit count (members, non-members).

    The illicit count is round(n_train * illicit_share), or the split's own share when illicit_share is None.
    """
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y != 1)
    share = len(pos) / len(y) if illicit_share is None else float(illicit_share)
    k_pos = int(round(n_train * share))
    if 2 * k_pos > len(pos) or 2 * (n_train - k_pos) > len(neg):
        raise ConfigError("n_train", f"{n_train} members and as many non-members at illicit share {share:.3f} need "
                          f"{2 * k_pos} illicit and {2 * (n_train - k_pos)} licit train-split rows; the chain has "
                          f"{len(pos)} and {len(neg)} (simulate more transactions)")
    rng = np.random.default_rng([seed, 1])
    pos, neg = rng.permutation(pos), rng.permutation(neg)
    members = np.r_[pos[:k_pos], neg[: n_train - k_pos]]
    others = np.r_[pos[k_pos : 2 * k_pos], neg[n_train - k_pos : 2 * (n_train - k_pos)]]
    return np.sort(members), np.sort(others)


def run_membership_check(seed: int = 0, n_train: int = 2000, epochs: int = 200,
                         epsilons: tuple[float, ...] = (1.0, 8.0), *, n_transactions: int = 60_000,
                         hidden: tuple[int, ...] = MEMBERSHIP_HIDDEN, illicit_share: float | None = None,
                         accountant: str = "prv") -> dict[str, Any]:
    """Membership inference against an overfit non-private fraud model and DP models on the same rows.

    Simulates a chain (``n_transactions``, ``seed``); draws ``n_train`` members and ``n_train`` non-members
    from its train split (the same illicit count on both sides: the split's own share, or ``illicit_share``);
    trains a FraudNet of width ``hidden`` for ``epochs`` epochs with Adam (batch MEMBERSHIP_BATCH, lr
    MEMBERSHIP_LR, no weight decay) non-private and with DP-SGD at each target epsilon (delta DP_DELTA, clip
    DP_MAX_GRAD_NORM) from the same initial weights; attacks each model (members vs the non-members) and
    scores it on the test split (PR-AUC). Runs on one torch thread; deterministic for a seed.

    At the natural illicit share (~3 %) the global loss threshold sees no leak (attack_auc ~0.50 even for
    the overfit model): most rows are easy and members and non-members both get a near-zero loss. The
    leak is in the illicit rows, where the overfit model memorizes its members and misclassifies a share
    of the non-members: read attack_auc_illicit / attack_advantage_illicit.
    """
    t0 = time.perf_counter()
    with single_torch_thread():
        report = _membership_check(seed, n_train, epochs, epsilons, n_transactions, hidden, illicit_share, accountant)
    report["seconds"] = time.perf_counter() - t0
    return report


def _membership_check(seed: int, n_train: int, epochs: int, epsilons: tuple[float, ...], n_transactions: int,
                      hidden: tuple[int, ...], illicit_share: float | None, accountant: str) -> dict[str, Any]:
    data = _fraud_data(n_transactions, seed)
    x, y = data.x["train"], data.y["train"]
    members, others = _stratified_members(y, n_train, illicit_share, seed)
    x_in, y_in, x_out, y_out = x[members], y[members], x[others], y[others]
    report: dict[str, Any] = {
        "config": {"seed": seed, "n_train": n_train, "epochs": epochs, "epsilons": list(epsilons),
                   "n_transactions": n_transactions, "hidden": list(hidden), "illicit_share": illicit_share,
                   "batch_size": MEMBERSHIP_BATCH,
                   "lr": MEMBERSHIP_LR, "delta": DP_DELTA, "max_grad_norm": DP_MAX_GRAD_NORM, "accountant": accountant},
        "members_illicit": int(y_in.sum()),
        "models": [],
    }
    for eps in (None, *epsilons):
        model = _fraud_net(hidden, seed)
        dp = None if eps is None else DPConfig(target_epsilon=eps, delta=DP_DELTA, max_grad_norm=DP_MAX_GRAD_NORM,
                                               accountant=accountant)
        cfg = TrainConfig(epochs=epochs, batch_size=MEMBERSHIP_BATCH, lr=MEMBERSHIP_LR, seed=seed, device="cpu", dp=dp)
        result = train(model, fraud_loss, x_in, y_in, cfg)
        attack = membership_inference(model, x_in, y_in, x_out, y_out, n=n_train, seed=seed)
        report["models"].append({
            "private": eps is not None,
            "target_epsilon": eps,
            "epsilon": result.epsilon,
            "noise_multiplier": result.noise_multiplier,
            "train_loss": result.train_loss,
            "train_seconds": result.seconds,
            "test_pr_auc": scoring.pr_auc(data.y["test"], infer(model, data.x["test"])),
            **attack,
        })
    return report


# ---------------------------------------------------------------------------------- adversarial flips


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
                         accountant: str = "prv") -> tuple[FraudNet, TrainResult]:
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
                          steps: int = 10, space: str = "schema", accountant: str = "prv") -> dict[str, Any]:
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
    data = _fraud_data(n_transactions, seed)
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
