"""The follower: polls Bitcoin Core over JSON-RPC and keeps the collector's store in step with it.

Each :meth:`Collector.poll_once`:

1. **Blocks.** From the last processed block (``meta``), checks that the node still has it at that height;
   if not, walks back to the fork point and rolls back the stored blocks above it (one transaction each:
   their transactions become unconfirmed, fee labels that looked at them are deleted), then connects the
   node's blocks one by one with ``getblockhash`` / ``getblock <hash> 3`` (2 when 3 is refused: input age
   then unknown). A block whose parent is not the stored tip restarts the walk (the chain moved). A block's
   new transactions are parsed with the block's height (``parse_block``); a stored mempool transaction whose
   input age was unknown (Core shows no prevouts for mempool transactions) takes it from the block.
2. **Mempool.** ``getrawmempool false true`` gives the txids and ``mempool_sequence``; when the sequence or
   the tip moved, the txid set is diffed with the stored mempool: new transactions are fetched
   (``getmempoolentry`` + ``getrawtransaction <txid> 2``; one ``getrawmempool true`` instead of the entries
   when many are new and the mempool is at most ``bulk_max_mempool``) and stored in chunks, parsed with the
   node's height at the fetch (the tip, as ``parse_transaction`` documents for mempool transactions); those
   that left without a block are marked ``replaced`` (a stored transaction spends one of their inputs) or
   ``evicted``. The mempool is read only while the node's tip equals the stored tip (checked before and
   after), so a snapshot's tip is exact.
3. **Snapshot.** One mempool snapshot per poll in which the sequence or the tip moved: the 12 MEMPOOL_SCHEMA
   features (``mempool_features`` of the stored mempool's fee rates ``fees.base / vsize`` and vsizes, with
   Core's ``minrelaytxfee``), the tip height and hash, and the node time: max(tip header ``time``, newest
   mempool entry ``time``, previous snapshot time) -- the newest time the node itself reported (Core has no
   clock RPC), never ahead of its clock, never going back. Transactions first seen in a poll arrived into
   the previous snapshot (when it is at most ``arrival_max_gap_s`` older), else into this one.
4. **Labels.** Blocks connected before this complete mempool view are judged (``labels.judge_block``: full
   when a transaction was certainly left waiting, or when the node's ``mempoolminfee`` is above
   ``minrelaytxfee``, i.e. it trims its mempool and refuses part of the demand), and each snapshot gets its
   fee label for target k once the k blocks after its tip are judged.

Transient node states are reported, never fatal: warm-up (-28), initial block download and connection
errors end the poll with a state (``run`` backs off); nothing is lost, since the next poll resumes from the
store. A reply missing a field or a transaction the parser refuses is logged, recorded in the ``skipped``
table and counted; the rest is collected. The collector's state goes through
:class:`core.health.autosave.AutoSaver` every 20th change (blocks connected or disconnected, mempool chunks
and snapshots).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.bitcoin.features import TX_SCHEMA, mempool_features
from core.bitcoin.parsing import parse_block, parse_transaction
from core.bitcoin.rpc import (
    RPC_IN_WARMUP,
    BitcoinRPC,
    RPCAuthError,
    RPCConnectionError,
    RPCMalformedReplyError,
    RPCReplyError,
    RPCTimeoutError,
)
from core.collector.labels import (
    AMBIGUOUS_S,
    COINBASE_RESERVE_WU,
    MAX_BLOCK_WEIGHT,
    judge_block,
    min_relay_sat_vb,
)
from core.collector.replies import (
    addresses,
    compact_entry,
    fee_fields,
    is_coinbase,
    mempool_reply,
    outpoints,
    require_int,
)
from core.collector.store import BlockRecord, CollectorStore, Removal, Skip, SnapshotRecord, TxRecord
from core.collector.zmq_wake import SequenceWaker, zmq_available
from core.data.datasets import FEE_TARGETS
from core.errors import AnyaError, ConfigError, FeatureError
from core.health.autosave import DEFAULT_EVERY, AutoSaver

__all__ = ["Collector", "CollectorSettings", "PollResult", "SequenceWaker", "zmq_available"]

log = logging.getLogger("anya_fl.collector")

RPC_NOT_FOUND = -5  # "Transaction not in mempool", "Block not found"
RPC_INVALID_PARAMETER = -8  # "Block height out of range"
RPC_METHOD_NOT_FOUND = -32601
_TX_INDEX = re.compile(r"tx\[(\d+)\]\.?(.*)")
_AGE_KNOWN = TX_SCHEMA.index("input_age_known")
STATE_FILE = "state.json"


@dataclass(frozen=True)
class CollectorSettings:
    """Knobs of the follower (defaults suit a mainnet node polled every few seconds)."""

    targets: tuple[int, ...] = FEE_TARGETS
    retain_days: float = 90.0
    max_mb: float = 2048.0
    backfill_blocks: int = 0  # blocks below the node's tip to start from on an empty store
    max_blocks_per_poll: int = 100  # catch-up in slices, so status and the mempool keep moving
    fetch_workers: int = 4  # parallel RPC fetches of new mempool transactions
    chunk: int = 2_000  # new mempool transactions stored per SQLite transaction
    bulk_entries: int = 500  # this many new txids or more: one getrawmempool true instead of getmempoolentry each
    bulk_max_mempool: int = 50_000  # never getrawmempool true above this mempool size (its reply needs ~1.3 kB/tx)
    arrival_max_gap_s: int = 900  # node seconds: an older previous snapshot is not a transaction's arrival state
    prune_every_polls: int = 120
    autosave_every: int = DEFAULT_EVERY
    cross_check: bool = True  # compare each block's lowest fee rate with getblockstats
    block_max_weight: int = MAX_BLOCK_WEIGHT  # the chain's block weight limit (a test chain may use less)

    def validate(self) -> CollectorSettings:
        if not self.targets or any(isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 1008
                                   for k in self.targets):
            raise ConfigError("targets", f"{self.targets!r} must be integers in 1..1008")
        for name in ("max_blocks_per_poll", "fetch_workers", "chunk", "bulk_entries", "bulk_max_mempool",
                     "prune_every_polls", "autosave_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(name.replace("_", "-"), f"{value!r} must be a whole number >= 1")
        if isinstance(self.backfill_blocks, bool) or not isinstance(self.backfill_blocks, int) or self.backfill_blocks < 0:
            raise ConfigError("backfill", f"{self.backfill_blocks!r} must be a whole number >= 0")
        if isinstance(self.block_max_weight, bool) or not isinstance(self.block_max_weight, int) \
                or self.block_max_weight <= COINBASE_RESERVE_WU:
            raise ConfigError("block-max-weight", f"{self.block_max_weight!r} must be a whole number > {COINBASE_RESERVE_WU}")
        if not self.retain_days > 0:
            raise ConfigError("retain-days", f"{self.retain_days!r} must be > 0")
        if not self.max_mb > 0:
            raise ConfigError("max-mb", f"{self.max_mb!r} must be > 0")
        return self


@dataclass
class PollResult:
    """What one poll did. ``state``: ok, catching_up (more blocks to fetch: poll again at once), warming_up
    (-28), syncing (the node is in initial block download), unreachable, error (a bad reply: skipped, counted)."""

    state: str
    message: str = ""
    tip_height: int | None = None
    node_height: int | None = None
    blocks_connected: int = 0
    blocks_disconnected: int = 0
    new_txs: int = 0
    removed: int = 0
    snapshot_id: int | None = None
    labels_added: int = 0
    skipped: int = 0
    pruned: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def caught_up(self) -> bool:
        return self.state == "ok"


class _Restart(Exception):
    """The node's chain moved while a walk was under way: walk again."""


class _MempoolView:
    """The stored mempool in memory: txid -> slot in arrays of fee rate, vsize and entry time (compact: about
    150 bytes a transaction, most of it the txid string and its dict slot)."""

    def __init__(self, rows: Iterable[tuple[str, float, int, int]]) -> None:
        self.slot: dict[str, int] = {}
        self.rate = np.zeros(1024, dtype=np.float64)
        self.vsize = np.zeros(1024, dtype=np.float64)
        self.time = np.zeros(1024, dtype=np.int64)
        self.live = np.zeros(1024, dtype=bool)
        self._free: list[int] = []
        for t, r, v, s in rows:
            self.add(t, r, v, s)

    def __len__(self) -> int:
        return len(self.slot)

    def __contains__(self, txid: object) -> bool:
        return txid in self.slot

    def add(self, txid: str, rate: float, vsize: int, time: int) -> None:
        i = self.slot.get(txid)
        if i is None:
            if self._free:
                i = self._free.pop()
            else:
                i = len(self.slot)
                if i == len(self.live):
                    for name in ("rate", "vsize", "time", "live"):
                        arr = getattr(self, name)
                        setattr(self, name, np.concatenate((arr, np.zeros_like(arr))))
            self.slot[txid] = i
        self.rate[i], self.vsize[i], self.time[i], self.live[i] = rate, vsize, time, True

    def discard(self, txid: str) -> None:
        i = self.slot.pop(txid, None)
        if i is not None:
            self.live[i] = False
            self._free.append(i)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, int | None]:
        """Fee rates and vsizes of the mempool, and its newest entry time."""
        live = self.live
        return self.rate[live], self.vsize[live], int(self.time[live].max()) if live.any() else None


class Collector:
    """Follows one Bitcoin Core node into one store. Not thread-safe: one poller at a time (``run``)."""

    def __init__(self, rpc: BitcoinRPC, store: CollectorStore, settings: CollectorSettings | None = None, *,
                 state_path: str | Path | None = None) -> None:
        self.rpc = rpc
        self.store = store
        self.settings = (settings or CollectorSettings()).validate()
        self._lock = threading.RLock()
        path = Path(state_path) if state_path is not None else store.path.parent / STATE_FILE
        self.autosave = AutoSaver(self._state, every=self.settings.autosave_every, path=path, name="collector")
        restored = self.autosave.restore()
        self.totals: dict[str, int] = {k: 0 for k in (
            "polls", "blocks_connected", "blocks_disconnected", "reorgs", "txs_from_mempool", "txs_from_blocks",
            "replaced", "evicted", "vanished", "skipped", "snapshots", "fee_labels", "errors")}
        if restored is not None:
            for k, v in restored.state.get("totals", {}).items():
                if k in self.totals and isinstance(v, int):
                    self.totals[k] = v
        self.view = _MempoolView(store.pending())
        self._refused: set[str] = set()  # mempool txids refused in this session (not fetched again)
        self._block_verbosity = 3
        self._raw_verbosity: int | bool = 2
        self._cross_check = self.settings.cross_check
        self._executor: ThreadPoolExecutor | None = None
        self.status: dict[str, Any] = {"state": "starting", "message": "", "peers": None, "node_height": None,
                                       "mempool_bytes": None, "mempool_size": None, "last_poll_at": None}
        self.messages: deque[str] = deque(maxlen=20)
        self.last_result: PollResult | None = None
        self._polls_since_prune = self.settings.prune_every_polls  # prune at the first complete poll
        self._min_relay = float(store.get_meta("min_relay", 1.0))
        self._mempool_full = False

    # ---- lifecycle

    def close(self) -> None:
        """Stop the fetch threads and write the state one last time."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        with self._lock:
            snap = self.autosave.snapshot_now()
        self.autosave.flush(snap)

    def __enter__(self) -> Collector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _state(self) -> dict[str, Any]:
        """What the auto-saver writes: tip, mempool summary, peers, resources, totals."""
        tip = self.store.tip()
        rss = None
        try:
            import psutil

            rss = round(psutil.Process().memory_info().rss / 2**20, 1)
        except Exception:  # noqa: BLE001 - resources are informative only
            pass
        return {
            "tip_height": tip[0] if tip else None, "tip_hash": tip[1] if tip else None,
            "mempool": {"count": len(self.view), "sequence": self.store.get_meta("mempool_sequence"),
                        "node_size": self.status.get("mempool_size"), "node_bytes": self.status.get("mempool_bytes")},
            "peers": self.status.get("peers"), "node_height": self.status.get("node_height"),
            "state": self.status.get("state"), "message": self.status.get("message"),
            "resources": {"rss_mb": rss, "store_mb": round(self.store.used_bytes() / 2**20, 3)},
            "totals": dict(self.totals),
        }

    def _changed(self, n: int = 1) -> None:
        """Count ``n`` changes for the auto-saver (every 20th snapshots the state)."""
        with self._lock:
            snap = self.autosave.tick(n)
        self.autosave.flush(snap)

    def _note(self, message: str, level: int = logging.INFO) -> None:
        log.log(level, message)
        self.messages.append(message)

    def _skip(self, skips: list[Skip], skip: Skip) -> None:
        skips.append(skip)
        self.totals["skipped"] += 1
        self._note(f"skipped {skip.kind} {skip.ref}: {skip.reason}", logging.WARNING)

    # ---- polling

    def poll_once(self) -> PollResult:
        """One round: blocks, mempool, snapshot, labels. Transient node problems end it with a state."""
        t0 = time.perf_counter()
        res = PollResult("ok")
        self.totals["polls"] += 1
        try:
            self._poll(res)
        except RPCAuthError:
            raise
        except RPCReplyError as exc:
            if exc.code == RPC_IN_WARMUP:
                res.state, res.message = "warming_up", f"node warming up: {exc.rpc_message}"
            else:
                res.state, res.message = "error", str(exc)
                self.totals["errors"] += 1
        except (RPCConnectionError, RPCTimeoutError) as exc:
            res.state, res.message = "unreachable", str(exc)
        except RPCMalformedReplyError as exc:
            skips: list[Skip] = []
            self._skip(skips, Skip("reply", exc.method, exc.problem, exc.field))
            self.store.record_skips(skips)
            res.state, res.message, res.skipped = "error", str(exc), res.skipped + 1
            self.totals["errors"] += 1
        res.tip_height = (self.store.tip() or (None, None))[0]
        res.seconds = time.perf_counter() - t0
        self.status.update(state=res.state, message=res.message, last_poll_at=time.time())
        if res.state not in ("ok", "catching_up"):
            self._note(res.message, logging.WARNING)
        self.last_result = res
        return res

    def sync(self, max_polls: int = 10_000) -> PollResult:
        """Poll until caught up with the node (or a poll ends in another state); returns the last result."""
        res = self.poll_once()
        for _ in range(max_polls - 1):
            if res.state != "catching_up":
                break
            res = self.poll_once()
        return res

    def run(self, stop: threading.Event, interval_s: float = 5.0, *, zmq_endpoint: str | None = None,
            on_poll: Callable[[PollResult], None] | None = None, max_backoff_s: float = 60.0) -> None:
        """Poll until ``stop`` is set: every ``interval_s`` (sooner on a ZMQ ``sequence`` message), at once
        while catching up, with exponential back-off while the node is unreachable or warming up."""
        if not interval_s > 0:
            raise ConfigError("interval", f"{interval_s!r} must be > 0 seconds")
        wake = threading.Event()
        waker = None
        if zmq_endpoint:
            if zmq_available():
                waker = SequenceWaker(zmq_endpoint, wake).start()
            else:
                self._note("pyzmq is not installed: --zmq ignored, polling only", logging.WARNING)
        delay = interval_s
        try:
            while not stop.is_set():
                wake.clear()
                res = self.poll_once()
                if on_poll is not None:
                    on_poll(res)
                if res.state == "catching_up":
                    continue
                delay = (min(delay * 2, max_backoff_s) if res.state in ("unreachable", "warming_up", "syncing")
                         else interval_s)
                end = time.monotonic() + delay
                while not stop.is_set() and not wake.is_set():
                    left = end - time.monotonic()
                    if left <= 0:
                        break
                    stop.wait(min(left, 0.05 if waker is not None else left))
        finally:
            if waker is not None:
                waker.close()

    def _poll(self, res: PollResult) -> None:
        info = self.rpc.getblockchaininfo()
        self.status["node_height"] = info["blocks"]
        res.node_height = info["blocks"]
        if info["initialblockdownload"]:
            res.state = "syncing"
            res.message = (f"node in initial block download ({100 * info['verificationprogress']:.2f} % verified, "
                           f"block {info['blocks']} of {info['headers']} headers): waiting")
            return
        for _ in range(5):
            try:
                caught_up = self._sync_blocks(info, res)
            except _Restart:
                info = self.rpc.getblockchaininfo()
                continue
            if not caught_up:
                res.tip_height = (self.store.tip() or (None, None))[0]
                res.state, res.message = "catching_up", f"catching up: at block {res.tip_height} of {info['blocks']}"
                return
            mempool = self.rpc.call("getrawmempool", False, True)
            best = self.rpc.call("getbestblockhash")
            tip = self.store.tip()
            if tip is not None and best == tip[1]:
                break
            info = self.rpc.getblockchaininfo()
        else:
            res.state, res.message = "catching_up", "the chain kept moving while reading the mempool"
            return
        self._node_status()
        self._sync_mempool(mempool, tip, res)
        self._judge_blocks()
        res.labels_added = self.store.label_fee_snapshots(self.settings.targets, self.store.judged_height() or -1)
        self.totals["fee_labels"] += res.labels_added
        self._polls_since_prune += 1
        if self._polls_since_prune >= self.settings.prune_every_polls:
            self._polls_since_prune = 0
            res.pruned = self.store.prune(self.settings.retain_days, self.settings.max_mb)
            if any(res.pruned.values()):
                self._note("pruned " + ", ".join(f"{v} {k}" for k, v in res.pruned.items() if v))

    def _node_status(self) -> None:
        """Peers (informative: a refused getnetworkinfo is ignored), mempool size, and the relay and mempool
        minimum fees from getmempoolinfo."""
        try:
            net = self.rpc.getnetworkinfo()
            self.status["peers"] = net["connections"]
        except RPCReplyError:
            pass
        info = self.rpc.getmempoolinfo()
        self.status.update(mempool_size=info["size"], mempool_bytes=info["bytes"])
        relay = min_relay_sat_vb(info["minrelaytxfee"])
        # a node whose mempool minimum fee is above the relay minimum has been trimming to -maxmempool and refuses
        # transactions that pay less: more was waiting than it shows, so a block certainly left some behind
        self._mempool_full = min_relay_sat_vb(info["mempoolminfee"]) > relay
        if relay != self._min_relay:
            self._min_relay = relay
            self.store.set_meta(min_relay=relay)

    # ---- blocks

    def _sync_blocks(self, info: Mapping[str, Any], res: PollResult) -> bool:
        """Bring the stored chain to the node's tip; False when more blocks remain (catch-up slice)."""
        node_h = int(info["blocks"])
        tip = self.store.tip()
        if tip is None:
            start = max(0, node_h - self.settings.backfill_blocks)
            self._note(f"new store: starting at block {start} (node tip {node_h})")
            fork = start - 1
        else:
            fork = self._fork_point(tip, node_h)
            while (tip := self.store.tip()) is not None and tip[0] > fork:
                out = self.store.disconnect_block(tip[1])
                self.totals["blocks_disconnected"] += 1
                res.blocks_disconnected += 1
                for t, r, v, s in out.pop("pending"):
                    self.view.add(t, r, v, s)
                self._note(f"reorg: disconnected block {out['height']} {tip[1][:16]}… ({out['transactions']} "
                           f"transactions unconfirmed, {out['fee_labels']} fee labels dropped)")
                self._changed()
            if res.blocks_disconnected:
                self.totals["reorgs"] += 1
        budget = self.settings.max_blocks_per_poll
        h = fork + 1
        while h <= node_h:
            if budget == 0:
                return False
            try:
                block = self._getblock(self.rpc.getblockhash(h))
            except RPCReplyError as exc:
                if exc.code in (RPC_NOT_FOUND, RPC_INVALID_PARAMETER):  # the chain changed under the walk
                    raise _Restart() from None
                raise
            self._connect(block, res)
            budget -= 1
            h += 1
        return True

    def _fork_point(self, tip: tuple[int, str], node_h: int) -> int:
        """The highest stored height whose block the node still has at that height."""
        h = min(tip[0], node_h)
        lowest = self.store.lowest_connected_height()
        while lowest is not None and h >= lowest:
            ours = self.store.connected_hash(h)
            if ours is not None and ours == self.rpc.getblockhash(h):
                return h
            h -= 1
        raise AnyaError(f"the node's chain forks below the oldest stored block ({lowest}): a reorg deeper than "
                        f"the store; move {self.store.path} away to start a new store")

    def _getblock(self, block_hash: str) -> dict[str, Any]:
        if self._block_verbosity == 3:
            try:
                return self.rpc.getblock(block_hash, 3)
            except RPCReplyError as exc:
                if exc.code in (RPC_IN_WARMUP, RPC_NOT_FOUND):
                    raise
                self._block_verbosity = 2
                self._note(f"getblock verbosity 3 refused ({exc.rpc_message}): using 2, input age unknown",
                           logging.WARNING)
        return self.rpc.getblock(block_hash, 2)

    def _connect(self, block: dict[str, Any], res: PollResult) -> None:
        """Store one block (its parent must be the stored tip) with its transactions, in one transaction."""
        block_hash, height = block["hash"], int(block["height"])
        prev = block.get("previousblockhash")
        try:
            header_time = require_int(block, "time")
            if height > 0 and not isinstance(prev, str):
                raise FeatureError("previousblockhash", "missing" if prev is None else f"expected a string, got {prev!r}")
        except FeatureError as exc:
            raise RPCMalformedReplyError(exc.problem, url=self.rpc.url, method=f"getblock {block_hash}",
                                         field=exc.field) from None
        tip = self.store.tip()
        if tip is not None and prev != tip[1]:
            raise _Restart()
        skips: list[Skip] = []
        body: list[tuple[int, str, dict]] = []
        rates: list[float] = []
        tx_weight = total_fee = 0
        for i, tx in enumerate(block["tx"]):
            if i == 0 and is_coinbase(tx):
                continue
            ref = f"block {height} tx[{i}]"
            if not isinstance(tx, Mapping) or not isinstance(tx.get("txid"), str):
                self._skip(skips, Skip("transaction", ref, "not a transaction object with a txid", "txid"))
                continue
            body.append((i, tx["txid"], tx))
            try:
                fee_sat, vsize, weight = fee_fields(tx)
            except FeatureError as exc:
                self._skip(skips, Skip("block_fee", tx["txid"], f"{ref}: {exc}; left out of the block's fee "
                                       "statistics", exc.field))
                continue
            rates.append(fee_sat / vsize)
            tx_weight += weight
            total_fee += fee_sat
        existing = self.store.existing_txids(t for _, t, _ in body)
        fresh = [(i, t, tx) for i, t, tx in body if t not in existing]
        rows = self._parse_group([tx for _, _, tx in fresh], [f"block {height} tx[{i}] {t}" for i, t, _ in fresh],
                                 height, skips)
        updates: dict[str, np.ndarray] = {}
        if self._block_verbosity == 3:  # input age of mempool transactions first seen without prevouts
            late = [(i, t, tx) for i, t, tx in body if existing.get(t) is False]
            rows_late = self._parse_group([tx for _, _, tx in late], [f"block {height} tx[{i}] {t}" for i, t, _ in late],
                                          height, [])
            updates = {t: row for (_, t, _), row in zip(late, rows_late, strict=True)
                       if row is not None and row[_AGE_KNOWN] > 0}
        arrival = self.store.snapshot_at_parent(height, prev) if fresh else None
        records = []
        for (_, txid, tx), row in zip(fresh, rows, strict=True):
            if row is None:
                continue
            try:
                fee_sat, vsize, weight = fee_fields(tx)
            except FeatureError:
                continue  # recorded above (block_fee)
            records.append(TxRecord(
                txid=txid, features=row, fee_sat=fee_sat, vsize=vsize, weight=weight, first_seen=header_time,
                seen_in_mempool=False, first_seen_tip=None, entry_height=None, arrival_snapshot=arrival,
                inputs=outpoints(tx), addresses=addresses(tx)))
        r = np.sort(np.array(rates)) if rates else None
        record = BlockRecord(
            hash=block_hash, height=height, prev_hash=prev, time=header_time,
            mediantime=block.get("mediantime") if isinstance(block.get("mediantime"), int) else None,
            weight=int(block["weight"]) if isinstance(block.get("weight"), int) else tx_weight,
            tx_weight=tx_weight, tx_count=len(body), total_fee_sat=total_fee,
            min_fee_rate=float(r[0]) if r is not None else None,
            median_fee_rate=float(np.median(r)) if r is not None else None,
            max_fee_rate=float(r[-1]) if r is not None else None,
            input_age_known=self._block_verbosity == 3)
        confirmed = [t for _, t, _ in body if t in existing]
        self.store.connect_block(record, records, confirmed, skips, features=updates)
        for t in confirmed:
            self.view.discard(t)
        self._refused.difference_update(t for _, t, _ in fresh)
        self.totals["blocks_connected"] += 1
        self.totals["txs_from_blocks"] += len(records)
        res.blocks_connected += 1
        res.skipped += len(skips)
        self._changed()
        if self._cross_check and r is not None:
            self._check_blockstats(block_hash, height, float(r[0]), len(body))

    def _check_blockstats(self, block_hash: str, height: int, min_rate: float, n_tx: int) -> None:
        """Cross-check the block's lowest fee rate and transaction count with getblockstats."""
        try:
            stats = self.rpc.call("getblockstats", block_hash, ["minfeerate", "txs"])
        except RPCReplyError as exc:
            if exc.code in (RPC_METHOD_NOT_FOUND, RPC_INVALID_PARAMETER):
                self._cross_check = False
            return
        if not isinstance(stats, Mapping):
            return
        core_min, core_txs = stats.get("minfeerate"), stats.get("txs")
        problems = []
        if isinstance(core_txs, int) and core_txs - 1 != n_tx:
            problems.append(f"{core_txs - 1} non-coinbase transactions per getblockstats, {n_tx} read")
        if isinstance(core_min, int | float) and abs(core_min - min_rate) > 1.0:
            problems.append(f"lowest fee rate {min_rate:.3f} sat/vB, getblockstats says {core_min}")
        if problems:
            self._note(f"block {height} cross-check: " + "; ".join(problems), logging.WARNING)

    # ---- parsing

    def _parse_group(self, txs: list[dict], refs: list[str], h: int, skips: list[Skip]) -> list[np.ndarray | None]:
        """TX_SCHEMA rows for ``txs`` (None for a refused one), batch-parsed with input ages counted from
        height ``h`` (the block holding them, or the tip for mempool transactions, as the parser documents)."""
        out: list[np.ndarray | None] = [None] * len(txs)
        if txs:
            todo = list(range(len(txs)))
            failures = 0
            while todo and failures < 3:
                try:
                    rows = parse_block({"height": h, "tx": [txs[j] for j in todo]})
                except FeatureError as exc:
                    m = _TX_INDEX.match(exc.field)
                    if not m or int(m.group(1)) >= len(todo):
                        break
                    bad = todo.pop(int(m.group(1)))
                    self._refuse(txs[bad], refs[bad], FeatureError(m.group(2) or exc.field, exc.problem), skips)
                    failures += 1
                    continue
                for j, row in zip(todo, rows, strict=True):
                    out[j] = row
                todo = []
            for j in todo:  # many refusals: one at a time
                try:
                    out[j] = parse_transaction(txs[j], height=h)
                except FeatureError as exc:
                    self._refuse(txs[j], refs[j], exc, skips)
        return out

    def _refuse(self, tx: Mapping, ref: str, exc: FeatureError, skips: list[Skip]) -> None:
        self._skip(skips, Skip("transaction", str(tx.get("txid", ref)), f"{ref}: {exc.field}: {exc.problem}",
                               exc.field))

    # ---- mempool

    def _sync_mempool(self, reply: Any, tip: tuple[int, str], res: PollResult) -> None:
        try:
            txids, seq = mempool_reply(reply)
        except FeatureError as exc:
            raise RPCMalformedReplyError(exc.problem, url=self.rpc.url, method="getrawmempool false true",
                                         field=exc.field) from None
        last = self.store.last_snapshot()
        if (seq is not None and seq == self.store.get_meta("mempool_sequence") and last is not None
                and last[3] == tip[1] and self.store.get_meta("mempool_tip_hash") == tip[1]):
            return  # nothing moved since the last snapshot
        present = set(txids)
        new = [t for t in txids if t not in self.view and t not in self._refused]
        gone = [t for t in self.view.slot if t not in present]
        self._refused &= present
        new_from = self.store.max_tx_id()
        if new:
            self._fetch_new(new, len(txids), tip, res)
        removals = []
        for t in gone:
            by = self.store.spenders(t)
            removals.append(Removal(t, "replaced" if by else "evicted", by))
            self.view.discard(t)
            self.totals["replaced" if by else "evicted"] += 1
        res.removed = len(removals)
        rate, size, newest = self.view.arrays()
        snap_time = self._snapshot_time(tip, newest, last)
        features = mempool_features(rate, size, self._min_relay)
        arrival = last[0] if last is not None and snap_time - last[1] <= self.settings.arrival_max_gap_s else None
        res.snapshot_id = self.store.finish_mempool_batch(
            SnapshotRecord(snap_time, tip[0], tip[1], features, seq), removals, removed_at=snap_time,
            removed_tip=tip[0], new_from_id=new_from, arrival=arrival,
            meta={"mempool_sequence": seq, "mempool_tip": tip[0], "mempool_tip_hash": tip[1],
                  "node_time": snap_time})
        self.totals["snapshots"] += 1
        self._changed()

    def _snapshot_time(self, tip: tuple[int, str], newest_entry: int | None, last: tuple | None) -> int:
        """Node time of a snapshot: max(tip header time, newest mempool entry time, previous snapshot time).

        Core has no clock RPC; these are the newest times the node itself reported, so the value never runs
        ahead of the node's clock and never goes backwards.
        """
        row = self.store.db.execute("SELECT time FROM blocks WHERE hash = ?", (tip[1],)).fetchone()
        candidates = [row[0] if row else 0, newest_entry or 0, last[1] if last else 0]
        return int(max(candidates))

    def _fetch_new(self, new: list[str], mempool_size: int, tip: tuple[int, str], res: PollResult) -> None:
        """Fetch, parse and store new mempool transactions in chunks.

        The entries come from one ``getrawmempool true`` when there are many (``bulk_entries``) or they are a
        large share (1/50) of the mempool, and the mempool is not too large for one reply (``bulk_max_mempool``);
        else from ``getmempoolentry`` each.
        """
        entries: dict[str, Any] | None = None
        if mempool_size <= self.settings.bulk_max_mempool and (
                len(new) >= self.settings.bulk_entries or len(new) * 50 >= mempool_size):
            reply = self.rpc.call("getrawmempool", True)
            if not isinstance(reply, Mapping):
                raise RPCMalformedReplyError("expected an object of txid -> entry", url=self.rpc.url,
                                             method="getrawmempool true", field="result")
            wanted = set(new)
            entries = {t: compact_entry(e) for t, e in reply.items() if t in wanted}  # the reply itself goes
            del reply
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.settings.fetch_workers, thread_name_prefix="collector-fetch")
        for start in range(0, len(new), self.settings.chunk):
            part = new[start:start + self.settings.chunk]
            height, fetched = self._fetch_chunk(part, entries, tip[0])
            chunk_skips: list[Skip] = []
            ok: list[tuple[str, None, dict, tuple[int, int, int, int]]] = []
            for txid, fields, tx, problem in fetched:
                if problem is not None:
                    self._refused.add(txid)
                    self._skip(chunk_skips, problem)
                elif fields is None:
                    self.totals["vanished"] += 1
                else:
                    if "fee" not in tx:  # Core shows a mempool transaction's fee only in its entry
                        tx = {**tx, "fee": fields[0] / 1e8}
                    ok.append((txid, None, tx, fields))
            rows = self._parse_group([tx for _, _, tx, _ in ok], [f"mempool tx {t}" for t, _, _, _ in ok], height,
                                     chunk_skips)
            records = []
            for (txid, _, tx, (fee_sat, vsize, t_entry, h_entry)), row in zip(ok, rows, strict=True):
                if row is None:
                    self._refused.add(txid)
                    continue
                weight = int(tx.get("weight") or vsize * 4)
                records.append(TxRecord(
                    txid=txid, features=row, fee_sat=fee_sat, vsize=vsize, weight=weight, first_seen=t_entry,
                    seen_in_mempool=True, first_seen_tip=tip[0], entry_height=h_entry, arrival_snapshot=None,
                    inputs=outpoints(tx), addresses=addresses(tx)))
            self.store.add_mempool_txs(records, chunk_skips)
            for rec in records:
                self.view.add(rec.txid, rec.fee_rate, rec.vsize, rec.first_seen)
            self.totals["txs_from_mempool"] += len(records)
            res.new_txs += len(records)
            res.skipped += len(chunk_skips)
            self._changed()

    def _fetch_chunk(self, part: list[str], entries: Mapping[str, Any] | None,
                     tip_height: int) -> tuple[int, list[tuple[str, Any, Any, Skip | None]]]:
        """Fetch ``part``; returns the node's height the transactions were read at (their input ages count from
        it, as the parser documents for mempool transactions) with what was fetched. When a block arrived during
        the fetch that height is unknown: the chunk is fetched once more, then the later height is taken."""
        before = tip_height
        for _ in range(2):
            fetched = list(self._executor.map(lambda t: self._fetch_one(t, entries), part))
            after = self.rpc.getblockcount()
            if after == before:
                break
            before = after
        return after, fetched

    def _fetch_one(self, txid: str, entries: Mapping[str, Any] | None) -> tuple[str, Any, Any, Skip | None]:
        """(txid, entry fields, transaction, problem); fields None when the transaction left the mempool meanwhile.

        The entry fields are (fee_sat, vsize, time, height), from ``entries`` (``getrawmempool true``, compacted)
        or ``getmempoolentry``.
        """
        try:
            if entries is not None:
                fields = entries.get(txid)
                if fields is None:
                    return txid, None, None, None
            else:
                fields = compact_entry(self.rpc.call("getmempoolentry", txid))
            if isinstance(fields, FeatureError):
                return txid, None, None, Skip("mempool_entry", txid, f"mempool entry {txid}: {fields}", fields.field)
            tx = self._getrawtransaction(txid)
            if isinstance(tx, Mapping) and "blockhash" in tx:
                # mined since getrawmempool (a node with -txindex answers for confirmed transactions): the block
                # path stores it, with input ages counted from its block rather than from the tip
                return txid, None, None, None
        except RPCReplyError as exc:
            if exc.code == RPC_NOT_FOUND:
                return txid, None, None, None
            if exc.code == RPC_IN_WARMUP:
                raise
            return txid, None, None, Skip("transaction", txid, str(exc))
        except RPCMalformedReplyError as exc:
            return txid, None, None, Skip("transaction", txid, str(exc), exc.field)
        return txid, fields, tx, None

    def _getrawtransaction(self, txid: str) -> dict[str, Any]:
        if self._raw_verbosity == 2:
            try:
                return self.rpc.getrawtransaction(txid, 2)
            except RPCReplyError as exc:
                if exc.code in (RPC_NOT_FOUND, RPC_IN_WARMUP):
                    raise
                self._raw_verbosity = True
                self._note(f"getrawtransaction verbosity 2 refused ({exc.rpc_message}): fee from the mempool "
                           "entry, input age unknown", logging.WARNING)
        return self.rpc.getrawtransaction(txid, True)

    # ---- thresholds

    def _judge_blocks(self) -> None:
        """Judge every connected block up to the last complete mempool view (labels.judge_block)."""
        upto = self.store.get_meta("mempool_tip")
        if upto is None:
            return
        for block_hash, height, header_time, tx_weight, _tx_count, min_rate in self.store.unjudged_blocks(upto):
            certain = self._mempool_full or self.store.any_waiting_before(height, header_time,
                                                                          header_time - AMBIGUOUS_S - 1)
            ambiguous = [] if certain else [
                (r, w) for _, r, w, _ in self.store.waiting_candidates(height, header_time, header_time - AMBIGUOUS_S)]
            max_waiting = None
            if certain and min_rate is None:
                max_waiting = max((r for s, r, _, fst in self.store.waiting_candidates(height, header_time, -2**62)
                                   if s <= header_time - AMBIGUOUS_S - 1 or (fst is not None and fst < height)),
                                  default=None)
            j = judge_block(min_included=min_rate, tx_weight=tx_weight, certain_waiting=certain, ambiguous=ambiguous,
                            min_relay=self._min_relay, max_waiting_rate=max_waiting,
                            weight_limit=self.settings.block_max_weight - COINBASE_RESERVE_WU)
            if not j.full and not self.store.observed_at_tip(height, block_hash):
                # "room" needs the whole mempool seen while this block was the tip: a block mined during a gap
                # (a start, a restart, two blocks in one poll) may have left waiting transactions that the next
                # block took before the collector looked. Waiting evidence, where there is some, stays valid.
                self.store.set_threshold(block_hash, None, None, "unobserved")
                continue
            evidence = "mempool-min-fee" if self._mempool_full and j.full else j.evidence
            self.store.set_threshold(block_hash, j.full, j.threshold, evidence)

    # ---- summary

    def summary(self) -> dict[str, Any]:
        """Totals, the node status and the last poll, for the CLI's live display."""
        return {"status": dict(self.status), "totals": dict(self.totals),
                "last": asdict(self.last_result) if self.last_result else None, "messages": list(self.messages)}
