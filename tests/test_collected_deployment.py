"""End to end through real processes: three simulated Core nodes (different profiles and seeds) -> three
`anya-fl node --rpc-url` processes, each collecting from its own Core into its store and running a SuperNode
with TLS and an authentication key -> the coordinator's SuperLink behind the Fleet gateway -> a run whose
models are trained only on the collected data. The stores hold exactly the simulator's transaction rows and
fee labels; every node trained fee and anomaly, only the operator with case records trained fraud, and fraud
was aggregated over that node alone."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from anya_fl import deployment as dep
from anya_fl.simnode import SimNode, SimNodeConfig
from core.collector.store import store_path
from core.data.chain import START_HEIGHT, ChainConfig, simulate_chain
from core.data.datasets import save_dataset, task_arrays
from core.fedconfig import FederationConfig
from core.security.pki import init_pki
from fl_client.node_data import load_node_data
from tests.collector_truth import truth_checks
from tests.fleet_harness import process_tree, start_fleet, stop_all

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SPECS = [dict(seed=3, profile="exchange"), dict(seed=4, profile="merchant"), dict(seed=5, profile="miner")]
SPEED = 600.0  # simulated seconds per second: a chain's ~20 busy blocks unfold in ~30 s
WEIGHT = 400_000  # small blocks: 3,000 transactions fill ~20 of them (4 MWU would take them all in three)
COMMON = dict(transactions=3_000, speed=SPEED, rpcuser="u", rpcpassword="p", start_block=2, block_weight_limit=WEIGHT)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "anya_fl.cli", *args]


def _env(home: Path) -> dict[str, str]:
    return {**os.environ, "ANYA_FL_RPC_PASSWORD": "p", "FLWR_HOME": str(home), "PYTHONPATH": str(ROOT)}


def _store_tip(data_dir: Path) -> int | None:
    path = store_path(data_dir)
    if not path.is_file():
        return None
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db:
            row = db.execute("SELECT max(height) FROM blocks WHERE connected = 1").fetchone()
    except sqlite3.OperationalError:  # created, its tables not yet
        return None
    return row[0]


def _wait(cond, what: str, timeout: float, procs: list[subprocess.Popen], logs: list[Path]) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        dead = [i for i, p in enumerate(procs) if p.poll() is not None]
        if dead or time.monotonic() > deadline:
            tails = "\n".join(dep.log_tail(log, 15) for log in logs)
            raise AssertionError(f"waiting for {what}: {'node process exited' if dead else 'timed out'}\n{tails}")
        time.sleep(0.5)


def test_simnodes_to_collectors_to_a_tls_federation(tmp_path) -> None:
    t_start = time.monotonic()
    pki = init_pki(tmp_path / "pki", len(SPECS), ["127.0.0.1", "localhost"])
    coordinator_data = tmp_path / "coordinator-data"  # the coordinator's own held-out set (a simulated chain)
    save_dataset(coordinator_data / "coordinator",
                 task_arrays(simulate_chain(ChainConfig(n_transactions=20_000, seed=2))), {"role": "coordinator"})
    home = tmp_path / "flwr-home"
    started: list[subprocess.Popen] = []
    nodes_procs: list[subprocess.Popen] = []
    simnodes: list[SimNode] = []
    seen: set[int] = set()
    data_dirs = [tmp_path / f"node-{i}" / "data" for i in range(len(SPECS))]
    logs = [tmp_path / f"node-{i}.log" for i in range(len(SPECS))]
    try:
        _, port = start_fleet(tmp_path, home, pki, [n["pub"] for n in pki["nodes"]], started)

        for i, spec in enumerate(SPECS):
            sim = SimNode(SimNodeConfig(**COMMON, **spec)).start(port=0)
            sim.clock.freeze()  # held until its collector is up: a loaded machine starts a node in seconds
            simnodes.append(sim)
            node_home = tmp_path / f"node-{i}" / "flwr-home"
            extra: list[str] = []
            if i == 0:  # only this operator has case records: `anya-fl node --labels` reads them into its store
                labels = tmp_path / "labels.csv"
                assert sim.write_labels(labels, share=0.8, seed=1) > 0
                extra = ["--labels", str(labels)]
            with logs[i].open("wb") as log:
                p = subprocess.Popen(
                    _cli("node", "--superlink", f"127.0.0.1:{port}", "--data-dir", str(data_dirs[i]),
                         "--ca", str(pki["ca_cert"]), "--node-key", str(pki["nodes"][i]["key"]),
                         "--rpc-url", sim.url, "--rpc-user", "u", "--health-port", "0", "--collect-interval", "0.2",
                         "--block-max-weight", str(WEIGHT), *extra),
                    env=_env(node_home), stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
            started.append(p)
            nodes_procs.append(p)
        # each collector has read the chain so far; then the chains run (from the same point on every machine)
        _wait(lambda: all(_store_tip(d) == s.tip_height() for d, s in zip(data_dirs, simnodes, strict=True)),
              "the collectors to start", 120, nodes_procs, logs)
        for s in simnodes:
            s.clock.run()
        # the chains run past their last busy block; then their clocks stop and each collector catches up
        def target(s: SimNode) -> int:
            heights = range(START_HEIGHT + 1, START_HEIGHT + s.chain.n_blocks + 1)
            return min(max(h for h in heights if len(s.truth.block_txs(h))) + 2, heights[-1])

        with ThreadPoolExecutor(max_workers=1) as pool:  # meanwhile: are the three SuperNodes online?
            online = pool.submit(dep.wait_for_nodes, home, "anya", len(SPECS), timeout=90)
            _wait(lambda: all(s.tip_height() >= target(s) for s in simnodes), "the chains", 180, nodes_procs, logs)
            for s in simnodes:
                s.clock.freeze()  # the tip stays fresh: a stale tip would (rightly) fail the nodes' health gate
            assert len(online.result()) == len(SPECS)
        _wait(lambda: all(_store_tip(d) == s.tip_height() for d, s in zip(data_dirs, simnodes, strict=True)),
              "the collectors to catch up", 120, nodes_procs, logs)
        time.sleep(2.0)  # a few more polls: the mempool view settles too
        for p in started:
            seen.update(process_tree(p))

        # one round: every check of the run below is per round, and a second round would check the same again
        # (the chains' clocks stand still, so the stores do too); several rounds over a TLS deployment, with a
        # node lost between them, are tests/test_deployment.py's
        cfg = FederationConfig(rounds=1, nodes=len(SPECS), min_nodes=len(SPECS), local_epochs=1,
                               tasks="fraud,fee,anomaly", seed=0, round_timeout=180.0, export_models=False,
                               run_dir=str(tmp_path / "run"), data_dir=str(coordinator_data), run_name="collected")
        metrics = dep.launch_run(home, "anya", cfg, log_file=tmp_path / "run.log", timeout=400)
        for p in started:
            if p.poll() is None:
                seen.update(process_tree(p))
    finally:
        leftover = stop_all(started, seen)
        for s in simnodes:
            s.stop()
    assert not leftover, f"processes left alive: {leftover}"

    # the stores: exactly the simulator's transaction rows and fee labels, and nothing but the store to train on
    for d, s in zip(data_dirs, simnodes, strict=True):
        n = truth_checks(s, d)
        # truth_checks compared every row and label exactly; these floors only say the run was not vacuous.
        # (A poll sees the mempool every ~120 simulated s, slower on a loaded machine: two blocks between polls
        # leave the first one's threshold unknown, and the labels that span it out, so the count varies.)
        assert n["rows"] > 200 and n["labels"] >= 5 and n["ks"] >= 2 and n["blocks"] >= 10, n
        print(f"store {d.parent.name}: {n}")
        assert not (d / "manifest.json").exists()
        assert (d / "watch" / "detectors.json").is_file()  # the node ran its network watch beside the collector
    data = [load_node_data(d) for d in data_dirs]
    assert [x.source for x in data] == ["collector"] * 3
    assert "fraud" in data[0] and all("fraud" not in x for x in data[1:])

    history = metrics["history"]
    assert [h["round"] for h in history] == [1]
    for h in history:
        assert h["nodes_replied"] == len(SPECS) and not h["nodes_failed"], h["nodes_failed"]
        by_partition = {}
        for node_id, m in h["nodes"].items():
            rows = {t: m[f"{t}.rows"] for t in ("fraud", "fee", "anomaly")}
            by_partition[node_id] = rows
        # each node trained on its own store's train split (matched by its row counts), fraud only on node 0
        want = [{t: float(x[t].size("train")) if t in x else 0.0 for t in ("fraud", "fee", "anomaly")} for x in data]
        assert sorted(by_partition.values(), key=str) == sorted(want, key=str)
        declined = h["tasks_declined"]
        assert len(declined) == 2 and all("operator labels" in r["fraud"] for r in declined.values())
        assert h["task_aggregation"] == {"fraud": "aggregated over the 1 of 3 nodes that trained it"}
        assert all(h["global"][t] for t in ("fraud", "fee", "anomaly"))
    assert "0 lines skipped" in logs[0].read_text()  # the labels file was read at start
    print(f"collected deployment test: {time.monotonic() - t_start:.0f} s")
