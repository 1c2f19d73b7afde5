"""Deployment on Flower 1.42: start the coordinator's SuperLink and the nodes' SuperNodes, launch runs.

Flower's own CLIs do the work; this module only builds their command lines and environment, runs
them as subprocesses (each in its own session, logs to a file) and stops them by PID. Secure by
default: TLS with the certificates of :mod:`core.security.pki` and SuperNode authentication (only keys
registered with ``flwr supernode register`` may join). ``insecure=True`` is for loopback tests.

Only the Fleet API faces the network: the SuperLink listens on loopback (its Control and Runtime
APIs share that port and the Control API has no authentication), and :mod:`anya_fl.fleet_gateway`
forwards the Fleet routes from the public address to it.

Typical sequence (coordinator, then each node)::

    pki = init_pki(pki_dir, nodes=3, hosts=["coordinator.example", "10.0.0.5"])   # core.security.pki
    link = start_superlink("127.0.0.1", 9093, flwr_home, log, pki_dir=pki_dir)
    gate = start_fleet_gateway("0.0.0.0", 9092, "127.0.0.1:9093", log_gw, pki_dir=pki_dir)
    write_connection(flwr_home, "anya", "127.0.0.1:9093", root_certificates=pki_dir / "ca.pem")
    register_node(flwr_home, "anya", pki_dir / "nodes/node-0.pub")
    node = start_supernode("coordinator.example:9092", flwr_home_node, log_node, data_dir=...,
                           root_certificates=ca_pem, private_key=node_key)
    prepare_coordinator_data(cfg.data_dir, cfg.transactions, cfg.seed)
    metrics = launch_run(flwr_home, "anya", cfg, log_file=run_log)
    stop_process(node); stop_process(gate); stop_process(link)

``FLWR_HOME`` (Flower's config.toml and installed apps) must lie outside the app directory: ``flwr
run <app>`` packs the app directory into a FAB, and a FLWR_HOME inside it would be packed too.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psutil
import tomli_w

from core.bitcoin.features import CHAIN_TASKS
from core.collector.store import store_path
from core.errors import AnyaError, ConfigError, DatasetError
from core.fedconfig import FederationConfig
from core.security.pki import CA_CERT, SERVER_CERT, SERVER_KEY
from core.storage import atomic_write_bytes

INSECURE_WARNING = ("WARNING: running without TLS and without SuperNode authentication: traffic is readable "
                    "and any process that reaches the port can join the federation. Use only on loopback.")
# SuperExec polls for new tasks every 1 s by default (Flower env, 0.01..60 s)
TASK_POLL_ENV = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"
FAST_TASK_POLL_S = 0.1
STOP_TIMEOUT_S = 15.0


# ---------------------------------------------------------------------------------------------- helpers

def project_root() -> Path:
    """The directory holding pyproject.toml (the Flower App that ``flwr run`` packs)."""
    return Path(__file__).resolve().parent.parent


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now (bind port 0 and let the OS choose)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _is_within(path: Path, parent: Path) -> bool:
    try:
        path.resolve().relative_to(parent.resolve())
        return True
    except ValueError:
        return False


def check_flwr_home(flwr_home: Path, app_dir: Path | None = None) -> Path:
    """Refuse a FLWR_HOME inside the app directory (it would be packed into the FAB); return it resolved."""
    app_dir = app_dir or project_root()
    if _is_within(flwr_home, app_dir):
        raise ConfigError("flwr-home", f"{flwr_home} is inside the Flower App directory {app_dir}; `flwr run` would "
                                       "pack it into the app. Put FLWR_HOME outside it (e.g. ~/.anya-fl/flwr-home)")
    return flwr_home.resolve()


def flower_process_env(flwr_home: Path, *, task_poll_s: float | None = FAST_TASK_POLL_S) -> dict[str, str]:
    """Environment for every Flower process: no telemetry, no update check, no runtime ``uv sync``.

    ``task_poll_s`` sets Flower's SuperExec task poll interval (None keeps Flower's 1 s default).
    """
    env = dict(os.environ)
    env.update({
        "FLWR_HOME": str(flwr_home.resolve()),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "PYTHONUNBUFFERED": "1",
        # Flower spawns flower-superexec / flwr-clientapp / flwr-serverapp by name: this Python's scripts first
        "PATH": os.pathsep.join(filter(None, [str(Path(sys.executable).parent), env.get("PATH", "")])),
    })
    if task_poll_s is None:
        env.pop(TASK_POLL_ENV, None)
    else:
        env[TASK_POLL_ENV] = f"{task_poll_s:g}"
    return env


def flower_bin(name: str) -> str:
    """Path of a Flower console script: next to this Python first (the venv), then on PATH."""
    local = Path(sys.executable).parent / name
    if local.is_file():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise AnyaError(f"{name} not found: install flwr (pip install 'flwr[simulation]==1.42.0')")
    return found


def _spawn(cmd: list[str], env: dict[str, str], log_file: Path, cwd: Path | None = None) -> subprocess.Popen:
    """Start ``cmd`` in its own session with stdout+stderr appended to ``log_file``."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as log:
        log.write(f"\n$ {' '.join(cmd)}\n".encode())
        log.flush()
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                cwd=str(cwd) if cwd else None, start_new_session=True)


def log_tail(log_file: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of a log file ('' when it does not exist)."""
    if not log_file.is_file():
        return ""
    return "\n".join(log_file.read_text(errors="replace").rstrip().splitlines()[-lines:])


# ---------------------------------------------------------------------------------------------- processes

def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) can only be reached from this machine."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _tls_files(pki_dir: Path | None) -> list[Path]:
    """ca.pem, server.pem, server.key of ``pki_dir``, each checked to exist."""
    if pki_dir is None:
        raise ConfigError("pki-dir", "is not set: TLS needs ca.pem, server.pem and server.key "
                                     "(create them with init_pki), or pass insecure=True")
    files = [pki_dir / CA_CERT, pki_dir / SERVER_CERT, pki_dir / SERVER_KEY]
    for f in files:
        if not f.is_file():
            raise ConfigError("pki-dir", f"{f} does not exist")
    return files


def start_superlink(host: str, port: int, flwr_home: Path, log_file: Path, *, pki_dir: Path | None = None,
                    insecure: bool = False, node_auth: bool = True, database: Path | None = None,
                    task_poll_s: float | None = FAST_TASK_POLL_S,
                    warn: Callable[[str], None] | None = None) -> subprocess.Popen:
    """Start ``flower-superlink`` on loopback ``host:port`` (Fleet, Control and Runtime share that one port).

    ``host`` must be a loopback address: the Control API on the same port registers nodes and starts
    runs without authentication. Nodes reach the Fleet API through :func:`start_fleet_gateway`.
    TLS from ``pki_dir`` (ca.pem, server.pem, server.key) and SuperNode authentication by default;
    ``insecure=True`` disables both and reports :data:`INSECURE_WARNING` through ``warn`` (default:
    stderr). ``database`` keeps the SuperLink state (registered nodes, runs) across restarts; None =
    in memory. Returns the Popen; the SuperLink's own flower-superexec child exits with it.
    """
    if not is_loopback(host):
        raise ConfigError("host", f"{host!r} is not a loopback address: the SuperLink's Control API (register "
                                  "nodes, start runs) has no authentication, so it listens on 127.0.0.1 only; "
                                  "nodes connect through the Fleet gateway (start_fleet_gateway)")
    flwr_home = check_flwr_home(flwr_home)
    cmd = [flower_bin("flower-superlink"), "--host", host, "--port", str(port),
           "--disable-runtime-dependency-installation"]
    if insecure:
        cmd.append("--insecure")
        (warn or (lambda m: print(m, file=sys.stderr)))(INSECURE_WARNING)
    else:
        files = _tls_files(pki_dir)
        cmd += ["--ssl-ca-certfile", str(files[0]), "--ssl-certfile", str(files[1]), "--ssl-keyfile", str(files[2])]
        if node_auth:
            cmd.append("--enable-supernode-auth")
    if database is not None:
        database.parent.mkdir(parents=True, exist_ok=True)
        cmd += ["--database", str(database)]
    return _spawn(cmd, flower_process_env(flwr_home, task_poll_s=task_poll_s), log_file)


def start_fleet_gateway(host: str, port: int, upstream: str, log_file: Path, *, pki_dir: Path | None = None,
                        insecure: bool = False) -> subprocess.Popen:
    """Start :mod:`anya_fl.fleet_gateway` on ``host:port``, forwarding only the Fleet API to ``upstream``.

    ``upstream`` is the loopback SuperLink (``127.0.0.1:PORT``). With TLS (the default) the gateway
    presents ``server.pem`` to nodes and verifies the SuperLink against ``ca.pem``; ``insecure=True``
    speaks plain HTTP on both sides (local trials only).
    """
    up_host = upstream.rpartition(":")[0]
    if not is_loopback(up_host):
        raise ConfigError("upstream", f"{upstream!r} must be the SuperLink on a loopback address")
    cmd = [sys.executable, "-m", "anya_fl.fleet_gateway", "--listen", f"{host}:{port}", "--upstream", upstream]
    if not insecure:
        ca, cert, key = _tls_files(pki_dir)
        cmd += ["--certfile", str(cert.resolve()), "--keyfile", str(key.resolve()), "--ca", str(ca.resolve())]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(project_root()), env.get("PYTHONPATH", "")]))
    return _spawn(cmd, env, log_file)


def wait_for_port(host: str, port: int, *, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    """Wait until ``host:port`` accepts TCP connections (AnyaError after ``timeout`` or if ``proc`` exits)."""
    deadline = time.monotonic() + timeout
    target = "127.0.0.1" if host in ("0.0.0.0", "") else ("::1" if host in ("::", "[::]") else host.strip("[]"))
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AnyaError(f"the process serving {host}:{port} exited (code {proc.returncode}); see its log")
        try:
            with socket.create_connection((target, port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.1)
    raise AnyaError(f"nothing listens on {host}:{port} after {timeout:.0f} s")


def _node_config_value(value: Any) -> str:
    """A node-config value as TOML; strings become literal strings ('...': no escapes are interpreted)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    text = str(value)
    if "'" in text or "\n" in text or '"' in text:
        raise ConfigError("data-dir", f"{text!r} contains a quote or a newline, which --node-config cannot carry")
    return f"'{text}'"


def node_config_arg(config: dict[str, Any]) -> str:
    """The ``--node-config`` argument: space-separated ``key=value`` pairs with TOML values."""
    return " ".join(f"{k}={_node_config_value(v)}" for k, v in config.items())


def start_supernode(superlink: str, flwr_home: Path, log_file: Path, *, data_dir: Path,
                    root_certificates: Path | None = None, private_key: Path | None = None,
                    insecure: bool = False, port: int | None = None,
                    task_poll_s: float | None = FAST_TASK_POLL_S, max_retries: int | None = None,
                    max_wait_time: float | None = None, node_config: dict[str, Any] | None = None,
                    warn: Callable[[str], None] | None = None) -> subprocess.Popen:
    """Start a SuperNode connected to ``superlink`` (host:port) that trains on ``data_dir``.

    ``port`` is the node's local runtime API port (a free one when None; it must differ between
    SuperNodes on one host). ``max_retries`` / ``max_wait_time`` make it exit instead of retrying
    forever when it cannot connect or is refused (exit code 305 for an unregistered key). Each
    message's ClientApp runs as a fork of a process that imported it once
    (:mod:`anya_fl.flwr_compat.warm_superexec`), and only after the run's app bundle proved to be this node's own
    installed anya-fl (:func:`core.security.app_bundle.verify_app_bundle`): a coordinator cannot make
    the node run other code.
    """
    flwr_home = check_flwr_home(flwr_home)
    data_dir = Path(data_dir).resolve()
    if not (data_dir / "manifest.json").is_file() and not store_path(data_dir).is_file():
        raise DatasetError(f"data-dir: {data_dir} is not a dataset directory (no manifest.json) and holds no "
                           "collector store (collector/store.sqlite); write one with `anya-fl data` or `anya-fl collect`")
    cmd = [flower_bin("flower-supernode"), "--superlink", superlink, "--port", str(port or free_port()),
            "--node-config", node_config_arg({**(node_config or {}), "data-dir": str(data_dir)})]
    if insecure:
        cmd.append("--insecure")
        (warn or (lambda m: print(m, file=sys.stderr)))(INSECURE_WARNING)
    else:
        if root_certificates is None or not Path(root_certificates).is_file():
            raise ConfigError("root-certificates", f"{root_certificates} is not a file: a TLS SuperNode needs the "
                                                   "coordinator's CA certificate (ca.pem)")
        cmd += ["--root-certificates", str(Path(root_certificates).resolve())]
    if private_key is not None:
        if not Path(private_key).is_file():
            raise ConfigError("private-key", f"{private_key} is not a file")
        cmd += ["--auth-supernode-private-key", str(Path(private_key).resolve())]
    if max_retries is not None:
        cmd += ["--max-retries", str(max_retries)]
    if max_wait_time is not None:
        cmd += ["--max-wait-time", str(max_wait_time)]
    env = flower_process_env(flwr_home, task_poll_s=task_poll_s)
    env["PATH"] = os.pathsep.join([str(warm_superexec_shim(flwr_home)), env["PATH"]])
    return _spawn(cmd, env, log_file)


def warm_superexec_shim(flwr_home: Path) -> Path:
    """A directory holding a ``flower-superexec`` that runs :mod:`anya_fl.flwr_compat.warm_superexec` (first on PATH).

    The SuperNode starts ``flower-superexec`` by name; the shim makes that name run the warm launcher
    with this interpreter, with the SuperNode's own arguments.
    """
    bin_dir = Path(flwr_home).resolve() / "anya-bin"
    text = f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m anya_fl.flwr_compat.warm_superexec "$@"\n'
    shim = bin_dir / "flower-superexec"
    if not shim.is_file() or shim.read_text() != text:
        bin_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(shim, text.encode(), mode=0o755)
    return bin_dir


def stop_process(proc: subprocess.Popen | int, timeout: float = STOP_TIMEOUT_S) -> int | None:
    """Stop a process we started, by PID: SIGTERM, then SIGKILL after ``timeout`` s.

    Its descendants (Flower's superexec, ClientApp/ServerApp processes) are looked up by PID before
    the signal and killed the same way if they outlive it. Returns the exit code (None if unknown).
    """
    pid = proc.pid if isinstance(proc, subprocess.Popen) else int(proc)
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    code: int | None = None
    if isinstance(proc, subprocess.Popen):
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait(timeout=timeout)
    else:
        try:
            p = psutil.Process(pid)
            try:
                code = p.wait(timeout=timeout)
            except psutil.TimeoutExpired:
                p.kill()
                code = p.wait(timeout=timeout)
        except psutil.NoSuchProcess:
            pass
    # children watch their parent (--parent-pid) and exit by themselves; give them a moment, then kill
    _gone, alive = psutil.wait_procs(children, timeout=timeout)
    for child in alive:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)
    return code


def alive(pid: int) -> bool:
    """Whether a process with this PID is running (zombies count as dead)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# ---------------------------------------------------------------------------------------------- flwr CLI

def write_connection(flwr_home: Path, name: str, address: str, *, root_certificates: Path | None = None,
                     insecure: bool = False, default: bool = False) -> Path:
    """Add or replace ``[superlink.NAME]`` in ``$FLWR_HOME/config.toml`` (address + CA or insecure)."""
    flwr_home = check_flwr_home(flwr_home)
    if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise ConfigError("connection", f"{name!r} must be letters, digits, '-' or '_'")
    path = flwr_home / "config.toml"
    doc: dict[str, Any] = tomllib.loads(path.read_text()) if path.is_file() else {}
    superlinks = doc.setdefault("superlink", {})
    conn: dict[str, Any] = {"address": address}
    if insecure:
        conn["insecure"] = True
    else:
        if root_certificates is None or not Path(root_certificates).is_file():
            raise ConfigError("root-certificates", f"{root_certificates} is not a file (the CA certificate, ca.pem)")
        conn["root-certificates"] = str(Path(root_certificates).resolve())
    superlinks[name] = conn
    if default or "default" not in superlinks:
        superlinks["default"] = name
    atomic_write_bytes(path, tomli_w.dumps(doc).encode())
    return path


def flwr_cli(args: Sequence[str], flwr_home: Path, timeout: float = 60.0) -> subprocess.CompletedProcess:
    """Run ``flwr <args>`` with the Flower environment; return the completed process (text output)."""
    return subprocess.run([flower_bin("flwr"), *args], capture_output=True, text=True, timeout=timeout,
                          env=flower_process_env(flwr_home, task_poll_s=None), stdin=subprocess.DEVNULL)


def register_node(flwr_home: Path, connection: str, public_key: Path, *, timeout: float = 60.0,
                  retry_s: float = 1.0, superlink: subprocess.Popen | None = None) -> str:
    """``flwr supernode register KEY.pub CONNECTION``, retried until the SuperLink answers (bounded).

    Returns Flower's confirmation line. A key that is already registered counts as success. With
    ``superlink`` (our own SuperLink process) it gives up at once when that process has exited.
    """
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        if superlink is not None and superlink.poll() is not None:
            raise AnyaError(f"the SuperLink exited (code {superlink.returncode}) before {public_key} was registered; "
                            "see its log")
        try:
            res = flwr_cli(["supernode", "register", str(Path(public_key).resolve()), connection], flwr_home,
                           timeout=max(5.0, deadline - time.monotonic()))
            out = (res.stdout + res.stderr).strip()
            if res.returncode == 0 and "registered successfully" in out:
                return out.splitlines()[-1] if out else "registered"
            if "already" in out.lower():
                return out.splitlines()[-1]
            last = out
        except subprocess.TimeoutExpired:
            last = "flwr supernode register timed out"
        if time.monotonic() + retry_s > deadline:
            raise AnyaError(f"could not register {public_key} with SuperLink connection {connection!r} within "
                            f"{timeout:.0f} s:\n{last[-1500:]}")
        time.sleep(retry_s)


def list_nodes(flwr_home: Path, connection: str) -> list[dict[str, Any]]:
    """``flwr supernode list CONNECTION --format json``: one dict per node (node-id, status, ...)."""
    res = flwr_cli(["supernode", "list", connection, "--format", "json"], flwr_home)
    try:
        doc = json.loads(res.stdout[res.stdout.find("{"):])
    except json.JSONDecodeError:
        raise AnyaError(f"flwr supernode list failed:\n{(res.stdout + res.stderr)[-1500:]}") from None
    if not doc.get("success"):
        raise AnyaError(f"flwr supernode list failed: {doc}")
    return list(doc.get("nodes", []))


def wait_for_nodes(flwr_home: Path, connection: str, count: int, *, timeout: float = 120.0,
                   poll_s: float = 1.0) -> list[dict[str, Any]]:
    """Wait until at least ``count`` SuperNodes are online; return them (AnyaError after ``timeout``)."""
    deadline = time.monotonic() + timeout
    online: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        try:
            online = [n for n in list_nodes(flwr_home, connection) if n.get("status") == "online"]
        except AnyaError:
            online = []
        if len(online) >= count:
            return online
        time.sleep(poll_s)
    raise AnyaError(f"only {len(online)} of {count} SuperNodes came online within {timeout:.0f} s")


# ---------------------------------------------------------------------------------------------- runs

def prepare_coordinator_data(data_dir: Path, transactions: int, seed: int, tasks: tuple[str, ...] = CHAIN_TASKS,
                             on_episode: Callable[[], None] | None = None) -> Path:
    """Write the coordinator's held-out dataset at ``<data_dir>/coordinator`` unless it exists, and add the
    ``network`` task to it when ``tasks`` has it and it lacks it (simulated nodes watched under attack:
    ``network_data.add_coordinator_network_data``; ``on_episode`` after each watched episode), and the
    ``liquidity`` task likewise (questions about the channels of simulated Lightning networks)."""
    from core.data.datasets import load_dataset, write_federation_data

    target = Path(data_dir) / "coordinator"
    if not (target / "manifest.json").is_file():
        write_federation_data(data_dir, transactions, seed, nodes=1)
    if "network" in tasks and "network" not in load_dataset(target)[0]:
        from anya_fl.experiments.network_data import add_coordinator_network_data

        add_coordinator_network_data(Path(data_dir), seed, on_episode)
    if "liquidity" in tasks and "liquidity" not in load_dataset(target)[0]:
        from anya_fl.simln.liquidity_data import LiquiditySim, add_coordinator_liquidity_data

        add_coordinator_liquidity_data(Path(data_dir), LiquiditySim(seed=seed))
    return target


def write_run_config(cfg: FederationConfig, path: Path) -> Path:
    """The run config as a TOML file for ``flwr run --run-config`` (no shell quoting pitfalls)."""
    return atomic_write_bytes(path, tomli_w.dumps(cfg.to_run_config()).encode())


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def recorded_failure(progress: dict, since: float) -> str | None:
    """The ServerApp's one-line reason when its ``progress.json`` (already read) says it failed after ``since``."""
    if progress.get("phase") == "failed" and progress.get("updated", 0) >= since:
        return str(progress.get("error"))
    return None


def launch_run(flwr_home: Path, connection: str, cfg: FederationConfig, *, log_file: Path,
               app_dir: Path | None = None, timeout: float = 3600.0, poll_s: float = 0.5,
               on_progress: Callable[[dict], None] | None = None) -> dict:
    """``flwr run <app> CONNECTION --run-config <toml> --stream``; wait for the run; return metrics.json.

    ``cfg.run_dir`` and ``cfg.data_dir`` are the coordinator's (absolute paths on the SuperLink's
    machine); the held-out set must exist at ``<data_dir>/coordinator`` (:func:`prepare_coordinator_data`).
    ``on_progress`` gets each new ``progress.json``. On timeout the run is stopped with ``flwr stop``.
    Raises :class:`AnyaError` with the log tail when the run does not finish all its rounds.
    """
    app_dir = (app_dir or project_root()).resolve()
    flwr_home = check_flwr_home(flwr_home, app_dir)
    cfg = cfg.validate()
    if not cfg.run_dir or not Path(cfg.run_dir).is_absolute():
        raise ConfigError("run-dir", f"{cfg.run_dir!r} must be an absolute path on the coordinator")
    if not cfg.data_dir or not Path(cfg.data_dir).is_absolute():
        raise ConfigError("data-dir", f"{cfg.data_dir!r} must be an absolute path on the coordinator")
    held_out = Path(cfg.data_dir) / "coordinator"
    if not (held_out / "manifest.json").is_file():
        raise DatasetError(f"data-dir: the coordinator's held-out set {held_out} does not exist; "
                           "write it with prepare_coordinator_data (anya-fl data)")
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    rc_file = write_run_config(cfg, run_dir / "flwr-run-config.toml")
    started = time.time()
    proc = _spawn([flower_bin("flwr"), "run", str(app_dir), connection, "--run-config", str(rc_file), "--stream"],
                  flower_process_env(flwr_home, task_poll_s=None), log_file)
    run_id: str | None = None
    last: dict | None = None
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None:
            if run_id is None:
                m = re.search(r"Successfully started run (\d+)", log_tail(log_file, 200))
                run_id = m.group(1) if m else None
            progress = _read_json(run_dir / "progress.json")
            if progress and progress.get("updated", 0) >= started and progress != last:
                last = progress
                if on_progress:
                    on_progress(progress)
            if time.monotonic() > deadline:
                if run_id:
                    flwr_cli(["stop", run_id, connection], flwr_home)
                raise AnyaError(f"the run did not finish within {timeout:.0f} s; stopped it. See {log_file}")
            time.sleep(poll_s)
    finally:
        if proc.poll() is None:
            stop_process(proc)
    progress = _read_json(run_dir / "progress.json") or {}
    metrics = _read_json(run_dir / "metrics.json") or {}
    rounds = [h.get("round") for h in metrics.get("history", [])]
    if (why := recorded_failure(progress, started)) is not None:
        raise AnyaError(f"the run failed: {why} (log: {log_file})")
    if progress.get("phase") != "done" or progress.get("updated", 0) < started or cfg.rounds not in rounds:
        raise AnyaError(f"the run stopped before its {cfg.rounds} rounds were done (flwr exit code {proc.returncode}, "
                        f"progress {progress}); see {log_file}:\n{log_tail(log_file)}")
    if on_progress and progress != last:
        on_progress(progress)
    return metrics
