"""What the simulated-node tests share: credentials, a node on a small chain, a client, and started nodes that
are stopped after the test."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from anya_fl.simnode import SimNode, SimNodeConfig
from core.bitcoin.rpc import BitcoinRPC, RPCConfig

USER, PASSWORD = "alice", "s3cret"
T0 = 9300.0  # an integer simulated time just after the node's start (start_block 20: t_start is about 9232)


def make_node(clock_at: float | None = None, **kw) -> SimNode:
    """A manual-clock node on a 5,000-transaction chain (its clock at ``clock_at`` when given)."""
    settings = {"seed": 3, "transactions": 5_000, "speed": 0.0, "rpcuser": USER, "rpcpassword": PASSWORD,
                "block_weight_limit": 400_000, "start_block": 20} | kw
    node = SimNode(SimNodeConfig(**settings))
    if clock_at is not None:
        node.clock.set(clock_at)
    return node


def client(node: SimNode, **kw) -> BitcoinRPC:
    settings = {"user": USER, "password": PASSWORD, "timeout_s": 10.0, "retries": 0} | kw
    return BitcoinRPC(RPCConfig(url=node.url, **settings))


def started_nodes(make: Callable[..., SimNode]) -> Iterator[Callable[..., SimNode]]:
    """For a fixture: a builder of started nodes, every one stopped when the test ends."""
    made: list[SimNode] = []

    def build(**kw) -> SimNode:
        n = make(**kw).start()
        made.append(n)
        return n

    yield build
    for n in made:
        n.stop()
