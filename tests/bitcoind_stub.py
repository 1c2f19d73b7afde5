"""FakeBitcoind: the simulated node (``anya_fl.simnode``) with the scenario knobs the RPC and health tests turn.

The JSON-RPC server, its auth (rpcuser/rpcpassword or a ``__cookie__:<hex>`` cookie written at start and
deleted at stop), Core's error replies and every method's reply come from ``anya_fl.simnode``: this module
only adds test knobs that have no place in a product node. The chain is a small simulated one (2,000
transactions over about a dozen blocks) on a manual clock: ``tip`` moves the clock to just before the block
after that height, so the mempool holds every transaction that entered at or below the tip and is not yet
confirmed. Scenario state is plain attributes, mutable while the server runs:

* ``state``: "synced" | "ibd" (headers 50,000 ahead, 73.2 % verified) | "behind" (5 headers ahead) | "nan"
  (verificationprogress NaN, which Core never writes);
* ``malformed``: methods whose result loses a documented field (``_DROPPED_FIELD``); ``not_json``: methods
  answered with an HTML body; ``wrong_id``: replies carry another id; ``warmup_calls``: the next n
  authenticated calls get -28; ``delay_s``: each request waits before it is answered;
* ``mempool_loaded``, ``mempool_usage`` (bytes; None: the node's own), ``connections``, ``network_active``,
  ``fee_estimate_available`` (a fixed 12 sat/vB estimate, or Core's "Insufficient data" reply);
* ``calls``: requests per method, counted before the credentials are checked.
"""

from __future__ import annotations

import collections
import secrets
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from anya_fl.simnode import SimNode, SimNodeConfig
from anya_fl.simnode.server import RawReply, RPCAuth, RPCFault, RPCServer
from core.data.chain import START_HEIGHT

TXOUTS_AT_START = 180_000_000
TXOUTS_PER_BLOCK = 3_000  # net UTXO growth per block served by gettxoutsetinfo
FEERATE_BTC_KVB = 0.00012  # 12 sat/vB

# for each method in FakeBitcoind.malformed: the documented field its result loses
_DROPPED_FIELD = {
    "getblockchaininfo": "blocks",
    "getnetworkinfo": "connections",
    "getmempoolinfo": "loaded",
    "gettxoutsetinfo": "txouts",
    "estimatesmartfee": "blocks",
    "getblock": "tx",
    "getrawtransaction": "vin",
}

__all__ = ["FEERATE_BTC_KVB", "TXOUTS_PER_BLOCK", "FakeBitcoind", "RPCFault"]


class _ChainView:
    """What the tests read about the served chain: ``top``, ``by_height``, ``mempool_members(tip)``."""

    def __init__(self, fake: FakeBitcoind) -> None:
        node = fake.node
        self.sim = node.chain
        self.first = START_HEIGHT + 1
        self.top = int(self.sim.tx["confirm_height"].max())  # highest block holding transactions
        self.by_height = {h: node.timeline.block_txs(h - self.first) for h in range(self.first, self.top + 1)}
        self.index = node.txs.index
        self._fake = fake

    def mempool_members(self, tip: int) -> np.ndarray:
        return self._fake.node.truth.mempool_at(self._fake.time_of(tip))


class _StubServer(RPCServer):
    """The simnode server with the stub's hooks: call counts and delay, warm-up calls, non-JSON, wrong ids."""

    def __init__(self, fake: FakeBitcoind) -> None:
        super().__init__(fake.dispatch, fake.auth, auth_failure_delay_s=0.0)
        self.fake = fake

    def observe(self, method: str) -> None:
        fake = self.fake
        with fake._lock:
            fake.calls[method] += 1
        if fake.delay_s > 0:
            time.sleep(fake.delay_s)

    def intercept(self, method: str, req_id: Any) -> None:
        fake = self.fake
        with fake._lock:
            warming = fake.warmup_calls > 0
            if warming:
                fake.warmup_calls -= 1
        if warming:
            raise RPCFault(-28, "Loading block index...")
        if method in fake.not_json:
            raise RawReply(500, b"<html><body>Internal Server Error</body></html>")

    def reply_id(self, req_id: Any) -> Any:
        return req_id + 1000 if self.fake.wrong_id and isinstance(req_id, int) else req_id


class FakeBitcoind:
    """A loopback Bitcoin Core JSON-RPC server with mutable scenario state and per-method call counts."""

    def __init__(self, user: str | None = "alice", password: str | None = "secret", *,
                 cookie_path: Path | None = None, seed: int = 11) -> None:
        self.user = user
        self.password = password
        self.cookie_path = Path(cookie_path) if cookie_path is not None else None
        self.auth = RPCAuth(user, password, self.cookie_path)
        # the node's own credentials are unused: the stub's server checks ``self.auth``
        self.node = SimNode(SimNodeConfig(seed=seed, transactions=2_000, speed=0.0, start_block=0,
                                          block_weight_limit=400_000, rpcuser="stub",
                                          rpcpassword=secrets.token_hex(16)))
        self.chain = _ChainView(self)
        # scenario state
        self.state = "synced"  # "synced" | "ibd" | "behind" | "nan"
        self.tip = self.chain.top - 1  # the last block's transactions are still in the mempool
        self.delay_s = 0.0
        self.malformed: set[str] = set()
        self.not_json: set[str] = set()
        self.wrong_id = False
        self.warmup_calls = 0
        self.mempool_loaded = True
        self.mempool_usage: int | None = None
        self.connections = 10
        self.network_active = True
        self.fee_estimate_available = True
        # observations
        self.calls: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        self._server = _StubServer(self)

    # ---- the tip moves the node's manual clock

    def time_of(self, tip: int) -> float:
        """The simulated time just before the block after ``tip`` (just after the last block at the end)."""
        times = self.node.chain.block_time
        b = tip - START_HEIGHT  # index of block tip + 1
        if b >= len(times):
            return float(times[-1]) + 1.0
        return float(np.nextafter(times[b], -np.inf))

    @property
    def tip(self) -> int:
        return self.node.tip_height()

    @tip.setter
    def tip(self, height: int) -> None:
        self.node.clock.set(self.time_of(height))

    # ---- lifecycle

    def start(self, port: int = 0) -> FakeBitcoind:
        """Listen on ``port`` (0: a free one; pass the old port to restart a stopped node in place)."""
        if self.cookie_path is not None:
            self.rotate_cookie()
        self._server.start(port)
        return self

    def stop(self) -> None:
        self._server.stop()
        if self.cookie_path is not None:
            self.auth.remove_cookie()

    def __enter__(self) -> FakeBitcoind:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def rotate_cookie(self) -> str:
        """Write a fresh ``__cookie__:<hex>`` (what a restarted bitcoind does); the old one stops working."""
        return self.auth.rotate_cookie()

    @property
    def cookie(self) -> str | None:
        return self.auth.cookie

    @property
    def port(self) -> int:
        return self._server.port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ---- the scenario layer over the node's replies

    def dispatch(self, method: str, params: list | dict) -> Any:
        result = self.node.rpc.call(method, params)
        adjust = getattr(self, f"_adjust_{method}", None)
        if adjust is not None:
            result = adjust(result, params)
        if method in self.malformed:
            if isinstance(result, dict):
                result = {k: v for k, v in result.items() if k != _DROPPED_FIELD.get(method, next(iter(result)))}
            else:
                result = {"unexpected": True}
        return result

    def _adjust_getblockchaininfo(self, info: dict[str, Any], params: Any) -> dict[str, Any]:
        tip = info["blocks"]
        if self.state == "ibd":
            info.update(headers=tip + 50_000, verificationprogress=0.732, initialblockdownload=True)
        elif self.state == "behind":
            info.update(headers=tip + 5, verificationprogress=0.99991)
        elif self.state == "nan":  # not something Core writes; Python's json would parse it as a float
            info.update(verificationprogress=float("nan"))
        return info

    def _adjust_getnetworkinfo(self, info: dict[str, Any], params: Any) -> dict[str, Any]:
        out = min(self.connections, 10)
        info.update(connections=self.connections, connections_in=self.connections - out, connections_out=out,
                    networkactive=self.network_active)
        return info

    def _adjust_getmempoolinfo(self, info: dict[str, Any], params: Any) -> dict[str, Any]:
        if not self.mempool_loaded:
            info.update(loaded=False, size=0, bytes=0, usage=0, total_fee=0.0)
        if self.mempool_usage is not None:
            info["usage"] = self.mempool_usage
        return info

    def _adjust_getrawmempool(self, result: Any, params: Any) -> Any:
        if self.mempool_loaded:
            return result
        if isinstance(result, dict) and "txids" in result:
            return {**result, "txids": []}
        return {} if isinstance(result, dict) else []

    def _adjust_estimatesmartfee(self, reply: dict[str, Any], params: Any) -> dict[str, Any]:
        if not self.fee_estimate_available:
            return {"errors": ["Insufficient data or no feerate found"], "blocks": 0}
        target = params[0] if isinstance(params, list) else params.get("conf_target")
        return {"feerate": FEERATE_BTC_KVB, "blocks": max(int(target), 2)}

    def _adjust_gettxoutsetinfo(self, info: dict[str, Any], params: Any) -> dict[str, Any]:
        info["txouts"] = TXOUTS_AT_START + TXOUTS_PER_BLOCK * (info["height"] - START_HEIGHT)
        return info
