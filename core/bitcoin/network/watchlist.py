"""A merchant's double-spend watch list: "tell me when a payment I am waiting for was replaced or double-spent".

:class:`WatchList` keeps the watched items (txids and addresses) in a JSON file written atomically; the first
time a watched transaction is seen (``getrawtransaction <txid> true``) its input outpoints, its output count and
its outputs (``vout``: scriptPubKey hex and value in sat) are remembered there, so it can still be followed once
the node no longer knows it. Files written before outputs were remembered still load; their outputs are added
the next time the transaction is seen. :func:`check_watchlist` reports one :class:`~core.alerts.Finding` per item
(detector ``double-spend``, key ``watch:<item>``), active or not:

* confirmed (``confirmations`` >= 1) -> inactive, "confirmed in block N";
* in the mempool -> inactive, unless its entry says ``bip125-replaceable``: then INFO "replaceable (opt-in RBF):
  wait for a confirmation" (active: the payer can still replace it);
* gone from the mempool and not confirmed -> its outpoints decide. ``gettxspendingprevout`` names one other
  mempool spender: the replacement is fetched (``getrawtransaction <txid> true``) and compared with the remembered
  outputs. Every original output but at most one is paid again with the same script and value, and the one other
  (if any) pays the same script a smaller value (the payer's change paying the higher fee) -> WARNING
  "fee-bumped (RBF) by <txid>: still pays the same outputs" (the replacement is remembered, so its confirmation
  reads as the payment's). Anything else -> CRITICAL "replaced by <txid>: ..." naming what no longer matches
  (a double-spend attempt); so is a replacement that cannot be fetched, more than one spender, or a transaction
  whose outputs were never remembered, each saying why. No mempool spender but ``gettxout`` finds an outpoint
  spent -> inactive "fee bump <txid> confirmed" when the remembered fee bump confirmed, else CRITICAL "a
  conflicting transaction was confirmed"; all unspent -> WARNING "left the mempool (evicted or expired)".
  A node without ``-txindex`` does not find confirmed transactions with getrawtransaction: the transaction's own
  outputs (``gettxout``) then tell whether it (or its fee bump) confirmed;
* never seen by the node -> WARNING "not seen by the node" (no outpoints to follow yet).

A fee bump that shrinks the output paying *you* instead of the payer's change looks the same from the outputs
alone: the WARNING names the output that shrank and by how much, so check that it is not yours.

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
from collections import Counter
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
_HEX = re.compile(r"(?:[0-9a-fA-F]{2})*")
SATS_PER_BTC = 100_000_000
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
        # item -> {"kind", "outpoints", "outputs", "vout", "bumped_by"}, in the order added
        self._items: dict[str, dict[str, Any]] = {}
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
            record = _record(kind)
            outpoints, outputs = entry.get("outpoints"), entry.get("outputs")
            vout, bumped_by = entry.get("vout"), entry.get("bumped_by")  # absent in files of older versions
            if kind == "txid" and outpoints is not None:
                if not isinstance(outpoints, list) or not all(
                        isinstance(o, list) and len(o) == 2 and isinstance(o[0], str) and _TXID.fullmatch(o[0])
                        and _whole(o[1]) for o in outpoints):
                    raise bad(f"items[{n}].outpoints must be a list of [txid, vout]")
                if not _whole(outputs):
                    raise bad(f"items[{n}].outputs must be a whole number >= 0")
                record.update(outpoints=[(o[0].lower(), o[1]) for o in outpoints], outputs=outputs)
                if vout is not None:
                    if not isinstance(vout, list) or not all(
                            isinstance(o, list) and len(o) == 2 and isinstance(o[0], str) and _HEX.fullmatch(o[0])
                            and _whole(o[1]) for o in vout):
                        raise bad(f"items[{n}].vout must be a list of [scriptPubKey hex, value in sat]")
                    record["vout"] = [(o[0].lower(), o[1]) for o in vout]
                if bumped_by is not None:
                    if not isinstance(bumped_by, str) or not _TXID.fullmatch(bumped_by):
                        raise bad(f"items[{n}].bumped_by must be a txid")
                    record["bumped_by"] = bumped_by.lower()
            self._items[item] = record
        for item, left in retired.items():
            if isinstance(left, int) and not isinstance(left, bool) and left > 0 and item not in self._items:
                self._retired[str(item)] = left

    def _save(self) -> None:
        items = []
        for item, r in self._items.items():
            doc: dict[str, Any] = {"item": item, "kind": r["kind"]}
            if r["outpoints"] is not None:
                doc.update(outpoints=[list(o) for o in r["outpoints"]], outputs=r["outputs"])
                if r["vout"] is not None:
                    doc["vout"] = [list(o) for o in r["vout"]]
                if r["bumped_by"] is not None:
                    doc["bumped_by"] = r["bumped_by"]
            items.append(doc)
        atomic_write_json(self.path, {"format": FORMAT, "items": items, "retired": self._retired})

    def add(self, item: str) -> str:
        """Watch a txid (64 hex digits) or an address; returns its canonical form. Adding it again changes nothing."""
        kind, canonical = parse_watch_item(item)
        with self._lock:
            if canonical not in self._items:
                self._items[canonical] = _record(kind)
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

    def vout(self, txid: str) -> list[tuple[str, int]] | None:
        """The outputs remembered for a watched txid as (scriptPubKey hex, value in sat); None: not remembered (not
        seen yet, or a watch list file of an older version and not seen since)."""
        with self._lock:
            r = self._items.get(txid)
            return None if r is None or r["vout"] is None else list(r["vout"])

    def bumped_by(self, txid: str) -> str | None:
        """The fee bump last seen replacing a watched txid, or None."""
        with self._lock:
            r = self._items.get(txid)
            return None if r is None else r["bumped_by"]

    def remember(self, txid: str, outpoints: list[tuple[str, int]], outputs: int,
                 vout: list[tuple[str, int]] | None = None) -> None:
        """Record a watched transaction's input outpoints, output count and outputs (the first time it is seen;
        outputs also later, for an item loaded from an older file without them)."""
        with self._lock:
            r = self._items.get(txid)
            if r is None:
                return
            if r["outpoints"] is None:
                r.update(outpoints=list(outpoints), outputs=int(outputs), vout=None if vout is None else list(vout))
            elif r["vout"] is None and vout is not None:
                r["vout"] = list(vout)
            else:
                return
            self._save()

    def note_bump(self, txid: str, replacement: str | None) -> None:
        """Record (or with None forget) the fee bump replacing a watched txid."""
        with self._lock:
            r = self._items.get(txid)
            if r is None or r["bumped_by"] == replacement:
                return
            r["bumped_by"] = replacement
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


def _whole(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _record(kind: str) -> dict[str, Any]:
    return {"kind": kind, "outpoints": None, "outputs": None, "vout": None, "bumped_by": None}


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


def _vout_of(tx: Mapping[str, Any]) -> list[tuple[str, int]] | None:
    """A transaction's outputs as (scriptPubKey hex, value in sat); None when they cannot be read."""
    vout = tx.get("vout")
    if not isinstance(vout, list):
        return None
    out = []
    for o in vout:
        spk = o.get("scriptPubKey") if isinstance(o, Mapping) else None
        value = o.get("value") if isinstance(o, Mapping) else None
        if not isinstance(spk, Mapping) or not isinstance(spk.get("hex"), str) or not _HEX.fullmatch(spk["hex"]) \
                or isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 21e6:
            return None
        out.append((spk["hex"].lower(), round(value * SATS_PER_BTC)))
    return out


def _btc(sat: int) -> str:
    return f"{sat / SATS_PER_BTC:.8f}"


def _same_outputs(original: list[tuple[str, int]], replacement: list[tuple[str, int]]) -> tuple[bool, str]:
    """(whether ``replacement`` is a fee bump of ``original``, what differs). A fee bump pays every original output
    again (same script, same value) but at most one, and that one to the same script with a smaller value."""
    left = Counter(replacement)
    missing = []
    for out in original:
        if left[out] > 0:
            left[out] -= 1
        else:
            missing.append(out)
    if not missing:
        return True, "every output of the original is paid again with the same script and value"
    if len(missing) == 1:
        script, value = missing[0]
        smaller = [v for (sc, v), c in left.items() if c > 0 and sc == script and v < value]
        if smaller:
            now = max(smaller)
            return True, (f"every output of the original is paid again with the same script and value except output "
                          f"{original.index(missing[0])} (script {script[:24]}...), {value - now} sat smaller "
                          f"({_btc(value)} -> {_btc(now)} BTC): the payer's change paying the higher fee, unless "
                          f"that output is your payment")
    shown = "; ".join(f"output {original.index(o)} ({_btc(o[1])} BTC to script {o[0][:24]}...)" for o in missing[:3])
    more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
    return False, f"it no longer pays {shown}{more}"


def _replaced(rpc: BitcoinRPC, watchlist: WatchList, key: str, txid: str, others: list[str]) -> Finding:
    """The finding for a watched transaction whose inputs other mempool transactions spend: a fee bump (WARNING)
    or a double-spend attempt (CRITICAL, saying why it is not a fee bump)."""
    by = ", ".join(others)
    original = watchlist.vout(txid)
    why = ""
    if len(others) > 1:
        why = f"its inputs are spent by {len(others)} different transactions, not one fee bump"
    elif original is None:
        why = ("its outputs were never recorded (first seen by an older watch list), so a fee bump cannot be told "
               "from a double spend")
    else:
        try:
            doc = _optional(rpc, "getrawtransaction", others[0], True)
        except RPCError as exc:
            doc, why = None, f"the replacement could not be fetched to compare its outputs ({exc})"
        else:
            if doc is None:
                why = "the replacement could not be fetched to compare its outputs (getrawtransaction: not found)"
        replacement = None if doc is None else _vout_of(doc)
        if doc is not None and replacement is None:
            why = "the replacement's outputs could not be read to compare them"
        if replacement is not None:
            bump, detail = _same_outputs(original, replacement)
            if bump:
                try:
                    watchlist.note_bump(txid, others[0])
                except OSError as exc:  # not written: remembered in memory only
                    log.warning("watch list %s: cannot save %s's fee bump: %s", watchlist.path, txid, exc)
                return Finding(DETECTOR, key, Severity.WARNING,
                               f"tx {txid[:16]} fee-bumped (RBF) by {by}: still pays the same outputs",
                               f"watched transaction {txid} was replaced by {by}, which spends its inputs with a higher "
                               f"fee: {detail}. A fee bump, not a double spend: the payment is now {by}; wait for "
                               f"it to confirm")
            why = detail
    return Finding(DETECTOR, key, Severity.CRITICAL, f"tx {txid[:16]} replaced by {by}",
                   f"watched transaction {txid} left the mempool and its inputs are now spent by {by} in the "
                   f"mempool: replaced by {by}: {why}; a double-spend attempt: do not release the goods")


def _confirmed(rpc: BitcoinRPC, key: str, txid: str, confirmations: int, blockhash: Any,
               bump: str | None = None) -> Finding:
    where = ""
    if isinstance(blockhash, str):
        try:
            height = _obj(rpc, "getblockheader", rpc.call("getblockheader", blockhash)).get("height")
            where = f" in block {height}" if isinstance(height, int) else ""
        except RPCError:
            pass  # the height only decorates the message
    count = f"({confirmations} confirmation{'s' if confirmations != 1 else ''})"
    if bump is not None:
        return Finding(DETECTOR, key, Severity.INFO, f"tx {txid[:16]} fee-bumped by {bump[:16]}, confirmed{where}",
                       f"watched transaction {txid} was fee-bumped by {bump} (the same outputs), which confirmed"
                       f"{where} {count}", float(confirmations), active=False)
    return Finding(DETECTOR, key, Severity.INFO, f"tx {txid[:16]} confirmed{where}",
                   f"watched transaction {txid} confirmed{where} {count}", float(confirmations), active=False)


def _bump_confirmed(rpc: BitcoinRPC, watchlist: WatchList, key: str, txid: str) -> Finding | None:
    """The inactive finding when the fee bump remembered for ``txid`` confirmed, else None."""
    bump = watchlist.bumped_by(txid)
    if bump is None:
        return None
    doc = _optional(rpc, "getrawtransaction", bump, True)
    if doc is not None:
        conf = _confirmations(doc)
        return _confirmed(rpc, key, txid, conf, doc.get("blockhash"), bump) if conf >= 1 else None
    for n in range(len(watchlist.vout(txid) or [])):  # a node without -txindex: the bump's own outputs
        out = rpc.call("gettxout", bump, n, True)
        if isinstance(out, Mapping) and _confirmations(out) >= 1:
            return _confirmed(rpc, key, txid, _confirmations(out), None, bump)
    return None


def _check_txid(rpc: BitcoinRPC, watchlist: WatchList, txid: str) -> Finding:
    key = f"watch:{txid}"
    tx = _optional(rpc, "getrawtransaction", txid, True)
    if tx is not None:
        try:
            watchlist.remember(txid, _outpoints_of(tx), len(tx.get("vout") or []), _vout_of(tx))
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
            return _replaced(rpc, watchlist, key, txid, others)
    for n in range(watchlist.outputs(txid) or 0):  # confirmed, on a node without -txindex?
        out = rpc.call("gettxout", txid, n, True)
        if isinstance(out, Mapping) and _confirmations(out) >= 1:
            return _confirmed(rpc, key, txid, _confirmations(out), None)
    spent = [f"{t}:{n}" for t, n in outpoints if rpc.call("gettxout", t, n, True) is None]
    if spent:
        bumped = _bump_confirmed(rpc, watchlist, key, txid)
        if bumped is not None:
            return bumped
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
