"""`anya-fl bench network`'s runner on a small scale: a scenario is detected within its stated time, a few clean
hours raise nothing above INFO, and the keys are the documented ones."""

from __future__ import annotations

from anya_fl.experiments import arrival_bench as ab
from anya_fl.experiments import network_bench as nb


def test_scenario_runner_and_keys() -> None:
    eclipse = nb.run_scenario("eclipse", seed=1)
    assert eclipse["detected"] and eclipse["within_stated"] and eclipse["alerts_before"] == 0
    assert eclipse["minutes_to_detect"] <= 1.0 and [e["kind"] for e in eclipse["events"]] == ["eclipse"]
    week = nb.run_clean_week(seed=1, transactions=20_000)  # about 4 simulated hours: the keys, not the week
    assert week["false_alarms"] == 0 and week["simulated_days"] > 0.1
    keys = nb.bench_metrics({"eclipse": eclipse}, week)
    assert set(keys) == {"network.eclipse.detected", "network.eclipse.minutes_to_detect",
                         "network.eclipse.within_stated", "network.clean_week.false_alarms",
                         "network.clean_week.info"}
    assert keys["network.eclipse.detected"]["value"] == 1.0
    alarmed = nb.run_clean_week(seed=1, transactions=20_000, model=lambda _v: 0.9)  # a model that always alarms
    assert alarmed["model_max_score"] == 0.9 and alarmed["model_polls"] == round(alarmed["simulated_days"] * 144)
    assert alarmed["false_alarms"] == 1 and alarmed["by_detector"] == ["network-model:WARNING", *week["by_detector"]]


def test_slow_arrival_scores_each_predictor_against_the_truth() -> None:
    """Per test block (forecast, persistence, rule, truly slow, observed slow, height): the forecast ranks the two
    truly slow blocks first; persistence and the rule are scored on the same blocks; unscored rows are counted."""
    rows = [(0.9, 1.0, True, True, True, 1), (0.7, 0.0, False, True, False, 2), (0.6, 1.0, True, False, True, 3),
            (0.1, 0.0, False, False, False, 4), (None, None, False, False, False, 5)]
    r = ab.score(rows)
    assert (r["blocks"], r["slow"], r["unscored"]) == (4, 2, 1)
    assert r["roc_auc"] == 1.0 and r["precision"] == 2 / 3 and r["recall"] == 1.0
    assert r["persistence_roc_auc"] == 0.5 and r["persistence_precision"] == 0.5 and r["persistence_recall"] == 0.5
    assert r["rule_precision"] == 0.5 and r["rule_recall"] == 0.5 and r["label_agreement"] == 3 / 5
    keys = ab.arrival_metrics(r | {"lead_minutes": 30.0, "rule_lead_minutes": 10.0})
    assert keys["network.slow_arrival.lead_minutes"] == {"value": 30.0, "unit": "min", "target": 10.0}


def test_flood_and_fee_bump_scenarios(monkeypatch) -> None:
    """The mempool flood raises mempool-full within its stated 32 minutes; the payer's fee bump of a watched payment
    is a double-spend WARNING at the first poll and never CRITICAL, even once it confirms (a CRITICAL one fails it)."""
    flood = nb.run_scenario("mempool_flood", seed=1)
    assert flood["detected"] and flood["within_stated"] and flood["alerts_before"] == 0
    assert flood["stated_minutes"] == 32.0 and 0 < flood["minutes_to_detect"] <= 32.0
    assert [e["kind"] for e in flood["events"]] == ["mempool_flood"]
    bump = nb.run_scenario("rbf_replacement", seed=1)
    assert bump["detected"] and bump["within_stated"] and bump["above_ceiling"] == []
    assert bump["minutes_to_detect"] <= 1.0 and [e["kind"] for e in bump["events"]] == ["rbf_replacement"]
    assert set(nb.bench_metrics({"rbf_replacement": bump}, {"false_alarms": 0, "info": 0})) >= {
        "network.rbf_replacement.detected", "network.rbf_replacement.within_stated"}
    monkeypatch.setitem(nb.REPLACE, "rbf_replacement", nb.REPLACE["double_spend"])  # a double spend posing as one
    posing = nb.run_scenario("rbf_replacement", seed=1)
    assert not posing["detected"] and not posing["within_stated"]
    assert posing["above_ceiling"] and posing["above_ceiling"][0].startswith("CRITICAL")


def test_slow_propagation_scenario() -> None:
    """Blocks held back 2.5 minutes: the propagation detector warns within two polls of the third held block's
    arrival (not before: two slow blocks are not enough), and every block the watch timed is within one poll of
    the delay the node's truth gives it."""
    slow = nb.run_scenario("slow_propagation", seed=1)
    assert slow["detected"] and slow["within_stated"] and slow["alerts_before"] == 0
    assert slow["stated_minutes"] == 2.0 and slow["noticeable_minutes"] >= nb.SLOW_DELAY_S / 60  # a delay at least
    assert slow["noticeable_minutes"] <= slow["minutes_to_detect"] <= slow["noticeable_minutes"] + 2
    assert [e["kind"] for e in slow["events"]] == ["slow_propagation"]
    assert slow["delay_blocks"] >= 3 and slow["delays_within_poll"]
    assert 0 < slow["delay_error_s"] <= slow["delay_max_error_s"] <= nb.POLL_S  # 150 s is not a whole number of polls
    keys = nb.bench_metrics({"slow_propagation": slow}, {"false_alarms": 0, "info": 0})
    assert keys["network.slow_propagation.delay_error_s"] == {"value": slow["delay_error_s"], "unit": "s",
                                                               "target": nb.POLL_S}
    assert keys["network.slow_propagation.within_stated"]["value"] == 1.0
