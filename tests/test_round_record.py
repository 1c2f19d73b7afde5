"""The typed round record: what each sampled node's reply became, in metrics.json, checkpoints and the report.

The round-loop tests run the real ServerApp loop (``run_federation``) with the real ClientApp in process
(:class:`LocalGrid`), one node attacking through the robustness bench's attack app.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fl_server.round_record import NodeFailure, RoundRecord, ScreeningEvent, history_from_dicts

ROOT = Path(__file__).resolve().parent.parent
NODES = 5


# ---------------------------------------------------------------------------------------------- the record


def _record() -> RoundRecord:
    return RoundRecord(
        round=3, sampled=6, missing=1,
        replied={"10": {"num-examples": 5.0}, "11": {"num-examples": 6.0}, "12": {"num-examples": 7.0},
                 "13": {"num-examples": 8.0}},
        failed=[NodeFailure("14", 4100, "below min-stage")],
        rejected=["10"], flagged=["11"], kept=["12", "13"],
        screening=[ScreeningEvent("10", "rejected", "NaN"), ScreeningEvent("11", "flagged", "norm", 2),
                   ScreeningEvent("11", "excluded", "flagged in 2 consecutive rounds")],
        train={"fraud.loss": 0.5}, global_metrics={"fraud": {"pr_auc": 0.8}}, federated_eval={"fraud.loss": 0.6},
        seconds=2.5, train_seconds=2.0)


def test_round_trip_through_json_keeps_every_field_and_the_keys_readers_use() -> None:
    rec = _record()
    d = json.loads(json.dumps(rec.to_dict()))
    assert RoundRecord.from_dict(d) == rec
    assert d["nodes_sampled"] == 6 and d["nodes_replied"] == 4 and d["nodes_missing"] == 1
    assert d["nodes_declined"] == 1 and d["nodes_failed"] == [{"node": "14", "code": 4100, "reason": "below min-stage"}]
    assert (d["nodes_rejected"], d["nodes_flagged"], d["nodes_kept"]) == (["10"], ["11"], ["12", "13"])
    assert d["screening"][1] == {"node": "11", "kind": "flagged", "reason": "norm", "consecutive": 2}
    assert "consecutive" not in d["screening"][0]
    assert d["global"] == {"fraud": {"pr_auc": 0.8}} and d["nodes"]["12"] == {"num-examples": 7.0}
    assert rec.excluded == ["11"] and [f.node for f in rec.declined] == ["14"]


def test_a_record_written_before_the_typed_record_loads_with_missing_recounted() -> None:
    old = _record().to_dict()
    for key in ("nodes_rejected", "nodes_flagged", "nodes_kept"):
        del old[key]
    old["nodes_missing"] = 3  # the old loop also counted the rejected and the flagged node as missing
    rec = RoundRecord.from_dict(old)
    assert rec.missing == 1 and rec.rejected == ["10"] and rec.flagged == ["11"] and rec.kept == ["12", "13"]
    assert rec.sampled == len(rec.replied) + len(rec.failed) + rec.missing
    # sparse or damaged rows read as empty, never raise
    assert history_from_dicts([{"round": 1, "global": {"fraud": {"pr_auc": 0.5}}}, "junk", None])[0] == RoundRecord(
        round=1, global_metrics={"fraud": {"pr_auc": 0.5}})
    assert RoundRecord.from_dict({"nodes": [], "nodes_failed": {}, "screening": "x", "round": "2"}) == RoundRecord(round=0)


def test_reports_read_the_record_without_flower_or_torch() -> None:
    code = ("import sys, anya_fl.simulation_report, fl_server.round_record; "
            "print(sorted(m for m in ('flwr', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------------------------------------- the real round loop


@pytest.fixture(scope="module")
def fed_data(tmp_path_factory) -> Path:
    from core.data.datasets import write_federation_data

    d = tmp_path_factory.mktemp("round-record") / "data"
    write_federation_data(d, 40_000, 0, NODES, ("fraud",))
    return d


@pytest.mark.slow
def test_the_round_loop_counts_screened_nodes_apart_from_missing_ones_and_stops_sampling_excluded_ones(
        fed_data, tmp_path) -> None:
    """One node attacks (scaling x10: flagged, excluded after 2 rounds), one sends NaN (rejected), one never answers."""
    from flwr.app import Array, ArrayRecord

    from anya_fl.experiments.attack_app import app as attack_app
    from anya_fl.experiments.local_grid import FIRST_NODE_ID, LocalGrid
    from anya_fl.experiments.poisoning import malicious_partitions
    from core.fedconfig import FederationConfig
    from fl_server.app import run_federation
    from fl_server.checkpoint import load_checkpoint

    attacker = FIRST_NODE_ID + next(iter(malicious_partitions(NODES, 0.2, 0)))
    nan_node, silent = [n for n in range(FIRST_NODE_ID, FIRST_NODE_ID + NODES) if n != attacker][:2]
    sampled: dict[int, list[int]] = {}  # round -> nodes the coordinator sent a train message

    def client(msg, ctx):
        reply = attack_app(msg, ctx)
        if msg.metadata.message_type == "train":
            sampled.setdefault(int(msg.content["config"]["server-round"]), []).append(ctx.node_id)
            if ctx.node_id == nan_node:
                arrays = {k: v.numpy().copy() for k, v in reply.content["arrays"].items()}
                next(iter(arrays.values()))[...] = np.nan
                reply.content["arrays"] = ArrayRecord({k: Array(v) for k, v in arrays.items()})
        return reply

    class SilentNodeGrid(LocalGrid):
        """``silent``'s train replies never arrive (a node that timed out)."""

        def pull_messages(self, message_ids):
            replies = list(super().pull_messages(message_ids))
            return [m for m in replies if not (m.metadata.message_type == "train" and m.metadata.src_node_id == silent)]

    def run(rounds: int) -> list[RoundRecord]:
        cfg = FederationConfig(rounds=rounds, nodes=NODES, min_nodes=2, local_epochs=1, tasks="fraud", dp=False,
                               transactions=40_000, data_dir=str(fed_data), run_dir=str(tmp_path / "run"),
                               run_name="screened", export_models=False, attack="scaling", malicious=0.2).validate()
        return run_federation(SilentNodeGrid(client, cfg.nodes, cfg.to_run_config()), cfg)

    run(2)
    history = run(3)  # resumes from round 2's checkpoint: the exclusion must survive it
    every = sorted(range(FIRST_NODE_ID, FIRST_NODE_ID + NODES))
    assert sorted(sampled[1]) == sorted(sampled[2]) == every
    assert attacker not in sampled[3] and sorted(sampled[3]) == [n for n in every if n != attacker]

    a, s, n = str(attacker), str(silent), str(nan_node)
    assert [h.round for h in history] == [1, 2, 3]
    for h in history:
        assert h.missing == 1  # the silent node only: the rejected and the flagged node did answer
        assert s not in h.replied and h.rejected == [n] and not h.failed
        assert h.sampled == len(h.replied) + len(h.failed) + h.missing
        assert len(h.replied) == len(h.rejected) + len(h.flagged) + len(h.kept)
        assert a not in h.kept and n not in h.kept
    assert history[0].flagged == history[1].flagged == [a] and history[1].excluded == [a]
    assert history[2].sampled == NODES - 1 and a not in history[2].replied and history[2].flagged == []
    assert [len(h.kept) for h in history] == [2, 2, 2]

    # metrics.json and the checkpoint hold the same records; report.html's figures come from them
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert history_from_dicts(metrics["history"]) == history
    assert [h["nodes_missing"] for h in metrics["history"]] == [1, 1, 1]
    assert load_checkpoint(tmp_path / "run").history == history
    from anya_fl.simulation_report import summarize

    assert summarize(metrics)["missing_replies"] == 3
