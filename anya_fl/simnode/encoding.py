"""Deterministic identifiers and Bitcoin text encodings for the simulated node.

Hashes are SHA-256 of a text naming what they identify (seed, index, height, branch), so every run with the
same seed serves the same txids, block hashes and addresses. Addresses are real encodings (Base58Check for
P2PKH/P2SH, bech32/bech32m for segwit, BIP 173/350) of hash-derived programs, and descriptors carry Core's
BIP 380 checksum, so a wallet library or address validator accepts them.
"""

from __future__ import annotations

import hashlib

_BECH32_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_BECH32_GEN = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
_BECH32M_CONST = 0x2BC830A3
_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"

_DESC_INPUT = "0123456789()[],'/*abcdefgh@:$%{}IJKLMNOPQRSTUVWXYZ&+-.;<=>?!^_|~ijklmnopqrstuvwxyzABCDEFGH`#\"\\ "
_DESC_GEN = (0xF5DEE51989, 0xA9FDCA3312, 0x1BAB10E32D, 0x3706B1677A, 0x644D626FFD)


def _top_table(gen: tuple[int, ...]) -> tuple[int, ...]:
    """For each value of the 5 bits shifted out of a BCH checksum register, the generator XOR they cause."""
    table = []
    for top in range(32):
        x = 0
        for i in range(5):
            if (top >> i) & 1:
                x ^= gen[i]
        table.append(x)
    return tuple(table)


_BECH32_TOP = _top_table(_BECH32_GEN)
_DESC_TOP = _top_table(_DESC_GEN)
_DESC_SYMBOL = {c: (i & 31, i >> 5) for i, c in enumerate(_DESC_INPUT)}


def digest(text: str) -> bytes:
    """SHA-256 of ``text`` (32 bytes)."""
    return hashlib.sha256(text.encode()).digest()


def hex_id(text: str) -> str:
    """A 64-hex identifier (txid, block hash) determined by ``text``."""
    return hashlib.sha256(text.encode()).hexdigest()


def _bech32_polymod(values: list[int]) -> int:
    chk = 1
    top = _BECH32_TOP
    for v in values:
        chk = ((chk & 0x1FFFFFF) << 5 ^ v) ^ top[chk >> 25]
    return chk


def _to_5bit(data: bytes) -> list[int]:
    """Regroup bytes into 5-bit values, zero-padded at the end (BIP 173 convertbits with padding)."""
    bits = 8 * len(data)
    pad = -bits % 5
    num = int.from_bytes(data, "big") << pad
    count = (bits + pad) // 5
    return [(num >> (5 * (count - 1 - k))) & 31 for k in range(count)]


def segwit_address(program: bytes, version: int, hrp: str = "bc") -> str:
    """The bech32 (v0) or bech32m (v1+) address of a witness program."""
    data = [version, *_to_5bit(program)]
    expanded = [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]
    const = 1 if version == 0 else _BECH32M_CONST
    mod = _bech32_polymod(expanded + data + [0] * 6) ^ const
    checksum = [(mod >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(_BECH32_CHARSET[d] for d in data + checksum)


def base58check(version: int, payload: bytes) -> str:
    """Base58Check of ``version || payload`` (P2PKH version 0, P2SH version 5)."""
    raw = bytes([version]) + payload
    raw += hashlib.sha256(hashlib.sha256(raw).digest()).digest()[:4]
    num = int.from_bytes(raw, "big")
    out = ""
    while num:
        num, rem = divmod(num, 58)
        out = _B58[rem] + out
    pad = len(raw) - len(raw.lstrip(b"\0"))
    return "1" * pad + out


def descriptor(body: str) -> str:
    """``body#checksum`` with the BIP 380 descriptor checksum Core appends."""
    top, symbol, mask = _DESC_TOP, _DESC_SYMBOL, 0x7FFFFFFFF
    chk = 1
    groups = count = 0
    for c in body:
        low, group = symbol[c]
        chk = ((chk & mask) << 5 ^ low) ^ top[chk >> 35]
        groups = groups * 3 + group
        count += 1
        if count == 3:
            chk = ((chk & mask) << 5 ^ groups) ^ top[chk >> 35]
            groups = count = 0
    tail = [groups] if count else []
    for value in tail + [0] * 8:
        chk = ((chk & mask) << 5 ^ value) ^ top[chk >> 35]
    chk ^= 1
    return body + "#" + "".join(_BECH32_CHARSET[(chk >> (5 * (7 - i))) & 31] for i in range(8))
