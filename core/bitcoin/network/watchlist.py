"""A merchant's double-spend watch list: "tell me when a payment I am waiting for was replaced or double-spent".

:class:`WatchList` keeps the watched items (txids and addresses) in a JSON file written atomically; the first
time a watched transaction is seen (``getrawtransaction <txid> true``) its input outpoints and output count are
remembered there, so it can still be followed once the node no longer knows it. :func:`check_watchlist` reports
one :class:`~core.alerts.Finding` per item (detector ``double-spend``, key ``watch:<item>``), active or not:

* confirmed (``confirmations`` >= 1) -> inactive, "confirmed in block N";
* in the mempool -> inactive, unless its entry says ``bip125-replaceable``: then INFO "replaceable (opt-in RBF):
  wait for a confirmation" (active: the payer can still replace it);
* gone from the mempool and not confirmed -> its outpoints decide: ``gettxspendingprevout`` names another
  mempool spender -> CRITICAL "replaced by <txid>" (a double-spend attempt, or the payer's fee bump: check whether
  the replacement still pays you); no mempool spender but ``gettxout`` finds an outpoint spent -> CRITICAL "a
  conflicting transaction was confirmed"; all unspent -> WARNING "left the mempool (evicted or expired)".
  A node without ``-txindex`` does not find confirmed transactions with getrawtransaction: the transaction's own
  outputs (``gettxout``) then tell whether it confirmed;
* never seen by the node -> WARNING "not seen by the node" (no outpoints to follow yet).

Addresses are validated (Base58Check P2PKH/P2SH, bech32/bech32m segwit; mainnet, testnet, regtest) and listed,
but watching one needs the collector's store of transactions by address: it is reported inactive with that
explanation. A removed item is reported inactive ("no longer watched") for ``RETIRE_CHECKS`` more checks, so
the alert engine clears a condition that was active when it was removed.

A node error never raises: an RPC error while checking one item is a WARNING finding for that item naming the
RPC and the error; other items are still checked (when the node is unreachable, the remaining items get the
same WARNING without calling it again).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from core.alerts import Finding, Severity
from core.bitcoin.rpc import (
    BitcoinRPC,
    RPCConnectionError,
    RPCError,
    RPCMalformedReplyError,
    RPCReplyError,
    RPCTimeoutError,
)
from core.errors import ConfigError
from core.storage import atomic_write_json

__all__ = ["DETECTOR", "RETIRE_CHECKS", "WatchList", "address_problem", "check_watchlist", "parse_watch_item"]

log = logging.getLogger(__name__)

DETECTOR = "double-spend"
FORMAT = "anya-fl.watchlist/1"
RETIRE_CHECKS = 10  # checks a removed item is still reported inactive (above the engine's clear_after)
RPC_NOT_FOUND = -5  # RPC_INVALID_ADDRESS_OR_KEY: no such transaction / not in the mempool
_TXID = re.compile(r"[0-9a-fA-F]{64}")
_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_VERSIONS = {0x00: "P2PKH", 0x05: "P2SH", 0x6F: "testnet P2PKH", 0xC4: "testnet P2SH"}
_BECH32 = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_BECH32_HRPS = ("bc", "tb", "bcrt")
_BECH32_CONST, _BECH32M_CONST = 1, 0x2BC830A3


# ---- item validation


def _bech32_polymod(values: list[int]) -> int:
    gen = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
    chk = 1
    for v in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ v
        for i in range(5):
            if (top >> i) & 1:
                chk ^= gen[i]
    return chk


def _segwit_problem(text: str) -> str | None:
    if text.lower() != text and text.upper() != text:
        return "mixes upper and lower case"
    s = text.lower()
    hrp, sep, data_part = s.rpartition("1")
    if not sep or hrp not in _BECH32_HRPS:
        return f"does not start with one of {', '.join(h + '1' for h in _BECH32_HRPS)}"
    if len(s) > 90 or len(data_part) < 8:
        return "has the wrong length for a segwit address"
    if any(c not in _BECH32 for c in data_part):
        return "has characters outside the bech32 alphabet"
    data = [_BECH32.index(c) for c in data_part]
    check = _bech32_polymod([ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp] + data)
    if check not in (_BECH32_CONST, _BECH32M_CONST):
        return "has a bad bech32 checksum (a typo?)"
    version, payload = data[0], data[1:-6]
    acc = bits = 0
    program = bytearray()
    for v in payload:
        acc, bits = acc << 5 | v, bits + 5
        if bits >= 8:
            bits -= 8
            program.append(acc >> bits & 0xFF)
    if bits >= 5 or acc & ((1 << bits) - 1):
        return "has invalid padding"
    if version > 16 or not 2 <= len(program) <= 40:
        return "has an invalid witness version or program length"
    if version == 0 and len(program) not in (20, 32):
        return "has a version 0 program that is neither 20 nor 32 bytes"
    if (version == 0) != (check == _BECH32_CONST):
        return "uses the wrong checksum for its witness version (bech32 for v0, bech32m for v1+)"
    return None


def _base58_problem(text: str) -> str | None:
    if any(c not in _B58 for c in text):
        return "has characters outside the Base58 alphabet"
    n = 0
    for c in text:
        n = n * 58 + _B58.index(c)
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    raw = b"\0" * (len(text) - len(text.lstrip("1"))) + body
    if len(raw) != 25:
        return "decodes to the wrong length for a P2PKH/P2SH address"
    if hashlib.sha256(hashlib.sha256(raw[:21]).digest()).digest()[:4] != raw[21:]:
        return "has a bad Base58Check checksum (a typo?)"
    if raw[0] not in _B58_VERSIONS:
        return f"has the unknown version byte {raw[0]}"
    return None


def address_problem(text: str) -> str | None:
    """What is wrong with ``text`` as a Bitcoin address (None: a valid one)."""
    if not 14 <= len(text) <= 90:
        return f"has {len(text)} characters"
    lowered = text.lower()
    if any(lowered.startswith(h + "1") for h in _BECH32_HRPS):
        return _segwit_problem(text)
    return _base58_problem(text)


def parse_watch_item(item: Any) -> tuple[str, str]:
    """(kind, canonical form) of a watch item: ("txid", lowercase hex) or ("address", the address, bech32 in
    lowercase); ConfigError("watch", ...) for anything else."""
    if not isinstance(item, str):
        raise ConfigError("watch", f"{item!r} is not a transaction id or an address (expected text)")
    text = item.strip()
    if _TXID.fullmatch(text):
        return "txid", text.lower()
    if not text:
        raise ConfigError("watch", "an empty item: give a transaction id (64 hex digits) or a Bitcoin address")
    problem = address_problem(text)
    if problem is not None:
        shown = text if len(text) <= 100 else text[:100] + "..."
        raise ConfigError("watch", f"{shown!r} is neither a transaction id (64 hex digits) nor a Bitcoin address: "
                                   f"as an address it {problem}")
    return "address", text.lower() if text.lower().startswith(tuple(h + "1" for h in _BECH32_HRPS)) else text


# ---- the list


class WatchList:
    """Watched txids and addresses in a JSON file (written atomically on every change). Thread-safe."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        self._items: dict[str, dict[str, Any]] = {}  # item -> {"kind", "outpoints", "outputs"}, in order added
        self._retired: dict[str, int] = {}  # removed item -> checks left to report it inactive
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        def bad(problem: str) -> ConfigError:
            return ConfigError("watch", f"{self.path} is not a watch list file ({problem})")

        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise bad(str(exc)) from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise bad(f"expected format {FORMAT!r}")
        items, retired = doc.get("items"), doc.get("retired", {})
        if not isinstance(items, list) or not isinstance(retired, dict):
            raise bad("'items' must be a list and 'retired' an object")
        for n, entry in enumerate(items):
            if not isinstance(entry, dict):
                raise bad(f"items[{n}] is not an object")
            kind, item = parse_watch_item(entry.get("item"))
            record: dict[str, Any] = {"kind": kind, "outpoints": None, "outputs": None}
            outpoints, outputs = entry.get("outpoints"), entry.get("outputs")
            if kind == "txid" and outpoints is not None:
                if not isinstance(outpoints, list) or not all(
                        isinstance(o, list) and len(o) == 2 and isinstance(o[0], str) and _TXID.fullmatch(o[0])
                        and isinstance(o[1], int) and not isinstance(o[1], bool) and o[1] >= 0 for o in outpoints):
                    raise bad(f"items[{n}].outpoints must be a list of [txid, vout]")
                if isinstance(outputs, bool) or not isinstance(outputs, int) or outputs < 0:
                    raise bad(f"items[{n}].outputs must be a whole number >= 0")
                record.update(outpoints=[(o[0].lower(), o[1]) for o in outpoints], outputs=outputs)
            self._items[item] = record
        for item, left in retired.items():
            if isinstance(left, int) and not isinstance(left, bool) and left > 0 and item not in self._items:
                self._retired[str(item)] = left

    def _save(self) -> None:
        items = [{"item": item, "kind": r["kind"],
                  **({"outpoints": [list(o) for o in r["outpoints"]], "outputs": r["outputs"]}
                     if r["outpoints"] is not None else {})}
                 for item, r in self._items.items()]
        atomic_write_json(self.path, {"format": FORMAT, "items": items, "retired": self._retired})

    def add(self, item: str) -> str:
        """Watch a txid (64 hex digits) or an address; returns its canonical form. Adding it again changes nothing."""
        kind, canonical = parse_watch_item(item)
        with self._lock:
            if canonical not in self._items:
                self._items[canonical] = {"kind": kind, "outpoints": None, "outputs": None}
                self._retired.pop(canonical, None)
                self._save()
        return canonical

    def remove(self, item: str) -> bool:
        """Stop watching ``item``; False if it was not watched."""
        _, canonical = parse_watch_item(item)
        with self._lock:
            if self._items.pop(canonical, None) is None:
                return False
            self._retired[canonical] = RETIRE_CHECKS
            self._save()
            return True

    def items(self) -> list[str]:
        """The watched items, in the order they were added."""
        with self._lock:
            return list(self._items)

    def kind(self, item: str) -> str:
        """"txid" or "address" for a watched item (KeyError if it is not watched)."""
        with self._lock:
            return str(self._items[item]["kind"])

    def outpoints(self, txid: str) -> list[tuple[str, int]] | None:
        """The input outpoints remembered for a watched txid (None: not seen yet)."""
        with self._lock:
            r = self._items.get(txid)
            return None if r is None or r["outpoints"] is None else list(r["outpoints"])

    def outputs(self, txid: str) -> int | None:
        """How many outputs a watched txid has (None: not seen yet)."""
        with self._lock:
            r = self._items.get(txid)
            return None if r is None else r["outputs"]

    def remember(self, txid: str, outpoints: list[tuple[str, int]], outputs: int) -> None:
        """Record a watched transaction's input outpoints and output count (the first time it is seen)."""
        with self._lock:
            r = self._items.get(txid)
            if r is None or r["outpoints"] is not None:
                return
            r.update(outpoints=list(outpoints), outputs=int(outputs))
            self._save()

    def retired(self) -> list[str]:
        """Removed items still to be reported inactive."""
        with self._lock:
            return list(self._retired)

    def tick_retired(self) -> None:
        """One check reported the retired items: count it."""
        with self._lock:
            if not self._retired:
                return
            self._retired = {k: v - 1 for k, v in self._retired.items() if v > 1}
            self._save()


# ---- checking


def _obj(rpc: BitcoinRPC, method: str, reply: Any) -> dict[str, Any]:
    if not isinstance(reply, Mapping):
        raise RPCMalformedReplyError(f"expected an object, got {type(reply).__name__}",
                                     url=getattr(rpc, "url", "?"), method=method)
    return dict(reply)


def _optional(rpc: BitcoinRPC, method: str, *params: Any) -> dict[str, Any] | None:
    """The reply object of ``method``, or None when the node answers -5 (no such transaction)."""
    try:
        return _obj(rpc, method, rpc.call(method, *params))
    except RPCReplyError as exc:
        if exc.code == RPC_NOT_FOUND:
            return None
        raise


def _confirmations(doc: Mapping[str, Any]) -> int:
    conf = doc.get("confirmations")
    return conf if isinstance(conf, int) and not isinstance(conf, bool) else 0


def _outpoints_of(tx: Mapping[str, Any]) -> list[tuple[str, int]]:
    out = []
    for vin in tx.get("vin") or []:
        if isinstance(vin, Mapping) and isinstance(vin.get("txid"), str) and _TXID.fullmatch(vin["txid"]) \
                and isinstance(vin.get("vout"), int) and not isinstance(vin.get("vout"), bool):
            out.append((vin["txid"].lower(), int(vin["vout"])))
    return out


def _confirmed(rpc: BitcoinRPC, key: str, txid: str, confirmations: int, blockhash: Any) -> Finding:
    where = ""
    if isinstance(blockhash, str):
        try:
            height = _obj(rpc, "getblockheader", rpc.call("getblockheader", blockhash)).get("height")
            where = f" in block {height}" if isinstance(height, int) else ""
        except RPCError:
            pass  # the height only decorates the message
    return Finding(DETECTOR, key, Severity.INFO, f"tx {txid[:16]} confirmed{where}",
                   f"watched transaction {txid} confirmed{where} ({confirmations} confirmation"
                   f"{'s' if confirmations != 1 else ''})", float(confirmations), active=False)


def _check_txid(rpc: BitcoinRPC, watchlist: WatchList, txid: str) -> Finding:
    key = f"watch:{txid}"
    tx = _optional(rpc, "getrawtransaction", txid, True)
    if tx is not None:
        try:
            watchlist.remember(txid, _outpoints_of(tx), len(tx.get("vout") or []))
        except OSError as exc:  # not written: the outpoints stay in memory and the check goes on
            log.warning("watch list %s: cannot save %s's outpoints: %s", watchlist.path, txid, exc)
        conf = _confirmations(tx)
        if conf >= 1 or ("confirmations" not in tx and isinstance(tx.get("blockhash"), str)):
            return _confirmed(rpc, key, txid, conf, tx.get("blockhash"))
        entry = _optional(rpc, "getmempoolentry", txid)
        if entry is not None:
            if entry.get("bip125-replaceable") is True:
                return Finding(DETECTOR, key, Severity.INFO, "replaceable (opt-in RBF): wait for a confirmation",
                               f"watched transaction {txid} is in the mempool and signals BIP 125 replaceability: "
                               f"the payer can still replace it; do not treat it as paid before it confirms")
            return Finding(DETECTOR, key, Severity.INFO, f"tx {txid[:16]} in the mempool",
                           f"watched transaction {txid} is in the mempool, not signalling replaceability; "
                           f"waiting for a confirmation", 0.0, active=False)
    outpoints = watchlist.outpoints(txid)
    if outpoints is None:
        return Finding(DETECTOR, key, Severity.WARNING, f"tx {txid[:16]} not seen by the node",
                       f"watched transaction {txid} is not in the node's mempool and the node does not know it "
                       f"(a confirmed transaction needs -txindex to be found before it was first seen here)")
    if outpoints:
        spends = rpc.call("gettxspendingprevout", [{"txid": t, "vout": n} for t, n in outpoints])
        if not isinstance(spends, list):
            raise RPCMalformedReplyError(f"expected an array, got {type(spends).__name__}",
                                         url=getattr(rpc, "url", "?"), method="gettxspendingprevout")
        others = sorted({s["spendingtxid"] for s in spends if isinstance(s, Mapping)
                         and isinstance(s.get("spendingtxid"), str) and s["spendingtxid"].lower() != txid})
        if others:
            by = ", ".join(others)
            return Finding(DETECTOR, key, Severity.CRITICAL, f"tx {txid[:16]} replaced by {by}",
                           f"watched transaction {txid} left the mempool and its inputs are now spent by {by} in the "
                           f"mempool: replaced by {by}, a double-spend attempt (if the payer only bumped the fee, "
                           f"check that the replacement still pays you); do not release the goods")
    for n in range(watchlist.outputs(txid) or 0):  # confirmed, on a node without -txindex?
        out = rpc.call("gettxout", txid, n, True)
        if isinstance(out, Mapping) and _confirmations(out) >= 1:
            return _confirmed(rpc, key, txid, _confirmations(out), None)
    spent = [f"{t}:{n}" for t, n in outpoints if rpc.call("gettxout", t, n, True) is None]
    if spent:
        return Finding(DETECTOR, key, Severity.CRITICAL, f"tx {txid[:16]}: a conflicting transaction was confirmed",
                       f"watched transaction {txid} is not confirmed and its input{'s' if len(spent) > 1 else ''} "
                       f"{', '.join(spent)} {'are' if len(spent) > 1 else 'is'} spent (or gone) in the chain: a "
                       f"conflicting transaction was confirmed; the payment will not confirm")
    return Finding(DETECTOR, key, Severity.WARNING, f"tx {txid[:16]} left the mempool (evicted or expired)",
                   f"watched transaction {txid} left the mempool without confirming (evicted or expired); its inputs "
                   f"are still unspent, so the payer can rebroadcast it or spend them elsewhere: not paid yet")


def check_watchlist(rpc: BitcoinRPC, watchlist: WatchList) -> list[Finding]:
    """One finding per watched (and recently removed) item; never raises on node errors (see the module doc)."""
    findings: list[Finding] = []
    unreachable: RPCError | None = None
    for item in watchlist.items():
        key = f"watch:{item}"
        try:
            kind = watchlist.kind(item)
        except KeyError:
            continue  # removed meanwhile
        if kind == "address":
            findings.append(Finding(DETECTOR, key, Severity.INFO, f"address {item} not checked",
                                    f"watching address {item} needs the collector's store of transactions by "
                                    f"address; watch the payment's txid instead", active=False))
            continue
        if unreachable is not None:
            findings.append(Finding(DETECTOR, key, Severity.WARNING, f"cannot check {item[:16]}: "
                                    f"{unreachable.method} failed", f"not checked: {unreachable}"))
            continue
        try:
            findings.append(_check_txid(rpc, watchlist, item))
        except RPCError as exc:
            if isinstance(exc, RPCConnectionError | RPCTimeoutError):
                unreachable = exc
            findings.append(Finding(DETECTOR, key, Severity.WARNING, f"cannot check {item[:16]}: {exc.method} failed",
                                    str(exc)))
    retired = watchlist.retired()
    findings += [Finding(DETECTOR, f"watch:{item}", Severity.INFO, f"{item[:16]} no longer watched",
                         f"{item} was removed from the watch list", active=False) for item in retired]
    if retired:
        try:
            watchlist.tick_retired()
        except OSError as exc:
            log.warning("watch list %s: %s", watchlist.path, exc)
    return findings
