"""The project's one signing routine: Ed25519 keys in PEM files, signatures over canonical JSON.

Key files::

    <name>.key   PEM PKCS8 Ed25519 private key, mode 0600
    <name>.pub   PEM SubjectPublicKeyInfo Ed25519 public key, mode 0644

A key is named by its *key id*: the first 16 hex characters of sha256 of the raw 32-byte public key.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from core.errors import AnyaError
from core.storage import atomic_write_bytes

__all__ = [
    "CanonicalJsonError",
    "Ed25519PrivateKey",
    "Ed25519PublicKey",
    "KeyFileError",
    "SignatureError",
    "canonical_json",
    "generate_signing_key",
    "key_id",
    "load_private_key",
    "load_public_key",
    "sign",
    "verify",
]


class SignatureError(AnyaError):
    """A signature that does not verify with the given public key."""


class KeyFileError(AnyaError):
    """A key file that is missing, already exists, or is not a PEM Ed25519 key; names the path."""


class CanonicalJsonError(AnyaError, ValueError):
    """A value that cannot be signed as canonical JSON (NaN, infinity)."""


def generate_signing_key(private_path: str | os.PathLike[str], public_path: str | os.PathLike[str]) -> str:
    """Create an Ed25519 key pair: private key (PEM PKCS8, 0600) and public key (PEM SPKI); returns its key id.

    Refuses to overwrite an existing private key. The public key is written first, so a crash never leaves
    a private key without its public half.
    """
    private_path, public_path = Path(private_path), Path(public_path)
    if private_path.exists():
        raise KeyFileError(f"{private_path} already exists; refusing to overwrite a signing key")
    key = Ed25519PrivateKey.generate()
    public = key.public_key()
    atomic_write_bytes(public_path, public.public_bytes(serialization.Encoding.PEM,
                                                        serialization.PublicFormat.SubjectPublicKeyInfo), mode=0o644)
    atomic_write_bytes(private_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()), mode=0o600)
    return key_id(public)


def _read_key_file(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(f"{path}: no such {what} file") from None
    except IsADirectoryError:
        raise KeyFileError(f"{path}: is a directory, not a {what} file") from None
    except PermissionError:
        raise KeyFileError(f"{path}: permission denied reading the {what} file") from None


def load_private_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """Read a PEM (PKCS8, unencrypted) Ed25519 private key."""
    path = Path(path)
    data = _read_key_file(path, "private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise KeyFileError(f"{path}: not an unencrypted PEM Ed25519 private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: not an Ed25519 private key (found {type(key).__name__})")
    return key


def load_public_key(path: str | os.PathLike[str]) -> Ed25519PublicKey:
    """Read a PEM (SubjectPublicKeyInfo) Ed25519 public key."""
    path = Path(path)
    data = _read_key_file(path, "public key")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise KeyFileError(f"{path}: not a PEM Ed25519 public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path}: not an Ed25519 public key (found {type(key).__name__})")
    return key


def key_id(public_key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """First 16 hex characters of sha256 of the raw 32-byte public key (a private key names its public key)."""
    if isinstance(public_key, Ed25519PrivateKey):
        public_key = public_key.public_key()
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def sign(private_key: Ed25519PrivateKey, payload: bytes) -> bytes:
    """The 64-byte Ed25519 signature of ``payload``."""
    return private_key.sign(payload)


def verify(public_key: Ed25519PublicKey, payload: bytes, signature: bytes) -> None:
    """Check an Ed25519 signature; raises :class:`SignatureError` when it does not verify."""
    try:
        public_key.verify(signature, payload)
    except InvalidSignature:
        raise SignatureError(f"signature does not verify with key {key_id(public_key)}") from None


def canonical_json(obj: Any) -> bytes:
    """The bytes that get signed: JSON with sorted keys, no whitespace, UTF-8, floats as repr; NaN/inf refused."""
    try:
        text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError:
        raise CanonicalJsonError("cannot sign NaN or infinity: canonical JSON has no representation for them") from None
    return text.encode("utf-8")
