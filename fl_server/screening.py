"""Update screening on the server, before any strategy sees the replies.

1. **Malformed updates are rejected**: missing or extra keys, wrong shapes, NaN or infinite values. The
   round goes on with the others.
2. **Norm and direction check** against the round's median update, per task: a node whose update
   norm exceeds ``flag_norm`` x the median norm, or whose cosine to the coordinate-wise median update
   is below ``min_cosine``, is flagged (with the reason) and left out of this round's aggregation.
3. **Norm clipping**: every kept update is clipped to ``clip_factor`` x the median norm.
4. **Exclusion**: a node flagged in ``exclude_after`` consecutive rounds is excluded for the rest of the run.

The medians are robust while fewer than half of the nodes attack. Each task is judged over the nodes
that trained it (a node without data for a task sends the global weights back for it): screening needs
at least 3 such updates to judge a task; with fewer it only rejects malformed ones and clips nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from flwr.app import Array, ArrayRecord, Message

from core.fedconfig import FederationConfig
from fl_server.round_record import RoundRecord, ScreeningEvent
from fl_server.task_groups import reply_metrics, task_of, trained

_FED = FederationConfig()


@dataclass(frozen=True)
class ScreeningConfig:
    """Screening settings; the defaults are FederationConfig's (the one source of each default)."""

    enabled: bool = _FED.screening
    clip_factor: float = _FED.clip_factor
    flag_norm: float = _FED.flag_norm
    min_cosine: float = _FED.min_cosine
    exclude_after: int = _FED.exclude_after

    @classmethod
    def of(cls, cfg: FederationConfig) -> ScreeningConfig:
        """The screening settings of a run."""
        return cls(enabled=cfg.screening, clip_factor=cfg.clip_factor, flag_norm=cfg.flag_norm,
                   min_cosine=cfg.min_cosine, exclude_after=cfg.exclude_after)


@dataclass
class ScreeningState:
    """Consecutive flags per node and the nodes excluded for the rest of the run."""

    consecutive: dict[int, int] = field(default_factory=dict)
    excluded: set[int] = field(default_factory=set)

    @classmethod
    def from_history(cls, history: Iterable[RoundRecord]) -> ScreeningState:
        """Rebuild the state from the recorded rounds (resume)."""
        state = cls()
        for rec in history:
            flagged = set()
            for e in rec.screening:
                node = int(e.node)
                if e.kind == "flagged":
                    flagged.add(node)
                    state.consecutive[node] = e.consecutive if e.consecutive is not None else 1
                elif e.kind == "excluded":
                    state.excluded.add(node)
            for node in list(state.consecutive):
                if node not in flagged:
                    state.consecutive[node] = 0
        return state


def _validate(arrays: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> str:
    """'' when ``arrays`` matches the global model's keys and shapes and is finite, else why not."""
    missing = sorted(set(reference) - set(arrays))
    extra = sorted(set(arrays) - set(reference))
    if missing or extra:
        return f"parameter keys differ (missing {missing[:2]}, unexpected {extra[:2]})"
    for key, ref in reference.items():
        a = arrays[key]
        if a.shape != ref.shape:
            return f"{key}: shape {a.shape}, expected {ref.shape}"
        if not np.isfinite(a).all():
            return f"{key}: NaN or infinite values"
    return ""


def screen(replies: list[Message], global_w: dict[str, np.ndarray], cfg: ScreeningConfig,
           state: ScreeningState) -> tuple[list[Message], list[ScreeningEvent]]:
    """The replies to aggregate (clipped in place) and what was rejected, flagged, clipped or excluded, with reasons.

    Error replies pass through untouched (the strategy skips them).
    """
    events: list[ScreeningEvent] = []
    valid: list[tuple[Message, dict[str, np.ndarray]]] = []
    for m in replies:
        if m.has_error():
            valid.append((m, {}))
            continue
        node = int(m.metadata.src_node_id)
        try:
            arrays = {k: np.asarray(v.numpy()) for k, v in m.content["arrays"].items()}
            why = _validate(arrays, global_w)
        except Exception as exc:  # noqa: BLE001 - anything unreadable is a malformed update
            why = f"unreadable arrays ({type(exc).__name__})"
        if why:
            events.append(ScreeningEvent(str(node), "rejected", why))
            continue
        valid.append((m, arrays))
    good = [(m, a) for m, a in valid if a]
    if not cfg.enabled or len(good) < 3:
        return [m for m, _ in valid], events

    tasks = sorted({task_of(k) for k in global_w})
    flagged: dict[int, list[str]] = {}
    scale: dict[tuple[int, str], float] = {}
    for t in tasks:
        # judged over the nodes that trained t: a node without data for it sent the global weights back
        rows = [i for i, (m, _) in enumerate(good) if trained(reply_metrics(m), t)]
        if len(rows) < 3:
            continue
        d = np.stack([np.concatenate([(good[i][1][k] - global_w[k]).ravel() for k in sorted(global_w)
                                      if task_of(k) == t]) for i in rows])
        norms = np.linalg.norm(d, axis=1)
        med_norm = float(np.median(norms))
        med_dir = np.median(d, axis=0)
        med_dir_norm = float(np.linalg.norm(med_dir))
        for j, i in enumerate(rows):
            m = good[i][0]
            node = int(m.metadata.src_node_id)
            if med_norm > 0 and norms[j] > cfg.flag_norm * med_norm:
                flagged.setdefault(node, []).append(f"{t}: update norm {norms[j] / med_norm:.1f}x the median")
            elif med_dir_norm > 0 and norms[j] > 0:
                cos = float(d[j] @ med_dir) / (norms[j] * med_dir_norm)
                if cos < cfg.min_cosine:
                    flagged.setdefault(node, []).append(f"{t}: cosine {cos:.2f} to the median update")
            if med_norm > 0 and norms[j] > cfg.clip_factor * med_norm:
                scale[(i, t)] = cfg.clip_factor * med_norm / norms[j]
    kept: list[Message] = [m for m, a in valid if not a]
    for i, (m, arrays) in enumerate(good):
        node = int(m.metadata.src_node_id)
        if node in flagged:
            state.consecutive[node] = state.consecutive.get(node, 0) + 1
            events.append(ScreeningEvent(str(node), "flagged", "; ".join(flagged[node]), state.consecutive[node]))
            if state.consecutive[node] >= cfg.exclude_after and node not in state.excluded:
                state.excluded.add(node)
                events.append(ScreeningEvent(str(node), "excluded",
                                             f"flagged in {state.consecutive[node]} consecutive rounds"))
            continue
        state.consecutive[node] = 0
        clipped = [t for t in tasks if (i, t) in scale]
        if clipped:
            new = {k: (global_w[k] + (a - global_w[k]) * scale[(i, task_of(k))]).astype(a.dtype)
                   if (i, task_of(k)) in scale else a for k, a in arrays.items()}
            m.content["arrays"] = ArrayRecord({k: Array(np.ascontiguousarray(new[k])) for k in m.content["arrays"].keys()})
            events.append(ScreeningEvent(str(node), "clipped", f"norm clipped for {', '.join(clipped)}"))
        kept.append(m)
    return kept, events
