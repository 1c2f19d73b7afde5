"""`anya-fl bench network`'s runner on a small scale: a scenario is detected within its stated time, a few clean
hours raise nothing above INFO, and the keys are the documented ones."""

from __future__ import annotations

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
