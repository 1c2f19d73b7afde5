"""The five tasks: fraud classifier, fee-rate estimator, anomaly autoencoder, network-attack classifier, channel
liquidity (P(a channel forwards an amount in a direction)).

Each model starts with a ``Normalizer`` built from its schema's *typical ranges* (public knowledge,
no node data), so the module - and the ONNX graph exported from it - takes raw feature rows. That is
our answer to "normalization must not leak a node's raw data": nothing is fitted to data.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from core import scoring
from core.bitcoin.features import DEFAULT_MIN_RELAY_SAT_VB, NORM_CLIP, TASK_SCHEMAS, Schema
from core.data.datasets import FEE_TARGETS, TaskSplits
from core.errors import ConfigError
from core.lightning.liquidity import BIMODAL_SCALE_SAT
from models.training import DPConfig, TrainConfig, TrainResult, train

FEE_QUANTILE = 0.95  # the fee model predicts the 95th percentile of the required rate (Core's 95 % threshold)
FEE_CALIBRATION_TARGETS = FEE_TARGETS
MIN_PRIOR_CAPACITY_SAT = 10_000.0  # below it (no real channel is smaller) the liquidity prior is taken at 10,000
PRIOR_EPS = 1e-4  # the liquidity prior's probability is kept in [eps, 1 - eps]


class Normalizer(nn.Module):
    """Raw features -> clipped z-scores using the schema's typical ranges (log columns in log space)."""

    def __init__(self, schema: Schema) -> None:
        super().__init__()
        mask, offset, loc, scale = schema.normalization()
        self.register_buffer("log_mask", torch.tensor(mask, dtype=torch.bool))
        self.register_buffer("log_offset", torch.tensor(offset))
        self.register_buffer("loc", torch.tensor(loc))
        self.register_buffer("scale", torch.tensor(scale))

    def forward(self, x: Tensor) -> Tensor:
        logged = torch.log(torch.clamp(x + self.log_offset, min=1e-12))
        t = torch.where(self.log_mask, logged, x)
        return torch.clamp((t - self.loc) / self.scale, -NORM_CLIP, NORM_CLIP)


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class BinaryClassifier(nn.Module):
    """A task schema's raw rows -> logit of P(positive); ``infer`` gives the probability."""

    def __init__(self, task: str, hidden: tuple[int, ...]) -> None:
        super().__init__()
        schema = TASK_SCHEMAS[task]
        self.norm = Normalizer(schema)
        self.body = _mlp([schema.width, *hidden, 1])

    def forward(self, x: Tensor) -> Tensor:
        return self.body(self.norm(x)).squeeze(-1)

    def infer(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.forward(x))


class FraudNet(BinaryClassifier):
    """Transaction features -> logit of P(illicit)."""

    def __init__(self, hidden: tuple[int, ...] = (64, 32)) -> None:
        super().__init__("fraud", hidden)


class FeeNet(nn.Module):
    """Mempool state + confirmation target k -> log of the fee rate (sat/vB) to confirm within k blocks.

    Trained with a pinball loss at FEE_QUANTILE, then calibrated (conformalized quantile regression,
    Romano et al. 2019): a log-space offset per confirmation target, set by ``calibrate_fee_model`` on
    held-out rows, is added at inference (piecewise linear in log k between the calibrated targets).
    """

    def __init__(self, hidden: tuple[int, ...] = (64, 32)) -> None:
        super().__init__()
        schema = TASK_SCHEMAS["fee"]
        self.norm = Normalizer(schema)
        self.body = _mlp([schema.width, *hidden, 1])
        self.k_col = schema.index("conf_target_blocks")
        self.register_buffer("calib_log_k", torch.log(torch.tensor(FEE_CALIBRATION_TARGETS, dtype=torch.float32)))
        self.register_buffer("calib_offset", torch.zeros(len(FEE_CALIBRATION_TARGETS)))

    def forward(self, x: Tensor) -> Tensor:
        return self.body(self.norm(x)).squeeze(-1)

    def calibration(self, x: Tensor) -> Tensor:
        """Log-space offset for each row's confirmation target."""
        lk = torch.log(torch.clamp(x[:, self.k_col], min=1.0))
        knots, off = self.calib_log_k, self.calib_offset
        out = off[0].expand_as(lk)
        for i in range(len(knots) - 1):
            frac = torch.clamp((lk - knots[i]) / (knots[i + 1] - knots[i]), 0.0, 1.0)
            out = out + (off[i + 1] - off[i]) * frac
        return out

    def infer(self, x: Tensor) -> Tensor:
        return torch.clamp(torch.exp(self.forward(x) + self.calibration(x)), min=DEFAULT_MIN_RELAY_SAT_VB)


@torch.no_grad()
def calibrate_fee_model(model: FeeNet, x: np.ndarray, y: np.ndarray, coverage: float = FEE_QUANTILE) -> list[float]:
    """Set the per-target offsets so that ``coverage`` of held-out rows are hit; returns the offsets."""
    model.calib_offset.zero_()
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    model.eval()
    resid = np.log(np.maximum(y, 1e-3)) - model.forward(xt).numpy()
    k = x[:, model.k_col]
    found: dict[int, float] = {}
    for target in FEE_CALIBRATION_TARGETS:
        sel = k == target
        n = int(sel.sum())
        if n:
            # finite-sample conformal quantile: the ceil((n + 1) * coverage)-th smallest residual
            rank = min(int(np.ceil((n + 1) * coverage)), n) - 1
            found[target] = float(np.sort(resid[sel])[rank])
    if not found:
        raise ConfigError("calibration", f"no held-out rows with a confirmation target in {FEE_CALIBRATION_TARGETS}")
    # a target without held-out rows borrows the offset of the nearest calibrated target (in log k)
    offsets = [found.get(t, found[min(found, key=lambda c: abs(np.log(c / t)))]) for t in FEE_CALIBRATION_TARGETS]
    model.calib_offset.copy_(torch.tensor(offsets))
    return offsets


class AnomalyAE(nn.Module):
    """Autoencoder over normalized transaction + mempool features; forward returns the residual."""

    def __init__(self, hidden: tuple[int, ...] = (32, 8)) -> None:
        super().__init__()
        schema = TASK_SCHEMAS["anomaly"]
        self.norm = Normalizer(schema)
        self.encoder = _mlp([schema.width, *hidden])
        self.decoder = _mlp([hidden[-1], *reversed(hidden[:-1]), schema.width])
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        z = self.norm(x)
        return self.decoder(self.act(self.encoder(z))) - z

    def infer(self, x: Tensor) -> Tensor:
        return self.forward(x).pow(2).mean(dim=-1)


class NetworkNet(BinaryClassifier):
    """One node telemetry vector (``TELEMETRY_SCHEMA``) -> logit of P(the node is under a network attack).

    Supervised: a node learns from the minutes its operator (or, in simulation, the simulated node's truth)
    marks as under attack, so the federation learns attacks that some nodes saw and others did not.
    """

    def __init__(self, hidden: tuple[int, ...] = (32, 16)) -> None:
        super().__init__("network", hidden)


class LiquidityNet(BinaryClassifier):
    """One direction of a public channel and an amount (``LIQUIDITY_SCHEMA``) -> logit of P(it can forward the
    amount). Each router learns from its own channels' balances; the model answers for any channel of the graph.
    Its output is used as a probability (pathfinding's success estimate), so it is judged by log-loss and
    calibration, not by a threshold.

    The logit is LND's bimodal estimator's (public knowledge: a balance density proportional to exp(-x / s) +
    exp(-(c - x) / s), s = ``BIMODAL_SCALE_SAT``) plus a learned correction whose last layer starts at zero, so
    the untrained model *is* that estimator and training moves it only as far as the nodes' rows say. The
    correction is linear in the normalized features by default: measured on the simulated network under DP
    (``anya-fl bench liquidity``), hidden layers fit the few channels a federation's routers own and answered
    worse about other networks' channels.
    """

    def __init__(self, hidden: tuple[int, ...] = ()) -> None:
        super().__init__("liquidity", hidden)
        schema = TASK_SCHEMAS["liquidity"]
        self.capacity_col, self.share_col = schema.index("log_capacity_sat"), schema.index("amount_share")
        nn.init.zeros_(self.body[-1].weight)
        nn.init.zeros_(self.body[-1].bias)

    def prior_logit(self, x: Tensor) -> Tensor:
        """The bimodal estimator's logit of P(balance >= amount), from the capacity and the amount's share."""
        u = torch.clamp(torch.exp(x[:, self.capacity_col] * math.log(10.0)), min=MIN_PRIOR_CAPACITY_SAT)
        u = u / BIMODAL_SCALE_SAT
        v = torch.clamp(x[:, self.share_col], 0.0, 1.0) * u
        p = (torch.exp(-v) - torch.exp(-u) + 1.0 - torch.exp(v - u)) / (2.0 * (1.0 - torch.exp(-u)))
        p = torch.clamp(p, PRIOR_EPS, 1.0 - PRIOR_EPS)
        return torch.log(p) - torch.log(1.0 - p)

    def forward(self, x: Tensor) -> Tensor:
        return self.prior_logit(x) + self.body(self.norm(x)).squeeze(-1)


def fraud_loss(out: Tensor, y: Tensor) -> Tensor:
    return nn.functional.binary_cross_entropy_with_logits(out, y)


def fee_loss(out: Tensor, y: Tensor) -> Tensor:
    """Pinball loss at FEE_QUANTILE on log fee rate."""
    u = torch.log(torch.clamp(y, min=1e-3)) - out
    return torch.maximum(FEE_QUANTILE * u, (FEE_QUANTILE - 1.0) * u).mean()


def anomaly_loss(out: Tensor, y: Tensor) -> Tensor:
    return out.pow(2).mean()


@dataclass(frozen=True)
class TaskSpec:
    """Everything the training loop, the federation and export need to know about one task."""

    name: str
    build: Callable[[], nn.Module]
    loss: Callable[[Tensor, Tensor], Tensor]
    output_name: str
    epochs: int
    batch_size: int
    lr: float

    @property
    def schema(self) -> Schema:
        return TASK_SCHEMAS[self.name]


TASK_SPECS: dict[str, TaskSpec] = {
    "fraud": TaskSpec("fraud", FraudNet, fraud_loss, "fraud_probability", 10, 512, 2e-3),
    "fee": TaskSpec("fee", FeeNet, fee_loss, "fee_rate_sat_vb", 30, 256, 3e-3),
    "anomaly": TaskSpec("anomaly", AnomalyAE, anomaly_loss, "anomaly_score", 10, 512, 2e-3),
    "network": TaskSpec("network", NetworkNet, fraud_loss, "attack_probability", 20, 64, 3e-3),
    # a small learning rate: the correction to the prior overfits a few routers' channels quickly (rows of one
    # channel repeat every snapshot), and DP noise moves it more with Adam's per-parameter steps
    "liquidity": TaskSpec("liquidity", LiquidityNet, fraud_loss, "success_probability", 5, 256, 1e-3),
}


def task_spec(name: str) -> TaskSpec:
    if name not in TASK_SPECS:
        raise ConfigError("task", f"unknown task {name!r}; choose one of {', '.join(TASK_SPECS)}")
    return TASK_SPECS[name]


def build_model(task: str, seed: int = 0) -> nn.Module:
    """A freshly initialized model of ``task``; the same seed gives the same weights."""
    spec = task_spec(task)
    gen_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        return spec.build()
    finally:
        torch.random.set_rng_state(gen_state)


@torch.no_grad()
def infer(model: nn.Module, x: np.ndarray, batch_size: int = 65_536) -> np.ndarray:
    """The task output (probability, fee rate or anomaly score) for raw feature rows."""
    model.eval()
    outs = [model.infer(torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size], dtype=np.float32)))
            for i in range(0, len(x), batch_size)]
    return torch.cat(outs).cpu().numpy() if outs else np.zeros(0, dtype=np.float32)


def evaluate_outputs(task: str, output: np.ndarray, x: np.ndarray, y: np.ndarray, threshold: float | None = None) -> dict[str, float]:
    """Task metrics for model outputs (or any baseline's outputs in the same units)."""
    if task in ("fraud", "network"):  # both classifiers: PR-AUC, ROC-AUC, F1, recall at 1 % FPR
        thr = 0.5 if threshold is None else threshold
        return scoring.fraud_metrics(y, output, thr)
    if task == "anomaly":
        return scoring.anomaly_metrics(y, output)
    if task == "liquidity":
        return scoring.probability_metrics(y, output)
    k = x[:, TASK_SCHEMAS["fee"].index("conf_target_blocks")].astype(int)
    metrics = scoring.fee_metrics(output, y, k)
    # one number for a quantile estimator: the pinball loss of log rates at FEE_QUANTILE (lower is better)
    u = np.log(np.maximum(y, 1e-3)) - np.log(np.maximum(output, 1e-3))
    metrics["pinball_loss"] = float(np.mean(np.maximum(FEE_QUANTILE * u, (FEE_QUANTILE - 1.0) * u)))
    return metrics


def evaluate_held_out(task: str, model: nn.Module, split: TaskSplits) -> dict[str, float]:
    """Metrics on the test split; the validation split picks the fraud threshold and calibrates fee.

    The fee model's calibration offsets are set in ``model`` itself, so a saved or exported model
    carries them.
    """
    threshold = None
    if task in ("fraud", "network"):
        threshold = scoring.best_f1_threshold(split.y["val"], infer(model, split.x["val"]))
    if task == "fee":
        calibrate_fee_model(model, split.x["val"], split.y["val"])
    return evaluate_outputs(task, infer(model, split.x["test"]), split.x["test"], split.y["test"], threshold)


def targets(task: str, split: TaskSplits, part: str) -> np.ndarray:
    """What the model learns to output for ``split``'s ``part`` rows: the autoencoder reconstructs its input."""
    return split.x[part] if task == "anomaly" else split.y[part]


def train_recipe(task: str, train_rows: TaskSplits, held_out: TaskSplits, *, model_seed: int, seed: int,
                 dp: DPConfig | None, device: str = "auto") -> tuple[dict[str, float], TrainResult]:
    """The task's centralized recipe (its epochs, batch size, learning rate) on ``train_rows``' train split,
    scored on ``held_out`` by :func:`evaluate_held_out`."""
    spec = task_spec(task)
    model = build_model(task, seed=model_seed)
    config = TrainConfig(epochs=spec.epochs, batch_size=spec.batch_size, lr=spec.lr, seed=seed, device=device, dp=dp)
    result = train(model, spec.loss, train_rows.x["train"], targets(task, train_rows, "train"), config)
    return evaluate_held_out(task, model, held_out), result
