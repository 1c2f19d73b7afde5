"""The simulated Lightning network: deterministic, conserving, failing where the balances say, and each router's
view consistent with the others' and with the truth."""

from __future__ import annotations

from collections import defaultdict

import pytest

from anya_fl.simln.network import FEE_SPREAD, RESERVE_SHARE, SimLN, SimLNConfig, hop_fee
from core.errors import ConfigError
from core.lightning.model import FAILED, LOCAL_FAILED, SETTLED


@pytest.fixture(scope="module")
def net() -> SimLN:
    n = SimLN(SimLNConfig(seed=4, nodes=20, payments_per_hour=400))
    n.advance(6 * 3600)
    return n


def test_the_same_seed_gives_the_same_network_and_payments(net) -> None:
    again = SimLN(SimLNConfig(seed=4, nodes=20, payments_per_hour=400))
    again.advance(6 * 3600)
    assert again.payments == net.payments and again.forwards == net.forwards
    assert [c.balance_msat for c in again.channels] == [c.balance_msat for c in net.channels]
    other = SimLN(SimLNConfig(seed=5, nodes=20, payments_per_hour=400))
    assert [c.capacity_sat for c in other.channels] != [c.capacity_sat for c in net.channels]


def test_balances_are_conserved_and_failures_follow_them(net) -> None:
    assert len(net.payments) > 1000 and 0.3 < sum(p.succeeded for p in net.payments) / len(net.payments) < 1.0
    for c in net.channels:
        assert sum(c.balance_msat) == c.capacity_sat * 1000 and min(c.balance_msat) >= 0
    reasons = defaultdict(int)
    for h in net.hop_log:  # a hop passes exactly when the sender can spend the amount and the next router is up
        assert h.passed == (h.spendable_msat >= h.amount_msat and h.dst_online)
        reasons[h.passed] += 1
    assert reasons[True] and reasons[False]
    assert all(h.spendable_msat <= net.channels[h.channel].capacity_sat * 1000 * (1 - RESERVE_SHARE) + 1000
               for h in net.hop_log)


def test_each_router_sees_its_own_side_and_the_forwards_agree_along_a_path(net) -> None:
    short = {c.short_id: c for c in net.channels}
    for node in range(net.config.nodes):
        view = net.router(node)
        for ch in view.channels():
            c = short[ch.channel_id]
            assert ch.local_msat == c.balance_msat[c.side(node)] and ch.local_msat + ch.remote_msat == \
                c.capacity_sat * 1000
            assert ch.peer == net.pubkeys[c.b if node == c.a else c.a] and ch.peer != view.info().pubkey
        for f in view.forwards(0, float("inf")):
            assert f.outcome in (SETTLED, FAILED, LOCAL_FAILED) and f.in_msat >= f.out_msat
            if f.outcome == SETTLED:
                assert f.fee_msat == f.in_msat - f.out_msat and f.failure is None
                if not net.manages_fees[node]:  # a static policy: the fee is the one it charges now
                    policy = short[f.out_channel].policy[short[f.out_channel].side(node)]
                    assert f.fee_msat == hop_fee(policy, f.out_msat)
            else:
                assert f.fee_msat == 0 and (f.failure is not None) == (f.outcome == LOCAL_FAILED)
    settled = sum(f.fee_msat for fs in net.forwards.values() for f in fs)
    assert settled == sum(p.fee_msat for p in net.payments if p.succeeded) > 0  # what payers paid, routers earned


def test_fee_managers_charge_more_where_their_side_is_empty() -> None:
    small = SimLN(SimLNConfig(seed=2, nodes=12, payments_per_hour=400))
    small.advance(3 * 3600)
    small.update_fees()
    factors = []
    for c in small.channels:
        for s, node in ((0, c.a), (1, c.b)):
            share, base = c.balance_msat[s] / (c.capacity_sat * 1000), small.base_ppm[(c.index, s)]
            want = min(5_000, max(1, round(base * FEE_SPREAD ** (0.5 - share)))) if small.manages_fees[node] else base
            assert c.policy[s].fee_rate_ppm == want
            factors.append(want / base)
    assert max(factors) > 2 and min(factors) < 0.5  # some channels empty on one side, some full
    assert any(small.manages_fees) and not all(small.manages_fees)


def test_bad_settings_name_the_field() -> None:
    for kw, name in (({"nodes": 2}, "simln.nodes"), ({"payments_per_hour": 0}, "simln.payments_per_hour"),
                     ({"nodes": 5, "channels_per_node": 5}, "simln.channels_per_node"), ({"seed": -1}, "simln.seed")):
        with pytest.raises(ConfigError) as err:
            SimLN(SimLNConfig(**kw))
        assert err.value.setting == name
    with pytest.raises(ConfigError):
        SimLN(SimLNConfig(nodes=5)).router(5)


def test_the_priors_and_their_scores() -> None:
    from anya_fl.simln.estimators import bimodal_prior, score
    from anya_fl.simln.network import Hop, uniform_prior
    from core.lightning.model import ChannelPolicy

    hop = Hop(0, 0, 1, 1_000_000, ChannelPolicy(0, 1))
    grid = [0, 1_000, 100_000, 500_000, 900_000, 999_000, 1_000_000]
    for prior in (uniform_prior, bimodal_prior):
        p = [prior(hop, a) for a in grid]
        assert p[0] == 1.0 and p[-1] < 1e-5 and all(x >= y for x, y in zip(p, p[1:], strict=False))
        assert prior(hop, 500_000) == pytest.approx(0.5, abs=1e-6)
    # the bimodal mass lies near the ends: a small amount fails more often than under the uniform prior (the side
    # is often nearly empty), a large one passes more often (it is often nearly full)
    assert bimodal_prior(hop, 100_000) < uniform_prior(hop, 100_000)
    assert bimodal_prior(hop, 900_000) > uniform_prior(hop, 900_000)
    perfect, coin = score([0.999, 0.001], [True, False]), score([0.5, 0.5], [True, False])
    assert perfect.log_loss < 0.01 < coin.log_loss == pytest.approx(0.6931, abs=1e-3) and coin.ece == 0.0
    assert score([0.9] * 10, [True] * 5 + [False] * 5).ece == pytest.approx(0.4)


def test_success_rate_plays_the_same_workload_with_each_estimator() -> None:
    from anya_fl.simln.estimators import bimodal_prior, success_rate
    from anya_fl.simln.network import uniform_prior

    cfg = SimLNConfig(seed=6, nodes=10, payments_per_hour=200)
    uniform, bimodal = success_rate(cfg, lambda _: uniform_prior, 2), success_rate(cfg, lambda _: bimodal_prior, 2)
    assert uniform["payments"] == bimodal["payments"] > 100  # the routing does not draw from the workload's seed
    for r in (uniform, bimodal):
        assert 0 < r["success_rate"] <= 1 and 1 <= r["mean_attempts"] <= 10
    never = success_rate(cfg, lambda _: lambda hop, amount: 0.0, 2)  # a payer that trusts no hop but its own channels
    assert never["success_rate"] < uniform["success_rate"]
