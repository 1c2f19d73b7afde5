"""Strategy choice: Flower's own strategy classes, configured from the run config."""

from __future__ import annotations

from flwr.app import MetricRecord, RecordDict
from flwr.serverapp.strategy import (
    Bulyan,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAdam,
    FedAvg,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    Krum,
    MultiKrum,
)
from flwr.serverapp.strategy.strategy import Strategy

from core.fedconfig import FederationConfig
from fl_server.task_groups import task_of, trained


def aggregate_metrics(records: list[RecordDict], weight_key: str) -> MetricRecord:
    """Weighted mean of every metric, except privacy spent: the maximum over nodes (the worst case).

    A task's metrics are aggregated over the nodes that trained it (``<task>.trained`` absent or 1): a node
    without data for a task (fraud without operator labels) reports zeros there, which are left out.
    """
    rows = [next(iter(r.metric_records.values())) for r in records]
    keys = list(dict.fromkeys(k for m in rows for k in m.keys()))
    out: dict[str, float] = {}
    for key in keys:
        if key == "partition-id":
            continue
        task = task_of(key)
        have = [m for m in rows if key in m and (key == f"{task}.trained" or trained(m, task))]
        if not have:
            continue
        values = [float(m[key]) for m in have]
        weights = [float(m[weight_key]) if weight_key in m else 0.0 for m in have]
        total = sum(weights) or 1.0
        if "epsilon" in key or key == "delta":
            out[key] = max(values)
        elif key == weight_key:
            out[key] = sum(values)
        else:
            out[key] = sum(v * w for v, w in zip(values, weights, strict=True)) / total
    return MetricRecord(out)


def build_strategy(cfg: FederationConfig) -> Strategy:
    """The Flower strategy named by ``cfg.strategy``, wrapped in Flower's server-side DP when ``central-dp`` is set.

    Central DP (user-level, McMahan et al. 2018): each node's whole update is clipped to ``central-clip``
    (fixed) or to an adaptively tuned norm (adaptive: Andrew et al. 2021), and Gaussian noise of std
    ``central-noise`` x clip is added to the aggregate, so the released global model protects each
    node's entire participation, against a curious public, not against the server, which sees the raw
    updates. Local DP-SGD (``dp``) protects each transaction even from the server.
    """
    base = _flower_strategy(cfg)
    if not cfg.central_dp:
        return base
    sampled = max(cfg.min_nodes, int(round(cfg.fraction_train * cfg.nodes)))
    if cfg.central_dp == "fixed":
        return DifferentialPrivacyServerSideFixedClipping(base, noise_multiplier=cfg.central_noise,
                                                          clipping_norm=cfg.central_clip, num_sampled_clients=sampled)
    return DifferentialPrivacyServerSideAdaptiveClipping(base, noise_multiplier=cfg.central_noise,
                                                         num_sampled_clients=sampled,
                                                         initial_clipping_norm=cfg.central_clip)


def _flower_strategy(cfg: FederationConfig) -> Strategy:
    common = {
        "fraction_train": cfg.fraction_train,
        "fraction_evaluate": cfg.fraction_evaluate,
        "min_train_nodes": cfg.min_nodes,
        "min_evaluate_nodes": cfg.min_nodes if cfg.fraction_evaluate > 0 else 0,
        "min_available_nodes": cfg.min_nodes,
        "train_metrics_aggr_fn": aggregate_metrics,
        "evaluate_metrics_aggr_fn": aggregate_metrics,
    }
    f = cfg.byzantine
    match cfg.strategy:
        case "fedavg":
            return FedAvg(**common)
        case "fedprox":
            return FedProx(**common, proximal_mu=cfg.proximal_mu)
        case "fedadam":
            return FedAdam(**common, eta=cfg.server_lr, eta_l=cfg.server_lr)
        case "krum":
            return Krum(**common, num_malicious_nodes=f)
        case "multikrum":
            return MultiKrum(**common, num_malicious_nodes=f, num_nodes_to_select=max(1, cfg.min_nodes - f))
        case "bulyan":
            return Bulyan(**common, num_malicious_nodes=f)
        case "median":
            return FedMedian(**common)
        case "trimmed-mean":
            return FedTrimmedAvg(**common, beta=cfg.trim_beta)
    raise AssertionError(f"unreachable: {cfg.strategy}")  # FederationConfig.validate refuses other names


STATEFUL_ATTRS = ("m_t", "v_t")  # FedAdam's server-side moments (dicts of arrays)
