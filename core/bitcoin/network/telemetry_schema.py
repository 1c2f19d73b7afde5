"""TELEMETRY_SCHEMA: the node telemetry vector's columns (units, valid and typical ranges), version 1.

``core.bitcoin.network.telemetry`` fills it from Bitcoin Core's replies; it is also the network task's input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from core.bitcoin.schema import Column, Schema
from core.errors import FeatureError

__all__ = ["TELEMETRY_SCHEMA", "TelemetrySchema"]


@dataclass(frozen=True)
class TelemetrySchema(Schema):
    """A versioned ``Schema`` whose ``check`` names the out-of-range features instead of raising."""

    version: int = 1

    def check(self, vector: Any) -> list[str]:
        """Names of the features outside their valid range (NaN and infinities included), in schema order.

        ``vector`` is one vector (width,) or rows (n, width); for rows a feature is named when any row is out.
        """
        arr = np.asarray(vector, dtype=np.float64)
        if arr.ndim not in (1, 2) or arr.shape[-1] != self.width:
            raise FeatureError("vector", f"expected shape ({self.width},) or (n, {self.width}) for {self.name}, "
                                         f"got {tuple(arr.shape)}")
        lo, hi = self.valid_bounds()
        ok = (arr >= lo) & (arr <= hi)  # False for NaN: every bound is finite
        if ok.ndim == 2:
            ok = ok.all(axis=0)
        return [name for name, good in zip(self.names, ok.tolist(), strict=True) if not good]


_COUNT = (0.0, 100_000.0)  # peers, tips: far above -maxconnections on any real node
_FRAC = (0.0, 1.0)
_RATE = (0.0, 1e7)
_BYTES_RATE = (0.0, 1e10)
_PING_MS = (0.0, 3_600_000.0)

TELEMETRY_SCHEMA = TelemetrySchema(
    "telemetry",
    (
        Column("peers_total", "count", "peers in getpeerinfo (malformed entries skipped)", _COUNT, (8, 125), 1.0),
        Column("peers_inbound", "count", "peers with inbound true", _COUNT, (0, 117), 1.0),
        Column("peers_outbound_full_relay", "count", "connection_type outbound-full-relay", _COUNT, (0, 8)),
        Column("peers_block_relay_only", "count", "connection_type block-relay-only", _COUNT, (0, 2)),
        Column("peers_manual", "count", "connection_type manual", _COUNT, (0, 8), 1.0),
        Column("peers_feeler_addrfetch", "count", "connection_type feeler or addr-fetch", _COUNT, (0, 2), 1.0),
        Column("peers_ipv4", "count", "peers on ipv4 (the network field when present)", _COUNT, (0, 125), 1.0),
        Column("peers_ipv6", "count", "peers on ipv6", _COUNT, (0, 50), 1.0),
        Column("peers_onion", "count", "peers on onion (Tor)", _COUNT, (0, 50), 1.0),
        Column("peers_i2p", "count", "peers on i2p", _COUNT, (0, 10), 1.0),
        Column("peers_cjdns", "count", "peers on cjdns", _COUNT, (0, 10), 1.0),
        Column("peers_other_network", "count", "not_publicly_routable, unknown or unreadable network",
               _COUNT, (0, 5), 1.0),
        Column("outbound_netgroups", "count", "distinct netgroups among outbound full-relay, block-relay-only and "
               "manual peers (IPv4 /16, IPv6 /32, one per privacy network)", _COUNT, (4, 11)),
        Column("outbound_top_netgroup_share", "fraction", "share of those outbound peers in the most common netgroup",
               _FRAC, (0, 0.5)),
        Column("outbound_churn", "fraction", "those outbound peers whose id was not in the previous sample / their "
               "count (0 without a previous sample)", _FRAC, (0, 0.2)),
        Column("inbound_new_per_min", "1/min", "inbound peers not in the previous sample per minute elapsed",
               _RATE, (0, 5), 1.0),
        Column("addr_processed_per_s", "1/s", "addr_processed summed over peers in both samples, per second",
               _RATE, (0, 2), 1.0),
        Column("addr_rate_limited_per_s", "1/s", "addr_rate_limited summed over peers in both samples, per second",
               _RATE, (0, 1), 1.0),
        Column("ping_p50_ms", "ms", "median pingtime over peers reporting it (0 if none)", _PING_MS, (10, 500), 1.0),
        Column("ping_p90_ms", "ms", "90th percentile pingtime (linear interpolation)", _PING_MS, (20, 2_000), 1.0),
        Column("minping_p50_ms", "ms", "median minping over peers reporting it (0 if none)", _PING_MS, (5, 300), 1.0),
        Column("peers_headers_ahead", "count", "peers whose synced_headers > our block height", _COUNT, (0, 3), 1.0),
        Column("peers_blocks_ahead", "count", "peers whose synced_blocks > our block height", _COUNT, (0, 3), 1.0),
        Column("bip152_hb_to", "count", "peers with bip152_hb_to true", _COUNT, (0, 3)),
        Column("bip152_hb_from", "count", "peers with bip152_hb_from true", _COUNT, (0, 3)),
        Column("bytes_recv_per_s_inv", "B/s", "bytesrecv_per_msg inv, per second", _BYTES_RATE, (100, 1e5), 1.0),
        Column("bytes_recv_per_s_tx", "B/s", "bytesrecv_per_msg tx, per second", _BYTES_RATE, (100, 1e6), 1.0),
        Column("bytes_recv_per_s_addr", "B/s", "bytesrecv_per_msg addr + addrv2, per second",
               _BYTES_RATE, (0, 1_000), 1.0),
        Column("bytes_recv_per_s_other", "B/s", "every other message type in bytesrecv_per_msg, per second",
               _BYTES_RATE, (100, 1e6), 1.0),
        Column("tip_age_s", "s", "now - getblockchaininfo.time (the tip's header time)", (-7_200.0, 4e9), (0, 3_600)),
        Column("chain_tips_not_active", "count", "getchaintips entries whose status is not active",
               (0.0, 1e7), (0, 10), 1.0),
        Column("chain_tips_valid_fork", "count", "getchaintips entries with status valid-fork", (0.0, 1e7), (0, 3), 1.0),
        Column("chain_tips_headers_only", "count", "getchaintips entries with status headers-only",
               (0.0, 1e7), (0, 3), 1.0),
        Column("max_fork_branchlen", "blocks", "largest branchlen among tips that are not active (0 if none)",
               (0.0, 1e7), (0, 3), 1.0),
        Column("network_active", "flag", "getnetworkinfo.networkactive", _FRAC, _FRAC),
        Column("connections", "count", "getnetworkinfo.connections", _COUNT, (8, 125), 1.0),
        Column("mempool_usage_ratio", "ratio", "getmempoolinfo usage / maxmempool", (0.0, 2.0), _FRAC),
        Column("mempool_min_fee_sat_vb", "sat/vB", "getmempoolinfo.mempoolminfee (BTC/kvB) x 1e5",
               (0.0, 1e8), (1, 100), 1.0),
        Column("mempool_size", "count", "getmempoolinfo.size (transactions)", (0.0, 1e7), (100, 200_000), 1.0),
        Column("cpu_percent", "%", "process CPU (100 = one core) from the resources dict; 0 without it",
               (0.0, 25_600.0), (0, 100)),
        Column("memory_rss_mb", "MiB", "resident memory from the resources dict; 0 without it",
               (0.0, 1e7), (200, 16_000), 1.0),
        Column("disk_free_gb", "GiB", "free disk from the resources dict; 0 without it", (0.0, 1e6), (10, 2_000), 1.0),
    ),
    version=1,
)
