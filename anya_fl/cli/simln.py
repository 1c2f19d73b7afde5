"""`anya-fl simln`: a simulated Lightning network whose routers answer as LND (REST) or Core Lightning (socket)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from anya_fl.console import console, table

DEFAULT_STATE = Path(".anya-fl/simln")


def serve_routers(net: Any, routers: list[int], state_dir: Path) -> list[tuple[int, Any, dict[str, str]]]:
    """Start one server per router in its implementation's shape, under ``state_dir/router-<i>`` (with
    ``collect.args``: the `anya-fl lightning collect` flags that reach it); returns (router, server, how to
    connect) per router. The caller stops the servers."""
    from anya_fl.simln.cln_server import CLNServer
    from anya_fl.simln.lnd_server import LNDServer
    from core.storage import atomic_write_bytes

    out: list[tuple[int, Any, dict[str, str]]] = []
    try:
        for i in routers:
            home = state_dir / f"router-{i}"
            home.mkdir(parents=True, exist_ok=True)
            view = net.router(i)
            if net.implementation[i] == "lnd":
                server = LNDServer(view, home).start()
                how = {"--lnd-url": server.url, "--tls-cert": str(server.cert_path),
                       "--macaroon": str(server.macaroon_path)}
            else:
                server = CLNServer(view, home / "lightning-rpc").start()
                how = {"--cln-socket": str(home / "lightning-rpc")}
            out.append((i, server, how))
            atomic_write_bytes(home / "collect.args", (" ".join(f"{k} {v}" for k, v in how.items()) + "\n").encode())
    except BaseException:
        for _, server, _ in out:
            server.stop()
        raise
    return out


def simln(
    seed: Annotated[int, typer.Option(help="Seed of the graph, balances and payments.")] = 0,
    nodes: Annotated[int, typer.Option(help="Routers in the network.")] = 30,
    channels_per_node: Annotated[int, typer.Option(help="Channels each router opens when it joins.")] = 2,
    payments_per_hour: Annotated[float, typer.Option(help="Payments a simulated hour, network-wide.")] = 300.0,
    serve: Annotated[int, typer.Option(help="How many routers to serve (the best connected first), each as LND "
                                            "REST or a Core Lightning socket.")] = 2,
    history: Annotated[float, typer.Option(help="Simulated hours played at start, ending now (the routers' "
                                                "forwarding history).")] = 24.0,
    speed: Annotated[float, typer.Option(help="Simulated seconds per wall second after that (above 1 the "
                                              "routers' clocks run ahead of this machine's).")] = 1.0,
    state_dir: Annotated[Path, typer.Option(help="Where the servers' certificates, macaroons and sockets go.")]
    = DEFAULT_STATE,
) -> None:
    """Run a simulated Lightning network and serve some of its routers for `anya-fl lightning collect`.

    Payments route through the graph and fail where the balances say; each served router shows only its own
    channels and forwards. How to reach each one is printed and written to STATE_DIR/routers.json. Ctrl-C stops.
    """
    import time

    from anya_fl.simln.network import SimLN, SimLNConfig
    from core.errors import ConfigError

    if not 0 < speed <= 1e6:
        raise ConfigError("speed", f"{speed} must be in (0, 1,000,000]")
    if not 0 <= history <= 24 * 90:
        raise ConfigError("history", f"{history} must be from 0 to 2,160 hours")
    net = SimLN(SimLNConfig(seed=seed, nodes=nodes, channels_per_node=channels_per_node,
                            payments_per_hour=payments_per_hour), epoch=time.time() - history * 3600)
    if not 1 <= serve <= nodes:
        raise ConfigError("serve", f"{serve} must be from 1 to nodes ({nodes})")
    (state_dir / "routers.json").unlink(missing_ok=True)  # a previous run's: written again once the routers serve
    with console.status(f"playing {history:g} simulated hours of payments"):
        net.advance(history * 3600)
    busiest = sorted(range(nodes), key=lambda i: (-len(net.by_node[i]), i))[:serve]
    servers = serve_routers(net, busiest, state_dir)
    try:
        from core.storage import atomic_write_json

        atomic_write_json(state_dir / "routers.json", {str(i): {"implementation": net.implementation[i], **how}
                                                       for i, _, how in servers})
        rows = [[i, net.implementation[i], len(net.by_node[i]), " ".join(f"{k} {v}" for k, v in how.items())]
                for i, _, how in servers]
        ok = sum(p.succeeded for p in net.payments)
        console.print(table(f"simln: {nodes} routers, {len(net.channels)} channels, seed {seed}; {len(net.payments)} "
                            f"payments in {history:g} h ({ok} succeeded), now {speed:g}x",
                            ["router", "as", "channels", "anya-fl lightning collect ..."], rows))
        last = time.monotonic()
        while True:
            time.sleep(0.2)
            now = time.monotonic()
            net.advance((now - last) * speed)
            last = now
    except KeyboardInterrupt:
        pass
    finally:
        for _, server, _ in servers:
            server.stop()
    ok = sum(p.succeeded for p in net.payments)
    console.print(f"simln stopped: {len(net.payments)} payments, {ok} succeeded")
