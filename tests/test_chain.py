"""The simulated chain: determinism, one schema with the JSON parser, splits, partitions, files."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from core.bitcoin.features import CHAIN_TASKS, MEMPOOL_SCHEMA, TX_SCHEMA
from core.bitcoin.parsing import parse_transaction
from core.data.chain import ChainConfig, core_transaction_json, simulate_chain
from core.data.datasets import (
    FEE_TARGETS,
    TaskSplits,
    held_out_shortfall,
    load_dataset,
    partition_nodes,
    save_dataset,
    smallest_usable_chain,
    split_times,
    task_arrays,
    write_federation_data,
)
from core.errors import ConfigError, DatasetError
from core.scoring import roc_auc


@pytest.fixture(scope="module")
def chain():
    return simulate_chain(ChainConfig(n_transactions=30_000, seed=7))


def test_same_seed_same_chain_other_seed_other_chain(chain) -> None:
    again = simulate_chain(ChainConfig(n_transactions=30_000, seed=7))
    assert np.array_equal(chain.tx_rows, again.tx_rows)
    assert np.array_equal(chain.snapshot_rows, again.snapshot_rows)
    assert np.array_equal(chain.block_time, again.block_time)
    other = simulate_chain(ChainConfig(n_transactions=30_000, seed=8))
    assert not np.array_equal(chain.tx_rows[:100], other.tx_rows[:100])


def test_rows_fit_the_schema(chain) -> None:
    TX_SCHEMA.validate(chain.tx_rows)
    MEMPOOL_SCHEMA.validate(chain.snapshot_rows)


def test_parser_and_simulator_make_the_same_rows(chain) -> None:
    """One schema: simulated transactions rendered as Core JSON parse back to the simulator's rows."""
    rng = np.random.default_rng(0)
    idx = np.concatenate([rng.choice(chain.n_transactions, 300, replace=False),
                          np.flatnonzero(chain.tx["illicit"])[:50], np.flatnonzero(chain.tx["anomaly"])[:50]])
    for i in idx:
        doc = json.loads(json.dumps(core_transaction_json(chain, int(i))))
        row = parse_transaction(doc, height=int(chain.tx["entry_height"][i]))
        np.testing.assert_allclose(row, chain.tx_rows[i], rtol=1e-6, atol=1e-9, err_msg=f"tx {i}")


def test_blocks_respect_weight_limit_and_miners_pick_by_fee(chain) -> None:
    assert chain.block_weight.max() <= chain.config.block_weight_limit
    tx = chain.tx
    rate = tx["fee_sat"] / tx["vsize"]
    confirmed = tx["confirm_height"] >= 0
    b = tx["confirm_height"][confirmed] - tx["confirm_height"][confirmed].min()
    # every confirmed tx paid at least its block's marginal rate
    thr = chain.block_threshold[tx["confirm_height"][confirmed] - 850_001]
    assert np.all(rate[confirmed] >= thr - 1e-9)
    assert b.max() < chain.n_blocks
    assert np.all(tx["confirm_height"][confirmed] > tx["entry_height"][confirmed])


def test_mempool_congests_and_clears(chain) -> None:
    full = chain.block_weight > 0.95 * chain.config.block_weight_limit
    assert 0.2 < full.mean() < 0.95, "the default chain should have both full and non-full blocks"
    count = chain.snapshot_rows[:, MEMPOOL_SCHEMA.index("mempool_tx_count")]
    assert count.max() > 10 * max(np.median(count), 1) or count.max() > 2_000


def test_fee_labels_do_not_increase_with_k(chain) -> None:
    s, k, y = chain.fee_labels(FEE_TARGETS)
    by = {(int(a), int(b)): v for a, b, v in zip(s, k, y, strict=True)}
    for (snap, kk), v in list(by.items())[:5_000]:
        for k2 in FEE_TARGETS:
            if k2 > kk and (snap, k2) in by:
                assert by[(snap, k2)] <= v + 1e-6


def test_time_split_is_ordered_and_fee_labels_do_not_cross(chain) -> None:
    data = task_arrays(chain)
    t = chain.tx["arrival_time"]
    fraud = data["fraud"]
    assert t[fraud.index["train"]].max() < t[fraud.index["val"]].min()
    assert t[fraud.index["val"]].max() < t[fraud.index["test"]].min()
    t1, t2 = split_times(chain)
    k_train = data["fee"].x["train"][:, -1].astype(int)
    assert np.all(chain.label_block_end(data["fee"].index["train"], k_train) < t1)
    assert np.all(chain.snapshot_time[data["fee"].index["test"]] >= t2)
    for task in data.values():
        assert all(task.size(s) > 0 for s in ("train", "val", "test"))


def test_not_trivially_separable(chain) -> None:
    """No single feature ranks illicit above licit transactions almost perfectly (AUC >= 0.95).

    The strongest single feature is input age (young inputs: stolen funds move fast), near 0.88.
    """
    y = chain.tx["illicit"]
    best = max(max(roc_auc(y, chain.tx_rows[:, j]), 1 - roc_auc(y, chain.tx_rows[:, j])) for j in range(TX_SCHEMA.width))
    assert best < 0.95, best
    assert 0.01 < y.mean() < 0.08


def test_partitions_are_non_iid_and_cover_every_transaction(chain) -> None:
    shards = partition_nodes(chain, 8, seed=3)
    all_idx = np.sort(np.concatenate([s.tx_index for s in shards]))
    assert np.array_equal(all_idx, np.arange(chain.n_transactions))
    rates = [chain.tx["illicit"][s.tx_index].mean() for s in shards]
    assert max(rates) > 1.5 * min(rates)
    mixes = np.array([np.bincount(chain.tx["category"][s.tx_index], minlength=12) / len(s.tx_index) for s in shards])
    assert np.abs(mixes[0] - mixes[3]).sum() > 0.2  # exchange vs miner profiles differ
    again = partition_nodes(chain, 8, seed=3)
    assert all(np.array_equal(a.tx_index, b.tx_index) for a, b in zip(shards, again, strict=True))


def test_dataset_round_trip_and_errors(chain, tmp_path) -> None:
    data = task_arrays(chain)
    save_dataset(tmp_path / "d", data, {"note": "x"})
    loaded, manifest = load_dataset(tmp_path / "d")
    for task in data:
        for s in ("train", "val", "test"):
            assert np.array_equal(loaded[task].x[s], data[task].x[s])
            assert np.array_equal(loaded[task].y[s], data[task].y[s])
    assert manifest["info"] == {"note": "x"}
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(tmp_path / "missing")
    m = json.loads((tmp_path / "d" / "manifest.json").read_text())
    m["schema_version"] = 999
    (tmp_path / "d" / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DatasetError, match="schema_version 999"):
        load_dataset(tmp_path / "d")
    (tmp_path / "d" / "manifest.json").write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        load_dataset(tmp_path / "d")


@pytest.mark.parametrize(
    ("field", "value", "setting"),
    [("n_transactions", 10, "chain.n_transactions"), ("load_swing", 2.0, "chain.load_swing"),
     ("anomaly_share", -0.1, "chain.anomaly_share"), ("snapshot_interval_s", 0, "chain.snapshot_interval_s")],
)
def test_bad_chain_config_names_the_setting(field, value, setting) -> None:
    with pytest.raises(ConfigError, match=setting.replace(".", r"\.")):
        simulate_chain(ChainConfig(**{field: value}))


def test_core_package_never_imports_torch_or_flwr() -> None:
    code = (
        "import importlib, pkgutil, sys, core\n"
        "for m in pkgutil.walk_packages(core.__path__, 'core.'):\n"
        "    importlib.import_module(m.name)\n"
        "bad = sorted(n for n in sys.modules if n.split('.')[0] in ('torch', 'flwr', 'opacus'))\n"
        "print(len(list(pkgutil.walk_packages(core.__path__, 'core.'))), bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert int(proc.stdout.split()[0]) >= 8  # really walked the package


def test_a_quick_trial_chain_is_refused_with_the_smallest_size_that_works(tmp_path) -> None:
    """20,000 transactions (seed 0) arrive over a dozen blocks: the time splits leave val empty. The error
    names the next size, in steps of 5,000, that works for the seed, and that size does work end to end."""
    with pytest.raises(ConfigError) as caught:
        write_federation_data(tmp_path / "small", 20_000, seed=0, nodes=3)
    err = caught.value
    assert err.setting == "transactions"
    assert str(err).startswith("transactions: 20,000 transactions leave only 0 fraud rows in the val split")
    assert str(err).endswith("the smallest size above 20,000 that works with seed 0 is 40,000 (tried in steps of 5,000)")
    assert not (tmp_path / "small").exists(), "nothing is written for a refused chain"
    for n in (25_000, 30_000, 35_000):  # "smallest": every size between the two is refused too
        assert held_out_shortfall(task_arrays(simulate_chain(ChainConfig(n_transactions=n, seed=0))))
    assert smallest_usable_chain(20_000, seed=0) == 40_000

    profiles = write_federation_data(tmp_path / "trial", 40_000, seed=0, nodes=3)
    assert profiles == ["exchange", "merchant", "hobbyist"]
    held_out, manifest = load_dataset(tmp_path / "trial" / "coordinator")
    assert manifest["info"] == {"seed": 0, "transactions": 40_000, "role": "coordinator"}
    assert held_out_shortfall(held_out) == ""
    for i in range(3):
        node, _ = load_dataset(tmp_path / "trial" / f"node-{i}")
        assert all(node[t].size("train") > 0 for t in CHAIN_TASKS)


def test_a_split_without_one_class_is_named() -> None:
    """The fraud threshold is chosen on val and PR-AUC/ROC-AUC need both classes: a split without one is refused."""
    rows = np.zeros((30, 1), np.float32)

    def splits(val_labels: np.ndarray) -> TaskSplits:
        y = {"train": np.r_[np.ones(1), np.zeros(29)], "val": val_labels, "test": np.r_[np.ones(1), np.zeros(29)]}
        return TaskSplits(x=dict.fromkeys(("train", "val", "test"), rows), y={k: v.astype(np.float32) for k, v in y.items()})

    assert held_out_shortfall({"fraud": splits(np.zeros(30))}, ("fraud",)) == "no illicit fraud row in the val split"
    assert held_out_shortfall({"anomaly": splits(np.ones(30))}, ("anomaly",)) == "no normal anomaly row in the val split"
    assert held_out_shortfall({"fraud": splits(np.r_[np.ones(1), np.zeros(29)])}, ("fraud",)) == ""
    short = TaskSplits(x={"train": rows, "val": rows[:19], "test": rows}, y={"train": np.zeros(30), "val": np.zeros(19),
                                                                             "test": np.zeros(30)})
    assert held_out_shortfall({"fee": short}, ("fee",)) == "only 19 fee rows in the val split"
