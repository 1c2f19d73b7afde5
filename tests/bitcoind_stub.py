"""FakeBitcoind: a real loopback HTTP JSON-RPC server answering in Bitcoin Core's documented shapes.

It checks HTTP Basic auth (rpcuser/rpcpassword, or a ``__cookie__:<hex>`` cookie it writes at start and
deletes at stop, as Core does), answers 401 with an empty body on bad credentials, 404 with error -32601
for unknown methods, 500 with an error object for other RPC errors, and serves a small simulated chain
(``core.data.chain``) for getblockcount / getblockhash / getblock / getrawmempool / getrawtransaction.
Scenario state is plain attributes, mutable while the server runs.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

from core.bitcoin.features import SATS_PER_BTC
from core.data.chain import START_HEIGHT, ChainConfig, core_transaction_json, simulate_chain

MAX_MEMPOOL_BYTES = 300_000_000
MIN_RELAY_BTC_KVB = 0.00001
SUBSIDY_BTC = 3.125
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


class RPCFault(Exception):
    """An RPC error the handler turns into Core's error reply."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _block_hash(height: int) -> str:
    return hashlib.sha256(f"anya-fl fake block {height}".encode()).hexdigest()


class _Chain:
    """Core-shaped JSON for a small simulated chain: blocks START_HEIGHT + 1 .. tip and a mempool."""

    def __init__(self, seed: int) -> None:
        # a small block weight limit spreads 2,000 transactions over about a dozen blocks
        self.sim = simulate_chain(ChainConfig(n_transactions=2_000, seed=seed, block_weight_limit=400_000))
        confirm = self.sim.tx["confirm_height"]
        self.first = START_HEIGHT + 1
        self.top = int(confirm.max())  # highest block holding transactions
        self.by_height = {h: np.flatnonzero(confirm == h) for h in range(self.first, self.top + 1)}
        self.index = {f"{i:064x}": i for i in range(self.sim.n_transactions)}

    def tx_json(self, i: int, verbosity: int) -> dict[str, Any]:
        """getblock 3 / getrawtransaction 2 shape; verbosity 2 drops prevouts, 1 also drops the fee."""
        doc = core_transaction_json(self.sim, i)
        doc["hash"] = doc["txid"]
        for vin in doc["vin"]:
            vin["prevout"]["height"] = max(0, vin["prevout"]["height"])
            vin["prevout"]["scriptPubKey"] = {"type": "witness_v0_keyhash"}
            if verbosity < 3:
                del vin["prevout"]
        if verbosity < 2:
            del doc["fee"]
        return doc

    def coinbase(self, height: int, fees_btc: float) -> dict[str, Any]:
        txid = hashlib.sha256(f"coinbase {height}".encode()).hexdigest()
        return {
            "txid": txid, "hash": txid, "version": 2, "size": 200, "vsize": 173, "weight": 692, "locktime": 0,
            "vin": [{"coinbase": f"03{height:06x}00", "txinwitness": ["00" * 32], "sequence": 0xFFFFFFFF}],
            "vout": [
                {"value": round(SUBSIDY_BTC + fees_btc, 8), "n": 0,
                 "scriptPubKey": {"asm": "", "hex": "0014" + "ab" * 20, "type": "witness_v0_keyhash"}},
                {"value": 0.0, "n": 1, "scriptPubKey": {"asm": "OP_RETURN", "hex": "6a24aa21a9ed", "type": "nulldata"}},
            ],
        }

    def block(self, height: int, tip: int, verbosity: int) -> Any:
        if verbosity == 0:
            return "00" * 80
        members = self.by_height.get(height, np.zeros(0, dtype=np.int64))
        fees_btc = float(self.sim.tx["fee_sat"][members].sum()) / SATS_PER_BTC
        txs = [self.coinbase(height, fees_btc)] + [self.tx_json(int(i), verbosity) for i in members]
        t = 1_700_000_000 + int(self.sim.block_time[height - self.first])
        doc: dict[str, Any] = {
            "hash": _block_hash(height), "confirmations": tip - height + 1, "height": height,
            "version": 0x20000000, "versionHex": "20000000", "merkleroot": "00" * 32,
            "time": t, "mediantime": t - 3_000, "nonce": 0, "bits": "17034219", "difficulty": 8.8e13,
            "chainwork": f"{height:064x}", "nTx": len(txs), "strippedsize": 0, "size": 0,
            "weight": int(self.sim.tx["weight"][members].sum()) + 692,
            "previousblockhash": _block_hash(height - 1),
            "tx": [tx["txid"] for tx in txs] if verbosity == 1 else (txs if verbosity >= 2 else None),
        }
        if height < tip:
            doc["nextblockhash"] = _block_hash(height + 1)
        return doc

    def mempool_members(self, tip: int) -> np.ndarray:
        tx = self.sim.tx
        return np.flatnonzero((tx["entry_height"] <= tip) & ((tx["confirm_height"] > tip) | (tx["confirm_height"] < 0)))

    def mempool_entry(self, i: int, tip: int) -> dict[str, Any]:
        tx = self.sim.tx
        fee = int(tx["fee_sat"][i]) / SATS_PER_BTC
        vsize = int(tx["vsize"][i])
        return {
            "vsize": vsize, "weight": int(tx["weight"][i]), "time": 1_700_000_000 + int(tx["arrival_time"][i]),
            "height": min(int(tx["entry_height"][i]), tip), "descendantcount": 1, "descendantsize": vsize,
            "ancestorcount": 1, "ancestorsize": vsize, "wtxid": f"{i:064x}",
            "fees": {"base": fee, "modified": fee, "ancestor": fee, "descendant": fee},
            "depends": [], "spentby": [], "bip125-replaceable": bool(tx["rbf"][i]), "unbroadcast": False,
        }


class FakeBitcoind:
    """A loopback Bitcoin Core JSON-RPC server with mutable scenario state and per-method call counts."""

    def __init__(self, user: str | None = "alice", password: str | None = "secret", *,
                 cookie_path: Path | None = None, seed: int = 11) -> None:
        self.user = user
        self.password = password
        self.cookie_path = Path(cookie_path) if cookie_path is not None else None
        self.cookie: str | None = None
        self.chain = _Chain(seed)
        # scenario state
        self.state = "synced"  # "synced" | "ibd" | "behind" | "nan"
        self.tip = self.chain.top - 1  # the last block's transactions are still in the mempool
        self.delay_s = 0.0
        self.malformed: set[str] = set()  # methods whose result loses a documented field (_DROPPED_FIELD)
        self.not_json: set[str] = set()  # methods that answer with a body that is not JSON
        self.wrong_id = False  # answer with another request id
        self.warmup_calls = 0  # answer the next n authenticated calls with -28 "Loading block index..."
        self.mempool_loaded = True
        self.mempool_usage: int | None = None  # bytes of memory used; None: about 3x the mempool's vbytes
        self.connections = 10
        self.network_active = True
        self.fee_estimate_available = True
        # observations
        self.calls: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle

    def start(self, port: int = 0) -> FakeBitcoind:
        """Listen on ``port`` (0: a free one; pass the old port to restart a stopped node in place)."""
        server = ThreadingHTTPServer(("127.0.0.1", port), _make_handler(self))
        server.daemon_threads = True
        server.block_on_close = False
        self._server = server
        if self.cookie_path is not None:
            self.rotate_cookie()
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self.cookie_path is not None:
            self.cookie_path.unlink(missing_ok=True)
            self.cookie = None

    def __enter__(self) -> FakeBitcoind:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def rotate_cookie(self) -> str:
        """Write a fresh ``__cookie__:<hex>`` (what a restarted bitcoind does); the old one stops working."""
        assert self.cookie_path is not None
        self.cookie = secrets.token_hex(32)
        self.cookie_path.write_text(f"__cookie__:{self.cookie}")
        return self.cookie

    @property
    def port(self) -> int:
        assert self._server is not None, "start() the server first"
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ---- request handling

    def authorized(self, header: str | None) -> bool:
        if not header or not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:]).decode("utf-8").partition(":")
        except ValueError:
            return False
        if self.user is not None and (user, password) == (self.user, self.password):
            return True
        return self.cookie is not None and (user, password) == ("__cookie__", self.cookie)

    def dispatch(self, method: str, params: list[Any]) -> Any:
        handler = getattr(self, f"rpc_{method}", None)
        if handler is None:
            raise RPCFault(-32601, "Method not found")
        try:
            result = handler(*params)
        except TypeError as exc:
            raise RPCFault(-1, f"{method} called with wrong parameters: {exc}") from exc
        if method in self.malformed:
            if isinstance(result, dict):
                result = {k: v for k, v in result.items() if k != _DROPPED_FIELD.get(method, next(iter(result)))}
            else:
                result = {"unexpected": True}
        return result

    # ---- RPC methods (Core's documented reply shapes)

    def _height_info(self) -> tuple[int, int, float, bool]:
        """(blocks, headers, verificationprogress, initialblockdownload) for the current state."""
        if self.state == "ibd":
            return self.tip, self.tip + 50_000, 0.732, True
        if self.state == "behind":
            return self.tip, self.tip + 5, 0.99991, False
        if self.state == "nan":  # not something Core writes; Python's json would parse it as a float
            return self.tip, self.tip, float("nan"), False
        return self.tip, self.tip, 0.9999987, False

    def rpc_getblockchaininfo(self) -> dict[str, Any]:
        blocks, headers, progress, ibd = self._height_info()
        return {
            "chain": "main", "blocks": blocks, "headers": headers, "bestblockhash": _block_hash(blocks),
            "difficulty": 8.8e13, "time": 1_700_000_000, "mediantime": 1_699_997_000,
            "verificationprogress": progress, "initialblockdownload": ibd, "chainwork": f"{blocks:064x}",
            "size_on_disk": 650_000_000_000, "pruned": False, "warnings": "",
        }

    def rpc_getnetworkinfo(self) -> dict[str, Any]:
        out = min(self.connections, 10)
        return {
            "version": 270000, "subversion": "/Satoshi:27.0.0/", "protocolversion": 70016,
            "localservices": "0000000000000c09", "localservicesnames": ["NETWORK", "WITNESS", "NETWORK_LIMITED"],
            "localrelay": True, "timeoffset": 0, "networkactive": self.network_active,
            "connections": self.connections, "connections_in": self.connections - out, "connections_out": out,
            "networks": [], "relayfee": MIN_RELAY_BTC_KVB, "incrementalfee": MIN_RELAY_BTC_KVB,
            "localaddresses": [], "warnings": "",
        }

    def rpc_getmempoolinfo(self) -> dict[str, Any]:
        members = self.chain.mempool_members(self.tip) if self.mempool_loaded else np.zeros(0, dtype=np.int64)
        vbytes = int(self.chain.sim.tx["vsize"][members].sum())
        usage = self.mempool_usage if self.mempool_usage is not None else 3 * vbytes + 100_000
        return {
            "loaded": self.mempool_loaded, "size": len(members), "bytes": vbytes, "usage": usage,
            "total_fee": float(self.chain.sim.tx["fee_sat"][members].sum()) / SATS_PER_BTC,
            "maxmempool": MAX_MEMPOOL_BYTES, "mempoolminfee": MIN_RELAY_BTC_KVB,
            "minrelaytxfee": MIN_RELAY_BTC_KVB, "incrementalrelayfee": MIN_RELAY_BTC_KVB,
            "unbroadcastcount": 0, "fullrbf": True,
        }

    def rpc_gettxoutsetinfo(self, hash_type: str = "hash_serialized_3") -> dict[str, Any]:
        height = self.tip
        return {
            "height": height, "bestblock": _block_hash(height),
            "txouts": TXOUTS_AT_START + TXOUTS_PER_BLOCK * (height - START_HEIGHT),
            "bogosize": 13_000_000_000, "hash_serialized_3": "00" * 32, "transactions": 120_000_000,
            "disk_size": 11_000_000_000, "total_amount": 19_700_000.0 + SUBSIDY_BTC * (height - START_HEIGHT),
        }

    def rpc_estimatesmartfee(self, conf_target: int, estimate_mode: str = "conservative") -> dict[str, Any]:
        if isinstance(conf_target, bool) or not isinstance(conf_target, int):
            raise RPCFault(-3, f"Expected type number, got {type(conf_target).__name__}")
        if not 1 <= conf_target <= 1008:
            raise RPCFault(-8, "Invalid conf_target, must be between 1 and 1008")
        if estimate_mode.lower() not in ("unset", "economical", "conservative"):
            raise RPCFault(-8, 'Invalid estimate_mode parameter, must be one of: "unset", "economical", '
                               '"conservative"')
        if not self.fee_estimate_available:
            return {"errors": ["Insufficient data or no feerate found"], "blocks": 0}
        return {"feerate": FEERATE_BTC_KVB, "blocks": max(conf_target, 2)}

    def rpc_getblockcount(self) -> int:
        return self.tip

    def rpc_getblockhash(self, height: int) -> str:
        if isinstance(height, bool) or not isinstance(height, int):
            raise RPCFault(-3, f"Expected type number, got {type(height).__name__}")
        if not self.chain.first <= height <= self.tip:
            raise RPCFault(-8, "Block height out of range")
        return _block_hash(height)

    def rpc_getblock(self, blockhash: str, verbosity: int = 1) -> Any:
        for height in range(self.chain.first, self.tip + 1):
            if _block_hash(height) == blockhash:
                return self.chain.block(height, self.tip, int(verbosity))
        raise RPCFault(-5, "Block not found")

    def rpc_getrawmempool(self, verbose: bool = False, mempool_sequence: bool = False) -> Any:
        members = self.chain.mempool_members(self.tip) if self.mempool_loaded else np.zeros(0, dtype=np.int64)
        if not verbose:
            return [f"{i:064x}" for i in members]
        return {f"{i:064x}": self.chain.mempool_entry(int(i), self.tip) for i in members}

    def rpc_getrawtransaction(self, txid: str, verbose: bool | int = False, blockhash: str | None = None) -> Any:
        i = self.chain.index.get(txid)
        confirm = int(self.chain.sim.tx["confirm_height"][i]) if i is not None else -1
        entry = int(self.chain.sim.tx["entry_height"][i]) if i is not None else self.tip + 1
        if i is None or entry > self.tip:
            raise RPCFault(-5, "No such mempool or blockchain transaction. Use gettransaction for wallet "
                               "transactions.")
        if not verbose:
            return "02000000" + "00" * 60
        doc = self.chain.tx_json(i, 3 if int(verbose) >= 2 else 1)
        doc["hex"] = "02000000" + "00" * 60
        if 0 <= confirm <= self.tip:
            t = 1_700_000_000 + int(self.chain.sim.block_time[confirm - self.chain.first])
            doc.update(blockhash=_block_hash(confirm), confirmations=self.tip - confirm + 1, time=t, blocktime=t)
        return doc


def _make_handler(node: FakeBitcoind) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "FakeBitcoind/1.0"
        protocol_version = "HTTP/1.0"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
            try:
                self.send_response(status)
                if status == 401:
                    self.send_header("WWW-Authenticate", 'Basic realm="jsonrpc"')
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except OSError:  # the client gave up (timeout) and closed the connection
                pass

        def _reply(self, status: int, req_id: Any, result: Any = None, error: dict | None = None) -> None:
            body = json.dumps({"result": result, "error": error, "id": req_id}).encode() + b"\n"
            self._send(status, body)

        def do_GET(self) -> None:
            self._send(405, b"JSONRPC server handles only POST requests", "text/html")

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                request = json.loads(raw)
                method, params, req_id = request["method"], request.get("params") or [], request.get("id")
            except (ValueError, KeyError, TypeError):
                request, method, params, req_id = None, "<unparsed>", [], None
            with node._lock:
                node.calls[method] += 1
            if node.delay_s > 0:
                time.sleep(node.delay_s)
            if not node.authorized(self.headers.get("Authorization")):
                self._send(401, b"", "text/html")
                return
            if request is None:
                self._reply(500, None, error={"code": -32700, "message": "Parse error"})
                return
            with node._lock:
                warming = node.warmup_calls > 0
                if warming:
                    node.warmup_calls -= 1
            if warming:
                self._reply(500, req_id, error={"code": -28, "message": "Loading block index..."})
                return
            if method in node.not_json:
                self._send(500, b"<html><body>Internal Server Error</body></html>", "text/html")
                return
            reply_id = req_id + 1000 if node.wrong_id and isinstance(req_id, int) else req_id
            try:
                result = node.dispatch(method, list(params))
            except RPCFault as fault:
                status = 404 if fault.code == -32601 else 500
                self._reply(status, reply_id, error={"code": fault.code, "message": fault.message})
                return
            self._reply(200, reply_id, result=result)

    return Handler
