"""Rule detectors over node telemetry (``TELEMETRY_SCHEMA`` samples) -> :class:`core.alerts.Finding` s.

Every evaluation reports every condition, active or not (the alert engine clears a condition only after it
was reported inactive ``clear_after`` times). Thresholds come from Bitcoin Core's own constants where it has
them, and from public observations otherwise; each is named below with its source.

* **eclipse risk**: Core opens at most one outbound connection per netgroup (``CConnman::ThreadOpenConnections``),
  so on an honest node the top netgroup's share of its outbound peers is about 1/n. Warning when 3/4 or more
  of at least 4 outbound peers share one netgroup or there are at most 2 netgroups among 8 or more outbound
  peers; critical when that holds while blocks are overdue (no peer ahead of us and the tip older than
  ``STALE_TIP_S``). Outbound churn above half the outbound peers between two samples is a warning.
* **partition / stale tip**: Core's stale-tip check runs every 10 minutes and calls the tip stale after 30
  minutes without a new block (``TipMayBeStale``: 3 x the 10-minute target). Blocks arrive as a Poisson
  process, P(no block for t) = exp(-t / 600 s); the tip-age alert is INFO at P < 1e-3 (69 min, about one per
  week of honest chain) and WARNING at P < 1e-6 (2 h 18 min, about one per 20 years); so a clean week raises
  nothing above INFO. Peers whose headers are ahead of our tip for ``CHAIN_SYNC_TIMEOUT_S`` (Core's 20 min)
  are a CRITICAL partition; ``networkactive`` false or no connections is CRITICAL at once.
* **fork**: a ``valid-fork`` chain tip with a branch of 2 or more blocks is a WARNING (a 1-block orphan is
  ordinary: INFO).
* **resource attacks**: inbound connections opened per minute above ``INBOUND_FLOOD_PER_MIN`` (peer-observer
  saw about 40 per minute in a flood against a normal 3); address messages rate-limited faster than Core's own
  addr budget (``MAX_ADDR_RATE_PER_SECOND`` 0.1/s) for 10 minutes; the mempool above 90 % of ``maxmempool``;
  free disk under 5 GB (warning) or 1 GB (critical); CPU above 90 % for 10 minutes.
* **inv flooding and ping growth**: inv bytes per second above 10x this node's own usual level (a slow
  exponential average, half-life 6 h, that an attack does not feed) and above 50 kB/s, or the 90th-percentile
  ping above 5x its usual level and above 1 s, each for 10 minutes, is a WARNING.
* **the network-attack model** (``network-model``, WARNING): the federated model's P(attack) for the
  telemetry vector at or above ``MODEL_THRESHOLD`` for ``MODEL_POLLS`` polls in a row (when the watch has a
  model: ``anya-fl watch --registry``).
* **tuning advice** (INFO): a mempool that evicts (``mempoolminfee`` above the default relay minimum) suggests
  a larger ``-maxmempool``; inbound slots all taken suggests a larger ``-maxconnections``; an initial block
  download (``getblockchaininfo.initialblockdownload``) on a machine with ``DBCACHE_ADVICE_FREE_MB`` or more
  free memory suggests a larger ``-dbcache`` (default ``DEFAULT_DBCACHE_MB``, 450 MiB: a larger UTXO cache
  flushes to disk less often, the main cost of a first sync).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from core.alerts import Finding, Severity
from core.bitcoin.network.telemetry import TelemetrySample

BLOCK_INTERVAL_S = 600.0  # Core's nPowTargetSpacing
STALE_TIP_S = 30 * 60.0  # net_processing TipMayBeStale: 3 x the block interval
CHAIN_SYNC_TIMEOUT_S = 20 * 60.0  # net_processing CHAIN_SYNC_TIMEOUT
MAX_ADDR_RATE_PER_SECOND = 0.1  # net_processing: addr messages a peer may send per second
INBOUND_FLOOD_PER_MIN = 20.0  # between peer-observer's normal 3 and its observed flood of 40
SUSTAINED_S = 10 * 60.0  # how long a rate must hold before it is an alert (Core's stale-tip check interval)
TIP_INFO_P, TIP_WARNING_P = 1e-3, 1e-6  # P(no block for the tip's age) under a Poisson block process
# (detector, the severity its Prometheus rule carries, summary): what `anya-fl alerts rules` writes
BASELINE_HALFLIFE_S = 6 * 3600.0  # how fast "usual" follows the node: hours, not minutes
POLL_WEIGHT_S = 60.0  # each evaluation moves the baseline as one minute would (polls are 10 s to 10 min apart)
INV_FLOOD_FACTOR, INV_FLOOD_FLOOR_BPS = 10.0, 50_000.0  # 10x the usual inv bytes, and over 50 kB/s
PING_GROWTH_FACTOR, PING_FLOOR_MS = 5.0, 1000.0  # 5x the usual p90 ping, and over a second (peer-observer: 5 s waits)
DEFAULT_MIN_RELAY_SAT_VB = 1.0  # Core's -minrelaytxfee default (0.00001 BTC/kvB)
INBOUND_SLOTS = 125 - 10  # -maxconnections default minus the 8 full-relay and 2 block-relay-only outbound
MODEL_THRESHOLD = 0.5  # the network model's P(attack) at which a poll counts (its classifier boundary)
MODEL_POLLS = 2  # consecutive polls above it before the model's finding is active (one odd minute is not)
DEFAULT_DBCACHE_MB = 450  # Core's -dbcache default (nDefaultDbCache, MiB)
DBCACHE_ADVICE_FREE_MB = 4096  # free memory that leaves room for a few GiB of cache beside the OS
DETECTOR_RULES = (
    ("eclipse", "warning", "outbound peers concentrated in few netgroups, or replaced en masse"),
    ("partition", "critical", "stale tip or network partition (peers ahead of us, or no connections)"),
    ("fork", "warning", "a competing valid chain of 2 or more blocks"),
    ("inbound-flood", "warning", "inbound connection flood"),
    ("addr-spam", "warning", "address messages beyond Core's rate limit for 10 minutes"),
    ("mempool-full", "warning", "mempool above 90 % of maxmempool"),
    ("disk", "critical", "disk nearly full"),
    ("cpu", "warning", "CPU saturated for 10 minutes"),
    ("rpc", "critical", "Bitcoin Core does not answer the watch"),
    ("double-spend", "critical", "a watched payment was replaced or double-spent"),
    ("inv-flood", "warning", "inv messages far above this node's usual rate for 10 minutes"),
    ("ping", "warning", "peer pings far above their usual level for 10 minutes"),
    ("network-model", "warning", "the federated network-attack model scores the telemetry as an attack"),
    ("propagation", "warning", "blocks arrive long after peers announce them (core.bitcoin.network.propagation)"),
    ("slow-arrival", "warning", "the next block is forecast to arrive late over this peer mix "
                                "(core.bitcoin.network.arrival_forecast)"),
    ("forecast", "warning", "a component will cross its threshold within a day at the current trend"),
    ("tuning", "info", "a node setting the telemetry suggests changing"),
)
DETECTORS = tuple(d for d, _, _ in DETECTOR_RULES)


def dbcache_advice(blockchain: Any, resources: Mapping[str, Any] | None) -> Finding:
    """The ``tuning``/``dbcache`` finding from a getblockchaininfo reply and the watch's resources
    (``memory_available_mb``): active (INFO) during an initial block download with memory to spare."""
    ibd = isinstance(blockchain, Mapping) and blockchain.get("initialblockdownload") is True
    free = (resources or {}).get("memory_available_mb")
    free = float(free) if isinstance(free, int | float) and not isinstance(free, bool) and math.isfinite(free) \
        else 0.0
    progress = blockchain.get("verificationprogress") if isinstance(blockchain, Mapping) else None
    done = f"{100 * progress:.1f} % verified" if isinstance(progress, float) and 0 <= progress <= 1 else "syncing"
    active = ibd and free >= DBCACHE_ADVICE_FREE_MB
    suggest = int(min(free / 2, 16_384) // 256 * 256)
    return Finding("tuning", "dbcache", Severity.INFO, "consider a larger -dbcache for the initial sync",
                   f"initial block download ({done}) with {free:,.0f} MiB of memory free: -dbcache={suggest} "
                   f"(default {DEFAULT_DBCACHE_MB} MiB) flushes the UTXO set to disk less often; lower it again "
                   "after the sync" if active else "", free, active=active)


def model_finding(score: float, above: int) -> Finding:
    """The ``network-model`` finding: ``score`` is the model's P(attack) for this poll, ``above`` how many
    consecutive polls (this one included) were at or above ``MODEL_THRESHOLD``."""
    active = above >= MODEL_POLLS
    return Finding("network-model", "attack", Severity.WARNING if active else Severity.INFO,
                   "the network-attack model sees an attack",
                   f"P(attack) {score:.2f} for {above} poll{'s' if above != 1 else ''} in a row (the federated model "
                   f"trained on every node's incidents)" if active else "", score, active=active)


def no_block_probability(age_s: float) -> float:
    """P(no block for ``age_s`` seconds) for Poisson blocks every ``BLOCK_INTERVAL_S`` on average."""
    return math.exp(-max(age_s, 0.0) / BLOCK_INTERVAL_S)


@dataclass
class NetworkDetectors:
    """The rule detectors with the little memory they need (since when a rate or a peer-ahead state holds)."""

    since: dict[str, float] = field(default_factory=dict)
    baseline: dict[str, float] = field(default_factory=dict)  # the node's own normal levels (slow EMAs)

    def _against_baseline(self, name: str, value: float, now: float, factor: float, floor: float) -> tuple[bool, float]:
        """Whether ``value`` is above ``factor`` x this node's usual level and above ``floor``, and that level.
        The level is an exponential average with a half-life of ``BASELINE_HALFLIFE_S``, fed only by values
        that are not above it, so an attack does not become the norm."""
        base = self.baseline.get(name)
        high = base is not None and value > factor * base and value > floor
        if not high:
            w = 1.0 if base is None else min(1.0, math.log(2) * POLL_WEIGHT_S / BASELINE_HALFLIFE_S)
            self.baseline[name] = value if base is None else base + w * (value - base)
        return high, self.baseline[name]

    def _held(self, name: str, now: float, condition: bool) -> float:
        """Seconds ``condition`` has held (0 when it does not hold now)."""
        if not condition:
            self.since.pop(name, None)
            return 0.0
        return now - self.since.setdefault(name, now)

    def evaluate(self, sample: TelemetrySample, *, rates_known: bool = True) -> list[Finding]:
        """Every condition's finding for this sample (inactive ones included). Without a previous sample
        (``rates_known`` False: a watcher's first poll) the rate conditions are not reported, so they stay as
        they were, and their timers keep running."""
        v = sample.as_dict()
        now = sample.time
        out: list[Finding] = []

        def report(detector: str, key: str, severity: Severity | None, title: str, message: str,
                   value: float) -> None:
            out.append(Finding(detector=detector, key=key, severity=severity or Severity.INFO, title=title,
                               message=message, value=value, active=severity is not None))

        outbound = v["peers_outbound_full_relay"] + v["peers_block_relay_only"] + v["peers_manual"]
        share, groups = v["outbound_top_netgroup_share"], v["outbound_netgroups"]
        ahead = v["peers_headers_ahead"]
        age = v["tip_age_s"]
        overdue = age > STALE_TIP_S and ahead == 0
        concentrated = (outbound >= 4 and share >= 0.75) or (outbound >= 8 and groups <= 2)
        severity = (Severity.CRITICAL if concentrated and overdue else Severity.WARNING) if concentrated else None
        report("eclipse", "netgroups", severity, "outbound peers concentrated in few netgroups",
               f"{int(outbound)} outbound peers in {int(groups)} netgroups, {100 * share:.0f} % in one"
               + ("; blocks overdue and no peer ahead" if concentrated and overdue else ""), share)
        churn = v["outbound_churn"]
        if rates_known:
            report("eclipse", "churn", Severity.WARNING if churn > 0.5 else None, "outbound peers replaced",
                   f"{100 * churn:.0f} % of the outbound peers are new since the last sample", churn)

        held_ahead = self._held("ahead", now, ahead > 0)
        if v["network_active"] == 0 or v["connections"] == 0:
            severity, why = Severity.CRITICAL, "networking is off or the node has no connections"
        elif held_ahead >= CHAIN_SYNC_TIMEOUT_S:
            severity, why = Severity.CRITICAL, (f"{int(ahead)} peers have headers ahead of our tip for "
                                                f"{held_ahead / 60:.0f} min")
        else:
            p = no_block_probability(age)
            severity = Severity.WARNING if p < TIP_WARNING_P else Severity.INFO if p < TIP_INFO_P else None
            why = f"no new block for {age / 60:.0f} min (P = {p:.1e} for an honest chain)"
        report("partition", "tip", severity, "stale tip or network partition", why, age)

        forks, branch = v["chain_tips_valid_fork"], v["max_fork_branchlen"]
        severity = None if forks == 0 else Severity.WARNING if branch >= 2 else Severity.INFO
        report("fork", "valid-fork", severity, "a competing valid chain",
               f"{int(forks)} valid-fork tips, the longest branch {int(branch)} blocks", branch)

        if rates_known:
            flood = v["inbound_new_per_min"]
            report("inbound-flood", "inbound", Severity.WARNING if flood > INBOUND_FLOOD_PER_MIN else None,
                   "inbound connection flood", f"{flood:.1f} new inbound connections per minute", flood)
            limited = v["addr_rate_limited_per_s"]
            held = self._held("addr", now, limited > MAX_ADDR_RATE_PER_SECOND)
            report("addr-spam", "addr", Severity.WARNING if held >= SUSTAINED_S else None, "address message spam",
                   f"{limited:.2f} addresses/s over Core's rate limit for {held / 60:.0f} min", limited)

        if rates_known:  # inv flooding: announcements far above this node's own usual rate, for 10 minutes
            inv = v["bytes_recv_per_s_inv"]
            high, base = self._against_baseline("inv", inv, now, INV_FLOOD_FACTOR, INV_FLOOD_FLOOR_BPS)
            held = self._held("inv", now, high)
            report("inv-flood", "inv", Severity.WARNING if held >= SUSTAINED_S else None, "inv message flood",
                   f"{inv / 1000:.1f} kB/s of inv messages against a usual {base / 1000:.1f} kB/s, for "
                   f"{held / 60:.0f} min", inv)
        ping = v["ping_p90_ms"]
        high, base = self._against_baseline("ping", ping, now, PING_GROWTH_FACTOR, PING_FLOOR_MS)
        held = self._held("ping", now, high)
        report("ping", "p90", Severity.WARNING if held >= SUSTAINED_S else None, "peer pings growing",
               f"90th percentile ping {ping:.0f} ms against a usual {base:.0f} ms, for {held / 60:.0f} min", ping)

        usage = v["mempool_usage_ratio"]
        # tuning advice (INFO): what the telemetry says about the node's own settings
        evicting = v["mempool_min_fee_sat_vb"] > DEFAULT_MIN_RELAY_SAT_VB
        report("tuning", "maxmempool", Severity.INFO if evicting else None, "consider a larger -maxmempool",
               f"the mempool evicts: mempoolminfee {v['mempool_min_fee_sat_vb']:.2f} sat/vB is above the default "
               f"relay minimum; a larger -maxmempool (default 300 MB) keeps more of the fee market in view", usage)
        full = v["peers_inbound"] >= INBOUND_SLOTS
        report("tuning", "maxconnections", Severity.INFO if full else None, "inbound slots full",
               f"{int(v['peers_inbound'])} inbound peers fill the default {INBOUND_SLOTS} slots (-maxconnections 125 "
               "minus outbound); raise -maxconnections if memory and bandwidth allow", v["peers_inbound"])

        report("mempool-full", "mempool", Severity.WARNING if usage > 0.9 else None, "mempool near maxmempool",
               f"mempool at {100 * usage:.0f} % of maxmempool, minimum fee {v['mempool_min_fee_sat_vb']:.2f} sat/vB",
               usage)
        disk = v["disk_free_gb"]
        known = disk > 0  # 0: not measured
        severity = (Severity.CRITICAL if disk < 1 else Severity.WARNING if disk < 5 else None) if known else None
        report("disk", "free", severity, "disk nearly full", f"{disk:.1f} GB free", disk)
        cpu = v["cpu_percent"]
        held = self._held("cpu", now, cpu > 90)
        report("cpu", "busy", Severity.WARNING if held >= SUSTAINED_S else None, "CPU saturated",
               f"CPU {cpu:.0f} % for {held / 60:.0f} min", cpu)
        return out

    def to_dict(self) -> dict[str, dict[str, float]]:
        """The detectors' memory (for a watcher's state file)."""
        return {"since": dict(self.since), "baseline": dict(self.baseline)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> NetworkDetectors:
        def floats(m: Any) -> dict[str, float]:
            return {str(k): float(t) for k, t in m.items() if isinstance(t, int | float)} if isinstance(m, Mapping) \
                else {}

        if "since" not in d and "baseline" not in d:  # the first format: the timers alone
            return cls(since=floats(d))
        return cls(since=floats(d.get("since")), baseline=floats(d.get("baseline")))
