"""Ground truth of a SimNode for tests and benches: what the simulator knows that a collector must infer."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from core.data.chain import START_HEIGHT
from core.errors import ConfigError

if TYPE_CHECKING:
    from anya_fl.simnode.node import SimNode


class Truth:
    """Answers from the simulator's own arrays (never from the RPC)."""

    def __init__(self, node: SimNode) -> None:
        self._node = node

    @property
    def own(self) -> np.ndarray:
        """Chain indices of this node's own transactions (its profile's share)."""
        return self._node.own

    def txid(self, i: int) -> str:
        return self._node.txs.txids[int(i)]

    def tx_index(self, txid: str) -> int:
        """Chain index of a transaction's txid; KeyError for any other txid (phantoms included)."""
        return self._node.txs.index[txid]

    def phantom_of(self, txid: str) -> int:
        """Chain index of the transaction a phantom's txid precedes; KeyError if it is not a phantom."""
        return int(self._node.timeline.phantom_of[self._node.txs.phantom_index[txid]])

    def phantom_txid(self, i: int) -> str | None:
        """Txid of chain transaction ``i``'s phantom, or None."""
        e = int(self._node.timeline.phantom_entry[int(i)])
        return None if e < 0 else self._node.txs.txid(e)

    def tx_rows(self, txids: Iterable[str]) -> np.ndarray:
        """``chain.tx_rows`` of these transactions, in order."""
        index = [self.tx_index(t) for t in txids]
        return self._node.chain.tx_rows[np.array(index, dtype=np.int64)]

    def block_txs(self, height: int) -> np.ndarray:
        """Chain indices of the canonical block at ``height``, in block order."""
        b = height - START_HEIGHT - 1
        if not 0 <= b < self._node.chain.n_blocks:
            raise ConfigError("height", f"{height} is not a block of the simulated chain")
        return self._node.timeline.block_txs(b)

    def mempool_at(self, t: float) -> np.ndarray:
        """Sorted chain indices in the node's mempool at simulated time ``t`` (evictions and double spends' removals
        applied; no phantoms, no double spends themselves, no reorg overlay)."""
        ids = self._node.timeline.mempool(t)
        return np.sort(ids[ids < self._node.timeline.n])

    def fee_label(self, tip_height: int, k: int) -> float:
        """The lowest fee rate (sat/vB) that entered one of the next ``k`` blocks after ``tip_height``:
        min of ``chain.block_threshold`` over heights tip+1..tip+k (the simulator's fee label)."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError("k", f"{k!r} must be an integer >= 1")
        b0 = tip_height - START_HEIGHT  # block index of height tip + 1
        chain = self._node.chain
        if b0 < 0 or b0 + k > chain.n_blocks:
            raise ConfigError("tip_height", f"blocks {tip_height + 1}..{tip_height + k} are not all in the simulated "
                                            f"chain ({START_HEIGHT + 1}..{START_HEIGHT + chain.n_blocks})")
        return float(chain.block_threshold[b0:b0 + k].min())

    def network_events(self, detail: bool = False) -> list[dict[str, Any]]:
        """The injected P2P scenarios as ``{kind, start, end}`` (simulated seconds; end None: open-ended), by
        start then injection order. ``detail`` adds each one's settings and peers: eclipse ``peers`` (the new
        outbound ids), inbound_flood ``per_min`` and ``peers``, addr_spam ``per_s``, ``peer`` (id) and ``addr``,
        partition ``height`` (the frozen tip), stale_fork ``height``, ``branchlen`` and ``hash``, double_spend
        ``txid`` (the replaced transaction), ``conflict`` (the replacing one's txid) and ``height`` (the block that
        confirms the conflict in the target's place, None if the target never confirms), rbf_replacement ``txid``,
        ``replacement`` and ``height`` (the same for a fee bump), mempool_flood ``vbytes_per_s``, ``fee_sat_vb``,
        ``tx_vsize`` and ``full_at`` (the first simulated time it filled the mempool to maxmempool, on the flood's
        10 s grid; None if it never does), slow_propagation ``delay_s`` and ``blocks``: per block mined in the window
        ``{height, mined, arrived}`` (when it joined the node's chain: ``mined + delay_s``, or the window's end if
        that is earlier; the ground truth of propagation delays, which one node cannot observe), degraded_relay
        ``blocks``: the same per block, with the ``saturation``, ``missing`` share and network ``lag`` behind its
        delay (``relay``)."""
        node = self._node
        net = node.network
        with node.lock:
            events = sorted(net.events, key=lambda e: (e.start, e.index))
            docs = [net.describe(e, detail) for e in events]
            for doc in docs:
                if detail and doc["kind"] == "mempool_flood" and node.flood is not None:
                    doc["full_at"] = node.flood.first_full()
            return docs
