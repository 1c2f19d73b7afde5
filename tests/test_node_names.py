"""Names an operator can use: nodes named after their registered key, the PKI's model-signing key by default."""

from __future__ import annotations

import re
from pathlib import Path

import flwr
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from anya_fl import deployment as dep
from anya_fl.cli.coordinator import DEFAULT_PKI_DIR, _registered_node_names, coordinator_run_keys
from core.errors import ConfigError
from core.security.pki import SIGNING_KEY, init_pki, node_key_names


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict:
    return init_pki(tmp_path_factory.mktemp("pki") / "pki", 3)


def _flower_key(pub: Path) -> str:
    """A node's key as the SuperLink records it (PEM SubjectPublicKeyInfo), back as an OpenSSH line."""
    pem = serialization.load_ssh_public_key(pub.read_bytes()).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return serialization.load_pem_public_key(pem).public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def test_node_ids_map_to_the_names_of_their_registered_keys(pki) -> None:
    node0, node1, node2 = (n["pub"] for n in pki["nodes"])
    stranger = ec.generate_private_key(ec.SECP384R1()).public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    nodes = [  # `flwr supernode list --format json` rows, with each node's key (anya_fl.flwr_compat.node_keys)
        {"node-id": "15450403177221490609", "status": "online", "public-key": _flower_key(node1)},
        {"node-id": "13142786802073205879", "status": "online", "public-key": node0.read_text()},  # with newline
        {"node-id": "11", "status": "registered", "public-key": _flower_key(node2) + " comment@host"},
        {"node-id": "12", "status": "online", "public-key": stranger},  # a key the PKI never issued
        {"node-id": "13", "status": "online", "public-key": ""},  # insecure SuperLink: no key
        {"node-id": "14", "status": "online"},
    ]
    assert node_key_names(nodes, pki["dir"]) == {"15450403177221490609": "node-1", "13142786802073205879": "node-0",
                                                 "11": "node-2"}
    # the names come from the coordinator's key files: another PKI names nothing
    other = init_pki(pki["dir"].parent / "other", 3)
    assert node_key_names(nodes, other["dir"]) == {}


def test_coordinator_run_signs_with_the_pki_key_by_default(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    # no PKI here: unsigned, and the warning names the key it looked for
    pki_dir, key, line = coordinator_run_keys(None, None)
    assert pki_dir is None and key is None
    assert f"no --signing-key and no {DEFAULT_PKI_DIR / SIGNING_KEY}" in line and "unsigned" in line

    init_pki(DEFAULT_PKI_DIR, 1)  # `anya-fl coordinator init pki`
    pki_dir, key, line = coordinator_run_keys(None, None)
    assert pki_dir == DEFAULT_PKI_DIR and key == DEFAULT_PKI_DIR / SIGNING_KEY and key.is_file()
    assert line.startswith(f"signing the final models with {key}")

    # an explicit key wins over the PKI's
    own = tmp_path / "own.key"
    own.write_bytes(b"x")
    assert coordinator_run_keys(None, own)[1:] == (own, f"signing the final models with {own}")

    # an explicit PKI elsewhere: its key; one without a model-signing key: unsigned
    elsewhere = init_pki(tmp_path / "elsewhere", 0)["dir"]
    assert coordinator_run_keys(elsewhere, None)[:2] == (elsewhere, elsewhere / SIGNING_KEY)
    (elsewhere / SIGNING_KEY).unlink()
    pki_dir, key, line = coordinator_run_keys(elsewhere, None)
    assert pki_dir == elsewhere and key is None and "unsigned" in line

    with pytest.raises(ConfigError, match=r"^pki-dir: .*missing is not a directory"):
        coordinator_run_keys(tmp_path / "missing", None)
    with pytest.raises(ConfigError, match=r"^signing-key: .*nope.key is not a file"):
        coordinator_run_keys(None, tmp_path / "nope.key")


def test_flower_contract_nodeinfo_carries_the_public_key() -> None:
    """anya_fl.flwr_compat.node_keys reads NodeInfo.public_key from the Control API (flwr 1.42)."""
    from flwr.proto.node_pb2 import NodeInfo

    from anya_fl.flwr_compat import PINNED_FLWR, node_keys

    assert flwr.__version__ == PINNED_FLWR and callable(node_keys.list_node_keys)
    assert "public_key" in NodeInfo.DESCRIPTOR.fields_by_name


@pytest.mark.slow
def test_a_real_superlink_names_registered_nodes_by_key(tmp_path, monkeypatch, capsys) -> None:
    """TLS SuperLink, two of three keys registered: each node id maps to its key's name; nothing else."""
    from anya_fl.flwr_compat.node_keys import list_node_keys

    pki = init_pki(tmp_path / "pki", 3, ["127.0.0.1"])
    home = tmp_path / "flwr-home"
    monkeypatch.setenv("FLWR_HOME", str(home))  # the coordinator's FLWR_HOME (_flwr_home)
    port = dep.free_port()
    link = dep.start_superlink("127.0.0.1", port, home, tmp_path / "superlink.log", pki_dir=pki["dir"])
    try:
        dep.write_connection(home, "anya", f"127.0.0.1:{port}", root_certificates=pki["ca_cert"])
        expected = {}
        for node in pki["nodes"][:2]:
            line = dep.register_node(home, "anya", node["pub"], superlink=link)
            expected[re.search(r"SuperNode (\d+) registered", line).group(1)] = node["name"]
        listed = list_node_keys(home, "anya")
        assert {n["node-id"] for n in listed} == {n["node-id"] for n in dep.list_nodes(home, "anya")} == set(expected)
        assert _registered_node_names(pki["dir"], "anya") == expected
    finally:
        dep.stop_process(link)
    capsys.readouterr()
    assert _registered_node_names(pki["dir"], "anya") == {}  # SuperLink gone: the report falls back to node ids
    assert "could not list the SuperNodes' keys on connection 'anya'" in capsys.readouterr().err
