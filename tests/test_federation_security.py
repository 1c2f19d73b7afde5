"""Security of the federation: malformed and poisoned updates, screening, privacy budgets, central DP, robustness."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from anya_fl.experiments import poisoning
from anya_fl.experiments.local_grid import FIRST_NODE_ID, LocalGrid
from core.data.datasets import write_federation_data
from core.fedconfig import DECLINE_ERROR_CODE, FederationConfig
from fl_server.round_record import RoundRecord
from fl_server.screening import ScreeningConfig, ScreeningState, screen

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _task_identity() -> None:
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1  # what Flower's runtime sets


# ---------------------------------------------------------------------------------------------- screening


def _reply(node: int, arrays: dict[str, np.ndarray], n: float = 100.0) -> Message:
    req = Message(RecordDict({}), dst_node_id=node, message_type="train")
    req.metadata.__dict__["_message_id"] = f"m{node}"
    content = RecordDict({"arrays": ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()}),
                          "metrics": MetricRecord({"num-examples": n})})
    return Message(content, reply_to=req)


def _honest(global_w: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    common = {k: 0.01 * np.ones_like(v) for k, v in global_w.items()}  # a shared direction plus noise
    return {k: (v + common[k] + 0.003 * rng.normal(size=v.shape)).astype(np.float32) for k, v in global_w.items()}


@pytest.fixture()
def global_w() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"fraud.w": rng.normal(size=(8, 4)).astype(np.float32), "fraud.b": np.zeros(4, np.float32),
            "fee.w": rng.normal(size=(3, 3)).astype(np.float32)}


def test_malformed_updates_are_rejected_and_the_rest_aggregated(global_w) -> None:
    rng = np.random.default_rng(1)
    replies = [_reply(FIRST_NODE_ID + i, _honest(global_w, rng)) for i in range(4)]
    nan = _honest(global_w, rng)
    nan["fraud.w"][0, 0] = np.nan
    inf = _honest(global_w, rng)
    inf["fee.w"][1, 1] = np.inf
    shape = _honest(global_w, rng)
    shape["fraud.b"] = np.zeros(5, np.float32)
    missing = {k: v for k, v in _honest(global_w, rng).items() if k != "fee.w"}
    bad = [_reply(2001, nan), _reply(2002, inf), _reply(2003, shape), _reply(2004, missing)]
    for enabled in (True, False):  # malformed updates are rejected even with screening off
        kept, events = screen(replies + bad, global_w, ScreeningConfig(enabled=enabled), ScreeningState())
        assert [int(m.metadata.src_node_id) for m in kept] == [FIRST_NODE_ID + i for i in range(4)]
        reasons = {e.node: e.reason for e in events if e.kind == "rejected"}
        assert "NaN or infinite" in reasons["2001"] and "NaN or infinite" in reasons["2002"]
        assert "fraud.b: shape (5,), expected (4,)" in reasons["2003"] and "missing ['fee.w']" in reasons["2004"]


def test_scaled_and_flipped_updates_are_flagged_clipped_and_excluded(global_w) -> None:
    rng = np.random.default_rng(2)
    state = ScreeningState()
    cfg = ScreeningConfig(enabled=True, clip_factor=2.0, flag_norm=4.0, min_cosine=0.0, exclude_after=2)
    for _round in (1, 2):
        honest = [_honest(global_w, rng) for _ in range(6)]
        scaled = {k: global_w[k] + 10 * (v - global_w[k]) for k, v in _honest(global_w, rng).items()}
        flipped = {k: global_w[k] - (v - global_w[k]) for k, v in _honest(global_w, rng).items()}
        slightly_big = {k: global_w[k] + 3 * (v - global_w[k]) for k, v in _honest(global_w, rng).items()}
        replies = ([_reply(FIRST_NODE_ID + i, h) for i, h in enumerate(honest)]
                   + [_reply(3001, scaled), _reply(3002, flipped), _reply(3003, slightly_big)])
        kept, events = screen(replies, global_w, cfg, state)
        kinds = {(e.node, e.kind) for e in events}
        assert ("3001", "flagged") in kinds and ("3002", "flagged") in kinds
        assert not any(k == "flagged" and int(n) < 3000 for n, k in kinds)  # no honest node flagged
        assert ("3003", "clipped") in kinds  # 3x the median: kept, but clipped to 2x
        kept_ids = [int(m.metadata.src_node_id) for m in kept]
        assert 3001 not in kept_ids and 3002 not in kept_ids and 3003 in kept_ids
        clipped = next(m for m in kept if int(m.metadata.src_node_id) == 3003)
        d = np.concatenate([(clipped.content["arrays"][k].numpy() - global_w[k]).ravel() for k in ("fraud.b", "fraud.w")])
        hon = np.median([np.linalg.norm(np.concatenate([(h[k] - global_w[k]).ravel() for k in ("fraud.b", "fraud.w")]))
                         for h in honest + [slightly_big]])
        assert np.linalg.norm(d) <= 2.0 * hon * 1.5  # clipped to about clip_factor x the median norm
    assert state.excluded == {3001, 3002}
    history = [RoundRecord.from_dict(RoundRecord(round=2, screening=events).to_dict())]  # as a resume reads it
    assert ScreeningState.from_history(history).excluded == {3001, 3002}


# ---------------------------------------------------------------------------------------------- attacks


def test_attack_wrapper_math_and_choice_of_attackers() -> None:
    g = {"w": torch.zeros(3)}
    h = {"w": torch.tensor([1.0, -2.0, 0.5])}
    assert torch.equal(poisoning.poison_update("sign-flip", g, h, seed=0)["w"], -h["w"])
    assert torch.equal(poisoning.poison_update("scaling", g, h, seed=0)["w"], 10 * h["w"])
    noisy = poisoning.poison_update("gaussian", g, h, seed=0)["w"]
    assert torch.equal(noisy, poisoning.poison_update("gaussian", g, h, seed=0)["w"]) and not torch.equal(noisy, h["w"])
    shards = [{"w": torch.tensor([1.0, -1.0, 0.0])}, {"w": torch.tensor([3.0, -3.0, 1.0])}]
    alie = poisoning.poison_update("alie", g, h, seed=0, shard_updates=shards, z=1.5)["w"]
    assert torch.allclose(alie, h["w"] - 1.5 * torch.tensor([1.0, 1.0, 0.5]))
    assert poisoning.alie_z(10, 3) == pytest.approx(0.5244, abs=1e-3)  # Baruch et al.: s = 6 - 3, z = Phi^-1(0.7)
    y = np.array([0.0, 1.0, 1.0], np.float32)
    assert poisoning.poison_labels("fraud", y, 0).tolist() == [1.0, 0.0, 0.0]
    assert sorted(poisoning.poison_labels("fee", np.arange(5.0), 0)) == list(range(5))
    picked = poisoning.malicious_partitions(10, 0.3, 0)
    assert len(picked) == 3 and picked == poisoning.malicious_partitions(10, 0.3, 0)
    assert poisoning.is_malicious({"partition-id": next(iter(picked))}, "scaling", 0.3, 10, 0)
    assert not poisoning.is_malicious({"partition-id": next(iter(picked))}, "", 0.3, 10, 0)
    assert poisoning.is_malicious({"malicious": "true"}, "alie", 0.0, 10, 0)


# ---------------------------------------------------------------------------------------------- whole rounds


@pytest.fixture(scope="module")
def fed_data(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("fedsec") / "data"
    write_federation_data(d, 40_000, 0, 5, ("fraud",))
    return d


def _cfg(fed_data: Path, run: Path, **kw) -> FederationConfig:
    return FederationConfig(rounds=kw.pop("rounds", 2), nodes=5, min_nodes=2, local_epochs=1, tasks="fraud",
                            transactions=40_000, data_dir=str(fed_data), run_dir=str(run), run_name=run.name,
                            export_models=False, **kw).validate()


@pytest.mark.slow
def test_a_node_sending_nan_or_wrong_shapes_does_not_crash_the_round(fed_data, tmp_path) -> None:
    from fl_client.app import app
    from fl_server.app import run_federation

    cfg = _cfg(fed_data, tmp_path / "nan", dp=False)

    def adversary(msg: Message, ctx: Context) -> Message:
        reply = app(msg, ctx)
        if msg.metadata.message_type == "train" and ctx.node_id in (FIRST_NODE_ID, FIRST_NODE_ID + 1):
            arrays = {k: v.numpy().copy() for k, v in reply.content["arrays"].items()}
            key = next(iter(arrays))
            if ctx.node_id == FIRST_NODE_ID:
                arrays[key][...] = np.nan
            else:
                arrays[key] = np.zeros((2, 2), np.float32)
            reply.content["arrays"] = ArrayRecord({k: Array(v) for k, v in arrays.items()})
        return reply

    history = run_federation(LocalGrid(adversary, cfg.nodes, cfg.to_run_config()), cfg)
    assert [h.round for h in history] == [1, 2]
    for h in history:
        rejected = {e.node: e.reason for e in h.screening if e.kind == "rejected"}
        assert set(rejected) == {str(FIRST_NODE_ID), str(FIRST_NODE_ID + 1)}
        assert "NaN" in rejected[str(FIRST_NODE_ID)] and "shape (2, 2)" in rejected[str(FIRST_NODE_ID + 1)]
        assert h.rejected == list(rejected) and len(h.kept) == 3 and h.missing == 0  # rejected is not missing
        assert np.isfinite(h.global_metrics["fraud"]["pr_auc"])


@pytest.mark.slow
def test_node_over_its_lifetime_budget_declines_and_the_ledger_survives_a_restart(fed_data, tmp_path) -> None:
    from flwr.supercore.task_identity import TaskIdentity

    from fl_client.app import app
    from models.params import pack
    from models.tasks import build_model

    node_dir = fed_data / "node-0"
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 5, 1

    def train_once(run_name: str) -> Message:
        cfg = FederationConfig(rounds=1, local_epochs=1, tasks="fraud", epsilon=4.0, run_name=run_name,
                               lifetime_epsilon=6.0)
        msg = Message(RecordDict({"arrays": ArrayRecord(pack({"fraud": build_model("fraud", 0)})),
                                  "config": ConfigRecord({"server-round": 1})}), dst_node_id=5, message_type="train")
        ctx = Context(run_id=1, node_id=5, node_config={"data-dir": str(node_dir)}, state=RecordDict(),
                      run_config=cfg.to_run_config())
        return app(msg, ctx)

    first = train_once("budget-a")
    assert not first.has_error() and first.content["metrics"]["fraud.epsilon"] <= 4.0 + 1e-6
    second = train_once("budget-b")  # 4 spent + 4 planned > 6
    assert second.has_error() and second.error.code == DECLINE_ERROR_CODE
    spent = first.content["metrics"]["fraud.epsilon"]  # within the noise search's tolerance below 4
    assert f"lifetime epsilon of {spent + 4.0:.2f} over this node's budget of 6" in second.error.reason
    # a restarted node (a new process) reads the same ledger and declines the same way
    code = (
        "import sys, json; sys.path.insert(0, 'tests');"
        "from test_federation_security import _restart_check; print(json.dumps(_restart_check(sys.argv[1])))")
    done = subprocess.run([sys.executable, "-c", code, str(node_dir)], cwd=ROOT, capture_output=True, text=True,
                          env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["declined"] and "earlier run(s)" in out["reason"]
    assert json.loads((node_dir / "privacy" / "budget-a.json").read_text())["fraud"]


def _restart_check(node_dir: str) -> dict:
    from flwr.supercore.task_identity import TaskIdentity

    from fl_client.app import app
    from models.params import pack
    from models.tasks import build_model

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 5, 1
    cfg = FederationConfig(rounds=1, local_epochs=1, tasks="fraud", epsilon=4.0, run_name="budget-c",
                           lifetime_epsilon=6.0)
    msg = Message(RecordDict({"arrays": ArrayRecord(pack({"fraud": build_model("fraud", 0)})),
                              "config": ConfigRecord({"server-round": 1})}), dst_node_id=5, message_type="train")
    ctx = Context(run_id=1, node_id=5, node_config={"data-dir": node_dir}, state=RecordDict(),
                  run_config=cfg.to_run_config())
    reply = app(msg, ctx)
    return {"declined": reply.has_error(), "reason": reply.error.reason if reply.has_error() else ""}


@pytest.mark.slow
def test_central_dp_wraps_the_strategy_and_runs(fed_data, tmp_path) -> None:
    from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping

    from fl_client.app import app
    from fl_server.app import run_federation
    from fl_server.strategies import build_strategy

    cfg = _cfg(fed_data, tmp_path / "cdp", dp=False, central_dp="fixed", central_noise=0.5, central_clip=0.5, rounds=1)
    assert isinstance(build_strategy(cfg), DifferentialPrivacyServerSideFixedClipping)
    history = run_federation(LocalGrid(app, cfg.nodes, cfg.to_run_config()), cfg)
    assert np.isfinite(history[0].global_metrics["fraud"]["pr_auc"])
    with pytest.raises(Exception, match="central-dp"):
        _cfg(fed_data, tmp_path / "x", central_dp="loose")


# ---------------------------------------------------------------------- the deployed ClientApp vs the attack ClientApp


def _train_msg(server_round: int = 1) -> Message:
    from models.params import pack
    from models.tasks import build_model

    return Message(RecordDict({"arrays": ArrayRecord(pack({"fraud": build_model("fraud", 0)})),
                               "config": ConfigRecord({"server-round": server_round})}),
                   dst_node_id=5, message_type="train")


def _ctx(node_config: dict, run_config: dict) -> Context:
    return Context(run_id=1, node_id=5, node_config=node_config, state=RecordDict(), run_config=run_config)


@pytest.mark.slow
def test_deployed_clientapp_refuses_attack_settings(fed_data) -> None:
    from fl_client.app import app

    node = {"data-dir": str(fed_data / "node-4")}  # not node-0: its ledgers belong to the budget test
    honest = FederationConfig(rounds=1, local_epochs=1, tasks="fraud", dp=False, run_name="refuse").to_run_config()
    attack = FederationConfig(rounds=1, local_epochs=1, tasks="fraud", dp=False, run_name="refuse", attack="scaling",
                              malicious=0.3).to_run_config()
    cases = [  # (node config, run config, the setting the refusal names)
        ({**node, "malicious": "true"}, honest, "malicious"),
        ({**node, "malicious": "false"}, honest, "malicious"),  # the key itself is refused, whatever its value
        (node, attack, "attack"),
        (node, {**honest, "malicious": 0.3}, "malicious"),
    ]
    for node_config, run_config, setting in cases:
        for msg in (_train_msg(), Message(_train_msg().content, dst_node_id=5, message_type="evaluate")):
            reply = app(msg, _ctx(node_config, run_config))
            assert reply.has_error() and reply.error.code == DECLINE_ERROR_CODE, (setting, msg.metadata.message_type)
            assert reply.error.reason.startswith(
                f"{setting}: attack simulation is not part of the deployed ClientApp"), reply.error.reason
    # the same node with the honest run config trains
    assert not app(_train_msg(), _ctx(node, honest)).has_error()


@pytest.mark.slow
def test_attack_clientapp_composes_the_honest_training(fed_data) -> None:
    """An honest node of the attack ClientApp replies exactly as the deployed ClientApp; a scaling attacker
    sends the global model plus 10x that same honest update."""
    from anya_fl.experiments.attack_app import app as attack_app
    from fl_client.app import app as honest_app

    node = {"data-dir": str(fed_data / "node-3")}  # not node-0: its ledgers belong to the budget test
    base = dict(rounds=1, nodes=5, local_epochs=1, tasks="fraud", dp=False)
    honest_cfg = FederationConfig(**base, run_name="compose-honest").to_run_config()
    attack_cfg = FederationConfig(**base, run_name="compose-attack", attack="scaling", malicious=0.2).to_run_config()
    global_w = {k: v.numpy() for k, v in _train_msg().content["arrays"].items()}

    def weights(app, node_config: dict, run_config: dict) -> dict[str, np.ndarray]:
        reply = app(_train_msg(), _ctx(node_config, run_config))
        assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
        return {k: v.numpy() for k, v in reply.content["arrays"].items()}

    honest = weights(honest_app, node, honest_cfg)
    as_honest = weights(attack_app, node, attack_cfg)  # no partition among the attackers, no malicious key
    as_attacker = weights(attack_app, {**node, "malicious": "true"}, attack_cfg)
    for key, w0 in global_w.items():
        np.testing.assert_array_equal(as_honest[key], honest[key])
        np.testing.assert_allclose(as_attacker[key], w0 + poisoning.SCALE * (honest[key] - w0), rtol=1e-5, atol=1e-6)
    assert not np.allclose(as_attacker[key], honest[key])


def test_fl_client_holds_no_attack_code() -> None:
    """The deployed ClientApp (pyproject's component) imports nothing from the experiments and names no attack."""
    import ast
    import tomllib

    from anya_fl.experiments import ATTACK_CLIENTAPP, HONEST_CLIENTAPP, clientapp_ref

    components = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["components"]
    assert components["clientapp"] == HONEST_CLIENTAPP == clientapp_ref("")
    assert clientapp_ref("alie") == ATTACK_CLIENTAPP != HONEST_CLIENTAPP
    files = sorted((ROOT / "fl_client").rglob("*.py"))
    assert files
    for path in files:
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                modules = [node.module or ""]
            else:
                modules = []
            for module in modules:
                assert not module.startswith(("anya_fl", "fl_client.attacks")), f"{path.name} imports {module}"
            names = [getattr(node, attr) for attr in ("id", "attr", "name", "arg") if isinstance(getattr(node, attr, None), str)]
            for name in names:
                assert not any(w in name.lower() for w in ("poison", "alie", "malicious", "flip", "attack")), \
                    f"{path.name}: {name}"


@pytest.mark.slow
def test_robustness_table_is_written(tmp_path) -> None:
    from anya_fl.experiments.robustness import RobustnessConfig, run_table

    cfg = RobustnessConfig(nodes=5, rounds=2, transactions=40_000, strategies=("fedavg", "screened-median"),
                           attacks=("scaling",), fractions=(0.2,))
    table = run_table(cfg, tmp_path / "rob")
    assert (tmp_path / "rob" / "robustness.json").is_file() and (tmp_path / "rob" / "robustness.png").is_file()
    assert len(table["runs"]) == 4
    screened = next(r for r in table["runs"] if r["strategy"] == "screened-median" and r["attack"] == "scaling")
    assert screened["flags_true"] >= 1 and screened["flags_false"] == 0  # the one attacker flagged, no honest node
    assert set(table["summary"]) == {"fedavg/fraud", "screened-median/fraud"}
