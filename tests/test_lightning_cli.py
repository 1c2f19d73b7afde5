"""`anya-fl simln` serving routers as LND and Core Lightning, `anya-fl lightning collect` reading each through its
adapter into the node's store, and `anya-fl lightning report`, all through the real entry point."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from anya_fl.deployment import wait_for_port
from core.lightning.store import LightningStore

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "anya_fl.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scrape(port: int, proc: subprocess.Popen) -> str:
    wait_for_port("127.0.0.1", port, timeout=60, proc=proc)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as reply:
        return reply.read().decode()


def _wait_for_routers(sim_dir: Path, proc: subprocess.Popen, log: Path) -> dict:
    """simln's routers.json, written once its routers serve (a failure if simln exits, or after 2 minutes)."""
    deadline = time.monotonic() + 120
    while not (sim_dir / "routers.json").is_file():
        if proc.poll() is not None:
            pytest.fail(f"simln exited ({proc.returncode}): {log.read_text()[-2000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"simln wrote no routers.json: {log.read_text()[-2000:]}")
        time.sleep(0.1)
    return json.loads((sim_dir / "routers.json").read_text())


def test_collect_from_simulated_lnd_and_cln_routers_and_report(tmp_path) -> None:
    sim_dir = tmp_path / "s"
    log = tmp_path / "simln.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "anya_fl.cli", "simln", "--nodes", "12", "--serve", "3",
                                 "--history", "6", "--state-dir", str(sim_dir)], cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        routers = _wait_for_routers(sim_dir, proc, log)
        kinds = {r["implementation"] for r in routers.values()}
        assert kinds == {"lnd", "cln"}, routers
        for i, r in routers.items():
            flags = [x for k, v in r.items() if k.startswith("--") for x in (k, v)]
            state = tmp_path / f"ln-{i}"
            done = _cli("lightning", "collect", "--once", "--state-dir", str(state), *flags)
            assert done.returncode == 0, done.stdout + done.stderr
            with LightningStore(state / "lightning.sqlite", readonly=True) as store:
                when, channels = store.latest()
                forwards = store.forwards(0, time.time() + 1)
            # LND gives balances in whole satoshis: each side may lose its msat fraction
            assert channels and all(0 <= c.capacity_sat * 1000 - c.local_msat - c.remote_msat < 2000 for c in channels)
            outcomes = {f.outcome for f in forwards}
            # LND keeps settled forwards only (its failures come from the HTLC stream while one listens)
            assert outcomes == {"settled"} if r["implementation"] == "lnd" else {"settled", "local_failed"} <= outcomes
        cln = next(i for i, r in routers.items() if r["implementation"] == "cln")
        state = tmp_path / f"ln-{cln}"
        again = _cli("lightning", "collect", "--once", "--state-dir", str(state), "--cln-socket",
                     routers[cln]["--cln-socket"])
        assert again.returncode == 0 and " 0 new forwards" in again.stdout  # each forward is stored once
        shown = _cli("lightning", "report", "--state-dir", str(state))
        assert shown.returncode == 0, shown.stderr
        assert (state / "report" / "channels.html").is_file() and (state / "report" / "channels.png").is_file()
        port = _free_port()
        watcher = subprocess.Popen([sys.executable, "-m", "anya_fl.cli", "lightning", "collect", "--state-dir",
                                    str(state), "--cln-socket", routers[cln]["--cln-socket"], "--interval", "0.5",
                                    "--metrics-port", str(port)], cwd=ROOT, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        try:
            text = _scrape(port, watcher)
        finally:
            watcher.send_signal(signal.SIGTERM)
            watcher.wait(timeout=30)
        with LightningStore(state / "lightning.sqlite", readonly=True) as store:
            _, channels = store.latest()
        for c in channels:  # the report's figures, per channel, on the operator's own /metrics
            assert f'anya_fl_ln_channel_balance_ratio{{channel="{c.channel_id}"}}' in text
        assert 'anya_fl_ln_channel_out_forwards{channel="' in text and 'outcome="failed_balance"' in text
        lnd = next(r for r in routers.values() if r["implementation"] == "lnd")
        wrong = tmp_path / "wrong.macaroon"
        wrong.write_bytes(os.urandom(32))
        refused = _cli("lightning", "collect", "--once", "--state-dir", str(tmp_path / "x"), "--lnd-url",
                       lnd["--lnd-url"], "--tls-cert", lnd["--tls-cert"], "--macaroon", str(wrong))
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "macaroon" in refused.stderr.lower()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    for r in routers.values():
        if "--cln-socket" in r:
            assert not Path(r["--cln-socket"]).exists()  # the server removed its socket


@pytest.mark.parametrize("args, field", [
    ([], "lnd-url"),
    (["--lnd-url", "https://127.0.0.1:1", "--cln-socket", "/tmp/x"], "lnd-url"),
    (["--lnd-url", "https://127.0.0.1:1"], "tls-cert"),
])
def test_collect_names_the_missing_or_conflicting_flag(tmp_path, args, field) -> None:
    done = _cli("lightning", "collect", "--once", "--state-dir", str(tmp_path), *args)
    assert done.returncode == 2 and done.stderr.startswith(f"error: {field}:") and "Traceback" not in done.stderr
