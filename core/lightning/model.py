"""One model of a Lightning node's channels and forwards, whichever implementation it runs (LND, Core Lightning).

The adapters (``lnd``, ``cln``) read their node's replies read-only and map them here; the simulated network
(``anya_fl.simln``) keeps its routers' state in the same types and renders it in each implementation's shapes.
Amounts are integers of millisatoshis (``_msat``) or satoshis (``_sat``), times UNIX seconds. Nothing here is
sent anywhere: channel ids, peer keys and balances stay on the node.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from core.errors import AnyaError

# a channel's state, the same words for both implementations
OPEN, PENDING_OPEN, CLOSING, CLOSED = "open", "pending_open", "closing", "closed"
STATES = (OPEN, PENDING_OPEN, CLOSING, CLOSED)
# a forward's outcome: settled (the fee earned), failed (downstream or here), offered (still in flight)
SETTLED, FAILED, LOCAL_FAILED, OFFERED = "settled", "failed", "local_failed", "offered"
OUTCOMES = (SETTLED, FAILED, LOCAL_FAILED, OFFERED)


class LightningError(AnyaError):
    """A Lightning node that cannot be read: names the node (its URL or socket), the call, and the problem."""

    def __init__(self, problem: str, *, node: str, call: str, field: str | None = None) -> None:
        self.problem, self.node, self.call, self.field = problem, node, call, field
        where = f"{call}.{field}" if field else call
        super().__init__(f"{node} {where}: {problem}")


class LightningAuthError(LightningError):
    """Refused credentials (LND: a wrong or read-only-insufficient macaroon; CLN: no permission on the socket)."""


class LightningConnectionError(LightningError):
    """The node is unreachable (refused, timed out, TLS certificate not the one pinned, no socket)."""


class LightningReplyError(LightningError):
    """A reply that is not the documented shape: names the field and what is wrong with it."""


class LightningVersionError(LightningError):
    """An implementation or version this adapter does not know."""


@dataclass(frozen=True)
class ChannelPolicy:
    """The fee policy one side of a channel charges for forwarding out of it."""

    base_fee_msat: int
    fee_rate_ppm: int  # proportional fee, millionths of the amount
    time_lock_delta: int | None = None
    min_htlc_msat: int | None = None
    max_htlc_msat: int | None = None
    disabled: bool = False


@dataclass(frozen=True)
class Channel:
    """One channel as its own node sees it. ``channel_id`` is the short channel id ``BLOCKxTXxOUTPUT`` (None while
    pending: no funding block yet); ``channel_point`` the funding outpoint ``txid:vout``."""

    channel_id: str | None
    channel_point: str
    peer: str  # the peer's node public key, 66 hex characters
    state: str  # one of STATES
    active: bool  # open and the peer connected
    capacity_sat: int
    local_msat: int  # our balance, spendable or not (reserve included)
    remote_msat: int
    pending_htlcs: int = 0
    pending_htlc_msat: int = 0
    local_reserve_sat: int | None = None
    remote_reserve_sat: int | None = None
    initiator_local: bool | None = None  # we opened it
    private: bool = False
    uptime_s: int | None = None  # how long the peer has been connected while the channel was monitored
    lifetime_s: int | None = None  # how long the channel has been monitored
    local_policy: ChannelPolicy | None = None
    remote_policy: ChannelPolicy | None = None

    @property
    def balance_ratio(self) -> float:
        """Our share of the channel's funds (0 to 1; 0.5 when both are 0)."""
        total = self.local_msat + self.remote_msat
        return 0.5 if total <= 0 else self.local_msat / total


@dataclass(frozen=True)
class Forward:
    """One HTLC forwarded (or refused) by this node: in on ``in_channel``, out on ``out_channel``."""

    received: float  # UNIX s
    resolved: float | None  # UNIX s; None while offered
    in_channel: str
    out_channel: str | None  # None when the node failed it before choosing one (an unknown next channel)
    in_msat: int
    out_msat: int | None
    fee_msat: int  # earned when settled, else 0
    outcome: str  # one of OUTCOMES
    failure: str | None = None  # the failure's reason in the implementation's words, when failed


@dataclass(frozen=True)
class NodeInfo:
    """Who the node is: its key, alias, implementation ("lnd" or "cln") and version, its chain height."""

    pubkey: str
    alias: str
    implementation: str
    version: str
    block_height: int
    synced_to_chain: bool | None = None


class LightningSource(Protocol):
    """A node read through one adapter (or the simulated network's router)."""

    def info(self) -> NodeInfo: ...

    def channels(self) -> list[Channel]: ...

    def forwards(self, start: float, end: float) -> list[Forward]:
        """Forwards received in [start, end) (UNIX s), oldest first."""
        ...
