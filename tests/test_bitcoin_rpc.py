"""The Bitcoin Core RPC client and node probes against FakeBitcoind, a real loopback JSON-RPC server."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import core.bitcoin.rpc as rpc_module
from core.bitcoin.features import MEMPOOL_SCHEMA, TX_SCHEMA
from core.bitcoin.parsing import parse_block
from core.bitcoin.probes import NodeProbes, ProbeResult, recent_chain_rows
from core.bitcoin.rpc import (
    BitcoinRPC,
    RPCAuthError,
    RPCConfig,
    RPCConnectionError,
    RPCError,
    RPCMalformedReplyError,
    RPCReplyError,
    RPCTimeoutError,
)
from core.errors import AnyaError, ConfigError
from tests.bitcoind_stub import TXOUTS_PER_BLOCK, FakeBitcoind

COMPONENTS = ["bitcoin.connection", "bitcoin.sync", "bitcoin.mempool", "bitcoin.fees"]


@pytest.fixture(scope="module")
def node():
    with FakeBitcoind() as server:
        yield server


@pytest.fixture(autouse=True)
def reset(node):
    """Every test starts from a synced, healthy node with fresh call counts."""
    node.state, node.delay_s, node.warmup_calls, node.wrong_id = "synced", 0.0, 0, False
    node.malformed, node.not_json = set(), set()
    node.mempool_loaded, node.mempool_usage, node.connections = True, None, 10
    node.network_active, node.fee_estimate_available = True, True
    node.tip = node.chain.top - 1
    node.calls.clear()
    yield


def client(url: str, **kw) -> BitcoinRPC:
    settings = {"user": "alice", "password": "secret", "timeout_s": 2.0, "retries": 2, "backoff_s": 0.05} | kw
    return BitcoinRPC(RPCConfig(url=url, **settings))


def by_component(results: list[ProbeResult]) -> dict[str, ProbeResult]:
    return {r.component: r for r in results}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


# ---- probes


def test_synced_node_is_fully_ready(node) -> None:
    results = NodeProbes(client(node.url)).probe_all()
    assert [r.component for r in results] == COMPONENTS
    for r in results:
        assert (r.readiness, r.reason, r.error) == (1.0, "", False), r
    got = by_component(results)
    assert got["bitcoin.connection"].metrics == {"connections": 10.0, "connections_in": 0.0,
                                                 "connections_out": 10.0, "version": 270000.0}
    assert got["bitcoin.sync"].metrics["initialblockdownload"] == 0.0
    assert got["bitcoin.mempool"].metrics["size"] > 0
    assert got["bitcoin.fees"].metrics["feerate_sat_vb"] == pytest.approx(12.0)


def test_initial_block_download(node) -> None:
    node.state = "ibd"
    sync = by_component(NodeProbes(client(node.url)).probe_all())["bitcoin.sync"]
    assert sync.readiness == 0.0 and not sync.error
    assert sync.reason.startswith("initial block download: 73.2 % verified, block ")
    assert f"of {node.tip + 50_000} headers" in sync.reason
    assert sync.metrics["initialblockdownload"] == 1.0


def test_headers_ahead_of_blocks(node) -> None:
    node.state = "behind"
    sync = by_component(NodeProbes(client(node.url)).probe_all())["bitcoin.sync"]
    assert sync.readiness == 0.5
    assert "5 blocks behind" in sync.reason


def test_degraded_components(node) -> None:
    node.connections, node.mempool_loaded, node.fee_estimate_available = 2, False, False
    got = by_component(NodeProbes(client(node.url)).probe_all())
    assert got["bitcoin.connection"].readiness == 0.25 and "2 peer connections" in got["bitcoin.connection"].reason
    assert (got["bitcoin.mempool"].readiness, got["bitcoin.mempool"].reason) == (0.0, "mempool not loaded yet")
    assert got["bitcoin.fees"].readiness == 0.5
    assert "Insufficient data or no feerate found" in got["bitcoin.fees"].reason
    assert "feerate_sat_vb" not in got["bitcoin.fees"].metrics

    node.connections, node.mempool_loaded, node.mempool_usage = 0, True, 291_000_000
    got = by_component(NodeProbes(client(node.url)).probe_all())
    assert (got["bitcoin.connection"].readiness, got["bitcoin.connection"].reason) == (0.0, "no peer connections")
    # a full mempool is named, but anyone can fill it by broadcasting: it does not lower the node's readiness
    assert got["bitcoin.mempool"].readiness == 1.0 and got["bitcoin.mempool"].reason.startswith("mempool 97 % full")

    node.connections, node.network_active = 10, False
    conn = NodeProbes(client(node.url)).probe_all()[0]
    assert conn.readiness == 0.0 and "networkactive false" in conn.reason


def test_rpc_down_fails_every_component_after_one_call(monkeypatch) -> None:
    """A node that refuses connections costs one call's attempts and back-off, not one per component: the
    first refused call marks every component (the UTXO probe too) failed, and later probes make no call."""
    server = FakeBitcoind().start()
    url = server.url
    server.stop()  # nothing listens on the port any more
    slept: list[float] = []
    monkeypatch.setattr(rpc_module, "time", SimpleNamespace(sleep=slept.append))  # back-off, recorded, not waited
    rpc = client(url, retries=2, backoff_s=0.05)
    posts: list[str] = []
    real_post = rpc._post

    def counting_post(method: str, body: bytes) -> tuple[int, bytes]:
        posts.append(method)
        return real_post(method, body)

    monkeypatch.setattr(rpc, "_post", counting_post)
    results = NodeProbes(rpc, utxo_interval_s=60.0).probe_all()
    assert len(posts) == 3 and len(set(posts)) == 1, posts  # 1 + retries attempts of the first probe's call
    assert slept == [0.05, 0.1]  # exponential back-off between them, nothing else
    assert [r.component for r in results] == [*COMPONENTS, "bitcoin.utxo"]
    for r in results:
        assert r.readiness == 0.0 and r.error
        assert url in r.reason and "connection refused" in r.reason  # refused at once, no timeout waited for
        assert "\n" not in r.reason
    with pytest.raises(RPCConnectionError) as info:
        client(url, retries=1).getblockcount()
    assert info.value.attempts == 2 and isinstance(info.value, AnyaError)
    assert slept == [0.05, 0.1, 0.05]


def test_failed_call_marks_only_its_component(node) -> None:
    node.malformed = {"getmempoolinfo"}
    got = by_component(NodeProbes(client(node.url)).probe_all())
    assert got["bitcoin.mempool"].error and got["bitcoin.mempool"].readiness == 0.0
    assert "'loaded' missing" in got["bitcoin.mempool"].reason
    assert all(got[c].readiness == 1.0 and not got[c].error for c in COMPONENTS if c != "bitcoin.mempool")


def test_utxo_probe_is_rate_limited_and_computes_growth(node) -> None:
    clock = FakeClock()
    probes = NodeProbes(client(node.url), utxo_interval_s=300.0, clock=clock)
    first = probes.probe_all()[-1]
    assert first.component == "bitcoin.utxo" and first.readiness == 1.0
    assert first.metrics["txouts_growth_per_block"] == 0.0
    assert first.metrics["height"] == node.tip
    node.tip -= 3  # would change the reply, but the probe must not call again within the interval
    clock.now += 299.0
    again = probes.probe_all()[-1]
    assert node.calls["gettxoutsetinfo"] == 1 and again == first
    node.tip += 5
    clock.now += 1.0
    later = probes.probe_all()[-1]
    assert node.calls["gettxoutsetinfo"] == 2
    assert later.metrics["height"] == first.metrics["height"] + 2
    assert later.metrics["txouts_growth_per_block"] == TXOUTS_PER_BLOCK
    assert {"txouts", "total_amount", "height"} <= set(later.metrics)


# ---- client errors and retries


def test_bad_credentials_are_not_retried(node) -> None:
    with pytest.raises(RPCAuthError) as info:
        client(node.url, password="wrong").getblockchaininfo()
    assert node.calls["getblockchaininfo"] == 1
    message = str(info.value)
    assert node.url in message and "HTTP 401" in message and "rpcuser/rpcpassword" in message


def test_cookie_auth_follows_a_restart(tmp_path: Path) -> None:
    cookie = tmp_path / ".cookie"
    with FakeBitcoind(user=None, password=None, cookie_path=cookie) as server:
        assert cookie.read_text().startswith("__cookie__:")
        rpc = BitcoinRPC(RPCConfig(url=server.url, cookie_file=cookie, timeout_s=2.0))
        assert rpc.getblockcount() == server.tip
        server.rotate_cookie()  # a restarted bitcoind writes a new cookie; the client re-reads it
        assert rpc.getblockcount() == server.tip
        with pytest.raises(RPCAuthError):  # user/password is not accepted by a cookie-only node
            client(server.url).getblockcount()
    missing = tmp_path / "nowhere" / ".cookie"
    with pytest.raises(RPCAuthError) as info:
        BitcoinRPC(RPCConfig(url="http://127.0.0.1:8332", cookie_file=missing)).getblockcount()
    assert str(missing) in str(info.value)


def test_malformed_replies_name_the_problem(node) -> None:
    rpc = client(node.url)
    node.malformed = {"getblockchaininfo"}
    with pytest.raises(RPCMalformedReplyError) as info:
        rpc.getblockchaininfo()
    assert info.value.field == "blocks" and "'blocks' missing" in str(info.value)
    assert node.calls["getblockchaininfo"] == 1  # not retried

    node.not_json = {"getnetworkinfo"}
    with pytest.raises(RPCMalformedReplyError, match="not JSON"):
        rpc.getnetworkinfo()
    assert node.calls["getnetworkinfo"] == 1

    node.wrong_id = True
    with pytest.raises(RPCMalformedReplyError) as info:
        rpc.getblockcount()
    assert info.value.field == "id"


def test_slow_reply_times_out_after_all_attempts(node) -> None:
    node.delay_s = 0.4
    rpc = client(node.url, timeout_s=0.15, retries=2, backoff_s=0.01)
    with pytest.raises(RPCTimeoutError) as info:
        rpc.getblockchaininfo()
    # on a busy machine the client can give up on the last attempt before the server thread has counted it:
    # wait for the count (the server answers each after the delay, to a closed connection)
    for _ in range(2000):
        if node.calls["getblockchaininfo"] >= 3:
            break
        time.sleep(0.01)
    assert node.calls["getblockchaininfo"] == 3
    assert info.value.attempts == 3 and "within 0.15 s" in str(info.value) and node.url in str(info.value)


def test_warmup_is_retried_then_succeeds(node) -> None:
    node.warmup_calls = 2
    assert client(node.url, retries=2, backoff_s=0.01).getblockchaininfo()["blocks"] == node.tip
    assert node.calls["getblockchaininfo"] == 3

    node.warmup_calls = 5
    with pytest.raises(RPCReplyError) as info:
        client(node.url, retries=1, backoff_s=0.01).getblockcount()
    assert info.value.code == -28 and info.value.rpc_message == "Loading block index..."


def test_rpc_errors_carry_core_code(node) -> None:
    rpc = client(node.url)
    with pytest.raises(RPCReplyError) as info:
        rpc.call("getfancystuff")
    assert info.value.code == -32601 and info.value.rpc_message == "Method not found"
    assert node.calls["getfancystuff"] == 1 and "getfancystuff" in str(info.value)
    with pytest.raises(RPCReplyError) as info:
        rpc.getblockhash(10)
    assert info.value.code == -8
    assert isinstance(info.value, RPCError)


@pytest.mark.parametrize(
    ("settings", "setting"),
    [
        ({"url": "ftp://127.0.0.1:8332"}, "rpc.url"),
        ({"url": "127.0.0.1:8332"}, "rpc.url"),
        ({"timeout_s": 0}, "rpc.timeout_s"),
        ({"retries": -1}, "rpc.retries"),
        ({"backoff_s": -0.1}, "rpc.backoff_s"),
        ({"cookie_file": Path("/tmp/.cookie")}, "rpc.cookie_file"),
        ({"user": None, "password": None}, "rpc.user"),
        ({"password": None}, "rpc.password"),
    ],
)
def test_config_validation_names_the_setting(settings: dict, setting: str) -> None:
    config = RPCConfig(**({"user": "alice", "password": "secret"} | settings))
    with pytest.raises(ConfigError) as info:
        config.validate()
    assert info.value.setting == setting
    with pytest.raises(ConfigError):
        BitcoinRPC(config)


def test_password_stays_out_of_repr() -> None:
    assert "secret" not in repr(RPCConfig(user="alice", password="secret"))


# ---- chain rows through the one parser


def test_recent_chain_rows(node) -> None:
    rpc = client(node.url)
    tx_rows, mempool_rows = recent_chain_rows(rpc, blocks=6)
    assert tx_rows.dtype == np.float32 and mempool_rows.dtype == np.float32
    assert tx_rows.shape[1] == TX_SCHEMA.width and mempool_rows.shape == (1, MEMPOOL_SCHEMA.width)
    assert np.isfinite(tx_rows).all() and np.isfinite(mempool_rows).all()
    expected = sum(len(node.chain.by_height[h]) for h in range(node.tip - 5, node.tip + 1))
    assert tx_rows.shape[0] == expected > 0
    assert node.calls["getblock"] == 6
    assert mempool_rows[0, MEMPOOL_SCHEMA.index("mempool_tx_count")] == len(node.chain.mempool_members(node.tip))
    # verbosity 3 carries prevouts; the parser then knows the input ages
    block = rpc.getblock(rpc.getblockhash(node.tip), 3)
    assert parse_block(block)[:, TX_SCHEMA.index("input_age_known")].all()


def test_getrawtransaction_shapes(node) -> None:
    rpc = client(node.url)
    txid = rpc.getblock(rpc.getblockhash(node.tip), 1)["tx"][1]
    doc = rpc.getrawtransaction(txid, True)
    assert doc["txid"] == txid and "fee" not in doc and doc["confirmations"] >= 1
    assert "fee" in rpc.getrawtransaction(txid, 2)
    assert isinstance(rpc.getrawtransaction(txid, False), str)
    mempool = rpc.getrawmempool(True)
    entry = next(iter(mempool.values()))
    assert {"vsize", "weight", "fees", "bip125-replaceable"} <= set(entry)


def test_free_port_refuses_quickly() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(RPCConnectionError, match="connection refused"):
        client(f"http://127.0.0.1:{port}", retries=0).getnetworkinfo()
