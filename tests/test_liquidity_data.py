"""Liquidity rows: each router labels only its own channels, from the truth of its own balances; the features
are public-graph facts within the schema; and they carry the signal a federated model can learn (fee asymmetry)."""

from __future__ import annotations

import numpy as np
import pytest

from anya_fl.simln.liquidity_data import LiquidityRows, direction, held_out_rows, router_rows, simulate_rows, tip
from anya_fl.simln.network import SimLN, SimLNConfig
from core.lightning.liquidity import LIQUIDITY_SCHEMA, features


@pytest.fixture(scope="module")
def rows():
    return simulate_rows(SimLNConfig(seed=3, nodes=16), hours=12, warmup_hours=3)


def test_a_router_labels_both_directions_of_its_own_channels_from_their_balances() -> None:
    net = SimLN(SimLNConfig(seed=3, nodes=10))
    net.advance(3600)
    rng = np.random.default_rng(0)
    out = LiquidityRows()
    router_rows(net, 2, rng, out, per_direction=2)
    assert len(out.y) == len(net.by_node[2]) * 2 * 2
    k = 0
    for c in net.by_node[2]:
        peer = c.b if c.a == 2 else c.a
        for src in (2, peer):
            for _ in range(2):
                row = out.x[k]
                amount = 10 ** float(row[LIQUIDITY_SCHEMA.index("log_amount_sat")])
                assert np.allclose(row, features(direction(c, src), round(amount), tip(net)), rtol=1e-5)
                assert out.y[k] == (c.spendable_msat(src) >= round(amount) * 1000)
                k += 1


def test_rows_are_public_facts_within_the_schema(rows) -> None:
    own, held = rows
    x, y = held.arrays()  # validate() refuses any value outside a column's valid range
    assert x.shape == (len(held.hops), LIQUIDITY_SCHEMA.width) and 0 < y.mean() < 1
    for i, r in own.items():
        xi, yi = r.arrays()
        assert len(yi) > 0 and 0 < yi.mean() < 1, i
    net = SimLN(SimLNConfig(seed=3, nodes=16))
    held_two = LiquidityRows()
    held_out_rows(net, np.random.default_rng(1), 2, held_two)
    hop, amount = held_two.hops[0]
    assert held_two.y[0] == (net.channels[hop.channel].spendable_msat(hop.src) >= amount * 1000)


def test_fee_asymmetry_carries_the_balance_signal(rows) -> None:
    own, _ = rows
    x = np.concatenate([r.arrays()[0] for r in own.values()])
    y = np.concatenate([r.arrays()[1] for r in own.values()])
    asym = x[:, LIQUIDITY_SCHEMA.index("fee_asymmetry")]
    small = x[:, LIQUIDITY_SCHEMA.index("amount_share")] < 0.3
    dear, cheap = y[(asym > 0.3) & small].mean(), y[(asym < -0.3) & small].mean()
    assert 1 - dear > 2 * (1 - cheap)  # a side charging more than its reverse is short twice as often or more


def test_a_real_nodes_store_labels_the_same_rows_as_the_simulators_truth(tmp_path) -> None:
    """A simulated router served as Core Lightning, read by the real adapter into the node's store: the rows its
    snapshots give are exactly those the simulator labels from its truth (same amounts drawn)."""
    import tempfile
    from pathlib import Path

    from anya_fl.simln.cln_server import CLNServer
    from core.lightning.cln import CLNClient, CLNConfig
    from core.lightning.liquidity import labelled_rows
    from core.lightning.store import LightningStore

    net = SimLN(SimLNConfig(seed=5, nodes=10))
    net.advance(4 * 3600)
    router = max((i for i in range(10) if net.implementation[i] == "cln"), key=lambda i: len(net.by_node[i]))
    view = net.router(router)
    with tempfile.TemporaryDirectory(dir="/tmp") as d:
        with CLNServer(view, Path(d) / "rpc"):
            client = CLNClient(CLNConfig(socket_path=Path(d) / "rpc"))
            info = client.info()
            with LightningStore(tmp_path / "lightning.sqlite") as store:
                store.record(1000.0, client.channels(), [], block_height=info.block_height)
                (when, height, channels), = store.snapshots(0.0)
    assert (when, height) == (1000.0, tip(net)) and len(channels) == len(net.by_node[router])
    got = labelled_rows(sorted(channels, key=lambda c: c.channel_id), height, np.random.default_rng(9))
    want = labelled_rows(sorted(view.channels(), key=lambda c: c.channel_id), tip(net), np.random.default_rng(9))
    assert len(got[0]) == len(net.by_node[router]) * 2 * 4
    assert np.array_equal(np.stack(got[0]), np.stack(want[0])) and got[1] == want[1]
