"""The public key of every SuperNode registered with a SuperLink (Flower 1.42's Control API).

``flwr supernode list --format json`` (flwr 1.42) gives each node's id, owner and status but drops
the public key that the Control API's ``ListNodes`` returns with every node. The coordinator needs
that key to name a node after the key file it registered (``pki/nodes/node-0.pub`` -> ``node-0``):
a record the SuperLink keeps, which a node cannot choose. This module asks ``ListNodes`` through
Flower's own CLI client (the same connection, TLS and account as ``flwr supernode list``).

Pinned to flwr 1.42 (internals: ``flwr.cli.flower_config.read_superlink_connection``,
``flwr.cli.utils.init_http_client_from_connection``, ``flwr.proto.control_pb2.ListNodesRequest``,
``NodeInfo.public_key`` as PEM SubjectPublicKeyInfo); ``tests/test_node_names.py`` checks the contract.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from anya_fl.flwr_compat import require_pinned_flwr

require_pinned_flwr(__name__)


def _list_with_keys(connection: str) -> list[dict[str, Any]]:
    """``ListNodes`` on ``connection`` (FLWR_HOME from the environment): node id, status, OpenSSH public key."""
    from cryptography.hazmat.primitives import serialization
    from flwr.cli.flower_config import read_superlink_connection
    from flwr.cli.utils import init_http_client_from_connection
    from flwr.proto.control_pb2 import ListNodesRequest

    client = init_http_client_from_connection(read_superlink_connection(connection))
    try:
        res = client.ListNodes(ListNodesRequest())
    finally:
        client.close()
    nodes = []
    for info in res.nodes_info:
        key = ""
        if info.public_key:
            pub = serialization.load_pem_public_key(info.public_key)
            key = pub.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
        nodes.append({"node-id": str(info.node_id), "status": info.status, "public-key": key})
    return nodes


def list_node_keys(flwr_home: Path, connection: str, timeout: float = 60.0) -> list[dict[str, Any]]:
    """Every node registered on ``connection``: ``{"node-id", "status", "public-key"}`` (OpenSSH line, or "").

    Runs in a child process with the Flower environment of ``flwr_home`` (as ``flwr`` itself would).
    Raises :class:`core.errors.AnyaError` with Flower's message when the SuperLink cannot be asked.
    """
    from anya_fl.deployment import flower_process_env
    from core.errors import AnyaError

    try:
        res = subprocess.run([sys.executable, "-m", __name__, connection], capture_output=True, text=True,
                             timeout=timeout, env=flower_process_env(flwr_home, task_poll_s=None),
                             stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise AnyaError(f"listing the SuperNodes' keys on connection {connection!r} timed out") from None
    try:
        doc = json.loads(res.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        doc = {}
    if res.returncode != 0 or not doc.get("success"):
        why = doc.get("error") or (res.stdout + res.stderr).strip()[-1500:]
        raise AnyaError(f"could not list the SuperNodes' keys on connection {connection!r}: {why}")
    return list(doc["nodes"])


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(json.dumps({"success": False, "error": "usage: python -m anya_fl.flwr_compat.node_keys CONNECTION"}))
        return 2
    try:
        nodes = _list_with_keys(argv[0])
    except (Exception, SystemExit) as exc:  # Flower's CLI helpers raise click exceptions or exit
        print(json.dumps({"success": False, "error": f"{type(exc).__name__}: {exc}"}))
        return 1
    print(json.dumps({"success": True, "nodes": nodes}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
