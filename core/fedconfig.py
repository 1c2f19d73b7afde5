"""Settings of a federated run: one validated dataclass shared by the CLI, the ServerApp and the ClientApp.

It travels as Flower's run config (flat ``key = value`` with dashes, as in pyproject's
``[tool.flwr.app.config]``), so ``flwr run .`` and ``anya-fl simulate`` read the same settings.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from core.bitcoin.features import CHAIN_TASKS, TASKS
from core.errors import ConfigError
from core.health.agent_checker import SystemStage

STRATEGIES = ("fedavg", "fedprox", "fedadam", "krum", "multikrum", "bulyan", "median", "trimmed-mean")


ATTACKS = ("sign-flip", "scaling", "gaussian", "label-flip", "alie")  # fl_client.attacks implements them
DECLINE_ERROR_CODE = 4100  # Flower error code of a node that declines a message (the reason says why)


RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


ACCOUNTANTS = ("rdp", "prv", "gdp")  # Opacus' accountants
DEFAULT_ACCOUNTANT = "rdp"  # every DP training's default: a node re-solves its noise each round, PRV is ~20x slower


@dataclass(frozen=True)
class FederationConfig:
    """Everything a federated run needs; defaults are the simulation's defaults."""

    rounds: int = 8
    nodes: int = 10  # nodes expected in the federation (simulation: SuperNodes started)
    strategy: str = "median"  # with screening: the default chosen by `anya-fl bench robustness` (README)
    min_nodes: int = 2  # nodes that must take part in a round (train and evaluate)
    fraction_train: float = 1.0
    fraction_evaluate: float = 1.0
    local_epochs: int = 5
    dp: bool = True
    epsilon: float = 8.0  # per node and task, for the whole run (spent in equal shares per round)
    delta: float = 1e-5
    accountant: str = DEFAULT_ACCOUNTANT  # rdp (fast, the usual choice in FL), prv (tighter) or gdp
    max_grad_norm: float = 1.0
    proximal_mu: float = 0.1  # fedprox only
    byzantine: int = 0  # nodes assumed malicious by krum, multikrum and bulyan
    trim_beta: float = 0.2  # trimmed-mean: share cut from each end
    server_lr: float = 0.01  # fedadam: eta (server step) and eta_l
    round_timeout: float = 600.0  # seconds the server waits for replies; late nodes are dropped
    seed: int = 0
    tasks: str = ",".join(CHAIN_TASKS)  # network: opt in (its data is telemetry, not the chain)
    run_name: str = "run"
    run_dir: str = ""  # checkpoints, metrics and reports (the coordinator's)
    data_dir: str = ""  # simulation: node-<i> datasets and the coordinator's held-out set
    transactions: int = 200_000  # simulated chain size when the simulation generates data
    min_stage: str = "production"  # AgentChecker stage a node needs to train (below it, it declines)
    registry_dir: str = ""  # where the final models are published as signed versions ("": ONNX files only)
    signing_key: str = ""  # the coordinator's Ed25519 model-signing key (PEM)
    promote: bool = False  # promote the published versions to production (the simulation's own registry)
    central_dp: str = ""  # "", "fixed" or "adaptive": user-level DP on the server (Flower's DP strategy wrappers)
    central_noise: float = 1.0  # central DP noise multiplier (std of the noise / clipping norm)
    central_clip: float = 1.0  # central DP clipping norm of each node's update (fixed; initial for adaptive)
    lifetime_epsilon: float = 0.0  # default lifetime budget per node and task over all runs (0: none; a node's
    # own `lifetime-epsilon` node config overrides it)
    audit_log: str = ""  # the coordinator's hash-chained audit log (publishes, promotions, excluded nodes)
    export_models: bool = True  # export (and publish) the final models after the last round
    attack: str = ""  # robustness experiments: a share of the nodes poisons its updates (fl_client.attacks)
    malicious: float = 0.0  # share of nodes that attack
    screening: bool = True  # server-side norm/direction screening and clipping (fl_server.screening)
    clip_factor: float = 3.0  # screening: clip updates to this many times the round's median norm
    flag_norm: float = 4.0  # screening: flag updates above this many times the median norm
    min_cosine: float = 0.0  # screening: flag updates pointing away from the median update
    exclude_after: int = 2  # screening: exclude a node flagged in this many consecutive rounds

    @property
    def task_list(self) -> tuple[str, ...]:
        return tuple(t.strip() for t in self.tasks.split(",") if t.strip())

    def validate(self) -> FederationConfig:
        def bad(setting: str, problem: str) -> ConfigError:
            return ConfigError(setting, f"{getattr(self, setting.replace('-', '_'))!r} {problem}")

        if self.strategy not in STRATEGIES:
            raise bad("strategy", f"is not a strategy; choose one of {', '.join(STRATEGIES)}")
        if self.rounds < 1:
            raise bad("rounds", "must be at least 1")
        if self.nodes < 1:
            raise bad("nodes", "must be at least 1")
        if self.min_nodes < 1:
            raise bad("min-nodes", "must be at least 1")
        if self.min_nodes > self.nodes:
            raise ConfigError("min-nodes", f"{self.min_nodes} is more than the {self.nodes} nodes of the federation")
        for name in ("fraction_train", "fraction_evaluate"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise bad(name.replace("_", "-"), "must be in [0, 1]")
        if self.local_epochs < 1:
            raise bad("local-epochs", "must be at least 1")
        if not (self.epsilon > 0 and math.isfinite(self.epsilon)):
            raise bad("epsilon", "must be a positive number (the DP budget per node and task)")
        if not 0 < self.delta < 1:
            raise bad("delta", "must be in (0, 1)")
        if self.accountant not in ACCOUNTANTS:
            raise bad("accountant", f"must be {', '.join(ACCOUNTANTS)}")
        if not self.max_grad_norm > 0:
            raise bad("max-grad-norm", "must be positive")
        if self.proximal_mu < 0:
            raise bad("proximal-mu", "must be >= 0")
        if self.byzantine < 0:
            raise bad("byzantine", "must be >= 0")
        if self.strategy in ("krum", "multikrum") and self.nodes < 2 * self.byzantine + 3:
            raise ConfigError("byzantine", f"{self.strategy} needs at least 2*byzantine+3 nodes, have {self.nodes}")
        if self.strategy == "bulyan" and self.nodes < 4 * self.byzantine + 3:
            raise ConfigError("byzantine", f"bulyan needs at least 4*byzantine+3 nodes, have {self.nodes}")
        if not 0 <= self.trim_beta < 0.5:
            raise bad("trim-beta", "must be in [0, 0.5)")
        if not self.server_lr > 0:
            raise bad("server-lr", "must be positive")
        if not self.round_timeout > 0:
            raise bad("round-timeout", "must be positive")
        if not self.task_list or any(t not in TASKS for t in self.task_list):
            raise bad("tasks", f"must name tasks from {', '.join(TASKS)}")
        if self.transactions < 1_000:
            raise bad("transactions", "must be at least 1000")
        SystemStage.parse(self.min_stage, "min-stage")
        if self.attack and self.attack not in ATTACKS:
            raise bad("attack", f"is not an attack; choose one of {', '.join(ATTACKS)}")
        if not 0.0 <= self.malicious < 1.0:
            raise bad("malicious", "must be in [0, 1)")
        if not (self.clip_factor > 0 and self.flag_norm > 0):
            raise ConfigError("clip-factor/flag-norm", "must be positive")
        if not -1.0 <= self.min_cosine <= 1.0:
            raise bad("min-cosine", "must be in [-1, 1]")
        if self.exclude_after < 1:
            raise bad("exclude-after", "must be at least 1")
        if self.central_dp not in ("", "fixed", "adaptive"):
            raise bad("central-dp", "must be empty, fixed or adaptive")
        if not (self.central_noise >= 0 and self.central_clip > 0):
            raise ConfigError("central-noise/central-clip", "noise must be >= 0 and the clipping norm > 0")
        if self.lifetime_epsilon < 0:
            raise bad("lifetime-epsilon", "must be >= 0 (0: no lifetime limit)")
        if self.malicious > 0 and not self.attack:
            raise ConfigError("malicious", "a share of malicious nodes needs --attack")
        if not RUN_NAME.fullmatch(self.run_name):
            # it names the privacy ledger <data-dir>/privacy/<run-name>.json on every node: no paths
            raise bad("run-name", "must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
        return self

    def to_run_config(self) -> dict[str, Any]:
        """Flower run config: dashed keys, scalar values."""
        return {k.replace("_", "-"): v for k, v in asdict(self).items()}

    @classmethod
    def from_run_config(cls, rc: Mapping[str, Any]) -> FederationConfig:
        """Read a Flower run config (unknown keys are ignored; types are coerced and checked)."""
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            key = f.name.replace("_", "-")
            if key not in rc:
                continue
            value = rc[key]
            default = getattr(cls, f.name)
            try:
                if isinstance(default, bool):
                    kwargs[f.name] = value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")
                elif isinstance(default, int):
                    if isinstance(value, float) and not value.is_integer():
                        raise ValueError
                    kwargs[f.name] = int(value)
                elif isinstance(default, float):
                    kwargs[f.name] = float(value)
                else:
                    kwargs[f.name] = str(value)
            except (TypeError, ValueError):
                raise ConfigError(key, f"{value!r} is not a valid {type(default).__name__}") from None
        return cls(**kwargs)
