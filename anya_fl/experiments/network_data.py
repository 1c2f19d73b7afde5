"""Telemetry datasets for the ``network`` task, from the simulated node's P2P scenarios.

A node cannot know when it is under attack (that is what the model is for); the simulated node can. Each
*episode* is a fresh simulated node (manual clock) watched through the real path (``NetworkWatch`` over
JSON-RPC, ``telemetry_sample``) a poll per simulated minute: ``CLEAN_POLLS`` clean, then a scenario injected,
then ``ATTACK_POLLS`` polls. A vector's label is the node's own truth: 1 while an injected scenario is active,
else 0 (the two rows after the start whose rates still span the clean minute included). The double spend is
left to the watch list (the telemetry vector holds nothing of one payment).

Node ``i`` of a federation sees, in its own data, clean episodes and the scenarios ``OWN_KINDS`` gives it;
the held-out episodes of the other kinds (``unseen``) are what no node-local model could learn from its own
data. Splits are by episode (train, val, test), so no episode's rows leak across splits.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from anya_fl.simnode import GENESIS_EPOCH, SimNode, SimNodeConfig
from core.alerts import AlertEngine
from core.bitcoin.network.watch import NetworkWatch
from core.bitcoin.rpc import BitcoinRPC, RPCConfig
from core.data.datasets import SPLITS, TaskSplits
from core.seeding import stream

POLL_S = 60.0
CLEAN_POLLS = 60
ATTACK_POLLS = 90
EPISODE_TRANSACTIONS = 8_000
# the scenarios the model learns (the double spend is the watch list's: see the module doc)
MODEL_KINDS = ("eclipse", "inbound_flood", "addr_spam", "partition", "stale_fork")
# scenario -> start it at t for d seconds (eclipse and stale fork are open-ended: they last the episode)
_START: dict[str, Callable[[SimNode, float, float], None]] = {
    "eclipse": lambda n, t, d: n.inject_eclipse(t),
    "inbound_flood": lambda n, t, d: n.inject_inbound_flood(t, duration_s=d),
    "addr_spam": lambda n, t, d: n.inject_addr_spam(t, duration_s=d),
    "partition": lambda n, t, d: n.inject_partition(t, duration_s=d),
    "stale_fork": lambda n, t, d: n.inject_stale_fork(t),
}


@dataclass(frozen=True)
class Episode:
    """One watched simulated node: ``x`` (polls, width), ``y`` (1 while a scenario was active) and its kind."""

    kind: str  # a scenario or "clean"
    x: np.ndarray
    y: np.ndarray


def episode_seed(seed: int, *parts: object) -> int:
    """The simulated node's seed for one episode, determined by the run's seed and the episode's place."""
    return int(stream(seed, "network/" + "/".join(map(str, parts))).integers(2**31 - 1))


def run_episode(kind: str, seed: int, clean_polls: int = CLEAN_POLLS, attack_polls: int = ATTACK_POLLS,
                on_poll: Callable[[str], None] | None = None) -> Episode:
    """Watch a fresh simulated node through one scenario (or ``clean``); every poll's vector and truth.
    ``on_poll(url)`` is called after each poll with the simulated node's RPC URL (tests read its peers)."""
    if kind != "clean" and kind not in _START:
        raise ValueError(f"kind {kind!r}: not one of clean, {', '.join(_START)}")
    node = SimNode(SimNodeConfig(seed=seed, transactions=EPISODE_TRANSACTIONS, speed=0.0, rpcuser="sim",
                                 rpcpassword="sim", start_block=2)).start(port=0)
    try:
        with tempfile.TemporaryDirectory(prefix="anya-fl-network-data-") as d:
            rpc = BitcoinRPC(RPCConfig(url=node.url, user="sim", password="sim", retries=0, timeout_s=30))
            clock = lambda: GENESIS_EPOCH + node.now()  # noqa: E731 - the simulated node's clock
            watch = NetworkWatch(rpc, AlertEngine(Path(d) / "alerts.json", [], now=clock), now=clock)
            watch.poll_once()  # the first sample has no rates yet: not a row
            rows: list[np.ndarray] = []
            truth: list[float] = []
            t0 = node.now() + clean_polls * POLL_S + 1.0
            if kind != "clean":
                _START[kind](node, t0, attack_polls * POLL_S)
            for _ in range(clean_polls + (attack_polls if kind != "clean" else 0)):
                node.advance(POLL_S)
                rows.append(watch.poll_once().sample.vector)
                if on_poll is not None:
                    on_poll(node.url)
                t = node.now()
                truth.append(float(any(e["start"] <= t and (e["end"] is None or t < e["end"])
                                       for e in node.truth.network_events())))
    finally:
        node.stop()
    return Episode(kind, np.asarray(rows, dtype=np.float32), np.asarray(truth, dtype=np.float32))


def own_kinds(node: int, nodes: int, per_node: int = 2) -> tuple[str, ...]:
    """The scenarios node ``node`` has seen in its own data: ``per_node`` consecutive kinds, dealt round the
    federation, so every kind is seen by some node when nodes x per_node >= the kinds."""
    k = len(MODEL_KINDS)
    return tuple(MODEL_KINDS[(node * per_node + j) % k] for j in range(min(per_node, k)))


def _splits(episodes: dict[str, list[Episode]]) -> TaskSplits:
    return TaskSplits(x={s: np.concatenate([e.x for e in episodes[s]]) for s in SPLITS},
                      y={s: np.concatenate([e.y for e in episodes[s]]) for s in SPLITS})


def _plan(split: str, kinds: tuple[str, ...]) -> list[str]:
    """The episodes of one split of a node's data: one clean (two in train) and one of each of its kinds."""
    return ["clean", "clean", *kinds] if split == "train" else ["clean", *kinds]


def node_network_data(node: int, nodes: int, seed: int, kinds: tuple[str, ...] | None = None,
                      on_episode: Callable[[], None] | None = None,
                      on_poll: Callable[[str], None] | None = None) -> TaskSplits:
    """Node ``node``'s own telemetry: per split one clean episode and one of each of its kinds (train gets two
    clean ones). Seeds derive from (seed, node, split, kind), so every node's chains differ."""
    kinds = own_kinds(node, nodes) if kinds is None else kinds
    per_split: dict[str, list[Episode]] = {}
    for s in SPLITS:
        per_split[s] = []
        for j, kind in enumerate(_plan(s, kinds)):
            per_split[s].append(run_episode(kind, episode_seed(seed, node, s, kind, j), on_poll=on_poll))
            if on_episode is not None:
                on_episode()
    return _splits(per_split)


def held_out_network_data(seed: int, kinds: tuple[str, ...] = MODEL_KINDS,
                          on_episode: Callable[[], None] | None = None) -> dict[str, Episode]:
    """One test episode per kind (and a clean one) on chains no node trains on: the coordinator's set and
    the benchmark's unseen-scenario test."""
    out: dict[str, Episode] = {}
    for kind in ("clean", *kinds):
        out[kind] = run_episode(kind, episode_seed(seed, "held-out", kind))
        if on_episode is not None:
            on_episode()
    return out


def add_network_data(data_dir: Path, seed: int, nodes: int, on_episode: Callable[[], None] | None = None) -> None:
    """Add the ``network`` task to a simulation's datasets (``node-<i>`` and ``coordinator``, written by
    ``write_federation_data``): each node's own telemetry episodes, and the coordinator's held-out ones
    (val and test on separate chains, every kind in each)."""
    from core.data.datasets import load_dataset, save_dataset

    for i in range(nodes):
        d = data_dir / f"node-{i}"
        data, manifest = load_dataset(d)
        data["network"] = node_network_data(i, nodes, seed, on_episode=on_episode)
        save_dataset(d, data, {**manifest.get("info", {}), "network_kinds": list(own_kinds(i, nodes))})
    add_coordinator_network_data(data_dir, seed, on_episode)


def add_coordinator_network_data(data_dir: Path, seed: int, on_episode: Callable[[], None] | None = None) -> None:
    """Add the ``network`` task to the coordinator's held-out set (``<data_dir>/coordinator``): val (and train)
    and test episodes of every kind on separate chains no node trains on. The coordinator has no telemetry
    truth of its own, so in a deployment too its held-out network set is simulated (as its chain tasks' is)."""
    from core.data.datasets import load_dataset, save_dataset

    d = data_dir / "coordinator"
    data, manifest = load_dataset(d)
    val = _held_out_episodes(seed + 1, on_episode)
    test = _held_out_episodes(seed, on_episode)
    data["network"] = _splits({"train": val, "val": val, "test": test})
    save_dataset(d, data, manifest.get("info", {}))


def episodes_total(nodes: int) -> int:
    """How many episodes ``add_network_data`` runs (for a progress bar)."""
    per_node = sum(len(_plan(s, own_kinds(0, nodes))) for s in SPLITS)
    return nodes * per_node + 2 * (1 + len(MODEL_KINDS))


_HELD_OUT: dict[int, tuple[Episode, ...]] = {}  # seed -> held_out_network_data's episodes, watched once per process


def _held_out_episodes(seed: int, on_episode: Callable[[], None] | None = None) -> list[Episode]:
    """Copies of ``held_out_network_data(seed)``'s episodes (clean first), each seed watched once per process."""
    if seed not in _HELD_OUT:
        _HELD_OUT[seed] = tuple(held_out_network_data(seed, on_episode=on_episode).values())
    elif on_episode is not None:
        for _ in _HELD_OUT[seed]:
            on_episode()
    return [Episode(e.kind, e.x.copy(), e.y.copy()) for e in _HELD_OUT[seed]]


def sample_network_splits(seed: int = 0) -> TaskSplits:
    """Realistic labeled telemetry rows (a clean episode and one of each scenario), the same rows in every
    split: for benchmarks and export checks that need rows, not a fair evaluation (fresh arrays each call;
    the episodes are watched once per seed and process)."""
    episodes = _held_out_episodes(seed)
    return _splits({s: episodes for s in SPLITS})
