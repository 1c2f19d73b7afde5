"""A simulated Lightning network: a channel graph with balances, a payment workload, and routing whose failures
follow the balances. Everything is determined by the seed; time is simulated seconds (UNIX time = ``epoch`` + seconds,
``GENESIS_EPOCH`` by default) and moves only with ``advance``.

* **Graph.** ``nodes`` routers join one by one, each opening ``channels_per_node`` channels to earlier ones chosen
  in proportion to their channel count (preferential attachment: a few hubs, many small routers, as in the real
  network). Capacities are log-normal (median ``CAPACITY_MEDIAN_SAT``). The funder's share of a channel's funds is
  drawn from Beta(0.5, 0.5): an aged network, whose balances are mostly near one side or the other (what LND's
  bimodal estimator assumes). Each side keeps a reserve of 1 % of the capacity that it cannot send.
* **Fees.** Each direction has a base fee (0 or 1,000 msat) and a proportional fee (log-normal, median 100 ppm).
  A share ``FEE_MANAGERS`` of the routers manage their fees as charge-lnd's proportional strategy does: every
  ``FEE_UPDATE_S`` each of their channels charges its base rate x 16^(0.5 - our share), so 4x when empty on our
  side and a quarter when full. That is public (gossip), and the only public sign of a channel's balance.
* **Workload.** Payments arrive as a Poisson process (``payments_per_hour``); the payer is any router, the payee
  is drawn with Zipf-like popularity (a few merchants receive most) and so is the payer, mostly (merchants spend
  too), so flows roughly balance per router while single channels drift to one side and deplete. Amounts are log-normal (median ``PAYMENT_MEDIAN_SAT``).
* **Routing.** The payer finds the cheapest path by fee plus a penalty of ``-log P(success)`` per hop, where P is
  its estimator of a hop's success (``Estimator``; by default the uniform prior of probabilistic pathfinding,
  (c + 1 - a) / (c + 1)). It knows its own channels' balances exactly. Each hop forwards only if the sending
  side's spendable balance covers the amount and the next router is online; otherwise that router fails the
  HTLC (``local_failed``: temporary_channel_failure or unknown_next_peer) and every router before it on the path
  sees it failed downstream (``failed``). The payer excludes the failing hop and tries again, up to
  ``MAX_ATTEMPTS`` times. A success moves every hop's amount across its channel and pays each router its fee.
* **Uptime.** Each router goes offline now and then (on average once every two days, for two hours): its
  channels are inactive meanwhile.

What one router can see is its own channels and the HTLCs that passed through it (``RouterView``, a
``LightningSource``); the network's balances everywhere else are the truth only the simulator knows.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from anya_fl.simnode.config import GENESIS_EPOCH
from core.errors import ConfigError
from core.lightning.liquidity import PAYMENT_MEDIAN_SAT
from core.lightning.model import (
    FAILED,
    LOCAL_FAILED,
    OPEN,
    SETTLED,
    Channel,
    ChannelPolicy,
    Forward,
    NodeInfo,
)

CAPACITY_MEDIAN_SAT = 2_000_000
RESERVE_SHARE = 0.01
MAX_ATTEMPTS = 10
FEE_MANAGERS = 0.6  # share of routers that move their fees with their balance
FEE_UPDATE_S = 6 * 3600.0
FEE_SPREAD = 16.0  # a managed fee is base x FEE_SPREAD ** (0.5 - our share)
PAYER_POPULAR = 0.7  # share of payments paid by a router drawn by popularity (the rest: any router)
PENALTY_MSAT = 1_000.0  # the payer's cost of a hop's -log P(success), in msat (a fee it would pay to avoid a failure)
OFFLINE_EVERY_S = 2 * 86_400.0
OFFLINE_FOR_S = 2 * 3_600.0
START_HEIGHT = 820_000
LND_VERSION, CLN_VERSION = "0.18.3-beta commit=v0.18.3-beta", "v24.08.1"

# P(a hop of capacity c sat forwards a sat); the payer's view of a channel it does not own
Estimator = Callable[["Hop", int], float]


def uniform_prior(hop: Hop, amount_sat: int) -> float:
    """Probabilistic pathfinding's uniform prior: the balance is uniform on [0, c], so P = (c + 1 - a) / (c + 1)."""
    c = hop.capacity_sat
    return max(0.0, (c + 1 - amount_sat) / (c + 1))


@dataclass(frozen=True)
class Hop:
    """One direction of a channel, as a payer may use it: from ``src`` to ``dst``."""

    channel: int
    src: int
    dst: int
    capacity_sat: int
    policy: ChannelPolicy


@dataclass
class SimChannel:
    index: int
    a: int  # the funder
    b: int
    capacity_sat: int
    balance_msat: list[int]  # [a's, b's]
    policy: tuple[ChannelPolicy, ChannelPolicy]  # a->b, b->a
    opened: float  # simulated seconds (negative: before the simulation started)
    block: int

    @property
    def short_id(self) -> str:
        return f"{self.block}x{self.index + 1}x{self.index % 2}"

    def side(self, node: int) -> int:
        return 0 if node == self.a else 1

    def spendable_msat(self, node: int) -> int:
        reserve = int(self.capacity_sat * RESERVE_SHARE) * 1000
        return max(0, self.balance_msat[self.side(node)] - reserve)


@dataclass(frozen=True)
class HopAttempt:
    """The truth of one hop an HTLC tried: the sending side's spendable balance then, and whether it passed."""

    time: float
    channel: int
    src: int
    amount_msat: int
    spendable_msat: int
    dst_online: bool
    passed: bool


@dataclass
class Payment:
    """One payment: who paid whom, how much, when, and how it went."""

    time: float
    payer: int
    payee: int
    amount_sat: int
    attempts: int = 0
    succeeded: bool = False
    fee_msat: int = 0


@dataclass
class SimLNConfig:
    seed: int = 0
    nodes: int = 30
    channels_per_node: int = 2
    payments_per_hour: float = 300.0

    def validate(self) -> SimLNConfig:
        checks = [("seed", isinstance(self.seed, int) and self.seed >= 0, "must be an integer >= 0"),
                  ("nodes", isinstance(self.nodes, int) and 3 <= self.nodes <= 2_000, "must be an integer 3-2000"),
                  ("channels_per_node", isinstance(self.channels_per_node, int) and 1 <= self.channels_per_node <= 20,
                   "must be an integer 1-20"),
                  ("payments_per_hour", isinstance(self.payments_per_hour, int | float)
                   and 0 < self.payments_per_hour <= 1e6, "must be a number in (0, 1,000,000]")]
        for name, ok, problem in checks:
            if not ok:
                raise ConfigError(f"simln.{name}", f"{getattr(self, name)!r} {problem}")
        if self.channels_per_node >= self.nodes:
            raise ConfigError("simln.channels_per_node", f"{self.channels_per_node} must be below nodes ({self.nodes})")
        return self


def _pubkey(seed: int, i: int) -> str:
    h = hashlib.sha256(f"anya-fl simln node {seed} {i}".encode()).hexdigest()
    return ("02" if int(h[0], 16) % 2 == 0 else "03") + h


@dataclass
class SimLN:
    """The simulated network: ``advance(seconds)`` plays the payments due; routers are read through ``router``."""

    config: SimLNConfig
    now: float = 0.0
    channels: list[SimChannel] = field(default_factory=list)
    payments: list[Payment] = field(default_factory=list)
    forwards: dict[int, list[Forward]] = field(default_factory=dict)  # router -> its forwards, oldest first
    hop_log: list[HopAttempt] = field(default_factory=list)  # the truth of every hop tried, oldest first
    estimator: Estimator = uniform_prior
    epoch: float = GENESIS_EPOCH  # UNIX time of simulated second 0

    def __post_init__(self) -> None:
        cfg = self.config.validate()
        self.lock = threading.RLock()  # routers are read from server threads while the clock advances
        self.rng = np.random.default_rng(cfg.seed)
        self.pubkeys = [_pubkey(cfg.seed, i) for i in range(cfg.nodes)]
        self.implementation = ["cln" if i % 3 == 2 else "lnd" for i in range(cfg.nodes)]
        self._build_graph()
        self.offline = self._offline_periods()
        self.popularity = 1.0 / np.arange(1, cfg.nodes + 1) ** 1.1
        self.popularity = self.rng.permutation(self.popularity / self.popularity.sum())
        self.next_payment = self._gap()
        self.forwards = {i: [] for i in range(cfg.nodes)}
        self.base_ppm = {(c.index, s): c.policy[s].fee_rate_ppm for c in self.channels for s in (0, 1)}
        self.manages_fees = [bool(u < FEE_MANAGERS) for u in self.rng.random(cfg.nodes)]
        self.next_fee_update = 0.0

    # ---- the graph

    def _policy(self, capacity_sat: int) -> ChannelPolicy:
        ppm = int(min(5_000, max(0, round(float(self.rng.lognormal(math.log(100), 1.0))))))
        return ChannelPolicy(base_fee_msat=int(self.rng.choice([0, 1_000])), fee_rate_ppm=ppm,
                             time_lock_delta=int(self.rng.choice([40, 80, 144])), min_htlc_msat=1_000,
                             max_htlc_msat=capacity_sat * 990)

    def _build_graph(self) -> None:
        cfg = self.config
        degree = np.zeros(cfg.nodes)
        for i in range(1, cfg.nodes):
            k = min(cfg.channels_per_node, i)
            weights = degree[:i] + 1.0
            peers = self.rng.choice(i, size=k, replace=False, p=weights / weights.sum())
            for j in sorted(int(p) for p in peers):
                cap = int(np.clip(self.rng.lognormal(math.log(CAPACITY_MEDIAN_SAT), 0.8), 200_000, 16_000_000))
                cap = cap // 1000 * 1000
                share = float(self.rng.beta(0.5, 0.5))
                local = int(cap * 1000 * share)
                index = len(self.channels)
                opened = -float(self.rng.uniform(30, 400)) * 86_400
                self.channels.append(SimChannel(index, i, j, cap, [local, cap * 1000 - local],
                                                (self._policy(cap), self._policy(cap)), opened,
                                                START_HEIGHT - 1 - int(-opened // 600)))
                degree[i] += 1
                degree[j] += 1
        self.by_node: dict[int, list[SimChannel]] = {i: [] for i in range(cfg.nodes)}
        for c in self.channels:
            self.by_node[c.a].append(c)
            self.by_node[c.b].append(c)
        self._index_hops()

    def _offline_periods(self) -> list[list[tuple[float, float]]]:
        horizon = 60 * 86_400.0
        out = []
        for _ in range(self.config.nodes):
            periods, t = [], float(self.rng.exponential(OFFLINE_EVERY_S))
            while t < horizon:
                d = float(self.rng.exponential(OFFLINE_FOR_S))
                periods.append((t, t + d))
                t += d + float(self.rng.exponential(OFFLINE_EVERY_S))
            out.append(periods)
        return out

    def online(self, node: int, t: float | None = None) -> bool:
        t = self.now if t is None else t
        return not any(a <= t < b for a, b in self.offline[node])

    # ---- payments

    def _gap(self) -> float:
        return self.now + float(self.rng.exponential(3600.0 / self.config.payments_per_hour))

    def advance(self, seconds: float) -> list[Payment]:
        """Play the payments due in the next ``seconds``; returns them."""
        if not (isinstance(seconds, int | float) and 0 <= seconds < math.inf):
            raise ConfigError("seconds", f"{seconds!r} must be a finite number >= 0")
        with self.lock:
            return self._advance(seconds)

    def _advance(self, seconds: float) -> list[Payment]:
        end = self.now + seconds
        done = []
        while self.next_payment < end:
            self.now = self.next_payment
            if self.now >= self.next_fee_update:
                self.update_fees()
            # merchants receive most, and spend too (to suppliers, exchanges): flows roughly balance per node
            payer = int(self.rng.choice(self.config.nodes, p=self.popularity)) if self.rng.random() < PAYER_POPULAR \
                else int(self.rng.integers(self.config.nodes))
            payee = int(self.rng.choice(self.config.nodes, p=self.popularity))
            amount = int(np.clip(self.rng.lognormal(math.log(PAYMENT_MEDIAN_SAT), 1.2), 1_000, 5_000_000))
            if payee != payer and self.online(payer) and self.online(payee):
                done.append(self.pay(payer, payee, amount))
            self.next_payment = self._gap()
        self.now = end
        return done

    def update_fees(self) -> None:
        """Fee managers set each channel's proportional fee from their share of its balance (``advance`` does it
        every ``FEE_UPDATE_S``)."""
        for c in self.channels:
            for s, node in ((0, c.a), (1, c.b)):
                if self.manages_fees[node]:
                    share = c.balance_msat[s] / (c.capacity_sat * 1000)
                    ppm = min(5_000, max(1, round(self.base_ppm[(c.index, s)] * FEE_SPREAD ** (0.5 - share))))
                    policies = list(c.policy)
                    policies[s] = replace(c.policy[s], fee_rate_ppm=ppm)
                    c.policy = (policies[0], policies[1])
        self._index_hops()
        self.next_fee_update = self.now + FEE_UPDATE_S

    def _index_hops(self) -> None:
        """The hops into each node, with the channels' current policies."""
        self.into = {i: [] for i in range(self.config.nodes)}
        for c in self.channels:
            self.into[c.b].append(Hop(c.index, c.a, c.b, c.capacity_sat, c.policy[0]))
            self.into[c.a].append(Hop(c.index, c.b, c.a, c.capacity_sat, c.policy[1]))

    def _route(self, payer: int, payee: int, amount_sat: int, excluded: set[tuple[int, int]]) -> list[Hop] | None:
        """The cheapest path by fees + ``PENALTY_MSAT`` x -log P(success) per hop, searched backwards from the payee
        (a router's fee depends on what it forwards). ``need[v]``: the msat that must reach v; the payer knows its
        own channels' balances and its peers' uptime."""
        need: dict[int, int] = {payee: amount_sat * 1000}
        cost: dict[int, float] = {payee: 0.0}
        nxt: dict[int, Hop] = {}
        best_first: tuple[float, Hop] | None = None
        queue = [(0.0, payee)]
        while queue:
            c_v, v = heapq.heappop(queue)
            if c_v > cost.get(v, math.inf):
                continue
            for hop in self.into[v]:
                u, ch = hop.src, self.channels[hop.channel]
                if (hop.channel, u) in excluded or u == payee:
                    continue
                if u == payer:
                    if ch.spendable_msat(u) >= need[v] and self.online(v) and \
                            (best_first is None or c_v < best_first[0]):
                        best_first = (c_v, hop)
                    continue
                p = self.estimator(hop, math.ceil(need[v] / 1000))
                if p <= 0 or hop.policy.disabled:
                    continue
                fee = hop_fee(hop.policy, need[v])
                total = c_v + fee + PENALTY_MSAT * -math.log(min(p, 1.0))
                if total < cost.get(u, math.inf):
                    cost[u], need[u], nxt[u] = total, need[v] + fee, hop
                    heapq.heappush(queue, (total, u))
        if best_first is None:
            return None
        path = [best_first[1]]
        while path[-1].dst != payee:
            path.append(nxt[path[-1].dst])
        return path

    def pay(self, payer: int, payee: int, amount_sat: int) -> Payment:
        """Route one payment with retries; record every router's forwards; move the balances on success."""
        payment = Payment(self.now, payer, payee, amount_sat)
        excluded: set[tuple[int, int]] = set()
        while payment.attempts < MAX_ATTEMPTS:
            path = self._route(payer, payee, amount_sat, excluded)
            if path is None:
                break
            payment.attempts += 1
            failed_at = self._attempt(path, amount_sat * 1000)
            if failed_at is None:
                payment.succeeded = True
                payment.fee_msat = self._amounts(path, amount_sat * 1000)[0] - amount_sat * 1000
                break
            excluded.add((path[failed_at].channel, path[failed_at].src))
        self.payments.append(payment)
        return payment

    def _amounts(self, path: list[Hop], amount_msat: int) -> list[int]:
        """What each hop carries: the payment plus the fees of the routers after it."""
        out = [amount_msat]
        for j in range(len(path) - 1, 0, -1):
            out.insert(0, out[0] + hop_fee(path[j].policy, out[0]))
        return out

    def _attempt(self, path: list[Hop], amount_msat: int) -> int | None:
        """Send one HTLC along ``path``; None if it settled, else the index of the hop that failed."""
        amounts = self._amounts(path, amount_msat)
        t = self.now
        failed_at, reason = None, None
        for j, hop in enumerate(path):
            c = self.channels[hop.channel]
            if not self.online(hop.dst):
                failed_at, reason = j, "unknown_next_peer"
                break
            if c.spendable_msat(hop.src) < amounts[j]:
                failed_at, reason = j, "temporary_channel_failure"
                break
        for j, hop in enumerate(path[:len(path) if failed_at is None else failed_at + 1]):
            self.hop_log.append(HopAttempt(t, hop.channel, hop.src, amounts[j],
                                           self.channels[hop.channel].spendable_msat(hop.src),
                                           self.online(hop.dst), failed_at is None or j < failed_at))
        resolved = t + 0.5 * len(path)
        last = len(path) - 1 if failed_at is None else failed_at
        for j in range(1, last + 1):  # router path[j].src received on hop j-1 and forwards on hop j
            router = path[j].src
            if failed_at is None:
                outcome, why, fee = SETTLED, None, amounts[j - 1] - amounts[j]
            elif j == failed_at:
                outcome, why, fee = LOCAL_FAILED, reason, 0
            else:
                outcome, why, fee = FAILED, None, 0
            self.forwards[router].append(Forward(
                received=self.epoch + t, resolved=self.epoch + resolved,
                in_channel=self.channels[path[j - 1].channel].short_id,
                out_channel=self.channels[path[j].channel].short_id, in_msat=amounts[j - 1], out_msat=amounts[j],
                fee_msat=fee, outcome=outcome, failure=why))
        if failed_at is not None:
            return failed_at
        for j, hop in enumerate(path):
            c = self.channels[hop.channel]
            c.balance_msat[c.side(hop.src)] -= amounts[j]
            c.balance_msat[c.side(hop.dst)] += amounts[j]
        return None

    # ---- one router's view

    def router(self, node: int) -> RouterView:
        if not (isinstance(node, int) and 0 <= node < self.config.nodes):
            raise ConfigError("node", f"{node!r} must be a router index 0-{self.config.nodes - 1}")
        return RouterView(self, node)


def hop_fee(policy: ChannelPolicy, amount_msat: int) -> int:
    """The fee a router charges to forward ``amount_msat`` out of a channel with ``policy`` (BOLT 7)."""
    return policy.base_fee_msat + amount_msat * policy.fee_rate_ppm // 1_000_000


@dataclass
class RouterView:
    """What one router sees: its identity, its channels (its own balances) and the HTLCs it forwarded."""

    net: SimLN
    node: int

    def info(self) -> NodeInfo:
        with self.net.lock:
            return self._info()

    def _info(self) -> NodeInfo:
        impl = self.net.implementation[self.node]
        return NodeInfo(pubkey=self.net.pubkeys[self.node], alias=f"simln-{self.node:03d}", implementation=impl,
                        version=LND_VERSION if impl == "lnd" else CLN_VERSION,
                        block_height=START_HEIGHT + int(self.net.now // 600), synced_to_chain=True)

    def channels(self) -> list[Channel]:
        with self.net.lock:
            return self._channels()

    def _channels(self) -> list[Channel]:
        net, me = self.net, self.node
        out = []
        for c in net.by_node[me]:
            s = c.side(me)
            peer = c.b if me == c.a else c.a
            reserve = int(c.capacity_sat * RESERVE_SHARE)
            lifetime = net.now - c.opened  # monitored since it opened
            down = sum(max(0.0, min(b, net.now) - max(a, 0.0)) for a, b in net.offline[peer] if a < net.now)
            out.append(Channel(
                channel_id=c.short_id, channel_point=f"{hashlib.sha256(f'{net.config.seed} {c.index}'.encode()).hexdigest()}:{c.index % 2}",
                peer=net.pubkeys[peer], state=OPEN, active=net.online(peer), capacity_sat=c.capacity_sat,
                local_msat=c.balance_msat[s], remote_msat=c.balance_msat[1 - s], local_reserve_sat=reserve,
                remote_reserve_sat=reserve, initiator_local=me == c.a, uptime_s=int(max(0.0, lifetime - down)),
                lifetime_s=int(lifetime), local_policy=c.policy[s], remote_policy=c.policy[1 - s]))
        return out

    def forwards(self, start: float, end: float) -> list[Forward]:
        with self.net.lock:
            return [f for f in self.net.forwards[self.node] if start <= f.received < end]
