"""What one federated round did, as the coordinator records it: :class:`RoundRecord`.

The round loop (:mod:`fl_server.app`) builds one record per round; ``metrics.json`` and the
checkpoints hold them as JSON (:meth:`RoundRecord.to_dict`, :meth:`RoundRecord.from_dict`); the
console and ``report.html`` (:mod:`anya_fl.simulation_report`) read them back. No torch and no Flower
here, so reports load without either.

Every train message the coordinator sends ends in exactly one of these, per round::

    sampled = len(replied) + len(failed) + missing
    len(replied) = len(rejected) + len(flagged) + len(kept)

- ``replied``: an update arrived (the raw replies, before screening), with the metrics the node reported;
- ``failed``: an error reply instead of an update (a node that declined included);
- ``missing``: no reply at all within the round's timeout;
- ``rejected``: a malformed update (NaN, wrong shapes or keys), dropped;
- ``flagged``: a valid update screening left out of this round's aggregation;
- ``kept``: the updates the strategy aggregated (possibly clipped).

JSON keys are the ones ``metrics.json`` has always had (``nodes_sampled``, ``nodes_replied``,
``nodes_missing``, ``nodes_failed``, ``nodes_declined``, ``screening``, ``train``, ``nodes``,
``global``, ``federated_eval``, ``seconds``, ``train_seconds``) plus ``nodes_rejected``,
``nodes_flagged`` and ``nodes_kept`` (node ids). Records written before those three existed load too:
their lists are rebuilt from the screening events, and ``missing`` is recounted from the replies,
because the writer of that time also counted screened-out nodes as missing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from core.fedconfig import DECLINE_ERROR_CODE

SCREENING_KINDS = ("rejected", "flagged", "clipped", "excluded")


@dataclass(frozen=True)
class NodeFailure:
    """A node's error reply to a train message: Flower's error code and the reason it gave."""

    node: str
    code: int | None
    reason: str

    @property
    def declined(self) -> bool:
        """The node declined (its health gate or privacy budget said no), rather than crashed."""
        return self.code == DECLINE_ERROR_CODE

    def to_dict(self) -> dict[str, Any]:
        return {"node": self.node, "code": self.code, "reason": self.reason}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> NodeFailure:
        code = d.get("code")
        return cls(node=str(d.get("node", "?")), code=_int(code), reason=str(d.get("reason", "")))


@dataclass(frozen=True)
class ScreeningEvent:
    """What screening did to one node's update: ``kind`` is one of :data:`SCREENING_KINDS`.

    ``consecutive`` (flagged only): in how many rounds in a row the node has been flagged.
    """

    node: str
    kind: str
    reason: str
    consecutive: int | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"node": self.node, "kind": self.kind, "reason": self.reason}
        if self.consecutive is not None:
            out["consecutive"] = self.consecutive
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ScreeningEvent:
        return cls(node=str(d.get("node", "?")), kind=str(d.get("kind", "")), reason=str(d.get("reason", "")),
                   consecutive=_int(d.get("consecutive")))


@dataclass
class RoundRecord:
    """One round: who was asked, who answered how, what screening did, and what the models scored."""

    round: int
    sampled: int = 0  # train messages sent, one per sampled node
    replied: dict[str, dict[str, float]] = field(default_factory=dict)  # node -> its metrics, for every update that arrived
    failed: list[NodeFailure] = field(default_factory=list)  # error replies (declines included)
    tasks_declined: dict[str, dict[str, str]] = field(default_factory=dict)  # node -> task it left untrained -> why
    task_aggregation: dict[str, str] = field(default_factory=dict)  # task -> how, when not over every kept node
    missing: int = 0  # sampled nodes that sent no reply at all
    rejected: list[str] = field(default_factory=list)  # malformed updates, dropped
    flagged: list[str] = field(default_factory=list)  # valid updates screening left out of this round
    kept: list[str] = field(default_factory=list)  # updates aggregated
    screening: list[ScreeningEvent] = field(default_factory=list)  # every rejection, flag, clip and exclusion, with why
    train: dict[str, float] = field(default_factory=dict)  # the strategy's aggregated train metrics
    global_metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # task -> metrics on the held-out set
    federated_eval: dict[str, float] = field(default_factory=dict)  # aggregated metrics of the nodes' own evaluation
    seconds: float = 0.0  # the whole round (train, screening, aggregation, evaluation)
    train_seconds: float = 0.0  # up to the aggregated model

    @property
    def declined(self) -> list[NodeFailure]:
        """The failures that are declines (the node chose not to train, and said why)."""
        return [f for f in self.failed if f.declined]

    @property
    def excluded(self) -> list[str]:
        """Nodes excluded for the rest of the run from this round on."""
        return [e.node for e in self.screening if e.kind == "excluded"]

    def to_dict(self) -> dict[str, Any]:
        """The ``metrics.json`` form (plain JSON types; the key order the file has always had)."""
        return {
            "round": self.round,
            "seconds": self.seconds,
            "train_seconds": self.train_seconds,
            "nodes_sampled": self.sampled,
            "nodes_replied": len(self.replied),
            "nodes_missing": self.missing,
            "nodes_failed": [f.to_dict() for f in self.failed],
            "nodes_declined": len(self.declined),
            "tasks_declined": {node: dict(t) for node, t in self.tasks_declined.items()},
            "task_aggregation": dict(self.task_aggregation),
            "nodes_rejected": list(self.rejected),
            "nodes_flagged": list(self.flagged),
            "nodes_kept": list(self.kept),
            "screening": [e.to_dict() for e in self.screening],
            "train": dict(self.train),
            "nodes": {node: dict(m) for node, m in self.replied.items()},
            "global": {task: dict(m) for task, m in self.global_metrics.items()},
            "federated_eval": dict(self.federated_eval),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RoundRecord:
        """A record from its ``metrics.json`` form; lenient: a missing or malformed part reads as empty.

        Reads records of every version of the file (see the module docstring for older ones).
        """
        replied = {str(node): dict(m) for node, m in _mapping(d.get("nodes")).items() if isinstance(m, Mapping)}
        failed = [NodeFailure.from_dict(f) for f in _list(d.get("nodes_failed")) if isinstance(f, Mapping)]
        screening = [ScreeningEvent.from_dict(e) for e in _list(d.get("screening")) if isinstance(e, Mapping)]
        sampled = _int(d.get("nodes_sampled")) or 0
        if "nodes_kept" in d:  # written with the three lists: every count is as recorded
            rejected, flagged, kept = (_ids(d.get(k)) for k in ("nodes_rejected", "nodes_flagged", "nodes_kept"))
            missing = _int(d.get("nodes_missing")) or 0
        else:  # older record: rebuild the lists; its nodes_missing also counted rejected and flagged nodes
            rejected = _event_nodes(screening, "rejected")
            flagged = [n for n in _event_nodes(screening, "flagged") if n not in rejected]
            kept = [n for n in replied if n not in rejected and n not in flagged]
            missing = max(0, sampled - len(replied) - len(failed))
        return cls(
            round=_int(d.get("round")) or 0,
            sampled=sampled,
            replied=replied,
            failed=failed,
            tasks_declined={str(n): {str(t): str(r) for t, r in _mapping(v).items()}
                            for n, v in _mapping(d.get("tasks_declined")).items()},
            task_aggregation={str(t): str(h) for t, h in _mapping(d.get("task_aggregation")).items()},
            missing=missing,
            rejected=rejected,
            flagged=flagged,
            kept=kept,
            screening=screening,
            train=dict(_mapping(d.get("train"))),
            global_metrics={str(t): dict(m) for t, m in _mapping(d.get("global")).items() if isinstance(m, Mapping)},
            federated_eval=dict(_mapping(d.get("federated_eval"))),
            seconds=_float(d.get("seconds")),
            train_seconds=_float(d.get("train_seconds")),
        )


def history_from_dicts(rows: Iterable[Any]) -> list[RoundRecord]:
    """The records of a ``metrics.json`` or checkpoint ``history`` list (entries that are not objects skipped)."""
    return [RoundRecord.from_dict(r) for r in rows if isinstance(r, Mapping)]


def history_to_dicts(history: Iterable[RoundRecord]) -> list[dict[str, Any]]:
    return [r.to_dict() for r in history]


def _mapping(v: Any) -> Mapping[str, Any]:
    return v if isinstance(v, Mapping) else {}


def _list(v: Any) -> list[Any]:
    return list(v) if isinstance(v, list | tuple) else []


def _ids(v: Any) -> list[str]:
    return [str(n) for n in _list(v)]


def _event_nodes(events: list[ScreeningEvent], kind: str) -> list[str]:
    return list(dict.fromkeys(e.node for e in events if e.kind == kind))


def _int(v: Any) -> int | None:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return None
    return int(v)


def _float(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return 0.0
    return float(v)
