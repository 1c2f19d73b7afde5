"""Certificates and keys for a Flower deployment: a CA, the SuperLink's TLS certificate, SuperNode keys.

Layout of a PKI directory (``init_pki``)::

    ca.pem, ca.key              self-signed CA (EC P-384); nodes trust ca.pem (--root-certificates)
    server.pem, server.key      SuperLink TLS certificate signed by the CA, SANs for the given hosts/IPs
    nodes/node-<i>.key          SuperNode private key, OpenSSH PEM (--auth-supernode-private-key)
    nodes/node-<i>.pub          its public key, OpenSSH one-liner (`flwr supernode register`)
    model-signing.key, .pub     Ed25519 key pair the coordinator signs published models with (core.security.signing);
                                nodes trust model-signing.pub

Private keys are written with mode 0600. Only ``cryptography`` and the standard library are used.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from core.errors import ConfigError
from core.security.signing import generate_signing_key
from core.storage import atomic_write_bytes

DEFAULT_HOSTS = ("127.0.0.1", "localhost")
CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY, NODES_DIR = "ca.pem", "ca.key", "server.pem", "server.key", "nodes"
SIGNING_KEY, SIGNING_PUB = "model-signing.key", "model-signing.pub"
CA_DAYS = 3650
SERVER_DAYS = 825
_CURVE = ec.SECP384R1


def _write_private(path: Path, data: bytes) -> Path:
    """Write a private key atomically, readable by its owner only."""
    return atomic_write_bytes(path, data, mode=0o600)


def _write_public(path: Path, data: bytes) -> Path:
    """Write a certificate or public key atomically, world-readable."""
    return atomic_write_bytes(path, data, mode=0o644)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _san(hosts: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def make_ca(common_name: str = "anya-fl CA", days: int = CA_DAYS) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A new CA key and its self-signed certificate."""
    key = ec.generate_private_key(_CURVE())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def make_server_cert(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, hosts: list[str],
                     days: int = SERVER_DAYS) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A SuperLink TLS key and certificate signed by the CA, valid for ``hosts`` (DNS names or IPs)."""
    if not hosts:
        raise ConfigError("hosts", "is empty: the SuperLink certificate needs at least one host name or IP")
    key = ec.generate_private_key(_CURVE())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
        .add_extension(_san(hosts), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def make_node_keys() -> tuple[bytes, bytes]:
    """A SuperNode EC key pair: (private key as OpenSSH PEM, public key as an OpenSSH line)."""
    key = ec.generate_private_key(_CURVE())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return private, public + b"\n"


def write_node_keys(directory: Path, name: str) -> tuple[Path, Path]:
    """Write ``<name>.key`` (0600) and ``<name>.pub`` into ``directory``; refuse to overwrite."""
    key_path, pub_path = directory / f"{name}.key", directory / f"{name}.pub"
    if key_path.exists() or pub_path.exists():
        raise ConfigError("node", f"{key_path} already exists; choose another node name")
    private, public = make_node_keys()
    _write_private(key_path, private)
    _write_public(pub_path, public)
    return key_path, pub_path


def init_pki(directory: Path, nodes: int, hosts: list[str] | None = None) -> dict:
    """Create a CA, the SuperLink certificate for ``hosts`` and ``nodes`` SuperNode key pairs.

    Also creates the coordinator's model-signing key pair. Returns ``{"dir", "ca_cert", "ca_key", "server_cert",
    "server_key", "signing_key", "signing_pub", "nodes": [{"name", "key", "pub"}]}`` (paths). Refuses a directory
    that already holds a PKI.
    """
    directory = Path(directory)
    # loopback names always: the coordinator's own CLI and the Fleet gateway reach the SuperLink on 127.0.0.1
    hosts = list(dict.fromkeys([*(hosts or []), *DEFAULT_HOSTS]))
    if nodes < 0:
        raise ConfigError("nodes", f"{nodes} must be >= 0")
    if any((directory / f).exists() for f in (CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY, SIGNING_KEY)):
        raise ConfigError("pki-dir", f"{directory} already holds a PKI (ca.pem/ca.key); refusing to overwrite it")
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    ca_key, ca_cert = make_ca()
    srv_key, srv_cert = make_server_cert(ca_key, ca_cert, hosts)
    out: dict = {
        "dir": directory,
        "ca_key": _write_private(directory / CA_KEY, _key_pem(ca_key)),
        "ca_cert": _write_public(directory / CA_CERT, ca_cert.public_bytes(serialization.Encoding.PEM)),
        "server_key": _write_private(directory / SERVER_KEY, _key_pem(srv_key)),
        "server_cert": _write_public(directory / SERVER_CERT, srv_cert.public_bytes(serialization.Encoding.PEM)),
        "hosts": hosts,
        "nodes": [],
    }
    generate_signing_key(directory / SIGNING_KEY, directory / SIGNING_PUB)
    out["signing_key"], out["signing_pub"] = directory / SIGNING_KEY, directory / SIGNING_PUB
    for i in range(nodes):
        key_path, pub_path = write_node_keys(directory / NODES_DIR, f"node-{i}")
        out["nodes"].append({"name": f"node-{i}", "key": key_path, "pub": pub_path})
    return out


def _openssh_key(text: str) -> str | None:
    """An OpenSSH public key line in canonical form (type and key, no comment), or None if it is none."""
    try:
        key = serialization.load_ssh_public_key(text.strip().encode())
    except (ValueError, TypeError, UnicodeEncodeError):
        return None
    return key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def node_key_names(nodes: Iterable[Mapping[str, Any]], pki_dir: Path) -> dict[str, str]:
    """Node id -> name of its registered key file (``nodes/node-0.pub`` -> ``node-0``).

    ``nodes`` are the SuperLink's records, ``{"node-id", "public-key": <OpenSSH line>}`` each
    (:func:`anya_fl.flwr_compat.node_keys.list_node_keys`): the coordinator's own record of which key
    each node id authenticates with, so a node cannot choose its name. Nodes whose key is not in
    ``pki_dir/nodes`` are left out.
    """
    by_key: dict[str, str] = {}
    for pub in sorted((Path(pki_dir) / NODES_DIR).glob("*.pub")):
        key = _openssh_key(pub.read_text(errors="replace"))
        if key is not None:
            by_key[key] = pub.stem
    names = {}
    for node in nodes:
        key = _openssh_key(str(node.get("public-key") or ""))
        if key in by_key and node.get("node-id") not in (None, ""):
            names[str(node["node-id"])] = by_key[key]
    return names
