"""SimNode: a simulated Bitcoin Core node serving a simulated chain as it unfolds in accelerated time.

At simulated time T the node has the blocks with ``block_time <= T`` (tip = START_HEIGHT + their count) and a
mempool of the transactions that arrived by T and are not yet in a block (plus scenario effects: phantoms,
evictions, a reorg's dropped transactions, double spends). Everything is a function of T and the scenario events
injected so far, so any simulated time can be answered without replaying requests. P2P-side scenarios (eclipse,
inbound flood, addr spam, partition, stale fork, slow propagation) are in ``network_scenarios``; a partition freezes
the node's chain, a slow propagation holds each block back ``delay_s`` after it is mined.
A double spend (``inject_double_spend``), an RBF fee bump (``inject_rbf_bump``) and a mempool flood
(``inject_mempool_flood``, modelled in ``flood``) are recorded with them for ground truth.
"""

from __future__ import annotations

import csv
import io
import math
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from anya_fl.simnode import relay
from anya_fl.simnode.blocks import Blocks, Reorg, View
from anya_fl.simnode.config import INCREMENTAL_SAT_VB, MIN_RELAY_SAT_VB, SimNodeConfig
from anya_fl.simnode.encoding import hex_id
from anya_fl.simnode.flood import MempoolFlood
from anya_fl.simnode.network_scenarios import (
    CHAIN_WINDOWS,
    Network,
    NetworkEvent,
    check_positive,
    check_time,
    held_time,
    slow_arrival,
)
from anya_fl.simnode.peers import Peer, make_peers
from anya_fl.simnode.render import TxRenderer, btc
from anya_fl.simnode.rpc import CoreRPC
from anya_fl.simnode.server import RPCAuth, RPCServer
from anya_fl.simnode.timeline import Timeline
from anya_fl.simnode.truth import Truth
from core.bitcoin.fee_estimator import BucketFeeEstimator
from core.data.categories import PROFILE_ORDER
from core.data.chain import START_HEIGHT, ChainConfig, simulate_chain
from core.data.datasets import partition_nodes
from core.errors import ConfigError
from core.seeding import stream
from core.storage import atomic_write_bytes

STALE_FORK_BRANCH = 1_000_000  # block branch numbers of stale forks (reorgs use 1, 2, ...)


class SimClock:
    """Simulated seconds: ``start`` + ``speed`` x wall seconds while running + manual advances."""

    def __init__(self, start: float, speed: float) -> None:
        self._start = start
        self._speed = speed
        self._offset = 0.0
        self._wall0: float | None = None
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            running = self._speed * (time.monotonic() - self._wall0) if self._wall0 is not None else 0.0
            return self._start + self._offset + running

    def run(self) -> None:
        with self._lock:
            if self._wall0 is None and self._speed > 0:
                self._wall0 = time.monotonic()

    def freeze(self) -> None:
        with self._lock:
            if self._wall0 is not None:
                self._offset += self._speed * (time.monotonic() - self._wall0)
                self._wall0 = None

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._offset += seconds

    def set(self, t: float) -> None:
        """Jump to simulated time ``t`` and hold it there (a running clock stops; tests and the stub use this:
        the node's state is a function of time, so going back is allowed)."""
        self.freeze()
        with self._lock:
            self._offset = t - self._start


class SimNode:
    """A simulated Bitcoin Core node; ``start(port)`` serves its JSON-RPC on 127.0.0.1 (see the package doc)."""

    def __init__(self, config: SimNodeConfig) -> None:
        cfg = config.validate()
        self.config = cfg
        self.chain = simulate_chain(ChainConfig(n_transactions=cfg.transactions, seed=cfg.seed,
                                                block_weight_limit=cfg.block_weight_limit))
        if cfg.start_block >= self.chain.n_blocks:
            raise ConfigError("simnode.start_block", f"{cfg.start_block} is beyond the simulated chain's "
                                                     f"{self.chain.n_blocks} blocks (0..{self.chain.n_blocks - 1})")
        self.timeline = Timeline(self.chain, cfg.seed, cfg.maxmempool_bytes, cfg.replacement_share)
        self.txs = TxRenderer(self.chain, cfg.seed, self.timeline.phantom_of, self.timeline.phantom_fee)
        self.blocks = Blocks(self.chain, self.timeline, self.txs, cfg.seed)
        self.t_start = float(self.chain.block_time[cfg.start_block])
        self.start_height = START_HEIGHT + 1 + cfg.start_block
        self.clock = SimClock(self.t_start, cfg.speed)
        shard = partition_nodes(self.chain, len(PROFILE_ORDER), cfg.seed)[PROFILE_ORDER.index(cfg.profile)]
        self.own = shard.tx_index  # this operator's transactions (partition_nodes' dealing by profile affinity)
        self.peers = make_peers(cfg.seed, self.t_start)  # the original outbound peers
        self.network = Network(cfg.seed, self.peers, self.true_tip)
        self._coinbases = {hex_id(f"anya-fl simnode coinbase {cfg.seed} {h} 0"): (h, 0)
                           for h in range(self.blocks.first, self.blocks.first + self.chain.n_blocks)}
        self.lock = threading.RLock()
        self._reorgs: list[Reorg] = []
        self._estimator: BucketFeeEstimator | None = None
        self._estimator_nb = 0
        self._outage_until: float | None = None
        self.flood: MempoolFlood | None = None  # an injected mempool flood (inject_mempool_flood)
        cookie = None if cfg.rpcuser is not None else Path(cfg.cookie_dir or ".") / ".cookie"
        self._auth = RPCAuth(cfg.rpcuser, cfg.rpcpassword, cookie)
        self.rpc = CoreRPC(self)
        self.server = RPCServer(self.rpc, self._auth)
        self._port: int | None = None
        self._started = False
        self._ticker: threading.Thread | None = None
        self._stopping = threading.Event()
        self.truth = Truth(self)
        self.last_error: str | None = None  # why re-listening after an outage failed, if it did

    # ---- lifecycle

    def start(self, port: int = 0) -> SimNode:
        """Write the cookie (cookie auth), listen on 127.0.0.1:``port`` (0: a free one), start the clock."""
        if self._started:
            return self
        if self._auth.cookie_path is not None:
            self._auth.rotate_cookie()
        try:
            self.server.start(port)
        except OSError as exc:
            self._auth.remove_cookie()
            raise ConfigError("port", f"cannot listen on 127.0.0.1:{port} ({exc.strerror or exc})") from None
        self._port = self.server.port
        self._started = True
        self.clock.run()
        self._stopping.clear()
        if self.config.speed > 0:
            self._ticker = threading.Thread(target=self._tick, name="simnode-clock", daemon=True)
            self._ticker.start()
        return self

    def stop(self) -> None:
        """Stop listening, remove the cookie, freeze the clock."""
        self._stopping.set()
        if self._ticker is not None:
            self._ticker.join(timeout=5)
            self._ticker = None
        self.server.stop()
        self._auth.remove_cookie()
        self.clock.freeze()
        self._outage_until = None
        self._started = False

    def __enter__(self) -> SimNode:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _tick(self) -> None:
        while not self._stopping.wait(0.02):
            self._poll()

    def _poll(self) -> None:
        """End an outage whose window has passed: listen again on the same port."""
        with self.lock:
            if self._outage_until is None or self.now() < self._outage_until or not self._started:
                return
            self._outage_until = None
            try:
                self.server.start(self.port)
            except OSError as exc:
                self.last_error = f"cannot listen again on 127.0.0.1:{self.port} ({exc.strerror or exc})"

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("start() the node first")
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def cookie_path(self) -> Path | None:
        return self._auth.cookie_path

    @property
    def auth(self) -> tuple[str, str]:
        """(user, password) for a client: rpcuser/rpcpassword, or ``__cookie__`` and the cookie's secret."""
        return self._auth.credentials()

    @property
    def listening(self) -> bool:
        return self.server.listening

    # ---- time and state

    def now(self) -> float:
        """Simulated seconds on the chain's time axis (core.data.chain)."""
        return self.clock.now()

    def advance(self, seconds: float) -> None:
        """Move simulated time forward by ``seconds`` (the manual clock of speed 0; also works while running)."""
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds >= 0 \
                or math.isinf(seconds):
            raise ConfigError("seconds", f"{seconds!r} must be a finite number >= 0")
        self.clock.advance(float(seconds))
        self._poll()

    def view(self, t: float | None = None) -> View:
        """The node at simulated time ``t`` (now by default); its blocks are those mined by
        ``network.chain_time(t)``: during a partition those it had at the partition's start, during a slow
        propagation those mined ``delay_s`` ago (a stale branch shown then stays shown until the next block after
        it arrives)."""
        t = self.now() if t is None else t
        t_chain = self.network.chain_time(t)
        nb = self.timeline.blocks_at(t_chain)
        reorgs = tuple(r for r in self._reorgs if r.t_start <= t)
        shown = next((r for r in reorgs if t_chain < r.t_end), None)
        return View(t, nb, START_HEIGHT + nb, shown, reorgs)

    def true_tip(self, t: float) -> int:
        """The simulated chain's tip height at ``t`` (what the network has, whatever the node has)."""
        return START_HEIGHT + self.timeline.blocks_at(t)

    def headers_tip(self, t: float) -> int:
        """The best header height the node has at ``t`` (getblockchaininfo.headers): the true tip, except during
        a partition (the tip it had at the start: it receives nothing)."""
        return self.true_tip(self.network.header_time(t))

    def peers_at(self, t: float) -> list[Peer]:
        """The peers connected at simulated time ``t``, by id (outbound and inbound)."""
        return [c.peer for c in self.network.connected(t)]

    def tip_height(self) -> int:
        return self.view().tip

    def locate(self, e: int, v: View) -> Any:
        """Where entry ``e`` is in ``v``: "mempool", a block key (height, branch), or None.

        A transaction replaced by a double spend is nowhere from the replacement on; the double spend holds its
        place in the mempool and in the block that would have held it."""
        tl = self.timeline
        if tl.replaced(e, v.t):
            return None
        i = tl.slot_of(e)
        if i is not None and (i == e or tl.e_enter[e] <= v.t):
            b = int(tl.confirm_block[i])
            r = v.reorg
            if r is not None and b >= 0 and r.covers(self.blocks.first + b):
                return "mempool" if r.dropped_mask[i] else (self.blocks.first + b, r.id)
            if 0 <= b < v.nb:
                return (self.blocks.first + b, 0)
        return "mempool" if tl.alive(e, v.t) else None

    def in_block(self, e: int, key: tuple[int, int], t: float | None = None) -> bool:
        """Whether entry ``e`` is one of block ``key``'s transactions (active or not) at simulated time ``t``
        (now by default): a double spend takes its target's place from its injection on."""
        tl = self.timeline
        t = self.now() if t is None else t
        i = tl.slot_of(e)
        if i is None or tl.replaced(e, t) or (i != e and t < tl.e_enter[e]):
            return False
        return bool(np.isin(i, self.blocks.members(key)))

    def block_conflicts(self, key: tuple[int, int], t: float) -> list[tuple[int, int]]:
        """(target, double spend entry) pairs whose double spend takes the target's place in block ``key`` at ``t``."""
        tl = self.timeline
        if not tl.conflicts:
            return []
        members = self.blocks.members(key)
        return [(int(tl.e_tx[c]), c) for c in tl.conflicts
                if tl.e_enter[c] <= t and bool(np.isin(tl.e_tx[c], members))]

    def coinbase_doc(self, key: tuple[int, int], t: float) -> dict[str, Any]:
        """Block ``key``'s coinbase; its reward includes the extra fees of the double spends it confirms."""
        doc = self.blocks.coinbase(key)
        extra = sum(self.txs.fee_sat(c) - self.txs.fee_sat(i) for i, c in self.block_conflicts(key, t))
        if extra:
            doc["vout"][0] = {**doc["vout"][0], "value": btc(round(doc["vout"][0]["value"] * 1e8) + extra)}
        return doc

    def spenders(self, i: int) -> list[int]:
        """Entries spending chain transaction ``i``'s inputs: itself, its phantom, its double spend."""
        tl = self.timeline
        out = [i]
        if tl.phantom_entry[i] >= 0:
            out.append(int(tl.phantom_entry[i]))
        if i in tl.conflict_entry:
            out.append(tl.conflict_entry[i])
        return out

    def coinbase_block(self, txid: str, v: View) -> tuple[int, int] | None:
        """The active block whose coinbase has ``txid``, or None."""
        key = self._coinbases.get(txid)
        return key if key is not None and self.blocks.active(key[0], v) == key else None

    def mempool_sequence(self, v: View) -> int:
        """Core's mempool sequence: +1 per entry added or removed, including a reorg's disconnects and connects."""
        seq = self.timeline.sequence(v.t)
        for r in v.reorgs:
            seq += r.n_canonical + r.n_kept  # canonical blocks disconnected (adds), stale ones connected
            if self.network.chain_time(v.t) >= r.t_end:
                seq += r.n_kept + r.n_canonical  # stale blocks disconnected, canonical ones connected again
        return seq

    def mempool_min_fee(self, t: float) -> float:
        """mempoolminfee in sat/vB: the rolling minimum after evictions (a flood's included), at least
        minrelaytxfee."""
        flood = self.flood.min_fee(t) if self.flood is not None else 0.0
        return max(self.timeline.rolling_min_fee(t), flood, MIN_RELAY_SAT_VB)

    def flood_count(self, t: float, real_vbytes: int) -> int:
        """Flood transactions in the mempool at ``t`` beside ``real_vbytes`` of the simulated ones (0: no flood)."""
        return 0 if self.flood is None else self.flood.count(t, real_vbytes)

    def estimator(self, nb: int) -> BucketFeeEstimator:
        """The Core-style fee estimator fed with the first ``nb`` canonical blocks (as core.data.replay)."""
        with self.lock:
            if self._estimator is None or self._estimator_nb > nb:
                self._estimator, self._estimator_nb = BucketFeeEstimator(), 0
            tl, tx = self.timeline, self.chain.tx
            rate = tx["fee_sat"] / tx["vsize"]
            for b in range(self._estimator_nb, nb):
                done = tl.block_txs(b)
                snap = tl.snapshots[b]
                self._estimator.process_block(self.blocks.first + b, tx["entry_height"][done], rate[done],
                                              tl.e_height[snap], tl.e_rate[snap])
            self._estimator_nb = max(self._estimator_nb, nb)
            return self._estimator

    # ---- scenarios

    def inject_reorg(self, depth: int) -> None:
        """Show the top ``depth`` blocks as a stale branch until the next canonical block arrives.

        The stale blocks have other hashes and hold the higher-fee half of each canonical block's transactions;
        the lower-fee half goes back to the mempool. When the next canonical block is mined the node reorgs
        to the canonical chain (the canonical blocks plus the new one) and getchaintips lists the stale branch
        as a valid-fork with branchlen ``depth``. The canonical chain itself is never altered.
        """
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise ConfigError("depth", f"{depth!r} must be an integer >= 1")
        with self.lock:
            v = self.view()
            if v.reorg is not None:
                raise ConfigError("depth", "a stale branch is already shown until the next block; inject the next "
                                           "reorg after it")
            if depth > v.nb:
                raise ConfigError("depth", f"{depth} is more than the {v.nb} blocks mined so far")
            first = v.tip - depth + 1
            kept: dict[int, np.ndarray] = {}
            dropped = []
            n_canonical = 0
            for h in range(first, v.tip + 1):
                members = self.timeline.block_txs(h - self.blocks.first)  # fee rate descending
                keep = len(members) - len(members) // 2
                kept[h] = members[:keep]
                dropped.append(members[keep:])
                n_canonical += len(members)
            gone = np.sort(np.concatenate(dropped))
            mask = np.zeros(self.timeline.n, dtype=bool)
            mask[gone] = True
            t_end = float(self.chain.block_time[v.nb]) if v.nb < self.chain.n_blocks else math.inf
            reorg = Reorg(id=len(self._reorgs) + 1, depth=depth, t_start=v.t, t_end=t_end, first_height=first,
                          top_height=v.tip, kept=kept, dropped=gone, dropped_mask=mask, n_canonical=n_canonical,
                          n_kept=n_canonical - len(gone))
            self.blocks.add_reorg(reorg)
            for h in range(first, v.tip + 1):
                self._coinbases[hex_id(f"anya-fl simnode coinbase {self.config.seed} {h} {reorg.id}")] = (h, reorg.id)
            self._reorgs.append(reorg)

    def inject_outage(self, sim_seconds: float) -> None:
        """Make the RPC unreachable (connection refused) for ``sim_seconds``, then listen on the same port."""
        if isinstance(sim_seconds, bool) or not isinstance(sim_seconds, int | float) or not 0 < sim_seconds < math.inf:
            raise ConfigError("sim_seconds", f"{sim_seconds!r} must be a positive number of simulated seconds")
        with self.lock:
            if not self._started:
                raise ConfigError("outage", "start() the node before injecting an outage")
            until = self.now() + float(sim_seconds)
            self._outage_until = until if self._outage_until is None else max(until, self._outage_until)
            self.server.stop()

    @property
    def in_outage(self) -> bool:
        return self._outage_until is not None

    # ---- P2P scenarios (network_scenarios)

    def _start(self, at_s: float | None) -> float:
        return self.now() if at_s is None else check_time("at_s", at_s, self.t_start)

    def _event(self, kind: str, start: float, end: float | None, **fields: Any) -> NetworkEvent:
        """The next event (its index the injection order), not yet added."""
        return NetworkEvent(index=len(self.network.events), kind=kind, start=start, end=end, **fields)

    def _add_event(self, kind: str, start: float, end: float | None, **fields: Any) -> NetworkEvent:
        event = self._event(kind, start, end, **fields)
        self.network.add(event)
        return event

    def inject_eclipse(self, at_s: float | None = None) -> None:
        """From ``at_s`` (None: now) every outbound peer is replaced by a new one (new id, conntime ``at_s``,
        the same connection type per slot), all with IPv4 addresses in 198.51.0.0/16 and one AS."""
        with self.lock:
            self._add_event("eclipse", self._start(at_s), None)

    def inject_inbound_flood(self, at_s: float | None = None, per_min: float = 40.0,
                             duration_s: float = 1800.0) -> None:
        """Inbound peers connect at ``per_min`` a minute during [at_s, at_s + duration_s] (the j-th at
        ``at_s + j x 60 / per_min``), up to 115 inbound (125 slots less 10 outbound); they stay connected."""
        rate = check_positive("per_min", per_min)
        duration = check_positive("duration_s", duration_s)
        with self.lock:
            start = self._start(at_s)
            self._add_event("inbound_flood", start, start + duration, rate=rate)

    def inject_addr_spam(self, at_s: float | None = None, per_s: float = 50.0, duration_s: float = 1800.0) -> None:
        """One outbound full-relay peer connected at ``at_s`` (picked by the seed) sends ``per_s`` addresses a
        second during the window: its addr_processed grows at most 0.1/s once Core's bucket of 1,000 is used up,
        addr_rate_limited takes the rest, bytesrecv_per_msg["addrv2"] grows 30 bytes per address."""
        rate = check_positive("per_s", per_s)
        duration = check_positive("duration_s", duration_s)
        with self.lock:
            start = self._start(at_s)
            self._add_event("addr_spam", start, start + duration, rate=rate)

    def inject_partition(self, at_s: float | None = None, duration_s: float = 5400.0) -> None:
        """The node receives nothing during [at_s, at_s + duration_s): its chain (getblockcount, getbestblockhash,
        getblockchaininfo blocks and headers, getblockhash, getblock, getblockheader, getchaintips, getblockstats,
        gettxoutsetinfo, estimatesmartfee) stays at the blocks it had at ``at_s`` (higher blocks are unknown: -8 /
        -5, as Core), while peers' synced_headers/synced_blocks report the true tip; at the end the node has the
        true chain again (it catches up at once).

        Simplification: the mempool is not frozen. It stays the simulated mempool of the current time, so the
        transactions of blocks mined during the partition leave it when they are mined, as if confirmed, and
        getrawtransaction does not find them until the node catches up.
        """
        duration = check_positive("duration_s", duration_s)
        with self.lock:
            start = self._start(at_s)
            self._add_chain_window(self._event("partition", start, start + duration, height=self.true_tip(start)))

    def inject_slow_propagation(self, at_s: float | None = None, delay_s: float = 120.0,
                                duration_s: float = 3600.0) -> None:
        """Blocks reach the node slowly during [at_s, at_s + duration_s): a block mined at ``tb`` in the window is
        announced at once (peers' synced_headers/synced_blocks and getblockchaininfo.headers show the true tip:
        the headers arrive) but joins the node's chain (getblockcount, getbestblockhash, getblockchaininfo.blocks,
        getblock*, getchaintips, ...) only at ``tb + delay_s``. The node's chain time is ``max(at_s, t -
        delay_s)`` (the partition's mechanism, ``network_scenarios.held_time``), so it never goes backwards; at
        the end the node catches up at once. Recorded as kind "slow_propagation" (detail: ``delay_s`` and, per
        block mined in the window, its ``height``, ``mined`` and ``arrived`` times: what one node cannot see).

        Simplifications: as for a partition the mempool is not held back (a block's transactions leave it when the
        block is mined); a block announced but not yet arrived is not shown as a headers-only tip in getchaintips
        nor served by getblockheader (-5 until it arrives).
        """
        delay = check_positive("delay_s", delay_s)
        duration = check_positive("duration_s", duration_s)
        with self.lock:
            start = self._start(at_s)
            end = start + duration
            window = self._event("slow_propagation", start, end, delay_s=delay)
            times = self.chain.block_time
            blocks = [{"height": self.blocks.first + b, "mined": float(times[b]),
                       "arrived": slow_arrival(window, float(times[b]))}
                      for b in range(self.timeline.blocks_at(start), self.timeline.blocks_at(end)) if times[b] < end]
            self._add_chain_window(replace(window, extra={"blocks": blocks}))

    def inject_degraded_relay(self, at_s: float | None = None, duration_s: float = 6 * 3600.0) -> None:
        """The node's link saturates during [at_s, at_s + duration_s) (``relay``): outbound pings grow, the
        high-bandwidth compact block peers go, and a block mined in the window joins the node's chain
        ``relay.arrival_delay`` after it is mined, from the peer mix then (headers arrive at once, as in a slow
        propagation; at the end the node catches up). Recorded as kind "degraded_relay" (detail: per block mined
        in the window its ``height``, ``mined``, ``arrived`` and the ``saturation``, ``missing`` share and ``lag``
        behind its delay: what one node cannot see). Simplifications as for a slow propagation."""
        duration = check_positive("duration_s", duration_s)
        with self.lock:
            start = self._start(at_s)
            end = start + duration
            window = self._event("degraded_relay", start, end)
            times = self.chain.block_time
            blocks: list[dict[str, float]] = []
            last = start
            for b in range(self.timeline.blocks_at(start), self.timeline.blocks_at(end)):
                mined = float(times[b])
                if not start < mined < end:
                    continue
                height = self.blocks.first + b
                s = relay.saturation(start, end, mined)
                pings = [relay.ping(p.ping_s, s) for p in self.peers_at(mined) if p.connection_type != "inbound"]
                lag, missing = relay.block_draws(self.config.seed, window.index, height)
                last = min(max(mined + relay.arrival_delay(pings, relay.hb_peers(s), missing, s, lag), last), end)
                blocks.append({"height": height, "mined": mined, "arrived": last, "saturation": s,
                               "missing": missing, "lag": lag})
            self._add_chain_window(replace(window, extra={"blocks": blocks}))

    def _add_chain_window(self, window: NetworkEvent) -> None:
        """Add a chain window (``network_scenarios.CHAIN_WINDOWS``), refusing one that overlaps another chain window,
        starts before an injected reorg, or would hold the chain below an injected stale fork's tip."""
        kind, start, end = window.kind, window.start, window.end
        assert end is not None
        for e in self.network.events:
            if e.kind in CHAIN_WINDOWS:
                assert e.end is not None
                if start < e.end and e.start < end:
                    raise ConfigError("at_s", f"the {kind} [{start}, {end}) overlaps the {e.kind} "
                                              f"[{e.start}, {e.end})")
        if any(r.t_start > start for r in self._reorgs):
            raise ConfigError("at_s", f"{start} is before an injected reorg; a {kind} starts after the reorgs "
                                      f"injected so far")
        for e in self.network.of_kind("stale_fork"):
            if window.active(e.start) and e.height > (held := self.true_tip(held_time(window, e.start))):
                raise ConfigError("at_s", f"the stale fork at {e.start} (height {e.height}) would be above the "
                                          f"{kind}'s tip {held} then")
        self.network.add(window)

    def inject_stale_fork(self, at_s: float | None = None, branchlen: int = 2) -> None:
        """From ``at_s`` getchaintips lists a valid-fork tip of ``branchlen`` blocks off the active chain: blocks
        at the heights of the active tip at ``at_s`` and below it, with other hashes (determined by the seed)
        and the same transactions as the canonical blocks; getblock/getblockheader know them from ``at_s``."""
        if isinstance(branchlen, bool) or not isinstance(branchlen, int) or branchlen < 1:
            raise ConfigError("branchlen", f"{branchlen!r} must be an integer >= 1")
        with self.lock:
            start = self._start(at_s)
            v = self.view(start)
            if branchlen > v.nb:
                raise ConfigError("branchlen", f"{branchlen} is more than the {v.nb} blocks mined at {start}")
            index = len(self.network.events)
            branch = STALE_FORK_BRANCH + index
            first = v.tip - branchlen + 1
            kept = {h: self.timeline.block_txs(h - self.blocks.first) for h in range(first, v.tip + 1)}
            empty = np.zeros(0, dtype=np.int64)
            self.blocks.add_reorg(Reorg(id=branch, depth=branchlen, t_start=start, t_end=start, first_height=first,
                                        top_height=v.tip, kept=kept, dropped=empty,
                                        dropped_mask=np.zeros(0, dtype=bool)))
            self._add_event("stale_fork", start, None, branchlen=branchlen, height=v.tip, branch=branch,
                            extra={"hash": self.blocks.hash(v.tip, branch)})

    def inject_mempool_flood(self, at_s: float | None = None, vbytes_per_s: float = 50_000.0, fee_sat_vb: float = 1.0,
                             duration_s: float = 7200.0) -> None:
        """Low-fee transactions flood the mempool during [at_s, at_s + duration_s) (at_s None: now).

        ``vbytes_per_s`` vbytes a second arrive, in transactions of ``flood.FLOOD_TX_VSIZE`` vbytes all paying
        ``fee_sat_vb`` (at least minrelaytxfee). The defaults offer 50,000 vB/s for 2 hours: the default 300 MB
        mempool (100 MvB at the simulator's 3 bytes of usage per vbyte) is full within 33 minutes (sooner with the
        simulated transactions in it).
        getmempoolinfo's size, bytes, usage and total_fee grow until usage reaches maxmempool; then the node evicts
        the lowest fee rates (the flood's), mempoolminfee becomes ``fee_sat_vb`` + incrementalrelayfee and further
        flood transactions are refused until that rolling minimum decays (12 h half-life from the next block, as
        Core). After the window the flood stays in the mempool until evicted or expired (336 h). Not listed by
        getrawmempool, never mined; the simulated transactions are never evicted for it (see ``flood`` for the
        model and its simplifications). One flood per node. Recorded as kind "mempool_flood" (detail:
        ``vbytes_per_s``, ``fee_sat_vb``, ``tx_vsize``, ``full_at``).
        """
        rate = check_positive("vbytes_per_s", vbytes_per_s)
        duration = check_positive("duration_s", duration_s)
        if isinstance(fee_sat_vb, bool) or not isinstance(fee_sat_vb, int | float) \
                or not MIN_RELAY_SAT_VB <= fee_sat_vb <= 1_000_000:
            raise ConfigError("fee_sat_vb", f"{fee_sat_vb!r} must be a fee rate from minrelaytxfee "
                                            f"({MIN_RELAY_SAT_VB:g} sat/vB: Core refuses less) to 1,000,000 sat/vB")
        with self.lock:
            start = self._start(at_s)
            if self.flood is not None:
                raise ConfigError("at_s", f"a mempool flood is already injected (from {self.flood.start}); the "
                                          f"simulated node has one at most")
            self.flood = MempoolFlood(self.timeline, self.config.maxmempool_bytes, start, start + duration, rate,
                                      float(fee_sat_vb))
            self._add_event("mempool_flood", start, start + duration, rate=rate,
                            extra={"fee_sat_vb": self.flood.rate})

    # ---- double spends and fee bumps

    def inject_double_spend(self, txid: str, at_s: float | None = None) -> str:
        """From ``at_s`` (None: now) a conflicting transaction replaces mempool transaction ``txid``; returns its txid.

        The conflict (a new txid determined by the seed, the target and the injection order) spends the target's
        inputs, pays outputs of the same kinds to other scripts and a higher fee (BIP 125: the target's fee plus
        max(20 %, 1 sat/vB), taken from the largest output). From ``at_s`` the target is gone (getmempoolentry and
        getrawtransaction -5, its outpoints' spender is the conflict) and the conflict is in the mempool until the
        block that would have held the target is mined; then it is confirmed in that block (getblock and
        getrawtransaction show it, the coinbase collects its fee). Simplifications: getblockstats and the fee
        estimator keep the target's fee; the mempool limit is not re-applied. Recorded in
        ``truth.network_events()`` as kind "double_spend" (detail: ``txid``, ``conflict``, ``height``).
        """
        return self._replace(txid, at_s, keep_outputs=False)

    def inject_rbf_bump(self, txid: str, at_s: float | None = None) -> str:
        """From ``at_s`` (None: now) the payer's fee bump replaces mempool transaction ``txid``; returns its txid.

        The same replacement as ``inject_double_spend`` (same inputs, same size, a fee higher by the BIP 125 bump,
        the same block slot), except that it keeps every output of the original, with the same scripts and
        values, but the change (the largest output), which shrinks by the bump. Recorded in
        ``truth.network_events()`` as kind "rbf_replacement" (detail: ``txid``, ``replacement``, ``height``).
        """
        return self._replace(txid, at_s, keep_outputs=True)

    def _replace(self, txid: str, at_s: float | None, keep_outputs: bool) -> str:
        """A replacement of mempool transaction ``txid`` from ``at_s``: a double spend paying other scripts, or
        (``keep_outputs``) a fee bump paying the same ones; see ``inject_double_spend``."""
        if not isinstance(txid, str) or len(txid) != 64 or any(c not in "0123456789abcdefABCDEF" for c in txid):
            raise ConfigError("txid", f"{txid!r} must be a transaction id of 64 hex digits")
        wanted = txid.lower()
        with self.lock:
            start = self._start(at_s)
            tl = self.timeline
            i = self.txs.index.get(wanted)
            if i is None:
                raise ConfigError("txid", f"{wanted} is not a transaction of the simulated chain (phantoms, double "
                                          f"spends, fee bumps and coinbases cannot be replaced)")
            if i in tl.conflict_entry:
                raise ConfigError("txid", f"{wanted} is already double-spent or fee-bumped")
            if not tl.alive(i, start):
                when = (f"it is in the mempool during [{float(tl.e_enter[i])}, {float(tl.e_leave[i])})"
                        if tl.e_accepted[i] else "the mempool never accepted it")
                raise ConfigError("at_s", f"{wanted} is not in the mempool at {start}: {when}")
            fee = int(self.chain.tx["fee_sat"][i])
            bump = max(fee // 5, int(self.chain.tx["vsize"][i]) * round(INCREMENTAL_SAT_VB))
            largest = max(self.txs.output_values(i))
            if largest < bump:
                raise ConfigError("txid", f"{wanted}'s largest output ({largest} sat) cannot pay a fee {bump} sat "
                                          f"higher")
            e = tl.add_conflict(i, start, fee + bump)
            replacement = self.txs.add_conflict(i, fee + bump, keep_outputs=keep_outputs)
            assert self.txs.entry_of(replacement) == e
            b = int(tl.confirm_block[i])
            height = self.blocks.first + b if b >= 0 else None
            kind, name = ("rbf_replacement", "replacement") if keep_outputs else ("double_spend", "conflict")
            self._add_event(kind, start, None, height=height or 0,
                            extra={"txid": wanted, name: replacement, "height": height})
            return replacement

    # ---- operator labels

    def write_labels(self, path: str | Path, share: float, seed: int = 0) -> int:
        """Write an operator labels file (CSV ``kind,id,label``) atomically; returns the transactions labeled.

        It labels ``round(share x own illicit)`` of this node's own illicit transactions ``illicit`` and as many
        of its own licit ones ``licit`` (fewer if it has fewer): one ``txid`` row per transaction, plus one
        ``address`` row per transaction for its first output that has an address.
        """
        if isinstance(share, bool) or not isinstance(share, int | float) or not 0 <= share <= 1:
            raise ConfigError("share", f"{share!r} must be in [0, 1]")
        rng = stream(int(seed), "simnode.labels")
        illicit = self.chain.tx["illicit"][self.own]
        bad, good = self.own[illicit], self.own[~illicit]
        k = int(round(share * len(bad)))
        chosen_bad = np.sort(rng.choice(bad, size=k, replace=False)) if k else bad[:0]
        chosen_good = np.sort(rng.choice(good, size=min(k, len(good)), replace=False)) if k else good[:0]
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["kind", "id", "label"])
        rows = sorted([(int(i), "illicit") for i in chosen_bad] + [(int(i), "licit") for i in chosen_good])
        with self.lock:
            for i, label in rows:
                writer.writerow(["txid", self.txs.txids[i], label])
            for i, label in rows:
                addresses = self.txs.addresses(i)
                if addresses:
                    writer.writerow(["address", addresses[0], label])
        atomic_write_bytes(path, buf.getvalue().encode())
        return len(rows)
