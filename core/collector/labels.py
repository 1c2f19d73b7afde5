"""Labels the collector derives or reads: block thresholds and fee labels, and the operator's fraud labels.

Fee labels follow the simulator's definition (``core.data.chain.Chain.fee_labels``) exactly:

* A block's **threshold** is the fee rate (sat/vB, float64 ``fee_sat / vsize`` with ``fee_sat =
  round(fee * 1e8)`` from ``getblock <hash> 2|3``) of the lowest-rate transaction it included when the
  block was **full**, i.e. some transaction that had arrived by the block's time was left waiting; else the
  node's minimum relay fee (``getmempoolinfo.minrelaytxfee``, 1 sat/vB by default). A full block that
  included nothing takes the highest waiting fee rate.
* The **fee label** of a snapshot taken when the tip was at height ``h``, for target ``k``, is the minimum
  threshold over the blocks at heights ``h+1 .. h+k`` of the active chain.

Whether a block left a transaction waiting is judged from what the node showed (:func:`judge_block`): a
transaction seen in the mempool, not confirmed by the block, that had certainly arrived before it (seen by
the collector while the tip was below the block, or a mempool ``time`` at least 2 s before the block
header's ``time``; Core's times are whole seconds). A transaction whose entry time is within the last
second before the header time is ambiguous; it is ruled out when the block's own content shows it was not
there (the miner takes the highest fee rates first: a higher rate than the block's lowest, or one that
would still have fitted, would have been included), else counted as waiting (entry time <= header time).
A node whose ``mempoolminfee`` is above ``minrelaytxfee`` is trimming its mempool and refusing part of the
demand: a block judged then counts as full. Transactions later replaced (RBF) are not counted as waiting.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from core.bitcoin.features import DEFAULT_MIN_RELAY_SAT_VB, SATS_PER_BTC
from core.collector.store import Skip
from core.errors import ConfigError

__all__ = [
    "BLOCK_TX_WEIGHT_LIMIT",
    "BlockJudgement",
    "OperatorLabels",
    "fee_rate",
    "judge_block",
    "min_relay_sat_vb",
    "read_operator_labels",
]

# Core's default -blockmaxweight (MAX_BLOCK_WEIGHT 4,000,000 - 4,000 reserved for the coinbase): the weight a
# block template gives its non-coinbase transactions, and the simulator's per-block limit.
MAX_BLOCK_WEIGHT = 4_000_000
COINBASE_RESERVE_WU = 4_000
BLOCK_TX_WEIGHT_LIMIT = MAX_BLOCK_WEIGHT - COINBASE_RESERVE_WU
AMBIGUOUS_S = 1  # entry times within this many seconds before the header time may follow the block


def fee_rate(fee_btc: float, vsize: int) -> float:
    """sat/vB as float64: ``round(fee * 1e8) / vsize``."""
    return int(round(fee_btc * SATS_PER_BTC)) / vsize


def min_relay_sat_vb(minrelaytxfee_btc_kvb: float | None) -> float:
    """Core's ``minrelaytxfee`` (BTC/kvB) in sat/vB, exact for Core's 8-decimal values (0.00001 -> 1.0)."""
    if minrelaytxfee_btc_kvb is None:
        return DEFAULT_MIN_RELAY_SAT_VB
    return int(round(minrelaytxfee_btc_kvb * SATS_PER_BTC)) / 1000


class BlockJudgement(NamedTuple):
    """Whether a block was full, its threshold (sat/vB) and what decided it."""

    full: bool
    threshold: float
    evidence: str  # waiting | ambiguous-waiting | room | room-inferred


def judge_block(*, min_included: float | None, tx_weight: int, certain_waiting: bool,
                ambiguous: Sequence[tuple[float, int]], min_relay: float, max_waiting_rate: float | None = None,
                weight_limit: int = BLOCK_TX_WEIGHT_LIMIT) -> BlockJudgement:
    """A block's threshold from its lowest included fee rate and the transactions it may have left waiting.

    ``certain_waiting``: a transaction certainly available to the block was not included. ``ambiguous``:
    (fee rate, weight) of transactions whose entry time does not tell whether they arrived before the block.
    ``max_waiting_rate``: the highest fee rate waiting (the threshold of a full block that included nothing).
    """
    waiting, evidence = certain_waiting, "waiting"
    if not waiting:
        for rate, weight in ambiguous:
            higher = min_included is not None and rate > min_included  # it would have been taken first
            fits = tx_weight + weight <= weight_limit  # it would have been taken next
            if not higher and not fits:
                waiting, evidence = True, "ambiguous-waiting"
                break
        else:
            evidence = "room-inferred" if ambiguous else "room"
    if not waiting:
        return BlockJudgement(False, float(min_relay), evidence)
    if min_included is None:
        return BlockJudgement(True, float(max_waiting_rate if max_waiting_rate is not None else min_relay), evidence)
    return BlockJudgement(True, float(min_included), evidence)


# --------------------------------------------------------------------------------------------
# Operator labels
# --------------------------------------------------------------------------------------------

_TXID = re.compile(r"[0-9a-fA-F]{64}")
_ADDRESS = re.compile(r"[0-9A-Za-z]{14,90}")
LABEL_VALUES = {"illicit": 1, "licit": 0}


@dataclass
class OperatorLabels:
    """Labels read from the operator's file: (kind, id, 1 illicit / 0 licit) and the refused lines."""

    labels: list[tuple[str, str, int]]
    skipped: list[Skip]
    lines: int

    @property
    def summary(self) -> dict[str, int]:
        kinds = {"txid": 0, "address": 0}
        for kind, _, _ in self.labels:
            kinds[kind] += 1
        return {"lines": self.lines, "labels": len(self.labels), "skipped": len(self.skipped), **kinds,
                "illicit": sum(lab for _, _, lab in self.labels)}


def read_operator_labels(path: str | Path) -> OperatorLabels:
    """Read ``kind,id,label`` lines (kind txid|address, label illicit|licit; a header line, blank lines and
    ``#`` comments are ignored) or bare txids (illicit). Bad lines are skipped and reported with their line
    number; a later line that contradicts an earlier one for the same id is skipped too."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError("labels", f"{p} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("labels", f"cannot read {p} ({getattr(exc, 'strerror', None) or exc})") from None
    seen: dict[tuple[str, str], tuple[int, int]] = {}
    skipped: list[Skip] = []
    lines = text.splitlines()
    first = True

    def bad(n: int, reason: str) -> None:
        skipped.append(Skip("label_line", f"{p.name}:{n}", f"line {n}: {reason}"))

    for n, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        header, first = first, False
        if "," not in line:
            if not _TXID.fullmatch(line):
                bad(n, f"{_short(line)!r} is not a txid (64 hex digits) nor a 'kind,id,label' line")
                continue
            kind, ident, label = "txid", line.lower(), 1
        else:
            fields = [f.strip() for f in next(csv.reader([line]))]
            if header and [f.lower() for f in fields] == ["kind", "id", "label"]:
                continue
            if len(fields) != 3:
                bad(n, f"expected 3 fields kind,id,label, got {len(fields)}")
                continue
            kind, ident, label_text = fields[0].lower(), fields[1], fields[2].lower()
            if kind not in ("txid", "address"):
                bad(n, f"kind {_short(fields[0])!r} is not 'txid' or 'address'")
                continue
            if label_text not in LABEL_VALUES:
                bad(n, f"label {_short(fields[2])!r} is not 'illicit' or 'licit'")
                continue
            if kind == "txid" and not _TXID.fullmatch(ident):
                bad(n, f"txid {_short(ident)!r} is not 64 hex digits")
                continue
            if kind == "address" and not _ADDRESS.fullmatch(ident):
                bad(n, f"address {_short(ident)!r} is not a Bitcoin address (14-90 letters and digits)")
                continue
            ident = ident.lower() if kind == "txid" else ident
            label = LABEL_VALUES[label_text]
        earlier = seen.get((kind, ident))
        if earlier is not None:
            if earlier[1] != label:
                bad(n, f"{kind} {ident} is labeled {'illicit' if earlier[1] else 'licit'} on line {earlier[0]}")
            continue
        seen[(kind, ident)] = (n, label)
    labels = [(kind, ident, lab) for (kind, ident), (_, lab) in seen.items()]
    return OperatorLabels(labels, skipped, len(lines))


def _short(text: str) -> str:
    return text if len(text) <= 40 else text[:37] + "..."
