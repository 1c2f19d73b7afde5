"""Membership inference against the fraud model: what a trained model leaks about its training rows.

``membership_inference`` is the loss-threshold attack of Yeom et al. (2018): training members tend to have
a lower loss than non-members, so the negative per-example loss is the attack's membership score. We
report its ROC-AUC (0.5 = no leakage) and its best-threshold advantage (max TPR - FPR), over all rows
and per label. ``run_membership_check`` makes the comparison meaningful: a fraud model trained on a big
training set generalizes and leaks next to nothing either way, so the check trains an unregularized
model on a *small* training set for many epochs (it memorizes), and the same model on the same rows and
epochs with DP-SGD, and attacks both. Non-members come from the same (train) time period as the
members, with the same illicit count, so the attack sees membership and not a shift between periods.
On this data the leak shows in the illicit rows (``attack_auc_illicit``); over all rows, which are
mostly easy licit ones, a single loss threshold stays at chance even for the overfit model.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from torch import nn

from anya_fl.experiments.fraud_rows import DP_DELTA, DP_MAX_GRAD_NORM, fraud_splits
from core import scoring
from core.errors import ConfigError
from models.privacy.accounting import REPORT_ACCOUNTANT
from models.tasks import FraudNet, fraud_loss, infer
from models.training import DPConfig, TrainConfig, single_torch_thread, train

# the overfitting regime of run_membership_check: an unregularized MLP trained for many epochs on few rows.
# FraudNet's own width already memorizes 2,000 rows (train loss ~0.001); wider nets (128, 64) and (256, 128)
# gave the same attack AUC at 1.5-3x the DP-SGD cost, so the default width is kept.
MEMBERSHIP_HIDDEN = (64, 32)
MEMBERSHIP_BATCH = 256
MEMBERSHIP_LR = 2e-3


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
                         accountant: str = REPORT_ACCOUNTANT) -> dict[str, Any]:
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
    data = fraud_splits(n_transactions, seed)
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
