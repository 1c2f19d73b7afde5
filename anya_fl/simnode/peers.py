"""The simulated node's P2P side: ten outbound peers (eight full-relay, two block-relay-only), no inbound.

Addresses come from the documentation ranges (203.0.113.0/24, 2001:db8::/32, AS 64496-64511) and hash-made
onion names, so nothing real is named; ``mapped_as`` is given as with -asmap. Counters grow with simulated
time; everything is determined by the seed. Scenarios (``network_scenarios``) replace the outbound peers,
add inbound ones and grow addr counters.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

from anya_fl.simnode.config import GENESIS_EPOCH
from anya_fl.simnode.encoding import digest

VERSION, SUBVERSION, PROTOCOL_VERSION = 270000, "/Satoshi:27.0.0/", 70016
SERVICES, SERVICES_NAMES = "0000000000000c09", ["NETWORK", "WITNESS", "NETWORK_LIMITED", "P2P_V2"]
NETWORKS = ("ipv4", "ipv4", "ipv6", "ipv4", "onion", "ipv4", "ipv6", "ipv4", "onion", "ipv4")
FULL_RELAY = 8


@dataclass(frozen=True)
class Peer:
    id: int
    addr: str
    network: str
    connection_type: str
    subver: str
    v2: bool
    ping_s: float
    conntime: float  # simulated seconds
    recv_rate: float  # bytes per simulated second
    send_rate: float
    asn: int | None = None  # mapped_as (None: 64496 + id, as the original peers; never for onion)
    starting_height: int | None = None  # the peer's height when it connected (None: the node's start tip)
    key: tuple[str, int, int] = ("original", 0, 0)  # stable identity (ids are given by connection order)


def make_peers(seed: int, t_start: float) -> list[Peer]:
    peers = []
    for p, network in enumerate(NETWORKS):
        h = digest(f"anya-fl simnode peer {seed} {p}")
        if network == "ipv4":
            addr = f"203.0.113.{h[0] % 254 + 1}:8333"
        elif network == "ipv6":
            addr = f"[2001:db8::{h[1]:x}{h[2]:02x}]:8333"
        else:
            addr = base64.b32encode(h + h[:3]).decode().lower().rstrip("=")[:56] + ".onion:8333"
        full = p < FULL_RELAY
        peers.append(Peer(
            id=p, addr=addr, network=network,
            connection_type="outbound-full-relay" if full else "block-relay-only",
            subver=("/Satoshi:27.0.0/", "/Satoshi:26.1.0/", "/Satoshi:25.0.0/")[h[3] % 3],
            v2=bool(h[4] % 2), ping_s=0.02 + (h[5] / 255) * (0.6 if network == "onion" else 0.2),
            conntime=t_start - 60 - (h[6] * 256 + h[7]) % 7200,
            recv_rate=(300 + h[8] * 4) if full else 40 + h[8] % 40, send_rate=(150 + h[9] * 2) if full else 20,
            key=("original", 0, p),
        ))
    return peers


def peer_info(peer: Peer, t: float, tip: int, tip_time: int, start_tip: int, *, synced: int | None = None,
              addr: tuple[int, int, int] = (0, 0, 0), hb_to: bool | None = None) -> dict[str, Any]:
    """One getpeerinfo entry (Core 27 fields) at simulated time ``t``.

    ``tip``/``tip_time``: the node's active tip (last_block); ``synced``: the height the peer has announced
    (synced_headers/synced_blocks; default ``tip``); ``addr``: (processed, rate limited, addrv2 bytes) that an
    addr-spam scenario adds; ``hb_to``: whether we chose the peer as a high-bandwidth compact block peer (default:
    the first three outbound peers).
    """
    kind = peer.connection_type
    full = kind == "outbound-full-relay"
    inbound = kind == "inbound"
    relay = kind != "block-relay-only"
    alive = max(t - peer.conntime, 1.0)
    recv, sent = int(peer.recv_rate * alive), int(peer.send_rate * alive)
    now = GENESIS_EPOCH + int(t)
    split_recv = {"ping": recv // 50, "pong": recv // 50, "headers": recv // 20}
    split_sent = {"ping": sent // 25, "pong": sent // 25, "sendcmpct": 33}
    if full:
        split_recv.update(inv=recv // 4, tx=recv // 2, cmpctblock=recv - sum(split_recv.values()) - recv // 4
                          - recv // 2)
        split_sent.update(inv=sent // 2, getdata=sent - sum(split_sent.values()) - sent // 2)
    elif inbound:
        split_recv = {"ping": recv // 4, "pong": recv // 4}
        split_recv["inv"] = recv - sum(split_recv.values())
        split_sent = {"ping": sent // 4, "pong": sent // 4}
        split_sent["inv"] = sent - sum(split_sent.values())
    else:
        split_recv["cmpctblock"] = recv - sum(split_recv.values())
        split_sent["getheaders"] = sent - sum(split_sent.values())
    processed, limited, addr_bytes = addr
    if addr_bytes:
        split_recv["addrv2"] = addr_bytes
        recv += addr_bytes
    synced = tip if synced is None else synced
    asn = peer.asn if peer.asn is not None else 64496 + peer.id  # AS numbers for documentation
    return {
        "id": peer.id, "addr": peer.addr,
        "addrbind": "127.0.0.1:8333" if inbound else f"127.0.0.1:{40000 + peer.id}", "network": peer.network,
        "services": SERVICES, "servicesnames": SERVICES_NAMES, "relaytxes": relay,
        "lastsend": now - 1, "lastrecv": now - 1, "last_transaction": now - 2 if full else 0,
        "last_block": tip_time if not inbound and (peer.id % 3 == 0 or not full) else 0,
        "bytessent": sent, "bytesrecv": recv, "conntime": GENESIS_EPOCH + int(peer.conntime), "timeoffset": 0,
        "pingtime": round(peer.ping_s, 6), "minping": round(peer.ping_s * 0.8, 6), "version": PROTOCOL_VERSION,
        "subver": peer.subver, "inbound": inbound, "bip152_hb_to": not inbound and (peer.id < 3 if hb_to is None else hb_to),
        "bip152_hb_from": False,
        "startingheight": start_tip if peer.starting_height is None else peer.starting_height,
        "presynced_headers": -1, "synced_headers": synced, "synced_blocks": synced,
        "inflight": [], "addr_relay_enabled": relay,
        "addr_processed": (int(alive / 60) if full else 0) + processed,
        "addr_rate_limited": limited, "permissions": [], "minfeefilter": 0.00001 if relay else 0.0,
        "bytessent_per_msg": split_sent, "bytesrecv_per_msg": split_recv,
        "connection_type": peer.connection_type, "transport_protocol_type": "v2" if peer.v2 else "v1",
        "session_id": digest(f"session {peer.id} {peer.conntime}").hex() if peer.v2 else "",
        **({"mapped_as": asn} if peer.network != "onion" else {}),
    }


def network_info(connections: int, inbound: int = 0) -> dict[str, Any]:
    """getnetworkinfo (Core 27 fields) for ``connections`` outbound and ``inbound`` inbound peers."""
    return {
        "version": VERSION, "subversion": SUBVERSION, "protocolversion": PROTOCOL_VERSION,
        "localservices": SERVICES, "localservicesnames": SERVICES_NAMES, "localrelay": True, "timeoffset": 0,
        "networkactive": True, "connections": connections + inbound, "connections_in": inbound,
        "connections_out": connections,
        "networks": [{"name": name, "limited": name in ("i2p", "cjdns"), "reachable": name not in ("i2p", "cjdns"),
                      "proxy": "127.0.0.1:9050" if name == "onion" else "", "proxy_randomize_credentials": name == "onion"}
                     for name in ("ipv4", "ipv6", "onion", "i2p", "cjdns")],
        "relayfee": 0.00001, "incrementalfee": 0.00001, "localaddresses": [], "warnings": "",
    }
