"""A node's local-only model with the federation's budget, the baseline the task benchmarks compare against."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from core.data.datasets import TaskSplits
from core.fedconfig import FederationConfig


def local_only_model(task: str, split: TaskSplits, cfg: FederationConfig, seed: int
                     ) -> Callable[[np.ndarray], np.ndarray]:
    """``task``'s model trained on ``split``'s train rows alone, with what the federation gave each node: epochs =
    rounds x local epochs, and the same DP budget (when the run used DP). Returns rows -> outputs."""
    from models.tasks import build_model, infer, task_spec
    from models.training import DPConfig, TrainConfig, train

    spec = task_spec(task)
    model = build_model(task, seed=cfg.seed)
    dp = DPConfig(target_epsilon=cfg.epsilon, delta=cfg.delta, max_grad_norm=cfg.max_grad_norm) if cfg.dp else None
    train(model, spec.loss, split.x["train"], split.y["train"],
          TrainConfig(epochs=cfg.rounds * cfg.local_epochs, batch_size=spec.batch_size, lr=spec.lr, seed=seed, dp=dp))
    return lambda x: infer(model, x)
