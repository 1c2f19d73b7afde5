"""A simulated Bitcoin Core node: a simulated chain served over Core's JSON-RPC as it unfolds in time.

``SimNode(SimNodeConfig(...)).start(port)`` serves, on 127.0.0.1 only, the chain of
``core.data.chain.simulate_chain`` in Bitcoin Core 27's reply shapes, with the node's clock running at
``speed`` simulated seconds per wall second (0: a manual clock moved by ``advance``). Scenarios: a warm-up
answering -28, an RPC outage (connection refused, then the same port again), a reorg shown as a stale branch
until the next block, a full mempool (evictions, a rising mempoolminfee) and RBF replacements of lower-fee
phantom versions, injected double spends, fee bumps and a low-fee mempool flood (``flood``); on the P2P side
an eclipse, an inbound flood, addr spam, a partition, a stale fork and slow block propagation
(``network_scenarios``). ``node.truth`` gives the simulator's ground truth; ``write_labels`` an operator labels
file.

Modules: ``config`` (SimNodeConfig, constants), ``timeline`` (mempool enter/leave times, evictions,
phantoms, sequence), ``render`` (transactions in Core's JSON), ``blocks`` (hashes, active chain, stale
branches, headers, blocks, getblockstats), ``peers`` (getpeerinfo, getnetworkinfo), ``rpc`` (the methods and
their parameter checks), ``server`` (the HTTP JSON-RPC server and auth), ``truth``, ``node`` (SimNode),
``encoding`` (hashes, addresses, descriptor checksums), ``network_scenarios`` (the P2P scenarios), ``flood``
(a mempool flood).
"""

from anya_fl.simnode.config import GENESIS_EPOCH, SimNodeConfig
from anya_fl.simnode.node import SimNode
from anya_fl.simnode.server import RPCAuth, RPCFault, RPCServer

__all__ = ["GENESIS_EPOCH", "RPCAuth", "RPCFault", "RPCServer", "SimNode", "SimNodeConfig"]
