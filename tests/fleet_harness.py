"""The coordinator side of the deployment tests: a TLS SuperLink on loopback behind the Fleet gateway, with
node keys registered (what `anya-fl coordinator start` runs), and the PIDs of a process tree."""

from __future__ import annotations

import subprocess
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil

from anya_fl import deployment as dep

_FLEET: weakref.WeakSet[subprocess.Popen] = weakref.WeakSet()  # start_fleet's SuperLinks and gateways


def start_fleet(tmp_path: Path, home: Path, pki: dict[str, Any], pubs: list[Path],
                started: list[subprocess.Popen]) -> tuple[subprocess.Popen, int]:
    """Start the SuperLink and the gateway (appended to ``started`` as they start, for the caller to stop),
    write the coordinator's connection ``anya`` and register ``pubs``; returns the SuperLink and the gateway's
    port."""
    control_port, port = dep.free_port(), dep.free_port()
    link = dep.start_superlink("127.0.0.1", control_port, home, tmp_path / "superlink.log", pki_dir=pki["dir"])
    started.append(link)
    _FLEET.add(link)
    gate = dep.start_fleet_gateway("127.0.0.1", port, f"127.0.0.1:{control_port}", tmp_path / "gateway.log",
                                   pki_dir=pki["dir"])
    started.append(gate)
    _FLEET.add(gate)
    dep.wait_for_port("127.0.0.1", port, proc=gate)
    dep.write_connection(home, "anya", f"127.0.0.1:{control_port}", root_certificates=pki["ca_cert"])
    if pubs:  # one `flwr supernode register` process per key, all at once (each is a second of CLI start-up)
        with ThreadPoolExecutor(max_workers=len(pubs)) as pool:
            confirmations = list(pool.map(lambda pub: dep.register_node(home, "anya", pub, superlink=link), pubs))
        for line in confirmations:
            assert "registered successfully" in line
    return link, port


def process_tree(proc: subprocess.Popen) -> list[int]:
    """The PIDs of ``proc`` and its descendants (to check that none outlives the test)."""
    try:
        return [proc.pid, *(c.pid for c in psutil.Process(proc.pid).children(recursive=True))]
    except psutil.NoSuchProcess:
        return [proc.pid]


def stop_all(started: list[subprocess.Popen], seen: set[int]) -> list[int]:
    """Stop what a test started, by PID: the nodes (everything but start_fleet's SuperLink and gateway) all at
    once, each as dep.stop_process does (a node takes seconds to shut down), then the gateway and the SuperLink
    (last started first), then any process seen in their trees that outlived them; returns the PIDs that were
    still alive after 20 s (a test asserts there are none)."""
    for p in started:
        if p.poll() is None:
            seen.update(process_tree(p))
    nodes = [p for p in started if p not in _FLEET]
    if nodes:
        with ThreadPoolExecutor(max_workers=len(nodes)) as pool:
            list(pool.map(dep.stop_process, nodes))
    for p in reversed(started):
        if p in _FLEET:
            if p.poll() is None:
                seen.update(process_tree(p))
            dep.stop_process(p)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(dep.alive(pid) for pid in seen):
        time.sleep(0.5)
    leftover = [pid for pid in seen if dep.alive(pid)]
    for pid in leftover:
        dep.stop_process(pid, timeout=5)
    return leftover
