"""Deployment on loopback: TLS + SuperNode auth behind the Fleet gateway, a node killed mid-run, an
unregistered key refused, a stranger's register and run refused at the gateway, a foreign app refused
by the nodes; the PKI."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from anya_fl import deployment as dep
from anya_fl.flwr_compat.warm_superexec import READY_LINE
from core.data.chain import ChainConfig, simulate_chain
from core.data.datasets import partition_nodes, save_dataset, task_arrays
from core.errors import ConfigError
from core.fedconfig import FederationConfig
from core.security.pki import init_pki
from tests.fleet_harness import process_tree, start_fleet, stop_all

# seed 2: every split of the 20,000-transaction chain is non-empty (with some seeds a split is empty)
DATA_SEED = 2
NODES = 3


def test_pki(tmp_path) -> None:
    pki = init_pki(tmp_path / "pki", 2, ["127.0.0.1", "localhost", "coordinator.example", "::1"])
    ca = x509.load_pem_x509_certificate(pki["ca_cert"].read_bytes())
    server = x509.load_pem_x509_certificate(pki["server_cert"].read_bytes())
    server.verify_directly_issued_by(ca)
    ca.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost", "coordinator.example"}
    assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1"}
    server_key = serialization.load_pem_private_key(pki["server_key"].read_bytes(), None)
    assert server_key.public_key().public_numbers() == server.public_key().public_numbers()
    serialization.load_pem_private_key(pki["ca_key"].read_bytes(), None)
    for node in pki["nodes"]:
        key = serialization.load_ssh_private_key(node["key"].read_bytes(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        assert node["key"].read_bytes().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
        pub = node["pub"].read_bytes()
        assert pub.startswith(b"ecdsa-sha2-nistp384 ")
        assert serialization.load_ssh_public_key(pub).public_numbers() == key.public_key().public_numbers()
    for private in [pki["ca_key"], pki["server_key"], *(n["key"] for n in pki["nodes"])]:
        assert stat.S_IMODE(private.stat().st_mode) == 0o600, private
    assert stat.S_IMODE(pki["ca_cert"].stat().st_mode) == 0o644
    before = pki["ca_key"].read_bytes()
    with pytest.raises(ConfigError, match="pki-dir: .* already holds a PKI"):
        init_pki(tmp_path / "pki", 1, [])
    assert pki["ca_key"].read_bytes() == before
    # default hosts
    default = x509.load_pem_x509_certificate(init_pki(tmp_path / "p2", 0, [])["server_cert"].read_bytes())
    names = default.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]


def test_node_config_and_flwr_home_checks(tmp_path) -> None:
    assert dep.node_config_arg({"data-dir": "/a b/c", "partition-id": 1}) == "data-dir='/a b/c' partition-id=1"
    with pytest.raises(ConfigError, match="data-dir"):
        dep.node_config_arg({"data-dir": "/it's"})
    with pytest.raises(ConfigError, match="flwr-home"):
        dep.check_flwr_home(dep.project_root() / "flwr-home")


def test_fab_is_small() -> None:
    """`flwr run <repo>` packs the repo: nothing large or nested may end up in it."""
    from flwr.cli.build import build_fab_from_disk

    assert len(build_fab_from_disk(dep.project_root())) < 2_000_000


def _write_data(root: Path) -> tuple[Path, list[Path]]:
    chain = simulate_chain(ChainConfig(n_transactions=20_000, seed=DATA_SEED))
    coordinator_data = root / "coordinator-data"
    save_dataset(coordinator_data / "coordinator", task_arrays(chain), {"role": "coordinator"})
    node_dirs = []
    for shard in partition_nodes(chain, NODES, DATA_SEED):
        d = root / f"node-{shard.node_id}" / "data"
        save_dataset(d, task_arrays(chain, shard.tx_index, shard.snapshot_index), {"node_id": shard.node_id})
        node_dirs.append(d)
    return coordinator_data, node_dirs


FOREIGN_APP = """
import json
import os
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

MARKERS = Path({markers!r})
# importing this module is already running its code: leave a mark naming where (the FLWR_HOME)
(MARKERS / f"imported-{{os.getpid()}}").write_text(os.environ.get("FLWR_HOME", "?"))
client = ClientApp()
server = ServerApp()


@client.query()
def query(msg: Message, context: Context) -> Message:
    (MARKERS / f"ran-{{os.getpid()}}").write_text("foreign ClientApp ran")
    return Message(RecordDict({{"c": ConfigRecord({{"ran": 1}})}}), reply_to=msg)


@server.main()
def main(grid: Grid, context: Context) -> None:
    nodes = list(grid.get_node_ids())
    msgs = [Message(RecordDict({{"c": ConfigRecord({{"x": 1}})}}), dst_node_id=n, message_type="query") for n in nodes]
    replies = list(grid.send_and_receive(msgs, timeout=90))
    out = [{{"error": r.error.reason if r.has_error() else None}} for r in replies]
    Path({result!r}).write_text(json.dumps({{"nodes": len(nodes), "replies": out}}))
"""


def _foreign_app(root: Path) -> tuple[Path, Path, Path]:
    """A one-file Flower app whose ClientApp would leave marker files if any of its code ran on a node."""
    app, markers, result = root / "foreign-app", root / "markers", root / "foreign-result.json"
    app.mkdir()
    markers.mkdir()
    (app / "pyproject.toml").write_text(
        '[project]\nname = "foreign"\nversion = "1.0.0"\n[tool.flwr.app]\npublisher = "stranger"\n'
        '[tool.flwr.app.components]\nserverapp = "foreign_app:server"\nclientapp = "foreign_app:client"\n'
        '[tool.flwr.app.config]\n')
    (app / "foreign_app.py").write_text(FOREIGN_APP.format(markers=str(markers), result=str(result)))
    return app, markers, result


@pytest.mark.slow
def test_deployment_tls_auth_node_killed_mid_run(tmp_path) -> None:
    t_start = time.monotonic()
    pki = init_pki(tmp_path / "pki", NODES + 2, ["127.0.0.1", "localhost"])
    coordinator_data, node_dirs = _write_data(tmp_path)
    home = tmp_path / "flwr-home"  # the coordinator's FLWR_HOME, outside the repository
    stranger_home = tmp_path / "stranger-home"  # someone holding only ca.pem, on the nodes' address
    started: list[subprocess.Popen] = []
    seen_pids: set[int] = set()
    victim: dict = {}
    foreign_app, markers, foreign_result = _foreign_app(tmp_path)
    try:
        link, port = start_fleet(tmp_path, home, pki, [n["pub"] for n in pki["nodes"][:NODES]], started)
        address = f"127.0.0.1:{port}"  # the Fleet gateway: the one address nodes (and strangers) reach
        dep.write_connection(stranger_home, "coord", address, root_certificates=pki["ca_cert"])
        # a stranger on the nodes' address can neither register a key nor start a run
        attacker_pub = pki["nodes"][NODES + 1]["pub"]
        res = dep.flwr_cli(["supernode", "register", str(attacker_pub), "coord"], stranger_home)
        assert "registered successfully" not in res.stdout + res.stderr
        res = dep.flwr_cli(["run", str(foreign_app), "coord"], stranger_home, timeout=120)
        assert res.returncode != 0 and "Successfully started run" not in res.stdout + res.stderr
        assert "refused POST '/v1/control/" in (tmp_path / "gateway.log").read_text()
        nodes = []
        for i, node in enumerate(pki["nodes"][:NODES]):
            p = dep.start_supernode(address, tmp_path / f"node-{i}" / "flwr-home", tmp_path / f"node-{i}.log",
                                    data_dir=node_dirs[i], root_certificates=pki["ca_cert"], private_key=node["key"])
            started.append(p)
            nodes.append(p)
        online = dep.wait_for_nodes(home, "anya", NODES, timeout=90)
        assert len(online) == NODES
        assert len(dep.list_nodes(home, "anya")) == NODES  # the stranger's key is not among the registered
        for p in started:
            seen_pids.update(process_tree(p))

        # a foreign app submitted from the coordinator itself: its ServerApp runs there (the coordinator's
        # own choice), but every node refuses its bundle and none of its code runs on a node
        foreign = dep.flwr_cli(["run", str(foreign_app), "anya", "--stream"], home, timeout=200)
        assert foreign_result.is_file(), foreign.stdout[-2000:] + foreign.stderr[-2000:]
        outcome = json.loads(foreign_result.read_text())
        assert outcome["nodes"] == NODES and len(outcome["replies"]) == NODES
        for reply in outcome["replies"]:
            assert reply["error"] and "BundleRefused" in reply["error"], reply
            assert "pyproject.toml: differs from this node's anya-fl" in reply["error"], reply
        marks = [(m.name.split("-")[0], m.read_text()) for m in markers.iterdir()]
        on_nodes = [m for m in marks if m[0] == "ran" or m[1] != str(home.resolve())]
        assert not on_nodes, f"code of the foreign app ran on a node: {on_nodes}"

        # export_models=False: exporting and publishing the final models is the simulation tests' subject
        # (tests/test_federation.py); this run is about the deployment and the node that dies
        cfg = FederationConfig(rounds=2, nodes=NODES, min_nodes=2, local_epochs=1, transactions=20_000,
                               round_timeout=120.0, tasks="fraud,fee,anomaly", seed=0, export_models=False,
                               run_dir=str(tmp_path / "run"), data_dir=str(coordinator_data), run_name="deploy")
        rogue_log = tmp_path / "rogue.log"

        def on_progress(progress: dict) -> None:
            # round 1's train replies are in: kill one node before the evaluate messages go out
            if not victim and (progress["round"] >= 2 or progress["phase"] in ("evaluate", "done")):
                target = nodes[-1]
                victim["pids"] = process_tree(target)
                seen_pids.update(victim["pids"])
                os.kill(target.pid, signal.SIGKILL)
                victim["rc"] = target.wait(timeout=10)
                # a fourth node whose key was never registered: refused, and it exits (checked after the run).
                # Started now: the coordinator waits ~40 s for the killed node's heartbeat to lapse, and the
                # refused node's start (its ClientApp launcher imports torch) fills that idle time. Its exit is
                # reaped here: its launcher watches its PID and stops once it is gone
                rogue = victim["rogue"] = dep.start_supernode(
                    address, tmp_path / "rogue-home", rogue_log, data_dir=node_dirs[0],
                    root_certificates=pki["ca_cert"], private_key=pki["nodes"][NODES]["key"], max_retries=1,
                    max_wait_time=20)
                started.append(rogue)
                deadline = time.monotonic() + 60
                while rogue.poll() is None and time.monotonic() < deadline:
                    seen_pids.update(process_tree(rogue))
                    time.sleep(0.2)
            for p in started:
                if p.poll() is None:
                    seen_pids.update(process_tree(p))

        metrics = dep.launch_run(home, "anya", cfg, log_file=tmp_path / "run.log", timeout=300,
                                 on_progress=on_progress)
        rogue = victim.get("rogue")
        assert rogue is not None, "the run never reached the point where a node is killed"
        assert rogue.wait(timeout=60) != 0  # Flower logs its own exit code (305); the process exits with 1
    finally:
        leftover = stop_all(started, seen_pids)
    assert not leftover, f"processes left alive: {leftover}"
    assert victim.get("rc") == -signal.SIGKILL
    rogue_text = rogue_log.read_text()
    assert "Exit Code: 305" in rogue_text and "[code: 2004] Failed to activate SuperNode." in rogue_text
    assert "ApiError:2004" in (tmp_path / "superlink.log").read_text()
    history = metrics["history"]
    assert [h["round"] for h in history] == [1, 2]
    assert history[0]["nodes_replied"] == NODES
    assert history[1]["nodes_replied"] >= 2
    assert history[1]["nodes_sampled"] == 2  # the dead node went offline and was not sampled again
    assert all(h["global"] for h in history)
    # every node ran its ClientApps as forks of the warm launcher (anya_fl.flwr_compat.warm_superexec), not cold starts
    for i in range(NODES):
        assert READY_LINE in (tmp_path / f"node-{i}.log").read_text()
    print(f"deployment test: {time.monotonic() - t_start:.0f} s, rounds "
          f"{[round(h['seconds'], 1) for h in history]} s")
